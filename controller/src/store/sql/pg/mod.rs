//! The PostgreSQL backend of the store, for controller replicas that share
//! one database (docs/postgresql.md).
//!
//! [`PgDriver`] runs the store's SQLite-flavoured SQL on PostgreSQL: `?N`
//! markers become `$N` ([`placeholders`]), each statement is prepared once
//! per session and cached, and [`Value`]s are encoded by the parameter types
//! the server inferred and decoded from the column types it reports
//! ([`codec`]). On top of it, the replica primitives:
//! - [`PgDriver::write_lock`]: one writer at a time across replicas;
//! - [`PgDriver::migrate`]: the schema (controller/migrations-pg/), applied
//!   once even when replicas start together;
//! - [`Leadership`]: at most one replica runs the singleton loops;
//! - [`PgDriver::notify`] and [`Listener`]: tell the other replicas that
//!   something changed, on commit.
//!
//! Where a session may be used (plain threads and `spawn_blocking`, not on
//! an async worker thread) is said in [`conn`].
#![allow(
    dead_code,
    unused_imports,
    reason = "Leadership, Listener and notify serve controller replicas, wired in a later step"
)]

mod codec;
mod conn;
mod error;
mod keys;
mod leadership;
mod listener;
mod migrate;
mod placeholders;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use postgres::types::ToSql;
use postgres::{Client, Statement};

use super::value::Value;
pub(crate) use error::PgError;
pub(crate) use leadership::Leadership;
pub(crate) use listener::{ListenEvent, Listener};

/// Prepared statements kept per session. The store's SQL is a fixed set of
/// texts, well under this; the bound only stops SQL built at run time from
/// growing the cache (and the server's memory) without end.
const STATEMENT_CACHE_MAX: usize = 512;

/// One PostgreSQL session running the store's SQL.
pub(crate) struct PgDriver {
    /// Always `Some` until dropped: [`Drop`] takes it to close the session
    /// on a thread where that is allowed.
    client: Option<Client>,
    /// Prepared statements by the SQL text as the store wrote it.
    statements: HashMap<String, Statement>,
    /// Where the session was opened, to open another when it is lost.
    config: conn::Config,
    /// Between `BEGIN` and `COMMIT`/`ROLLBACK`: a lost session is then an
    /// error, never a new session, which would run the rest of the
    /// transaction's statements outside it.
    in_transaction: bool,
    /// A call on this session failed because the session is gone. The
    /// client marks itself closed only once its connection task has seen
    /// the socket end, which can be after the next call is already sent
    /// (that one then fails with a reset instead of [`PgError::SessionLost`]).
    lost: bool,
}

impl std::fmt::Debug for PgDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgDriver")
            .field("statements", &self.statements.len())
            .finish_non_exhaustive()
    }
}

impl PgDriver {
    /// Open a session: `postgres://user[:password]@host[:port]/db[?sslmode=...]`,
    /// or a unix socket directory as the host (see [`conn`]).
    pub(crate) fn connect(url: &str) -> Result<PgDriver, PgError> {
        let config = conn::config(url)?;
        Ok(PgDriver {
            client: Some(conn::open(&config)?),
            statements: HashMap::new(),
            config,
            in_transaction: false,
            lost: false,
        })
    }

    /// Run a statement that returns no rows; the number of rows it changed.
    pub(crate) fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, PgError> {
        let statement = self.prepare(sql)?;
        let encoded = encode_all(sql, &statement, params)?;
        let refs: Vec<&(dyn ToSql + Sync)> =
            encoded.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        self.session(sql)?
            .execute(&statement, &refs)
            .map_err(|err| self.failed(sql, err))
    }

    /// Run a query; its rows, each with its columns in select-list order.
    pub(crate) fn query(
        &mut self,
        sql: &str,
        params: &[Value],
    ) -> Result<Vec<Vec<Value>>, PgError> {
        let statement = self.prepare(sql)?;
        let encoded = encode_all(sql, &statement, params)?;
        let refs: Vec<&(dyn ToSql + Sync)> =
            encoded.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let rows = self
            .session(sql)?
            .query(&statement, &refs)
            .map_err(|err| self.failed(sql, err))?;
        rows.iter()
            .map(|row| {
                (0..row.len())
                    .map(|index| {
                        codec::decode(row, index).map_err(|reason| {
                            PgError::column(sql, index, row.columns()[index].name(), reason)
                        })
                    })
                    .collect()
            })
            .collect()
    }

    /// Run SQL without parameters, possibly several statements separated by
    /// `;`: the transaction control the store's writer uses (`BEGIN`,
    /// `COMMIT`, `SAVEPOINT x`, `RELEASE x`, `ROLLBACK TO x`, `ROLLBACK`).
    pub(crate) fn batch(&mut self, sql: &str) -> Result<(), PgError> {
        let verb = sql.trim_start();
        if verb.starts_with("COMMIT")
            || (verb.starts_with("ROLLBACK") && !verb.starts_with("ROLLBACK TO"))
        {
            // Never on a new session: there a COMMIT would succeed with
            // nothing to commit. Failed or not, the transaction is over (a
            // failed COMMIT rolls back on PostgreSQL).
            self.in_transaction = false;
            if self.is_gone() {
                return Err(PgError::SessionLost {
                    sql: sql.to_string(),
                });
            }
            return self
                .client()
                .batch_execute(sql)
                .map_err(|err| self.failed(sql, err));
        }
        let begins = verb.starts_with("BEGIN");
        if begins {
            // Whatever came before has ended: a new transaction may open
            // a new session.
            self.in_transaction = false;
        }
        let mut outcome = self
            .session(sql)?
            .batch_execute(sql)
            .map_err(|err| self.failed(sql, err));
        // A session the server ended shows as gone only once a call has
        // failed on it. Nothing of a transaction has run before its BEGIN,
        // so that one is sent again on a new session.
        if begins && outcome.is_err() && self.is_gone() {
            self.reopen()?;
            outcome = self
                .client()
                .batch_execute(sql)
                .map_err(|err| self.failed(sql, err));
        }
        if begins && outcome.is_ok() {
            self.in_transaction = true;
        }
        outcome
    }

    /// Take the store's write lock for the rest of the open transaction;
    /// call it right after `BEGIN` of every write transaction.
    ///
    /// The store was written for SQLite's single writer and relies on writes
    /// being serial: it reads and then inserts in one transaction to allocate
    /// a VLAN tag, an address or a gateway port, and checks quotas against
    /// what it just read. Under PostgreSQL's READ COMMITTED two replicas
    /// doing that at once would both see the same free value. With this
    /// lock, write transactions of all replicas run one after another as
    /// they did in one process, and ids from identity columns are handed out
    /// in commit order too (a reader paging by id never skips a row that
    /// commits late). Readers take no lock and are not blocked.
    ///
    /// The lock is released by COMMIT or ROLLBACK. Outside a transaction it
    /// would be released at once, so it is of no use there.
    pub(crate) fn write_lock(&mut self) -> Result<(), PgError> {
        self.batch(&format!("SELECT pg_advisory_xact_lock({})", keys::WRITE))
    }

    /// Bring the schema up to date (see [`migrate`]); the version in force.
    pub(crate) fn migrate(&mut self) -> Result<i64, PgError> {
        migrate::run(self.session("migrate")?)
    }

    /// `NOTIFY channel, payload`. Inside a transaction it is delivered when
    /// the transaction commits, and never if it rolls back; outside one, at
    /// once. Payloads must be under 8000 bytes (the server's limit).
    pub(crate) fn notify(&mut self, channel: &str, payload: &str) -> Result<(), PgError> {
        const NOTIFY: &str = "SELECT pg_notify($1, $2)";
        self.session(NOTIFY)?
            .execute(NOTIFY, &[&channel, &payload])
            .map(drop)
            .map_err(|err| self.failed(NOTIFY, err))
    }

    fn client(&mut self) -> &mut Client {
        self.client
            .as_mut()
            .expect("a PgDriver's session is only taken by its Drop")
    }

    /// The session to run `sql` on. One the server ended (a restart, a
    /// failover, a terminated backend) is replaced by a new one from the
    /// same URL, whose hosts are tried again in order, unless a transaction
    /// is open on it: the server has rolled that back, so the rest of it
    /// must fail, not run on its own. Without this a controller kept its
    /// dead sessions and failed every request until it was restarted.
    fn session(&mut self, sql: &str) -> Result<&mut Client, PgError> {
        if self.is_gone() {
            if self.in_transaction {
                return Err(PgError::SessionLost {
                    sql: sql.lines().next().unwrap_or_default().to_string(),
                });
            }
            self.reopen()?;
        }
        Ok(self.client())
    }

    fn reopen(&mut self) -> Result<(), PgError> {
        let fresh = conn::open(&self.config)?;
        // Closing the dead session blocks on its runtime like any call,
        // which a thread running this driver may do.
        drop(std::mem::replace(self.client(), fresh));
        self.statements.clear();
        self.lost = false;
        tracing::warn!("PostgreSQL session lost; a new one is open");
        Ok(())
    }

    /// Whether the session is known to be unusable.
    fn is_gone(&mut self) -> bool {
        self.lost || self.client().is_closed()
    }

    /// The error of a failed call, remembering when it says the session is gone.
    fn failed(&mut self, sql: &str, err: postgres::Error) -> PgError {
        let error = PgError::query(sql, err);
        if error.is_connection_lost() {
            self.lost = true;
        }
        error
    }

    fn prepare(&mut self, sql: &str) -> Result<Statement, PgError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self
            .session(sql)?
            .prepare(&placeholders::rewrite(sql))
            .map_err(|err| self.failed(sql, err))?;
        if self.statements.len() >= STATEMENT_CACHE_MAX {
            self.statements.clear();
        }
        self.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }
}

impl Drop for PgDriver {
    /// Closing a session blocks on the client's own runtime, which panics on
    /// a thread that runs async tasks (see [`conn`]). A store's connections
    /// are dropped wherever its last handle goes, often an async worker at
    /// shutdown, so there the session is closed on a thread of its own.
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_err() {
            drop(client);
            return;
        }
        let closed = std::thread::Builder::new()
            .name("pg-close".into())
            .spawn(move || drop(client));
        if let Err(e) = closed {
            // The session then ends when the process does; the server
            // notices the closed socket.
            tracing::warn!(error = %e, "cannot close a PostgreSQL session on a thread of its own");
        }
    }
}

/// `params` encoded for `statement`, checked against its parameter count.
fn encode_all<'a>(
    sql: &str,
    statement: &Statement,
    params: &'a [Value],
) -> Result<Vec<codec::Param<'a>>, PgError> {
    let types = statement.params();
    if types.len() != params.len() {
        return Err(PgError::param(
            sql,
            params.len().min(types.len()) + 1,
            format!(
                "the statement has {} parameters, {} values were given",
                types.len(),
                params.len()
            ),
        ));
    }
    params
        .iter()
        .zip(types)
        .enumerate()
        .map(|(n, (value, ty))| {
            codec::encode(value, ty).map_err(|reason| PgError::param(sql, n + 1, reason))
        })
        .collect()
}
