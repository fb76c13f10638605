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
    include_str!("../../migrations/0005_node_identity.sql"),
    include_str!("../../migrations/0006_quotas.sql"),
    include_str!("../../migrations/0007_flow_monitoring.sql"),
    include_str!("../../migrations/0014_platform_points.sql"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::DEFAULT_TENANT_ID;

    /// A database as a controller before tenants left it, with a platform,
    /// its member node, a QoS policy, a VM, a program and a deployment.
    fn pre_tenancy_database(path: &Path) -> Connection {
        let conn = open_connection(path).unwrap();
        for sql in &MIGRATIONS[..3] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 3).unwrap();
        conn.execute_batch(
            "INSERT INTO platforms VALUES ('p1', 'lab', '[]', '', 100, '10.0.0.0/24', NULL,
                                           'running', 't', 1);
             INSERT INTO platform_nodes VALUES ('p1', 'n1', 0);
             INSERT INTO appliances VALUES ('a1', 'ns', '1', 'x86_64', 'l', '', '', NULL, 16,
                                            '[]', 1, 't');
             INSERT INTO qos_policies VALUES ('q1', 'q', 1, NULL, NULL, NULL, NULL, NULL, 't');
             INSERT INTO vms (id, name, platform_id, node_id, vcpus, memory_mib, disk_mib,
                              swap_mib, appliance_id, qos_policy_id, power_state, backend,
                              address, mac, port_name, actual_state, conditions, generation,
                              created_at)
             VALUES ('v1', 'vm', 'p1', 'n1', 1, 64, 0, 0, 'a1', 'q1', 'running', 'namespace',
                     '10.0.0.2', 'm', 'pn', 'pending', '[]', 1, 't');
             INSERT INTO programs VALUES ('pr1', 'prog', 'x', 1, X'00', 't');
             INSERT INTO deployments VALUES ('d1', 'pr1', '[]', '{}', 0, 't');
             INSERT INTO tasks VALUES ('k1', 'loss', '{}', 'p1', 'pending', NULL, 't');
             INSERT INTO events (time, reason, object_kind, object_id, message)
             VALUES ('t', 'PlatformCreated', 'platform', 'p1', 'm'),
                    ('t', 'NodeRegistered', 'node', 'n1', 'm');",
        )
        .unwrap();
        conn
    }

    #[test]
    fn tenancy_migration_gives_every_row_to_default_and_keeps_every_reference() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("controller.db");
        let mut conn = pre_tenancy_database(&path);
        migrate(&mut conn).unwrap();

        let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
        // The rebuild of platforms must not cascade into its members.
        assert_eq!(count("SELECT COUNT(*) FROM platform_nodes"), 1);
        for table in ["platforms", "qos_policies", "programs", "tasks"] {
            let owner: String = conn
                .query_row(&format!("SELECT tenant_id FROM {table}"), [], |r| r.get(0))
                .unwrap();
            assert_eq!(owner, DEFAULT_TENANT_ID, "{table}");
        }
        assert_eq!(count("SELECT COUNT(*) FROM vms"), 1);
        assert_eq!(count("SELECT COUNT(*) FROM deployments"), 1);
        assert_eq!(count("SELECT COUNT(*) FROM pragma_foreign_key_check"), 0);
        assert_eq!(
            count("SELECT COUNT(*) FROM events WHERE tenant_id IS NULL AND object_kind = 'node'"),
            1
        );
        // Enforcement is back on, and it sees the rebuilt tables.
        assert!(conn
            .execute("DELETE FROM platforms WHERE id = 'p1'", [])
            .is_err());
        // Names are unique per tenant now, not across tenants.
        conn.execute("INSERT INTO tenants VALUES ('t2', 't2', '', '{}', 't')", [])
            .unwrap();
        conn.execute(
            "INSERT INTO platforms (id, tenant_id, name, admins, description, vlan_tag, subnet,
                                    power_state, created_at, generation)
             VALUES ('p2', 't2', 'lab', '[]', '', 101, '10.0.1.0/24', 'running', 't', 1)",
            [],
        )
        .unwrap();
        assert!(conn
            .execute(
                "INSERT INTO platforms (id, tenant_id, name, admins, description, vlan_tag,
                                        subnet, power_state, created_at, generation)
                 VALUES ('p3', 't2', 'lab', '[]', '', 102, '10.0.2.0/24', 'running', 't', 1)",
                [],
            )
            .is_err());
    }
}
