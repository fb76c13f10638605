//! `measurelab_measurement_task`: a multicast measurement task, run by a
//! virtual platform's MSCS (`mode = "platform"`) or by the nodes' service
//! hosts (`mode = "service_host"`). A `once` task's create waits for its
//! result and exposes the per-receiver loss/delay/jitter summary, so an
//! apply returns measurements as outputs.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use async_trait::async_trait;
use measurelab_api::client::{Client, ClientError};
use measurelab_api::http::{ResultRecord, Task, TaskCreate};
use measurelab_api::result::{
    ResultDocument, RunStatus, DEFAULT_BOTTLENECK_DELAY_STDDEV_US,
    DEFAULT_BOTTLENECK_LOSS_THRESHOLD,
};
use serde::{Deserialize, Serialize};
use tf_provider::schema::{
    Attribute, AttributeConstraint, AttributeType, Block, Description, NestedBlock, Schema,
};
use tf_provider::value::Value;
use tf_provider::{AttributePath, Diagnostics};

use super::adapter::{attribute, holds_shared, id_or_name, CreateRequest, ManagedResource};
use crate::data_sources::results::{
    bottleneck_type, read_document, receiver_type, summarize_bottlenecks, summarize_document,
    BottleneckSummary, ReceiverSummary, UnreadableDocument, BOTTLENECK_DOC, RECEIVER_DOC,
};
use crate::data_sources::results::{
    comparison_type, summarize_comparison, ComparisonSummary, COMPARISON_DOC,
};
use crate::diagnostics::{self, Operation};
use crate::node_model::computed;
use crate::number::Number;
use crate::shared::Shared;
use crate::timeouts;
use crate::wait::{self, Poll};

const KIND: &str = "measurement task";

/// Defaults the provider plans, so `terraform plan` shows the real values.
const DEFAULT_DURATION: u64 = 30;
const DEFAULT_INTERVAL: u64 = 300;
const DEFAULT_RATE: u64 = 100;
const DEFAULT_SIZE: u64 = 200;
const DEFAULT_GROUP: &str = "239.192.0.1";
const DEFAULT_PORT: u64 = 50001;
const DEFAULT_TTL: u64 = 8;

/// The `timeouts` block.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskTimeouts {
    /// How long create waits for the first result.
    pub create: Value<String>,
}

/// Terraform state of one task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskState {
    /// Unique name.
    pub name: Value<String>,
    /// `platform` or `service_host`.
    pub mode: Value<String>,
    /// Platform (mode platform).
    pub platform: Value<String>,
    /// Nodes (mode service_host).
    pub nodes: Value<Vec<String>>,
    /// `once` or `periodic`.
    pub schedule: Value<String>,
    /// Period of a periodic task.
    pub interval_seconds: Value<Number>,
    /// Length of one run.
    pub duration_seconds: Value<Number>,
    /// Probe rate.
    pub rate_pps: Value<Number>,
    /// Probe size.
    pub packet_size_bytes: Value<Number>,
    /// Multicast group.
    pub group: Value<String>,
    /// UDP port.
    pub port: Value<Number>,
    /// Multicast TTL.
    pub ttl: Value<Number>,
    /// Source-specific multicast.
    pub ssm: Value<bool>,
    /// Source point (null: round robin).
    pub source: Value<String>,
    /// Receiver points (null: all others).
    pub receiver_points: Value<Vec<String>>,
    /// Loss above which an inferred link is a bottleneck.
    pub bottleneck_loss_threshold: Value<Number>,
    /// Delay standard deviation (µs) above which an inferred link is a bottleneck.
    pub bottleneck_delay_stddev_us: Value<Number>,
    /// Whether create waits for the first result.
    pub wait_for_result: Value<bool>,
    /// Controller id.
    pub id: Value<String>,
    /// Task status.
    pub status: Value<String>,
    /// Result the summary was taken from.
    pub result_id: Value<String>,
    /// Run status of that result.
    pub result_status: Value<String>,
    /// Source point of that run.
    pub result_source_point: Value<String>,
    /// Start of that run.
    pub result_started_at: Value<String>,
    /// The whole result document.
    pub result_json: Value<String>,
    /// Per-receiver summary.
    pub receivers: Value<Vec<ReceiverSummary>>,
    /// Links the tree inference blames in that run.
    pub bottlenecks: Value<Vec<BottleneckSummary>>,
    /// The `timeouts` block.
    pub timeouts: Value<TaskTimeouts>,
    /// Follow each platform run with a service-host run and compare.
    pub compare_with_service_host: Value<bool>,
    /// That result's comparison with its service-host run.
    pub comparison: Value<ComparisonSummary>,
}

fn whole(value: &Value<Number>) -> Option<Result<u64, ()>> {
    match value {
        Value::Value(Number::Unsigned(v)) => Some(Ok(*v)),
        Value::Value(Number::Float(f)) if f.fract() == 0.0 && *f >= 0.0 => Some(Ok(*f as u64)),
        Value::Value(_) => Some(Err(())),
        _ => None,
    }
}

fn text(value: &Value<String>) -> Option<&str> {
    value.as_ref_option().map(String::as_str)
}

impl TaskState {
    fn is_once(&self) -> bool {
        text(&self.schedule).unwrap_or("once") == "once"
    }

    fn validate(&self, diags: &mut Diagnostics) {
        let mut bad = |attr: &str, summary: &str, reason: String| {
            diagnostics::invalid_value(
                diags,
                AttributePath::new(attr.to_string()),
                summary.to_string(),
                reason,
            )
        };
        if let Some(loss) = self
            .bottleneck_loss_threshold
            .as_ref_option()
            .map(Number::as_f64)
        {
            if !loss.is_some_and(|l| (0.0..1.0).contains(&l)) {
                bad(
                    "bottleneck_loss_threshold",
                    "Invalid loss threshold",
                    "a loss ratio from 0 up to (not including) 1, such as 0.01.".into(),
                );
            }
        }
        if let Some(stddev) = self
            .bottleneck_delay_stddev_us
            .as_ref_option()
            .map(Number::as_f64)
        {
            if !stddev.is_some_and(|s| s.is_finite() && s > 0.0) {
                bad(
                    "bottleneck_delay_stddev_us",
                    "Invalid delay threshold",
                    "a positive number of microseconds, such as 1000.".into(),
                );
            }
        }
        let mode = text(&self.mode);
        match mode {
            None | Some("platform") | Some("service_host") => {}
            Some(other) => bad("mode", "Invalid mode", format!("{other:?} is not a task mode; use \"platform\" (the platform's MSCS runs it) or \"service_host\" (the nodes' service hosts run it).")),
        }
        if mode.unwrap_or("platform") == "platform" {
            if self.platform.is_null() {
                bad(
                    "platform",
                    "Missing platform",
                    "`platform` is required when `mode` is \"platform\".".into(),
                );
            }
            if self.nodes.is_value() {
                bad("nodes", "Nodes are for service_host tasks", "`nodes` only applies when `mode` is \"service_host\"; a platform task uses the platform's points.".into());
            }
        }
        if mode == Some("service_host") {
            if self.platform.is_value() {
                bad(
                    "platform",
                    "A service_host task has no platform",
                    "remove `platform` or use `mode = \"platform\"`.".into(),
                );
            }
            if let Value::Value(nodes) = &self.nodes {
                if nodes.len() < 2 {
                    bad("nodes", "Too few nodes", format!("a service_host task needs at least two nodes (one source, one receiver); got {}.", nodes.len()));
                }
            } else if self.nodes.is_null() {
                bad(
                    "nodes",
                    "Missing nodes",
                    "`nodes` is required when `mode` is \"service_host\".".into(),
                );
            }
        }
        match text(&self.schedule) {
            None | Some("once") | Some("periodic") => {}
            Some(other) => bad(
                "schedule",
                "Invalid schedule",
                format!("{other:?} is not a schedule; use \"once\" or \"periodic\"."),
            ),
        }
        let ranges: [(&str, &Value<Number>, u64, u64); 6] = [
            ("duration_seconds", &self.duration_seconds, 1, 3600),
            ("interval_seconds", &self.interval_seconds, 10, 7 * 86400),
            ("rate_pps", &self.rate_pps, 1, 100_000),
            ("packet_size_bytes", &self.packet_size_bytes, 64, 8972),
            ("port", &self.port, 1024, 65535),
            ("ttl", &self.ttl, 1, 255),
        ];
        for (attr, value, min, max) in ranges {
            match whole(value) {
                Some(Ok(v)) if (min..=max).contains(&v) => {}
                Some(_) => bad(
                    attr,
                    "Value out of range",
                    format!("`{attr}` must be a whole number from {min} to {max}."),
                ),
                None => {}
            }
        }
        if !self.is_once() {
            if let (Some(Ok(duration)), Some(Ok(interval))) = (
                whole(&self.duration_seconds).or(Some(Ok(DEFAULT_DURATION))),
                whole(&self.interval_seconds).or(Some(Ok(DEFAULT_INTERVAL))),
            ) {
                if duration >= interval {
                    bad("duration_seconds", "A run is longer than the period", format!("`duration_seconds` ({duration}) must be shorter than `interval_seconds` ({interval}) for a periodic task."));
                }
            }
        }
        if let Some(group) = text(&self.group) {
            match group.parse::<Ipv4Addr>() {
                Ok(addr) if addr.is_multicast() => {}
                _ => bad("group", "Invalid multicast group", format!("{group:?} is not an IPv4 multicast address (224.0.0.0/4), e.g. \"239.192.0.1\".")),
            }
        }
        if let Value::Value(receivers) = &self.receiver_points {
            if let Some(source) = text(&self.source) {
                if receivers.iter().any(|r| r == source) {
                    bad("receiver_points", "The source cannot receive", format!("{source:?} is the source; list only other points in `receiver_points`."));
                }
            }
        }
        if self.compare_with_service_host == Value::Value(true) && mode == Some("service_host") {
            bad("compare_with_service_host", "Nothing to compare with", "`compare_with_service_host` compares a platform run with the nodes' service hosts; a service_host task already runs there. Remove it or use `mode = \"platform\"`.".into());
        }
        if let Value::Value(t) = &self.timeouts {
            if let Value::Value(text) = &t.create {
                if let Err(err) = timeouts::parse_duration(text) {
                    diagnostics::invalid_value(
                        diags,
                        AttributePath::new("timeouts").attribute("create"),
                        "Invalid timeout",
                        err.to_string(),
                    );
                }
            }
        }
    }

    /// Fill the defaults the controller would apply, so the plan shows them.
    fn apply_defaults(&mut self) {
        let default_number = |v: &mut Value<Number>, d: u64| {
            if v.is_null() {
                *v = Value::Value(Number::from(d));
            }
        };
        if self.mode.is_null() {
            self.mode = Value::Value("platform".into());
        }
        if self.schedule.is_null() {
            self.schedule = Value::Value("once".into());
        }
        default_number(&mut self.duration_seconds, DEFAULT_DURATION);
        default_number(&mut self.interval_seconds, DEFAULT_INTERVAL);
        default_number(&mut self.rate_pps, DEFAULT_RATE);
        default_number(&mut self.packet_size_bytes, DEFAULT_SIZE);
        default_number(&mut self.port, DEFAULT_PORT);
        default_number(&mut self.ttl, DEFAULT_TTL);
        if self.group.is_null() {
            self.group = Value::Value(DEFAULT_GROUP.into());
        }
        if self.ssm.is_null() {
            self.ssm = Value::Value(false);
        }
        if self.bottleneck_loss_threshold.is_null() {
            self.bottleneck_loss_threshold =
                Value::Value(Number::from(DEFAULT_BOTTLENECK_LOSS_THRESHOLD));
        }
        if self.bottleneck_delay_stddev_us.is_null() {
            self.bottleneck_delay_stddev_us =
                Value::Value(Number::from(DEFAULT_BOTTLENECK_DELAY_STDDEV_US));
        }
        if self.compare_with_service_host.is_null() {
            self.compare_with_service_host = Value::Value(false);
        }
        if self.wait_for_result.is_null() {
            self.wait_for_result = match &self.schedule {
                Value::Value(s) => Value::Value(s == "once"),
                _ => Value::Unknown,
            };
        }
    }

    fn mark_computed_unknown(&mut self) {
        self.id = Value::Unknown;
        self.status = Value::Unknown;
        self.result_id = Value::Unknown;
        self.result_status = Value::Unknown;
        self.result_source_point = Value::Unknown;
        self.result_started_at = Value::Unknown;
        self.result_json = Value::Unknown;
        self.receivers = Value::Unknown;
        self.bottlenecks = Value::Unknown;
        self.comparison = Value::Unknown;
    }

    fn create_body(&self) -> TaskCreate {
        let number = |v: &Value<Number>, d: u64| whole(v).and_then(Result::ok).unwrap_or(d);
        let once = self.is_once();
        TaskCreate {
            tenant: None,
            name: text(&self.name).unwrap_or_default().to_string(),
            mode: text(&self.mode).unwrap_or("platform").to_string(),
            platform: text(&self.platform).map(str::to_string),
            nodes: self.nodes.as_ref_option().cloned(),
            schedule: text(&self.schedule).unwrap_or("once").to_string(),
            interval_seconds: (!once).then(|| number(&self.interval_seconds, DEFAULT_INTERVAL)),
            duration_seconds: Some(number(&self.duration_seconds, DEFAULT_DURATION)),
            rate_pps: number(&self.rate_pps, DEFAULT_RATE),
            packet_size_bytes: number(&self.packet_size_bytes, DEFAULT_SIZE),
            group: text(&self.group).unwrap_or(DEFAULT_GROUP).to_string(),
            port: u16::try_from(number(&self.port, DEFAULT_PORT)).unwrap_or(50001),
            ttl: u32::try_from(number(&self.ttl, DEFAULT_TTL)).unwrap_or(8),
            ssm: self.ssm.as_ref_option().copied().unwrap_or(false),
            source: text(&self.source).map(str::to_string),
            receivers: self.receiver_points.as_ref_option().cloned(),
            bottleneck_loss_threshold: self
                .bottleneck_loss_threshold
                .as_ref_option()
                .and_then(Number::as_f64),
            bottleneck_delay_stddev_us: self
                .bottleneck_delay_stddev_us
                .as_ref_option()
                .and_then(Number::as_f64),
            compare_with_service_host: self.compares(),
            request_id: None,
        }
    }

    fn refresh_from(&mut self, task: &Task) {
        self.name = Value::Value(task.name.clone());
        self.mode = Value::Value(task.mode.clone());
        self.platform = task.platform.clone().map_or(Value::Null, Value::Value);
        self.nodes = if task.nodes.is_empty() && !self.nodes.is_value() {
            Value::Null
        } else {
            Value::Value(task.nodes.clone())
        };
        self.schedule = Value::Value(task.schedule.clone());
        // A once task has no period; keep what the configuration planned.
        if task.schedule == "periodic" || !self.interval_seconds.is_value() {
            self.interval_seconds = Value::Value(Number::from(task.interval_seconds));
        }
        self.duration_seconds = Value::Value(Number::from(task.duration_seconds));
        self.rate_pps = Value::Value(Number::from(task.rate_pps));
        self.packet_size_bytes = Value::Value(Number::from(task.packet_size_bytes));
        self.group = Value::Value(task.group.clone());
        self.port = Value::Value(Number::from(u64::from(task.port)));
        self.ttl = Value::Value(Number::from(task.ttl));
        self.ssm = Value::Value(task.ssm);
        self.source = task.source.clone().map_or(Value::Null, Value::Value);
        self.receiver_points = if task.receivers.is_empty() && !self.receiver_points.is_value() {
            Value::Null
        } else {
            Value::Value(task.receivers.clone())
        };
        self.bottleneck_loss_threshold = Value::Value(Number::from(task.bottleneck_loss_threshold));
        self.bottleneck_delay_stddev_us =
            Value::Value(Number::from(task.bottleneck_delay_stddev_us));
        self.id = Value::Value(task.id.clone());
        self.status = Value::Value(task.status.clone());
        self.compare_with_service_host = Value::Value(task.compare_with_service_host);
    }

    fn compares(&self) -> bool {
        self.compare_with_service_host
            .as_ref_option()
            .copied()
            .unwrap_or(false)
    }

    /// Shows `record` as the task's result, its document read (typed) once.
    /// A document that does not read keeps its id and JSON but has no
    /// summary; the error, which names the field, is the caller's to report.
    fn set_result(&mut self, record: &ResultRecord) -> Result<ResultDocument, UnreadableDocument> {
        self.result_id = Value::Value(record.id.clone());
        self.result_started_at = Value::Value(record.started_at.clone());
        self.result_json = Value::Value(record.document.to_string());
        let document = read_document(&record.document);
        let (status, source_point, receivers, bottlenecks) = match &document {
            Ok(document) => (
                document.status.as_str().to_string(),
                document.source_point.clone(),
                summarize_document(document),
                summarize_bottlenecks(document),
            ),
            Err(_) => (String::new(), String::new(), Vec::new(), Vec::new()),
        };
        self.result_status = Value::Value(status);
        self.result_source_point = Value::Value(source_point);
        self.receivers = Value::Value(receivers);
        self.bottlenecks = Value::Value(bottlenecks);
        self.comparison = document.as_ref().map_or(Value::Null, summarize_comparison);
        document
    }

    fn clear_result(&mut self) {
        self.result_id = Value::Value(String::new());
        self.result_status = Value::Value(String::new());
        self.result_source_point = Value::Value(String::new());
        self.result_started_at = Value::Value(String::new());
        self.result_json = Value::Value(String::new());
        self.receivers = Value::Value(Vec::new());
        self.bottlenecks = Value::Value(Vec::new());
        self.comparison = Value::Null;
    }

    fn create_timeout(&self) -> Duration {
        let configured = self
            .timeouts
            .as_ref_option()
            .and_then(|t| t.create.as_ref_option())
            .and_then(|text| timeouts::parse_duration(text).ok());
        configured.unwrap_or_else(|| {
            // Long enough for one run plus the MSCS's poll and the relay.
            let duration = whole(&self.duration_seconds)
                .and_then(Result::ok)
                .unwrap_or(DEFAULT_DURATION);
            timeouts::DEFAULT_CREATE.max(Duration::from_secs(duration * 2 + 120))
        })
    }
}

/// The controller's measurement tasks, as a Terraform resource.
pub struct Tasks {
    shared: Shared,
}

impl Tasks {
    /// Plan-time check that every listed node of a service_host task runs a
    /// service host (reports a service endpoint): a diagnostic on `nodes[i]`
    /// otherwise. Reads the node list the provider fetched once (see
    /// `catalog`); an unknown node or an unreachable controller is left to
    /// apply, which reports it.
    async fn check_service_hosts(&self, diags: &mut Diagnostics, state: &TaskState) {
        if text(&state.mode) != Some("service_host") {
            return;
        }
        let Value::Value(nodes) = &state.nodes else {
            return;
        };
        let Some((client, catalog)) = self.shared.catalog_quiet() else {
            return;
        };
        for (i, name) in nodes.iter().enumerate() {
            let Ok(Some(node)) = catalog.node(&client, name).await else {
                continue;
            };
            if node.capabilities.service_endpoint.is_empty() {
                diagnostics::invalid_value(
                    diags,
                    AttributePath::new("nodes").index(i as i64),
                    format!("Node {name:?} runs no service host"),
                    format!(
                        "Node {name:?} reports no service endpoint, so it cannot take part in a \
                         service_host task.\n\nWhat to do: start its agent with \
                         `--service-address IPV4/LEN` (the node's address on the service network), \
                         or list other nodes."
                    ),
                );
            }
        }
    }

    /// Wait until the task has a result; `None` (with a diagnostic) otherwise.
    async fn wait_result(
        &self,
        diags: &mut Diagnostics,
        client: &Client,
        id: &str,
        name: &str,
        timeout: Duration,
    ) -> Option<(Task, measurelab_api::http::ResultRecord)> {
        let result = wait::until(&self.shared.stop, timeout, || {
            let client = client.clone();
            let id = id.to_string();
            async move {
                let task = client.get_task(&id).await?;
                if task.last_result_id.is_none() {
                    return Ok(Poll::Pending(format!(
                        "task status {}, no result yet",
                        task.status
                    )));
                }
                let record = client.latest_result(&id).await?;
                Ok(Poll::Done((task, record)))
            }
        })
        .await;
        match result {
            Ok(found) => {
                self.wait_comparison(diags, client, found, name, timeout)
                    .await
            }
            Err(end) => {
                diagnostics::wait_failed(
                    diags,
                    &end,
                    KIND,
                    name,
                    "deliver a result",
                    timeout,
                    Operation::Read(KIND),
                );
                None
            }
        }
    }
}

impl Tasks {
    /// With `compare_with_service_host`, the result is complete once its
    /// comparison is no longer pending (the service-host run follows the
    /// platform run); other results are returned as they are.
    async fn wait_comparison(
        &self,
        diags: &mut Diagnostics,
        client: &Client,
        found: (Task, ResultRecord),
        name: &str,
        timeout: Duration,
    ) -> Option<(Task, ResultRecord)> {
        let pending = |record: &ResultRecord| {
            record.document["comparison"]["status"].as_str() == Some("pending")
        };
        if !found.0.compare_with_service_host || !pending(&found.1) {
            return Some(found);
        }
        let id = found.0.id.clone();
        let result = wait::until(&self.shared.stop, timeout, || {
            let client = client.clone();
            let id = id.clone();
            async move {
                let record = client.latest_result(&id).await?;
                if pending(&record) {
                    return Ok(Poll::Pending(
                        "the service-host run of the comparison has not reported".into(),
                    ));
                }
                Ok(Poll::Done((client.get_task(&id).await?, record)))
            }
        })
        .await;
        match result {
            Ok(found) => Some(found),
            Err(end) => {
                diagnostics::wait_failed(
                    diags,
                    &end,
                    KIND,
                    name,
                    "compare its run with the service hosts",
                    timeout,
                    Operation::Read(KIND),
                );
                None
            }
        }
    }
}

#[async_trait]
impl ManagedResource for Tasks {
    type State = TaskState;
    type Object = Task;

    const KIND: &'static str = KIND;

    holds_shared!();

    fn schema(&self) -> Schema {
        use AttributeConstraint::{Optional, OptionalComputed, Required};
        let strings = || AttributeType::List(Box::new(AttributeType::String));
        let attributes: HashMap<String, Attribute> = HashMap::from([
            ("name".into(), attribute(AttributeType::String, "Unique task name. Every argument change replaces the task (a task is immutable on the controller).", Required)),
            ("mode".into(), attribute(AttributeType::String, "`platform` (default): the platform's MSCS runs the task over its measurement points. `service_host`: the listed nodes' service hosts run it without a virtual platform.", OptionalComputed)),
            ("platform".into(), attribute(AttributeType::String, "Virtual platform name (mode `platform`).", Optional)),
            ("nodes".into(), attribute(strings(), "Node names, at least two (mode `service_host`). Each must run a service host (its agent started with `--service-address`; every `measurelab lab` node has one), or plan fails naming `nodes[i]`. The points are named after the nodes (use them in `source` and `receiver_points`); the first listed node drives each run and reports its result.", Optional)),
            ("schedule".into(), attribute(AttributeType::String, "`once` (default): one run; create waits for its result. `periodic`: a run every `interval_seconds`, the source taking turns over the points (round robin) unless `source` is set.", OptionalComputed)),
            ("interval_seconds".into(), attribute(AttributeType::Number, "Period of a periodic task, 10 s to 7 days. Default 300 (the paper's 5 minutes).", OptionalComputed)),
            ("duration_seconds".into(), attribute(AttributeType::Number, "Length of one run, 1 to 3600 s. Default 30 (the paper's 30 s).", OptionalComputed)),
            ("rate_pps".into(), attribute(AttributeType::Number, "Probe rate in packets per second, 1 to 100000. Default 100.", OptionalComputed)),
            ("packet_size_bytes".into(), attribute(AttributeType::Number, "UDP payload size of a probe, 64 to 8972 bytes. Default 200.", OptionalComputed)),
            ("group".into(), attribute(AttributeType::String, "IPv4 multicast group (224.0.0.0/4). Default `239.192.0.1`.", OptionalComputed)),
            ("port".into(), attribute(AttributeType::Number, "UDP port, 1024 to 65535. Default 50001.", OptionalComputed)),
            ("ttl".into(), attribute(AttributeType::Number, "Multicast TTL, 1 to 255. Default 8.", OptionalComputed)),
            ("ssm".into(), attribute(AttributeType::Bool, "Source-specific multicast (receivers join (source, group)). Default false.", OptionalComputed)),
            ("source".into(), attribute(AttributeType::String, "The point that sends; default: round robin over the points.", Optional)),
            ("receiver_points".into(), attribute(strings(), "The points that receive; default: every point but the source. (The API's `receivers` field; the name `receivers` holds the results here.)", Optional)),
            ("bottleneck_loss_threshold".into(), attribute(AttributeType::Number, "Inferred loss ratio above which a link of a run's tree is reported in `bottlenecks` (its interval must also exclude 0), 0 to below 1. Default 0.01.", OptionalComputed)),
            ("bottleneck_delay_stddev_us".into(), attribute(AttributeType::Number, "Inferred delay standard deviation in µs above which a link is reported in `bottlenecks`, above 0. Default 1000.", OptionalComputed)),
            ("wait_for_result".into(), attribute(AttributeType::Bool, "Whether create waits for the first result and records its summary. Default true for `once`, false for `periodic`.", OptionalComputed)),
            ("id".into(), computed(AttributeType::String, "Stable id assigned by the controller.")),
            ("status".into(), computed(AttributeType::String, "Task status: `pending`, `running`, `completed` or `failed`. Refreshed on read.")),
            ("result_id".into(), computed(AttributeType::String, "Id of the result the summary comes from (the first result; empty when create did not wait). Later runs of a periodic task: `measurelab_results`.")),
            ("result_status".into(), computed(AttributeType::String, "Status of that run: `ok`, `partial` or `failed`.")),
            ("result_source_point".into(), computed(AttributeType::String, "The point that sent in that run.")),
            ("result_started_at".into(), computed(AttributeType::String, "RFC 3339 start of that run.")),
            ("result_json".into(), computed(AttributeType::String, "The whole `measurelab.mcast.result/v1` document of that run, as JSON text (`jsondecode` it).")),
            ("receivers".into(), computed(AttributeType::List(Box::new(receiver_type())), &format!("Per-receiver summary of that run: {RECEIVER_DOC}."))),
            ("bottlenecks".into(), computed(AttributeType::List(Box::new(bottleneck_type())), &format!("Bottlenecks of that run: {BOTTLENECK_DOC}."))),
            ("compare_with_service_host".into(), attribute(AttributeType::Bool, "Mode `platform` only. After each run, run the same probe pattern (rate, duration, size, group) between the service hosts of the nodes that host its source and receivers, and compare the two per receiver: loss against a two-proportion bound, median delay against 0.2 ms plus the clock error bounds (`comparison`). Create then also waits for that run. Every node of the platform must run a service host. Default false.", OptionalComputed)),
            ("comparison".into(), computed(comparison_type(), &format!("That run's comparison: {COMPARISON_DOC}."))),
        ]);
        let timeouts_block = Block {
            description: Description::markdown("Limits on how long operations wait."),
            attributes: HashMap::from([(
                "create".to_string(),
                attribute(AttributeType::String, "How long create waits for the first result, as a duration such as `\"3m\"`. Default: the larger of 5 minutes and twice `duration_seconds` plus 2 minutes.", Optional),
            )]),
            ..Default::default()
        };
        Schema {
            version: 1,
            block: Block {
                description: Description::markdown(
                    "A multicast measurement task (loss, one-way delay, IPDV/PDV and jitter per receiver). \
                     With `schedule = \"once\"` create waits until the run's result is stored and exposes the \
                     per-receiver summary in `receivers`, so `terraform apply` returns measurements. A \
                     `periodic` task keeps running until destroyed; read its history with `measurelab_results`.",
                ),
                attributes,
                blocks: HashMap::from([("timeouts".to_string(), NestedBlock::Group(timeouts_block))]),
                ..Default::default()
            },
        }
    }

    fn validate(&self, diags: &mut Diagnostics, state: &TaskState) {
        state.validate(diags);
    }

    async fn plan_create(&self, diags: &mut Diagnostics, proposed: TaskState) -> TaskState {
        proposed.validate(diags);
        self.check_service_hosts(diags, &proposed).await;
        let mut state = proposed;
        state.apply_defaults();
        state.mark_computed_unknown();
        state
    }

    async fn plan_update(
        &self,
        diags: &mut Diagnostics,
        prior: &TaskState,
        proposed: TaskState,
    ) -> (TaskState, Vec<AttributePath>) {
        proposed.validate(diags);
        if proposed.nodes != prior.nodes {
            self.check_service_hosts(diags, &proposed).await;
        }
        let mut state = proposed;
        state.apply_defaults();
        let mut replace = Vec::new();
        let p = prior;
        let s = &state;
        let changed: [(&str, bool); 17] = [
            ("name", s.name != p.name),
            ("mode", s.mode != p.mode),
            ("platform", s.platform != p.platform),
            ("nodes", s.nodes != p.nodes),
            ("schedule", s.schedule != p.schedule),
            (
                "interval_seconds",
                !s.is_once() && s.interval_seconds != p.interval_seconds,
            ),
            ("duration_seconds", s.duration_seconds != p.duration_seconds),
            ("rate_pps", s.rate_pps != p.rate_pps),
            (
                "packet_size_bytes",
                s.packet_size_bytes != p.packet_size_bytes,
            ),
            ("group", s.group != p.group),
            ("port", s.port != p.port),
            ("ttl", s.ttl != p.ttl),
            ("ssm", s.ssm != p.ssm),
            ("source", s.source != p.source),
            ("receiver_points", s.receiver_points != p.receiver_points),
            (
                "bottleneck_loss_threshold",
                s.bottleneck_loss_threshold != p.bottleneck_loss_threshold,
            ),
            (
                "bottleneck_delay_stddev_us",
                s.bottleneck_delay_stddev_us != p.bottleneck_delay_stddev_us,
            ),
        ];
        for (attr, differs) in changed {
            if differs {
                replace.push(AttributePath::new(attr));
            }
        }
        // A state written before the attribute existed holds null: false.
        if s.compares() != p.compares() {
            replace.push(AttributePath::new("compare_with_service_host"));
        }
        if replace.is_empty() {
            // `wait_for_result` and `timeouts` only steer create.
            state.id = prior.id.clone();
            state.status = prior.status.clone();
            state.result_id = prior.result_id.clone();
            state.result_status = prior.result_status.clone();
            state.result_source_point = prior.result_source_point.clone();
            state.result_started_at = prior.result_started_at.clone();
            state.result_json = prior.result_json.clone();
            state.receivers = prior.receivers.clone();
            state.bottlenecks = prior.bottlenecks.clone();
            state.comparison = prior.comparison.clone();
            state.interval_seconds = if state.is_once() {
                prior.interval_seconds.clone()
            } else {
                state.interval_seconds
            };
        } else {
            state.mark_computed_unknown();
        }
        (state, replace)
    }

    async fn create(
        &self,
        diags: &mut Diagnostics,
        client: &Client,
        planned: TaskState,
        request: &CreateRequest,
    ) -> Option<TaskState> {
        planned.validate(diags);
        if !diags.errors.is_empty() {
            return None;
        }
        let body = TaskCreate {
            tenant: None,
            request_id: request.request_id(),
            ..planned.create_body()
        };
        let task = request.send(diags, || client.create_task(&body)).await?;
        let mut state = planned;
        let planned_interval = state.interval_seconds.clone();
        state.refresh_from(&task);
        if state.is_once() {
            state.interval_seconds = planned_interval;
        }
        let wait = state
            .wait_for_result
            .as_ref_option()
            .copied()
            .unwrap_or(state.is_once());
        state.wait_for_result = Value::Value(wait);
        if !wait {
            state.clear_result();
            return Some(state);
        }
        let name = task.name.clone();
        let timeout = state.create_timeout();
        match self
            .wait_result(diags, client, &task.id, &name, timeout)
            .await
        {
            Some((task, record)) => {
                state.refresh_from(&task);
                let document = state.set_result(&record);
                report_result(diags, &name, &record.id, &document);
            }
            None => state.clear_result(),
        }
        Some(state)
    }

    // `update` sends nothing: only `wait_for_result`/`timeouts` changed.

    fn id(state: &TaskState) -> &Value<String> {
        &state.id
    }

    fn read_key(state: &TaskState) -> String {
        id_or_name(&state.id, &state.name)
    }

    async fn get(client: &Client, key: &str) -> Result<Task, ClientError> {
        client.get_task(key).await
    }

    async fn delete(client: &Client, id: &str) -> Result<(), ClientError> {
        client.delete_task(id).await.map(drop)
    }

    async fn refresh(&self, client: &Client, state: &mut TaskState, task: &Task) {
        state.refresh_from(task);
        // The summary is the first result's and stays put (stable outputs);
        // only a state without one (import) picks one up.
        let has_result = matches!(&state.result_id, Value::Value(id) if !id.is_empty());
        if !has_result {
            let record = match task.last_result_id {
                Some(_) => client.latest_result(&task.id).await.ok(),
                None => None,
            };
            match record {
                // `refresh` has no diagnostics to warn in (the adapter's
                // signature); `result_json` still holds the document as stored.
                Some(record) => drop(state.set_result(&record)),
                None => state.clear_result(),
            }
        }
    }

    fn import_base(task: &Task) -> TaskState {
        TaskState {
            timeouts: Value::Value(TaskTimeouts::default()),
            wait_for_result: Value::Value(task.schedule == "once"),
            ..Default::default()
        }
    }

    fn import_not_found(id: &str) -> String {
        format!("The controller has no measurement task named (or with id) {id:?}.\n\nWhat to do: import by name or id (`GET /v1/tasks`).")
    }
}

/// A failed run is an error (the resource is kept, tainted, so the next
/// apply submits it again); an unreadable document is a warning.
fn report_result(
    diags: &mut Diagnostics,
    task_name: &str,
    result_id: &str,
    document: &Result<ResultDocument, UnreadableDocument>,
) {
    match document {
        Ok(document) if document.status == RunStatus::Failed => {
            let why = document
                .source
                .error
                .as_deref()
                .unwrap_or("see result_json");
            diagnostics::invalid_value(
                diags,
                AttributePath::root(),
                format!("Measurement task {task_name:?} failed"),
                format!("The run's result has status failed: {why}.\n\nWhat to do: check that the measurement points run (their deployments' `runs`), that `source`/`receiver_points` name existing points, then apply again."),
            );
        }
        Ok(_) => {}
        Err(err) => unreadable_result(diags, result_id, err),
    }
}

/// The task's result document does not read as v1: a warning, not an
/// error, because the run happened and `result_json` holds it as stored.
fn unreadable_result(diags: &mut Diagnostics, result_id: &str, err: &UnreadableDocument) {
    diags.add_warning(diagnostics::diagnostic(
        format!("Result {result_id} has no summary"),
        format!(
            "The stored document of result {result_id} is not a `measurelab.mcast.result/v1` \
             document: at `{}`, {}. So `result_status`, `result_source_point` and `receivers` \
             are empty; `result_json` holds the document as stored.\n\nWhat to do: read it with \
             `GET /v1/results?task=...`; documents stored since the controller checks the type \
             always read.",
            err.path(),
            err.inner()
        ),
        AttributePath::new("result_json"),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data_sources::results::example_document;

    fn paths(state: &TaskState) -> Vec<AttributePath> {
        let mut diags = Diagnostics::default();
        state.validate(&mut diags);
        diags.errors.iter().map(|d| d.attribute.clone()).collect()
    }

    fn record(document: serde_json::Value) -> ResultRecord {
        ResultRecord {
            tenant_id: String::new(),
            id: "res-7".into(),
            task_id: "t-1".into(),
            task: "loss".into(),
            received_at: "2026-01-01T00:00:06Z".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            document,
        }
    }

    #[test]
    fn the_result_is_read_from_the_typed_document() {
        let mut state = TaskState::default();
        let document = state.set_result(&record(example_document()));
        assert_eq!(state.result_status, Value::Value("partial".into()));
        assert_eq!(state.result_source_point, Value::Value("p1".into()));
        let Value::Value(receivers) = &state.receivers else {
            panic!("no receivers: {:?}", state.receivers);
        };
        assert_eq!(receivers.len(), 2);
        assert_eq!(receivers[0].lost, Value::Value(Number::Unsigned(5)));
        assert_eq!(receivers[1].status, "missing");
        let mut diags = Diagnostics::default();
        report_result(&mut diags, "loss", "res-7", &document);
        assert!(diags.errors.is_empty() && diags.warnings.is_empty());
    }

    #[test]
    fn a_failed_run_is_an_error_with_the_sources_reason() {
        let mut failed = example_document();
        failed["status"] = "failed".into();
        failed["source"]["error"] = "p1 did not answer".into();
        let mut state = TaskState::default();
        let document = state.set_result(&record(failed));
        assert_eq!(state.result_status, Value::Value("failed".into()));
        let mut diags = Diagnostics::default();
        report_result(&mut diags, "loss", "res-7", &document);
        assert!(diags.warnings.is_empty());
        assert_eq!(diags.errors.len(), 1);
        assert!(
            diags.errors[0]
                .detail
                .contains("failed: p1 did not answer."),
            "{}",
            diags.errors[0].detail
        );
    }

    #[test]
    fn an_unreadable_document_is_a_warning_naming_the_result_and_field() {
        let mut broken = example_document();
        broken["receivers"][0]["metrics"]["jitter_us"] = "fast".into();
        let mut state = TaskState::default();
        let document = state.set_result(&record(broken));
        assert_eq!(state.result_id, Value::Value("res-7".into()));
        assert_eq!(state.result_status, Value::Value(String::new()));
        assert_eq!(state.receivers, Value::Value(Vec::new()));
        let mut diags = Diagnostics::default();
        report_result(&mut diags, "loss", "res-7", &document);
        assert!(diags.errors.is_empty());
        assert_eq!(diags.warnings.len(), 1);
        let warning = &diags.warnings[0];
        assert!(warning.summary.contains("res-7"), "{}", warning.summary);
        assert!(
            warning.detail.contains("`receivers[0].metrics.jitter_us`"),
            "{}",
            warning.detail
        );
        assert_eq!(warning.attribute, AttributePath::new("result_json"));
    }

    #[test]
    fn bad_values_point_at_their_attributes() {
        let state = TaskState {
            name: Value::Value("t".into()),
            platform: Value::Value("p".into()),
            group: Value::Value("10.0.0.1".into()),
            rate_pps: Value::Value(Number::Unsigned(0)),
            port: Value::Value(Number::Unsigned(80)),
            schedule: Value::Value("hourly".into()),
            ..Default::default()
        };
        assert_eq!(
            paths(&state),
            vec![
                AttributePath::new("schedule"),
                AttributePath::new("rate_pps"),
                AttributePath::new("port"),
                AttributePath::new("group"),
            ]
        );
    }

    #[test]
    fn mode_decides_between_platform_and_nodes() {
        let platform_without_one = TaskState::default();
        assert_eq!(
            paths(&platform_without_one),
            vec![AttributePath::new("platform")]
        );
        let service_host = TaskState {
            mode: Value::Value("service_host".into()),
            nodes: Value::Value(vec!["n1".into()]),
            ..Default::default()
        };
        assert_eq!(paths(&service_host), vec![AttributePath::new("nodes")]);
    }

    #[test]
    fn only_a_platform_task_compares_with_the_service_hosts() {
        let service_host = TaskState {
            mode: Value::Value("service_host".into()),
            nodes: Value::Value(vec!["n1".into(), "n2".into()]),
            compare_with_service_host: Value::Value(true),
            ..Default::default()
        };
        assert_eq!(
            paths(&service_host),
            vec![AttributePath::new("compare_with_service_host")]
        );
        let platform = TaskState {
            platform: Value::Value("p".into()),
            compare_with_service_host: Value::Value(true),
            ..Default::default()
        };
        assert!(paths(&platform).is_empty());
        assert!(platform.create_body().compare_with_service_host);
    }

    #[test]
    fn periodic_run_must_fit_in_its_period() {
        let state = TaskState {
            platform: Value::Value("p".into()),
            schedule: Value::Value("periodic".into()),
            interval_seconds: Value::Value(Number::Unsigned(20)),
            duration_seconds: Value::Value(Number::Unsigned(30)),
            ..Default::default()
        };
        assert_eq!(paths(&state), vec![AttributePath::new("duration_seconds")]);
    }

    #[test]
    fn defaults_are_planned_and_sent() {
        let mut state = TaskState {
            name: Value::Value("t".into()),
            platform: Value::Value("p".into()),
            ..Default::default()
        };
        state.apply_defaults();
        assert_eq!(state.wait_for_result, Value::Value(true));
        let body = state.create_body();
        assert_eq!(body.mode, "platform");
        assert_eq!(body.schedule, "once");
        assert_eq!(body.interval_seconds, None);
        assert_eq!(body.rate_pps, DEFAULT_RATE);
        assert_eq!(body.group, DEFAULT_GROUP);
    }

    #[tokio::test]
    async fn service_host_nodes_without_a_service_host_are_refused_at_plan() {
        type MeasurementTaskResource = crate::resources::adapter::Adapter<Tasks>;
        use axum::routing::get;
        use axum::{Json, Router};
        use measurelab_api::http::{Capabilities, Node, NodeList, NodeStatus, Resources};
        use tf_provider::value::ValueEmpty;
        use tf_provider::Resource;
        let node = |name: &str, endpoint: &str| Node {
            id: format!("id-{name}"),
            name: name.into(),
            status: NodeStatus::Online,
            last_heartbeat: None,
            registered_at: String::new(),
            agent_version: String::new(),
            management_address: String::new(),
            capabilities: Capabilities {
                service_endpoint: endpoint.into(),
                ..Default::default()
            },
            resources: Resources::default(),
            labels: Default::default(),
            flow_export: None,
            cpu_overcommit: 16.0,
            memory_overcommit: 1.0,
            reported_labels: Default::default(),
        };
        let nodes = vec![
            node("a", "10.253.0.11:7090"),
            node("b", ""),
            node("c", "10.253.0.13:7090"),
        ];
        let app = Router::new().route(
            "/v1/nodes",
            get(move || {
                let nodes = nodes.clone();
                async move {
                    Json(NodeList {
                        nodes,
                        next_cursor: None,
                    })
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let shared = Shared::new(tokio_util::sync::CancellationToken::new());
        shared.set_client(Client::new(&url, "token", None).unwrap());
        let resource = MeasurementTaskResource::new(shared);
        let task = |nodes: &[&str]| TaskState {
            name: Value::Value("t".into()),
            mode: Value::Value("service_host".into()),
            nodes: Value::Value(nodes.iter().map(|n| n.to_string()).collect()),
            ..Default::default()
        };
        let plan = |state: TaskState| {
            let resource = &resource;
            async move {
                let mut diags = Diagnostics::default();
                resource
                    .plan_create(&mut diags, state.clone(), state, ValueEmpty::default())
                    .await
                    .unwrap();
                diags
                    .errors
                    .iter()
                    .map(|d| (d.attribute.clone(), d.summary.clone()))
                    .collect::<Vec<_>>()
            }
        };
        let refused = plan(task(&["a", "b", "zz"])).await;
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].0, AttributePath::new("nodes").index(1));
        assert!(
            refused[0].1.contains("\"b\" runs no service host"),
            "{refused:?}"
        );
        // Unknown nodes are the controller's to report at apply.
        assert_eq!(plan(task(&["a", "c", "zz"])).await, vec![]);
    }
}
