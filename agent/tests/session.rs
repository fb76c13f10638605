//! The agent against a real controller in this process: registration,
//! persisted identity, restarts on both sides, and a controller that forgot
//! the node. Loopback only; no root needed.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use measurelab_agent::AgentConfig;
use measurelab_api::http::{Node, NodeStatus};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const JOIN_TOKEN: &str = "session-test-token";

struct Controller {
    http: SocketAddr,
    admin_token: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), measurelab_controller::ControllerError>>,
}

impl Controller {
    /// Start a controller on `data_dir`, serving gRPC on `grpc` (0 = any port).
    async fn start(data_dir: &Path, grpc: SocketAddr) -> Controller {
        Controller::start_as(data_dir, grpc, None).await
    }

    /// [`Controller::start`], judging agents as a controller of `version`
    /// would (default: this build's).
    async fn start_as(data_dir: &Path, grpc: SocketAddr, version: Option<&str>) -> Controller {
        let http_listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let grpc_listener = TcpListener::bind(grpc).unwrap();
        let http = http_listener.local_addr().unwrap();
        let mut config =
            measurelab_controller::ControllerConfig::new(data_dir, http_listener, grpc_listener);
        config.heartbeat_interval = Duration::from_secs(1);
        config.offline_after = Duration::from_secs(3);
        config.join_token = Some(JOIN_TOKEN.into());
        if let Some(version) = version {
            config.version = version.parse().unwrap();
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(measurelab_controller::run(config, async move {
            let _ = stopped.await;
        }));
        let admin_token = wait_for("admin token", Duration::from_secs(10), || {
            std::fs::read_to_string(data_dir.join("admin.token"))
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        })
        .await;
        Controller {
            http,
            admin_token,
            stop,
            task,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }

    async fn nodes(&self) -> Vec<Node> {
        let client = measurelab_api::client::Client::new(
            &format!("http://{}", self.http),
            &self.admin_token,
            None,
        )
        .unwrap();
        client.list_nodes().await.unwrap_or_default()
    }

    /// Wait until `name` is online with a heartbeat; return it.
    async fn online(&self, name: &str, deadline: Duration) -> Node {
        let start = Instant::now();
        loop {
            if let Some(node) = self.nodes().await.into_iter().find(|n| {
                n.name == name && n.status == NodeStatus::Online && n.last_heartbeat.is_some()
            }) {
                return node;
            }
            assert!(
                start.elapsed() < deadline,
                "{name} not online within {deadline:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

struct Agent {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), measurelab_agent::AgentError>>,
}

impl Agent {
    fn start(name: &str, grpc: SocketAddr, state_dir: &Path) -> Agent {
        Agent::start_at(name, &format!("http://{grpc}"), state_dir)
    }

    /// An agent given `controller` as is (one endpoint or a comma list).
    fn start_at(name: &str, controller: &str, state_dir: &Path) -> Agent {
        let mut config = AgentConfig::new(name, controller, JOIN_TOKEN, state_dir.to_path_buf());
        // Only the test driver: keeps the probe fast and independent of
        // whatever hypervisors this machine runs.
        config.libvirt_uris = vec!["test:///default".into()];
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(measurelab_agent::run(config, async move {
            let _ = stopped.await;
        }));
        Agent { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("agent did not stop on its shutdown future")
            .unwrap()
            .unwrap();
    }
}

async fn wait_for<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn identity(state_dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(state_dir.join("identity.json")).unwrap())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_is_the_same_node() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let grpc = free_port();
    let controller = Controller::start(data.path(), grpc).await;

    let agent = Agent::start("a1", grpc, state.path());
    let first = controller.online("a1", Duration::from_secs(10)).await;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(state.path().join("identity.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "identity.json holds a secret");
    assert_eq!(identity(state.path())["node_id"], first.id);
    assert_eq!(first.capabilities.libvirt_uris, vec!["test:///default"]);
    agent.stop().await;

    let agent = Agent::start("a1", grpc, state.path());
    // A fresh heartbeat after the restart, from the same node.
    let before = first.last_heartbeat.clone();
    let again = loop {
        let node = controller.online("a1", Duration::from_secs(10)).await;
        if node.last_heartbeat != before {
            break node;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(again.id, first.id);
    assert_eq!(controller.nodes().await.len(), 1);
    agent.stop().await;
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_started_before_the_controller_joins_once_it_is_up() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let grpc = free_port();
    // Until the controller is up, its port hangs up on every connection,
    // which counts the agent's attempts: after several failed ones the agent
    // must still be trying, not have exited.
    let hang_up = TcpListener::bind(grpc).unwrap();
    let agent = Agent::start("early", grpc, state.path());
    let attempts = tokio::task::spawn_blocking(move || {
        for _ in 0..3 {
            drop(hang_up.accept().unwrap());
        }
    });
    tokio::time::timeout(Duration::from_secs(30), attempts)
        .await
        .expect("the agent did not try the controller 3 times within 30 s")
        .unwrap();
    assert!(
        !agent.task.is_finished(),
        "agent gave up without a controller"
    );
    let controller = Controller::start(data.path(), grpc).await;
    // Backoff is capped at the default 5 s interval before the controller
    // has told the agent its own.
    controller.online("early", Duration::from_secs(10)).await;
    agent.stop().await;
    controller.stop().await;
}

/// `measurelab_grpc_requests_total{rpc="Register"}` of `controller`.
async fn register_calls(controller: &Controller) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // HTTP/1.0, so the answer is not chunked and each line arrives whole.
    let mut stream = tokio::net::TcpStream::connect(controller.http)
        .await
        .unwrap();
    let request = format!(
        "GET /metrics HTTP/1.0\r\nAuthorization: Bearer {}\r\n\r\n",
        controller.admin_token
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("measurelab_grpc_requests_total{rpc=\"Register\"} "))
        .map_or(0, |count| count.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_older_than_its_controller_serves_backs_off_until_one_serves_it() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let grpc = free_port();
    // Two minors ahead of this agent: its Register is refused with
    // FAILED_PRECONDITION (docs/version-skew.md).
    let ours: measurelab_controller::version_policy::Version =
        env!("CARGO_PKG_VERSION").parse().unwrap();
    let ahead = format!("{}.{}.0", ours.major, ours.minor + 2);
    let controller = Controller::start_as(data.path(), grpc, Some(&ahead)).await;
    let started = Instant::now();
    let agent = Agent::start("behind", grpc, state.path());
    let deadline = Instant::now() + Duration::from_secs(20);
    while register_calls(&controller).await < 4 {
        assert!(Instant::now() < deadline, "the agent stopped asking");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The refusal backoff (250 ms, doubling, at most 20 % shorter with
    // jitter) lies between the first and the fourth call: 1.4 s at least.
    // A hot loop makes four calls in milliseconds.
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "4 registrations within {:?}",
        started.elapsed()
    );
    assert!(
        controller.nodes().await.is_empty(),
        "a refused agent left a node"
    );
    assert!(!agent.task.is_finished(), "the refused agent gave up");
    controller.stop().await;
    let controller = Controller::start(data.path(), grpc).await;
    controller.online("behind", Duration::from_secs(40)).await;
    agent.stop().await;
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_registers_again_when_the_controller_forgot_it() {
    let first_data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let grpc = free_port();
    let first = Controller::start(first_data.path(), grpc).await;
    let agent = Agent::start("amnesia", grpc, state.path());
    first.online("amnesia", Duration::from_secs(10)).await;
    let old_secret = identity(state.path())["node_secret"].clone();
    first.stop().await;

    // A controller with an empty store on the same address: the agent's
    // heartbeat is refused as unknown and it must register again by name.
    let second_data = tempfile::tempdir().unwrap();
    let second = Controller::start(second_data.path(), grpc).await;
    let node = second.online("amnesia", Duration::from_secs(10)).await;
    let stored = identity(state.path());
    assert_eq!(stored["node_id"], node.id);
    assert_ne!(
        stored["node_secret"], old_secret,
        "new credentials persisted"
    );
    agent.stop().await;
    second.stop().await;
}

/// The agent's side of controller failover (issue 13 §4). A and B are two
/// independent controllers, each with its own SQLite data dir and the same
/// join token: they are NOT replicas and share no state, so B meets the node
/// as a new one and the agent registers there again. What is tested is only
/// the agent's failover: given "A,B" it stays with A while A answers, and
/// is online at B within a bound once A is gone. Plaintext: the in-process
/// harness gives each controller its own CA, and two controllers sharing one
/// CA would need certificates made by the test; CA pinning across several
/// endpoints is covered by tls.rs's single-controller path only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_fails_over_to_the_next_controller() {
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let state = tempfile::tempdir().unwrap();
    let (grpc_a, grpc_b) = (free_port(), free_port());
    let a = Controller::start(data_a.path(), grpc_a).await;
    let b = Controller::start(data_b.path(), grpc_b).await;
    let agent = Agent::start_at(
        "fo",
        &format!("http://{grpc_a},http://{grpc_b}"),
        state.path(),
    );

    let first = a.online("fo", Duration::from_secs(10)).await;
    // Two more heartbeats at A (the interval is 1 s): all of them went to
    // A, none to B, while A answers.
    a.node_where("fo", "a later heartbeat at A", |n| {
        n.last_heartbeat != first.last_heartbeat
    })
    .await;
    assert!(
        b.nodes().await.iter().all(|n| n.name != "fo"),
        "B heard from the agent while A was up"
    );

    a.stop().await;
    // One failed heartbeat (1 s interval), the switch, a registration and a
    // heartbeat at B: well inside 10 s.
    let at_b = b.online("fo", Duration::from_secs(10)).await;
    assert_eq!(identity(state.path())["node_id"], at_b.id);
    // And it stays there: heartbeats keep arriving at B.
    b.node_where("fo", "a later heartbeat at B", |n| {
        n.last_heartbeat != at_b.last_heartbeat && n.status == NodeStatus::Online
    })
    .await;
    agent.stop().await;
    b.stop().await;
}

/// An agent whose first controller never answers joins the next one: a dead
/// entry at the head of the list costs one failed attempt, not the join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_whose_first_controller_is_down_joins_the_next() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    // Nothing listens there: connections are refused.
    let dead = free_port();
    let grpc = free_port();
    let controller = Controller::start(data.path(), grpc).await;
    let agent = Agent::start_at(
        "late",
        &format!("http://{dead},http://{grpc}"),
        state.path(),
    );
    controller.online("late", Duration::from_secs(10)).await;
    agent.stop().await;
    controller.stop().await;
}

/// Why the agent keeps one controller endpoint in its balance channel at a
/// time instead of all of them: with a dead endpoint and a live one in
/// tonic's balance channel (lazy connections, a connect timeout set),
/// tower's p2c balancer still routes some requests to the dead one and they
/// fail, rather than waiting for or skipping it. If a tonic upgrade changes
/// that, this fails, and balancing over all endpoints becomes an option.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balance_channel_keeps_routing_to_a_dead_endpoint() {
    use measurelab_api::node_v1::node_service_client::NodeServiceClient;
    use measurelab_api::node_v1::RegisterRequest;
    use tonic::transport::{Channel, Endpoint};

    let data = tempfile::tempdir().unwrap();
    let grpc = free_port();
    let controller = Controller::start(data.path(), grpc).await;
    let dead = free_port();
    let (channel, changes) = Channel::balance_channel(4);
    for (key, addr) in [(0, dead), (1, grpc)] {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10));
        changes
            .send(tower_04::discover::Change::Insert(key, endpoint))
            .await
            .unwrap();
    }
    let mut client = NodeServiceClient::new(channel);
    let (mut unavailable, mut answered) = (0, 0);
    for _ in 0..40 {
        // A wrong join token: the live controller answers Unauthenticated.
        let request = RegisterRequest {
            join_token: "wrong".into(),
            name: "probe".into(),
            ..Default::default()
        };
        match client.register(request).await {
            Err(status) if status.code() == tonic::Code::Unavailable => unavailable += 1,
            Err(status) if status.code() == tonic::Code::Unauthenticated => answered += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(answered > 0, "the live controller never answered");
    assert!(
        unavailable > 0,
        "p2c skipped the dead endpoint in all {answered} requests"
    );
    controller.stop().await;
}

impl Controller {
    fn client(&self) -> measurelab_api::client::Client {
        measurelab_api::client::Client::new(
            &format!("http://{}", self.http),
            &self.admin_token,
            None,
        )
        .unwrap()
    }

    /// Poll `check` on the node `name` until it holds; return the node.
    async fn node_where(&self, name: &str, what: &str, check: impl Fn(&Node) -> bool) -> Node {
        let start = Instant::now();
        loop {
            if let Some(node) = self
                .nodes()
                .await
                .into_iter()
                .find(|n| n.name == name && check(n))
            {
                return node;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{name}: timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_token_alone_cannot_take_over_a_running_agent() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let grpc = free_port();
    let controller = Controller::start(data.path(), grpc).await;
    let agent = Agent::start("a1", grpc, state.path());
    let before = controller.online("a1", Duration::from_secs(10)).await;
    let identity_before = identity(state.path());

    let mut intruder = measurelab_api::node_v1::node_service_client::NodeServiceClient::connect(
        format!("http://{grpc}"),
    )
    .await
    .unwrap();
    for node_id in [String::new(), before.id.clone()] {
        let status = intruder
            .register(measurelab_api::node_v1::RegisterRequest {
                join_token: JOIN_TOKEN.into(),
                name: "a1".into(),
                node_id,
                agent_version: "intruder".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    }

    // The real agent keeps heartbeating with the secret it holds.
    let after = controller
        .node_where("a1", "a heartbeat after the attempts", |n| {
            n.status == NodeStatus::Online && n.last_heartbeat > before.last_heartbeat
        })
        .await;
    assert_eq!(after.id, before.id);
    assert_eq!(
        after.agent_version, before.agent_version,
        "not the intruder's"
    );
    assert_eq!(identity(state.path()), identity_before, "secret unchanged");
    let requests = controller.client().registration_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].attempts, 2);
    agent.stop().await;
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_agent_is_shut_out_until_an_operator_approves_it() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let grpc = free_port();
    let controller = Controller::start(data.path(), grpc).await;
    let agent = Agent::start("r1", grpc, state.path());
    controller.online("r1", Duration::from_secs(10)).await;
    let secret_before = identity(state.path())["node_secret"].clone();

    let revoked = controller.client().revoke_node("r1").await.unwrap();
    assert_eq!(revoked.status, NodeStatus::Revoked);
    // The agent's heartbeat is refused; it tries to register again with its
    // secret and is refused too, which files a request for approval.
    let start = Instant::now();
    let request = loop {
        let requests = controller.client().registration_requests().await.unwrap();
        if let Some(request) = requests.into_iter().find(|r| r.name == "r1") {
            break request;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the revoked agent never asked to register again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(request.reason, "revoked");
    let still = controller
        .nodes()
        .await
        .into_iter()
        .find(|n| n.name == "r1")
        .unwrap();
    assert_eq!(still.status, NodeStatus::Revoked);
    assert_eq!(identity(state.path())["node_secret"], secret_before);

    controller.client().approve_node("r1").await.unwrap();
    // The agent persists its new secret just after the controller answers.
    wait_for(
        "the approved registration's new secret in identity.json",
        Duration::from_secs(30),
        || (identity(state.path())["node_secret"] != secret_before).then_some(()),
    )
    .await;
    controller
        .node_where("r1", "online after approval", |n| {
            n.status == NodeStatus::Online
        })
        .await;
    agent.stop().await;
    controller.stop().await;
}

/// Counts PostResult calls of the real gRPC control plane.
struct Counting {
    inner: measurelab_agent::reconcile::GrpcControlPlane,
    posts: std::sync::atomic::AtomicU32,
}

#[async_trait::async_trait]
impl measurelab_agent::reconcile::ControlPlane for Counting {
    async fn desired_state(
        &self,
    ) -> Result<measurelab_api::node_v1::DesiredState, measurelab_agent::reconcile::ReconcileError>
    {
        self.inner.desired_state().await
    }
    async fn report_status(
        &self,
        report: measurelab_api::node_v1::StatusReport,
    ) -> Result<measurelab_api::node_v1::StatusAck, measurelab_agent::reconcile::ReconcileError>
    {
        self.inner.report_status(report).await
    }
    async fn fetch_program(
        &self,
        program_id: &str,
    ) -> Result<measurelab_api::node_v1::ProgramBlob, measurelab_agent::reconcile::ReconcileError>
    {
        self.inner.fetch_program(program_id).await
    }
    async fn post_result(
        &self,
        vm_id: &str,
        task_id: &str,
        document_json: String,
    ) -> Result<String, measurelab_agent::reconcile::ReconcileError> {
        self.posts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.post_result(vm_id, task_id, document_json).await
    }
    async fn poll_tasks(
        &self,
        vm_id: &str,
    ) -> Result<Vec<String>, measurelab_agent::reconcile::ReconcileError> {
        self.inner.poll_tasks(vm_id).await
    }
}

fn run_document(run_id: &str) -> String {
    use measurelab_api::result::{
        ResultDocument, ResultSchema, RunConfig, RunKind, RunStatus, SourceResult,
    };
    let document = ResultDocument {
        schema: ResultSchema::V1,
        task_id: None,
        run_id: run_id.into(),
        kind: RunKind::Task,
        source_point: "mscs".into(),
        group: std::net::Ipv4Addr::new(239, 1, 2, 3),
        port: 5000,
        session_id: 7,
        started_at: "2026-01-01T10:00:00Z".into(),
        finished_at: "2026-01-01T10:00:05Z".into(),
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
        receivers: Vec::new(),
        delay_covariances: Vec::new(),
        tree: None,
        inference: None,
        bottlenecks: Vec::new(),
        comparison: None,
    };
    serde_json::to_string(&document).unwrap()
}

/// The real controller stopped (the in-process equivalent of SIGSTOP: it
/// serves nothing) while a guest's result is spooled, for longer than the
/// old relay's 8 attempts; then back on the same data dir and port. The
/// spool posts it through the agent's gRPC control plane, and the run is in
/// the controller once - also when the same run was spooled twice (a guest
/// that posted again after a lost answer).
///
/// The window: the spool's backoff is 10-50 ms here, and the controller
/// stays down until the spool has made more than 8 attempts and at least
/// 2 s passed, which is past the point where the old relay dropped the
/// result, in seconds instead of minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spooled_result_reaches_a_restarted_controller_exactly_once() {
    use measurelab_agent::reconcile::{GrpcControlPlane, ResultSpool, SpoolSettings};
    use measurelab_api::node_v1::node_service_client::NodeServiceClient;
    use std::sync::atomic::Ordering;

    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let grpc = free_port();
    let controller = Controller::start(data.path(), grpc).await;
    let endpoint = format!("http://{grpc}");
    let mut raw = NodeServiceClient::connect(endpoint.clone()).await.unwrap();
    let registered = raw
        .register(measurelab_api::node_v1::RegisterRequest {
            join_token: JOIN_TOKEN.into(),
            name: "r1".into(),
            agent_version: "test".into(),
            capabilities: Some(measurelab_api::node_v1::Capabilities {
                namespace_backend: true,
                ..Default::default()
            }),
            usage: Some(measurelab_api::node_v1::ResourceUsage {
                cpu_count: 2,
                memory_total_bytes: 4 << 30,
                memory_used_bytes: 1 << 30,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let client = measurelab_api::client::Client::new(
        &format!("http://{}", controller.http),
        &controller.admin_token,
        None,
    )
    .unwrap();
    client
        .create_platform(
            &serde_json::from_value(serde_json::json!({"name": "p", "nodes": ["r1"]})).unwrap(),
        )
        .await
        .unwrap();
    let vm = client
        .create_vm(
            &serde_json::from_value(serde_json::json!({"name": "mscs", "platform": "p",
                "node": "r1", "vcpus": 1, "memory_mib": 64, "appliance": "namespace",
                "power_state": "running"}))
            .unwrap(),
        )
        .await
        .unwrap();
    let task = client
        .create_task(
            &serde_json::from_value(serde_json::json!({"name": "loss", "mode": "platform",
                "platform": "p", "schedule": "periodic", "interval_seconds": 60,
                "duration_seconds": 5, "rate_pps": 100, "packet_size_bytes": 200,
                "group": "239.1.2.3", "port": 5000, "ttl": 4}))
            .unwrap(),
        )
        .await
        .unwrap();

    let channel = tonic::transport::Endpoint::from_shared(endpoint)
        .unwrap()
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2))
        .connect_lazy();
    let (_identity_tx, identity_rx) =
        tokio::sync::watch::channel(Some(measurelab_agent::identity::Identity {
            node_id: registered.node_id.clone(),
            node_secret: registered.node_secret.clone(),
        }));
    let control = std::sync::Arc::new(Counting {
        inner: GrpcControlPlane::new(NodeServiceClient::new(channel), identity_rx),
        posts: Default::default(),
    });

    controller.stop().await;
    let stopped = Instant::now();
    let settings = SpoolSettings {
        retry_initial: Duration::from_millis(10),
        retry_cap: Duration::from_millis(50),
        ..Default::default()
    };
    let spool =
        std::sync::Arc::new(ResultSpool::open(&state.path().join("results"), settings).unwrap());
    let vm_id: uuid::Uuid = vm.id.parse().unwrap();
    spool
        .put(vm_id, &task.id, run_document("run-once"))
        .unwrap();
    spool
        .put(vm_id, &task.id, run_document("run-once"))
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let poster = tokio::spawn(spool.clone().run(control.clone(), stop_rx));
    wait_for(
        "more attempts than the old relay made",
        Duration::from_secs(30),
        || {
            (control.posts.load(Ordering::SeqCst) > 8
                && stopped.elapsed() >= Duration::from_secs(2))
            .then_some(())
        },
    )
    .await;
    assert_eq!(
        spool.len(),
        2,
        "both still spooled while the controller is down"
    );

    let controller = Controller::start(data.path(), grpc).await;
    wait_for("the spool to empty", Duration::from_secs(30), || {
        spool.is_empty().then_some(())
    })
    .await;
    // A new controller, a new HTTP port.
    let client = measurelab_api::client::Client::new(
        &format!("http://{}", controller.http),
        &controller.admin_token,
        None,
    )
    .unwrap();
    let results = client.list_results("task=loss").await.unwrap();
    let runs: Vec<_> = results
        .iter()
        .filter(|r| r.document["run_id"] == "run-once")
        .collect();
    assert_eq!(runs.len(), 1, "the run is stored once: {results:#?}");
    stop_tx.send(true).unwrap();
    poster.await.unwrap();
    controller.stop().await;
}
