//! Applying other replicas' change notices ([`super::replica_notices`]) to
//! this replica: node reloads through its writer, generations to its
//! resource store.

use tokio::sync::mpsc;

use super::error::StoreError;
use super::replica_notices::{follow, generation_item, DESIRED, NODES};
use super::resources::ResourceStore;
use super::sql::pg::Listener;
use super::writer::WriteCommand;

/// Feed other replicas' node notices to this replica's `writer` as reloads.
pub(crate) fn follow_nodes(
    url: &str,
    me: String,
    writer: mpsc::Sender<WriteCommand>,
) -> Result<Listener, StoreError> {
    follow(url, NODES, me, move |items| {
        let ids = items.map(|items| items.into_iter().map(str::to_string).collect());
        // The writer has stopped: so can this.
        writer.blocking_send(WriteCommand::ReloadNodes(ids)).is_ok()
    })
}

/// Feed other replicas' desired-state notices to `resources`.
pub(crate) fn follow_generations(
    url: &str,
    me: String,
    resources: ResourceStore,
) -> Result<Listener, StoreError> {
    follow(url, DESIRED, me, move |items| {
        match items {
            Some(items) => {
                let learned: Vec<(String, u64)> =
                    items.into_iter().filter_map(generation_item).collect();
                resources.learn_generations(&learned);
            }
            None => {
                if let Err(e) = resources.relearn_generations() {
                    tracing::warn!(error = %e, "re-reading desired-state generations failed");
                }
            }
        }
        true
    })
}
