//! Deleting what has aged out: events, node logs, results, idempotency
//! records. Without it each of them grows for as long as the controller
//! runs, and a refused-request flood or a chatty node costs disk forever.

use std::time::Duration;

use crate::store::sql::params;
use time::OffsetDateTime;

use super::codec::rfc3339;
use super::error::StoreError;
use super::resources::TxContext;

/// How long each kind of record is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Events (the admin page's list, `GET /v1/events`). Default 30 days.
    pub events: Duration,
    /// Node agent log lines. Default 7 days.
    pub node_logs: Duration,
    /// Measurement results. Default 365 days: they are the product.
    pub results: Duration,
    /// Idempotency records of mutating HTTP requests. Default 24 hours,
    /// far longer than any client retries a request.
    pub idempotency: Duration,
    /// Guest usage samples (`GET /v1/vms/{id}/usage`). Default 24 hours.
    pub vm_usage: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        const DAY: Duration = Duration::from_secs(86_400);
        Retention {
            events: 30 * DAY,
            node_logs: 7 * DAY,
            results: 365 * DAY,
            idempotency: DAY,
            vm_usage: DAY,
        }
    }
}

/// Rows deleted per transaction: the transaction holds SQLite's write lock,
/// which heartbeats and every API write need too.
pub(crate) const BATCH: usize = 2_000;

/// A table whose rows age out, and how its age is stored.
#[derive(Debug, Clone, Copy)]
pub(crate) enum AgingTable {
    Events,
    NodeLogs,
    Results,
    Idempotency,
    VmUsage,
}

impl AgingTable {
    pub const ALL: [AgingTable; 5] = [
        AgingTable::Events,
        AgingTable::NodeLogs,
        AgingTable::Results,
        AgingTable::Idempotency,
        AgingTable::VmUsage,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AgingTable::Events => "events",
            AgingTable::NodeLogs => "node_logs",
            AgingTable::Results => "results",
            AgingTable::Idempotency => "idempotency",
            AgingTable::VmUsage => "vm_usage",
        }
    }

    pub fn kept_for(self, retention: &Retention) -> Duration {
        match self {
            AgingTable::Events => retention.events,
            AgingTable::NodeLogs => retention.node_logs,
            AgingTable::Results => retention.results,
            AgingTable::Idempotency => retention.idempotency,
            AgingTable::VmUsage => retention.vm_usage,
        }
    }
}

/// Delete up to [`BATCH`] rows of `table` older than `cutoff`, oldest first;
/// returns how many went. Times stored as RFC 3339 text compare as text,
/// which is exact to the second (a fraction sorts before the whole second
/// it belongs to): nothing a retention of hours or days can notice.
pub(crate) fn prune_batch(
    cx: &TxContext<'_>,
    table: AgingTable,
    cutoff: OffsetDateTime,
) -> Result<usize, StoreError> {
    let cutoff_text = rfc3339(cutoff);
    let cutoff_ms = (cutoff.unix_timestamp_nanos() / 1_000_000) as i64;
    let deleted = match table {
        AgingTable::Events => cx.tx.execute(
            "DELETE FROM events WHERE id IN
                 (SELECT id FROM events WHERE time < ?1 ORDER BY id LIMIT ?2)",
            params![cutoff_text, BATCH as i64],
        )?,
        AgingTable::NodeLogs => cx.tx.execute(
            "DELETE FROM node_logs WHERE id IN
                 (SELECT id FROM node_logs WHERE time < ?1 ORDER BY id LIMIT ?2)",
            params![cutoff_text, BATCH as i64],
        )?,
        // started_ms is indexed and numeric, unlike received_at.
        AgingTable::Results => cx.tx.execute(
            "DELETE FROM results WHERE seq IN
                 (SELECT seq FROM results WHERE started_ms < ?1 ORDER BY started_ms LIMIT ?2)",
            params![cutoff_ms, BATCH as i64],
        )?,
        AgingTable::Idempotency => cx.tx.execute(
            "DELETE FROM idempotency WHERE request_id IN
                 (SELECT request_id FROM idempotency WHERE created_at < ?1 LIMIT ?2)",
            params![cutoff_text, BATCH as i64],
        )?,
        AgingTable::VmUsage => super::vm_usage::prune(cx.tx, cutoff.unix_timestamp(), BATCH)?,
    };
    Ok(deleted)
}
