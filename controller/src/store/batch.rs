//! What one command of a writer batch works with: the overlay of nodes the
//! batch changed, the replies sent after the commit, savepoints, and the SQL
//! shared by the node commands ([`super::writer`], [`super::node_identity`]).

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use super::sql::{params, Connection, Transaction};
use measurelab_api::http;
use time::OffsetDateTime;
use tokio::sync::oneshot;

use super::codec::rfc3339;
use super::error::StoreError;
use super::nodes::{status_text, NewEvent, Registered};
use super::registry::{NodeEntry, Registry};

pub(super) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// Sends a command's result, or the commit failure it is given.
pub(super) type SendReply = Box<dyn FnOnce(Option<&str>) + Send>;

/// A reply to send once the batch has committed.
pub(super) enum PendingReply {
    Registered(Reply<Registered>, Result<Registered, StoreError>),
    Heartbeat(Reply<u64>, Result<u64, StoreError>),
    Count(Reply<usize>, Result<usize, StoreError>),
    Node(Reply<http::Node>, Result<Box<http::Node>, StoreError>),
    Event(Reply<i64>, Result<i64, StoreError>),
    /// Any other reply: sends its result, or the commit failure given.
    Deferred(SendReply),
}

impl PendingReply {
    pub(super) fn deferred<T: Send + 'static>(
        reply: Reply<T>,
        result: Result<T, StoreError>,
    ) -> Self {
        PendingReply::Deferred(Box::new(move |commit_failure| {
            let result = match (result, commit_failure) {
                (Ok(_), Some(message)) => Err(StoreError::Commit(message.to_string())),
                (result, _) => result,
            };
            // A caller that gave up no longer listens.
            let _ = reply.send(result);
        }))
    }

    /// Replace a success by the commit failure: nothing of the batch was stored.
    pub(super) fn fail(self, message: &str) -> Self {
        let err = || StoreError::Commit(message.to_string());
        match self {
            PendingReply::Registered(r, Ok(_)) => PendingReply::Registered(r, Err(err())),
            PendingReply::Heartbeat(r, Ok(_)) => PendingReply::Heartbeat(r, Err(err())),
            PendingReply::Count(r, Ok(_)) => PendingReply::Count(r, Err(err())),
            PendingReply::Node(r, Ok(_)) => PendingReply::Node(r, Err(err())),
            PendingReply::Event(r, Ok(_)) => PendingReply::Event(r, Err(err())),
            PendingReply::Deferred(send) => {
                let message = message.to_string();
                PendingReply::Deferred(Box::new(move |_| send(Some(&message))))
            }
            failed => failed,
        }
    }

    pub(super) fn send(self) {
        // A caller that gave up (client disconnected) no longer listens.
        match self {
            PendingReply::Registered(r, v) => drop(r.send(v)),
            PendingReply::Heartbeat(r, v) => drop(r.send(v)),
            PendingReply::Count(r, v) => drop(r.send(v)),
            PendingReply::Node(r, v) => drop(r.send(v.map(|node| *node))),
            PendingReply::Event(r, v) => drop(r.send(v)),
            PendingReply::Deferred(send) => send(None),
        }
    }
}

/// Nodes changed by the batch so far. Later commands of the same batch must
/// see earlier ones' changes, but the shared registry may only show them
/// after the commit.
pub(super) struct Overlay<'a> {
    pub(super) registry: &'a RwLock<Registry>,
    pub(super) changed: HashMap<String, NodeEntry>,
    /// Nodes deleted by the batch so far.
    pub(super) removed: HashSet<String>,
}

impl Overlay<'_> {
    /// `read` of the node as the batch sees it (its own changes first).
    pub(super) fn view<T>(&self, id: &str, read: impl FnOnce(&NodeEntry) -> T) -> Option<T> {
        if self.removed.contains(id) {
            return None;
        }
        if let Some(entry) = self.changed.get(id) {
            return Some(read(entry));
        }
        self.registry
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_id(id)
            .map(read)
    }

    /// The node's status in the batch's image, without copying the node.
    pub(super) fn status(&self, id: &str) -> Option<http::NodeStatus> {
        self.view(id, |entry| entry.status)
    }

    pub(super) fn get(&self, id: &str) -> Option<NodeEntry> {
        self.view(id, NodeEntry::clone)
    }

    pub(super) fn id_for_name(&self, name: &str) -> Option<String> {
        if let Some(entry) = self.changed.values().find(|e| e.name == name) {
            return Some(entry.id.clone());
        }
        let base = self
            .registry
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .id_for_name(name)
            .map(str::to_string)?;
        if self.removed.contains(&base) {
            return None;
        }
        // The base owner may have been renamed earlier in this batch.
        match self.changed.get(&base) {
            Some(entry) if entry.name != name => None,
            _ => Some(base),
        }
    }

    pub(super) fn get_by_id_or_name(&self, id_or_name: &str) -> Option<NodeEntry> {
        self.get(id_or_name)
            .or_else(|| self.id_for_name(id_or_name).and_then(|id| self.get(&id)))
    }

    pub(super) fn put(&mut self, entry: NodeEntry) {
        self.removed.remove(&entry.id);
        self.changed.insert(entry.id.clone(), entry);
    }

    pub(super) fn remove(&mut self, id: &str) {
        self.changed.remove(id);
        self.removed.insert(id.to_string());
    }
}

pub(super) fn insert_event(
    tx: &Connection,
    now: OffsetDateTime,
    event: &NewEvent,
) -> Result<i64, StoreError> {
    let id = tx
        .prepare_cached(
            "INSERT INTO events (time, reason, object_kind, object_id, message)
             VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
        )?
        .query_row(
            params![
                rfc3339(now),
                event.reason,
                event.object_kind,
                event.object_id,
                event.message
            ],
            |row| row.get(0),
        )?;
    match event.reason {
        "RegistrationRefused" | "NodeOffline" | "NodeRevoked" => {
            tracing::warn!(reason = event.reason, object = %event.object_id, "{}", event.message)
        }
        _ => tracing::info!(reason = event.reason, object = %event.object_id, "{}", event.message),
    }
    Ok(id)
}

pub(super) fn json(value: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn write_node(tx: &Connection, node: &NodeEntry) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO nodes (id, name, secret, status, registered_at, last_heartbeat, agent_version,
                            management_address, capabilities, resources, labels, last_sequence,
                            observed_generation, desired_generation, reported_labels, revoked_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
         ON CONFLICT (id) DO UPDATE SET
            name = excluded.name, secret = excluded.secret, status = excluded.status,
            last_heartbeat = excluded.last_heartbeat, agent_version = excluded.agent_version,
            management_address = excluded.management_address,
            capabilities = excluded.capabilities, resources = excluded.resources,
            labels = excluded.labels, last_sequence = excluded.last_sequence,
            observed_generation = excluded.observed_generation,
            desired_generation = excluded.desired_generation,
            reported_labels = excluded.reported_labels, revoked_at = excluded.revoked_at",
    )?
    .execute(params![
        node.id,
        node.name,
        node.secret_digest,
        status_text(node.status),
        rfc3339(node.registered_at),
        node.last_heartbeat.map(rfc3339),
        node.agent_version,
        node.management_address,
        json(&node.capabilities)?,
        json(&node.resources)?,
        json(&node.labels)?,
        node.last_sequence as i64,
        node.observed_generation as i64,
        node.desired_generation as i64,
        json(&node.reported_labels)?,
        node.revoked_at.map(rfc3339),
    ])?;
    Ok(())
}

pub(super) fn new_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Run one command in a savepoint, so a failed command leaves no trace in
/// SQLite. Commands touch the overlay only after all their SQL succeeded, so
/// it needs no rollback of its own. The savepoint statements are cached
/// (a seam `Savepoint` formats and parses its statements anew), since this
/// runs per heartbeat.
pub(super) fn in_savepoint<T>(
    tx: &mut Transaction<'_>,
    overlay: &mut Overlay<'_>,
    command: impl FnOnce(&Connection, &mut Overlay<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    tx.prepare_cached("SAVEPOINT command")?.execute([])?;
    match command(tx, overlay) {
        Ok(value) => {
            tx.prepare_cached("RELEASE command")?.execute([])?;
            Ok(value)
        }
        Err(e) => {
            tx.prepare_cached("ROLLBACK TO command")?.execute([])?;
            tx.prepare_cached("RELEASE command")?.execute([])?;
            Err(e)
        }
    }
}

#[cfg(test)]
mod savepoint_properties {
    //! A batch runs many commands in one transaction; whatever mix of them fails,
    //! the committed rows must be exactly those of the commands that succeeded.
    use super::*;
    use proptest::prelude::*;

    /// One command: the values it inserts, and after how many of them it fails.
    #[derive(Debug, Clone)]
    struct Command {
        values: Vec<u8>,
        fail_after: Option<usize>,
    }

    fn command() -> impl Strategy<Value = Command> {
        (
            proptest::collection::vec(any::<u8>(), 0..5),
            any::<Option<u8>>(),
        )
            .prop_map(|(values, fail)| {
                let fail_after = fail.map(|k| usize::from(k) % (values.len() + 1));
                Command { values, fail_after }
            })
    }

    fn run(tx: &Connection, index: usize, command: &Command) -> Result<usize, StoreError> {
        for (written, value) in command.values.iter().enumerate() {
            if command.fail_after == Some(written) {
                return Err(StoreError::Corrupt(format!("command {index} fails")));
            }
            tx.execute(
                "INSERT INTO rows (command, value) VALUES (?1, ?2)",
                params![index as i64, value],
            )?;
        }
        match command.fail_after {
            Some(_) => Err(StoreError::Corrupt(format!(
                "command {index} fails at the end"
            ))),
            None => Ok(command.values.len()),
        }
    }

    proptest! {
        #[test]
        fn a_failed_command_leaves_no_rows_and_takes_none_of_the_others(
            commands in proptest::collection::vec(command(), 0..24),
        ) {
            let mut conn = Connection::open_in_memory().unwrap();
            conn.execute_batch(
                "CREATE TABLE rows (id INTEGER PRIMARY KEY, command INTEGER, value INTEGER)",
            )
            .unwrap();
            let registry = RwLock::new(Registry::default());
            let mut overlay = Overlay {
                registry: &registry,
                changed: HashMap::new(),
                removed: HashSet::new(),
            };
            let mut tx = conn.transaction().unwrap();
            let mut expected = Vec::new();
            for (index, command) in commands.iter().enumerate() {
                let outcome = in_savepoint(&mut tx, &mut overlay, |tx, _| run(tx, index, command));
                match (&outcome, command.fail_after) {
                    (Ok(written), None) => {
                        prop_assert_eq!(*written, command.values.len());
                        expected.extend(command.values.iter().map(|v| (index as i64, i64::from(*v))));
                    }
                    (Err(_), Some(_)) => {}
                    _ => prop_assert!(false, "command {} gave {:?}", index, outcome),
                }
            }
            tx.commit().unwrap();
            let committed: Vec<(i64, i64)> = conn
                .prepare("SELECT command, value FROM rows ORDER BY id")
                .unwrap()
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            prop_assert_eq!(committed, expected);
        }
    }
}
