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
    include_str!("../../migrations/0007_flow_monitoring.sql"),
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
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = index + 1;
        let migrate_error = |source| StoreError::Migrate { version, source };
        let tx = conn.transaction().map_err(migrate_error)?;
        tx.execute_batch(sql).map_err(migrate_error)?;
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
