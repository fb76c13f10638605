//! The uniform result document: one per run, aggregated by the MSCS from the receivers'
//! reports. Schema id `measurelab.mcast.result/v1`; fields are only ever added within v1.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::metrics::ReceiverMetrics;
use crate::receiver::TimestampSource;
use crate::sender::SenderReport;

/// Schema id written into every result document.
pub const RESULT_SCHEMA: &str = "measurelab.mcast.result/v1";

/// Why the run happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    /// The periodic round-robin schedule.
    Periodic,
    /// A submitted task.
    Task,
}

/// Outcome of the whole run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// The source sent and every receiver reported.
    Ok,
    /// The source sent, but at least one receiver failed or was missing.
    Partial,
    /// No measurement: the source failed or no receiver could join.
    Failed,
}

/// Outcome of one receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiverStatus {
    /// Reported its metrics.
    Ok,
    /// Joined, but died or errored before reporting.
    Failed,
    /// Could not be reached or could not join before the run.
    Missing,
}

/// How the one-way delay's clock error is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockSync {
    /// Sender and receiver read the same kernel clock (same host, other namespaces): the
    /// bound is twice the clock resolution (one reading at each end).
    SameHostClock,
    /// Different clocks; the bound is the synchronisation bound the operator supplied.
    ExternalBound,
}

/// Run parameters, echoed into the result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Probes per second.
    pub rate_pps: f64,
    /// UDP payload bytes per probe.
    pub packet_size_bytes: usize,
    /// Sending time.
    pub duration_seconds: f64,
    /// IP TTL.
    pub ttl: u32,
    /// Whether receivers joined (S,G) instead of (*,G).
    pub ssm: bool,
}

/// The sender's part of the result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceResult {
    /// Name of the source point.
    pub point: String,
    /// Its data-plane address, if it answered.
    pub data_addr: Option<Ipv4Addr>,
    /// Its report, if it sent.
    pub report: Option<SenderReport>,
    /// What went wrong, if it did not.
    pub error: Option<String>,
}

/// One receiver's part of the result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiverResult {
    /// Name of the receiving point.
    pub point: String,
    /// Whether it reported.
    pub status: ReceiverStatus,
    /// Why not, if it did not.
    pub error: Option<String>,
    /// Where its receive timestamps came from.
    pub timestamp_source: Option<TimestampSource>,
    /// How the delay's clock error is bounded.
    pub clock_sync: Option<ClockSync>,
    /// The bound on the clock error in the one-way delay, in microseconds.
    pub clock_error_bound_us: Option<f64>,
    /// Valid probes of other sessions it dropped.
    pub foreign_session_packets: Option<u64>,
    /// Datagrams that were not valid probes.
    pub malformed_packets: Option<u64>,
    /// Its statistics, if it reported.
    pub metrics: Option<ReceiverMetrics>,
}

impl ReceiverResult {
    /// A receiver that did not report.
    pub fn without_report(point: &str, status: ReceiverStatus, error: String) -> Self {
        Self {
            point: point.to_string(),
            status,
            error: Some(error),
            timestamp_source: None,
            clock_sync: None,
            clock_error_bound_us: None,
            foreign_session_packets: None,
            malformed_packets: None,
            metrics: None,
        }
    }
}

/// The result of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultDocument {
    /// Always [`RESULT_SCHEMA`].
    pub schema: String,
    /// The task that asked for the run; null for periodic runs.
    pub task_id: Option<String>,
    /// Unique id of the run.
    pub run_id: String,
    /// Periodic or task.
    pub kind: RunKind,
    /// Name of the source point.
    pub source_point: String,
    /// Multicast group.
    pub group: Ipv4Addr,
    /// UDP port.
    pub port: u16,
    /// Session id carried by the probes.
    pub session_id: u64,
    /// RFC 3339 UTC.
    pub started_at: String,
    /// RFC 3339 UTC.
    pub finished_at: String,
    /// Overall outcome.
    pub status: RunStatus,
    /// Run parameters.
    pub config: RunConfig,
    /// The sender.
    pub source: SourceResult,
    /// One entry per receiver, in point order.
    pub receivers: Vec<ReceiverResult>,
}
