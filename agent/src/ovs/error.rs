//! [`OvsError`], shared by the spec, the planner and the driver.

use super::ownership::OWNER_KEY;

/// Errors of the OVS driver.
#[derive(Debug, thiserror::Error)]
pub enum OvsError {
    /// The desired state is invalid; nothing was changed.
    #[error("invalid switch spec: {field}: {reason}")]
    InvalidSpec {
        /// The offending field, e.g. `ports[2].vlan`.
        field: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The request needs something this node cannot do; nothing was changed.
    #[error("unsupported on this node: {field}: {reason}")]
    Unsupported {
        /// The field that asked for it.
        field: String,
        /// What is missing.
        reason: String,
    },
    /// A row we would have to change is not ours.
    #[error(
        "{table} {name:?} exists but is not owned by {OWNER_KEY}={owner}; refusing to touch it"
    )]
    Conflict {
        /// OVSDB table.
        table: String,
        /// Row name.
        name: String,
        /// Our owner id.
        owner: String,
    },
    /// OVSDB failed (connection, op or commit error).
    #[error(transparent)]
    Ovsdb(#[from] measurelab_ovsdb::OvsdbError),
    /// OVSDB returned something our model cannot represent.
    #[error("unexpected OVSDB content: {0}")]
    Unexpected(String),
}

impl OvsError {
    /// Worth retrying after re-reading: a concurrent change or a lost session.
    pub fn is_transient(&self) -> bool {
        matches!(self, OvsError::Ovsdb(err) if err.is_retryable())
    }
}
