//! The agent against a TLS controller: it pins the CA a join bundle names,
//! comes online over mTLS (and stays so across a controller restart),
//! refuses to join when the bundle's fingerprint is not the controller's,
//! renews its certificate before it expires, and registers again when it
//! expired anyway.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use measurelab_agent::AgentConfig;
use measurelab_api::http::{Node, NodeStatus};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const JOIN_TOKEN: &str = "tls-test-token";

struct Controller {
    http: SocketAddr,
    admin_token: String,
    ca_pem: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), measurelab_controller::ControllerError>>,
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

impl Controller {
    async fn start(data_dir: &Path, grpc: SocketAddr) -> Controller {
        Controller::start_with(
            data_dir,
            grpc,
            measurelab_controller::tls::DEFAULT_NODE_CERT_LIFETIME,
        )
        .await
    }

    /// A controller whose node certificates last `node_cert_lifetime`.
    async fn start_with(
        data_dir: &Path,
        grpc: SocketAddr,
        node_cert_lifetime: Duration,
    ) -> Controller {
        let http_listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let grpc_listener = TcpListener::bind(grpc).unwrap();
        let http = http_listener.local_addr().unwrap();
        let mut config =
            measurelab_controller::ControllerConfig::new(data_dir, http_listener, grpc_listener);
        config.heartbeat_interval = Duration::from_secs(1);
        config.offline_after = Duration::from_secs(3);
        config.join_token = Some(JOIN_TOKEN.into());
        let mut tls = measurelab_controller::TlsConfig::generated(Vec::new());
        tls.node_cert_lifetime = node_cert_lifetime;
        config.tls = Some(tls);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(measurelab_controller::run(config, async move {
            let _ = stopped.await;
        }));
        let read = |name: &str| {
            std::fs::read_to_string(data_dir.join(name))
                .ok()
                .filter(|t| !t.trim().is_empty())
        };
        let admin_token = wait_for("admin token", Duration::from_secs(10), || {
            read("admin.token").map(|t| t.trim().to_string())
        })
        .await;
        let ca_pem = wait_for("ca.pem", Duration::from_secs(10), || read("ca.pem")).await;
        Controller {
            http,
            admin_token,
            ca_pem,
            stop,
            task,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }

    fn fingerprint(&self) -> String {
        let der = measurelab_controller::tls::first_cert_der(&self.ca_pem, "ca.pem").unwrap();
        measurelab_controller::tls::fingerprint(&der)
    }

    fn client(&self) -> measurelab_api::client::Client {
        measurelab_api::client::Client::new(
            &format!("https://{}", self.http),
            &self.admin_token,
            Some(self.ca_pem.as_bytes()),
        )
        .unwrap()
    }

    async fn nodes(&self) -> Vec<Node> {
        self.client().list_nodes().await.unwrap_or_default()
    }

    /// Reasons of the events about node `node_id`, oldest first.
    async fn node_events(&self, node_id: &str) -> Vec<String> {
        let events = self.client().events(0).await.unwrap().events;
        events
            .into_iter()
            .filter(|e| e.object_kind == "node" && e.object_id == node_id)
            .map(|e| e.reason)
            .collect()
    }

    /// Wait until `name` is online with a heartbeat other than `after`.
    async fn heartbeat_after(&self, name: &str, after: Option<String>) -> Node {
        let start = Instant::now();
        loop {
            if let Some(node) = self.nodes().await.into_iter().find(|n| {
                n.name == name
                    && n.status == NodeStatus::Online
                    && n.last_heartbeat.is_some()
                    && n.last_heartbeat != after
            }) {
                return node;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{name} sent no new heartbeat"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// (serial, notAfter) of each certificate the controller in `data_dir`
/// issued to `node_id`, oldest first: its `node_certificates` table.
fn issued_certificates(data_dir: &Path, node_id: &str) -> Vec<(String, OffsetDateTime)> {
    let db = rusqlite::Connection::open(data_dir.join("controller.db")).unwrap();
    let mut statement = db
        .prepare(
            "SELECT serial, not_after FROM node_certificates WHERE node_id = ?1 \
             ORDER BY issued_at, rowid",
        )
        .unwrap();
    let rows = statement
        .query_map([node_id], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })
        .unwrap();
    rows.map(|row| {
        let (serial, not_after) = row.unwrap();
        (serial, OffsetDateTime::parse(&not_after, &Rfc3339).unwrap())
    })
    .collect()
}

fn heartbeat_time(node: &Node) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(node.last_heartbeat.as_deref()?, &Rfc3339).ok()
}

/// Until the wall clock has passed `time`.
async fn wait_until(what: &str, time: OffsetDateTime, deadline: Duration) {
    wait_for(what, deadline, || {
        (OffsetDateTime::now_utc() > time).then_some(())
    })
    .await
}

fn agent_config(name: &str, grpc: SocketAddr, state_dir: &Path, pin: &str) -> AgentConfig {
    let mut config = AgentConfig::new(
        name,
        &format!("https://{grpc}"),
        JOIN_TOKEN,
        state_dir.to_path_buf(),
    );
    config.ca_sha256 = Some(pin.to_string());
    config.libvirt_uris = vec!["test:///default".into()];
    config
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_the_bundle_pins_the_ca_and_heartbeats_over_mtls() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let grpc = free_port();
    let controller = Controller::start(data.path(), grpc).await;
    let config = agent_config("t1", grpc, state.path(), &controller.fingerprint());
    let (stop, stopped) = oneshot::channel::<()>();
    let agent = tokio::spawn(measurelab_agent::run(config, async move {
        let _ = stopped.await;
    }));
    let first = controller.heartbeat_after("t1", None).await;
    let pinned = std::fs::read_to_string(
        state
            .path()
            .join(measurelab_agent::controller_tls::CONTROLLER_CA_FILE),
    )
    .unwrap();
    assert_eq!(pinned.trim(), controller.ca_pem.trim());

    // A restarted controller (same CA, same port): the agent reconnects and
    // keeps heartbeating as the same node.
    controller.stop().await;
    let controller = Controller::start(data.path(), grpc).await;
    let again = controller
        .heartbeat_after("t1", first.last_heartbeat.clone())
        .await;
    assert_eq!(again.id, first.id);

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .expect("agent did not stop")
        .unwrap()
        .unwrap();
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_a_wrong_fingerprint_refuses_to_join() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let grpc = free_port();
    let controller = Controller::start(data.path(), grpc).await;
    let config = agent_config("t2", grpc, state.path(), &"0".repeat(64));
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        measurelab_agent::run(config, std::future::pending()),
    )
    .await
    .expect("the agent kept running with a wrong fingerprint");
    let err = result.unwrap_err().to_string();
    assert!(
        err.contains("ca_sha256") && err.contains("refusing to join"),
        "{err}"
    );
    assert!(
        !state
            .path()
            .join(measurelab_agent::controller_tls::CONTROLLER_CA_FILE)
            .exists(),
        "pinned a CA the bundle does not name"
    );
    assert!(controller.nodes().await.is_empty());
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_controller_without_a_pin_is_refused() {
    let state = tempfile::tempdir().unwrap();
    let mut config = AgentConfig::new(
        "t3",
        "https://127.0.0.1:1",
        JOIN_TOKEN,
        state.path().to_path_buf(),
    );
    config.libvirt_uris = vec!["test:///default".into()];
    let err = measurelab_agent::run(config, std::future::pending())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("controller") && err.contains("join-bundle"),
        "{err}"
    );
}

/// Node certificates of 9 s, heartbeats every second: the agent renews two
/// thirds in (about every 6 s), and keeps heartbeating as the same node,
/// never registering again, well past the first certificate's expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_renews_its_certificate_and_heartbeats_past_the_first_ones_expiry() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let grpc = free_port();
    let controller = Controller::start_with(data.path(), grpc, Duration::from_secs(9)).await;
    let config = agent_config("t4", grpc, state.path(), &controller.fingerprint());
    let (stop, stopped) = oneshot::channel::<()>();
    let agent = tokio::spawn(measurelab_agent::run(config, async move {
        let _ = stopped.await;
    }));
    let node = controller.heartbeat_after("t4", None).await;
    let issued = issued_certificates(data.path(), &node.id);
    let (first_serial, first_expiry) = issued.first().cloned().expect("no certificate recorded");

    // A heartbeat well after the first certificate expired (3 s: the
    // controller's offline_after), from a node still online.
    let well_after = first_expiry + Duration::from_secs(3);
    wait_until(
        "the first certificate to expire",
        well_after,
        Duration::from_secs(30),
    )
    .await;
    let start = Instant::now();
    let later = loop {
        let node = controller
            .nodes()
            .await
            .into_iter()
            .find(|n| n.name == "t4")
            .expect("t4 is gone");
        if node.status == NodeStatus::Online && heartbeat_time(&node) > Some(well_after) {
            break node;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no heartbeat from t4 after its first certificate expired: {node:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(later.id, node.id);

    let issued = issued_certificates(data.path(), &node.id);
    assert!(
        issued.len() >= 2 && issued.iter().any(|(serial, _)| *serial != first_serial),
        "no new certificate was issued to t4: {issued:?}"
    );
    // Renewal, not registration, kept it going: a certificate refused
    // after expiry would have sent the agent to register again.
    let events = controller.node_events(&node.id).await;
    assert!(
        events.contains(&"NodeRegistered".to_string())
            && !events.contains(&"NodeReregistered".to_string())
            && !events.contains(&"NodeOffline".to_string()),
        "t4 went offline or registered again instead of renewing: {events:?}"
    );

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .expect("agent did not stop")
        .unwrap()
        .unwrap();
    controller.stop().await;
}

/// The controller is away for longer than the node certificate lasts (as
/// when the node's host was suspended): the agent says its certificate
/// expired and what to do, registers again with its node secret, and comes
/// back online, rather than taking the refused handshakes for an
/// unreachable controller forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_certificate_expired_meanwhile_registers_again_and_says_so() {
    // The agent's log lines reach the controller through this layer, as
    // in the measurelab binary.
    {
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry().with(measurelab_agent::logs::layer());
        tracing::subscriber::set_global_default(subscriber).unwrap();
    }
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let grpc = free_port();
    let lifetime = Duration::from_secs(6);
    let controller = Controller::start_with(data.path(), grpc, lifetime).await;
    let config = agent_config("t5", grpc, state.path(), &controller.fingerprint());
    let (stop, stopped) = oneshot::channel::<()>();
    let agent = tokio::spawn(measurelab_agent::run(config, async move {
        let _ = stopped.await;
    }));
    let before = controller.heartbeat_after("t5", None).await;
    controller.stop().await;
    // Every certificate the node holds has expired before the controller
    // is back.
    let last_expiry = issued_certificates(data.path(), &before.id)
        .into_iter()
        .map(|(_, not_after)| not_after)
        .max()
        .expect("no certificate recorded");
    wait_until(
        "the node certificate to expire",
        last_expiry + Duration::from_secs(1),
        lifetime * 2,
    )
    .await;

    let controller = Controller::start_with(data.path(), grpc, lifetime).await;
    let after = controller
        .heartbeat_after("t5", before.last_heartbeat.clone())
        .await;
    assert_eq!(after.id, before.id, "t5 came back as another node");
    assert!(
        controller
            .node_events(&before.id)
            .await
            .contains(&"NodeReregistered".to_string()),
        "t5 is online without having registered again"
    );
    let client = controller.client();
    let start = Instant::now();
    loop {
        let lines = client.node_logs(&before.id).await.unwrap().lines;
        if let Some(line) = lines
            .iter()
            .find(|l| l.message.contains("node certificate expired at"))
        {
            assert_eq!(line.level, "error", "{line:?}");
            assert!(line.message.contains("join bundle"), "{line:?}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "t5 shipped no line about its expired certificate: {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .expect("agent did not stop")
        .unwrap()
        .unwrap();
    controller.stop().await;
}
