//! The PostgreSQL schema's migrations (controller/migrations-pg/).
//!
//! Numbered like SQLite's (controller/migrations/): the first is a baseline
//! equal to SQLite's schema after 0016, and every later one exists in both
//! dialects under the same number. `schema_version` holds the number of the
//! last one applied.

use postgres::Client;

use super::error::PgError;
use super::keys;

/// (number, SQL), in order.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        16,
        include_str!("../../../../migrations-pg/0016_baseline.sql"),
    ),
    (
        17,
        include_str!("../../../../migrations-pg/0017_control_key_versions.sql"),
    ),
    (
        18,
        include_str!("../../../../migrations-pg/0018_gateway_state.sql"),
    ),
    (
        19,
        include_str!("../../../../migrations-pg/0019_replica_files.sql"),
    ),
    (
        20,
        include_str!("../../../../migrations-pg/0020_exec_channels.sql"),
    ),
    (
        21,
        include_str!("../../../../migrations-pg/0021_node_certificates.sql"),
    ),
    (
        22,
        include_str!("../../../../migrations-pg/0022_metrics_role.sql"),
    ),
    (
        23,
        include_str!("../../../../migrations-pg/0023_guest_agent_version.sql"),
    ),
    (
        24,
        include_str!("../../../../migrations-pg/0024_nodes_heartbeat_table.sql"),
    ),
];

/// The newest schema version this build knows.
pub(crate) fn latest() -> i64 {
    MIGRATIONS.last().map_or(0, |(version, _)| *version)
}

/// Apply every migration newer than the database's version, all in one
/// transaction, and return the version now in force. The transaction first
/// takes an advisory lock, so replicas that start together apply them once:
/// the second waits, then sees the first's committed version and has
/// nothing left to do.
pub(crate) fn run(client: &mut Client) -> Result<i64, PgError> {
    let mut tx = client
        .transaction()
        .map_err(|err| PgError::query("BEGIN", err))?;
    let lock = format!("SELECT pg_advisory_xact_lock({})", keys::MIGRATE);
    tx.batch_execute(&lock)
        .map_err(|err| PgError::query(&lock, err))?;
    // Read after the lock: under READ COMMITTED each statement sees what
    // committed before it started, including another replica's migration.
    let current = current_version(&mut tx)?;
    if current > latest() {
        return Err(PgError::SchemaTooNew {
            found: current,
            known: latest(),
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.batch_execute(sql)
            .map_err(|err| PgError::query(&format!("migration {version:04}"), err))?;
        const SET: &str = "UPDATE schema_version SET version = $1";
        tx.execute(SET, &[version])
            .map_err(|err| PgError::query(SET, err))?;
    }
    tx.commit().map_err(|err| PgError::query("COMMIT", err))?;
    Ok(current.max(latest()))
}

/// 0 for a database without the schema.
fn current_version(tx: &mut postgres::Transaction<'_>) -> Result<i64, PgError> {
    const EXISTS: &str = "SELECT to_regclass('schema_version') IS NOT NULL";
    let exists: bool = tx
        .query_one(EXISTS, &[])
        .and_then(|row| row.try_get(0))
        .map_err(|err| PgError::query(EXISTS, err))?;
    if !exists {
        return Ok(0);
    }
    const VERSION: &str = "SELECT version FROM schema_version";
    tx.query_one(VERSION, &[])
        .and_then(|row| row.try_get(0))
        .map_err(|err| PgError::query(VERSION, err))
}
