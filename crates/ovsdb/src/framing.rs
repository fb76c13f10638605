//! OVSDB sends JSON values back to back with no delimiter, so the reader keeps
//! a buffer and pulls out every complete value it holds.

use serde_json::Value;

use crate::error::OvsdbError;

/// Accumulates bytes from the socket and yields complete JSON values.
#[derive(Debug, Default)]
pub struct Framer {
    buffer: Vec<u8>,
}

impl Framer {
    /// Appends bytes read from the socket.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Every complete value in the buffer, in order. A trailing partial value
    /// stays buffered for the next read.
    pub fn drain_values(&mut self) -> Result<Vec<Value>, OvsdbError> {
        let mut values = Vec::new();
        let mut stream = serde_json::Deserializer::from_slice(&self.buffer).into_iter::<Value>();
        let mut consumed = 0;
        loop {
            // Every JSON-RPC message is an object, so anything else is refused
            // by its first byte, before it is parsed: at the end of a read `55`
            // parses as a whole number while `55555e-` is still incomplete, so
            // judging the parsed value would depend on where a read ended.
            let next = self.buffer[consumed..]
                .iter()
                .find(|b| !b.is_ascii_whitespace());
            if let Some(&byte) = next.filter(|b| **b != b'{') {
                return Err(OvsdbError::Protocol(format!(
                    "a message from the server does not start with '{{': {:?}",
                    char::from(byte)
                )));
            }
            match stream.next() {
                // Unreachable after the first-byte check; kept so a non-object
                // can never be framed.
                Some(Ok(value)) if !value.is_object() => {
                    return Err(OvsdbError::Protocol(format!(
                        "a message from the server is not a JSON object: {value}"
                    )))
                }
                Some(Ok(value)) => {
                    consumed = stream.byte_offset();
                    values.push(value);
                }
                Some(Err(err)) if err.is_eof() => break,
                Some(Err(err)) => {
                    return Err(OvsdbError::Protocol(format!(
                        "malformed JSON from server: {err}"
                    )))
                }
                None => {
                    consumed = stream.byte_offset();
                    break;
                }
            }
        }
        self.buffer.drain(..consumed);
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn splits_back_to_back_messages_in_one_read() {
        let mut framer = Framer::default();
        // Shaped as ovsdb-server sends them: an update notification and a transact
        // reply that arrived in a single read.
        framer.push(
            br#"{"id":null,"method":"update","params":[["mon",0],{"Bridge":{"a1b2":{"new":{"name":"br0"}}}}]}{"id":7,"result":[{"uuid":["uuid","a1b2"]}],"error":null}"#,
        );
        let values = framer.drain_values().unwrap();
        assert_eq!(values.len(), 2);
        assert_eq!(values[0]["method"], json!("update"));
        assert_eq!(values[1]["id"], json!(7));
    }

    #[test]
    fn keeps_a_partial_message_until_the_rest_arrives() {
        let mut framer = Framer::default();
        framer.push(br#"{"id":1,"result":["Open_vSwitch"],"er"#);
        assert!(framer.drain_values().unwrap().is_empty());
        framer.push(br#"ror":null}  {"id":2,"#);
        let values = framer.drain_values().unwrap();
        assert_eq!(
            values,
            vec![json!({"id":1,"result":["Open_vSwitch"],"error":null})]
        );
        framer.push(br#""result":[],"error":null}"#);
        assert_eq!(framer.drain_values().unwrap()[0]["id"], json!(2));
    }

    #[test]
    fn rejects_garbage() {
        let mut framer = Framer::default();
        framer.push(b"{\"id\":1}]");
        assert!(matches!(
            framer.drain_values(),
            Err(OvsdbError::Protocol(_))
        ));
    }

    #[test]
    fn refuses_a_bare_scalar_wherever_the_read_ends() {
        // `12` read as `1` then `2` would otherwise frame as two numbers.
        let mut framer = Framer::default();
        framer.push(b"1");
        assert!(matches!(
            framer.drain_values(),
            Err(OvsdbError::Protocol(_))
        ));
        let mut framer = Framer::default();
        framer.push(b"{\"id\":1} 12");
        assert!(framer.drain_values().is_err());
        // Found by fuzzing: an incomplete number is refused at once too, as
        // its complete prefix `55` would be.
        let mut framer = Framer::default();
        framer.push(b"\n\n55555e-");
        assert!(framer.drain_values().is_err());
    }
}
