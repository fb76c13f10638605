//! The result document of one multicast measurement run: what the MSCS (or a
//! node's service host) aggregates from the receivers' reports and posts to
//! `POST /v1/results`, and what the CSV export, the provider's
//! `measurelab_results` and the admin page read back.
//!
//! Its schema version is the `schema` field, always [`RESULT_SCHEMA`]
//! (`measurelab.mcast.result/v1`), typed as [`ResultSchema`] so a document of
//! another version fails to deserialize at that field. Within v1 fields are
//! only ever added, and an added field has a serde default, so every v1
//! document written before it still deserializes. Unknown fields are ignored
//! for the same reason (a newer writer, an older reader).
//!
//! `docs/result-schema.json` is the JSON Schema of [`ResultDocument`],
//! generated from these types by `cargo run -p xtask -- result-schema`.

use std::net::Ipv4Addr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Schema id written into every result document: the `schema` field's only
/// accepted value.
pub const RESULT_SCHEMA: &str = "measurelab.mcast.result/v1";

/// Longest `run_id` the controller stores (it is an index key).
pub const MAX_RUN_ID_CHARS: usize = 200;

/// Inferred loss above which a link is a bottleneck, unless the task sets its own.
pub const DEFAULT_BOTTLENECK_LOSS_THRESHOLD: f64 = 0.01;

/// Inferred delay standard deviation (µs) above which a link is a bottleneck, unless
/// the task sets its own.
pub const DEFAULT_BOTTLENECK_DELAY_STDDEV_US: f64 = 1_000.0;

/// The `schema` field: which version of the document this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum ResultSchema {
    /// `measurelab.mcast.result/v1`, the only version so far.
    #[default]
    #[serde(rename = "measurelab.mcast.result/v1")]
    V1,
}

impl ResultSchema {
    /// The schema id as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ResultSchema::V1 => RESULT_SCHEMA,
        }
    }
}

/// Why the run happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    /// The periodic round-robin schedule.
    Periodic,
    /// A submitted task.
    Task,
}

/// Outcome of the whole run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// The source sent and every receiver reported.
    Ok,
    /// The source sent, but at least one receiver failed or was missing.
    Partial,
    /// No measurement: the source failed or no receiver could join.
    Failed,
}

impl RunStatus {
    /// The status as it appears on the wire (CSV cells, Terraform attributes).
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Ok => "ok",
            RunStatus::Partial => "partial",
            RunStatus::Failed => "failed",
        }
    }
}

/// Outcome of one receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReceiverStatus {
    /// Reported its metrics.
    Ok,
    /// Joined, but died or errored before reporting.
    Failed,
    /// Could not be reached or could not join before the run, or was out of the
    /// MSCS's rotation (a registered point that missed its heartbeat deadline).
    Missing,
}

impl ReceiverStatus {
    /// The status as it appears on the wire (CSV cells, Terraform attributes).
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiverStatus::Ok => "ok",
            ReceiverStatus::Failed => "failed",
            ReceiverStatus::Missing => "missing",
        }
    }
}

/// How the one-way delay's clock error is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClockSync {
    /// Sender and receiver read the same kernel clock (same host, other namespaces): the
    /// bound is twice the clock resolution (one reading at each end).
    SameHostClock,
    /// Different clocks; the bound is the synchronisation bound the operator supplied.
    ExternalBound,
}

/// Where the receive timestamps came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TimestampSource {
    /// Every accepted datagram carried an `SO_TIMESTAMPNS` kernel timestamp.
    Kernel,
    /// At least one datagram had no kernel timestamp; those used the user-space clock.
    UserSpaceFallback,
    /// Nothing was received.
    None,
}

/// Where `packets_sent` came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SentSource {
    /// The sender's own count, delivered by the MSCS.
    SenderReport,
    /// No sender report: the highest sequence number seen plus one. Undercounts loss at the
    /// tail of the run (trailing losses are invisible).
    HighestSequencePlusOne,
}

/// Run parameters, echoed into the result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
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

/// What the sender did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SenderReport {
    /// Session id of the probes.
    pub session_id: u64,
    /// Probes handed to the kernel successfully (sequence numbers 0..packets_sent).
    pub packets_sent: u64,
    /// Sends the kernel refused (e.g. ENOBUFS); those sequence numbers were reused.
    pub send_errors: u64,
    /// First send error, if any.
    pub first_send_error: Option<String>,
    /// Requested rate.
    pub requested_rate_pps: f64,
    /// `(packets_sent - 1) / (last send - first send)`.
    pub achieved_rate_pps: f64,
    /// Times the sender fell too far behind and rebased its schedule.
    pub schedule_slips: u64,
    /// Schedule slots those rebases skipped: probes the requested rate called
    /// for that were never sent. Under a duration limit `packets_sent +
    /// send_errors + slots_skipped` is the nominal count (rate x duration), to
    /// within one slot of rounding. Absent from senders before it existed
    /// (release 0.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots_skipped: Option<u64>,
    /// Largest lateness of a send against its deadline, in microseconds.
    pub max_lateness_us: f64,
    /// Mean lateness of a send against its deadline, in microseconds.
    #[serde(default)]
    pub mean_lateness_us: f64,
    /// Mean of |actual gap - scheduled gap| between consecutive sends, in microseconds:
    /// how far the departures were from evenly spaced.
    #[serde(default)]
    pub mean_abs_departure_error_us: f64,
    /// Largest |actual gap - scheduled gap| between consecutive sends, in microseconds.
    #[serde(default)]
    pub max_abs_departure_error_us: f64,
    /// Granularity in effect: 0 when every probe had its own wakeup.
    #[serde(default)]
    pub pacing_granularity_us: f64,
    /// Times the sender slept: wakeups per probe is what pacing costs in CPU.
    #[serde(default)]
    pub wakeups: u64,
    /// Probe size in bytes (UDP payload).
    pub packet_size_bytes: usize,
    /// Wall-clock time of the first send, ns since the Unix epoch.
    pub first_send_ns: u64,
    /// Wall-clock time of the last send, ns since the Unix epoch.
    pub last_send_ns: u64,
}

impl SenderReport {
    /// The schedule slots this run accounts for: sent, failed and skipped.
    /// Under a duration limit it is the nominal count (rate x duration) to
    /// within one slot, however loaded the sender's machine was; `None`
    /// from a sender that does not report skipped slots.
    pub fn slots_accounted(&self) -> Option<u64> {
        self.slots_skipped
            .map(|skipped| self.packets_sent + self.send_errors + skipped)
    }
}

/// Summary of a delay distribution, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DelaySummaryUs {
    /// Smallest value.
    pub min: f64,
    /// Nearest-rank median.
    pub median: f64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Nearest-rank 95th percentile.
    pub p95: f64,
    /// Nearest-rank 99th percentile.
    pub p99: f64,
    /// Largest value.
    pub max: f64,
}

/// RFC 3393 IPDV summary (absolute values), in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct IpdvSummaryUs {
    /// Number of packet pairs that qualified (consecutive sequence numbers, in order).
    pub pairs: u64,
    /// Mean of |ipdv|.
    pub mean_abs: f64,
    /// Nearest-rank 95th percentile of |ipdv|.
    pub p95_abs: f64,
    /// Largest |ipdv|.
    pub max_abs: f64,
    /// Mean of the signed ipdv; near zero unless the delay drifts during the run.
    pub mean: f64,
}

/// The metrics of one receiver for one run (definitions in `mcast/src/metrics.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReceiverMetrics {
    /// Packets the sender sent (see `sent_source`).
    pub packets_sent: u64,
    /// Where `packets_sent` came from.
    pub sent_source: SentSource,
    /// Distinct sequence numbers received.
    pub packets_received: u64,
    /// `packets_sent - packets_received` (RFC 7680).
    pub packets_lost: u64,
    /// Extra copies received (RFC 5560).
    pub packets_duplicated: u64,
    /// First copies that arrived with `seq < NextExp` (RFC 4737).
    pub packets_reordered: u64,
    /// Arrivals too old for the duplicate window; counted as first copies.
    pub packets_beyond_duplicate_window: u64,
    /// Arrivals with a sequence number >= `packets_sent` from the sender's report: a sender
    /// and receiver disagreeing is a bug or a foreign sender reusing the session id.
    pub packets_unexpected: u64,
    /// `packets_lost / packets_sent`; null when nothing was sent.
    pub loss_ratio: Option<f64>,
    /// Share of sent packets that arrived more than once; null when nothing was sent.
    pub duplicate_fraction: Option<f64>,
    /// Extra copies per received packet; null when nothing was received.
    pub replicated_packet_rate: Option<f64>,
    /// `packets_reordered / packets_received`; null when nothing was received.
    pub reordered_ratio: Option<f64>,
    /// One-way delay (RFC 7679); null when nothing was received.
    pub one_way_delay_us: Option<DelaySummaryUs>,
    /// IPDV (RFC 3393); null when no pair qualified.
    pub ipdv_us: Option<IpdvSummaryUs>,
    /// PDV (RFC 5481): p99 delay minus min delay; null when nothing was received.
    pub pdv_us: Option<f64>,
    /// RFC 3550 interarrival jitter after the last packet; null with fewer than 2 arrivals.
    pub jitter_us: Option<f64>,
    /// Whether the quantiles came from every value (true) or from a reservoir sample.
    pub quantiles_exact: bool,
}

/// The sender's part of the result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
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
    /// Which probes it received, one bit per sequence number of the run: what loss
    /// inference over the distribution tree reads. Absent in documents written before
    /// receivers kept it, and when the run was longer than the receiver's record limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipts: Option<ReceiptBitmap>,
}

/// A receiver's per-probe receipt pattern over sequence numbers `0..probes`
/// (`probes` is the sender's `packets_sent`).
///
/// Two encodings, whichever is smaller for the run: loss is usually rare and
/// bursty, so run lengths take a few bytes per loss episode; under heavy
/// scattered loss the plain bitmap (one bit per probe) is smaller and bounds the
/// size at `probes / 6` characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "encoding", rename_all = "snake_case")]
pub enum ReceiptBitmap {
    /// Alternating run lengths, starting with a run of received probes (which may be
    /// 0): `[3, 1, 5]` is received 0-2, lost 3, received 4-8. The runs add up to
    /// `probes`.
    Runs {
        /// Probes in the window.
        probes: u64,
        /// Run lengths, received first.
        runs: Vec<u64>,
    },
    /// Standard base64 (padded) of `ceil(probes / 8)` bytes; probe `s` is bit
    /// `s % 8` (least significant first) of byte `s / 8`; 1 is received.
    Bitmap {
        /// Probes in the window.
        probes: u64,
        /// The bits, base64.
        base64: String,
    },
}

impl ReceiptBitmap {
    /// Probes in the window.
    pub fn probes(&self) -> u64 {
        match self {
            ReceiptBitmap::Runs { probes, .. } | ReceiptBitmap::Bitmap { probes, .. } => *probes,
        }
    }
}

/// Covariance of two receivers' one-way delays over the probes both received.
///
/// With a common clock offset per receiver the covariance is unaffected, so it
/// needs no clock synchronisation. For two receivers whose paths part at tree
/// node `k` it estimates the delay variance of the path from the source to `k`
/// (Duffield and Lo Presti, INFOCOM 2000); `a == b` gives the variance of the
/// whole path to that receiver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DelayCovariance {
    /// First receiver (point name).
    pub a: String,
    /// Second receiver (point name); equal to `a` for a variance.
    pub b: String,
    /// Probes both received: the sample size of the estimate.
    pub common_probes: u64,
    /// Sample covariance of the two delays, in microseconds squared.
    pub covariance_us2: f64,
}

/// What kind of element a node of the distribution tree is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TreeNodeKind {
    /// The source VM (the root).
    Source,
    /// A node's bridge.
    Bridge,
    /// The lab switch joining the nodes' uplinks.
    Switch,
    /// A receiving VM (a leaf).
    Receiver,
}

/// One node of the distribution tree and the link into it from its parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TreeNode {
    /// Unique id: `vm:POINT`, `bridge:NODE` or `switch:lab`.
    pub id: String,
    /// What it is.
    pub kind: TreeNodeKind,
    /// Id of the parent; null for the root.
    pub parent: Option<String>,
    /// Name of the link from the parent into this node: `port:POINT` (a VM's
    /// port on its node's bridge) or `uplink:NODE` (a node's uplink, upward for
    /// the source's node, downward for the others); null for the root.
    pub link: Option<String>,
    /// Name of the measurement point, for the source and the receivers.
    pub point: Option<String>,
}

/// The distribution tree a run's probes took: source VM -> its node's bridge ->
/// uplink -> lab switch -> the receivers' nodes' uplinks and bridges -> receiver
/// VMs. Receivers on one node share that node's downlink; receivers on the
/// source's node hang off its bridge directly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DistributionTree {
    /// Nodes, every parent before its children; the first is the source.
    pub nodes: Vec<TreeNode>,
}

/// Inferred loss and delay variance of one link of the tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LinkInference {
    /// The link's name; links in series with no branching between them cannot be
    /// told apart by end-to-end measurement, so such a chain is one inferred link
    /// named by its members joined with `+`, upstream first.
    pub link: String,
    /// The tree links it covers, upstream first.
    pub links: Vec<String>,
    /// Id of the tree node the link ends at.
    pub child: String,
    /// Maximum-likelihood loss rate (MINC), clamped to 0..=1.
    pub loss: f64,
    /// Lower end of the loss's confidence interval.
    pub loss_ci_low: f64,
    /// Upper end of the loss's confidence interval.
    pub loss_ci_high: f64,
    /// Inferred delay variance, in microseconds squared, clamped at 0; null when
    /// the run carried no delay covariances.
    pub delay_variance_us2: Option<f64>,
}

/// How and from what the per-link figures were inferred.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Inference {
    /// Probes the estimate used (the sender's `packets_sent`).
    pub probes: u64,
    /// Receivers whose receipts were used.
    pub receivers: Vec<String>,
    /// Coverage of the loss intervals, e.g. 0.99.
    pub confidence: f64,
    /// Bootstrap replicates behind the intervals (percentile bootstrap over probes).
    pub bootstrap_replicates: u32,
    /// Loss above which a link is a bottleneck (its interval must also exclude 0).
    pub loss_threshold: f64,
    /// Delay standard deviation above which a link is a bottleneck, in microseconds.
    pub delay_stddev_threshold_us: f64,
    /// One entry per inferred link, in tree order.
    pub links: Vec<LinkInference>,
}

/// Why a link is a bottleneck.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BottleneckCause {
    /// Inferred loss above the threshold, interval excluding 0.
    Loss,
    /// Inferred delay standard deviation above the threshold.
    DelayVariance,
}

/// A link whose inferred loss or delay variance exceeds its threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Bottleneck {
    /// The link (as in [`LinkInference::link`]).
    pub link: String,
    /// Its inferred loss.
    pub loss: f64,
    /// Lower end of the loss interval.
    pub loss_ci_low: f64,
    /// Upper end of the loss interval.
    pub loss_ci_high: f64,
    /// Its inferred delay standard deviation in microseconds, if known.
    pub delay_stddev_us: Option<f64>,
    /// Which thresholds it exceeds.
    pub causes: Vec<BottleneckCause>,
}

/// Where the comparison of a platform run with its service-host run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ComparisonStatus {
    /// The service-host run is scheduled or running.
    Pending,
    /// Both runs are in and set against each other.
    Completed,
    /// Nothing to compare (see `reason`): the platform run failed, or no receiver
    /// runs on another node with a service host.
    Skipped,
    /// The service-host run failed, or never came (see `reason`).
    Failed,
}

impl ComparisonStatus {
    /// The status as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ComparisonStatus::Pending => "pending",
            ComparisonStatus::Completed => "completed",
            ComparisonStatus::Skipped => "skipped",
            ComparisonStatus::Failed => "failed",
        }
    }
}

/// The figures of one receiver that a comparison sets side by side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ComparedFigures {
    /// Point name (a VM on the platform side, a node on the service-host side).
    pub point: String,
    /// Packets the source sent.
    pub packets_sent: u64,
    /// Packets lost.
    pub packets_lost: u64,
    /// `packets_lost / packets_sent`; null when nothing was sent.
    pub loss_ratio: Option<f64>,
    /// Median one-way delay, in microseconds; null when nothing arrived.
    pub delay_median_us: Option<f64>,
    /// RFC 3550 interarrival jitter, in microseconds.
    pub jitter_us: Option<f64>,
    /// The clock error bound of the delay, in microseconds.
    pub clock_error_bound_us: Option<f64>,
}

/// One platform receiver set against the service host of its node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReceiverComparison {
    /// The platform receiver (point name).
    pub point: String,
    /// The node its VM runs on; null when the controller could not place it.
    pub node: Option<String>,
    /// Why it has no counterpart or no verdict, if it has none.
    pub note: Option<String>,
    /// Its figures in the platform run; null when it did not report.
    pub platform: Option<ComparedFigures>,
    /// Its node's service host's figures in the service-host run; null while
    /// pending or when there is no counterpart.
    pub service_host: Option<ComparedFigures>,
    /// Platform loss ratio minus service-host loss ratio.
    pub loss_difference: Option<f64>,
    /// Largest loss difference two runs of the same path show by chance:
    /// `z * sqrt(p (1 - p) (1/n1 + 1/n2))`, `p` the pooled loss ratio, `n` the
    /// packets sent (two-proportion test).
    pub loss_bound: Option<f64>,
    /// `|loss_difference| <= loss_bound`.
    pub loss_within_bound: Option<bool>,
    /// Platform median delay minus service-host median delay, in microseconds.
    pub delay_median_difference_us: Option<f64>,
    /// The comparison's `delay_tolerance_us` plus both sides' clock error
    /// bounds, in microseconds.
    pub delay_bound_us: Option<f64>,
    /// `|delay_median_difference_us| <= delay_bound_us`.
    pub delay_within_bound: Option<bool>,
    /// Platform jitter minus service-host jitter, in microseconds (no verdict).
    pub jitter_difference_us: Option<f64>,
}

/// The same probe pattern run on the nodes' service hosts right after this
/// platform run (a task's `compare_with_service_host`), set against it per
/// receiver: are the figures on the virtual platform consistent with those on
/// the physical nodes?
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Comparison {
    /// Where it stands.
    pub status: ComparisonStatus,
    /// Why it was skipped or failed.
    pub reason: Option<String>,
    /// Id of the service-host run's task (what the nodes ran and posted);
    /// null when skipped before scheduling.
    pub service_host_task_id: Option<String>,
    /// The source VM's node, whose service host sends.
    pub source_node: Option<String>,
    /// `run_id` of the service-host run, once stored.
    pub service_host_run_id: Option<String>,
    /// `started_at` of the service-host run, once stored.
    pub service_host_started_at: Option<String>,
    /// `z` of the loss bound (3: about 99.7 % two-sided).
    pub loss_z: f64,
    /// Largest median delay difference taken as agreement, in microseconds,
    /// before the clock error bounds are added.
    pub delay_tolerance_us: f64,
    /// Whether every receiver with a verdict is within both bounds; null while
    /// pending or when no receiver has a verdict.
    pub consistent: Option<bool>,
    /// One entry per platform receiver, in the run's order.
    pub receivers: Vec<ReceiverComparison>,
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
            receipts: None,
        }
    }
}

/// The result of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResultDocument {
    /// The schema version: always `measurelab.mcast.result/v1`.
    pub schema: ResultSchema,
    /// The task that asked for the run; null for periodic runs of the MSCS's own schedule.
    pub task_id: Option<String>,
    /// Unique id of the run: a repeated post of the same run is absorbed by it.
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
    /// Delay covariance of every pair of reporting receivers (and each one's
    /// variance): what delay-variance inference reads. Kept instead of per-probe
    /// delays, which would be 4 bytes x probes x receivers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delay_covariances: Vec<DelayCovariance>,
    /// The distribution tree the run used, filled in by the controller from
    /// placement when it stores the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<DistributionTree>,
    /// Per-link loss and delay variance inferred over `tree`, for runs with at
    /// least two reporting receivers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference: Option<Inference>,
    /// Links of `inference` above a threshold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bottlenecks: Vec<Bottleneck>,
    /// The platform run set against a service-host run of the same pattern,
    /// for tasks with `compare_with_service_host`; filled in by the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison: Option<Comparison>,
}

/// Why a document that deserialized is still refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResultError {
    /// A field breaks a rule serde cannot express.
    #[error("{field}: {reason}")]
    Invalid {
        /// JSON path of the offending field, e.g. `receivers[1].point`.
        field: String,
        /// Why it is refused.
        reason: String,
    },
}

impl ResultError {
    /// JSON path of the offending field.
    pub fn field(&self) -> &str {
        match self {
            ResultError::Invalid { field, .. } => field,
        }
    }
}

impl ResultDocument {
    /// Checks what the types alone do not: the run id is a usable key and
    /// every receiver is named.
    pub fn validate(&self) -> Result<(), ResultError> {
        let chars = self.run_id.chars().count();
        if chars == 0 || chars > MAX_RUN_ID_CHARS {
            return Err(ResultError::Invalid {
                field: "run_id".into(),
                reason: format!("must be 1 to {MAX_RUN_ID_CHARS} characters, not {chars}"),
            });
        }
        if let Some(index) = self.receivers.iter().position(|r| r.point.is_empty()) {
            return Err(ResultError::Invalid {
                field: format!("receivers[{index}].point"),
                reason: "must name the receiving point".into(),
            });
        }
        Ok(())
    }
}

/// The JSON Schema of [`ResultDocument`] (draft 2020-12), derived from the
/// types above; `docs/result-schema.json` is this, pretty-printed.
pub fn json_schema() -> serde_json::Value {
    schemars::schema_for!(ResultDocument).to_value()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A document as `mcast` wrote it before this type moved here: the wire
    /// format must not change.
    const STORED: &str = r#"{"schema":"measurelab.mcast.result/v1","task_id":null,"run_id":"r-1","kind":"periodic","source_point":"p1","group":"239.1.2.3","port":5000,"session_id":42,"started_at":"2026-01-01T00:00:00Z","finished_at":"2026-01-01T00:00:05Z","status":"partial","config":{"rate_pps":100.0,"packet_size_bytes":64,"duration_seconds":5.0,"ttl":1,"ssm":false},"source":{"point":"p1","data_addr":"10.0.0.1","report":{"session_id":42,"packets_sent":500,"send_errors":0,"first_send_error":null,"requested_rate_pps":100.0,"achieved_rate_pps":99.9,"schedule_slips":0,"max_lateness_us":12.5,"mean_lateness_us":1.5,"mean_abs_departure_error_us":2.0,"max_abs_departure_error_us":9.0,"pacing_granularity_us":0.0,"wakeups":500,"packet_size_bytes":64,"first_send_ns":1,"last_send_ns":2},"error":null},"receivers":[{"point":"p2","status":"ok","error":null,"timestamp_source":"kernel","clock_sync":"same_host_clock","clock_error_bound_us":0.002,"foreign_session_packets":0,"malformed_packets":0,"metrics":{"packets_sent":500,"sent_source":"sender_report","packets_received":495,"packets_lost":5,"packets_duplicated":1,"packets_reordered":2,"packets_beyond_duplicate_window":0,"packets_unexpected":0,"loss_ratio":0.01,"duplicate_fraction":0.002,"replicated_packet_rate":0.002,"reordered_ratio":0.004,"one_way_delay_us":{"min":10.0,"median":20.0,"mean":21.5,"p95":40.0,"p99":45.0,"max":50.0},"ipdv_us":{"pairs":490,"mean_abs":3.0,"p95_abs":8.0,"max_abs":12.0,"mean":0.0},"pdv_us":35.0,"jitter_us":2.5,"quantiles_exact":true}},{"point":"p3","status":"missing","error":"cannot connect","timestamp_source":null,"clock_sync":null,"clock_error_bound_us":null,"foreign_session_packets":null,"malformed_packets":null,"metrics":null}]}"#;

    #[test]
    fn a_stored_document_round_trips_byte_for_byte() {
        let document: ResultDocument = serde_json::from_str(STORED).unwrap();
        assert_eq!(document.status, RunStatus::Partial);
        assert_eq!(
            document.receivers[0].metrics.as_ref().unwrap().packets_lost,
            5
        );
        assert_eq!(serde_json::to_string(&document).unwrap(), STORED);
        document.validate().unwrap();
    }

    #[test]
    fn fields_added_within_v1_default_when_absent() {
        // The sender report's pacing fields came after the first v1 documents.
        let mut value: serde_json::Value = serde_json::from_str(STORED).unwrap();
        let report = value["source"]["report"].as_object_mut().unwrap();
        for added in [
            "mean_lateness_us",
            "mean_abs_departure_error_us",
            "max_abs_departure_error_us",
            "pacing_granularity_us",
            "wakeups",
        ] {
            report.remove(added).unwrap();
        }
        let document: ResultDocument = serde_json::from_value(value).unwrap();
        assert_eq!(document.source.report.unwrap().wakeups, 0);
    }

    #[test]
    fn another_schema_version_is_refused_at_the_schema_field() {
        let text = STORED.replace("result/v1", "result/v2");
        let mut deserializer = serde_json::Deserializer::from_str(&text);
        let err =
            serde_path_to_error::deserialize::<_, ResultDocument>(&mut deserializer).unwrap_err();
        assert_eq!(err.path().to_string(), "schema");
    }

    #[test]
    fn a_wrong_type_deep_inside_is_refused_with_its_path() {
        let text = STORED.replace(r#""packets_lost":5"#, r#""packets_lost":"five""#);
        let mut deserializer = serde_json::Deserializer::from_str(&text);
        let err =
            serde_path_to_error::deserialize::<_, ResultDocument>(&mut deserializer).unwrap_err();
        assert_eq!(err.path().to_string(), "receivers[0].metrics.packets_lost");
    }

    #[test]
    fn wire_names_of_the_enums_match_their_serde_names() {
        assert_eq!(
            serde_json::to_value(ResultSchema::V1).unwrap(),
            RESULT_SCHEMA
        );
        for status in [RunStatus::Ok, RunStatus::Partial, RunStatus::Failed] {
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        for status in [
            ReceiverStatus::Ok,
            ReceiverStatus::Failed,
            ReceiverStatus::Missing,
        ] {
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
    }

    #[test]
    fn the_published_json_schema_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/result-schema.json");
        let published: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert!(
            published == json_schema(),
            "{path} is stale: run `cargo run -p xtask -- result-schema`"
        );
    }

    #[test]
    fn the_json_schema_requires_what_serde_requires() {
        let schema = json_schema();
        assert_eq!(
            schema["properties"]["schema"]["$ref"],
            "#/$defs/ResultSchema"
        );
        assert_eq!(
            schema["$defs"]["ResultSchema"]["oneOf"][0]["const"],
            RESULT_SCHEMA
        );
        let metrics = &schema["$defs"]["ReceiverMetrics"]["required"];
        assert!(metrics
            .as_array()
            .unwrap()
            .contains(&"quantiles_exact".into()));
        // Defaulted fields added within v1 must not be required, or older documents fail.
        let report = schema["$defs"]["SenderReport"]["required"]
            .as_array()
            .unwrap();
        assert!(!report.contains(&"wakeups".into()), "{report:?}");
        assert!(report.contains(&"packets_sent".into()), "{report:?}");
    }

    #[test]
    fn validation_names_the_field() {
        let mut document: ResultDocument = serde_json::from_str(STORED).unwrap();
        document.run_id = "x".repeat(MAX_RUN_ID_CHARS + 1);
        assert_eq!(document.validate().unwrap_err().field(), "run_id");
        document.run_id = "r-2".into();
        document.receivers[1].point.clear();
        assert_eq!(
            document.validate().unwrap_err().field(),
            "receivers[1].point"
        );
    }
}
