//! `StoreError`: the one error of the controller's domain. The HTTP API
//! (`api::error`) and the node API (`agent_rpc::error`) each translate it in
//! one place.

use std::path::PathBuf;

use crate::validation::FieldError;

/// Why a store call failed. Nothing of a failed request was stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or configured.
    #[error("cannot open the controller database {path}: {source}")]
    Open {
        /// Database file.
        path: PathBuf,
        /// Database error.
        source: super::sql::Error,
    },
    /// A schema migration failed; the database is left at the previous version.
    #[error("schema migration {version} failed: {source}")]
    Migrate {
        /// 1-based migration number.
        version: usize,
        /// Database error.
        source: super::sql::Error,
    },
    /// The pre-migration copy could not be written; nothing was migrated.
    #[error(
        "cannot copy the database to {path} before migrating it (nothing was migrated): {reason}"
    )]
    Backup {
        /// Copy being written.
        path: PathBuf,
        /// Cause.
        reason: String,
    },
    /// `PRAGMA quick_check` found damage.
    #[error("the database {path} is damaged ({problems}); restore it from a backup (see the backups directory beside it) before starting")]
    Damaged {
        /// Database file.
        path: PathBuf,
        /// What quick_check reported.
        problems: String,
    },
    /// The database was written by a newer controller.
    #[error("the database has schema version {found}, this controller knows up to {known}; upgrade the controller")]
    SchemaTooNew {
        /// Version in the file.
        found: i64,
        /// Newest version this build knows.
        known: usize,
    },
    /// A SQL statement failed.
    #[error("database error: {0}")]
    Sql(#[from] super::sql::Error),
    /// No WireGuard key pair could be generated; nothing was stored.
    #[error("cannot generate a WireGuard key pair: {0}")]
    KeyGen(#[from] crate::wg_keys::KeyGenError),
    /// A stored value does not parse (hand-edited or corrupt database).
    #[error("corrupt value in the database: {0}")]
    Corrupt(String),
    /// The batch could not be committed; nothing in it was stored.
    #[error("database commit failed, nothing was stored: {0}")]
    Commit(String),
    /// No node has this id or name.
    #[error("no node with id or name {0:?}")]
    UnknownNode(String),
    /// The node exists but the secret does not match.
    #[error("wrong node secret for node {0}")]
    WrongSecret(String),
    /// Another node already uses the name.
    #[error("the name {name:?} is already used by node {owner}")]
    NameTaken {
        /// Requested name.
        name: String,
        /// Id of the node holding it.
        owner: String,
    },
    /// An operator revoked the node (by name).
    #[error("node {0} was revoked by an operator")]
    Revoked(String),
    /// A registration was refused: it named an existing node without that
    /// node's secret, the node is revoked, or a per-node join token names
    /// another node. The message says which and what the operator can do.
    #[error("{0}")]
    RegistrationRefused(String),
    /// A join token made through the API is unknown, wrong, expired, used
    /// up or revoked.
    #[error("join_token: {0}")]
    JoinTokenRefused(String),
    /// The writer thread has stopped (controller shutting down).
    #[error("the store is shutting down")]
    WriterGone,
    /// A blocking store task (a read, a transaction, the checkpoint thread)
    /// panicked, was cancelled or could not start.
    #[error("store task failed: {0}")]
    Task(String),
    /// A request field is invalid.
    #[error("{field}: {reason}")]
    Invalid {
        /// JSON path of the field.
        field: String,
        /// Why.
        reason: String,
    },
    /// The addressed object does not exist.
    #[error("{kind} {id:?} not found")]
    NotFound {
        /// Kind of object.
        kind: &'static str,
        /// Id or name asked for.
        id: String,
    },
    /// The request conflicts with the current state (name taken, still in use).
    #[error("{message}")]
    Conflict {
        /// Field to blame, if one is.
        field: Option<String>,
        /// What conflicts.
        message: String,
    },
    /// The caller sees the object but its role may not do this; the message
    /// names the object, the action and the role needed.
    #[error("{0}")]
    Forbidden(String),
    /// The request would take its tenant past a quota.
    #[error("{message}")]
    QuotaExceeded {
        /// Request field whose value passes the quota, if one does.
        field: Option<String>,
        /// Quota, tenant, use, request and limit.
        message: String,
    },
    /// A VLAN, subnet, address or MAC pool has no free entry.
    #[error("{0}")]
    PoolExhausted(String),
}

impl StoreError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        StoreError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn conflict(field: Option<&str>, message: impl Into<String>) -> Self {
        StoreError::Conflict {
            field: field.map(str::to_string),
            message: message.into(),
        }
    }
}

impl From<FieldError> for StoreError {
    fn from(e: FieldError) -> Self {
        StoreError::Invalid {
            field: e.field,
            reason: e.reason,
        }
    }
}
