//! Test harness: a real controller on 127.0.0.1:0 with a temp data dir and
//! an injected shutdown future, plus gRPC and HTTP clients.
#![allow(dead_code)]

pub mod db;
pub mod nfcapd;
pub mod sockets;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use measurelab_api::http::{EventList, Node, NodeList};
use measurelab_api::node_v1::node_service_client::NodeServiceClient;
use measurelab_api::node_v1::{
    Capabilities, DesiredState, DesiredStateRequest, HeartbeatRequest, RegisterRequest,
    RegisterResponse, ResourceUsage,
};
use measurelab_controller::{run, ControllerConfig, ControllerError};
use tonic::transport::Channel;

pub struct TestController {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub data_dir: PathBuf,
    pub admin_token: String,
    pub join_token: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), ControllerError>>>,
}

impl TestController {
    /// Start a controller on `data_dir` (reused across restarts).
    pub async fn start(data_dir: &Path, offline_after: Duration) -> TestController {
        Self::start_with(data_dir, |config| config.offline_after = offline_after).await
    }

    /// Shut down through the injected future and wait until the store is closed.
    pub async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.take().unwrap().await.unwrap().unwrap();
    }

    pub async fn grpc(&self) -> NodeServiceClient<Channel> {
        NodeServiceClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap()
    }

    /// A controller with the harness's defaults on a fresh data dir, which
    /// lives as long as the returned guard.
    pub async fn fresh() -> (tempfile::TempDir, TestController) {
        let dir = tempfile::tempdir().unwrap();
        let controller = TestController::start_with(dir.path(), |_| {}).await;
        (dir, controller)
    }

    /// A controller on a fresh data dir with node n1 registered and
    /// platform p on it, where most VM tests begin.
    pub async fn with_platform_p_on_n1() -> (tempfile::TempDir, TestController, RegisterResponse) {
        let (dir, controller) = TestController::fresh().await;
        let n1 = controller.register("n1", "").await;
        controller.create_platform("p", &["n1"]).await;
        (dir, controller, n1)
    }

    /// The desired state of `node`, asked for with its credentials.
    pub async fn desired_state(&self, node: &RegisterResponse) -> DesiredState {
        self.grpc()
            .await
            .get_desired_state(DesiredStateRequest {
                node_id: node.node_id.clone(),
                node_secret: node.node_secret.clone(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let response = reqwest::Client::new()
            .get(self.url(path))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    pub async fn nodes(&self) -> Vec<Node> {
        self.get_json::<NodeList>("/v1/nodes").await.nodes
    }

    pub async fn node(&self, name: &str) -> Node {
        self.get_json(&format!("/v1/nodes/{name}")).await
    }

    pub async fn events(&self) -> EventList {
        self.get_json("/v1/events?limit=1000").await
    }

    pub async fn register(&self, name: &str, node_id: &str) -> RegisterResponse {
        self.grpc()
            .await
            .register(register_request(&self.join_token, name, node_id))
            .await
            .unwrap()
            .into_inner()
    }

    /// Poll until `check` holds for the node list, or fail after 10 s.
    pub async fn wait_for(&self, what: &str, check: impl Fn(&[Node]) -> bool) -> Vec<Node> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let nodes = self.nodes().await;
            if check(&nodes) {
                return nodes;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {nodes:#?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for TestController {
    fn drop(&mut self) {
        // A failed test must not leave the controller running in the runtime.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

pub fn register_request(join_token: &str, name: &str, node_id: &str) -> RegisterRequest {
    RegisterRequest {
        join_token: join_token.into(),
        name: name.into(),
        node_id: node_id.into(),
        agent_version: "test-1".into(),
        capabilities: Some(Capabilities {
            libvirt_uris: vec!["test:///default".into()],
            namespace_backend: true,
            ..Default::default()
        }),
        usage: Some(usage()),
        labels: [("rack".to_string(), "r1".to_string())].into(),
        management_address: "10.254.0.11".into(),
        node_secret: String::new(),
        csr_pem: String::new(),
    }
}

pub fn usage() -> ResourceUsage {
    ResourceUsage {
        cpu_count: 2,
        cpu_used_percent: 12.5,
        memory_total_bytes: 4 << 30,
        memory_used_bytes: 1 << 30,
        ..Default::default()
    }
}

/// Heartbeats from `node` every 100 ms through `grpc` until the task is
/// aborted: 15 of them inside the tests' 1.5 s deadline, so a loaded
/// machine stalling the test for a few hundred ms cannot make it flap.
pub fn keep_beating(
    mut grpc: NodeServiceClient<Channel>,
    node: RegisterResponse,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for sequence in 1.. {
            grpc.heartbeat(heartbeat_request(&node, sequence))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// A node heartbeating in the background while a test loads the
/// controller; a failed heartbeat fails the test.
pub struct Heartbeats {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Duration>,
}

impl Heartbeats {
    /// Heartbeats `registered` through `grpc` every `interval`.
    pub fn start(
        mut grpc: NodeServiceClient<Channel>,
        registered: RegisterResponse,
        interval: Duration,
    ) -> Heartbeats {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            let mut ticks = tokio::time::interval(interval);
            for sequence in 1.. {
                if *stopped.borrow() {
                    break;
                }
                ticks.tick().await;
                let started = Instant::now();
                grpc.heartbeat(heartbeat_request(&registered, sequence))
                    .await
                    .unwrap();
                slowest = slowest.max(started.elapsed());
            }
            slowest
        });
        Heartbeats { stop, task }
    }

    /// Stops the heartbeats; the slowest one's answer time.
    pub async fn stop(self) -> Duration {
        self.stop.send(true).unwrap();
        self.task.await.unwrap()
    }

    /// Stops the heartbeats and asserts each was answered within a second.
    pub async fn stop_all_answered_within_a_second(self) {
        let slowest = self.stop().await;
        assert!(
            slowest < Duration::from_secs(1),
            "slowest heartbeat {slowest:?}"
        );
    }
}

pub fn heartbeat_request(registered: &RegisterResponse, sequence: u64) -> HeartbeatRequest {
    HeartbeatRequest {
        node_id: registered.node_id.clone(),
        node_secret: registered.node_secret.clone(),
        sequence,
        agent_version: "test-2".into(),
        capabilities: Some(Capabilities {
            libvirt_uris: vec!["test:///default".into(), "qemu:///system".into()],
            namespace_backend: true,
            ovs_datapath_types: vec!["netdev".into()],
            ..Default::default()
        }),
        usage: Some(usage()),
        observed_generation: 0,
    }
}

impl TestController {
    /// Start with a configuration tweak (pools, intervals).
    pub async fn start_with(
        data_dir: &Path,
        tweak: impl FnOnce(&mut ControllerConfig),
    ) -> TestController {
        let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let grpc = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let http_addr = http.local_addr().unwrap();
        let grpc_addr = grpc.local_addr().unwrap();
        let mut config = ControllerConfig::new(data_dir, http, grpc);
        config.store_url = measurelab_testbed::pg::store_for(data_dir).unwrap();
        config.heartbeat_interval = Duration::from_secs(1);
        config.offline_after = Duration::from_secs(60);
        tweak(&mut config);
        let given_join_token = config.join_token.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(config, async move {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(r) = client
                .get(format!("http://{http_addr}/healthz"))
                .send()
                .await
            {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "controller did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let read = |name: &str| {
            std::fs::read_to_string(data_dir.join(name))
                .unwrap()
                .trim()
                .to_string()
        };
        TestController {
            http: http_addr,
            grpc: grpc_addr,
            data_dir: data_dir.to_path_buf(),
            admin_token: read("admin.token"),
            join_token: given_join_token.unwrap_or_else(|| read("join.token")),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A replica: a controller on the database `store_url` that other
    /// controllers share, with `tweak` applied last.
    pub async fn start_replica(
        data_dir: &Path,
        store_url: &str,
        tweak: impl FnOnce(&mut ControllerConfig),
    ) -> TestController {
        Self::start_with(data_dir, |config| {
            config.store_url = Some(store_url.to_string());
            tweak(config);
        })
        .await
    }

    /// The text of `/metrics`, scraped with the admin token.
    pub async fn metrics_text(&self) -> String {
        reqwest::Client::new()
            .get(self.url("/metrics"))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Send a request with an optional JSON body; returns status and JSON body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        self.call_as(&self.admin_token, method, path, body).await
    }

    /// Run the admin page's script under Node against this controller with
    /// `token` (tests/ui/harness.js) and return what it rendered.
    pub async fn render_admin_page(&self, token: &str) -> serde_json::Value {
        self.render_admin_page_after_clicks(token, &[]).await
    }

    /// The admin page rendered, then after a click on each element id in turn.
    pub async fn render_admin_page_after_clicks(
        &self,
        token: &str,
        clicks: &[&str],
    ) -> serde_json::Value {
        let clicks: Vec<String> = clicks.iter().map(|id| id.to_string()).collect();
        let page = reqwest::get(self.url("/"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let script = &page[page.find("<script>").unwrap() + 8..page.find("</script>").unwrap()];
        let script_dir = tempfile::tempdir().unwrap();
        let script_path = script_dir.path().join("page.js");
        std::fs::write(&script_path, script).unwrap();
        let harness = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ui/harness.js");
        let base = format!("http://{}", self.http);
        let token = token.to_string();
        // Blocking wait off the runtime thread: the controller serves the page's calls meanwhile.
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new("node")
                .arg(harness)
                .arg(&script_path)
                .arg(base)
                .arg(token)
                .args(clicks)
                .output()
        })
        .await
        .unwrap()
        .expect("node (apt package nodejs) runs the page script");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// A request with `token` (a tenant's, say) instead of the admin token.
    pub async fn call_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut request = reqwest::Client::new()
            .request(method, self.url(path))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let value = if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
        };
        (status, value)
    }

    /// A tenant (created unless it exists) and a token of `role` in it;
    /// returns the bearer secret.
    pub async fn tenant_token(&self, tenant: &str, name: &str, role: &str) -> String {
        let (status, _) = self
            .call(reqwest::Method::GET, &format!("/v1/tenants/{tenant}"), None)
            .await;
        if status == 404 {
            let (status, body) = self
                .call(
                    reqwest::Method::POST,
                    "/v1/tenants",
                    Some(serde_json::json!({"name": tenant})),
                )
                .await;
            assert_eq!(status, 201, "{body}");
        }
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/v1/tokens",
                Some(serde_json::json!({"name": name, "role": role, "tenant": tenant})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["secret"].as_str().unwrap().to_string()
    }

    /// POST `body` to `path` as the admin; panics unless it is created
    /// (201). The created object as answered.
    pub async fn create(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        self.create_as(&self.admin_token, path, body).await
    }

    /// [`Self::create`] with `token` (a tenant's, say).
    pub async fn create_as(
        &self,
        token: &str,
        path: &str,
        body: serde_json::Value,
    ) -> serde_json::Value {
        self.expect_as(token, reqwest::Method::POST, path, Some(body), 201)
            .await
    }

    /// [`Self::call`], panicking unless the answer has `status`; the body.
    pub async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
        status: u16,
    ) -> serde_json::Value {
        self.expect_as(&self.admin_token, method, path, body, status)
            .await
    }

    /// [`Self::call_as`], panicking unless the answer has `status`; the body.
    pub async fn expect_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
        status: u16,
    ) -> serde_json::Value {
        let (got, answer) = self.call_as(token, method.clone(), path, body).await;
        assert_eq!(got, status, "{method} {path}: {answer}");
        answer
    }

    /// A platform over `nodes`; panics unless it is created.
    pub async fn create_platform(&self, name: &str, nodes: &[&str]) {
        self.create(
            "/v1/platforms",
            serde_json::json!({"name": name, "nodes": nodes}),
        )
        .await;
    }

    /// A running namespace VM; panics unless it is created.
    pub async fn create_vm(&self, name: &str, platform: &str, node: &str) {
        self.create(
            "/v1/vms",
            serde_json::json!({"name": name, "platform": platform, "node": node,
                "vcpus": 1, "memory_mib": 64, "appliance": "namespace",
                "power_state": "running"}),
        )
        .await;
    }

    /// The typed public API client.
    pub fn client(&self) -> measurelab_api::client::Client {
        measurelab_api::client::Client::new(
            &format!("http://{}", self.http),
            &self.admin_token,
            None,
        )
        .unwrap()
    }
}

/// One receiver that reported: `loss` of `packets_sent` lost, a median
/// one-way delay of `delay_us` and an RFC 3550 jitter of `jitter_us`. The
/// other delay figures are distinct multiples of these, so a test can tell
/// the columns apart.
pub fn reporting_receiver(
    point: &str,
    packets_sent: u64,
    loss: f64,
    delay_us: f64,
    jitter_us: f64,
) -> measurelab_api::result::ReceiverResult {
    use measurelab_api::result::{
        ClockSync, DelaySummaryUs, IpdvSummaryUs, ReceiverMetrics, ReceiverResult, ReceiverStatus,
        SentSource, TimestampSource,
    };
    let lost = (packets_sent as f64 * loss).round() as u64;
    ReceiverResult {
        point: point.to_string(),
        status: ReceiverStatus::Ok,
        error: None,
        timestamp_source: Some(TimestampSource::Kernel),
        clock_sync: Some(ClockSync::ExternalBound),
        clock_error_bound_us: Some(50.0),
        foreign_session_packets: Some(0),
        malformed_packets: Some(0),
        metrics: Some(ReceiverMetrics {
            packets_sent,
            sent_source: SentSource::SenderReport,
            packets_received: packets_sent - lost,
            packets_lost: lost,
            packets_duplicated: 0,
            packets_reordered: 1,
            packets_beyond_duplicate_window: 0,
            packets_unexpected: 0,
            loss_ratio: Some(loss),
            duplicate_fraction: Some(0.0),
            replicated_packet_rate: Some(0.0),
            reordered_ratio: Some(0.0),
            one_way_delay_us: Some(DelaySummaryUs {
                min: delay_us / 2.0,
                median: delay_us,
                mean: delay_us + delay_us / 10.0,
                p95: delay_us * 2.0,
                p99: delay_us * 2.0,
                max: delay_us * 2.5,
            }),
            ipdv_us: Some(IpdvSummaryUs {
                pairs: packets_sent - lost - 1,
                mean_abs: jitter_us + jitter_us / 5.0,
                p95_abs: jitter_us * 3.0,
                max_abs: jitter_us * 4.0,
                mean: 0.0,
            }),
            pdv_us: Some(delay_us * 1.5),
            jitter_us: Some(jitter_us),
            quantiles_exact: true,
        }),
        receipts: None,
    }
}

/// A complete result document (the controller refuses a partial one) of the
/// run of `task_id` started at `started_at`; the run id derives from the
/// start, so posting it twice is a repeat.
pub fn result_document(
    task_id: Option<&str>,
    started_at: &str,
    receivers: Vec<measurelab_api::result::ReceiverResult>,
) -> serde_json::Value {
    use measurelab_api::result::{
        ResultDocument, ResultSchema, RunConfig, RunKind, RunStatus, SourceResult,
    };
    let document = ResultDocument {
        schema: ResultSchema::V1,
        task_id: task_id.map(str::to_string),
        run_id: format!("run-{started_at}"),
        kind: RunKind::Task,
        source_point: "mscs".into(),
        group: std::net::Ipv4Addr::new(239, 1, 2, 3),
        port: 5000,
        session_id: 7,
        started_at: started_at.to_string(),
        finished_at: started_at.to_string(),
        status: RunStatus::Ok,
        config: RunConfig {
            rate_pps: 100.0,
            packet_size_bytes: 200,
            duration_seconds: 5.0,
            ttl: 4,
            ssm: false,
        },
        source: SourceResult {
            point: "mscs".into(),
            data_addr: None,
            report: None,
            error: None,
        },
        receivers,
        delay_covariances: Vec::new(),
        tree: None,
        inference: None,
        bottlenecks: Vec::new(),
        comparison: None,
    };
    serde_json::to_value(document).unwrap()
}

/// A multicast task body on `platform` (its VMs `mscs` and `point`, as
/// [`result_document`] names them).
pub fn task_body(name: &str, platform: &str, schedule: &str) -> serde_json::Value {
    let mut body = serde_json::json!({"name": name, "mode": "platform", "platform": platform,
                          "schedule": schedule, "duration_seconds": 5, "rate_pps": 100,
                          "packet_size_bytes": 200, "group": "239.1.2.3", "port": 5000, "ttl": 4});
    if schedule == "periodic" {
        body["interval_seconds"] = serde_json::json!(60);
    }
    body
}

/// `PUT /v1/appliance_files/{digest}` with `content` as `token`.
pub async fn upload_appliance_file(
    controller: &TestController,
    token: &str,
    digest: &str,
    content: &[u8],
) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .put(controller.url(&format!("/v1/appliance_files/{digest}")))
        .bearer_auth(token)
        .header("content-type", "application/octet-stream")
        .body(content.to_vec())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}
