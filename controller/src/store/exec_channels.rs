//! Which controller replica holds each node agent's `ExecChannel` stream
//! (table `exec_channels`), so a replica whose own exec hub lacks a node
//! can forward `vm exec` to the one that has it (`api/exec_forward.rs`).
//!
//! Written by the writer thread (like every node write) and only by
//! replicas on PostgreSQL: a single SQLite controller holds every channel
//! it can serve itself. A replica's stream numbers are its own, so a row is
//! owned by `(replica, stream)`: a detach deletes only that row, never a
//! newer attach the agent made to another replica meanwhile. Of two
//! attaches committed out of order, the later `attached_ms` wins.
//!
//! A replica that dies without detaching leaves its rows behind; they
//! point at a URL that no longer answers (forwarding fails with 503, as it
//! would have without forwarding) until the agent attaches elsewhere.

use super::error::StoreError;
use super::sql::{params, Connection, OptionalExtension};

/// An agent's stream attached or ended on this replica.
#[derive(Debug)]
pub(crate) enum ChannelChange {
    Attached {
        node_id: String,
        stream: u64,
        /// This replica's `--advertise-url`; `None`: not reachable by the
        /// other replicas.
        url: Option<String>,
        attached_ms: i64,
    },
    Detached {
        node_id: String,
        stream: u64,
    },
}

/// Where a node's exec channel is, as the database says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChannelHolder {
    pub replica: String,
    pub url: Option<String>,
}

/// Apply `change` as replica `replica`; the rows changed.
pub(crate) fn apply(
    tx: &Connection,
    replica: &str,
    change: &ChannelChange,
) -> Result<usize, StoreError> {
    let changed = match change {
        ChannelChange::Attached {
            node_id,
            stream,
            url,
            attached_ms,
        } => tx
            .prepare_cached(
                "INSERT INTO exec_channels (node_id, replica, url, stream, attached_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (node_id) DO UPDATE SET
                    replica = excluded.replica, url = excluded.url,
                    stream = excluded.stream, attached_ms = excluded.attached_ms
                 WHERE exec_channels.attached_ms <= excluded.attached_ms",
            )?
            .execute(params![node_id, replica, url, *stream as i64, attached_ms])?,
        ChannelChange::Detached { node_id, stream } => tx
            .prepare_cached(
                "DELETE FROM exec_channels WHERE node_id = ?1 AND replica = ?2 AND stream = ?3",
            )?
            .execute(params![node_id, replica, *stream as i64])?,
    };
    Ok(changed)
}

/// The replica holding `node_id`'s exec channel, if any recorded one.
pub(crate) fn holder(
    conn: &Connection,
    node_id: &str,
) -> Result<Option<ChannelHolder>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT replica, url FROM exec_channels WHERE node_id = ?1")?
        .query_row([node_id], |row| {
            Ok(ChannelHolder {
                replica: row.get(0)?,
                url: row.get(1)?,
            })
        })
        .optional()?)
}
