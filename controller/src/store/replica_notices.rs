//! Change notices between controller replicas on one PostgreSQL database.
//!
//! Each replica keeps an image of the node table in memory (credentials,
//! revocation, status, labels), loaded at start. When a replica's writer
//! commits a change to nodes that others must see (a registration, an
//! approval, a **revocation**, labels, a node going offline or coming back),
//! it sends `NOTIFY measurelab_nodes` with the node ids in the same
//! transaction, so the notice goes out exactly when the change commits. Every
//! other replica's listener hands the ids to its own writer, which reloads
//! those rows into its image in order with its own batches (a reload never
//! races a batch that would put back an older copy). After the listener
//! (re)connects, notices may have been missed, so the whole table is
//! reloaded. Heartbeats alone are not announced: they are the bulk of the
//! writes, and the leader's liveness sweep reads them from the table.
//!
//! On SQLite there is one controller and nothing is sent.

use tokio::sync::mpsc;

use super::error::StoreError;
use super::sql::pg::{ListenEvent, Listener};
use super::sql::Connection;
use super::writer::WriteCommand;

/// The channel the writers announce on.
const CHANNEL: &str = "measurelab_nodes";

/// Ids per notice: PostgreSQL payloads are under 8,000 bytes; a node id is
/// a 36-character UUID plus a separator.
const IDS_PER_NOTICE: usize = 150;

/// Announce `ids` on commit of `tx`'s transaction, as replica `replica`.
/// Payload: `<replica> <id>,<id>,…`.
pub(crate) fn announce(tx: &Connection, replica: &str, ids: &[String]) -> Result<(), StoreError> {
    for chunk in ids.chunks(IDS_PER_NOTICE) {
        tx.notify(CHANNEL, &format!("{replica} {}", chunk.join(",")))?;
    }
    Ok(())
}

/// What the writer of replica `me` must reload for a notice: `None` for its
/// own notices (already in its image) and for malformed ones.
fn ids_to_reload(payload: &str, me: &str) -> Option<Vec<String>> {
    let (sender, ids) = payload.split_once(' ')?;
    if sender == me {
        return None;
    }
    Some(
        ids.split(',')
            .filter(|id| !id.is_empty())
            .map(str::to_string)
            .collect(),
    )
}

/// Listen for other replicas' notices on the database at `url` and feed them
/// to `writer` as reloads. The listener lives until dropped (by the writer's
/// handle, once the writer has stopped).
pub(crate) fn follow(
    url: &str,
    me: String,
    writer: mpsc::Sender<WriteCommand>,
) -> Result<Listener, StoreError> {
    let (events, mut received) = mpsc::channel(64);
    let listener = Listener::start(url, CHANNEL, events).map_err(super::sql::Error::from)?;
    std::thread::Builder::new()
        .name("store-notices".into())
        .spawn(move || {
            // Ends when the listener is dropped (its sender goes) or the
            // writer has stopped.
            while let Some(event) = received.blocking_recv() {
                let reload = match event {
                    ListenEvent::Listening => None,
                    ListenEvent::Payload(payload) => match ids_to_reload(&payload, &me) {
                        Some(ids) => Some(ids),
                        None => continue,
                    },
                };
                if writer
                    .blocking_send(WriteCommand::ReloadNodes(reload))
                    .is_err()
                {
                    break;
                }
            }
        })
        .map_err(|e| StoreError::Task(format!("cannot start the notices thread: {e}")))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_reloads_the_ids_of_others_and_ignores_its_own_and_garbage() {
        assert_eq!(
            ids_to_reload("r2 a,b", "r1"),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(ids_to_reload("r1 a,b", "r1"), None);
        assert_eq!(ids_to_reload("no-separator", "r1"), None);
    }
}
