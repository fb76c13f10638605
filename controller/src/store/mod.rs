//! Embedded store: SQLite (WAL, `synchronous=FULL`) plus an in-memory image
//! of the node table.
//!
//! All writes go through one writer thread ([`writer`]) that commits whatever
//! is queued as one transaction (group commit) and only then answers the
//! callers, so every acknowledged change is on disk while 5,000 heartbeats/s
//! share one fsync per batch instead of paying one each.

mod checkpoint;
mod registry;
mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use measurelab_api::http::{self, Capabilities, NodeStatus, Resources};
use rusqlite::Connection;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

pub(crate) use crate::slices::store::{Pools, ResourceError, ResourceStore};
pub(crate) use registry::{NodeEntry, Registry};
use writer::WriteCommand;
pub(crate) use writer::WriterHandle;

/// Log lines kept per node; older lines are deleted as new ones arrive.
pub const LOG_LINES_PER_NODE: i64 = 10_000;

/// Migrations, applied in order; `PRAGMA user_version` records how many ran.
/// Never edit a released entry: append a new one.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/0001_nodes_events_logs.sql"),
    include_str!("../../migrations/0002_platforms_vms_tasks.sql"),
    include_str!("../../migrations/0003_result_run_ids.sql"),
];

/// Errors of the embedded store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or configured.
    #[error("cannot open the controller database {path}: {source}")]
    Open {
        /// Database file.
        path: PathBuf,
        /// SQLite error.
        source: rusqlite::Error,
    },
    /// A schema migration failed; the database is left at the previous version.
    #[error("schema migration {version} failed: {source}")]
    Migrate {
        /// 1-based migration number.
        version: usize,
        /// SQLite error.
        source: rusqlite::Error,
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
    Sql(#[from] rusqlite::Error),
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
    /// The writer thread has stopped (controller shutting down).
    #[error("the store is shutting down")]
    WriterGone,
    /// A blocking read task panicked or was cancelled.
    #[error("store read task failed: {0}")]
    ReadTask(String),
}

/// RFC 3339 text of a UTC time, as stored and served.
pub(crate) fn rfc3339(time: OffsetDateTime) -> String {
    // Formatting a UTC OffsetDateTime as RFC 3339 only fails for years
    // outside 0..=9999, which `now_utc` and validated inputs never produce.
    time.format(&Rfc3339)
        .unwrap_or_else(|_| time.unix_timestamp().to_string())
}

fn parse_time(text: &str) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| StoreError::Corrupt(format!("time {text:?}: {e}")))
}

fn parse_json<T: serde::de::DeserializeOwned>(column: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("nodes.{column}: {e}")))
}

fn status_text(status: NodeStatus) -> &'static str {
    match status {
        NodeStatus::Online => "online",
        NodeStatus::Offline => "offline",
    }
}

/// A registration, already validated by the gRPC layer.
#[derive(Debug, Clone)]
pub(crate) struct RegisterInput {
    pub name: String,
    /// The id the agent persisted, if any.
    pub node_id: Option<String>,
    pub agent_version: String,
    pub capabilities: Capabilities,
    pub resources: Resources,
    pub labels: BTreeMap<String, String>,
    pub management_address: String,
}

/// Result of a registration.
#[derive(Debug, Clone)]
pub(crate) struct Registered {
    pub node_id: String,
    pub node_secret: String,
}

/// A heartbeat, already validated and authenticated.
#[derive(Debug, Clone)]
pub(crate) struct HeartbeatInput {
    pub node_id: String,
    pub node_secret: String,
    pub sequence: u64,
    pub agent_version: String,
    pub capabilities: Capabilities,
    pub resources: Resources,
    pub observed_generation: u64,
}

/// A batch of shipped log lines.
#[derive(Debug, Clone)]
pub(crate) struct ShipLogsInput {
    pub node_id: String,
    pub node_secret: String,
    pub lines: Vec<http::LogLine>,
}

/// An event to append to the journal.
#[derive(Debug, Clone)]
pub(crate) struct NewEvent {
    pub reason: &'static str,
    pub object_kind: &'static str,
    pub object_id: String,
    pub message: String,
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub(crate) struct Store {
    registry: Arc<RwLock<Registry>>,
    writer: mpsc::Sender<WriteCommand>,
    /// Reads of events and logs. WAL lets it read while the writer writes.
    reader: Arc<Mutex<Connection>>,
    /// Platforms, VMs, tasks...: one transaction per request on their own connection.
    resources: ResourceStore,
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
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

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
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

fn load_registry(conn: &Connection, startup: Instant) -> Result<Registry, StoreError> {
    let mut registry = Registry::default();
    let mut statement = conn.prepare(
        "SELECT id, name, secret, status, registered_at, last_heartbeat, agent_version,
                management_address, capabilities, resources, labels, last_sequence,
                observed_generation, desired_generation
         FROM nodes",
    )?;
    let mut rows = statement.query([])?;
    let mut plaintext = Vec::new();
    while let Some(row) = rows.next()? {
        let id: String = row.get(0)?;
        let stored_secret: String = row.get(2)?;
        // Databases written before secrets were hashed hold them in clear.
        let secret_digest = if stored_secret.starts_with(SECRET_DIGEST_PREFIX) {
            stored_secret
        } else {
            let digest = secret_digest(&stored_secret);
            plaintext.push((id.clone(), digest.clone()));
            digest
        };
        let status: String = row.get(3)?;
        let registered_at: String = row.get(4)?;
        let last_heartbeat: Option<String> = row.get(5)?;
        let capabilities: String = row.get(8)?;
        let resources: String = row.get(9)?;
        let labels: String = row.get(10)?;
        registry.upsert(NodeEntry {
            id,
            name: row.get(1)?,
            secret_digest,
            status: match status.as_str() {
                "online" => NodeStatus::Online,
                "offline" => NodeStatus::Offline,
                other => return Err(StoreError::Corrupt(format!("nodes.status {other:?}"))),
            },
            registered_at: parse_time(&registered_at)?,
            last_heartbeat: last_heartbeat.as_deref().map(parse_time).transpose()?,
            last_contact: startup,
            agent_version: row.get(6)?,
            management_address: row.get(7)?,
            capabilities: parse_json("capabilities", &capabilities)?,
            resources: parse_json("resources", &resources)?,
            labels: parse_json("labels", &labels)?,
            last_sequence: row.get::<_, i64>(11)? as u64,
            observed_generation: row.get::<_, i64>(12)? as u64,
            desired_generation: row.get::<_, i64>(13)? as u64,
        });
    }
    for (id, digest) in plaintext {
        conn.execute(
            "UPDATE nodes SET secret = ?2 WHERE id = ?1",
            rusqlite::params![id, digest],
        )?;
    }
    Ok(registry)
}

impl Store {
    /// Open (or create) `<data_dir>/controller.db`, migrate it, load the node
    /// table and start the writer thread.
    #[cfg(test)]
    pub fn open(
        data_dir: &Path,
        durable_heartbeats: bool,
    ) -> Result<(Store, WriterHandle), StoreError> {
        Self::open_with_pools(data_dir, durable_heartbeats, Pools::default())
    }

    /// [`Store::open`] with the VLAN and subnet pools platforms draw from.
    pub fn open_with_pools(
        data_dir: &Path,
        durable_heartbeats: bool,
        pools: Pools,
    ) -> Result<(Store, WriterHandle), StoreError> {
        let path = data_dir.join("controller.db");
        let mut write_conn = open_connection(&path)?;
        migrate(&mut write_conn)?;
        restrict_permissions(&path);
        let registry = load_registry(&write_conn, Instant::now())?;
        tracing::info!(nodes = registry.len(), path = %path.display(), "store opened");
        let reader = open_connection(&path)?;
        let checkpointer = checkpoint::Checkpointer::start(&path)?;
        let registry = Arc::new(RwLock::new(registry));
        let resources = ResourceStore::open(open_connection(&path)?, registry.clone(), pools)?;
        let (writer, handle) = writer::spawn(
            write_conn,
            registry.clone(),
            durable_heartbeats,
            checkpointer,
        );
        Ok((
            Store {
                registry,
                writer,
                reader: Arc::new(Mutex::new(reader)),
                resources,
            },
            handle,
        ))
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> WriteCommand,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(make(reply))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    pub async fn register(&self, input: RegisterInput) -> Result<Registered, StoreError> {
        self.call(|reply| WriteCommand::Register(input, reply))
            .await
    }

    /// Returns the node's desired generation.
    pub async fn heartbeat(&self, input: HeartbeatInput) -> Result<u64, StoreError> {
        self.call(|reply| WriteCommand::Heartbeat(input, reply))
            .await
    }

    /// Returns how many lines were stored.
    pub async fn ship_logs(&self, input: ShipLogsInput) -> Result<usize, StoreError> {
        self.call(|reply| WriteCommand::ShipLogs(input, reply))
            .await
    }

    pub async fn set_labels(
        &self,
        node_id: String,
        labels: BTreeMap<String, String>,
    ) -> Result<http::Node, StoreError> {
        self.call(|reply| WriteCommand::SetLabels {
            node_id,
            labels,
            reply,
        })
        .await
    }

    pub async fn record_event(&self, event: NewEvent) -> Result<i64, StoreError> {
        self.call(|reply| WriteCommand::RecordEvent(event, reply))
            .await
    }

    /// Mark nodes silent for longer than `offline_after` as offline. Returns
    /// how many changed.
    pub async fn sweep(&self, offline_after: Duration) -> Result<usize, StoreError> {
        self.call(|reply| WriteCommand::Sweep {
            offline_after,
            reply,
        })
        .await
    }

    /// The wave-2 resources (platforms, VMs, programs, tasks, results).
    pub fn resources(&self) -> &ResourceStore {
        &self.resources
    }

    /// Ask the writer to finish what is queued and exit.
    pub async fn stop_writer(&self) {
        // An error means the writer is already gone, which is the goal.
        let _ = self.writer.send(WriteCommand::Stop).await;
    }

    /// Cheap pre-check of a node's credentials from memory, so bad requests
    /// are refused without queueing behind the writer. The writer checks
    /// again, since a re-registration may rotate the secret meanwhile.
    pub fn authenticate(&self, node_id: &str, secret: &str) -> Result<(), StoreError> {
        let registry = self.registry.read().unwrap_or_else(|e| e.into_inner());
        check_secret(registry.by_id(node_id), node_id, secret)
    }

    pub fn nodes(&self) -> Vec<http::Node> {
        self.registry
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .list()
    }

    pub fn node(&self, id_or_name: &str) -> Option<http::Node> {
        self.registry
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_id_or_name(id_or_name)
            .map(NodeEntry::to_api)
    }

    async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|e| e.into_inner());
            query(&conn)
        })
        .await
        .map_err(|e| StoreError::ReadTask(e.to_string()))?
    }

    /// The newest `limit` lines of a node, oldest first.
    pub async fn logs(
        &self,
        node_id: String,
        limit: u32,
    ) -> Result<Vec<http::LogLine>, StoreError> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT time, level, target, message FROM
                   (SELECT id, time, level, target, message FROM node_logs
                    WHERE node_id = ?1 ORDER BY id DESC LIMIT ?2)
                 ORDER BY id ASC",
            )?;
            let lines = statement
                .query_map(rusqlite::params![node_id, limit], |row| {
                    Ok(http::LogLine {
                        time: row.get(0)?,
                        level: row.get(1)?,
                        target: row.get(2)?,
                        message: row.get(3)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(lines)
        })
        .await
    }

    /// Events with id > `after`, oldest first.
    pub async fn events(&self, after: i64, limit: u32) -> Result<Vec<http::Event>, StoreError> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT id, time, reason, object_kind, object_id, message FROM events
                 WHERE id > ?1 ORDER BY id ASC LIMIT ?2",
            )?;
            let events = statement
                .query_map(rusqlite::params![after, limit], |row| {
                    Ok(http::Event {
                        id: row.get(0)?,
                        time: row.get(1)?,
                        reason: row.get(2)?,
                        object_kind: row.get(3)?,
                        object_id: row.get(4)?,
                        message: row.get(5)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(events)
        })
        .await
    }

    /// Number of stored log lines of a node (used by tests of the retention).
    #[cfg(test)]
    pub async fn log_count(&self, node_id: String) -> Result<i64, StoreError> {
        self.read(move |conn| {
            Ok(conn.query_row(
                "SELECT COUNT(*) FROM node_logs WHERE node_id = ?1",
                [node_id],
                |row| row.get(0),
            )?)
        })
        .await
    }
}

/// Constant-time comparison, so response timing does not leak how many
/// leading characters of a guessed secret were right.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What the store keeps of a node secret: a copy of the database (a backup,
/// a support bundle) must not let anyone heartbeat as the node. The secret
/// is 256 random bits, so a plain SHA-256 needs no salt or stretching.
pub(crate) fn secret_digest(secret: &str) -> String {
    use sha2::{Digest, Sha256};
    // Every authenticated heartbeat computes this: one allocation, not one
    // per byte.
    let digest = Sha256::digest(secret.as_bytes());
    let mut digits = [0u8; 64];
    // Cannot fail: 32 digest bytes fill exactly 64 digits.
    let _ = hex::encode_to_slice(digest, &mut digits);
    let mut text = String::with_capacity(SECRET_DIGEST_PREFIX.len() + digits.len());
    text.push_str(SECRET_DIGEST_PREFIX);
    text.extend(digits.iter().map(|&digit| char::from(digit)));
    text
}

const SECRET_DIGEST_PREFIX: &str = "sha256:";

fn check_secret(entry: Option<&NodeEntry>, node_id: &str, secret: &str) -> Result<(), StoreError> {
    match entry {
        None => Err(StoreError::UnknownNode(node_id.to_string())),
        Some(entry)
            if constant_time_eq(
                entry.secret_digest.as_bytes(),
                secret_digest(secret).as_bytes(),
            ) =>
        {
            Ok(())
        }
        Some(_) => Err(StoreError::WrongSecret(node_id.to_string())),
    }
}

/// The database holds tokens, node secret digests and results: keep it
/// private to the controller's user.
fn restrict_permissions(path: &Path) {
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

    #[test]
    fn constant_time_eq_compares_whole_slices() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    fn register_input(name: &str) -> RegisterInput {
        RegisterInput {
            name: name.into(),
            node_id: None,
            agent_version: "t".into(),
            capabilities: Capabilities::default(),
            resources: Resources::default(),
            labels: BTreeMap::new(),
            management_address: String::new(),
        }
    }

    #[tokio::test]
    async fn log_retention_keeps_the_newest_lines() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = Store::open(dir.path(), true).unwrap();
        let registered = store.register(register_input("n1")).await.unwrap();
        let line = |i: i64| http::LogLine {
            time: "2026-01-01T00:00:00Z".into(),
            level: "info".into(),
            target: "t".into(),
            message: format!("line {i}"),
        };
        for chunk in 0..11 {
            let lines = (0..1000).map(|i| line(chunk * 1000 + i)).collect();
            store
                .ship_logs(ShipLogsInput {
                    node_id: registered.node_id.clone(),
                    node_secret: registered.node_secret.clone(),
                    lines,
                })
                .await
                .unwrap();
        }
        assert_eq!(
            store.log_count(registered.node_id.clone()).await.unwrap(),
            LOG_LINES_PER_NODE
        );
        let newest = store.logs(registered.node_id.clone(), 2).await.unwrap();
        assert_eq!(newest[0].message, "line 10998");
        assert_eq!(newest[1].message, "line 10999");
        store.stop_writer().await;
        writer.join().await;
    }

    fn stored_secret(dir: &Path, node_id: &str) -> String {
        Connection::open(dir.join("controller.db"))
            .unwrap()
            .query_row("SELECT secret FROM nodes WHERE id = ?1", [node_id], |r| {
                r.get(0)
            })
            .unwrap()
    }

    #[tokio::test]
    async fn node_secrets_are_stored_as_digests_and_old_plaintext_is_hashed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = Store::open(dir.path(), true).unwrap();
        let n1 = store.register(register_input("n1")).await.unwrap();
        let n2 = store.register(register_input("n2")).await.unwrap();
        store.stop_writer().await;
        writer.join().await;
        drop(store);

        // FIPS 180-2's "abc" vector: the digest is plain lowercase hex.
        assert_eq!(
            secret_digest("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let stored = stored_secret(dir.path(), &n1.node_id);
        assert!(!stored.contains(&n1.node_secret), "{stored}");
        assert_eq!(stored, secret_digest(&n1.node_secret));
        // n2 as an older controller wrote it: the secret itself.
        Connection::open(dir.path().join("controller.db"))
            .unwrap()
            .execute(
                "UPDATE nodes SET secret = ?2 WHERE id = ?1",
                [&n2.node_id, &n2.node_secret],
            )
            .unwrap();

        let (store, writer) = Store::open(dir.path(), true).unwrap();
        store.authenticate(&n1.node_id, &n1.node_secret).unwrap();
        store.authenticate(&n2.node_id, &n2.node_secret).unwrap();
        assert!(matches!(
            store.authenticate(&n1.node_id, &n2.node_secret),
            Err(StoreError::WrongSecret(_))
        ));
        // The digest itself is not a credential.
        assert!(matches!(
            store.authenticate(&n1.node_id, &secret_digest(&n1.node_secret)),
            Err(StoreError::WrongSecret(_))
        ));
        assert_eq!(
            stored_secret(dir.path(), &n2.node_id),
            secret_digest(&n2.node_secret)
        );
        store.stop_writer().await;
        writer.join().await;
    }
}
