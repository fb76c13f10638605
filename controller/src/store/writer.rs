//! The single writer: group commit of everything that is queued.
//!
//! The thread takes the first queued command, drains whatever else is queued
//! (up to [`MAX_BATCH`]), runs each command inside its own SAVEPOINT (so one
//! failing command does not undo the others), commits once, publishes the
//! changed nodes to the in-memory registry and only then answers every caller.
//! Under load a batch collects all heartbeats that arrived during the previous
//! fsync, so the fsync rate stays bounded while every ack is still durable.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::store::sql::{params, Connection, Transaction, Value};
use measurelab_api::http::{self, NodeStatus};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use super::batch::{in_savepoint, insert_event, json, Overlay, PendingReply, Reply};
use super::checkpoint::Checkpointer;
use super::codec::{parse_time, rfc3339};
use super::error::StoreError;
use super::exec_channels::{self, ChannelChange};
use super::heartbeat_sql::{heartbeat_update, HEARTBEAT_ROWS_PER_STATEMENT};
use super::node_identity::{self, IdentityCommand};
use super::nodes::{
    check_secret, load_node, status_text, HeartbeatInput, NewEvent, RegisterInput, Registered,
    ShipLogsInput, LOG_LINES_PER_NODE,
};
use super::registry::{NodeEntry, Registry};
use super::replica_notices;
use super::sql::pg::Listener;
use crate::placement::overcommit::Overcommit;

/// Upper bound of commands per transaction, so one batch cannot hold the
/// registry publication (and every caller's ack) back for long.
const MAX_BATCH: usize = 8192;
/// Batches slower than this are logged: they show up as ack tail latency.
const SLOW_BATCH: Duration = Duration::from_millis(50);
/// Queue depth before callers wait (backpressure instead of unbounded memory).
const QUEUE_DEPTH: usize = 65_536;

pub(crate) enum WriteCommand {
    Register(RegisterInput, Reply<Registered>),
    Heartbeat(HeartbeatInput, Reply<u64>),
    ShipLogs(ShipLogsInput, Reply<usize>),
    SetLabels {
        node_id: String,
        labels: BTreeMap<String, String>,
        reply: Reply<http::Node>,
    },
    SetOvercommit {
        node_id: String,
        cpu: Option<f64>,
        memory: Option<f64>,
        reply: Reply<http::Node>,
    },
    RecordEvent(NewEvent, Reply<i64>),
    /// Approvals, revocation, deletion, join tokens.
    Identity(IdentityCommand),
    Sweep {
        offline_after: Duration,
        reply: Reply<usize>,
    },
    /// Reload these nodes (`None`: all) from the database into the image:
    /// another replica changed them ([`super::replica_notices`]).
    ReloadNodes(Option<Vec<String>>),
    /// An agent's exec stream attached or ended here ([`super::exec_channels`]).
    ExecChannel(ChannelChange, Reply<usize>),
    Stop,
}

/// Joins the writer thread.
pub(crate) struct WriterHandle {
    thread: std::thread::JoinHandle<()>,
    /// SQLite's alone.
    checkpointer: Option<Checkpointer>,
    /// PostgreSQL's alone: other replicas' notices, followed until the
    /// writer has stopped.
    listeners: Vec<Listener>,
}

impl WriterHandle {
    /// Wait until the writer has committed what was queued before `Stop`.
    pub async fn join(self) {
        let WriterHandle {
            thread,
            checkpointer,
            listeners,
        } = self;
        // join() blocks, so keep it off the async workers.
        let joined = tokio::task::spawn_blocking(move || {
            let result = thread.join();
            if let Some(checkpointer) = checkpointer {
                checkpointer.stop();
            }
            drop(listeners);
            result
        })
        .await;
        if let Ok(Err(panic)) = joined {
            tracing::error!(?panic, "store writer thread panicked");
        }
    }
}

pub(crate) fn spawn(
    conn: Connection,
    registry: Arc<RwLock<Registry>>,
    durable_heartbeats: bool,
    checkpointer: Option<Checkpointer>,
    replica: Option<String>,
) -> (mpsc::Sender<WriteCommand>, WriterHandle) {
    let (sender, receiver) = mpsc::channel(QUEUE_DEPTH);
    let thread = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || {
            Writer {
                conn,
                registry,
                durable_heartbeats,
                replica,
            }
            .run(receiver)
        });
    let thread = match thread {
        Ok(thread) => thread,
        // Startup: without a writer thread the controller cannot work at all.
        Err(e) => panic!("cannot spawn the store writer thread: {e}"),
    };
    (
        sender,
        WriterHandle {
            thread,
            checkpointer,
            listeners: Vec::new(),
        },
    )
}

impl WriterHandle {
    /// Keep `listener` until the writer has stopped.
    pub(crate) fn follow(&mut self, listener: Listener) {
        self.listeners.push(listener);
    }
}

struct Writer {
    conn: Connection,
    registry: Arc<RwLock<Registry>>,
    durable_heartbeats: bool,
    /// This replica's id in change notices; `None` on SQLite (one
    /// controller, nothing to announce).
    replica: Option<String>,
}

fn write_status(tx: &Connection, node: &NodeEntry) -> Result<(), StoreError> {
    tx.prepare_cached("UPDATE nodes SET status = ?2, last_heartbeat = ?3 WHERE id = ?1")?
        .execute(params![
            node.id,
            status_text(node.status),
            node.last_heartbeat.map(rfc3339)
        ])?;
    Ok(())
}

impl Writer {
    fn run(mut self, mut receiver: mpsc::Receiver<WriteCommand>) {
        let mut stopping = false;
        while !stopping {
            let Some(first) = receiver.blocking_recv() else {
                break;
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            stopping = self.apply_batch(batch);
        }
        tracing::debug!("store writer stopped");
    }

    /// Returns true when a `Stop` was in the batch.
    fn apply_batch(&mut self, batch: Vec<WriteCommand>) -> bool {
        let registry = self.registry.clone();
        let mut overlay = Overlay {
            registry: &registry,
            changed: HashMap::new(),
            removed: HashSet::new(),
        };
        let mut replies = Vec::with_capacity(batch.len());
        let mut stop = false;
        let now = OffsetDateTime::now_utc();
        let instant = Instant::now();
        let durable_heartbeats = self.durable_heartbeats;

        let batch_len = batch.len();
        let batch_started = Instant::now();
        let mut commit_time = Duration::ZERO;
        // Which changes the other replicas must hear of (see replica_notices).
        let mut announce_all = false;
        let mut reloaded: HashSet<String> = HashSet::new();
        let replica = self.replica.clone();
        let outcome = (|| -> Result<(), StoreError> {
            // Heartbeats alone need no one-writer order (see
            // needs_write_lock): a batch of nothing else runs beside other
            // replicas' writers instead of queueing behind them.
            let mut tx = self.conn.transaction_locking_later()?;
            let mut heartbeat_rows = HeartbeatRows::default();
            for command in batch {
                if needs_write_lock(&command, &overlay) {
                    // Before any heartbeat row is written: rows locked
                    // first could be what the lock holder waits for.
                    tx.take_write_lock()?;
                }
                if !matches!(command, WriteCommand::Heartbeat(..)) {
                    heartbeat_rows.write(&tx, &overlay)?;
                }
                announce_all |= matches!(
                    command,
                    WriteCommand::Register(..)
                        | WriteCommand::SetLabels { .. }
                        | WriteCommand::SetOvercommit { .. }
                        | WriteCommand::Identity(_)
                );
                match command {
                    WriteCommand::Stop => stop = true,
                    WriteCommand::ReloadNodes(ids) => {
                        let result = in_savepoint(&mut tx, &mut overlay, |tx, overlay| {
                            reload_nodes(tx, overlay, ids, instant)
                        });
                        match result {
                            Ok(ids) => reloaded.extend(ids),
                            Err(e) => {
                                tracing::warn!(error = %e, "reloading nodes another replica changed failed")
                            }
                        }
                    }
                    WriteCommand::Register(input, reply) => {
                        let result = in_savepoint(&mut tx, &mut overlay, |tx, overlay| {
                            node_identity::register(tx, overlay, input, now, instant)
                        })
                        .and_then(|admitted| admitted);
                        replies.push(PendingReply::Registered(reply, result));
                    }
                    WriteCommand::Heartbeat(input, reply) => {
                        let result = heartbeat(&mut tx, &mut overlay, input, now, instant).map(
                            |(desired, node_id)| {
                                if durable_heartbeats {
                                    heartbeat_rows.queue(node_id);
                                }
                                desired
                            },
                        );
                        replies.push(PendingReply::Heartbeat(reply, result));
                    }
                    WriteCommand::ShipLogs(input, reply) => {
                        let result = in_savepoint(&mut tx, &mut overlay, |tx, overlay| {
                            ship_logs(tx, overlay, input)
                        });
                        replies.push(PendingReply::Count(reply, result));
                    }
                    WriteCommand::SetLabels {
                        node_id,
                        labels,
                        reply,
                    } => {
                        let result = in_savepoint(&mut tx, &mut overlay, |tx, overlay| {
                            set_labels(tx, overlay, &node_id, labels, now).map(Box::new)
                        });
                        replies.push(PendingReply::Node(reply, result));
                    }
                    WriteCommand::SetOvercommit {
                        node_id,
                        cpu,
                        memory,
                        reply,
                    } => {
                        let result = in_savepoint(&mut tx, &mut overlay, |tx, overlay| {
                            set_overcommit(tx, overlay, &node_id, cpu, memory, now).map(Box::new)
                        });
                        replies.push(PendingReply::Node(reply, result));
                    }
                    WriteCommand::RecordEvent(event, reply) => {
                        let result = in_savepoint(&mut tx, &mut overlay, |tx, _| {
                            insert_event(tx, now, &event)
                        });
                        replies.push(PendingReply::Event(reply, result));
                    }
                    WriteCommand::Identity(command) => {
                        replies.push(node_identity::apply(&mut tx, &mut overlay, command, now));
                    }
                    WriteCommand::ExecChannel(change, reply) => {
                        // SQLite: one controller, no one to tell.
                        let result = match &replica {
                            Some(replica) => in_savepoint(&mut tx, &mut overlay, |tx, _| {
                                exec_channels::apply(tx, replica, &change)
                            }),
                            None => Ok(0),
                        };
                        replies.push(PendingReply::Count(reply, result));
                    }
                    WriteCommand::Sweep {
                        offline_after,
                        reply,
                    } => {
                        let result = in_savepoint(&mut tx, &mut overlay, |tx, overlay| {
                            sweep(tx, overlay, offline_after, now, instant)
                        });
                        replies.push(PendingReply::Count(reply, result));
                    }
                }
            }
            heartbeat_rows.write(&tx, &overlay)?;
            if let Some(replica) = &replica {
                let ids = nodes_to_announce(&overlay, announce_all, &reloaded);
                replica_notices::announce_nodes(&tx, replica, &ids)?;
            }
            let commit_started = Instant::now();
            tx.commit()?;
            commit_time = commit_started.elapsed();
            Ok(())
        })();

        // Every ack of the batch waited this long. Splitting it tells a slow
        // disk (commit: fsync, inline WAL checkpoint) from a starved CPU (apply).
        let batch_time = batch_started.elapsed();
        if batch_time > SLOW_BATCH {
            tracing::warn!(
                commands = batch_len,
                apply_ms = (batch_time - commit_time).as_millis() as u64,
                commit_ms = commit_time.as_millis() as u64,
                "slow store batch; its acks waited"
            );
        }
        match outcome {
            Ok(()) => {
                let changed = overlay.changed;
                if !changed.is_empty() {
                    let mut registry = self.registry.write().unwrap_or_else(|e| e.into_inner());
                    for (_, entry) in changed {
                        registry.upsert(entry);
                    }
                }
                if !overlay.removed.is_empty() {
                    let mut registry = self.registry.write().unwrap_or_else(|e| e.into_inner());
                    for id in &overlay.removed {
                        registry.remove(id);
                    }
                }
                replies.into_iter().for_each(PendingReply::send);
            }
            Err(e) => {
                let message = e.to_string();
                tracing::error!(error = %message, "store batch commit failed; nothing of it was stored");
                replies
                    .into_iter()
                    .for_each(|reply| reply.fail(&message).send());
            }
        }
        stop
    }
}

/// Whether `command` needs the write lock that orders writers across
/// replicas. Every command does but a heartbeat of a node that is not
/// offline: that one only updates its own node's row, in columns no other
/// command writes (see [`heartbeat_update`]), so row locks order it
/// enough, and it adds no event or id a reader pages by. A node coming
/// back online writes its status and an event: that heartbeat takes it.
fn needs_write_lock(command: &WriteCommand, overlay: &Overlay<'_>) -> bool {
    match command {
        WriteCommand::Heartbeat(input, _) => {
            overlay.status(&input.node_id) == Some(NodeStatus::Offline)
        }
        _ => true,
    }
}

/// A heartbeat, applied to the batch's node image. Its row is written
/// later, with the other heartbeats of its run ([`HeartbeatRows`]); only a
/// node coming back online writes at once (status and event together).
/// Returns the node's desired generation and its id.
fn heartbeat(
    tx: &mut Transaction<'_>,
    overlay: &mut Overlay<'_>,
    input: HeartbeatInput,
    now: OffsetDateTime,
    instant: Instant,
) -> Result<(u64, String), StoreError> {
    let node = overlay.get(&input.node_id);
    check_secret(node.as_ref(), &input.node_id, &input.node_secret)?;
    let Some(mut node) = node else {
        return Err(StoreError::UnknownNode(input.node_id));
    };
    let came_back = node.status == NodeStatus::Offline;
    if input.sequence != 0 && input.sequence <= node.last_sequence {
        tracing::debug!(node = %node.name, sequence = input.sequence, last = node.last_sequence,
            "heartbeat arrived out of order");
    }
    node.status = NodeStatus::Online;
    node.last_heartbeat = Some(now);
    node.last_contact = instant;
    node.last_sequence = node.last_sequence.max(input.sequence);
    node.agent_version = input.agent_version;
    node.capabilities = input.capabilities;
    node.resources = input.resources;
    node.observed_generation = input.observed_generation;
    if came_back {
        // Also with in-memory heartbeats: the journal and the status column
        // never disagree.
        in_savepoint(tx, overlay, |tx, _| {
            write_status(tx, &node)?;
            insert_event(
                tx,
                now,
                &NewEvent {
                    reason: "NodeOnline",
                    object_kind: "node",
                    object_id: node.id.clone(),
                    message: format!("node {} is back online", node.name),
                },
            )
        })?;
    }
    let beat = (node.desired_generation, node.id.clone());
    overlay.put(node);
    Ok(beat)
}

/// Heartbeat rows to write (durable heartbeats), as one `UPDATE` per
/// [`HEARTBEAT_ROWS_PER_STATEMENT`] nodes rather than one per heartbeat: on
/// PostgreSQL every statement is a round trip to the server, and a
/// savepoint around each heartbeat two more, while every replica's writer
/// waits for the one holding the write lock. Written before any other
/// command of the batch and before the commit, so statements still run in
/// the order of their commands; a node beating twice is written once, with
/// its latest values (the image holds them).
#[derive(Default)]
struct HeartbeatRows {
    ids: Vec<String>,
    queued: HashSet<String>,
}

impl HeartbeatRows {
    fn queue(&mut self, node_id: String) {
        if self.queued.insert(node_id.clone()) {
            self.ids.push(node_id);
        }
    }

    /// Write the queued rows from the batch's image of the nodes.
    fn write(&mut self, tx: &Connection, overlay: &Overlay<'_>) -> Result<(), StoreError> {
        self.queued.clear();
        let mut ids = std::mem::take(&mut self.ids);
        // Without the write lock two replicas' batches may share a node (an
        // agent failing over): locking rows in one order keeps them from
        // waiting on each other.
        ids.sort_unstable();
        for chunk in ids.chunks(HEARTBEAT_ROWS_PER_STATEMENT) {
            let mut values = Vec::with_capacity(chunk.len() * 7);
            let mut rows = 0;
            for id in chunk {
                // Read in place: no copy of the whole node (labels,
                // capabilities) only to read seven fields of it.
                let row = overlay.view(id, |node| -> Result<[Value; 7], StoreError> {
                    Ok([
                        Value::Text(node.id.clone()),
                        node.last_heartbeat
                            .map_or(Value::Null, |t| Value::Text(rfc3339(t))),
                        Value::Integer(node.last_sequence as i64),
                        Value::Text(node.agent_version.clone()),
                        Value::Text(json(&node.capabilities)?),
                        Value::Text(json(&node.resources)?),
                        Value::Integer(node.observed_generation as i64),
                    ])
                });
                // A node deleted later in the batch has no row left to update.
                if let Some(row) = row {
                    values.extend(row?);
                    rows += 1;
                }
            }
            if rows > 0 {
                tx.prepare_cached(heartbeat_update(rows))?.execute(values)?;
            }
        }
        Ok(())
    }
}

fn ship_logs(
    tx: &Connection,
    overlay: &mut Overlay<'_>,
    input: ShipLogsInput,
) -> Result<usize, StoreError> {
    let node = overlay.get(&input.node_id);
    check_secret(node.as_ref(), &input.node_id, &input.node_secret)?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO node_logs (node_id, time, level, target, message) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for line in &input.lines {
        insert.execute(params![
            input.node_id,
            line.time,
            line.level,
            line.target,
            line.message
        ])?;
    }
    tx.prepare_cached(
        "DELETE FROM node_logs WHERE node_id = ?1 AND id <=
            (SELECT id FROM node_logs WHERE node_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
    )?
    .execute(params![input.node_id, LOG_LINES_PER_NODE])?;
    Ok(input.lines.len())
}

fn set_labels(
    tx: &Connection,
    overlay: &mut Overlay<'_>,
    id_or_name: &str,
    labels: BTreeMap<String, String>,
    now: OffsetDateTime,
) -> Result<http::Node, StoreError> {
    let Some(mut node) = overlay.get_by_id_or_name(id_or_name) else {
        return Err(StoreError::UnknownNode(id_or_name.to_string()));
    };
    if node.labels == labels {
        return Ok(node.to_api());
    }
    let old: HashSet<_> = node.labels.keys().cloned().collect();
    let removed: Vec<_> = old
        .iter()
        .filter(|k| !labels.contains_key(*k))
        .cloned()
        .collect();
    node.labels = labels;
    tx.prepare_cached("UPDATE nodes SET labels = ?2 WHERE id = ?1")?
        .execute(params![node.id, json(&node.labels)?])?;
    insert_event(
        tx,
        now,
        &NewEvent {
            reason: "NodeLabelsChanged",
            object_kind: "node",
            object_id: node.id.clone(),
            message: format!(
                "labels of node {} set to {:?}{}",
                node.name,
                node.labels,
                if removed.is_empty() {
                    String::new()
                } else {
                    format!(" (removed {removed:?})")
                }
            ),
        },
    )?;
    let api = node.to_api();
    overlay.put(node);
    Ok(api)
}

/// Set the ratios given; `None` keeps the current one. Already validated.
fn set_overcommit(
    tx: &Connection,
    overlay: &mut Overlay<'_>,
    id_or_name: &str,
    cpu: Option<f64>,
    memory: Option<f64>,
    now: OffsetDateTime,
) -> Result<http::Node, StoreError> {
    let Some(mut node) = overlay.get_by_id_or_name(id_or_name) else {
        return Err(StoreError::UnknownNode(id_or_name.to_string()));
    };
    let wanted = Overcommit {
        cpu: cpu.unwrap_or(node.overcommit.cpu),
        memory: memory.unwrap_or(node.overcommit.memory),
    };
    if wanted == node.overcommit {
        return Ok(node.to_api());
    }
    let before = node.overcommit;
    node.overcommit = wanted;
    tx.prepare_cached(
        "UPDATE nodes SET cpu_overcommit = COALESCE(?2, cpu_overcommit),
                          memory_overcommit = COALESCE(?3, memory_overcommit) WHERE id = ?1",
    )?
    .execute(params![node.id, cpu, memory])?;
    insert_event(
        tx,
        now,
        &NewEvent {
            reason: "NodeOvercommitChanged",
            object_kind: "node",
            object_id: node.id.clone(),
            message: format!(
                "overcommit of node {}: cpu {:.2} -> {:.2}, memory {:.2} -> {:.2}",
                node.name, before.cpu, wanted.cpu, before.memory, wanted.memory
            ),
        },
    )?;
    let api = node.to_api();
    overlay.put(node);
    Ok(api)
}

/// Reload `ids` (`None`: every node) from the database into the image,
/// keeping when this replica last heard each; the ids reloaded.
fn reload_nodes(
    tx: &Connection,
    overlay: &mut Overlay<'_>,
    ids: Option<Vec<String>>,
    instant: Instant,
) -> Result<Vec<String>, StoreError> {
    let ids = match ids {
        Some(ids) => ids,
        None => {
            let mut all: HashSet<String> = tx
                .prepare("SELECT id FROM nodes")?
                .query_map([], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            let registry = overlay.registry.read().unwrap_or_else(|e| e.into_inner());
            all.extend(registry.iter().map(|node| node.id.clone()));
            all.into_iter().collect()
        }
    };
    for id in &ids {
        let contact = overlay.get(id).map_or(instant, |node| node.last_contact);
        match load_node(tx, id, contact)? {
            Some(node) => overlay.put(node),
            None => overlay.remove(id),
        }
    }
    Ok(ids)
}

/// The nodes this batch changed that other replicas must reload: every one
/// touched when the batch held a registration, label, overcommit or
/// identity command; otherwise (heartbeats, the sweep) those whose status
/// changed. Never what this batch itself reloaded from another replica's
/// notice, or replicas would echo notices back and forth.
fn nodes_to_announce(
    overlay: &Overlay<'_>,
    announce_all: bool,
    reloaded: &HashSet<String>,
) -> Vec<String> {
    let registry = overlay.registry.read().unwrap_or_else(|e| e.into_inner());
    let changed = overlay.changed.values().filter(|node| {
        announce_all
            || registry
                .by_id(&node.id)
                .is_none_or(|before| before.status != node.status)
    });
    changed
        .map(|node| node.id.clone())
        .chain(overlay.removed.iter().cloned())
        .filter(|id| !reloaded.contains(id))
        .collect()
}

/// Nodes whose heartbeat times are read per query in the sweep.
const SWEEP_READS_PER_QUERY: usize = 256;

/// The last heartbeat the database holds for each of `node_ids` (whichever
/// replica wrote it), as stored: the text the offline write compares with.
/// Read in a few queries, not one per node: with replicas, every node
/// another replica hears is a candidate here once per deadline, and each
/// query is a round trip while this batch holds the write lock.
fn stored_heartbeats(
    tx: &Connection,
    node_ids: &[String],
) -> Result<HashMap<String, Option<String>>, StoreError> {
    let mut stored = HashMap::with_capacity(node_ids.len());
    for chunk in node_ids.chunks(SWEEP_READS_PER_QUERY) {
        let marks = vec!["?"; chunk.len()].join(", ");
        let sql = format!("SELECT id, last_heartbeat FROM nodes WHERE id IN ({marks})");
        let values: Vec<Value> = chunk.iter().map(|id| Value::Text(id.clone())).collect();
        let rows = tx
            .prepare_cached(&sql)?
            .query_map(values, |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<Vec<(String, Option<String>)>, _>>()?;
        stored.extend(rows);
    }
    Ok(stored)
}

fn sweep(
    tx: &Connection,
    overlay: &mut Overlay<'_>,
    offline_after: Duration,
    now: OffsetDateTime,
    instant: Instant,
) -> Result<usize, StoreError> {
    let mut candidates: Vec<String> = {
        let registry = overlay.registry.read().unwrap_or_else(|e| e.into_inner());
        registry
            .iter()
            .filter(|node| node.status == NodeStatus::Online)
            .filter(|node| instant.saturating_duration_since(node.last_contact) > offline_after)
            .map(|node| node.id.clone())
            .collect()
    };
    // Rows in id order, as heartbeat batches lock them (HeartbeatRows):
    // they no longer wait for this sweep's lock, only for its rows.
    candidates.sort_unstable();
    let stored = stored_heartbeats(tx, &candidates)?;
    let mut gone_offline = Vec::new();
    for id in candidates {
        // Re-check through the overlay: a heartbeat earlier in this batch
        // may have just revived the node.
        let Some(mut node) = overlay.get(&id) else {
            continue;
        };
        let silent_for = instant.saturating_duration_since(node.last_contact);
        if node.status != NodeStatus::Online || silent_for <= offline_after {
            continue;
        }
        let Some(stored) = stored.get(&id) else {
            continue; // deleted by another replica; its notice will tell
        };
        // Replicas on one database each hear only their own agents' heartbeats:
        // one that another replica recorded in time keeps the node online,
        // and refreshes this replica's image of it.
        if let Some(heard) = stored.as_deref().map(parse_time).transpose()? {
            let heard_ago = (now - heard).max(time::Duration::ZERO);
            if node.last_heartbeat.is_none_or(|mine| heard > mine) && heard_ago <= offline_after {
                node.last_heartbeat = Some(heard);
                node.last_contact = instant
                    .checked_sub(heard_ago.unsigned_abs())
                    .unwrap_or(instant);
                overlay.put(node);
                continue;
            }
        }
        // Only if no heartbeat was stored since the read: other replicas
        // write heartbeat rows without the write lock this sweep holds.
        // (PostgreSQL re-checks the condition on a row a heartbeat has just
        // updated once that commits.) A node that beat meanwhile is left
        // online, to be looked at again by the next sweep.
        let changed = tx
            .prepare_cached(
                "UPDATE nodes SET status = 'offline' \
                 WHERE id = ?1 AND status = 'online' AND last_heartbeat IS NOT DISTINCT FROM ?2",
            )?
            .execute(params![node.id, stored])?;
        if changed == 0 {
            continue;
        }
        node.status = NodeStatus::Offline;
        insert_event(
            tx,
            now,
            &NewEvent {
                reason: "NodeOffline",
                object_kind: "node",
                object_id: node.id.clone(),
                message: format!(
                    "node {} missed its heartbeats for {:.1} s (deadline {:.1} s)",
                    node.name,
                    silent_for.as_secs_f64(),
                    offline_after.as_secs_f64()
                ),
            },
        )?;
        gone_offline.push(node);
    }
    let count = gone_offline.len();
    for node in gone_offline {
        overlay.put(node);
    }
    Ok(count)
}
