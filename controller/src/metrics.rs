//! Prometheus metrics of the controller, served at `GET /metrics` (operator
//! token) in the OpenMetrics text format.
//!
//! Request latency is recorded as it happens (an HTTP middleware and a gRPC
//! tower layer). State — nodes by status, the writer's queue, each task's
//! newest result per receiver — is read from the store at scrape time, so a
//! series never outlives what it describes (a deleted task's series go with
//! the next scrape).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use measurelab_api::http::NodeStatus;
use measurelab_api::result::ResultDocument;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::leader::LeaderGate;
use crate::store::{result_series, vms, Store, StoreError};
use crate::version_policy::{self, Version};

/// The node API's RPCs (service `NodeService` in crates/api/proto/node.proto). A call to any other
/// path counts as `(other)`: a label taken from the request could grow
/// without bound.
const RPCS: [&str; 10] = [
    "Register",
    "Heartbeat",
    "ShipLogs",
    "GetDesiredState",
    "ReportStatus",
    "FetchProgram",
    "PostResult",
    "PollTasks",
    "WatchDesiredState",
    "FetchAppliance",
];

/// Why a scrape failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ScrapeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("encoding metrics: {0}")]
    Encode(#[from] std::fmt::Error),
}

/// Tasks whose newest result becomes series; the rest are left out (and
/// counted), so one tenant's thousand tasks cannot blow up a scrape.
const MAX_RESULT_TASKS: usize = 1000;

type Latency = Family<RouteLabels, Histogram, fn() -> Histogram>;
type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    rpc: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SkewLabels {
    skew: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReceiverLabels {
    tenant: String,
    task: String,
    receiver: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DelayLabels {
    tenant: String,
    task: String,
    receiver: String,
    stat: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    tenant: String,
    task: String,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s: a heartbeat is a millisecond, an export can be seconds.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The controller's metrics; one per process, shared by both servers.
pub(crate) struct Metrics {
    registry: Registry,
    http_requests: Family<RequestLabels, Counter>,
    http_latency: Latency,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_latency: Family<RpcLabels, Histogram, fn() -> Histogram>,
    nodes: Family<StatusLabels, Gauge>,
    nodes_by_agent_skew: Family<SkewLabels, Gauge>,
    vms_by_guest_agent_skew: Family<SkewLabels, Gauge>,
    /// What the `*_skew` gauges judge agents' and guest agents' versions
    /// against.
    controller_version: Version,
    write_queue: Gauge,
    leader: Gauge,
    /// Set by [`Metrics::follow_leadership`] once the controller has one.
    leader_gate: std::sync::OnceLock<Arc<LeaderGate>>,
    result_started: Family<TaskLabels, FloatGauge>,
    result_loss: Family<ReceiverLabels, FloatGauge>,
    result_lost: Family<ReceiverLabels, Gauge>,
    result_delay: Family<DelayLabels, FloatGauge>,
    result_jitter: Family<ReceiverLabels, FloatGauge>,
    result_tasks_left_out: Gauge,
    /// Refresh-then-encode must not interleave between two scrapes.
    scrape: tokio::sync::Mutex<()>,
}

impl Metrics {
    pub(crate) fn new(controller_version: Version) -> Arc<Self> {
        let mut registry = Registry::with_prefix("measurelab");
        let http_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP API requests by route template and status",
            http_requests.clone(),
        );
        let http_latency: Latency = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "http_request_duration",
            "HTTP API request latency, until the response head",
            Unit::Seconds,
            http_latency.clone(),
        );
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        registry.register(
            "grpc_requests",
            "Node API calls by RPC (Heartbeat counts heartbeats)",
            rpc_requests.clone(),
        );
        let rpc_latency: Family<RpcLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "grpc_request_duration",
            "Node API latency, until the response head",
            Unit::Seconds,
            rpc_latency.clone(),
        );
        let nodes = Family::<StatusLabels, Gauge>::default();
        registry.register("nodes", "Nodes by status", nodes.clone());
        let nodes_by_agent_skew = Family::<SkewLabels, Gauge>::default();
        registry.register(
            "nodes_by_agent_skew",
            "Nodes by their agent's last reported version against this controller's (docs/version-skew.md): supported, newer (served, unsupported), older (refused), unknown (not MAJOR.MINOR.PATCH)",
            nodes_by_agent_skew.clone(),
        );
        let vms_by_guest_agent_skew = Family::<SkewLabels, Gauge>::default();
        registry.register(
            "vms_by_guest_agent_skew",
            "VMs by their guest agent's last reported version against this controller's (docs/version-skew.md): supported, newer and older (served, the VM marked GuestAgentSupported=False), unknown (not MAJOR.MINOR.PATCH); VMs whose guest agent has not said hello are left out",
            vms_by_guest_agent_skew.clone(),
        );
        let write_queue = Gauge::default();
        registry.register(
            "store_write_queue_depth",
            "Commands waiting for the store's writer thread",
            write_queue.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "controller_leader",
            "1 on the controller replica that runs the liveness sweep and the retention prune (the only controller on SQLite), 0 on the others",
            leader.clone(),
        );
        let result_started = Family::<TaskLabels, FloatGauge>::default();
        registry.register_with_unit(
            "result_started_timestamp",
            "Start of the task's newest run, Unix time",
            Unit::Seconds,
            result_started.clone(),
        );
        let result_loss = Family::<ReceiverLabels, FloatGauge>::default();
        registry.register(
            "result_loss_ratio",
            "Loss ratio (RFC 7680) of the task's newest run at the receiver",
            result_loss.clone(),
        );
        let result_lost = Family::<ReceiverLabels, Gauge>::default();
        registry.register(
            "result_packets_lost",
            "Packets lost in the task's newest run at the receiver",
            result_lost.clone(),
        );
        let result_delay = Family::<DelayLabels, FloatGauge>::default();
        registry.register_with_unit(
            "result_one_way_delay",
            "One-way delay (RFC 7679) of the task's newest run at the receiver; stat is min, median, p95 or max",
            Unit::Seconds,
            result_delay.clone(),
        );
        let result_jitter = Family::<ReceiverLabels, FloatGauge>::default();
        registry.register_with_unit(
            "result_jitter",
            "RFC 3550 interarrival jitter of the task's newest run at the receiver",
            Unit::Seconds,
            result_jitter.clone(),
        );
        let result_tasks_left_out = Gauge::default();
        registry.register(
            "result_tasks_left_out",
            "Tasks with results that got no series (beyond the per-scrape limit)",
            result_tasks_left_out.clone(),
        );
        Arc::new(Metrics {
            registry,
            http_requests,
            http_latency,
            rpc_requests,
            rpc_latency,
            nodes,
            nodes_by_agent_skew,
            vms_by_guest_agent_skew,
            controller_version,
            write_queue,
            leader,
            leader_gate: std::sync::OnceLock::new(),
            result_started,
            result_loss,
            result_lost,
            result_delay,
            result_jitter,
            result_tasks_left_out,
            scrape: tokio::sync::Mutex::new(()),
        })
    }

    fn observe_http(&self, method: &str, route: &str, status: u16, started: Instant) {
        let route = route.to_string();
        let method = method.to_string();
        self.http_latency
            .get_or_create(&RouteLabels {
                method: method.clone(),
                route: route.clone(),
            })
            .observe(started.elapsed().as_secs_f64());
        self.http_requests
            .get_or_create(&RequestLabels {
                method,
                route,
                status,
            })
            .inc();
    }

    fn observe_rpc(&self, rpc: String, started: Instant) {
        let labels = RpcLabels { rpc };
        self.rpc_latency
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        self.rpc_requests.get_or_create(&labels).inc();
    }

    /// Report whether this replica leads (`controller_leader`), as `gate`
    /// says at each scrape.
    pub(crate) fn follow_leadership(&self, gate: Arc<LeaderGate>) {
        // Set once at start; a second call would be a bug, and is ignored.
        let _ = self.leader_gate.set(gate);
    }

    /// Read the store's state into the gauges, then encode everything.
    pub(crate) async fn scrape(&self, store: &Store) -> Result<String, ScrapeError> {
        let _one_at_a_time = self.scrape.lock().await;
        self.nodes.clear();
        let nodes = store.nodes();
        self.count_by_skew(
            &self.nodes_by_agent_skew,
            nodes.iter().map(|node| node.agent_version.as_str()),
        );
        for node in nodes {
            self.nodes
                .get_or_create(&StatusLabels {
                    status: match node.status {
                        NodeStatus::Online => "online",
                        NodeStatus::Offline => "offline",
                        NodeStatus::Revoked => "revoked",
                    }
                    .to_string(),
                })
                .inc();
        }
        let guest_agents = store
            .resources()
            .read(|conn, _| vms::guest_agent_versions(conn))
            .await?;
        self.count_by_skew(
            &self.vms_by_guest_agent_skew,
            guest_agents.iter().map(String::as_str),
        );
        self.write_queue.set(store.write_queue_depth() as i64);
        if let Some(gate) = self.leader_gate.get() {
            self.leader.set(i64::from(gate.is_leader()));
        }
        let runs = store
            .resources()
            .read(|conn, _| result_series::latest_per_task(conn, MAX_RESULT_TASKS + 1))
            .await?;
        self.refresh_results(&runs);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// Set `gauge` to the number of `versions` of each skew label, as the
    /// policy judges them against this controller.
    fn count_by_skew<'a>(
        &self,
        gauge: &Family<SkewLabels, Gauge>,
        versions: impl Iterator<Item = &'a str>,
    ) {
        gauge.clear();
        for version in versions {
            gauge
                .get_or_create(&SkewLabels {
                    skew: version_policy::judge(self.controller_version, version).label(),
                })
                .inc();
        }
    }

    fn refresh_results(&self, runs: &[result_series::LatestRun]) {
        self.result_started.clear();
        self.result_loss.clear();
        self.result_lost.clear();
        self.result_delay.clear();
        self.result_jitter.clear();
        self.result_tasks_left_out
            .set(runs.len().saturating_sub(MAX_RESULT_TASKS) as i64);
        for run in runs.iter().take(MAX_RESULT_TASKS) {
            // Stored documents passed the typed check on the way in; one
            // written before that (or by a non-multicast program) has no
            // receivers to report and is skipped.
            let Ok(document) = serde_json::from_str::<ResultDocument>(&run.document) else {
                continue;
            };
            self.result_started
                .get_or_create(&TaskLabels {
                    tenant: run.tenant.clone(),
                    task: run.task.clone(),
                })
                .set(run.started_ms as f64 / 1000.0);
            for receiver in &document.receivers {
                let Some(metrics) = &receiver.metrics else {
                    continue;
                };
                let labels = ReceiverLabels {
                    tenant: run.tenant.clone(),
                    task: run.task.clone(),
                    receiver: receiver.point.clone(),
                };
                self.result_lost
                    .get_or_create(&labels)
                    .set(i64::try_from(metrics.packets_lost).unwrap_or(i64::MAX));
                if let Some(loss) = metrics.loss_ratio {
                    self.result_loss.get_or_create(&labels).set(loss);
                }
                if let Some(jitter) = metrics.jitter_us {
                    self.result_jitter.get_or_create(&labels).set(jitter / 1e6);
                }
                if let Some(delay) = metrics.one_way_delay_us {
                    for (stat, value) in [
                        ("min", delay.min),
                        ("median", delay.median),
                        ("p95", delay.p95),
                        ("max", delay.max),
                    ] {
                        self.result_delay
                            .get_or_create(&DelayLabels {
                                tenant: labels.tenant.clone(),
                                task: labels.task.clone(),
                                receiver: labels.receiver.clone(),
                                stat,
                            })
                            .set(value / 1e6);
                    }
                }
            }
        }
    }
}

/// Axum middleware: every HTTP request, by its route template (never the
/// raw path, whose ids would make a series per object).
pub(crate) async fn observe_http(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    // Extension methods would be a label per invented verb.
    let method = match *request.method() {
        Method::GET
        | Method::POST
        | Method::PUT
        | Method::PATCH
        | Method::DELETE
        | Method::HEAD => request.method().as_str().to_string(),
        _ => "OTHER".to_string(),
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_string())
        .unwrap_or_else(|| "(unmatched)".to_string());
    let response = next.run(request).await;
    metrics.observe_http(&method, &route, response.status().as_u16(), started);
    response
}

/// Tower layer timing every node API call, by RPC name.
#[derive(Clone)]
pub(crate) struct RpcLayer(pub Arc<Metrics>);

impl<S> tower_layer::Layer<S> for RpcLayer {
    type Service = RpcTimer<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcTimer {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct RpcTimer<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B> tower_service::Service<axum::http::Request<B>> for RpcTimer<S>
where
    S: tower_service::Service<axum::http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        // `/measurelab.node.v1.Node/Heartbeat` -> `Heartbeat`; anything else
        // (a probe for a service we do not serve) is one bucket.
        let rpc = match request.uri().path().rsplit_once('/') {
            Some(("/measurelab.node.v1.NodeService", method)) if RPCS.contains(&method) => method,
            _ => "(other)",
        }
        .to_string();
        let started = Instant::now();
        let call = self.inner.call(request);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let result = call.await;
            metrics.observe_rpc(rpc, started);
            result
        })
    }
}
