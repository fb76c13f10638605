//! Platform gateways and their WireGuard peers through the real HTTP and gRPC
//! listeners: validation naming the field with nothing applied, tenant scope,
//! keys that never leave where they belong, and the gateway node's desired
//! state carrying the gateway and its peers.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::{register_request, TestController};
use measurelab_api::node_v1::{GatewayStatus, RegisterResponse, StatusAck, StatusReport};
use reqwest::Method;
use serde_json::{json, Value};

const PUBLIC: &str = "203.0.113.10";

/// Register `name`, reporting `public_address` (empty: none).
async fn node(controller: &TestController, name: &str, public_address: &str) -> RegisterResponse {
    let mut request = register_request(&controller.join_token, name, "");
    if let Some(capabilities) = request.capabilities.as_mut() {
        capabilities.public_address = public_address.into();
    }
    controller
        .grpc()
        .await
        .register(request)
        .await
        .unwrap()
        .into_inner()
}

async fn start() -> (
    tempfile::TempDir,
    TestController,
    RegisterResponse,
    RegisterResponse,
) {
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start(dir.path(), Duration::from_secs(60)).await;
    let n1 = node(&controller, "n1", PUBLIC).await;
    let n2 = node(&controller, "n2", "").await;
    (dir, controller, n1, n2)
}

fn public_of(private_key: &str) -> String {
    let bytes: [u8; 32] = STANDARD.decode(private_key).unwrap().try_into().unwrap();
    let public = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(bytes));
    STANDARD.encode(public.as_bytes())
}

/// A gateway on `node` listening on `listen_port`.
fn gateway(node: &str, listen_port: u32) -> Value {
    json!({"node": node, "listen_port": listen_port})
}

/// Creates platform `bad` over n1 and n2 with `gateway`; status and body.
async fn create_bad(controller: &TestController, gateway: Value) -> (u16, Value) {
    controller
        .call(
            Method::POST,
            "/v1/platforms",
            Some(json!({"name": "bad", "nodes": ["n1", "n2"], "gateway": gateway})),
        )
        .await
}

/// (status, field) of a refused platform create.
async fn refused(controller: &TestController, gateway: Value) -> (u16, String) {
    let (status, body) = create_bad(controller, gateway).await;
    (
        status,
        body["error"]["field"].as_str().unwrap_or("").to_string(),
    )
}

#[tokio::test]
async fn bad_gateways_name_the_field_and_create_nothing() {
    let (_dir, controller, _n1, _n2) = start().await;
    node(&controller, "n3", "198.51.100.3").await;
    for (gateway, field, says) in [
        (gateway("n1", 0), "gateway.listen_port", "out of range"),
        (gateway("n1", 70000), "gateway.listen_port", "out of range"),
        (gateway("n9", 51820), "gateway.node", "no node named"),
        (gateway("n2", 51820), "gateway.node", "public_address"),
        (gateway("n3", 51820), "gateway.node", "not one of"),
    ] {
        let (got, body) = create_bad(&controller, gateway.clone()).await;
        assert_eq!(got, 422, "{gateway}: {body}");
        assert_eq!(body["error"]["field"], field, "{gateway}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{gateway}: {message}");
        let (missing, _) = controller
            .call(Method::GET, "/v1/platforms/bad", None)
            .await;
        assert_eq!(missing, 404, "a refused platform must not exist");
    }

    let first = controller
        .create(
            "/v1/platforms",
            json!({"name": "a", "nodes": ["n1"], "gateway": {"node": "n1", "listen_port": 51820}}),
        )
        .await;
    assert_eq!(first["gateway_endpoint"], format!("{PUBLIC}:51820"));
    assert_eq!(
        refused(&controller, gateway("n1", 51820)).await,
        (409, "gateway.listen_port".to_string())
    );
    // The same port on another node is free.
    controller
        .create(
            "/v1/platforms",
            json!({"name": "b", "nodes": ["n3"], "gateway": {"node": "n3", "listen_port": 51820}}),
        )
        .await;

    // A peer needs a well-formed public key; nothing is added otherwise.
    for (key, says) in [
        (STANDARD.encode([1u8; 31]), "31 bytes"),
        ("***".to_string(), "base64"),
    ] {
        let body = controller
            .expect(
                Method::POST,
                "/v1/platforms/a/peers",
                Some(json!({"name": "laptop", "public_key": key})),
                422,
            )
            .await;
        assert_eq!(body["error"]["field"], "public_key", "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(says));
    }
    let body = controller
        .expect(
            Method::POST,
            "/v1/platforms/a/peers",
            Some(json!({"name": "Not A Label"})),
            422,
        )
        .await;
    assert_eq!(body["error"]["field"], "name", "{body}");
    let list = controller
        .expect(Method::GET, "/v1/platforms/a/peers", None, 200)
        .await;
    assert_eq!(list["peers"], json!([]));
}

#[tokio::test]
async fn peers_reach_only_the_gateway_node_and_private_keys_stay_put() {
    let (dir, controller, n1, n2) = start().await;
    let platform = controller
        .create(
            "/v1/platforms",
            json!({"name": "lab", "nodes": ["n1", "n2"],
                    "gateway": {"node": "n1", "listen_port": 51820}}),
        )
        .await;
    let subnet = platform["subnet"].as_str().unwrap().to_string();
    let first_host = subnet.replace(".0/24", ".1");
    assert_eq!(platform["gateway"], first_host);
    assert_eq!(
        platform["gateway_spec"],
        json!({"node": "n1", "listen_port": 51820})
    );
    assert_eq!(platform["tunnel_network"], "100.96.0.0/24");
    let gateway_public = platform["gateway_public_key"].as_str().unwrap().to_string();

    // Only n1 runs the gateway, with the private key of the public key shown.
    let on_n1 = controller.desired_state(&n1).await;
    assert_eq!(on_n1.gateways.len(), 1);
    let gateway = &on_n1.gateways[0];
    assert_eq!(public_of(&gateway.private_key), gateway_public);
    assert_eq!(
        (
            gateway.inside_address.as_str(),
            gateway.tunnel_address.as_str(),
            gateway.listen_port
        ),
        (format!("{first_host}/24").as_str(), "100.96.0.1/24", 51820)
    );
    assert_eq!(gateway.platform_subnet, subnet);
    assert!(controller.desired_state(&n2).await.gateways.is_empty());

    // VMs route via the gateway.
    controller.create_vm("vm1", "lab", "n2").await;
    assert_eq!(
        controller.desired_state(&n2).await.vms[0].gateway,
        first_host
    );

    // A generated key pair: the private key is in this answer only.
    let generation = controller.desired_state(&n1).await.generation;
    let created = controller
        .create(
            "/v1/platforms/lab/peers",
            json!({"name": "laptop", "request_id": "peer-1"}),
        )
        .await;
    let private_key = created["private_key"].as_str().unwrap().to_string();
    assert_eq!(
        public_of(&private_key),
        created["public_key"].as_str().unwrap()
    );
    assert_eq!(created["tunnel_address"], "100.96.0.2/32");
    let config = created["config"].as_str().unwrap();
    for line in [
        format!("PrivateKey = {private_key}"),
        "Address = 100.96.0.2/32".to_string(),
        format!("PublicKey = {gateway_public}"),
        format!("Endpoint = {PUBLIC}:51820"),
        format!("AllowedIPs = {subnet}"),
        "PersistentKeepalive = 25".to_string(),
    ] {
        assert!(
            config.lines().any(|l| l == line),
            "{line:?} not in\n{config}"
        );
    }
    let replay = controller
        .create(
            "/v1/platforms/lab/peers",
            json!({"name": "laptop", "request_id": "peer-1"}),
        )
        .await;
    assert_eq!(replay["id"], created["id"]);
    assert!(replay.get("private_key").is_none(), "{replay}");
    let fetched = controller
        .expect(Method::GET, "/v1/platforms/lab/peers/laptop", None, 200)
        .await;
    assert!(fetched.get("private_key").is_none());
    assert!(!fetched["config"].as_str().unwrap().contains("PrivateKey"));

    // A researcher's own key.
    let own_key = STANDARD.encode([42u8; 32]);
    let own = controller
        .create(
            "/v1/platforms/lab/peers",
            json!({"name": "desk", "public_key": own_key}),
        )
        .await;
    assert!(own.get("private_key").is_none(), "{own}");
    assert_eq!(own["tunnel_address"], "100.96.0.3/32");

    let with_peers = controller.desired_state(&n1).await;
    assert!(with_peers.generation > generation);
    let mut peers: Vec<(String, String)> = with_peers.gateways[0]
        .peers
        .iter()
        .map(|p| (p.public_key.clone(), p.tunnel_address.clone()))
        .collect();
    peers.sort();
    let mut expected = vec![
        (
            created["public_key"].as_str().unwrap().to_string(),
            "100.96.0.2/32".to_string(),
        ),
        (own_key.clone(), "100.96.0.3/32".to_string()),
    ];
    expected.sort();
    assert_eq!(peers, expected);
    assert!(controller.desired_state(&n2).await.gateways.is_empty());

    // Removing a peer bumps the gateway node's generation and drops it.
    controller
        .expect(Method::DELETE, "/v1/platforms/lab/peers/laptop", None, 200)
        .await;
    let after = controller.desired_state(&n1).await;
    assert!(after.generation > with_peers.generation);
    let left: Vec<&str> = after.gateways[0]
        .peers
        .iter()
        .map(|p| p.public_key.as_str())
        .collect();
    assert_eq!(left, vec![own_key.as_str()]);

    // No private key in any API answer, event or on disk (the peer's) .
    let listed = controller
        .expect(Method::GET, "/v1/platforms", None, 200)
        .await;
    let events = controller
        .expect(Method::GET, "/v1/events?limit=1000", None, 200)
        .await;
    for text in [listed.to_string(), events.to_string()] {
        assert!(!text.contains(&gateway.private_key));
        assert!(!text.contains(&private_key));
    }
    assert!(events.to_string().contains("PeerAdded"));
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes
                    .windows(private_key.len())
                    .any(|w| w == private_key.as_bytes()),
                "{} holds the generated private key",
                path.display()
            );
        }
    }
}

#[tokio::test]
async fn only_the_platforms_tenant_writers_add_peers() {
    let (_dir, controller, _n1, _n2) = start().await;
    let member = controller.tenant_token("t1", "t1-member", "member").await;
    let viewer = controller.tenant_token("t1", "t1-viewer", "viewer").await;
    let other = controller.tenant_token("t2", "t2-owner", "owner").await;
    controller.expect_as(&member,
        Method::POST,
        "/v1/platforms",
        Some(json!({"name": "lab", "nodes": ["n1"], "gateway": {"node": "n1", "listen_port": 51000}})),
        201,
    )
    .await;
    let peer = Some(json!({"name": "laptop"}));
    let denied = controller
        .expect_as(
            &viewer,
            Method::POST,
            "/v1/platforms/lab/peers",
            peer.clone(),
            403,
        )
        .await;
    assert!(
        denied["error"]["message"]
            .as_str()
            .unwrap()
            .contains("role member"),
        "{denied}"
    );
    controller
        .expect_as(
            &other,
            Method::POST,
            "/v1/platforms/lab/peers",
            peer.clone(),
            404,
        )
        .await;
    controller
        .expect_as(&other, Method::GET, "/v1/platforms/lab/peers", None, 404)
        .await;
    controller
        .expect_as(&member, Method::POST, "/v1/platforms/lab/peers", peer, 201)
        .await;
    controller
        .expect_as(
            &other,
            Method::DELETE,
            "/v1/platforms/lab/peers/laptop",
            None,
            404,
        )
        .await;
    controller
        .expect_as(
            &viewer,
            Method::DELETE,
            "/v1/platforms/lab/peers/laptop",
            None,
            403,
        )
        .await;
    let seen = controller
        .expect_as(&viewer, Method::GET, "/v1/platforms/lab/peers", None, 200)
        .await;
    assert_eq!(seen["peers"][0]["name"], "laptop");
    // The viewer cannot set a gateway either.
    controller
        .expect_as(
            &viewer,
            Method::PATCH,
            "/v1/platforms/lab",
            Some(json!({"gateway": null})),
            403,
        )
        .await;
}

#[tokio::test]
async fn the_gateway_moves_in_place_and_goes_only_without_peers() {
    let (_dir, controller, n1, _n2) = start().await;
    node(&controller, "n3", "198.51.100.3").await;
    let created = controller
        .create(
            "/v1/platforms",
            json!({"name": "lab", "nodes": ["n1", "n3"],
                    "gateway": {"node": "n1", "listen_port": 51820}}),
        )
        .await;
    controller
        .create("/v1/platforms/lab/peers", json!({"name": "laptop"}))
        .await;

    let moved = controller
        .expect(
            Method::PATCH,
            "/v1/platforms/lab",
            Some(json!({"gateway": {"node": "n3", "listen_port": 51821}})),
            200,
        )
        .await;
    assert_eq!(moved["gateway_endpoint"], "198.51.100.3:51821");
    assert_eq!(moved["gateway_public_key"], created["gateway_public_key"]);
    assert_eq!(moved["tunnel_network"], created["tunnel_network"]);
    assert!(controller.desired_state(&n1).await.gateways.is_empty());
    let peer = controller
        .expect(Method::GET, "/v1/platforms/lab/peers/laptop", None, 200)
        .await;
    assert_eq!(peer["endpoint"], "198.51.100.3:51821");

    // The gateway's node stays a member while it runs the gateway.
    let body = controller
        .expect(
            Method::PATCH,
            "/v1/platforms/lab",
            Some(json!({"nodes": ["n1"]})),
            409,
        )
        .await;
    assert_eq!(body["error"]["field"], "nodes", "{body}");

    let body = controller
        .expect(
            Method::PATCH,
            "/v1/platforms/lab",
            Some(json!({"gateway": null})),
            409,
        )
        .await;
    assert_eq!(body["error"]["field"], "gateway", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("laptop"));
    controller
        .expect(Method::DELETE, "/v1/platforms/lab/peers/laptop", None, 200)
        .await;
    let gone = controller
        .expect(
            Method::PATCH,
            "/v1/platforms/lab",
            Some(json!({"gateway": null})),
            200,
        )
        .await;
    assert_eq!(
        (gone["gateway"].clone(), gone["gateway_endpoint"].clone()),
        (Value::Null, Value::Null)
    );
    let body = controller
        .expect(
            Method::POST,
            "/v1/platforms/lab/peers",
            Some(json!({"name": "laptop"})),
            409,
        )
        .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no gateway"),
        "{body}"
    );

    // Deleting a platform takes its gateway and peers with it: the port is free again.
    controller
        .expect(
            Method::PATCH,
            "/v1/platforms/lab",
            Some(json!({"gateway": {"node": "n1", "listen_port": 51820}})),
            200,
        )
        .await;
    controller
        .create("/v1/platforms/lab/peers", json!({"name": "laptop"}))
        .await;
    controller
        .expect(Method::DELETE, "/v1/platforms/lab", None, 200)
        .await;
    assert!(controller.desired_state(&n1).await.gateways.is_empty());
    controller.create("/v1/platforms", json!({"name": "again", "nodes": ["n1"], "gateway": {"node": "n1", "listen_port": 51820}}))
    .await;
}

/// What `node` reports of its gateways, as its agent would.
async fn report(
    controller: &TestController,
    node: &RegisterResponse,
    gateways: Vec<GatewayStatus>,
) -> Result<StatusAck, tonic::Status> {
    controller
        .grpc()
        .await
        .report_status(StatusReport {
            node_id: node.node_id.clone(),
            node_secret: node.node_secret.clone(),
            gateways,
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Platform `lab` on `nodes` with its gateway on n1; returns its id.
async fn lab_with_gateway(controller: &TestController, nodes: &[&str]) -> String {
    let created = controller
        .create(
            "/v1/platforms",
            json!({"name": "lab", "nodes": nodes,
                    "gateway": {"node": "n1", "listen_port": 51820}}),
        )
        .await;
    assert_eq!(created["gateway_status"]["state"], "pending", "{created}");
    created["id"].as_str().unwrap().to_string()
}

fn gateway_status(platform_id: &str, state: &str, message: &str) -> GatewayStatus {
    GatewayStatus {
        platform_id: platform_id.into(),
        state: state.into(),
        message: message.into(),
    }
}

/// (state, message) of the platform's gateway as the API shows it.
async fn shown_state(controller: &TestController, token: &str) -> (String, String) {
    let platform = controller
        .expect_as(token, Method::GET, "/v1/platforms/lab", None, 200)
        .await;
    let status = &platform["gateway_status"];
    (
        status["state"].as_str().unwrap_or("").to_string(),
        status["message"].as_str().unwrap_or("").to_string(),
    )
}

/// Events of `reason` the caller sees, their messages in order.
async fn events(controller: &TestController, token: &str, reason: &str) -> Vec<String> {
    let body = controller
        .expect_as(token, Method::GET, "/v1/events?limit=1000", None, 200)
        .await;
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == reason)
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn the_gateway_state_is_what_its_node_reports() {
    let (_dir, controller, n1, n2) = start().await;
    let admin = controller.admin_token.clone();
    let id = lab_with_gateway(&controller, &["n1", "n2"]).await;

    let ack = report(&controller, &n1, vec![gateway_status(&id, "ready", "")])
        .await
        .unwrap();
    assert!(ack.refused.is_empty(), "{:?}", ack.refused);
    assert_eq!(
        shown_state(&controller, &admin).await,
        ("ready".into(), String::new())
    );
    assert_eq!(events(&controller, &admin, "GatewayReady").await.len(), 1);

    let why = "gateway of platform lab: configuring the device: listen port 51820: Address in use (os error 98)";
    let ack = report(&controller, &n1, vec![gateway_status(&id, "failed", why)])
        .await
        .unwrap();
    assert!(ack.refused.is_empty(), "{:?}", ack.refused);
    assert_eq!(
        shown_state(&controller, &admin).await,
        ("failed".into(), why.to_string())
    );
    let failed = events(&controller, &admin, "GatewayFailed").await;
    assert!(
        failed.len() == 1 && failed[0].contains("Address in use"),
        "{failed:?}"
    );

    // Only the gateway's node speaks for it, and only in known states;
    // a refused item changes nothing.
    let ack = report(&controller, &n2, vec![gateway_status(&id, "ready", "")])
        .await
        .unwrap();
    assert_eq!(
        ack.refused
            .iter()
            .map(|r| (r.list.as_str(), r.reason.split(':').next().unwrap_or("")))
            .collect::<Vec<_>>(),
        [("gateways", "gateways[0].platform_id")]
    );
    let ack = report(&controller, &n1, vec![gateway_status(&id, "up", "")])
        .await
        .unwrap();
    assert!(
        ack.refused.len() == 1 && ack.refused[0].reason.starts_with("gateways[0].state"),
        "{:?}",
        ack.refused
    );
    assert_eq!(
        shown_state(&controller, &admin).await,
        ("failed".into(), why.to_string())
    );

    // Moved: what the old node said no longer holds.
    node(&controller, "n3", "198.51.100.3").await;
    controller.expect(Method::PATCH,
        "/v1/platforms/lab",
        Some(json!({"nodes": ["n1", "n2", "n3"], "gateway": {"node": "n3", "listen_port": 51820}})),
        200,
    )
    .await;
    assert_eq!(shown_state(&controller, &admin).await.0, "pending");
}

#[tokio::test]
async fn a_gateway_node_is_not_deleted_and_revoking_it_fails_its_gateways() {
    let (_dir, controller, n1, _n2) = start().await;
    let admin = controller.admin_token.clone();
    let id = lab_with_gateway(&controller, &["n1"]).await;
    let ack = report(&controller, &n1, vec![gateway_status(&id, "ready", "")])
        .await
        .unwrap();
    assert!(ack.refused.is_empty(), "{:?}", ack.refused);

    // Refused like a node with VMs, naming the gateway's platform and what
    // to do (removing n1 from `nodes` would be refused too).
    let body = controller
        .expect(Method::DELETE, "/v1/nodes/n1", None, 409)
        .await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("runs the WireGuard gateway of platform(s) lab")
            && message.contains("gateway.node"),
        "{body}"
    );
    assert_eq!(shown_state(&controller, &admin).await.0, "ready");

    // Revoking is not refused; the gateway then says it is down, and why.
    controller
        .expect(Method::POST, "/v1/nodes/n1/revoke", None, 200)
        .await;
    let (state, message) = shown_state(&controller, &admin).await;
    assert_eq!(state, "failed");
    assert!(message.contains("node n1 was revoked"), "{message}");
    let failed = events(&controller, &admin, "GatewayFailed").await;
    assert!(
        failed.len() == 1 && failed[0].contains("platform lab") && failed[0].contains("revoked"),
        "{failed:?}"
    );
    // The revoked node's reports no longer count.
    let refused = report(&controller, &n1, vec![gateway_status(&id, "ready", "")]).await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(shown_state(&controller, &admin).await.0, "failed");
}
