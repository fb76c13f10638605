//! Opening `controller.db`: connection settings, schema migrations and file
//! permissions. Everything here is SQLite's own (pragmas, `VACUUM INTO`,
//! `user_version`), so it talks to rusqlite directly and hands the rest of
//! the store a [`sql::Connection`].

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::error::StoreError;
use super::heartbeat_sql::HEARTBEAT_ROWS_PER_STATEMENT;
use super::sql;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sql(e.into())
    }
}

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
    include_str!("../../migrations/0008_vm_usage.sql"),
    include_str!("../../migrations/0009_appliance_files.sql"),
    include_str!("../../migrations/0010_vm_maxima.sql"),
    include_str!("../../migrations/0011_comparisons.sql"),
    include_str!("../../migrations/0012_platform_points.sql"),
    include_str!("../../migrations/0013_control_keys.sql"),
    include_str!("../../migrations/0014_deployment_outputs.sql"),
    include_str!("../../migrations/0015_platform_gateways.sql"),
    include_str!("../../migrations/0016_platform_control_keys.sql"),
    include_str!("../../migrations/0017_control_key_versions.sql"),
    include_str!("../../migrations/0018_gateway_state.sql"),
    include_str!("../../migrations/0019_replica_files.sql"),
    include_str!("../../migrations/0020_exec_channels.sql"),
    include_str!("../../migrations/0021_node_certificates.sql"),
    include_str!("../../migrations/0022_metrics_role.sql"),
    include_str!("../../migrations/0023_guest_agent_version.sql"),
    include_str!("../../migrations/0024_nodes_heartbeat_table.sql"),
];

/// Where the store's tables are: `controller.db` in the data dir (the
/// default), or a PostgreSQL database that controller replicas share.
#[derive(Clone)]
pub(crate) enum Location {
    Sqlite(PathBuf),
    /// A `postgres://` URL; it may hold a password, so it is never printed.
    Postgres(String),
}

impl Location {
    /// Open, check and migrate the database: the writer's connection. On
    /// PostgreSQL the integrity check and the pre-migration copy are the
    /// server's and the operator's (`pg_dump`); migrations run once across
    /// replicas under an advisory lock.
    pub(crate) fn open_primary(&self) -> Result<sql::Connection, StoreError> {
        match self {
            Location::Sqlite(path) => open_primary(path),
            Location::Postgres(url) => {
                let mut driver = sql::pg::PgDriver::connect(url).map_err(sql::Error::from)?;
                let version = driver.migrate().map_err(sql::Error::from)?;
                tracing::info!(version, "PostgreSQL schema ready");
                Ok(sql::Connection::from_postgres(driver))
            }
        }
    }

    /// Another connection to the same database (reader, resources).
    pub(crate) fn open_connection(&self) -> Result<sql::Connection, StoreError> {
        match self {
            Location::Sqlite(path) => open_connection(path),
            Location::Postgres(url) => Ok(sql::Connection::open_postgres(url)?),
        }
    }

    /// A connection of its own for a long read beside the writer: read-only
    /// on SQLite; on PostgreSQL a session of its own, which MVCC keeps from
    /// blocking writers.
    pub(crate) fn open_reader(&self) -> Result<sql::Connection, StoreError> {
        match self {
            Location::Sqlite(path) => open_reader(path),
            Location::Postgres(url) => Ok(sql::Connection::open_postgres(url)?),
        }
    }

    /// The database a test store on `data_dir` uses: `controller.db` there,
    /// or PostgreSQL when `MEASURELAB_TEST_STORE=postgres`.
    #[cfg(test)]
    pub(crate) fn for_test(data_dir: &Path) -> Location {
        match test_location(data_dir) {
            Some(url) => Location::Postgres(url),
            None => Location::Sqlite(data_dir.join("controller.db")),
        }
    }

    /// For logs: the file, or `postgres` (the URL may hold a password).
    pub(crate) fn describe(&self) -> String {
        match self {
            Location::Sqlite(path) => path.display().to_string(),
            Location::Postgres(_) => "postgres".to_string(),
        }
    }
}

/// The `postgres://` URL of a test store on `data_dir`, `None` for SQLite
/// (`measurelab_testbed::pg::store_for`).
#[cfg(test)]
pub(crate) fn test_location(data_dir: &Path) -> Option<String> {
    measurelab_testbed::pg::store_for(data_dir).expect("the test store's PostgreSQL database")
}

/// Statements the writer's connection keeps compiled: one heartbeat
/// `UPDATE` per row count, and room for the writer's other statements
/// (commands, savepoints, events), a few dozen. With rusqlite's default of
/// 16, the heartbeat texts evicted each other and every batch compiled its
/// `UPDATE` again: a sixth of the writer thread's CPU at 5,000 heartbeats/s.
const WRITER_STATEMENT_CACHE: usize = HEARTBEAT_ROWS_PER_STATEMENT + 64;

/// Open, check and migrate the database: the writer's connection.
fn open_primary(path: &Path) -> Result<sql::Connection, StoreError> {
    open_writer_sqlite(path).map(sql::Connection::from_sqlite)
}

fn open_writer_sqlite(path: &Path) -> Result<Connection, StoreError> {
    let mut conn = open_sqlite(path)?;
    check_integrity(&conn, path)?;
    migrate(&mut conn)?;
    conn.set_prepared_statement_cache_capacity(WRITER_STATEMENT_CACHE);
    Ok(conn)
}

/// Another connection to the same database (reader, resources, checkpoints).
pub(crate) fn open_connection(path: &Path) -> Result<sql::Connection, StoreError> {
    open_sqlite(path).map(sql::Connection::from_sqlite)
}

/// A read-only connection of its own, for a long read beside the writer.
fn open_reader(path: &Path) -> Result<sql::Connection, StoreError> {
    let open_error = |source: rusqlite::Error| StoreError::Open {
        path: path.to_path_buf(),
        source: source.into(),
    };
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_error)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(open_error)?;
    Ok(sql::Connection::from_sqlite(conn))
}

fn open_sqlite(path: &Path) -> Result<Connection, StoreError> {
    let open_error = |source: rusqlite::Error| StoreError::Open {
        path: path.to_path_buf(),
        source: source.into(),
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
    // An operator who finds a migrated controller misbehaving can go back
    // to the previous release only with the previous schema: keep a copy of
    // it. A new database (version 0) has nothing to keep.
    if current > 0 && (current as usize) < MIGRATIONS.len() {
        backup_before_migration(conn, current)?;
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

/// Directory, next to the database, that keeps its pre-migration copies.
pub(crate) const BACKUP_DIR: &str = "backups";

/// `VACUUM INTO` a consistent copy of the database at schema `version`,
/// named `controller.db.v<version>-<unix seconds>` so successive upgrades
/// never overwrite each other's copy. Refuses to migrate if the copy fails:
/// an upgrade with no way back is worse than one that waits.
fn backup_before_migration(conn: &Connection, version: i64) -> Result<PathBuf, StoreError> {
    let db_path = conn
        .path()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| StoreError::Backup {
            path: PathBuf::from(":memory:"),
            reason: "the database has no file to back up".into(),
        })?;
    let dir = db_path
        .parent()
        .map(|parent| parent.join(BACKUP_DIR))
        .unwrap_or_else(|| PathBuf::from(BACKUP_DIR));
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let file_name = db_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "controller.db".into());
    let target = dir.join(format!("{file_name}.v{version}-{stamp}"));
    let backup_error = |reason: String| StoreError::Backup {
        path: target.clone(),
        reason,
    };
    std::fs::create_dir_all(&dir).map_err(|e| backup_error(e.to_string()))?;
    let target_text = target
        .to_str()
        .ok_or_else(|| backup_error("the path is not UTF-8".into()))?;
    conn.execute("VACUUM INTO ?1", [target_text])
        .map_err(|e| backup_error(e.to_string()))?;
    restrict_permissions(&target);
    tracing::info!(version, backup = %target.display(), "database copied before schema migration");
    Ok(target)
}

/// `PRAGMA quick_check` at start: a damaged file (a torn write on a disk
/// that lied about fsync, a hand edit) is refused before the controller
/// serves from it and writes more on top.
pub(crate) fn check_integrity(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let damaged = |problems: String| StoreError::Damaged {
        path: path.to_path_buf(),
        problems,
    };
    // Damage bad enough can stop the check itself: that is damage too, not
    // an SQL failure to retry.
    let is_damage = |e: &rusqlite::Error| {
        matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
        )
    };
    let problems = conn
        .prepare("PRAGMA quick_check(20)")
        .and_then(|mut statement| {
            statement
                .query_map([], |row| row.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|e| {
            if is_damage(&e) {
                damaged(e.to_string())
            } else {
                StoreError::Sql(e.into())
            }
        })?;
    if problems.len() == 1 && problems[0] == "ok" {
        return Ok(());
    }
    Err(damaged(problems.join("; ")))
}

fn run_migrations(conn: &mut Connection, done: usize) -> Result<(), StoreError> {
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        let version = index + 1;
        let migrate_error = |source: rusqlite::Error| StoreError::Migrate {
            version,
            source: source.into(),
        };
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
        let conn = open_sqlite(path).unwrap();
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
        // The task (0013) and the platform (0016) that predate keys got one
        // each: 64 hex digits, not the same.
        let keys: Vec<(String, String)> = conn
            .prepare("SELECT owner_id, secret FROM control_keys ORDER BY owner_id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let owners: Vec<&str> = keys.iter().map(|(owner, _)| owner.as_str()).collect();
        assert_eq!(owners, ["k1", "p1"]);
        assert!(
            keys.iter()
                .all(|(_, secret)| secret.len() == 64
                    && secret.bytes().all(|b| b.is_ascii_hexdigit()))
        );
        assert_ne!(keys[0].1, keys[1].1);
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

    /// 0022 rebuilds api_tokens for the `metrics` role: every token and
    /// column survives, and the checks hold for the new role as for
    /// `operator` (no tenant) while a tenant role still needs one.
    #[test]
    fn the_metrics_role_migration_keeps_every_token() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_sqlite(&dir.path().join("controller.db")).unwrap();
        for sql in &MIGRATIONS[..21] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 21).unwrap();
        conn.execute_batch(&format!(
            "INSERT INTO api_tokens VALUES ('k1', 'ops', NULL, 'operator', 'sha256:a', 't1',
                                            NULL, NULL, 'u1');
             INSERT INTO api_tokens VALUES ('k2', 'ci', '{DEFAULT_TENANT_ID}', 'member',
                                            'sha256:b', 't2', 'e2', 'r2', NULL);"
        ))
        .unwrap();
        assert!(
            conn.execute(
                "INSERT INTO api_tokens (id, name, role, secret_digest, created_at)
                 VALUES ('k3', 'prom', 'metrics', 'sha256:c', 't3')",
                [],
            )
            .is_err(),
            "schema 21 already takes a metrics token"
        );
        migrate(&mut conn).unwrap();

        let rows: Vec<String> = conn
            .prepare(
                "SELECT id || name || IFNULL(tenant_id, '-') || role || secret_digest ||
                             created_at || IFNULL(expires_at, '-') || IFNULL(revoked_at, '-') ||
                             IFNULL(last_used_at, '-')
                      FROM api_tokens ORDER BY id",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            [
                "k1ops-operatorsha256:at1--u1".to_string(),
                format!("k2ci{DEFAULT_TENANT_ID}membersha256:bt2e2r2-"),
            ]
        );
        let insert = |id: &str, tenant: Option<&str>, role: &str| {
            conn.execute(
                "INSERT INTO api_tokens (id, name, tenant_id, role, secret_digest, created_at)
                 VALUES (?1, ?1, ?2, ?3, 'sha256:x', 't')",
                rusqlite::params![id, tenant, role],
            )
        };
        insert("k3", None, "metrics").unwrap();
        assert!(insert("k4", Some(DEFAULT_TENANT_ID), "metrics").is_err());
        assert!(insert("k5", None, "viewer").is_err());
        assert!(insert("k6", None, "admin").is_err());
    }

    #[test]
    fn migrating_an_older_schema_first_keeps_a_copy_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("controller.db");
        let mut conn = pre_tenancy_database(&path);
        migrate(&mut conn).unwrap();

        let copies: Vec<_> = std::fs::read_dir(dir.path().join(BACKUP_DIR))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(copies.len(), 1, "{copies:?}");
        let name = copies[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(name.starts_with("controller.db.v3-"), "{name}");
        let copy = Connection::open(&copies[0]).unwrap();
        let version: i64 = copy
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 3);
        // The copy is the old schema with the old rows: platforms had no
        // tenant yet.
        let platforms: i64 = copy
            .query_row("SELECT COUNT(*) FROM platforms", [], |r| r.get(0))
            .unwrap();
        assert_eq!(platforms, 1);
        assert!(copy.prepare("SELECT tenant_id FROM platforms").is_err());

        // Already current: nothing more to keep.
        migrate(&mut conn).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join(BACKUP_DIR))
                .unwrap()
                .count(),
            1
        );
    }

    /// A statement evicted from the cache is compiled again, with its run
    /// counter back at 0: at 5,000 heartbeats/s that compiling was a sixth
    /// of the writer thread's CPU.
    #[test]
    fn the_writer_keeps_every_heartbeat_statement_compiled() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_writer_sqlite(&dir.path().join("controller.db")).unwrap();
        for _ in 0..2 {
            for rows in 1..=HEARTBEAT_ROWS_PER_STATEMENT {
                // NULL ids match no node: the statement runs, nothing changes.
                let nulls = vec![rusqlite::types::Value::Null; rows * 7];
                conn.prepare_cached(super::super::heartbeat_sql::heartbeat_update(rows))
                    .unwrap()
                    .execute(rusqlite::params_from_iter(nulls))
                    .unwrap();
            }
        }
        for rows in 1..=HEARTBEAT_ROWS_PER_STATEMENT {
            let statement = conn
                .prepare_cached(super::super::heartbeat_sql::heartbeat_update(rows))
                .unwrap();
            assert_eq!(
                statement.get_status(rusqlite::StatementStatus::Run),
                2,
                "the {rows}-row heartbeat statement was compiled again"
            );
        }
    }

    #[test]
    fn a_new_database_is_migrated_without_a_copy() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_sqlite(&dir.path().join("controller.db")).unwrap();
        migrate(&mut conn).unwrap();
        assert!(!dir.path().join(BACKUP_DIR).exists());
    }

    #[test]
    fn a_damaged_database_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("controller.db");
        {
            let mut conn = open_sqlite(&path).unwrap();
            migrate(&mut conn).unwrap();
            check_integrity(&conn, &path).expect("a fresh database is sound");
            conn.execute_batch(
                "CREATE TABLE filler (id INTEGER PRIMARY KEY, body BLOB);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
                 INSERT INTO filler SELECT i, randomblob(200) FROM n;
                 PRAGMA wal_checkpoint(TRUNCATE);",
            )
            .unwrap();
        }
        // Scribble over the middle of the file: b-tree pages of the filler
        // table, whatever their exact numbers.
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        for byte in &mut bytes[middle..middle + 8192] {
            *byte = 0xA5;
        }
        std::fs::write(&path, bytes).unwrap();

        let conn = Connection::open(&path).unwrap();
        match check_integrity(&conn, &path) {
            Err(StoreError::Damaged { problems, .. }) => assert!(!problems.is_empty()),
            other => panic!("expected Damaged, got {other:?}"),
        }
    }
}
