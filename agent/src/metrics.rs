//! Prometheus metrics of the node agent, served at `/metrics` on
//! `metrics_listen` when it is set (off by default; bind it to the
//! management address). Reconcile pass durations and outcomes, heartbeats,
//! the generations the node is at, the guest relay's queue and refusals, and
//! what the service host's measurement point refused.
//!
//! One set per process, like the log buffer: a node runs one agent.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use axum::routing::get;
use measurelab_api::exposition::Format;
use measurelab_mcast::point::PointCounters;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PassLabels {
    converged: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// Reads the relay queue's depth at scrape time (the queue belongs to the
/// reconcile loop, which registers it).
type DepthSource = Box<dyn Fn() -> usize + Send + Sync>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The agent's metrics.
pub struct AgentMetrics {
    registry: Registry,
    pass_duration: Histogram,
    passes: Family<PassLabels, Counter>,
    heartbeats: Family<OutcomeLabels, Counter>,
    desired_vms: Gauge,
    guests: Family<StateLabels, Gauge>,
    /// Every state `guests` has had a series for, so one no guest is in
    /// any more reads 0 rather than its last count.
    guest_states_seen: std::sync::Mutex<std::collections::BTreeSet<String>>,
    desired_generation: Gauge,
    observed_generation: Gauge,
    relay_depth: Gauge,
    relay_depth_source: std::sync::Mutex<Option<DepthSource>>,
    relay_refused: Family<KindLabels, Counter>,
    point_refused: Family<ReasonLabels, Counter>,
    /// The service host point's own counts, read at scrape time.
    point_source: std::sync::Mutex<Option<Arc<PointCounters>>>,
}

/// The states the reconcile engine reports (`VmStatus.actual_state`), each
/// served from the start, at 0, so a node with no guests says so. Another
/// state gets its series when first seen.
const GUEST_STATES: [&str; 6] = [
    "pending", "running", "paused", "stopped", "failed", "deleting",
];

static METRICS: LazyLock<AgentMetrics> = LazyLock::new(AgentMetrics::new);

/// The process's metrics.
pub fn metrics() -> &'static AgentMetrics {
    &METRICS
}

impl AgentMetrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("measurelab_agent");
        // 1 ms .. ~65 s: a no-op pass is sub-millisecond, a QEMU boot is seconds.
        let pass_duration = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register_with_unit(
            "reconcile_pass_duration",
            "Time one reconcile pass took",
            Unit::Seconds,
            pass_duration.clone(),
        );
        let passes = Family::<PassLabels, Counter>::default();
        registry.register(
            "reconcile_passes",
            "Reconcile passes, by whether the node converged",
            passes.clone(),
        );
        let heartbeats = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "heartbeats",
            "Heartbeats sent, by outcome",
            heartbeats.clone(),
        );
        let desired_vms = Gauge::default();
        registry.register(
            "desired_vms",
            "Guests the controller wants on this node",
            desired_vms.clone(),
        );
        let guests = Family::<StateLabels, Gauge>::default();
        registry.register(
            "guests",
            "Desired guests by the state the last reconcile pass saw them in \
             (pending, running, paused, stopped, failed, deleting)",
            guests.clone(),
        );
        let desired_generation = Gauge::default();
        registry.register(
            "desired_generation",
            "Generation of the desired state last fetched",
            desired_generation.clone(),
        );
        let observed_generation = Gauge::default();
        registry.register(
            "observed_generation",
            "Newest desired generation the node has converged to",
            observed_generation.clone(),
        );
        let relay_depth = Gauge::default();
        registry.register(
            "relay_queue_depth",
            "Guest requests holding a slot of the node's relay queue",
            relay_depth.clone(),
        );
        let relay_refused = Family::<KindLabels, Counter>::default();
        registry.register(
            "relay_refused",
            "Guest requests answered with a refusal (relay queue full, spool unavailable), by kind",
            relay_refused.clone(),
        );
        let point_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "point_refused",
            "Connections and control requests the service host's measurement point refused \
             (nothing sent, nothing joined), by reason",
            point_refused.clone(),
        );
        for state in GUEST_STATES {
            guests
                .get_or_create(&StateLabels {
                    state: state.to_string(),
                })
                .set(0);
        }
        AgentMetrics {
            registry,
            point_refused,
            point_source: std::sync::Mutex::new(None),
            relay_depth,
            relay_depth_source: std::sync::Mutex::new(None),
            relay_refused,
            pass_duration,
            passes,
            heartbeats,
            desired_vms,
            guests,
            guest_states_seen: std::sync::Mutex::new(
                GUEST_STATES.iter().map(|state| state.to_string()).collect(),
            ),
            desired_generation,
            observed_generation,
        }
    }

    /// One reconcile pass over `desired_vms` guests of `generation`.
    pub fn observe_pass(
        &self,
        took: Duration,
        converged: bool,
        desired_vms: usize,
        generation: u64,
    ) {
        self.pass_duration.observe(took.as_secs_f64());
        self.passes
            .get_or_create(&PassLabels {
                converged: if converged { "true" } else { "false" },
            })
            .inc();
        self.desired_vms.set(gauge_value(desired_vms as u64));
        self.desired_generation.set(gauge_value(generation));
    }

    /// The states of the desired guests after a pass (`VmStatus.actual_state`).
    pub fn observe_guest_states<'a>(&self, states: impl IntoIterator<Item = &'a str>) {
        let mut counts = std::collections::BTreeMap::<&str, u64>::new();
        for state in states {
            *counts.entry(state).or_default() += 1;
        }
        let mut seen = self
            .guest_states_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        seen.extend(counts.keys().map(|state| state.to_string()));
        for state in seen.iter() {
            let count = counts.get(state.as_str()).copied().unwrap_or(0);
            self.guests
                .get_or_create(&StateLabels {
                    state: state.clone(),
                })
                .set(gauge_value(count));
        }
    }

    /// The generation the node reports as converged.
    pub fn observe_generation(&self, observed: u64) {
        self.observed_generation.set(gauge_value(observed));
    }

    /// A heartbeat's outcome.
    pub fn observe_heartbeat(&self, delivered: bool) {
        self.heartbeats
            .get_or_create(&OutcomeLabels {
                outcome: if delivered { "ok" } else { "failed" },
            })
            .inc();
    }

    /// Where the relay queue's depth is read at scrape time.
    pub fn watch_relay_queue(&self, depth: impl Fn() -> usize + Send + Sync + 'static) {
        *self
            .relay_depth_source
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Box::new(depth));
    }

    /// A guest request the relay refused.
    pub fn observe_relay_refusal(&self, kind: &'static str) {
        self.relay_refused.get_or_create(&KindLabels { kind }).inc();
    }

    /// Where the service host point's refusals are read at scrape time.
    pub fn watch_point(&self, counters: Arc<PointCounters>) {
        *self.point_source.lock().unwrap_or_else(|e| e.into_inner()) = Some(counters);
    }

    /// Brings `point_refused` up to the point's own counts. Only this adds to
    /// it, and the point's counts only grow, so the difference is what is new.
    fn sync_point_refusals(&self) {
        let source = self
            .point_source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(counters) = source else {
            return;
        };
        for (reason, total) in counters.refused.snapshot() {
            let counter = self.point_refused.get_or_create(&ReasonLabels { reason });
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }

    /// The exposition, in OpenMetrics.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        self.sync_point_refusals();
        if let Some(depth) = self
            .relay_depth_source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            self.relay_depth.set(gauge_value(depth() as u64));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

async fn serve_metrics(headers: HeaderMap) -> axum::response::Response {
    let format = Format::from_accept(
        headers
            .get(header::ACCEPT)
            .and_then(|value| value.to_str().ok()),
    );
    match metrics().encode() {
        Ok(text) => (
            [(header::CONTENT_TYPE, format.content_type())],
            format.render(text),
        )
            .into_response(),
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}"),
        )
            .into_response(),
    }
}

/// Serve `/metrics` on `listener` until `shutdown` flips to true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = axum::Router::new().route("/metrics", get(serve_metrics));
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/metrics` over a real socket, in both formats; Prometheus' linter
    /// (Debian's prometheus package) accepts the classic one.
    #[tokio::test]
    async fn the_endpoint_serves_what_was_observed_in_both_formats() {
        let m = metrics();
        m.observe_pass(Duration::from_millis(3), true, 4, 7);
        m.observe_pass(Duration::from_millis(5), false, 5, 8);
        m.observe_guest_states(["running", "pending", "running", "paused"]);
        // The paused guest was deleted and the pending one started.
        m.observe_guest_states(["running", "running", "running"]);
        m.observe_generation(7);
        m.observe_heartbeat(true);
        m.observe_heartbeat(false);
        m.observe_relay_refusal("poll_tasks");
        m.watch_relay_queue(|| 3);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(serve(listener, stopped));

        let (content_type, classic) = http_get(addr, "*/*").await;
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        for line in [
            "measurelab_agent_reconcile_passes_total{converged=\"true\"} 1",
            "measurelab_agent_reconcile_passes_total{converged=\"false\"} 1",
            "measurelab_agent_reconcile_pass_duration_seconds_count 2",
            "measurelab_agent_heartbeats_total{outcome=\"ok\"} 1",
            "measurelab_agent_heartbeats_total{outcome=\"failed\"} 1",
            "measurelab_agent_desired_vms 5",
            "measurelab_agent_guests{state=\"running\"} 3",
            "measurelab_agent_guests{state=\"pending\"} 0",
            "measurelab_agent_guests{state=\"paused\"} 0",
            "measurelab_agent_desired_generation 8",
            "measurelab_agent_observed_generation 7",
            "measurelab_agent_relay_queue_depth 3",
            "measurelab_agent_relay_refused_total{kind=\"poll_tasks\"} 1",
        ] {
            assert!(
                classic.lines().any(|l| l == line),
                "{line} not in:\n{classic}"
            );
        }
        let (content_type, open_metrics) = http_get(addr, "application/openmetrics-text").await;
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{content_type}"
        );
        assert!(open_metrics.ends_with("# EOF\n"), "{open_metrics}");

        if let Err(e) = measurelab_testbed::promtool_check(&classic) {
            panic!("{e:#}");
        }
        stop.send(true).unwrap();
        server.await.unwrap().unwrap();
    }

    /// A real refusal of a real keyed point (an unsigned `send`, as anyone on
    /// the service VLAN could send it) shows on `/metrics` under its reason.
    #[tokio::test]
    async fn a_points_refusal_is_exported_with_its_reason() {
        use std::io::{BufRead, BufReader, Write};
        let point = measurelab_mcast::service::spawn_point(
            "127.0.0.1:0".parse().unwrap(),
            "svc",
            std::net::Ipv4Addr::LOCALHOST,
            Some(Arc::new(measurelab_mcast::auth::KeyRing::default())),
        )
        .unwrap();
        metrics().watch_point(point.counters());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(serve(listener, stopped));
        let (_, before) = http_get(addr, "*/*").await;
        assert!(
            !before.contains("measurelab_agent_point_refused_total{"),
            "{before}"
        );

        let control = point.local_addr();
        let answer = tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(control).unwrap();
            stream
                .write_all(
                    b"{\"op\":\"send\",\"session_id\":1,\"group\":\"239.255.9.9\",\"port\":6999,\
                      \"rate_pps\":100.0,\"packet_size_bytes\":64,\"duration_seconds\":1.0,\"ttl\":1}\n",
                )
                .unwrap();
            let mut answer = String::new();
            BufReader::new(stream).read_line(&mut answer).unwrap();
            answer
        })
        .await
        .unwrap();
        assert!(answer.contains("unauthenticated"), "{answer}");

        let (_, after) = http_get(addr, "*/*").await;
        let line = "measurelab_agent_point_refused_total{reason=\"missing\"} 1";
        assert!(after.lines().any(|l| l == line), "{line} not in:\n{after}");
        if let Err(e) = measurelab_testbed::promtool_check(&after) {
            panic!("{e:#}");
        }
        // Every agent series the Grafana dashboard queries is one this
        // endpoint serves (the controller's test checks the rest).
        let served: std::collections::BTreeSet<&str> = after
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        let queried = measurelab_testbed::dashboard_series().unwrap();
        let agents: Vec<_> = queried
            .iter()
            .filter(|name| name.starts_with("measurelab_agent_"))
            .collect();
        assert!(
            agents
                .iter()
                .any(|n| *n == "measurelab_agent_point_refused_total"),
            "no panel shows the points' refusals: {queried:?}"
        );
        for name in agents {
            assert!(
                served.contains(name.as_str()),
                "the dashboard queries {name}, which the agent's /metrics does not serve: {served:?}"
            );
        }
        stop.send(true).unwrap();
        server.await.unwrap().unwrap();
        tokio::task::spawn_blocking(move || point.stop())
            .await
            .unwrap()
            .unwrap();
    }

    /// A minimal HTTP/1.1 GET (the agent has no HTTP client crate):
    /// (content type, body).
    async fn http_get(addr: std::net::SocketAddr, accept: &str) -> (String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        socket
            .write_all(
                format!(
                    "GET /metrics HTTP/1.1\r\nhost: x\r\naccept: {accept}\r\nconnection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let mut raw = String::new();
        socket.read_to_string(&mut raw).await.unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let content_type = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-type: ")
                    .map(str::to_string)
            })
            .unwrap_or_default();
        (content_type, body.to_string())
    }
}
