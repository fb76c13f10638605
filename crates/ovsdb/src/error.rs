use serde_json::Value;

/// Everything that can go wrong talking to an OVSDB server.
#[derive(Debug, thiserror::Error)]
pub enum OvsdbError {
    /// The target string is not `unix:PATH` or `tcp:HOST:PORT`.
    #[error("invalid OVSDB target {target:?}: {reason}")]
    InvalidTarget {
        /// The target as given.
        target: String,
        /// Why it was rejected.
        reason: String,
    },
    /// Opening the connection failed.
    #[error("cannot connect to OVSDB at {target}: {source}")]
    Connect {
        /// The target as given.
        target: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// The session ended (server gone, socket error) before a reply arrived.
    #[error("OVSDB session closed: {0}")]
    Disconnected(String),
    /// The server answered a request with a JSON-RPC error (e.g. "unknown database").
    #[error("OVSDB {method} failed: {error}{}", fmt_details(.details))]
    Rpc {
        /// The JSON-RPC method.
        method: String,
        /// The OVSDB error string.
        error: String,
        /// The server's details, if any.
        details: Option<String>,
    },
    /// One operation of a transaction failed; the transaction was not committed.
    #[error("OVSDB transact op #{index} ({op}) failed: {error}{}", fmt_details(.details))]
    Operation {
        /// Zero-based index of the failing operation in the request.
        index: usize,
        /// The operation's `op` member (`insert`, `wait`, ...).
        op: String,
        /// The OVSDB error string (e.g. "constraint violation", "timed out").
        error: String,
        /// The server's details, if any.
        details: Option<String>,
    },
    /// Every operation succeeded but the commit failed (e.g. "referential
    /// integrity violation"); nothing was committed.
    #[error("OVSDB transaction commit failed: {error}{}", fmt_details(.details))]
    Commit {
        /// The OVSDB error string.
        error: String,
        /// The server's details, if any.
        details: Option<String>,
    },
    /// The server sent something RFC 7047 does not allow here.
    #[error("OVSDB protocol error: {0}")]
    Protocol(String),
    /// A value did not have the shape the caller asked for.
    #[error("OVSDB value {what}: {reason}")]
    Value {
        /// What was being decoded.
        what: String,
        /// Why it failed.
        reason: String,
    },
}

fn fmt_details(details: &Option<String>) -> String {
    match details {
        Some(details) if !details.is_empty() => format!(" ({details})"),
        _ => String::new(),
    }
}

impl OvsdbError {
    /// Build an error from an OVSDB `{"error": .., "details": ..}` object, for an
    /// operation at `index` or, when `index` is past the ops, for the commit.
    pub(crate) fn from_op_result(index: usize, ops: &[Value], entry: &Value) -> Self {
        let error = entry
            .get("error")
            .map(value_text)
            .unwrap_or_else(|| "unknown error".to_string());
        let details = entry.get("details").map(value_text);
        match ops.get(index) {
            Some(op) => OvsdbError::Operation {
                index,
                op: op
                    .get("op")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string(),
                error,
                details,
            },
            None => OvsdbError::Commit { error, details },
        }
    }

    /// True for "timed out" on a `wait` op or a commit that lost a race: the
    /// caller should re-read and rebuild the transaction.
    pub fn is_retryable(&self) -> bool {
        match self {
            OvsdbError::Operation { op, error, .. } => op == "wait" && error == "timed out",
            OvsdbError::Disconnected(_) => true,
            _ => false,
        }
    }
}

fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
