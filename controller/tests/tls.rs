//! TLS on both APIs and mTLS for nodes: a client without the controller's CA
//! is refused, a node certificate names one node only, a revoked node
//! cannot heartbeat with its still-valid certificate, a revoked
//! certificate is refused while its node is not revoked, an expired one
//! even on the connection it opened while valid, and handshakes that
//! stall are bounded on both listeners.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::sockets::{closed, connect_from, wait_closed};
use common::Heartbeats;
use measurelab_api::http::NodeStatus;
use measurelab_api::node_v1::node_service_client::NodeServiceClient;
use measurelab_api::node_v1::{HeartbeatRequest, RegisterResponse, RenewCertificateRequest};
use measurelab_controller::tls::{self, TlsConfig};
use measurelab_controller::{run, ControllerConfig, ControllerError};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

struct TlsController {
    http: SocketAddr,
    grpc: SocketAddr,
    ca_pem: String,
    admin_token: String,
    join_token: String,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ControllerError>>,
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name))
        .unwrap()
        .trim()
        .to_string()
}

/// A certificate signing request for `key`, with no names of its own.
fn csr_pem(key: &rcgen::KeyPair) -> String {
    rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(key)
        .unwrap()
        .pem()
        .unwrap()
}

fn https_client(ca_pem: Option<&str>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder().tls_built_in_root_certs(false);
    if let Some(pem) = ca_pem {
        builder =
            builder.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

impl TlsController {
    async fn start() -> TlsController {
        Self::start_with(|_| {}).await
    }

    /// Start with a configuration tweak (limits, intervals).
    async fn start_with(tweak: impl FnOnce(&mut ControllerConfig)) -> TlsController {
        let dir = tempfile::tempdir().unwrap();
        let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let grpc = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (http_addr, grpc_addr) = (http.local_addr().unwrap(), grpc.local_addr().unwrap());
        let mut config = ControllerConfig::new(dir.path(), http, grpc);
        config.heartbeat_interval = Duration::from_secs(1);
        config.tls = Some(TlsConfig::generated(vec!["localhost".into()]));
        tweak(&mut config);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(config, async move {
            let _ = stopped.await;
        }));
        let deadline = Instant::now() + Duration::from_secs(10);
        let ca_path: PathBuf = dir.path().join(tls::CA_CERT_FILE);
        loop {
            if let Ok(ca_pem) = std::fs::read_to_string(&ca_path) {
                let up = https_client(Some(&ca_pem))
                    .get(format!("https://{http_addr}/healthz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if up {
                    break;
                }
            }
            assert!(!task.is_finished(), "controller stopped: {task:?}");
            assert!(Instant::now() < deadline, "controller did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        TlsController {
            http: http_addr,
            grpc: grpc_addr,
            ca_pem: std::fs::read_to_string(&ca_path).unwrap(),
            admin_token: read(dir.path(), "admin.token"),
            join_token: read(dir.path(), "join.token"),
            _dir: dir,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        (&mut self.task).await.unwrap().unwrap();
    }

    /// A request to the HTTPS API with the admin token, trusting the CA.
    fn as_admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        https_client(Some(&self.ca_pem))
            .request(method, format!("https://{}{path}", self.http))
            .bearer_auth(&self.admin_token)
    }

    /// A revocation POSTed to `path` as the admin; panics unless it succeeds.
    async fn revoke(&self, path: &str) -> reqwest::Response {
        let revoked = self
            .as_admin(reqwest::Method::POST, path)
            .send()
            .await
            .unwrap();
        assert!(revoked.status().is_success(), "{}", revoked.status());
        revoked
    }

    fn endpoint(&self, tls: ClientTlsConfig) -> Endpoint {
        Endpoint::from_shared(format!("https://{}", self.grpc))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .tls_config(tls)
            .unwrap()
    }

    /// A client trusting the CA, presenting `identity` when given.
    async fn grpc(&self, identity: Option<Identity>) -> NodeServiceClient<Channel> {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        if let Some(identity) = identity {
            tls = tls.identity(identity);
        }
        NodeServiceClient::new(self.endpoint(tls).connect().await.unwrap())
    }

    /// Register `name` with a fresh key; the certificate and key as an identity.
    async fn register(&self, name: &str) -> (RegisterResponse, Identity) {
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = csr_pem(&key);
        let mut request = common::register_request(&self.join_token, name, "");
        request.csr_pem = csr;
        let response = self
            .grpc(None)
            .await
            .register(request)
            .await
            .unwrap()
            .into_inner();
        assert!(
            response.node_cert_pem.contains("BEGIN CERTIFICATE"),
            "{response:?}"
        );
        let identity = Identity::from_pem(&response.node_cert_pem, key.serialize_pem());
        (response, identity)
    }
}

/// A TLS controller and node alpha, whose client (presenting alpha's
/// certificate) has had one heartbeat answered.
async fn alpha_heard_over_its_certificate(
) -> (TlsController, RegisterResponse, NodeServiceClient<Channel>) {
    let controller = TlsController::start().await;
    let (alpha, identity) = controller.register("alpha").await;
    let mut client = controller.grpc(Some(identity)).await;
    client.heartbeat(heartbeat(&alpha)).await.unwrap();
    (controller, alpha, client)
}

fn heartbeat(registered: &RegisterResponse) -> HeartbeatRequest {
    HeartbeatRequest {
        node_id: registered.node_id.clone(),
        node_secret: registered.node_secret.clone(),
        sequence: 1,
        agent_version: "test-1".into(),
        usage: Some(common::usage()),
        ..Default::default()
    }
}

#[tokio::test]
async fn an_https_client_without_the_ca_is_refused() {
    let controller = TlsController::start().await;
    let url = format!("https://{}/healthz", controller.http);
    let refused = https_client(None).get(&url).send().await;
    assert!(refused.is_err(), "served without the CA: {refused:?}");
    // Nor does the public web PKI vouch for it.
    let refused = reqwest::Client::new().get(&url).send().await;
    assert!(
        refused.is_err(),
        "served with the built-in roots: {refused:?}"
    );
    // No plaintext on the TLS port.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", controller.http))
        .send()
        .await;
    assert!(
        plain.as_ref().map_or(true, |r| !r.status().is_success()),
        "answered plaintext: {plain:?}"
    );
    // With the CA: the authenticated API works.
    let nodes = controller
        .as_admin(reqwest::Method::GET, "/v1/nodes")
        .send()
        .await
        .unwrap();
    assert!(nodes.status().is_success(), "{}", nodes.status());
    controller.stop().await;
}

#[tokio::test]
async fn a_grpc_client_without_the_ca_is_refused() {
    let controller = TlsController::start().await;
    // No trust roots at all: the handshake fails.
    let refused = controller.endpoint(ClientTlsConfig::new()).connect().await;
    assert!(refused.is_err(), "connected without the CA");
    // Another CA: refused as well.
    let other = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let refused = controller
        .endpoint(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(other.pem())))
        .connect()
        .await;
    assert!(refused.is_err(), "connected trusting another CA");
    // Plaintext gRPC to the TLS port gets no answer.
    let plain = async {
        let mut client = NodeServiceClient::connect(format!("http://{}", controller.grpc)).await?;
        let request = common::register_request(&controller.join_token, "plain", "");
        client.register(request).await.map_err(anyhow_like)?;
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    let plain = tokio::time::timeout(Duration::from_secs(10), plain).await;
    assert!(!matches!(plain, Ok(Ok(()))), "registered over plaintext");
    controller.stop().await;
}

fn anyhow_like(status: tonic::Status) -> Box<dyn std::error::Error> {
    Box::new(status)
}

#[tokio::test]
async fn registration_needs_a_valid_csr_and_leaves_nothing_behind_without_one() {
    let controller = TlsController::start().await;
    let mut client = controller.grpc(None).await;
    let request = common::register_request(&controller.join_token, "no-csr", "");
    let status = client.register(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("csr_pem:"), "{status:?}");
    let mut request = common::register_request(&controller.join_token, "bad-csr", "");
    request.csr_pem =
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".into();
    let status = client.register(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("csr_pem:"), "{status:?}");
    let nodes = controller
        .as_admin(reqwest::Method::GET, "/v1/nodes")
        .send()
        .await
        .unwrap()
        .json::<measurelab_api::http::NodeList>()
        .await
        .unwrap();
    assert!(nodes.nodes.is_empty(), "{:?}", nodes.nodes);
    controller.stop().await;
}

#[tokio::test]
async fn a_node_certificate_works_for_its_node_only() {
    let controller = TlsController::start().await;
    let (alpha, alpha_identity) = controller.register("alpha").await;
    let (beta, _) = controller.register("beta").await;
    let mut as_alpha = controller.grpc(Some(alpha_identity)).await;
    as_alpha.heartbeat(heartbeat(&alpha)).await.unwrap();
    // Alpha's certificate with beta's id and secret: refused.
    let status = as_alpha.heartbeat(heartbeat(&beta)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("client certificate"),
        "{status:?}"
    );
    // The secret alone, without a certificate: refused.
    let status = controller
        .grpc(None)
        .await
        .heartbeat(heartbeat(&alpha))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("client certificate"),
        "{status:?}"
    );
    controller.stop().await;
}

#[tokio::test]
async fn a_revoked_node_cannot_heartbeat_with_its_certificate() {
    let (controller, alpha, mut client) = alpha_heard_over_its_certificate().await;
    controller.revoke("/v1/nodes/alpha/revoke").await;
    let status = client.heartbeat(heartbeat(&alpha)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");
    controller.stop().await;
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_while_its_node_is_not() {
    let (controller, alpha, mut client) = alpha_heard_over_its_certificate().await;
    let revoked = controller
        .revoke("/v1/nodes/alpha/certificate/revoke")
        .await;
    let node = revoked.json::<measurelab_api::http::Node>().await.unwrap();
    assert_ne!(node.status, measurelab_api::http::NodeStatus::Revoked);
    // The same connection, the right secret: the certificate is refused.
    let status = client.heartbeat(heartbeat(&alpha)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("client certificate") && status.message().contains("revoked"),
        "{status:?}"
    );
    // Nor does it get a renewal with it.
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = csr_pem(&key);
    let renewal = RenewCertificateRequest {
        node_id: alpha.node_id.clone(),
        node_secret: alpha.node_secret.clone(),
        csr_pem: csr,
    };
    let status = client.renew_certificate(renewal).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    // Nothing left to revoke: the operator is told so.
    let again = controller
        .as_admin(reqwest::Method::POST, "/v1/nodes/alpha/certificate/revoke")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), reqwest::StatusCode::CONFLICT);
    // The node re-joins with its secret and a fresh certificate works.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut request = common::register_request(&controller.join_token, "alpha", "");
    request.node_id = alpha.node_id.clone();
    request.node_secret = alpha.node_secret.clone();
    request.csr_pem = csr_pem(&key);
    let rejoined = controller
        .grpc(None)
        .await
        .register(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rejoined.node_id, alpha.node_id);
    let fresh = Identity::from_pem(&rejoined.node_cert_pem, key.serialize_pem());
    controller
        .grpc(Some(fresh))
        .await
        .heartbeat(heartbeat(&rejoined))
        .await
        .unwrap();
    // The event names the node and the serial, never key material.
    let events = controller
        .as_admin(reqwest::Method::GET, "/v1/events")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(events.contains("NodeCertificateRevoked"), "{events}");
    assert!(!events.contains("BEGIN"), "{events}");
    controller.stop().await;
}

#[tokio::test]
async fn a_node_renews_its_certificate_with_the_current_one() {
    let controller = TlsController::start().await;
    let (alpha, identity) = controller.register("alpha").await;
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = csr_pem(&key);
    let request = RenewCertificateRequest {
        node_id: alpha.node_id.clone(),
        node_secret: alpha.node_secret.clone(),
        csr_pem: csr,
    };
    // Not without the current certificate.
    let status = controller
        .grpc(None)
        .await
        .renew_certificate(request.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let renewed = controller
        .grpc(Some(identity))
        .await
        .renew_certificate(request)
        .await
        .unwrap()
        .into_inner();
    let renewed = Identity::from_pem(&renewed.node_cert_pem, key.serialize_pem());
    controller
        .grpc(Some(renewed))
        .await
        .heartbeat(heartbeat(&alpha))
        .await
        .unwrap();
    controller.stop().await;
}

#[tokio::test]
async fn an_expired_certificate_is_refused_on_the_connection_it_opened() {
    // Six heartbeats of a second: the shortest lifetime allowed.
    let controller = TlsController::start_with(|config| {
        if let Some(tls) = config.tls.as_mut() {
            tls.node_cert_lifetime = Duration::from_secs(6);
        }
    })
    .await;
    let (alpha, identity) = controller.register("alpha").await;
    let der = tls::first_cert_der(&alpha.node_cert_pem, "node_cert_pem").unwrap();
    let not_after = tls::cert_not_after(&der).unwrap();
    let mut client = controller.grpc(Some(identity)).await;
    client.heartbeat(heartbeat(&alpha)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while time::OffsetDateTime::now_utc() <= not_after {
        assert!(
            Instant::now() < deadline,
            "the clock did not reach {not_after}"
        );
        // The connection must stay open: a heartbeat each second, as an agent's.
        client.heartbeat(heartbeat(&alpha)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = client.heartbeat(heartbeat(&alpha)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("expired at"), "{status:?}");
    controller.stop().await;
}

/// Stalled handshakes one attacker opens on each listener: the figure.
const SLOWLORIS: usize = 5000;
/// Loopback addresses the attacker spreads them over.
const SOURCES: usize = 5;

/// The first bytes of a TLS ClientHello: a record header announcing 512
/// bytes and the start of the handshake message in it. The server can only
/// wait for the rest.
const HALF_A_CLIENT_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x02, 0x00, // handshake record, TLS 1.0 framing, 512 bytes
    0x01, 0x00, 0x01, 0xfc, // ClientHello, 508 bytes
    0x03, 0x03, // client version TLS 1.2
];

/// `SLOWLORIS` connections to `to` from `SOURCES` loopback addresses in
/// turn: every other one sends half a ClientHello, the rest nothing.
async fn stalled_handshakes(to: SocketAddr) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(SLOWLORIS);
    for n in 0..SLOWLORIS {
        let source = format!("127.0.2.{}", n % SOURCES + 1);
        let mut stream = connect_from(&source, to).await.unwrap();
        if n % 2 == 0 {
            // A connection over a cap may be closed already; the write then
            // fails, and the connection counts as closed all the same.
            let _ = stream.write_all(HALF_A_CLIENT_HELLO).await;
        }
        streams.push(stream);
    }
    streams
}

/// Polls the node until every one of `streams` is closed, failing if the
/// node is ever not online or `within` passes first.
async fn online_until_all_closed(
    controller: &TlsController,
    name: &str,
    streams: &[TcpStream],
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let node: measurelab_api::http::Node = controller
            .as_admin(reqwest::Method::GET, &format!("/v1/nodes/{name}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(node.status, NodeStatus::Online, "{node:?}");
        let open = streams.iter().filter(|s| !closed(s)).count();
        if open == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{open} of {} stalled handshakes still open",
            streams.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A controller whose nodes go offline after 3 s of silence, and node
/// "steady" heartbeating every 500 ms: the node that must stay online while
/// the listeners are attacked.
async fn controller_with_a_steady_node() -> (TlsController, Heartbeats) {
    let controller = TlsController::start_with(|config| {
        config.offline_after = Duration::from_secs(3);
    })
    .await;
    let (steady, identity) = controller.register("steady").await;
    let beats = Heartbeats::start(
        controller.grpc(Some(identity)).await,
        steady,
        Duration::from_millis(500),
    );
    (controller, beats)
}

#[tokio::test]
async fn stalled_tls_handshakes_on_the_https_api_hold_their_caps_until_the_timeout() {
    // The defaults: what a controller started with --tls does.
    let limits = measurelab_controller::DEFAULT_HTTP_LIMITS;
    let (controller, beats) = controller_with_a_steady_node().await;

    let attacker = stalled_handshakes(controller.http).await;
    // Over the per-source cap, closed at accept: the caps hold under TLS.
    wait_closed(
        &attacker,
        SLOWLORIS - SOURCES * limits.max_connections_per_source,
        Duration::from_secs(30),
    )
    .await;
    // A new client completes its handshake and is served meanwhile.
    let answered = Instant::now();
    let nodes = controller
        .as_admin(reqwest::Method::GET, "/v1/nodes")
        .send()
        .await
        .unwrap();
    assert!(nodes.status().is_success(), "{}", nodes.status());
    assert!(
        answered.elapsed() < Duration::from_secs(2),
        "served in {:?}",
        answered.elapsed()
    );
    // The handshakes held are closed by the header-read timeout, the node
    // online all along.
    online_until_all_closed(
        &controller,
        "steady",
        &attacker,
        limits.header_read_timeout * 2,
    )
    .await;
    beats.stop_all_answered_within_a_second().await;
    controller.stop().await;
}

#[tokio::test]
async fn stalled_tls_handshakes_on_the_grpc_api_are_timed_out_while_nodes_are_served() {
    let limits = measurelab_controller::DEFAULT_GRPC_LIMITS;
    let (controller, beats) = controller_with_a_steady_node().await;

    // All under the per-source cap (1000 a source of 1024): every one is
    // admitted and stalls its handshake.
    let attacker = stalled_handshakes(controller.grpc).await;
    // A new node completes its handshake and registers meanwhile.
    let answered = Instant::now();
    let (late, late_identity) = controller.register("late").await;
    assert!(
        answered.elapsed() < Duration::from_secs(2),
        "registered in {:?}",
        answered.elapsed()
    );
    // Silent or half a hello, each is closed by the handshake timeout.
    online_until_all_closed(
        &controller,
        "steady",
        &attacker,
        limits.handshake_timeout * 2,
    )
    .await;
    beats.stop_all_answered_within_a_second().await;
    // The listener still takes new connections once they are gone.
    controller
        .grpc(Some(late_identity))
        .await
        .heartbeat(common::heartbeat_request(&late, 1))
        .await
        .unwrap();
    controller.stop().await;
}

#[tokio::test]
async fn a_node_certificate_shorter_than_six_heartbeats_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let grpc = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = ControllerConfig::new(dir.path(), http, grpc);
    config.heartbeat_interval = Duration::from_secs(2);
    let mut tls_config = TlsConfig::generated(vec!["localhost".into()]);
    tls_config.node_cert_lifetime = Duration::from_secs(11);
    config.tls = Some(tls_config);
    let err = tokio::time::timeout(Duration::from_secs(10), run(config, std::future::pending()))
        .await
        .expect("the controller started with it")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tls.node_cert_lifetime") && err.contains("6 heartbeat intervals"),
        "{err}"
    );
}
