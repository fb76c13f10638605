//! The agent's side of the guest channel: a hostile guest controls every byte.
//!
//! Invariants: framing does not depend on how the bytes were split into reads; no
//! emitted line exceeds the bound or holds a newline; and any line that parses as a
//! message survives encode → parse unchanged (an asymmetric serde attribute would make
//! the agent and the guest disagree on what was said).
#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use measurelab_api::guest::{encode_line, AgentMessage, FramingError, GuestMessage, LineFramer};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Small, so the fuzzer reaches the over-long path with short inputs.
const MAX_LINE_BYTES: usize = 512;

fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let read_size = usize::from(split).max(1);
    let mut framer = LineFramer::new(MAX_LINE_BYTES);
    let mut lines = Vec::new();
    for read in stream.chunks(read_size) {
        lines.extend(framer.push(read));
    }
    let in_one_read = LineFramer::new(MAX_LINE_BYTES).push(stream);
    assert_eq!(
        lines, in_one_read,
        "framing depends on the read size {read_size}"
    );

    for line in lines {
        match line {
            Ok(line) => {
                assert!(!line.is_empty());
                assert!(line.len() <= MAX_LINE_BYTES, "{} bytes", line.len());
                assert!(!line.contains(&b'\n'));
                survives_reencoding::<GuestMessage>(&line);
                survives_reencoding::<AgentMessage>(&line);
            }
            Err(FramingError::TooLong { max_bytes }) => assert_eq!(max_bytes, MAX_LINE_BYTES),
        }
    }
});

fn survives_reencoding<T: Serialize + DeserializeOwned + PartialEq + Debug>(line: &[u8]) {
    let Ok(message) = serde_json::from_slice::<T>(line) else {
        return;
    };
    let encoded = encode_line(&message).expect("a message that parsed encodes");
    let again: T = serde_json::from_slice(&encoded).expect("an encoded message parses");
    assert_eq!(again, message);
}
