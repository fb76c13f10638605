//! Which controller replica runs the singleton loops (the liveness sweep,
//! the retention prune): the one holding the PostgreSQL leader lock, or
//! the only controller there is on SQLite.
//!
//! Work whose double execution matters is still fenced in the database
//! (every write transaction holds the store's write lock and re-checks what
//! it changes): the flag can be stale for a check period after the leader's
//! session is lost (see `store::sql::pg::Leadership`).

use std::time::Duration;

use crate::store::sql::pg::{Leadership, PgError};

/// How often a replica tries for the lock, and a leader checks its session.
const CHECK_EVERY: Duration = Duration::from_secs(1);

pub(crate) enum LeaderGate {
    /// SQLite: one controller owns the data dir (its lock), so it leads.
    Alone,
    Elected(Leadership),
}

impl LeaderGate {
    /// The gate for a store at `store_url` (`None`: SQLite).
    pub(crate) fn for_store(store_url: Option<&str>) -> Result<LeaderGate, PgError> {
        match store_url {
            None => Ok(LeaderGate::Alone),
            Some(url) => Ok(LeaderGate::Elected(Leadership::start(url, CHECK_EVERY)?)),
        }
    }

    pub(crate) fn is_leader(&self) -> bool {
        match self {
            LeaderGate::Alone => true,
            LeaderGate::Elected(leadership) => leadership.is_leader(),
        }
    }
}
