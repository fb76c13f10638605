//! The transaction model of platforms, QoS policies, appliances, VMs,
//! programs, deployments, tasks and results.
//!
//! These requests are few (operator and Terraform traffic, agent status
//! reports), each must be all-or-nothing, and each must see its own reads
//! (pool allocation, capacity checks), so every request runs as ONE SQLite
//! transaction (`BEGIN IMMEDIATE`) on a connection of its own instead of
//! going through the heartbeat group-commit writer. SQLite serializes the two
//! writers; `busy_timeout` covers the short overlap.
//!
//! The per-node desired-state generation is mirrored in memory after each
//! commit, so a heartbeat answers it without touching SQLite.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use super::sql::{params, Connection, Transaction};
use time::OffsetDateTime;

use super::codec::rfc3339;
use super::database::Location;
use super::error::StoreError;
use super::registry::Registry;
use crate::placement::Pools;

/// Changes a transaction made that the in-memory mirrors must learn after commit.
#[derive(Debug, Default)]
pub(crate) struct TxEffects {
    /// Nodes whose desired state changed.
    pub touched_nodes: Vec<String>,
    /// The API token table changed (a token made or revoked, a tenant's
    /// deleted): the other replicas' token books must reload.
    pub tokens_changed: bool,
}

impl TxEffects {
    pub fn touch(&mut self, node_id: &str) {
        if !self.touched_nodes.iter().any(|n| n == node_id) {
            self.touched_nodes.push(node_id.to_string());
        }
    }
}

/// Record an event about a tenant's object (`tenant_id`; `None`: the
/// operator's) on any transaction: [`TxContext::event`], and the node
/// writer's changes that reach into tenants' objects.
pub(crate) fn insert_tenant_event(
    tx: &Connection,
    now: OffsetDateTime,
    tenant_id: Option<&str>,
    reason: &str,
    object_kind: &str,
    object_id: &str,
    message: &str,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO events (time, reason, object_kind, object_id, message, tenant_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        rfc3339(now),
        reason,
        object_kind,
        object_id,
        message,
        tenant_id
    ])?;
    Ok(())
}

/// Context handed to every transaction body.
pub(crate) struct TxContext<'a> {
    pub tx: &'a Transaction<'a>,
    pub now: OffsetDateTime,
    pub pools: &'a Pools,
    /// Snapshot of the node registry (read-only).
    pub registry: &'a Registry,
    pub effects: TxEffects,
}

impl TxContext<'_> {
    pub fn now_text(&self) -> String {
        rfc3339(self.now)
    }

    /// Record an event; `tenant_id` is the tenant whose object it is about
    /// (`None`: nodes and the shared catalog, seen by the operator only).
    pub fn event(
        &self,
        tenant_id: Option<&str>,
        reason: &str,
        object_kind: &str,
        object_id: &str,
        message: impl Into<String>,
    ) -> Result<(), StoreError> {
        insert_tenant_event(
            self.tx,
            self.now,
            tenant_id,
            reason,
            object_kind,
            object_id,
            &message.into(),
        )
    }

    /// Bump the desired-state generation of a node (at most once per request).
    pub fn touch_node(&mut self, node_id: &str) -> Result<(), StoreError> {
        if self.effects.touched_nodes.iter().any(|n| n == node_id) {
            return Ok(());
        }
        self.tx
            .prepare_cached(
                "INSERT INTO node_generations (node_id, generation) VALUES (?1, 1)
                 ON CONFLICT (node_id) DO UPDATE SET generation = node_generations.generation + 1",
            )?
            .execute([node_id])?;
        self.effects.touch(node_id);
        Ok(())
    }
}

fn stored_generations(conn: &Connection) -> Result<HashMap<String, u64>, StoreError> {
    let mut generations = HashMap::new();
    let mut statement = conn.prepare("SELECT node_id, generation FROM node_generations")?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        generations.insert(row.get::<String>(0)?, row.get::<u64>(1)?);
    }
    Ok(generations)
}

/// Handle to the resource store; cheap to clone.
#[derive(Clone)]
pub(crate) struct ResourceStore {
    conn: Arc<Mutex<Connection>>,
    /// A connection of its own for [`read`](Self::read): a transaction holds
    /// `conn` while it waits for the database's write lock (on PostgreSQL
    /// for as long as another replica's writer or a pruning batch holds the
    /// advisory lock), and reads behind it would wait as long. WAL readers
    /// and PostgreSQL sessions read committed rows beside a writer.
    read_conn: Arc<Mutex<Connection>>,
    registry: Arc<RwLock<Registry>>,
    generations: Arc<RwLock<HashMap<String, u64>>>,
    /// Followers of a node's generation (the WatchDesiredState streams).
    generation_watchers: Arc<Mutex<HashMap<String, tokio::sync::watch::Sender<u64>>>>,
    pools: Arc<Pools>,
    /// The database, for readers of their own ([`ResourceStore::reader`]).
    location: Arc<Location>,
    /// This replica's id in desired-state notices to the other replicas
    /// (`super::replica_notices`); `None` on SQLite.
    replica: Option<Arc<str>>,
}

impl ResourceStore {
    pub fn open(
        conn: Connection,
        registry: Arc<RwLock<Registry>>,
        pools: Pools,
        location: Location,
        replica: Option<Arc<str>>,
    ) -> Result<Self, StoreError> {
        let generations = stored_generations(&conn)?;
        let read_conn = location.open_reader()?;
        Ok(ResourceStore {
            conn: Arc::new(Mutex::new(conn)),
            read_conn: Arc::new(Mutex::new(read_conn)),
            registry,
            generations: Arc::new(RwLock::new(generations)),
            generation_watchers: Arc::default(),
            pools: Arc::new(pools),
            location: Arc::new(location),
            replica,
        })
    }

    /// Whether a transaction has the resource connection (a test waits for
    /// one to be stuck on the write lock).
    #[cfg(test)]
    pub(crate) fn connection_taken(&self) -> bool {
        self.conn.try_lock().is_err()
    }

    /// Desired-state generation of a node (0: nothing was ever desired of it).
    pub fn node_generation(&self, node_id: &str) -> u64 {
        self.generations
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(node_id)
            .copied()
            .unwrap_or(0)
    }

    /// Follow a node's desired-state generation: the receiver sees every
    /// committed change. Read under the watchers lock, which commits take
    /// after updating the mirror, so no change slips between the two.
    pub fn watch_node_generation(&self, node_id: &str) -> tokio::sync::watch::Receiver<u64> {
        let mut watchers = self
            .generation_watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // An existing sender is current: every commit announces to it.
        let current = self.node_generation(node_id);
        let sender = watchers
            .entry(node_id.to_string())
            .or_insert_with(|| tokio::sync::watch::channel(current).0);
        sender.subscribe()
    }

    /// Generations another replica committed: mirror the newer ones and
    /// wake this replica's followers of those nodes.
    pub(crate) fn learn_generations(&self, learned: &[(String, u64)]) {
        let mut newer = Vec::new();
        {
            let mut generations = self.generations.write().unwrap_or_else(|e| e.into_inner());
            for (node, generation) in learned {
                if generations.get(node).is_none_or(|known| known < generation) {
                    generations.insert(node.clone(), *generation);
                    newer.push((node.clone(), *generation));
                }
            }
        }
        self.announce_generations(&newer);
    }

    /// Every node's generation as the database holds it, learned as above
    /// (after notices may have been missed).
    pub(crate) fn relearn_generations(&self) -> Result<(), StoreError> {
        let stored = {
            let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
            stored_generations(&conn)?
        };
        self.learn_generations(&stored.into_iter().collect::<Vec<_>>());
        Ok(())
    }

    fn announce_generations(&self, touched: &[(String, u64)]) {
        let mut watchers = self
            .generation_watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (node, generation) in touched {
            if let Some(sender) = watchers.get(node) {
                if sender.receiver_count() == 0 {
                    watchers.remove(node);
                } else {
                    sender.send_replace(*generation);
                }
            }
        }
    }

    /// Run `body` in one IMMEDIATE transaction; commit only if it succeeds.
    pub async fn transact<T: Send + 'static>(
        &self,
        body: impl FnOnce(&mut TxContext<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.transact_blocking(body))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    fn transact_blocking<T>(
        &self,
        body: impl FnOnce(&mut TxContext<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction()?;
        // The registry lock is held only for a clone-free borrow during the
        // body; the writer thread takes it briefly per batch, and the body
        // never waits on the writer.
        let registry = self.registry.read().unwrap_or_else(|e| e.into_inner());
        let mut context = TxContext {
            tx: &tx,
            now: OffsetDateTime::now_utc(),
            pools: &self.pools,
            registry: &registry,
            effects: TxEffects::default(),
        };
        let value = body(&mut context)?;
        let effects = std::mem::take(&mut context.effects);
        drop(context);
        drop(registry);
        let touched: Vec<(String, u64)> = effects
            .touched_nodes
            .iter()
            .map(|node| {
                tx.query_row(
                    "SELECT generation FROM node_generations WHERE node_id = ?1",
                    [node],
                    |row| row.get::<i64>(0),
                )
                .map(|g| (node.clone(), g as u64))
            })
            .collect::<Result<_, _>>()?;
        if let Some(replica) = &self.replica {
            super::replica_notices::announce_generations(&tx, replica, &touched)?;
            if effects.tokens_changed {
                super::replica_notices::announce_tokens(&tx, replica)?;
            }
        }
        tx.commit()?;
        self.generations
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .extend(touched.iter().cloned());
        self.announce_generations(&touched);
        Ok(value)
    }

    /// A read-only connection of its own, for a long read (an export) that
    /// must hold neither the shared connection nor the node registry: WAL
    /// readers run beside the writer, so heartbeats and requests go on.
    pub fn reader(&self) -> Result<Connection, StoreError> {
        self.location.open_reader()
    }

    /// `body` on a [`reader`](Self::reader) of its own, off the async
    /// threads: for reads whose size the caller does not bound (result
    /// pages, exports), which under [`read`](Self::read) would hold the
    /// registry lock that the store writer needs before it acks heartbeats.
    /// `body` owns the connection, so a streamed read can keep it.
    pub async fn read_apart<T: Send + 'static>(
        &self,
        body: impl FnOnce(Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || body(this.reader()?))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Read-only work on the store's read connection, beside the registry:
    /// for short reads (one resource, a bounded list). It never waits for
    /// a transaction's write lock.
    pub async fn read<T: Send + 'static>(
        &self,
        body: impl FnOnce(&Connection, &Registry) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = this.read_conn.lock().unwrap_or_else(|e| e.into_inner());
            let registry = this.registry.read().unwrap_or_else(|e| e.into_inner());
            body(&conn, &registry)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}
