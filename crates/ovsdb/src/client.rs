use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ovsdb_client::schema::DatabaseSchema;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::OvsdbError;
use crate::framing::Framer;

type Reply = Result<Value, OvsdbError>;

/// State shared between the client handles and the reader task. A std mutex is
/// enough: it is never held across an `.await`.
#[derive(Default)]
struct Shared {
    pending: Mutex<HashMap<u64, (String, oneshot::Sender<Reply>)>>,
    monitors: Mutex<HashMap<String, mpsc::UnboundedSender<Value>>>,
    closed: Mutex<Option<String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Poisoning only means a panic elsewhere; the maps themselves stay valid.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Session {
    shared: Arc<Shared>,
    outgoing: mpsc::UnboundedSender<String>,
    next_id: AtomicU64,
    reader: JoinHandle<()>,
    target: String,
}

impl Drop for Session {
    fn drop(&mut self) {
        // The reader holds a sender for echo replies; stopping it lets the
        // writer task see its channel close and shut the socket.
        self.reader.abort();
    }
}

/// A connection to one OVSDB server. Cheap to clone; all clones share one
/// session, and requests from several tasks are multiplexed by id.
#[derive(Clone)]
pub struct OvsdbClient {
    session: Arc<Session>,
}

impl std::fmt::Debug for OvsdbClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OvsdbClient")
            .field("target", &self.session.target)
            .finish()
    }
}

/// Table updates for one monitor, in the server's order. Each item is the
/// `<table-updates>` object of one `update` notification.
#[derive(Debug)]
pub struct MonitorStream {
    receiver: mpsc::UnboundedReceiver<Value>,
}

impl MonitorStream {
    /// The next batch of table updates; `None` once the session is closed.
    pub async fn next(&mut self) -> Option<Value> {
        self.receiver.recv().await
    }
}

impl OvsdbClient {
    /// Connect to `unix:/path/db.sock` or `tcp:host:port`.
    pub async fn connect(target: &str) -> Result<Self, OvsdbError> {
        if let Some(path) = target.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(invalid_target(target, "the unix socket path is empty"));
            }
            let stream = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|source| OvsdbError::Connect {
                    target: target.to_string(),
                    source,
                })?;
            Ok(Self::from_stream(stream, target))
        } else if let Some(address) = target.strip_prefix("tcp:") {
            if !address.contains(':') {
                return Err(invalid_target(target, "expected tcp:HOST:PORT"));
            }
            let stream = tokio::net::TcpStream::connect(address)
                .await
                .map_err(|source| OvsdbError::Connect {
                    target: target.to_string(),
                    source,
                })?;
            Ok(Self::from_stream(stream, target))
        } else {
            Err(invalid_target(
                target,
                "expected unix:PATH or tcp:HOST:PORT (ssl is not supported)",
            ))
        }
    }

    /// Run a session over an already connected stream (tests use a socket pair).
    pub fn from_stream<S>(stream: S, target: &str) -> Self
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read_half, write_half) = tokio::io::split(stream);
        let shared = Arc::new(Shared::default());
        let (outgoing, outgoing_rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(write_half, outgoing_rx));
        let reader = tokio::spawn(read_loop(read_half, shared.clone(), outgoing.clone()));
        OvsdbClient {
            session: Arc::new(Session {
                shared,
                outgoing,
                next_id: AtomicU64::new(1),
                reader,
                target: target.to_string(),
            }),
        }
    }

    /// Send one JSON-RPC request and wait for its result.
    pub async fn request(&self, method: &str, params: Value) -> Result<Value, OvsdbError> {
        let session = &self.session;
        let id = session.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply_rx) = oneshot::channel();
        {
            // Checked under the pending lock so a request cannot slip in after the
            // reader failed everything and never be answered.
            let mut pending = lock(&session.shared.pending);
            if let Some(reason) = lock(&session.shared.closed).clone() {
                return Err(OvsdbError::Disconnected(reason));
            }
            pending.insert(id, (method.to_string(), reply_tx));
        }
        let message = json!({"id": id, "method": method, "params": params});
        if session.outgoing.send(message.to_string()).is_err() {
            lock(&session.shared.pending).remove(&id);
            return Err(OvsdbError::Disconnected("writer stopped".to_string()));
        }
        tracing::trace!(id, method, "ovsdb request sent");
        reply_rx
            .await
            .map_err(|_| OvsdbError::Disconnected("session ended".to_string()))?
    }

    /// RFC 7047 4.1.1: the databases this server offers.
    pub async fn list_dbs(&self) -> Result<Vec<String>, OvsdbError> {
        let result = self.request("list_dbs", json!([])).await?;
        serde_json::from_value(result).map_err(|err| OvsdbError::Value {
            what: "list_dbs result".to_string(),
            reason: err.to_string(),
        })
    }

    /// RFC 7047 4.1.2: the schema of `db`.
    pub async fn get_schema(&self, db: &str) -> Result<DatabaseSchema, OvsdbError> {
        let result = self.request("get_schema", json!([db])).await?;
        serde_json::from_value(result).map_err(|err| OvsdbError::Value {
            what: format!("schema of {db}"),
            reason: err.to_string(),
        })
    }

    /// RFC 7047 4.1.3: run `ops` atomically on `db`. On success returns one
    /// result per op. If any op fails, or the commit fails, returns the first
    /// error naming the op index (nothing was committed).
    pub async fn transact(&self, db: &str, ops: Vec<Value>) -> Result<Vec<Value>, OvsdbError> {
        let mut params = Vec::with_capacity(ops.len() + 1);
        params.push(Value::String(db.to_string()));
        params.extend(ops.iter().cloned());
        let result = self.request("transact", Value::Array(params)).await?;
        check_transact_result(&ops, result)
    }

    /// RFC 7047 4.1.5: start monitor `monitor_id` on `db` with `requests`
    /// (`{"Table": {"columns": [..]}}`). Returns the initial `<table-updates>`
    /// and a stream of later ones.
    pub async fn monitor(
        &self,
        db: &str,
        monitor_id: &str,
        requests: Value,
    ) -> Result<(Value, MonitorStream), OvsdbError> {
        let (sender, receiver) = mpsc::unbounded_channel();
        // Registered before the request so no update between the reply and the
        // registration can be lost.
        lock(&self.session.shared.monitors).insert(monitor_id.to_string(), sender);
        match self
            .request("monitor", json!([db, monitor_id, requests]))
            .await
        {
            Ok(initial) => Ok((initial, MonitorStream { receiver })),
            Err(err) => {
                lock(&self.session.shared.monitors).remove(monitor_id);
                Err(err)
            }
        }
    }

    /// RFC 7047 4.1.7: stop monitor `monitor_id`.
    pub async fn monitor_cancel(&self, monitor_id: &str) -> Result<(), OvsdbError> {
        self.request("monitor_cancel", json!([monitor_id])).await?;
        lock(&self.session.shared.monitors).remove(monitor_id);
        Ok(())
    }

    /// RFC 7047 4.1.11: round-trip an echo (a liveness check).
    pub async fn echo(&self) -> Result<(), OvsdbError> {
        self.request("echo", json!(["measurelab"]))
            .await
            .map(|_| ())
    }

    /// Whether the session has ended; a closed client fails every request.
    pub fn is_closed(&self) -> bool {
        lock(&self.session.shared.closed).is_some()
    }
}

fn invalid_target(target: &str, reason: &str) -> OvsdbError {
    OvsdbError::InvalidTarget {
        target: target.to_string(),
        reason: reason.to_string(),
    }
}

/// Turn a transact reply into per-op results, surfacing the first `{"error":..}`
/// entry. RFC 7047 4.1.3: a failing op's entry carries the error and later ops
/// are `null`; an entry past the last op reports a failed commit.
pub(crate) fn check_transact_result(
    ops: &[Value],
    result: Value,
) -> Result<Vec<Value>, OvsdbError> {
    let Value::Array(entries) = result else {
        return Err(OvsdbError::Protocol(format!(
            "transact result is not an array: {result}"
        )));
    };
    for (index, entry) in entries.iter().enumerate() {
        if entry.get("error").is_some_and(|e| !e.is_null()) {
            return Err(OvsdbError::from_op_result(index, ops, entry));
        }
    }
    if entries.len() < ops.len() {
        return Err(OvsdbError::Protocol(format!(
            "transact returned {} results for {} ops",
            entries.len(),
            ops.len()
        )));
    }
    Ok(entries.into_iter().take(ops.len()).collect())
}

async fn write_loop<W: AsyncWrite>(writer: W, mut outgoing: mpsc::UnboundedReceiver<String>) {
    tokio::pin!(writer);
    while let Some(message) = outgoing.recv().await {
        if let Err(err) = writer.write_all(message.as_bytes()).await {
            tracing::debug!(cause = %err, "ovsdb write failed");
            return;
        }
    }
    let _ = writer.shutdown().await;
}

async fn read_loop<R: AsyncRead>(
    reader: R,
    shared: Arc<Shared>,
    outgoing: mpsc::UnboundedSender<String>,
) {
    tokio::pin!(reader);
    let mut framer = Framer::default();
    let mut buffer = vec![0u8; 64 * 1024];
    let reason = loop {
        let read = match reader.read(&mut buffer).await {
            Ok(0) => break "server closed the connection".to_string(),
            Ok(read) => read,
            Err(err) => break format!("read failed: {err}"),
        };
        framer.push(&buffer[..read]);
        match framer.drain_values() {
            Ok(messages) => {
                for message in messages {
                    dispatch(&shared, &outgoing, message);
                }
            }
            Err(err) => break err.to_string(),
        }
    };
    tracing::debug!(%reason, "ovsdb session closed");
    let mut pending = lock(&shared.pending);
    *lock(&shared.closed) = Some(reason.clone());
    for (_, (_, reply)) in pending.drain() {
        let _ = reply.send(Err(OvsdbError::Disconnected(reason.clone())));
    }
    // Dropping the senders ends every MonitorStream.
    lock(&shared.monitors).clear();
}

fn dispatch(shared: &Shared, outgoing: &mpsc::UnboundedSender<String>, message: Value) {
    if let Some(method) = message.get("method").and_then(Value::as_str) {
        match method {
            // The server probes idle sessions and drops those that do not answer.
            "echo" => {
                let reply = json!({
                    "id": message.get("id").cloned().unwrap_or(Value::Null),
                    "result": message.get("params").cloned().unwrap_or(json!([])),
                    "error": null,
                });
                let _ = outgoing.send(reply.to_string());
            }
            "update" => {
                let params = message.get("params").and_then(Value::as_array);
                let (Some(monitor_id), Some(updates)) = (
                    params.and_then(|p| p.first()),
                    params.and_then(|p| p.get(1)),
                ) else {
                    tracing::warn!(%message, "malformed update notification");
                    return;
                };
                let key = match monitor_id {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let mut monitors = lock(&shared.monitors);
                if let Some(sender) = monitors.get(&key) {
                    if sender.send(updates.clone()).is_err() {
                        monitors.remove(&key);
                    }
                }
            }
            other => tracing::debug!(method = other, "ignoring unsolicited ovsdb request"),
        }
        return;
    }
    let Some(id) = message.get("id").and_then(Value::as_u64) else {
        tracing::warn!(%message, "ovsdb reply without a numeric id");
        return;
    };
    let Some((method, reply)) = lock(&shared.pending).remove(&id) else {
        tracing::warn!(id, "ovsdb reply to an unknown request");
        return;
    };
    let error = message.get("error").filter(|e| !e.is_null());
    let outcome = match error {
        Some(error) => Err(OvsdbError::Rpc {
            method,
            error: error
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| error.to_string()),
            details: error.get("details").map(|d| match d {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }),
        }),
        None => Ok(message.get("result").cloned().unwrap_or(Value::Null)),
    };
    let _ = reply.send(outcome);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};

    fn ops() -> Vec<Value> {
        vec![
            json!({"op": "insert", "table": "Bridge", "row": {"name": "br0"}, "uuid-name": "br"}),
            json!({"op": "wait", "table": "Bridge", "where": [], "columns": ["name"],
                   "until": "==", "rows": [], "timeout": 0}),
            json!({"op": "comment", "comment": "x"}),
        ]
    }

    #[test]
    fn op_error_names_its_index_and_op() {
        // Recorded from ovsdb-server 3.1 (`ovsdb-client transact`) for a wait
        // that did not hold.
        let reply: Value = serde_json::from_str(
            r#"[{"uuid":["uuid","97e96bc5-2497-44d6-a4f4-dcebe5c27f19"]},{"details":"\"where\" clause test failed","error":"timed out"},null]"#,
        )
        .unwrap();
        let err = check_transact_result(&ops(), reply).unwrap_err();
        match &err {
            OvsdbError::Operation {
                index,
                op,
                error,
                details,
            } => {
                assert_eq!(
                    (*index, op.as_str(), error.as_str()),
                    (1, "wait", "timed out")
                );
                assert_eq!(details.as_deref(), Some("\"where\" clause test failed"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.is_retryable());
        assert!(err.to_string().contains("op #1 (wait)"), "{err}");
    }

    #[test]
    fn unknown_column_is_an_op_error() {
        // Recorded: an update naming a column the table lacks.
        let reply: Value = serde_json::from_str(
            r#"[{},{"details":"No column no_such_column in table Bridge.","error":"unknown column","syntax":"{\"no_such_column\":1}"}]"#,
        )
        .unwrap();
        let ops = vec![
            json!({"op": "comment", "comment": "ok"}),
            json!({"op": "update", "table": "Bridge", "where": [], "row": {"no_such_column": 1}}),
        ];
        let err = check_transact_result(&ops, reply).unwrap_err();
        assert_eq!(
            err.to_string(),
            "OVSDB transact op #1 (update) failed: unknown column (No column no_such_column in table Bridge.)"
        );
        assert!(!err.is_retryable());
    }

    #[test]
    fn extra_entry_is_a_commit_error() {
        // Recorded: an insert referencing a nonexistent Port, then a mutate;
        // both ops succeed and the commit fails.
        let reply: Value = serde_json::from_str(
            r#"[{"uuid":["uuid","0d35cd59-b753-436a-afff-8b254cabe09a"]},{"count":1},{"details":"Table Bridge column ports row 0d35cd59-b753-436a-afff-8b254cabe09a references nonexistent row 5a0c4a5e-0000-4000-8000-000000000001 in table Port.","error":"referential integrity violation"}]"#,
        )
        .unwrap();
        let ops = vec![
            json!({"op": "insert", "table": "Bridge", "row": {}}),
            json!({"op": "mutate", "table": "Open_vSwitch", "where": [], "mutations": []}),
        ];
        let err = check_transact_result(&ops, reply).unwrap_err();
        assert!(
            matches!(&err, OvsdbError::Commit { error, details: Some(d) }
                if error == "referential integrity violation" && d.contains("nonexistent row")),
            "{err}"
        );
    }

    #[test]
    fn success_returns_one_result_per_op() {
        let reply = json!([{"uuid": ["uuid", "0f7d5d8a-7b2a-4d2b-9a4e-1d1b3c0b2f11"]}, {}, {}]);
        assert_eq!(check_transact_result(&ops(), reply).unwrap().len(), 3);
        let short = json!([{}]);
        assert!(matches!(
            check_transact_result(&ops(), short),
            Err(OvsdbError::Protocol(_))
        ));
    }

    #[tokio::test]
    async fn bad_targets_are_rejected_with_the_reason() {
        for target in ["ssl:1.2.3.4:6640", "unix:", "tcp:localhost", "/tmp/db.sock"] {
            let err = OvsdbClient::connect(target).await.unwrap_err();
            assert!(
                matches!(err, OvsdbError::InvalidTarget { .. }),
                "{target}: {err}"
            );
        }
    }

    /// A scripted server on a socket pair: answers echo probes, interleaves an
    /// update with a reply in one write, and returns an RPC-level error.
    #[tokio::test]
    async fn session_handles_echo_interleaved_updates_and_rpc_errors() {
        let (client_side, server_side) = tokio::net::UnixStream::pair().unwrap();
        let client = OvsdbClient::from_stream(client_side, "pair");
        let (server_read, mut server_write) = server_side.into_split();
        let mut server_lines = BufReader::new(server_read);

        let monitor = {
            let client = client.clone();
            tokio::spawn(async move { client.monitor("db", "m1", json!({"T": {}})).await })
        };
        // The server probes first; the client must answer before anything else.
        server_write
            .write_all(br#"{"id":"echo","method":"echo","params":[]}"#)
            .await
            .unwrap();
        let mut framer = Framer::default();
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let buf = server_lines.fill_buf().await.unwrap().to_vec();
            server_lines.consume(buf.len());
            framer.push(&buf);
            seen.extend(framer.drain_values().unwrap());
        }
        let monitor_req = seen
            .iter()
            .find(|m| m["method"] == "monitor")
            .unwrap()
            .clone();
        let echo_reply = seen.iter().find(|m| m["id"] == "echo").unwrap();
        assert_eq!(echo_reply["result"], json!([]));

        let id = monitor_req["id"].as_u64().unwrap();
        let both = format!(
            r#"{{"id":{id},"result":{{"T":{{"u1":{{"new":{{"a":1}}}}}}}},"error":null}}{{"id":null,"method":"update","params":["m1",{{"T":{{"u1":{{"old":{{"a":1}},"new":{{"a":2}}}}}}}}]}}"#
        );
        server_write.write_all(both.as_bytes()).await.unwrap();
        let (initial, mut stream) = monitor.await.unwrap().unwrap();
        assert_eq!(initial["T"]["u1"]["new"]["a"], json!(1));
        assert_eq!(
            stream.next().await.unwrap()["T"]["u1"]["new"]["a"],
            json!(2)
        );

        let failing = {
            let client = client.clone();
            tokio::spawn(async move { client.transact("nope", vec![]).await })
        };
        let mut next = Vec::new();
        while next.is_empty() {
            let buf = server_lines.fill_buf().await.unwrap().to_vec();
            server_lines.consume(buf.len());
            framer.push(&buf);
            next.extend(framer.drain_values().unwrap());
        }
        let id = next[0]["id"].as_u64().unwrap();
        server_write
            .write_all(format!(r#"{{"id":{id},"result":null,"error":{{"details":"transact request specifies unknown database nope","error":"unknown database","syntax":"[\"nope\"]"}}}}"#).as_bytes())
            .await
            .unwrap();
        let err = failing.await.unwrap().unwrap_err();
        assert!(
            matches!(&err, OvsdbError::Rpc { method, error, .. } if method == "transact" && error == "unknown database"),
            "{err}"
        );

        drop(server_write);
        drop(server_lines);
        let err = client.list_dbs().await.unwrap_err();
        assert!(matches!(err, OvsdbError::Disconnected(_)), "{err}");
        assert!(client.is_closed());
        assert!(stream.next().await.is_none());
    }
}
