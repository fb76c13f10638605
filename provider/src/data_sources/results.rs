//! `measurelab_results`: the result history of a measurement task, optionally
//! limited to a time range, plus the per-receiver summary model that
//! `measurelab_measurement_task` shares.

use std::collections::HashMap;

use async_trait::async_trait;
use measurelab_api::client::url_component;
use measurelab_api::http::ResultRecord;
use measurelab_api::result::{BottleneckCause, ComparedFigures, ResultDocument};
use serde::{Deserialize, Serialize};
use tf_provider::schema::{
    Attribute, AttributeConstraint, AttributeType, Block, Description, Schema,
};
use tf_provider::value::{Value, ValueEmpty};
use tf_provider::{AttributePath, DataSource, Diagnostics};

use crate::diagnostics::{self, Operation};
use crate::node_model::computed;
use crate::number::Number;
use crate::shared::Shared;

const KIND: &str = "results";

/// One receiver of one run, as Terraform shows it (delays in milliseconds).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReceiverSummary {
    /// Point name.
    pub name: String,
    /// `ok`, `failed` or `missing`.
    pub status: String,
    /// Why the receiver failed, empty when ok.
    pub error: String,
    /// Packets the source sent.
    pub packets_sent: Value<Number>,
    /// Packets received (distinct sequence numbers).
    pub packets_received: Value<Number>,
    /// Lost packets (RFC 7680).
    pub lost: Value<Number>,
    /// Duplicated packets (RFC 5560).
    pub duplicated: Value<Number>,
    /// Reordered packets (RFC 4737).
    pub reordered: Value<Number>,
    /// Lost / sent.
    pub loss_ratio: Value<Number>,
    /// One-way delay (RFC 7679).
    pub delay_min_ms: Value<Number>,
    /// One-way delay median.
    pub delay_median_ms: Value<Number>,
    /// One-way delay mean.
    pub delay_mean_ms: Value<Number>,
    /// One-way delay 95th percentile.
    pub delay_p95_ms: Value<Number>,
    /// One-way delay maximum.
    pub delay_max_ms: Value<Number>,
    /// Mean absolute IPDV (RFC 3393).
    pub ipdv_mean_ms: Value<Number>,
    /// PDV (RFC 5481).
    pub pdv_ms: Value<Number>,
    /// RFC 3550 interarrival jitter.
    pub jitter_ms: Value<Number>,
    /// Clock error bound the delays rely on.
    pub clock_error_bound_ms: Value<Number>,
}

/// Terraform type of one [`ReceiverSummary`].
pub fn receiver_type() -> AttributeType {
    let mut fields: HashMap<String, AttributeType> = [
        "packets_sent",
        "packets_received",
        "lost",
        "duplicated",
        "reordered",
        "loss_ratio",
        "delay_min_ms",
        "delay_median_ms",
        "delay_mean_ms",
        "delay_p95_ms",
        "delay_max_ms",
        "ipdv_mean_ms",
        "pdv_ms",
        "jitter_ms",
        "clock_error_bound_ms",
    ]
    .into_iter()
    .map(|n| (n.to_string(), AttributeType::Number))
    .collect();
    for text in ["name", "status", "error"] {
        fields.insert(text.to_string(), AttributeType::String);
    }
    AttributeType::Object(fields)
}

/// Markdown description of the receiver object.
pub const RECEIVER_DOC: &str = "one object per receiving point: `name`, `status` (`ok`, `failed`, \
`missing`), `error`, `packets_sent`, `packets_received`, `lost`, `duplicated`, `reordered`, \
`loss_ratio` (RFC 7680), one-way delay `delay_min_ms`, `delay_median_ms`, `delay_mean_ms`, \
`delay_p95_ms`, `delay_max_ms` (RFC 7679), `ipdv_mean_ms` (mean absolute IPDV, RFC 3393), \
`pdv_ms` (RFC 5481), `jitter_ms` (RFC 3550 interarrival jitter) and `clock_error_bound_ms` (the \
clock error the delays rely on). Metrics are null for a receiver that produced none";

fn count(value: Option<u64>) -> Value<Number> {
    value.map_or(Value::Null, |n| Value::Value(Number::from(n)))
}

fn ratio(value: Option<f64>) -> Value<Number> {
    value.map_or(Value::Null, |f| Value::Value(Number::from(f)))
}

fn millis(us: Option<f64>) -> Value<Number> {
    // Microseconds to milliseconds, rounded to the microsecond the document carries.
    us.map_or(Value::Null, |us| {
        Value::Value(Number::from((us / 1000.0 * 1000.0).round() / 1000.0))
    })
}

/// Per-receiver summaries of a result document.
pub fn summarize_document(document: &ResultDocument) -> Vec<ReceiverSummary> {
    document
        .receivers
        .iter()
        .map(|r| {
            let m = r.metrics.as_ref();
            let delay = m.and_then(|m| m.one_way_delay_us);
            ReceiverSummary {
                name: r.point.clone(),
                status: r.status.as_str().to_string(),
                error: r.error.clone().unwrap_or_default(),
                packets_sent: count(m.map(|m| m.packets_sent)),
                packets_received: count(m.map(|m| m.packets_received)),
                lost: count(m.map(|m| m.packets_lost)),
                duplicated: count(m.map(|m| m.packets_duplicated)),
                reordered: count(m.map(|m| m.packets_reordered)),
                loss_ratio: ratio(m.and_then(|m| m.loss_ratio)),
                delay_min_ms: millis(delay.map(|d| d.min)),
                delay_median_ms: millis(delay.map(|d| d.median)),
                delay_mean_ms: millis(delay.map(|d| d.mean)),
                delay_p95_ms: millis(delay.map(|d| d.p95)),
                delay_max_ms: millis(delay.map(|d| d.max)),
                ipdv_mean_ms: millis(m.and_then(|m| m.ipdv_us).map(|i| i.mean_abs)),
                pdv_ms: millis(m.and_then(|m| m.pdv_us)),
                jitter_ms: millis(m.and_then(|m| m.jitter_us)),
                // Not rounded: on one host the bound is a few nanoseconds.
                clock_error_bound_ms: r
                    .clock_error_bound_us
                    .map_or(Value::Null, |us| Value::Value(Number::Float(us / 1000.0))),
            }
        })
        .collect()
}

/// One link the controller's tree inference blames, as Terraform shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BottleneckSummary {
    /// The link, e.g. `uplink:node-2` or `port:p3`.
    pub link: String,
    /// Inferred loss rate.
    pub loss: Value<Number>,
    /// Lower end of its confidence interval.
    pub loss_ci_low: Value<Number>,
    /// Upper end of its confidence interval.
    pub loss_ci_high: Value<Number>,
    /// Inferred delay standard deviation, ms; null when the run had no delay record.
    pub delay_stddev_ms: Value<Number>,
    /// `loss`, `delay_variance` or both.
    pub causes: Vec<String>,
}

/// Terraform type of one [`BottleneckSummary`].
pub fn bottleneck_type() -> AttributeType {
    let mut fields: HashMap<String, AttributeType> =
        ["loss", "loss_ci_low", "loss_ci_high", "delay_stddev_ms"]
            .into_iter()
            .map(|n| (n.to_string(), AttributeType::Number))
            .collect();
    fields.insert("link".into(), AttributeType::String);
    fields.insert(
        "causes".into(),
        AttributeType::List(Box::new(AttributeType::String)),
    );
    AttributeType::Object(fields)
}

/// Markdown description of the bottleneck object.
pub const BOTTLENECK_DOC: &str = "the links of the run's distribution tree whose inferred loss \
(MINC maximum likelihood over the receivers' per-probe receipts) or delay variance exceeds the \
controller's threshold, in tree order: `link` (`port:POINT` or `uplink:NODE`; links no \
receiver can tell apart are joined with `+`), `loss` with its confidence interval `loss_ci_low` \
and `loss_ci_high`, `delay_stddev_ms` and `causes` (`loss`, `delay_variance`). Empty when the \
run had fewer than two receivers with receipts or nothing above a threshold";

/// The bottlenecks of a result document.
pub fn summarize_bottlenecks(document: &ResultDocument) -> Vec<BottleneckSummary> {
    document
        .bottlenecks
        .iter()
        .map(|b| BottleneckSummary {
            link: b.link.clone(),
            loss: ratio(Some(b.loss)),
            loss_ci_low: ratio(Some(b.loss_ci_low)),
            loss_ci_high: ratio(Some(b.loss_ci_high)),
            delay_stddev_ms: millis(b.delay_stddev_us),
            causes: b
                .causes
                .iter()
                .map(|c| match c {
                    BottleneckCause::Loss => "loss".to_string(),
                    BottleneckCause::DelayVariance => "delay_variance".to_string(),
                })
                .collect(),
        })
        .collect()
}

/// One platform receiver set against its node's service host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReceiverComparisonSummary {
    /// Platform point.
    pub name: String,
    /// Node of its VM.
    pub node: String,
    /// The service-host point it is compared with (its node), empty without one.
    pub service_host_point: String,
    /// Why there is no counterpart or verdict; empty otherwise.
    pub note: String,
    /// Loss ratio on the platform.
    pub platform_loss_ratio: Value<Number>,
    /// Loss ratio on the service host.
    pub service_host_loss_ratio: Value<Number>,
    /// Platform minus service host.
    pub loss_difference: Value<Number>,
    /// Two-proportion bound of the difference.
    pub loss_bound: Value<Number>,
    /// Whether the difference lies within the bound.
    pub loss_within_bound: Value<bool>,
    /// Median one-way delay on the platform.
    pub platform_delay_median_ms: Value<Number>,
    /// Median one-way delay on the service host.
    pub service_host_delay_median_ms: Value<Number>,
    /// Platform minus service host.
    pub delay_median_difference_ms: Value<Number>,
    /// Tolerance plus both clock error bounds.
    pub delay_bound_ms: Value<Number>,
    /// Whether the difference lies within the bound.
    pub delay_within_bound: Value<bool>,
    /// Jitter on the platform.
    pub platform_jitter_ms: Value<Number>,
    /// Jitter on the service host.
    pub service_host_jitter_ms: Value<Number>,
    /// Platform minus service host.
    pub jitter_difference_ms: Value<Number>,
}

/// A run's comparison with its service-host run, as Terraform shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ComparisonSummary {
    /// `pending`, `completed`, `skipped` or `failed`.
    pub status: String,
    /// Why skipped or failed; empty otherwise.
    pub reason: String,
    /// Node of the source, whose service host sent.
    pub source_node: String,
    /// Whether every receiver with a verdict is within both bounds.
    pub consistent: Value<bool>,
    /// `z` of the loss bound.
    pub loss_z: Value<Number>,
    /// Median delay tolerance before clock error bounds.
    pub delay_tolerance_ms: Value<Number>,
    /// Per platform receiver.
    pub receivers: Vec<ReceiverComparisonSummary>,
}

/// Terraform type of one [`ComparisonSummary`].
pub fn comparison_type() -> AttributeType {
    let number = |n: &str| (n.to_string(), AttributeType::Number);
    let text = |n: &str| (n.to_string(), AttributeType::String);
    let flag = |n: &str| (n.to_string(), AttributeType::Bool);
    let receiver: HashMap<String, AttributeType> = [
        text("name"),
        text("node"),
        text("service_host_point"),
        text("note"),
        number("platform_loss_ratio"),
        number("service_host_loss_ratio"),
        number("loss_difference"),
        number("loss_bound"),
        flag("loss_within_bound"),
        number("platform_delay_median_ms"),
        number("service_host_delay_median_ms"),
        number("delay_median_difference_ms"),
        number("delay_bound_ms"),
        flag("delay_within_bound"),
        number("platform_jitter_ms"),
        number("service_host_jitter_ms"),
        number("jitter_difference_ms"),
    ]
    .into();
    AttributeType::Object(HashMap::from([
        text("status"),
        text("reason"),
        text("source_node"),
        flag("consistent"),
        number("loss_z"),
        number("delay_tolerance_ms"),
        (
            "receivers".to_string(),
            AttributeType::List(Box::new(AttributeType::Object(receiver))),
        ),
    ]))
}

/// Markdown description of the comparison object.
pub const COMPARISON_DOC: &str = "null unless the task has `compare_with_service_host`. Otherwise the run set against the same probe pattern run right after it between the service hosts of the nodes of its source and receivers: `status` (`pending`, `completed`, `skipped`, `failed`), `reason`, `source_node`, `consistent` (every verdict within its bound), `loss_z`, `delay_tolerance_ms`, and `receivers`, one object per platform receiver: `name`, `node`, `service_host_point`, `note`, `platform_loss_ratio`, `service_host_loss_ratio`, `loss_difference` (platform minus service host), `loss_bound` (`z * sqrt(p(1-p)(1/n1+1/n2))`, `p` the pooled loss ratio), `loss_within_bound`, `platform_delay_median_ms`, `service_host_delay_median_ms`, `delay_median_difference_ms`, `delay_bound_ms` (the tolerance plus both clock error bounds), `delay_within_bound`, `platform_jitter_ms`, `service_host_jitter_ms` and `jitter_difference_ms`";

/// The comparison of a result document, if it has one.
pub fn summarize_comparison(document: &ResultDocument) -> Value<ComparisonSummary> {
    let Some(c) = &document.comparison else {
        return Value::Null;
    };
    let flag = |b: Option<bool>| b.map_or(Value::Null, Value::Value);
    let side = |f: &Option<ComparedFigures>| {
        let f = f.as_ref();
        (
            ratio(f.and_then(|f| f.loss_ratio)),
            millis(f.and_then(|f| f.delay_median_us)),
            millis(f.and_then(|f| f.jitter_us)),
        )
    };
    Value::Value(ComparisonSummary {
        status: c.status.as_str().to_string(),
        reason: c.reason.clone().unwrap_or_default(),
        source_node: c.source_node.clone().unwrap_or_default(),
        consistent: flag(c.consistent),
        loss_z: ratio(Some(c.loss_z)),
        delay_tolerance_ms: millis(Some(c.delay_tolerance_us)),
        receivers: c
            .receivers
            .iter()
            .map(|r| {
                let (platform_loss, platform_delay, platform_jitter) = side(&r.platform);
                let (service_loss, service_delay, service_jitter) = side(&r.service_host);
                ReceiverComparisonSummary {
                    name: r.point.clone(),
                    node: r.node.clone().unwrap_or_default(),
                    service_host_point: r
                        .service_host
                        .as_ref()
                        .map(|s| s.point.clone())
                        .unwrap_or_default(),
                    note: r.note.clone().unwrap_or_default(),
                    platform_loss_ratio: platform_loss,
                    service_host_loss_ratio: service_loss,
                    loss_difference: ratio(r.loss_difference),
                    loss_bound: ratio(r.loss_bound),
                    loss_within_bound: flag(r.loss_within_bound),
                    platform_delay_median_ms: platform_delay,
                    service_host_delay_median_ms: service_delay,
                    delay_median_difference_ms: millis(r.delay_median_difference_us),
                    delay_bound_ms: millis(r.delay_bound_us),
                    delay_within_bound: flag(r.delay_within_bound),
                    platform_jitter_ms: platform_jitter,
                    service_host_jitter_ms: service_jitter,
                    jitter_difference_ms: millis(r.jitter_difference_us),
                }
            })
            .collect(),
    })
}

/// Why a stored document is not a `measurelab.mcast.result/v1` document;
/// its `path()` names the offending field.
pub type UnreadableDocument = serde_path_to_error::Error<serde_json::Error>;

/// A stored result document, typed. The controller refuses documents that do
/// not read since it checks the type, so only a document stored before can
/// fail here; every reader reports that rather than showing empty values.
pub fn read_document(document: &serde_json::Value) -> Result<ResultDocument, UnreadableDocument> {
    serde_path_to_error::deserialize(document)
}

/// One stored run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResultEntry {
    /// Result id.
    pub id: String,
    /// Task name.
    pub task: String,
    /// When the controller stored it.
    pub received_at: String,
    /// When the run started.
    pub started_at: String,
    /// Run status: `ok`, `partial`, `failed`.
    pub status: String,
    /// The point that sent.
    pub source_point: String,
    /// The whole document as JSON text.
    pub document_json: String,
    /// Per-receiver summaries.
    pub receivers: Vec<ReceiverSummary>,
    /// Links the tree inference blames.
    pub bottlenecks: Vec<BottleneckSummary>,
    /// The run set against its service-host run.
    pub comparison: Value<ComparisonSummary>,
}

impl ResultEntry {
    /// The entry of `record`, or why its document is not a v1 result document
    /// (the error names the JSON path).
    fn new(record: &ResultRecord) -> Result<Self, UnreadableDocument> {
        let document = read_document(&record.document)?;
        Ok(ResultEntry {
            id: record.id.clone(),
            task: record.task.clone(),
            received_at: record.received_at.clone(),
            started_at: record.started_at.clone(),
            status: document.status.as_str().to_string(),
            source_point: document.source_point.clone(),
            document_json: record.document.to_string(),
            receivers: summarize_document(&document),
            bottlenecks: summarize_bottlenecks(&document),
            comparison: summarize_comparison(&document),
        })
    }
}

/// A stored document that does not read as a v1 result document: a warning,
/// so the other runs still reach the configuration.
fn unreadable_result(diags: &mut Diagnostics, id: &str, err: &dyn std::fmt::Display) {
    diags.add_warning(diagnostics::diagnostic(
        format!("Result {id} left out"),
        format!(
            "The stored document of result {id} is not a `measurelab.mcast.result/v1` document \
             ({err}), so it is not in `results`.\n\nWhat to do: read it with \
             `GET /v1/results?task=...`; documents stored since the controller checks the type \
             always read."
        ),
        AttributePath::new("results"),
    ));
}

/// Configuration and result of the data source.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ResultsDataState {
    /// Task name or id.
    pub task: Value<String>,
    /// RFC 3339 lower bound.
    pub since: Value<String>,
    /// RFC 3339 upper bound.
    pub until: Value<String>,
    /// Most results to return.
    pub limit: Value<Number>,
    /// The runs, oldest first.
    pub results: Value<Vec<ResultEntry>>,
    /// The newest run's id (empty when none).
    pub latest_id: Value<String>,
}

/// Check an RFC 3339 time well enough to name the attribute before asking the controller.
fn looks_like_rfc3339(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() >= 20
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && (bytes[10] == b'T' || bytes[10] == b't')
        && bytes[13] == b':'
        && (text.ends_with('Z') || text.ends_with('z') || text[19..].contains(['+', '-']))
}

/// The data source implementation.
pub struct ResultsDataSource {
    shared: Shared,
}

impl ResultsDataSource {
    /// A data source that uses the provider's client.
    pub fn new(shared: Shared) -> Self {
        ResultsDataSource { shared }
    }
}

#[async_trait]
impl DataSource for ResultsDataSource {
    type State<'a> = ResultsDataState;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        let entry = AttributeType::Object(HashMap::from([
            ("id".to_string(), AttributeType::String),
            ("task".to_string(), AttributeType::String),
            ("received_at".to_string(), AttributeType::String),
            ("started_at".to_string(), AttributeType::String),
            ("status".to_string(), AttributeType::String),
            ("source_point".to_string(), AttributeType::String),
            ("document_json".to_string(), AttributeType::String),
            (
                "receivers".to_string(),
                AttributeType::List(Box::new(receiver_type())),
            ),
            (
                "bottlenecks".to_string(),
                AttributeType::List(Box::new(bottleneck_type())),
            ),
            ("comparison".to_string(), comparison_type()),
        ]));
        let optional = |attr_type, description: &str| Attribute {
            attr_type,
            description: Description::markdown(description),
            constraint: AttributeConstraint::Optional,
            ..Default::default()
        };
        let attributes = HashMap::from([
            (
                "task".to_string(),
                Attribute {
                    attr_type: AttributeType::String,
                    description: Description::markdown("Name or id of the measurement task."),
                    constraint: AttributeConstraint::Required,
                    ..Default::default()
                },
            ),
            ("since".to_string(), optional(AttributeType::String, "Only runs stored at or after this RFC 3339 time.")),
            ("until".to_string(), optional(AttributeType::String, "Only runs stored before this RFC 3339 time.")),
            ("limit".to_string(), optional(AttributeType::Number, "At most this many runs (the newest ones); default: the controller's limit.")),
            (
                "results".to_string(),
                computed(
                    AttributeType::List(Box::new(entry)),
                    &format!("The runs, oldest first: `id`, `task`, `received_at`, `started_at`, `status` (`ok`, `partial`, `failed`), `source_point`, `document_json` (the whole `measurelab.mcast.result/v1` document), `receivers`, {RECEIVER_DOC}; `bottlenecks`, {BOTTLENECK_DOC}; and `comparison`, {COMPARISON_DOC}."),
                ),
            ),
            ("latest_id".to_string(), computed(AttributeType::String, "Id of the newest run in `results`; empty when there is none.")),
        ]);
        Some(Schema {
            version: 1,
            block: Block {
                description: Description::markdown(
                    "Reads the stored results of a measurement task (one entry per run), optionally for a \
                     time range. Each entry carries the per-receiver loss, delay and jitter summary and the \
                     full result document.",
                ),
                attributes,
                ..Default::default()
            },
        })
    }

    async fn validate<'a>(&self, diags: &mut Diagnostics, config: Self::State<'a>) -> Option<()> {
        for (name, value) in [("since", &config.since), ("until", &config.until)] {
            if let Value::Value(text) = value {
                if !looks_like_rfc3339(text) {
                    diagnostics::invalid_value(
                        diags,
                        AttributePath::new(name),
                        "Invalid time",
                        format!("{text:?} is not an RFC 3339 time; write it like \"2026-11-25T21:00:00Z\" (timestamp() gives one)."),
                    );
                }
            }
        }
        if let Value::Value(Number::Signed(_) | Number::Float(_) | Number::Decimal(_)) =
            &config.limit
        {
            diagnostics::invalid_value(
                diags,
                AttributePath::new("limit"),
                "Invalid limit",
                "`limit` must be a positive whole number.".to_string(),
            );
        }
        Some(())
    }

    async fn read<'a>(
        &self,
        diags: &mut Diagnostics,
        config: Self::State<'a>,
        _provider_meta_state: Self::ProviderMetaState<'a>,
    ) -> Option<Self::State<'a>> {
        let client = self.shared.client(diags)?;
        let task = config.task.as_ref_option().cloned().unwrap_or_default();
        let mut query = format!("task={}", url_component(&task));
        if let Value::Value(since) = &config.since {
            query.push_str(&format!("&since={}", url_component(since)));
        }
        if let Value::Value(until) = &config.until {
            query.push_str(&format!("&until={}", url_component(until)));
        }
        if let Value::Value(Number::Unsigned(limit)) = &config.limit {
            query.push_str(&format!("&limit={limit}"));
        }
        let records = match client.list_results(&query).await {
            Ok(records) => records,
            Err(err) if err.is_not_found() => {
                diagnostics::invalid_value(
                    diags,
                    AttributePath::new("task"),
                    "No such measurement task",
                    format!("The controller has no measurement task named (or with id) {task:?}.\n\nWhat to do: check the name (`GET /v1/tasks`)."),
                );
                return None;
            }
            Err(err) => {
                diagnostics::client_error(diags, &err, Operation::Read(KIND));
                return None;
            }
        };
        let mut entries = Vec::with_capacity(records.len());
        for record in &records {
            match ResultEntry::new(record) {
                Ok(entry) => entries.push(entry),
                Err(err) => unreadable_result(diags, &record.id, &err),
            }
        }
        let mut state = config;
        state.latest_id = Value::Value(entries.last().map(|e| e.id.clone()).unwrap_or_default());
        state.results = Value::Value(entries);
        Some(state)
    }
}

/// A complete document as mcast writes it: p2 reported, p3 never joined.
/// Shared by the tests of every reader of result documents.
#[cfg(test)]
pub(crate) fn example_document() -> serde_json::Value {
    let p2 = serde_json::json!({
        "point": "p2", "status": "ok", "error": null, "timestamp_source": "kernel",
        "clock_sync": "same_host_clock", "clock_error_bound_us": 2.0,
        "foreign_session_packets": 0, "malformed_packets": 0,
        "metrics": {"packets_sent": 500, "sent_source": "sender_report",
          "packets_received": 495, "packets_lost": 5,
          "packets_duplicated": 0, "packets_reordered": 1,
          "packets_beyond_duplicate_window": 0, "packets_unexpected": 0,
          "loss_ratio": 0.01, "duplicate_fraction": 0.0,
          "replicated_packet_rate": 0.0, "reordered_ratio": 0.002,
          "one_way_delay_us": {"min": 100.0, "median": 1500.5, "mean": 1600.0, "p95": 3000.0, "p99": 4000.0, "max": 9000.0},
          "ipdv_us": {"pairs": 490, "mean_abs": 250.0, "p95_abs": 600.0, "max_abs": 900.0, "mean": 0.0},
          "pdv_us": 2900.0, "jitter_us": 120.25, "quantiles_exact": true}
    });
    let p3 = serde_json::json!({
        "point": "p3", "status": "missing", "error": "cannot connect",
        "timestamp_source": null, "clock_sync": null, "clock_error_bound_us": null,
        "foreign_session_packets": null, "malformed_packets": null, "metrics": null
    });
    serde_json::json!({
        "schema": "measurelab.mcast.result/v1", "task_id": "t-1", "run_id": "r-1",
        "kind": "task", "source_point": "p1", "group": "239.1.2.3", "port": 5000,
        "session_id": 9, "started_at": "2026-01-01T00:00:00Z",
        "finished_at": "2026-01-01T00:00:05Z", "status": "partial",
        "config": {"rate_pps": 100.0, "packet_size_bytes": 64, "duration_seconds": 5.0,
                   "ttl": 1, "ssm": false},
        "source": {"point": "p1", "data_addr": null, "report": null, "error": null},
        "receivers": [p2, p3]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_receivers_become_millisecond_summaries() {
        let summary = summarize_document(&read_document(&example_document()).unwrap());
        assert_eq!(summary.len(), 2);
        assert_eq!(summary[0].name, "p2");
        assert_eq!(
            summary[0].packets_received,
            Value::Value(Number::Unsigned(495))
        );
        assert_eq!(summary[0].loss_ratio, Value::Value(Number::Float(0.01)));
        assert_eq!(
            summary[0].delay_median_ms,
            Value::Value(Number::Float(1.501))
        );
        assert_eq!(summary[0].jitter_ms, Value::Value(Number::Float(0.12)));
        assert_eq!(summary[0].delay_max_ms, Value::Value(Number::Unsigned(9)));
        assert_eq!(
            summary[0].clock_error_bound_ms,
            Value::Value(Number::Float(0.002))
        );
        assert_eq!(summary[1].status, "missing");
        assert_eq!(summary[1].error, "cannot connect");
        assert_eq!(summary[1].packets_received, Value::Null);
    }

    #[test]
    fn a_comparison_becomes_a_summary_in_milliseconds() {
        let mut document = example_document();
        assert_eq!(
            summarize_comparison(&read_document(&document).unwrap()),
            Value::Null
        );
        let side = |point: &str, lost: u64, median: f64| {
            serde_json::json!({"point": point, "packets_sent": 500, "packets_lost": lost,
                "loss_ratio": lost as f64 / 500.0, "delay_median_us": median,
                "jitter_us": 20.0, "clock_error_bound_us": 0.002})
        };
        document["comparison"] = serde_json::json!({
            "status": "completed", "reason": null, "service_host_task_id": "c-1",
            "source_node": "n1", "service_host_run_id": "s-1",
            "service_host_started_at": "2026-01-01T00:00:07Z", "loss_z": 3.0,
            "delay_tolerance_us": 200.0, "consistent": true,
            "receivers": [{"point": "p2", "node": "n2", "note": null,
                "platform": side("p2", 5, 1500.5), "service_host": side("n2", 4, 1400.0),
                "loss_difference": 0.002, "loss_bound": 0.018, "loss_within_bound": true,
                "delay_median_difference_us": 100.5, "delay_bound_us": 200.004,
                "delay_within_bound": true, "jitter_difference_us": 0.0},
              {"point": "p3", "node": "n1", "platform": null, "service_host": null,
                "note": "on the source's node", "loss_difference": null, "loss_bound": null,
                "loss_within_bound": null, "delay_median_difference_us": null,
                "delay_bound_us": null, "delay_within_bound": null,
                "jitter_difference_us": null}]
        });
        let Value::Value(summary) = summarize_comparison(&read_document(&document).unwrap()) else {
            panic!("no comparison summary");
        };
        assert_eq!(summary.status, "completed");
        assert_eq!(summary.consistent, Value::Value(true));
        assert_eq!(summary.delay_tolerance_ms, Value::Value(Number::Float(0.2)));
        let p2 = &summary.receivers[0];
        assert_eq!(p2.service_host_point, "n2");
        assert_eq!(p2.platform_loss_ratio, Value::Value(Number::Float(0.01)));
        assert_eq!(
            p2.service_host_loss_ratio,
            Value::Value(Number::Float(0.008))
        );
        assert_eq!(p2.loss_within_bound, Value::Value(true));
        assert_eq!(
            p2.platform_delay_median_ms,
            Value::Value(Number::Float(1.501))
        );
        assert_eq!(
            p2.delay_median_difference_ms,
            Value::Value(Number::Float(0.101))
        );
        assert_eq!(p2.delay_within_bound, Value::Value(true));
        let p3 = &summary.receivers[1];
        assert_eq!(p3.service_host_point, "");
        assert_eq!(p3.note, "on the source's node");
        assert_eq!(p3.loss_within_bound, Value::Null);
        assert_eq!(p3.platform_loss_ratio, Value::Null);
    }

    #[test]
    fn bottlenecks_become_summaries_with_named_causes() {
        let mut document = example_document();
        assert!(summarize_bottlenecks(&read_document(&document).unwrap()).is_empty());
        document["bottlenecks"] = serde_json::json!([{
            "link": "uplink:n2", "loss": 0.08, "loss_ci_low": 0.07, "loss_ci_high": 0.09,
            "delay_stddev_us": 1500.0, "causes": ["loss", "delay_variance"]
        }]);
        let summary = summarize_bottlenecks(&read_document(&document).unwrap());
        assert_eq!(summary.len(), 1);
        assert_eq!(summary[0].link, "uplink:n2");
        assert_eq!(summary[0].loss_ci_low, Value::Value(Number::Float(0.07)));
        assert_eq!(summary[0].delay_stddev_ms, Value::Value(Number::Float(1.5)));
        assert_eq!(summary[0].causes, ["loss", "delay_variance"]);
    }

    #[test]
    fn a_stored_document_that_is_not_v1_is_refused_with_its_path() {
        let mut record = ResultRecord {
            tenant_id: String::new(),
            id: "res-1".into(),
            task_id: "t-1".into(),
            task: "loss".into(),
            received_at: "2026-01-01T00:00:06Z".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            document: example_document(),
        };
        let entry = ResultEntry::new(&record).unwrap();
        assert_eq!(entry.status, "partial");
        assert_eq!(entry.source_point, "p1");
        assert_eq!(entry.receivers[0].lost, Value::Value(Number::Unsigned(5)));
        record.document["receivers"][0]["metrics"]["jitter_us"] = serde_json::json!("fast");
        let err = ResultEntry::new(&record).unwrap_err();
        assert_eq!(err.path().to_string(), "receivers[0].metrics.jitter_us");
    }

    #[test]
    fn times_are_checked_and_encoded() {
        assert!(looks_like_rfc3339("2026-11-25T21:00:00Z"));
        assert!(looks_like_rfc3339("2026-11-25T21:00:00+01:00"));
        assert!(!looks_like_rfc3339("yesterday"));
        assert_eq!(
            url_component("2026-11-25T21:00:00+01:00").to_string(),
            "2026-11-25T21%3A00%3A00%2B01%3A00"
        );
    }
}
