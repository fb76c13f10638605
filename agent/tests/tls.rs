//! The agent against a TLS controller: it pins the CA a join bundle names,
//! comes online over mTLS (and stays so across a controller restart), and
//! refuses to join when the bundle's fingerprint is not the controller's.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use measurelab_agent::AgentConfig;
use measurelab_api::http::{Node, NodeStatus};
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
        let http_listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let grpc_listener = TcpListener::bind(grpc).unwrap();
        let http = http_listener.local_addr().unwrap();
        let mut config =
            measurelab_controller::ControllerConfig::new(data_dir, http_listener, grpc_listener);
        config.heartbeat_interval = Duration::from_secs(1);
        config.offline_after = Duration::from_secs(3);
        config.join_token = Some(JOIN_TOKEN.into());
        config.tls = Some(measurelab_controller::TlsConfig::generated(Vec::new()));
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

    async fn nodes(&self) -> Vec<Node> {
        let client = measurelab_api::client::Client::new(
            &format!("https://{}", self.http),
            &self.admin_token,
            Some(self.ca_pem.as_bytes()),
        )
        .unwrap();
        client.list_nodes().await.unwrap_or_default()
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
