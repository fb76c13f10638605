//! Opening `controller.db`: connection settings, schema migrations and file
//! permissions.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::error::StoreError;

/// Migrations, applied in order; `PRAGMA user_version` records how many ran.
/// Never edit a released entry: append a new one.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/0001_nodes_events_logs.sql"),
    include_str!("../../migrations/0002_platforms_vms_tasks.sql"),
    include_str!("../../migrations/0003_result_run_ids.sql"),
    include_str!("../../migrations/0004_tenants.sql"),
];

pub(crate) fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let open_error = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open(path).map_err(open_error)?;
    // synchronous=FULL: a commit returns only after the WAL is fsynced, which
    // is what "durable before acknowledged" needs. busy_timeout covers the
    // moment the WAL is checkpointed while the reader holds a snapshot.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 5000;",
    )
    .map_err(open_error)?;
    Ok(conn)
}

pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if current > MIGRATIONS.len() as i64 {
        return Err(StoreError::SchemaTooNew {
            found: current,
            known: MIGRATIONS.len(),
        });
    }
    // A migration that rebuilds a table (SQLite's way to change a UNIQUE
    // constraint) drops the old one; with enforcement on, that DROP would
    // cascade into child tables. Enforcement is off while migrations run
    // (the pragma cannot change inside a transaction) and each migration
    // proves the keys still hold before it commits.
    conn.pragma_update(None, "foreign_keys", false)?;
    let outcome = run_migrations(conn, current as usize);
    conn.pragma_update(None, "foreign_keys", true)?;
    outcome
}

fn run_migrations(conn: &mut Connection, done: usize) -> Result<(), StoreError> {
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        let version = index + 1;
        let migrate_error = |source| StoreError::Migrate { version, source };
        let tx = conn.transaction().map_err(migrate_error)?;
        tx.execute_batch(sql).map_err(migrate_error)?;
        let violations: i64 = tx
            .query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
                r.get(0)
            })
            .map_err(migrate_error)?;
        if violations > 0 {
            return Err(StoreError::Corrupt(format!(
                "schema migration {version} would leave {violations} broken foreign key(s); nothing was changed"
            )));
        }
        tx.pragma_update(None, "user_version", version as i64)
            .map_err(migrate_error)?;
        tx.commit().map_err(migrate_error)?;
        tracing::info!(version, "applied schema migration");
    }
    Ok(())
}

/// The database holds tokens, node secret digests and results: keep it
/// private to the controller's user.
pub(crate) fn restrict_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for file in [
        path.to_path_buf(),
        PathBuf::from(format!("{}-wal", path.display())),
    ] {
        if let Err(e) = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(file = %file.display(), error = %e, "cannot restrict database permissions");
            }
        }
    }
}
