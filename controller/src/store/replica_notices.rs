//! Change notices between controller replicas on one PostgreSQL database.
//!
//! Each replica keeps in memory an image of the node table (credentials,
//! revocation, status, labels) and of every node's desired-state
//! generation, loaded at start. A replica that commits a change the others
//! must see sends `NOTIFY` in the same transaction, so the notice goes out
//! exactly when the change commits, and never for one rolled back:
//! - `measurelab_nodes`, the ids of nodes a registration, approval,
//!   **revocation**, label or overcommit change touched, or whose status
//!   changed. Every other replica's writer reloads those rows, in order with
//!   its own batches (a reload never races a batch that would put back an
//!   older copy). Heartbeats alone are not announced: they are the bulk of
//!   the writes, and the leader's liveness sweep reads them from the table.
//! - `measurelab_desired`, `node=generation` pairs a platform, VM, task or
//!   program change committed: the other replicas wake the agents that
//!   stream their desired state from them.
//!
//! After a listener (re)connects, notices may have been missed, so the
//! whole table (or every generation) is read again. On SQLite there is one
//! controller and nothing is sent.

use tokio::sync::mpsc;

use super::error::StoreError;
use super::sql::pg::{ListenEvent, Listener};
use super::sql::Connection;

/// Node changes (`replica_sync::follow_nodes` reads them).
pub(crate) const NODES: &str = "measurelab_nodes";
/// Desired-state generations (`replica_sync::follow_generations`).
pub(crate) const DESIRED: &str = "measurelab_desired";
/// The API token table (`replica_sync::follow_tokens`).
pub(crate) const TOKENS: &str = "measurelab_tokens";

/// Items per notice: PostgreSQL payloads are under 8,000 bytes; an item is
/// a 36-character node id, plus `=generation` in desired-state notices.
const ITEMS_PER_NOTICE: usize = 120;

/// Announce `items` on `channel` at commit, as replica `replica`.
/// Payload: `<replica> <item>,<item>,…`.
fn announce(
    tx: &Connection,
    channel: &str,
    replica: &str,
    items: &[String],
) -> Result<(), StoreError> {
    for chunk in items.chunks(ITEMS_PER_NOTICE) {
        tx.notify(channel, &format!("{replica} {}", chunk.join(",")))?;
    }
    Ok(())
}

/// Tell the other replicas to reload these nodes.
pub(crate) fn announce_nodes(
    tx: &Connection,
    replica: &str,
    ids: &[String],
) -> Result<(), StoreError> {
    announce(tx, NODES, replica, ids)
}

/// Tell the other replicas these nodes' desired state changed.
pub(crate) fn announce_generations(
    tx: &Connection,
    replica: &str,
    touched: &[(String, u64)],
) -> Result<(), StoreError> {
    let items: Vec<String> = touched
        .iter()
        .map(|(node, generation)| format!("{node}={generation}"))
        .collect();
    announce(tx, DESIRED, replica, &items)
}

/// Tell the other replicas to reload their token books. The notice names
/// no token: the book is small and read whole.
pub(crate) fn announce_tokens(tx: &Connection, replica: &str) -> Result<(), StoreError> {
    announce(tx, TOKENS, replica, &["reload".to_string()])
}

/// The items of a notice another replica sent; `None` for this replica's
/// own notices (already applied here) and for malformed ones.
fn items_from_others<'p>(payload: &'p str, me: &str) -> Option<Vec<&'p str>> {
    let (sender, items) = payload.split_once(' ')?;
    (sender != me).then(|| items.split(',').filter(|item| !item.is_empty()).collect())
}

pub(crate) fn generation_item(item: &str) -> Option<(String, u64)> {
    let (node, generation) = item.split_once('=')?;
    Some((node.to_string(), generation.parse().ok()?))
}

/// Listen on `channel` at `url` and hand `apply` each notice's items from
/// other replicas (`None`: notices may have been missed, read everything
/// again) until it returns false or the listener is dropped.
pub(crate) fn follow(
    url: &str,
    channel: &'static str,
    me: String,
    mut apply: impl FnMut(Option<Vec<&str>>) -> bool + Send + 'static,
) -> Result<Listener, StoreError> {
    let (events, mut received) = mpsc::channel(64);
    let listener = Listener::start(url, channel, events).map_err(super::sql::Error::from)?;
    std::thread::Builder::new()
        .name(format!("notices-{}", &channel["measurelab_".len()..]))
        .spawn(move || {
            while let Some(event) = received.blocking_recv() {
                let go_on = match &event {
                    ListenEvent::Listening => apply(None),
                    ListenEvent::Payload(payload) => match items_from_others(payload, &me) {
                        Some(items) => apply(Some(items)),
                        None => true,
                    },
                };
                if !go_on {
                    break;
                }
            }
        })
        .map_err(|e| StoreError::Task(format!("cannot start the {channel} notices thread: {e}")))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_takes_the_items_of_others_and_ignores_its_own_and_garbage() {
        assert_eq!(items_from_others("r2 a,b", "r1"), Some(vec!["a", "b"]));
        assert_eq!(items_from_others("r1 a,b", "r1"), None);
        assert_eq!(items_from_others("no-separator", "r1"), None);
        assert_eq!(generation_item("n1=7"), Some(("n1".to_string(), 7)));
        assert_eq!(generation_item("n1=x"), None);
        assert_eq!(generation_item("n1"), None);
    }
}
