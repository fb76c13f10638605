//! What can go wrong talking to PostgreSQL, and the few classes of it the
//! store acts on (retry a serialization failure, reconnect after a lost
//! connection, answer a conflict for a unique violation).

use postgres::error::SqlState;

/// Longest statement excerpt an error carries.
const SQL_EXCERPT_MAX: usize = 120;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The URL does not parse, or asks for something this build cannot do.
    #[error("PostgreSQL URL: {reason}")]
    Url { reason: String },
    /// No session could be opened. `target` names hosts, ports and the
    /// database, never the password.
    #[error("cannot connect to PostgreSQL at {target}: {detail}")]
    Connect {
        target: String,
        detail: String,
        #[source]
        source: postgres::Error,
    },
    /// A TLS file the URL names (`sslrootcert`, `sslcert`, `sslkey`) cannot
    /// be read or holds no usable PEM.
    #[error("PostgreSQL URL: {parameter} {}: {reason}", path.display())]
    TlsFile {
        parameter: &'static str,
        path: std::path::PathBuf,
        reason: String,
    },
    /// TLS to the server failed: it does not offer TLS where the URL
    /// requires it, or its certificate is not what the URL's sslmode and
    /// sslrootcert accept (another CA, another host name). Not a lost
    /// connection: trying again meets the same certificate.
    #[error("TLS to PostgreSQL at {target} failed: {detail}")]
    Tls {
        target: String,
        detail: String,
        #[source]
        source: postgres::Error,
    },
    /// The server refused or failed a statement. `sql` is its first line.
    #[error("{sql}: {detail}")]
    Query {
        sql: String,
        detail: String,
        #[source]
        source: postgres::Error,
    },
    /// A parameter's value does not fit the type the server inferred for it.
    #[error("{sql}: parameter {index}: {reason}")]
    Param {
        sql: String,
        /// 1-based, as in `?1`.
        index: usize,
        reason: String,
    },
    /// A result column has a type or value that has no [`Value`](super::super::value::Value).
    #[error("{sql}: column {index} ({name}): {reason}")]
    Column {
        sql: String,
        /// 0-based, as in the row.
        index: usize,
        name: String,
        reason: String,
    },
    /// A background thread (leadership, listener) could not be started.
    #[error("cannot start the {what} thread: {source}")]
    Spawn {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The session ended inside a transaction (the server restarted, failed
    /// over, or ended the backend): the server rolled the transaction back.
    /// The next transaction opens a new session.
    #[error("{sql}: the session to PostgreSQL was lost inside a transaction, which the server rolled back")]
    SessionLost { sql: String },
    /// The database was migrated by a newer build than this one.
    #[error("the database's schema version {found} is newer than the newest this build knows ({known}); run the newer controller")]
    SchemaTooNew { found: i64, known: i64 },
}

impl PgError {
    pub(crate) fn query(sql: &str, source: postgres::Error) -> Self {
        PgError::Query {
            sql: excerpt(sql),
            detail: detail(&source),
            source,
        }
    }

    pub(crate) fn param(sql: &str, index: usize, reason: impl Into<String>) -> Self {
        PgError::Param {
            sql: excerpt(sql),
            index,
            reason: reason.into(),
        }
    }

    pub(crate) fn column(sql: &str, index: usize, name: &str, reason: impl Into<String>) -> Self {
        PgError::Column {
            sql: excerpt(sql),
            index,
            name: name.to_string(),
            reason: reason.into(),
        }
    }

    fn source_error(&self) -> Option<&postgres::Error> {
        match self {
            PgError::Connect { source, .. } | PgError::Query { source, .. } => Some(source),
            _ => None,
        }
    }

    fn code(&self) -> Option<&SqlState> {
        self.source_error().and_then(postgres::Error::code)
    }

    /// A UNIQUE or PRIMARY KEY constraint refused the row (23505).
    pub(crate) fn is_unique_violation(&self) -> bool {
        self.code() == Some(&SqlState::UNIQUE_VIOLATION)
    }

    /// A FOREIGN KEY constraint refused the row or the delete (23503).
    pub(crate) fn is_foreign_key_violation(&self) -> bool {
        self.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION)
    }

    /// The transaction lost a serialization conflict (40001) or a deadlock
    /// (40P01): rolled back by the server, safe to run again from BEGIN.
    pub(crate) fn is_serialization_failure(&self) -> bool {
        matches!(
            self.code(),
            Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
        )
    }

    /// The session is gone (closed socket, I/O error, or the server ended it
    /// with an administrator command or a shutdown): the driver is useless
    /// and a new one must connect; whatever transaction was open is lost.
    pub(crate) fn is_connection_lost(&self) -> bool {
        let Some(source) = self.source_error() else {
            return false;
        };
        if source.is_closed() {
            return true;
        }
        if let Some(code) = source.code() {
            // Class 08: connection exception; 57P01..57P03: admin shutdown,
            // crash shutdown, cannot connect now.
            return code.code().starts_with("08")
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW;
        }
        let mut cause = std::error::Error::source(source);
        while let Some(err) = cause {
            if err.is::<std::io::Error>() {
                return true;
            }
            cause = err.source();
        }
        false
    }
}

/// The first non-empty line of `sql`, shortened: enough to find the
/// statement in the code without flooding a log.
pub(crate) fn excerpt(sql: &str) -> String {
    let line = sql
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    match line.char_indices().nth(SQL_EXCERPT_MAX) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_string(),
    }
}

/// `postgres::Error`'s own Display says only "db error" for a server error;
/// the server's message, detail and hint are what a reader needs.
pub(crate) fn detail(err: &postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        let mut text = format!("{} ({}): {}", db.severity(), db.code().code(), db.message());
        if let Some(detail) = db.detail() {
            text.push_str(&format!("; {detail}"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!("; hint: {hint}"));
        }
        return text;
    }
    let mut text = err.to_string();
    let mut cause = std::error::Error::source(err);
    while let Some(inner) = cause {
        text.push_str(&format!(": {inner}"));
        cause = inner.source();
    }
    text
}
