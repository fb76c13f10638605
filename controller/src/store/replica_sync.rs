//! Applying other replicas' change notices ([`super::replica_notices`]) to
//! this replica: node reloads through its writer, generations to its
//! resource store, the token table to its token book.

use tokio::sync::mpsc;

use super::api_tokens::TokenBook;
use super::database::Location;
use super::error::StoreError;
use super::replica_notices::{follow, generation_item, DESIRED, NODES, TOKENS};
use super::resources::ResourceStore;
use super::sql::pg::Listener;
use super::sql::Connection;
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

/// Reload `tokens` from the database at `location` when another replica
/// changed the token table (and after a reconnect, when notices may have
/// been missed), so a token made or revoked through any replica counts at
/// every one.
pub(crate) fn follow_tokens(
    url: &str,
    me: String,
    location: Location,
    tokens: TokenBook,
) -> Result<Listener, StoreError> {
    // Opened on the notices thread at the first notice and kept: a
    // PostgreSQL session must not live on an async worker.
    let mut conn: Option<Connection> = None;
    follow(url, TOKENS, me, move |_| {
        let reloaded = match &conn {
            Some(conn) => tokens.reload(conn),
            None => location.open_connection().and_then(|opened| {
                let result = tokens.reload(&opened);
                conn = Some(opened);
                result
            }),
        };
        if let Err(e) = reloaded {
            // The session may be gone: open a new one next time.
            conn = None;
            tracing::warn!(error = %e, "reloading API tokens another replica changed failed");
        }
        true
    })
}
