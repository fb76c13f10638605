//! Embedded store: SQLite (WAL, `synchronous=FULL`) plus an in-memory image
//! of the node table.
//!
//! All writes go through one writer thread ([`writer`]) that commits whatever
//! is queued as one transaction (group commit) and only then answers the
//! callers, so every acknowledged change is on disk while 5,000 heartbeats/s
//! share one fsync per batch instead of paying one each. Platforms, QoS
//! policies, appliances, VMs, programs, tasks and results run one transaction
//! per request on a connection of their own instead ([`resources`]).
//!
//! Store functions return domain values or a [`StoreError`]; the HTTP and
//! gRPC layers decide what those become on the wire.

pub(crate) mod api_tokens;
pub(crate) mod appliances;
mod batch;
mod checkpoint;
mod codec;
pub(crate) mod comparisons;
pub(crate) mod control_keys;
mod database;
pub(crate) mod desired;
pub(crate) mod error;
mod events;
mod exec_channels;
pub(crate) mod flows;
pub(crate) mod gateways;
mod heartbeat_sql;
pub(crate) mod idempotency;
mod node_identity;
mod nodes;
pub(crate) mod platform_points;
pub(crate) mod platforms;
pub(crate) mod programs;
pub(crate) mod qos_policies;
pub(crate) mod quotas;
mod registry;
pub(crate) mod replica_files;
mod replica_notices;
mod replica_sync;
mod resources;
pub(crate) mod result_series;
pub(crate) mod retention;
mod run_tree;
pub(crate) mod sql;
pub(crate) mod tasks;
pub(crate) mod tenants;
pub(crate) mod tunnels;
pub(crate) mod vm_usage;
pub(crate) mod vms;
mod writer;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use measurelab_api::http;
use sql::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::access::Scope;
use crate::appliance_files::ApplianceFiles;
use crate::placement::Pools;
use api_tokens::TokenBook;
pub(crate) use codec::{rfc3339, to_json};
use database::{restrict_permissions, Location};
pub use error::StoreError;
pub(crate) use events::EventPage;
pub(crate) use exec_channels::{ChannelChange, ChannelHolder};
use node_identity::IdentityCommand;
pub(crate) use node_identity::{parse_issued_join_token, IssuedCertificate, NewJoinToken};
use nodes::{check_secret, load_registry};
pub(crate) use nodes::{
    constant_time_eq, HeartbeatInput, JoinCredential, NewEvent, RegisterInput, Registered,
    ShipLogsInput, LOG_LINES_PER_NODE,
};
pub(crate) use registry::{NodeEntry, Registry};
pub(crate) use resources::{ResourceStore, TxContext};
use writer::WriteCommand;
pub(crate) use writer::WriterHandle;

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub(crate) struct Store {
    registry: Arc<RwLock<Registry>>,
    writer: mpsc::Sender<WriteCommand>,
    /// Reads of events and logs. WAL lets it read while the writer writes.
    reader: Arc<Mutex<Connection>>,
    /// Platforms, VMs, tasks...: one transaction per request on their own connection.
    resources: ResourceStore,
    /// API tokens, verified from memory on every request.
    tokens: TokenBook,
    /// Appliance files: `<data_dir>/appliances` unless moved by
    /// [`Store::with_appliance_dir`].
    appliance_files: ApplianceFiles,
    /// `<data_dir>/uploads`: program uploads while they arrive.
    uploads: std::path::PathBuf,
    /// This replica's id on PostgreSQL (change notices, exec channels);
    /// `None` on SQLite.
    replica: Option<Arc<str>>,
}

impl Store {
    /// Open (or create) `<data_dir>/controller.db`, migrate it, load the node
    /// table and start the writer thread. Tests run it on PostgreSQL instead
    /// when `MEASURELAB_TEST_STORE=postgres` (see `database::test_location`).
    #[cfg(test)]
    pub fn open(
        data_dir: &Path,
        durable_heartbeats: bool,
    ) -> Result<(Store, WriterHandle), StoreError> {
        Self::open_with_pools(
            data_dir,
            database::test_location(data_dir).as_deref(),
            durable_heartbeats,
            Pools::default(),
        )
    }

    /// `Store::open` with the database given (`postgres`: a `postgres://`
    /// URL; `None`: `controller.db` in `data_dir`) and the VLAN and subnet
    /// pools platforms draw from. The data dir keeps appliance files and
    /// uploads either way.
    pub fn open_with_pools(
        data_dir: &Path,
        postgres: Option<&str>,
        durable_heartbeats: bool,
        pools: Pools,
    ) -> Result<(Store, WriterHandle), StoreError> {
        let location = match postgres {
            Some(url) => Location::Postgres(url.to_string()),
            None => Location::Sqlite(data_dir.join("controller.db")),
        };
        // A PostgreSQL session may not be opened on an async worker thread
        // (the driver's rule), and the controller opens its store from one.
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("store-open".into())
                .spawn_scoped(scope, || {
                    Self::open_at(data_dir, location, durable_heartbeats, pools)
                })
                .map_err(|e| StoreError::Task(format!("cannot start the store-open thread: {e}")))?
                .join()
                .map_err(|_| StoreError::Task("opening the store panicked".into()))?
        })
    }

    fn open_at(
        data_dir: &Path,
        location: Location,
        durable_heartbeats: bool,
        pools: Pools,
    ) -> Result<(Store, WriterHandle), StoreError> {
        // Uploads a crash cut short; the data dir is ours (locked) by now.
        let _ = std::fs::remove_dir_all(data_dir.join("uploads"));
        let write_conn = location.open_primary()?;
        let checkpointer = match &location {
            Location::Sqlite(path) => {
                restrict_permissions(path);
                Some(checkpoint::Checkpointer::start(path)?)
            }
            // The server manages its own write-ahead log.
            Location::Postgres(_) => None,
        };
        let registry = load_registry(&write_conn, Instant::now())?;
        tracing::info!(nodes = registry.len(), database = %location.describe(), "store opened");
        let reader = location.open_connection()?;
        let registry = Arc::new(RwLock::new(registry));
        let resource_conn = location.open_connection()?;
        appliances::ensure_builtin(&resource_conn)?;
        let tokens = TokenBook::default();
        tokens.reload(&resource_conn)?;
        // Replicas on one PostgreSQL tell each other what changed.
        let replica = match &location {
            Location::Postgres(_) => Some(codec::new_id()),
            Location::Sqlite(_) => None,
        };
        let resources = ResourceStore::open(
            resource_conn,
            registry.clone(),
            pools,
            location.clone(),
            replica.as_deref().map(Arc::from),
        )?;
        let (writer, mut handle) = writer::spawn(
            write_conn,
            registry.clone(),
            durable_heartbeats,
            checkpointer,
            replica.clone(),
        );
        let replica_id = replica.as_deref().map(Arc::from);
        if let (Location::Postgres(url), Some(replica)) = (&location, replica) {
            handle.follow(replica_sync::follow_nodes(
                url,
                replica.clone(),
                writer.clone(),
            )?);
            handle.follow(replica_sync::follow_generations(
                url,
                replica.clone(),
                resources.clone(),
            )?);
            handle.follow(replica_sync::follow_tokens(
                url,
                replica,
                location.clone(),
                tokens.clone(),
            )?);
        }
        Ok((
            Store {
                registry,
                writer,
                reader: Arc::new(Mutex::new(reader)),
                resources,
                tokens,
                appliance_files: ApplianceFiles::new(&data_dir.join("appliances")),
                uploads: data_dir.join("uploads"),
                replica: replica_id,
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

    /// Set a node's overcommit ratios (validated by the caller); `None`
    /// keeps the current one.
    pub async fn set_overcommit(
        &self,
        node_id: String,
        cpu: Option<f64>,
        memory: Option<f64>,
    ) -> Result<http::Node, StoreError> {
        self.call(|reply| WriteCommand::SetOvercommit {
            node_id,
            cpu,
            memory,
            reply,
        })
        .await
    }

    /// Let the next registration under the pending request's name through.
    pub async fn approve_registration(
        &self,
        id_or_name: String,
    ) -> Result<http::RegistrationRequest, StoreError> {
        self.call(|reply| WriteCommand::Identity(IdentityCommand::Approve { id_or_name, reply }))
            .await
    }

    /// Refuse every heartbeat and call of the node from now on.
    pub async fn revoke_node(&self, id_or_name: String) -> Result<http::Node, StoreError> {
        self.call(|reply| WriteCommand::Identity(IdentityCommand::Revoke { id_or_name, reply }))
            .await
    }

    /// Remember a certificate issued to a node (see [`Self::revoke_certificates`]).
    pub async fn record_certificate(
        &self,
        certificate: IssuedCertificate,
    ) -> Result<(), StoreError> {
        self.call(|reply| {
            WriteCommand::Identity(IdentityCommand::RecordCertificate { certificate, reply })
        })
        .await
    }

    /// Refuse the node's unexpired certificates from now on; the node stays.
    pub async fn revoke_certificates(&self, id_or_name: String) -> Result<http::Node, StoreError> {
        self.call(|reply| {
            WriteCommand::Identity(IdentityCommand::RevokeCertificates { id_or_name, reply })
        })
        .await
    }

    /// Whether `serial` is a revoked certificate of `node_id`, from memory:
    /// the gRPC peer check asks on every call.
    pub fn certificate_revoked(&self, node_id: &str, serial: &str) -> bool {
        self.registry
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_id(node_id)
            .is_some_and(|node| node.revoked_certificates.contains(serial))
    }

    /// Forget the node; refused while VMs or platforms use it.
    pub async fn delete_node(&self, id_or_name: String) -> Result<http::Node, StoreError> {
        self.call(|reply| WriteCommand::Identity(IdentityCommand::Delete { id_or_name, reply }))
            .await
    }

    pub async fn create_join_token(
        &self,
        token: NewJoinToken,
    ) -> Result<http::JoinTokenCreated, StoreError> {
        self.call(|reply| WriteCommand::Identity(IdentityCommand::CreateJoinToken { token, reply }))
            .await
    }

    pub async fn revoke_join_token(&self, id: String) -> Result<http::JoinToken, StoreError> {
        self.call(|reply| WriteCommand::Identity(IdentityCommand::RevokeJoinToken { id, reply }))
            .await
    }

    pub async fn join_tokens(&self) -> Result<Vec<http::JoinToken>, StoreError> {
        let now = time::OffsetDateTime::now_utc();
        self.read(move |conn| node_identity::join_tokens(conn, now))
            .await
    }

    pub async fn join_token(&self, id: String) -> Result<http::JoinToken, StoreError> {
        let now = time::OffsetDateTime::now_utc();
        self.read(move |conn| {
            node_identity::join_token(conn, &id, now)?.ok_or(StoreError::NotFound {
                kind: "join token",
                id,
            })
        })
        .await
    }

    pub async fn registration_requests(
        &self,
    ) -> Result<Vec<http::RegistrationRequest>, StoreError> {
        self.read(node_identity::registration_requests).await
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

    /// Platforms, QoS policies, appliances, VMs, programs, tasks and results.
    /// Delete what `retention` no longer keeps, one batch per transaction
    /// so heartbeats and API writes get the write lock in between; returns
    /// the rows deleted per table.
    pub async fn prune_aged(
        &self,
        retention: &retention::Retention,
    ) -> Result<Vec<(&'static str, usize)>, StoreError> {
        let mut report = Vec::new();
        for table in retention::AgingTable::ALL {
            let kept_for = table.kept_for(retention);
            let mut deleted = 0;
            loop {
                let batch = self
                    .resources
                    .transact(move |cx| {
                        let cutoff = cx.now - kept_for;
                        retention::prune_batch(cx, table, cutoff)
                    })
                    .await?;
                deleted += batch;
                if batch < retention::BATCH {
                    break;
                }
                tokio::task::yield_now().await;
            }
            report.push((table.name(), deleted));
        }
        Ok(report)
    }

    /// Record that a node's exec stream attached to or ended on this
    /// replica (a no-op on SQLite); the rows changed.
    pub async fn record_exec_channel(&self, change: ChannelChange) -> Result<usize, StoreError> {
        // Not even queued on SQLite: an empty commit would cost an fsync.
        if self.replica.is_none() {
            return Ok(0);
        }
        self.call(|reply| WriteCommand::ExecChannel(change, reply))
            .await
    }

    /// The other replica the database says holds `node_id`'s exec stream;
    /// `None` also when the record names this replica: asked only when our
    /// own exec hub lacks the node, which is the truth here, so such a
    /// record is stale. Always `None` for a controller that is not one of
    /// several replicas (SQLite): there is no other.
    pub async fn exec_channel_holder(
        &self,
        node_id: String,
    ) -> Result<Option<ChannelHolder>, StoreError> {
        if self.replica.is_none() {
            return Ok(None);
        }
        let holder = self
            .read(move |conn| exec_channels::holder(conn, &node_id))
            .await?;
        Ok(holder.filter(|holder| self.replica() != Some(holder.replica.as_str())))
    }

    /// This replica's id among the replicas of one PostgreSQL database;
    /// `None` on SQLite.
    pub fn replica(&self) -> Option<&str> {
        self.replica.as_deref()
    }

    /// Commands waiting for the writer thread (heartbeats, events, logs).
    pub fn write_queue_depth(&self) -> usize {
        self.writer.max_capacity() - self.writer.capacity()
    }

    /// Where program uploads are received before they are recorded.
    pub fn uploads_dir(&self) -> &Path {
        &self.uploads
    }

    pub fn resources(&self) -> &ResourceStore {
        &self.resources
    }

    /// The appliance files the nodes fetch.
    pub fn appliance_files(&self) -> &ApplianceFiles {
        &self.appliance_files
    }

    /// The same store, with appliance files kept under `dir` (a directory
    /// controller replicas share) instead of `<data_dir>/appliances`.
    pub fn with_appliance_dir(mut self, dir: &std::path::Path) -> Store {
        self.appliance_files = ApplianceFiles::new(dir);
        self
    }

    /// The API tokens, as of the last reload.
    pub fn tokens(&self) -> &TokenBook {
        &self.tokens
    }

    /// Re-read the token table into the book (after a token or tenant change).
    pub async fn reload_tokens(&self) -> Result<(), StoreError> {
        let tokens = self.tokens.clone();
        self.resources
            .read(move |conn, _| tokens.reload(conn))
            .await
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
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// The newest `limit` lines of a node, oldest first.
    pub async fn logs(
        &self,
        node_id: String,
        limit: u32,
    ) -> Result<Vec<http::LogLine>, StoreError> {
        self.read(move |conn| nodes::logs(conn, &node_id, limit))
            .await
    }

    /// One page of the events visible in `scope`, oldest first.
    pub async fn events(
        &self,
        scope: Scope,
        page: EventPage,
        limit: u32,
    ) -> Result<Vec<http::Event>, StoreError> {
        self.read(move |conn| events::events(conn, &scope, page, limit))
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

#[cfg(test)]
mod tests {
    use super::codec::rfc3339;
    use super::nodes::secret_digest;
    use super::sql::Transaction;
    use super::*;
    use measurelab_api::http::{Capabilities, Resources};
    use time::OffsetDateTime;

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
            node_secret: String::new(),
            join: JoinCredential::Default,
            peer_address: String::new(),
        }
    }

    /// Heartbeats are written as rows of one statement per run of them:
    /// whatever the batches, each node's row ends with the values of its
    /// newest heartbeat, as the node image has them, and a refused one
    /// writes nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batched_heartbeat_rows_hold_each_nodes_newest_values() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = Store::open(dir.path(), true).unwrap();
        let mut nodes = Vec::new();
        for name in ["n1", "n2", "n3"] {
            nodes.push(store.register(register_input(name)).await.unwrap());
        }
        let beats = (1..=60u64).map(|sequence| {
            let node = &nodes[(sequence % 3) as usize];
            let store = store.clone();
            let input = HeartbeatInput {
                node_id: node.node_id.clone(),
                node_secret: node.node_secret.clone(),
                sequence,
                agent_version: format!("v{sequence}"),
                capabilities: Capabilities::default(),
                resources: Resources::default(),
                observed_generation: sequence,
            };
            tokio::spawn(async move { store.heartbeat(input).await })
        });
        let refused = store.heartbeat(HeartbeatInput {
            node_id: nodes[0].node_id.clone(),
            node_secret: "wrong".into(),
            sequence: 1000,
            agent_version: "intruder".into(),
            capabilities: Capabilities::default(),
            resources: Resources::default(),
            observed_generation: 1000,
        });
        assert!(refused.await.is_err());
        for beat in futures::future::join_all(beats).await {
            beat.unwrap().unwrap();
        }
        for (k, node) in nodes.iter().enumerate() {
            let image = store.node(&node.node_id).unwrap();
            let (status, sequence, version, observed, heard): (String, i64, String, i64, String) =
                stored_node(
                    dir.path(),
                    &node.node_id,
                    "status, last_sequence, agent_version, observed_generation, last_heartbeat",
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                );
            // Node k got the sequences congruent to k mod 3; the highest
            // of them is its last_sequence whatever order they came in.
            let newest = (1..=60i64).filter(|s| s % 3 == k as i64).max().unwrap();
            assert_eq!(status, "online", "{k}");
            assert_eq!(sequence, newest, "{k}");
            assert_eq!(version, image.agent_version, "{k}");
            assert_ne!(version, "intruder");
            assert_eq!(Some(heard), image.last_heartbeat, "{k}");
            assert_eq!(observed, version[1..].parse::<i64>().unwrap(), "{k}");
        }
        store.stop_writer().await;
        writer.join().await;
    }

    /// Another session's transaction, on a thread of its own: `hold` runs in
    /// it, and it stays open (with whatever locks `hold` took) until the
    /// returned sender is sent to; then it commits.
    fn hold_open_transaction(
        dir: &Path,
        hold: impl FnOnce(&mut Transaction<'_>) + Send + 'static,
    ) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
        let location = database::Location::for_test(dir);
        let (held_tx, held) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let mut conn = location.open_connection().unwrap();
            let mut tx = conn.transaction_locking_later().unwrap();
            hold(&mut tx);
            held_tx.send(()).unwrap();
            let _ = released.recv();
            tx.commit().unwrap();
        });
        held.recv().expect("the holding session failed");
        (release, thread)
    }

    /// Until some session waits for a lock of `locktype` (PostgreSQL's
    /// `pg_locks`); fails after 10 s.
    async fn until_a_session_waits_for(dir: &Path, locktype: &'static str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let dir = dir.to_path_buf();
            let waiting: i64 = tokio::task::spawn_blocking(move || {
                with_database(&dir, |conn| {
                    conn.query_row(
                        "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = ?1",
                        [locktype],
                        |r| r.get(0),
                    )
                    .unwrap()
                })
            })
            .await
            .unwrap();
            if waiting > 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no session waits for a {locktype} lock"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn on_postgres(dir: &Path) -> bool {
        matches!(
            database::Location::for_test(dir),
            database::Location::Postgres(_)
        )
    }

    fn postgres_only(dir: &Path) -> bool {
        let postgres = on_postgres(dir);
        if !postgres {
            eprintln!("skipped: replicas' writers meet on PostgreSQL only (MEASURELAB_TEST_STORE=postgres)");
        }
        postgres
    }

    fn beat(node: &Registered, sequence: u64) -> HeartbeatInput {
        HeartbeatInput {
            node_id: node.node_id.clone(),
            node_secret: node.node_secret.clone(),
            sequence,
            agent_version: format!("v{sequence}"),
            capabilities: Capabilities::default(),
            resources: Resources::default(),
            observed_generation: 0,
        }
    }

    /// A heartbeat row leaves the stored status alone: a node another
    /// replica's sweep took offline (its notice not yet here, so this
    /// replica still sees the node online) stays offline in the database,
    /// to come back with its NodeOnline event once this replica knows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_heartbeat_row_leaves_a_status_set_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = Store::open(dir.path(), true).unwrap();
        let node = store.register(register_input("n1")).await.unwrap();
        const OFFLINE: &str = "UPDATE nodes SET status = 'offline' WHERE id = ?1";
        if on_postgres(dir.path()) {
            // The offline commits while the heartbeat row waits on the row
            // (PostgreSQL then re-reads it). Held uncommitted until then,
            // because this store's own listener reloads every node once it
            // listens (at a time of its own), and a reload that saw the
            // offline would make the heartbeat a coming back.
            let id = node.node_id.clone();
            let (release, holder) = hold_open_transaction(dir.path(), move |tx| {
                tx.execute(OFFLINE, [id.as_str()]).unwrap();
            });
            let heartbeat = tokio::spawn({
                let store = store.clone();
                let input = beat(&node, 3);
                async move { store.heartbeat(input).await }
            });
            until_a_session_waits_for(dir.path(), "transactionid").await;
            release.send(()).unwrap();
            holder.join().unwrap();
            heartbeat.await.unwrap().unwrap();
        } else {
            with_database(dir.path(), |conn| {
                conn.execute(OFFLINE, [node.node_id.as_str()]).unwrap()
            });
            store.heartbeat(beat(&node, 3)).await.unwrap();
        }
        let (status, sequence): (String, i64) =
            stored_node(dir.path(), &node.node_id, "status, last_sequence", |r| {
                Ok((r.get(0)?, r.get(1)?))
            });
        assert_eq!(sequence, 3, "the heartbeat row was not written");
        assert_eq!(status, "offline");
        store.stop_writer().await;
        writer.join().await;
    }

    /// While another replica's writer holds the write lock, a heartbeat is
    /// still stored and answered (it needs row locks only), and a label
    /// change waits for the lock.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn heartbeats_do_not_wait_for_another_writers_lock_but_other_writes_do() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = Store::open(dir.path(), true).unwrap();
        if !postgres_only(dir.path()) {
            return;
        }
        let node = store.register(register_input("n1")).await.unwrap();
        let (release, holder) =
            hold_open_transaction(dir.path(), |tx| tx.take_write_lock().unwrap());

        tokio::time::timeout(Duration::from_secs(10), store.heartbeat(beat(&node, 7)))
            .await
            .expect("a heartbeat waited for another writer's lock")
            .unwrap();
        let stored: i64 = stored_node(dir.path(), &node.node_id, "last_sequence", |r| r.get(0));
        assert_eq!(stored, 7, "the heartbeat was answered before it was stored");

        let labels = BTreeMap::from([("site".to_string(), "a".to_string())]);
        let change = tokio::spawn({
            let store = store.clone();
            let id = node.node_id.clone();
            async move { store.set_labels(id, labels).await }
        });
        until_a_session_waits_for(dir.path(), "advisory").await;
        assert!(
            !change.is_finished(),
            "the label change did not wait for the lock"
        );
        release.send(()).unwrap();
        let node_now = change.await.unwrap().unwrap();
        assert_eq!(node_now.labels.get("site").map(String::as_str), Some("a"));
        holder.join().unwrap();
        store.stop_writer().await;
        writer.join().await;
    }

    /// The sweep marks a node offline only if no heartbeat was stored since
    /// it looked: one that another replica commits while the sweep waits on
    /// the node's row keeps the node online, and no NodeOffline is logged.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_heartbeat_stored_while_the_sweep_waits_keeps_the_node_online() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = Store::open(dir.path(), true).unwrap();
        if !postgres_only(dir.path()) {
            return;
        }
        let node = store.register(register_input("n1")).await.unwrap();
        let offline_after = Duration::from_millis(200);
        // This replica has not heard the node for longer than the deadline.
        tokio::time::sleep(offline_after * 2).await;
        // Another replica's heartbeat, stored but not yet committed.
        let id = node.node_id.clone();
        let (release, holder) = hold_open_transaction(dir.path(), move |tx| {
            let heard = rfc3339(OffsetDateTime::now_utc());
            tx.execute(
                "UPDATE nodes SET last_heartbeat = ?2 WHERE id = ?1",
                [id.as_str(), heard.as_str()],
            )
            .unwrap();
        });
        let sweep = tokio::spawn({
            let store = store.clone();
            async move { store.sweep(offline_after).await }
        });
        until_a_session_waits_for(dir.path(), "transactionid").await;
        release.send(()).unwrap();
        assert_eq!(
            sweep.await.unwrap().unwrap(),
            0,
            "the sweep took the node offline"
        );
        holder.join().unwrap();
        let status: String = stored_node(dir.path(), &node.node_id, "status", |r| r.get(0));
        assert_eq!(status, "online");
        let offline_events: i64 = with_database(dir.path(), |conn| {
            conn.query_row(
                "SELECT count(*) FROM events WHERE reason = 'NodeOffline'",
                [],
                |r| r.get(0),
            )
            .unwrap()
        });
        assert_eq!(offline_events, 0);
        store.stop_writer().await;
        writer.join().await;
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

    /// `f` on a connection of its own to the test store's database, on a
    /// thread of its own (a PostgreSQL session may not live on the test's
    /// async worker).
    fn with_database<T: Send>(dir: &Path, f: impl FnOnce(&Connection) -> T + Send) -> T {
        let location = database::Location::for_test(dir);
        std::thread::scope(|scope| {
            scope
                .spawn(|| f(&location.open_connection().unwrap()))
                .join()
                .unwrap()
        })
    }

    /// `columns` of node `node_id`'s stored row, as `row` reads them.
    fn stored_node<T: Send>(
        dir: &Path,
        node_id: &str,
        columns: &str,
        row: impl FnOnce(&sql::Row<'_>) -> sql::Result<T> + Send,
    ) -> T {
        let query = format!("SELECT {columns} FROM nodes WHERE id = ?1");
        with_database(dir, |conn| conn.query_row(&query, [node_id], row).unwrap())
    }

    fn stored_secret(dir: &Path, node_id: &str) -> String {
        stored_node(dir, node_id, "secret", |r| r.get(0))
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
        with_database(dir.path(), |conn| {
            conn.execute(
                "UPDATE nodes SET secret = ?2 WHERE id = ?1",
                [&n2.node_id, &n2.node_secret],
            )
            .unwrap()
        });

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

    mod exec_channel_rows {
        use super::{with_database, Store};
        use crate::store::exec_channels::{apply, holder, ChannelChange};
        use crate::store::sql::Connection;

        fn attach(
            conn: &Connection,
            replica: &str,
            stream: u64,
            url: Option<&str>,
            at: i64,
        ) -> usize {
            let change = ChannelChange::Attached {
                node_id: "n1".into(),
                stream,
                url: url.map(str::to_string),
                attached_ms: at,
            };
            apply(conn, replica, &change).unwrap()
        }

        fn detach(conn: &Connection, replica: &str, stream: u64) -> usize {
            let change = ChannelChange::Detached {
                node_id: "n1".into(),
                stream,
            };
            apply(conn, replica, &change).unwrap()
        }

        fn holder_of_n1(conn: &Connection) -> Option<(String, Option<String>)> {
            holder(conn, "n1")
                .unwrap()
                .map(|holder| (holder.replica, holder.url))
        }

        #[tokio::test]
        async fn a_detach_ends_only_its_own_stream_and_an_older_attach_never_wins() {
            let dir = tempfile::tempdir().unwrap();
            // Opening the store migrates the test database.
            let (store, writer) = Store::open(dir.path(), true).unwrap();
            store.stop_writer().await;
            writer.join().await;
            with_database(dir.path(), |conn| {
                let r1 = Some(("r1".to_string(), Some("https://r1:7070".to_string())));
                assert_eq!(attach(conn, "r1", 1, Some("https://r1:7070"), 100), 1);
                assert_eq!(holder_of_n1(conn), r1);
                // The agent moved to r2 (which gave no URL) before r1 saw
                // its old stream end: r1's detach leaves r2's record alone.
                assert_eq!(attach(conn, "r2", 1, None, 200), 1);
                assert_eq!(detach(conn, "r1", 1), 0);
                let r2 = Some(("r2".to_string(), None));
                assert_eq!(holder_of_n1(conn), r2);
                // An attach from before r2's, committed after it, does not win.
                assert_eq!(attach(conn, "r1", 2, Some("https://r1:7070"), 150), 0);
                assert_eq!(holder_of_n1(conn), r2);
                // Stream numbers are per replica: only r2's stream 1 ends it.
                assert_eq!(detach(conn, "r2", 2), 0);
                assert_eq!(detach(conn, "r2", 1), 1);
                assert_eq!(holder_of_n1(conn), None);
            });
        }
    }

    mod aging {
        use crate::store::sql::params;
        use time::OffsetDateTime;

        use crate::store::codec::rfc3339;
        use crate::store::{retention, Store, StoreError};

        /// Old rows of every aging table go, in several batches where there are
        /// more than one batch of them; rows inside their retention stay.
        #[tokio::test]
        async fn aged_rows_go_and_recent_rows_stay() {
            let dir = tempfile::tempdir().unwrap();
            let (store, writer) = Store::open(dir.path(), true).unwrap();
            let old_events = retention::BATCH + 5;
            store
                .resources()
                .transact(move |cx| {
                    let now = cx.now;
                    let day = time::Duration::days(1);
                    let text = |t: OffsetDateTime| rfc3339(t);
                    let ms = |t: OffsetDateTime| (t.unix_timestamp_nanos() / 1_000_000) as i64;
                    let mut event = cx.tx.prepare(
                        "INSERT INTO events (time, reason, object_kind, object_id, message)
                         VALUES (?1, 'R', 'node', 'n', 'm')",
                    )?;
                    for _ in 0..old_events {
                        event.execute([text(now - day * 31)])?;
                    }
                    event.execute([text(now - day * 29)])?;
                    let mut result = cx.tx.prepare(
                        "INSERT INTO results (id, task_id, task_name, received_at, started_at,
                                              started_ms, document, tenant_id)
                         VALUES (?1, 't', 't', ?2, ?2, ?3, '{}', ?4)",
                    )?;
                    for (id, age) in [("old", day * 366), ("recent", day * 364)] {
                        let t = now - age;
                        result.execute(params![
                            id,
                            text(t),
                            ms(t),
                            crate::access::DEFAULT_TENANT_ID
                        ])?;
                    }
                    let mut record = cx.tx.prepare(
                        "INSERT INTO idempotency (request_id, route, status, body, created_at)
                         VALUES (?1, 'POST /v1/x', 201, '{}', ?2)",
                    )?;
                    record.execute(params!["old", text(now - time::Duration::hours(25))])?;
                    record.execute(params!["recent", text(now - time::Duration::hours(23))])?;
                    let mut usage = cx.tx.prepare(
                        "INSERT INTO vm_usage (vm_id, bucket, sampled_ms, cpu_count, cpu_percent,
                                               memory_total, memory_used, disk_total, disk_used,
                                               rx_bytes, tx_bytes)
                         VALUES (?1, ?2, 0, 1, 0, 0, 0, 0, 0, 0, 0)",
                    )?;
                    for (vm, hours) in [("old", 25), ("recent", 23)] {
                        let bucket = (now - time::Duration::hours(hours)).unix_timestamp();
                        usage.execute(params![vm, bucket])?;
                    }
                    Ok(())
                })
                .await
                .unwrap();

            let report = store
                .prune_aged(&retention::Retention::default())
                .await
                .unwrap();
            assert_eq!(
                report,
                vec![
                    ("events", old_events),
                    ("node_logs", 0),
                    ("results", 1),
                    ("idempotency", 1),
                    ("vm_usage", 1)
                ]
            );
            let left = store
                .resources()
                .read(|conn, _| {
                    let ids = |sql: &str| -> Result<Vec<String>, StoreError> {
                        let mut statement = conn.prepare(sql)?;
                        let rows = statement.query_map([], |r| r.get(0))?;
                        Ok(rows.collect::<Result<_, _>>()?)
                    };
                    Ok((
                        ids("SELECT CAST(COUNT(*) AS TEXT) FROM events")?,
                        ids("SELECT id FROM results")?,
                        ids("SELECT request_id FROM idempotency")?,
                        ids("SELECT vm_id FROM vm_usage")?,
                    ))
                })
                .await
                .unwrap();
            assert_eq!(left.0, vec!["1".to_string()]);
            assert_eq!(left.1, vec!["recent".to_string()]);
            assert_eq!(left.2, vec!["recent".to_string()]);
            assert_eq!(left.3, vec!["recent".to_string()]);
            store.stop_writer().await;
            writer.join().await;
        }
    }

    mod resource_reads {
        use std::time::Duration;

        use crate::store::database::Location;
        use crate::store::Store;

        /// A transaction waiting for the database's write lock (held here by
        /// another session, as another replica's writer or a pruning batch
        /// holds it) must not hold up reads: a metrics scrape queued behind one
        /// on PostgreSQL answered 408 after the request timeout.
        #[tokio::test]
        async fn a_read_does_not_wait_behind_a_transaction_waiting_for_the_write_lock() {
            let dir = tempfile::tempdir().unwrap();
            let (store, _writer) = Store::open(dir.path(), true).unwrap();
            let (taken, is_taken) = std::sync::mpsc::channel();
            let (release, released) = std::sync::mpsc::channel::<()>();
            let location = Location::for_test(dir.path());
            let holder = std::thread::spawn(move || {
                let mut other = location.open_connection().unwrap();
                let tx = other.transaction().unwrap();
                taken.send(()).unwrap();
                let _ = released.recv();
                drop(tx);
            });
            is_taken.recv().unwrap();

            let resources = store.resources().clone();
            let waiting = tokio::spawn(async move { resources.transact(|_| Ok(())).await });
            // The transaction has the resource connection once its mutex is
            // taken; it then waits in BEGIN IMMEDIATE or pg_advisory_xact_lock.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !store.resources().connection_taken() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the transaction never started"
                );
                tokio::task::yield_now().await;
            }

            let read = tokio::time::timeout(
                Duration::from_secs(30),
                store.resources().read(|conn, _| {
                    Ok(conn.query_row("SELECT count(*) FROM nodes", [], |row| row.get::<i64>(0))?)
                }),
            )
            .await
            .expect("the read waited behind the transaction")
            .unwrap();
            assert_eq!(read, 0);
            assert!(
                !waiting.is_finished(),
                "the read answered only after the transaction ended"
            );

            release.send(()).unwrap();
            holder.join().unwrap();
            // The lock was held only for the read, well within SQLite's
            // busy_timeout (5 s): a read queued behind the transaction would
            // have let it give up first.
            waiting.await.unwrap().unwrap();
        }
    }
}
