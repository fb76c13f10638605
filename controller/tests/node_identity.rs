//! Node identity through the real gRPC and HTTP listeners: the join token
//! alone cannot take over a registered node, operators approve, revoke and
//! delete nodes, and make per-node, single-use and expiring join tokens.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{heartbeat_request, register_request, TestController};
use measurelab_api::http::{Node, NodeStatus, RegistrationRequestList};
use measurelab_api::node_v1::RegisterResponse;
use reqwest::Method;
use serde_json::json;
use tonic::Code;

const LONG: Duration = Duration::from_secs(60);

/// The secret column of the node's row, as stored.
fn stored_secret(data_dir: &Path, node_id: &str) -> String {
    common::db::value(
        data_dir,
        &format!(
            "SELECT secret FROM nodes WHERE id = {}",
            common::db::quote(node_id)
        ),
    )
    .unwrap()
}

async fn pending(controller: &TestController) -> RegistrationRequestList {
    controller.get_json("/v1/registration_requests").await
}

/// Register `name` presenting `secret` (empty: none) with `join_token`.
async fn register_with(
    controller: &TestController,
    join_token: &str,
    name: &str,
    node_id: &str,
    secret: &str,
) -> Result<RegisterResponse, tonic::Status> {
    let mut request = register_request(join_token, name, node_id);
    request.node_secret = secret.into();
    controller
        .grpc()
        .await
        .register(request)
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn join_token_alone_cannot_take_over_a_node_until_an_operator_approves() {
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start(dir.path(), LONG).await;
    let real = controller.register("n1", "").await;
    let mut grpc = controller.grpc().await;
    grpc.heartbeat(heartbeat_request(&real, 1)).await.unwrap();
    let secret_before = stored_secret(dir.path(), &real.node_id);

    // By name, by the node's id, and with a guessed secret: all refused.
    let join = controller.join_token.clone();
    let attempts: [(&str, &str); 3] = [("", ""), (&real.node_id, ""), ("", "guessed")];
    for (node_id, secret) in attempts {
        let status = register_with(&controller, &join, "n1", node_id, secret)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(
            status.message().contains("measurelab node approve n1"),
            "{}",
            status.message()
        );
    }
    for _ in 0..5 {
        register_with(&controller, &join, "n1", "", "")
            .await
            .unwrap_err();
    }

    // The real node is untouched: same secret row, still heartbeating.
    assert_eq!(stored_secret(dir.path(), &real.node_id), secret_before);
    grpc.heartbeat(heartbeat_request(&real, 2)).await.unwrap();
    let node = controller.node("n1").await;
    assert_eq!(node.id, real.node_id);
    assert_eq!(node.status, NodeStatus::Online);
    assert_eq!(controller.nodes().await.len(), 1);

    // Eight refusals are one pending request with a count, and one event.
    let requests = pending(&controller).await.requests;
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].name, "n1");
    assert_eq!(requests[0].node_id, real.node_id);
    assert_eq!(requests[0].attempts, 8);
    assert_eq!(requests[0].reason, "no_secret");
    assert!(requests[0].peer_address.starts_with("127.0.0.1:"));
    assert_eq!(requests[0].approved_at, None);
    let refusals = controller
        .events()
        .await
        .events
        .into_iter()
        .filter(|e| e.reason == "RegistrationRefused")
        .count();
    assert_eq!(refusals, 1);

    // Approval lets exactly the next attempt through, with a new secret.
    let approved = controller
        .expect(Method::POST, "/v1/nodes/n1/approve", None, 200)
        .await;
    assert!(approved["approved_at"].is_string(), "{approved}");
    let taken = register_with(&controller, &join, "n1", "", "")
        .await
        .unwrap();
    assert_eq!(taken.node_id, real.node_id, "same node row, new holder");
    assert_ne!(stored_secret(dir.path(), &real.node_id), secret_before);
    let status = grpc
        .heartbeat(heartbeat_request(&real, 3))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    grpc.heartbeat(heartbeat_request(&taken, 1)).await.unwrap();
    assert!(pending(&controller).await.requests.is_empty());
    // The approval was used up.
    let status = register_with(&controller, &join, "n1", "", "")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // Nothing to approve for a node without a pending request.
    controller.register("n2", "").await;
    controller
        .expect(Method::POST, "/v1/nodes/n2/approve", None, 404)
        .await;
    controller.stop().await;
}

async fn create_token(controller: &TestController, body: serde_json::Value) -> (String, String) {
    let created = controller.create("/v1/join_tokens", body).await;
    (
        created["join_token"]["id"].as_str().unwrap().to_string(),
        created["secret"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn join_tokens_are_per_node_single_use_expiring_and_revocable() {
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start(dir.path(), LONG).await;

    let (once_id, once) = create_token(&controller, json!({"single_use": true})).await;
    assert!(once.starts_with("mlj_"), "{once}");
    let a = register_with(&controller, &once, "a", "", "")
        .await
        .unwrap();
    let status = register_with(&controller, &once, "b", "", "")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("already used"), "{status:?}");
    // Nor does the used token let anyone into a, but a itself, restarting
    // with its secret, needs no new token.
    let status = register_with(&controller, &once, "a", "", "")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let a_again = register_with(&controller, &once, "a", &a.node_id, &a.node_secret)
        .await
        .unwrap();
    assert_eq!(a_again.node_id, a.node_id);
    let (_, token) = controller
        .call(Method::GET, &format!("/v1/join_tokens/{once_id}"), None)
        .await;
    assert_eq!(token["state"], "used");
    assert!(token["last_used_by"].is_string(), "{token}");

    let (_, only_c) = create_token(&controller, json!({"node_name": "c"})).await;
    let status = register_with(&controller, &only_c, "d", "", "")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("only registers node"),
        "{status:?}"
    );
    register_with(&controller, &only_c, "c", "", "")
        .await
        .unwrap();
    // Multi-use per-node token: c again (a restart, with its secret) works.

    let (short_id, short) = create_token(&controller, json!({"ttl_seconds": 1})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, token) = controller
            .call(Method::GET, &format!("/v1/join_tokens/{short_id}"), None)
            .await;
        if token["state"] == "expired" {
            break;
        }
        assert!(Instant::now() < deadline, "token never expired: {token}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = register_with(&controller, &short, "e", "", "")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("expired"), "{status:?}");

    let (revoked_id, revoked) = create_token(&controller, json!({})).await;
    let body = controller
        .expect(
            Method::DELETE,
            &format!("/v1/join_tokens/{revoked_id}"),
            None,
            200,
        )
        .await;
    assert_eq!(body["state"], "revoked");
    let status = register_with(&controller, &revoked, "f", "", "")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // A forged secret for a real id is refused like an unknown token.
    let forged = format!("mlj_{revoked_id}_{}", "0".repeat(64));
    let status = register_with(&controller, &forged, "g", "", "")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // Only a digest is stored.
    let secrets: Vec<String> = common::db::rows(dir.path(), "SELECT secret FROM join_tokens")
        .into_iter()
        .map(|row| row[0].clone().unwrap())
        .collect();
    assert_eq!(secrets.len(), 4);
    for stored in &secrets {
        assert!(stored.starts_with("sha256:"), "{stored}");
        assert!(!once.contains(stored.trim_start_matches("sha256:")));
    }
    let names: Vec<String> = controller
        .nodes()
        .await
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["a", "c"]);

    let body = controller
        .expect(
            Method::POST,
            "/v1/join_tokens",
            Some(json!({"ttl_seconds": 60, "expires_at": "2999-01-01T00:00:00Z"})),
            422,
        )
        .await;
    assert_eq!(body["error"]["field"], "ttl_seconds");
    controller.stop().await;
}

#[tokio::test]
async fn revoked_node_is_refused_until_approved() {
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start(dir.path(), LONG).await;
    let node = controller.register("n1", "").await;
    let mut grpc = controller.grpc().await;
    grpc.heartbeat(heartbeat_request(&node, 1)).await.unwrap();

    let (status, body) = controller
        .call(Method::POST, "/v1/nodes/n1/revoke", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "revoked");
    assert_eq!(controller.node("n1").await.status, NodeStatus::Revoked);

    let status = grpc
        .heartbeat(heartbeat_request(&node, 2))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("revoked"), "{status:?}");
    // Its own secret does not bring it back either.
    let status = register_with(
        &controller,
        &controller.join_token,
        "n1",
        &node.node_id,
        &node.node_secret,
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("revoked"), "{status:?}");
    assert_eq!(pending(&controller).await.requests[0].reason, "revoked");
    // A restart does not forget the revocation.
    controller.stop().await;
    let controller = TestController::start(dir.path(), LONG).await;
    assert_eq!(controller.node("n1").await.status, NodeStatus::Revoked);
    let mut grpc = controller.grpc().await;
    assert!(grpc.heartbeat(heartbeat_request(&node, 3)).await.is_err());

    let (status, body) = controller
        .call(Method::POST, "/v1/nodes/n1/approve", None)
        .await;
    assert_eq!(status, 200, "{body}");
    let back = register_with(
        &controller,
        &controller.join_token,
        "n1",
        &node.node_id,
        &node.node_secret,
    )
    .await
    .unwrap();
    grpc.heartbeat(heartbeat_request(&back, 1)).await.unwrap();
    assert_eq!(controller.node("n1").await.status, NodeStatus::Online);
    controller.stop().await;
}

#[tokio::test]
async fn delete_is_refused_while_vms_are_placed_on_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start(dir.path(), LONG).await;
    controller.register("n1", "").await;
    controller.create_platform("p", &["n1"]).await;
    controller
        .create(
            "/v1/vms",
            json!({"name": "v1", "platform": "p", "node": "n1", "vcpus": 1,
                        "memory_mib": 128, "appliance": "namespace", "power_state": "running"}),
        )
        .await;

    let body = controller
        .expect(Method::DELETE, "/v1/nodes/n1", None, 409)
        .await;
    assert!(
        body["error"]["message"].as_str().unwrap().contains("p/v1"),
        "{body}"
    );
    controller.node("n1").await;

    controller
        .expect(Method::DELETE, "/v1/vms/p%2Fv1?force=true", None, 200)
        .await;
    controller
        .expect(
            Method::PATCH,
            "/v1/platforms/p",
            Some(json!({"nodes": []})),
            200,
        )
        .await;

    let body = controller
        .expect(Method::DELETE, "/v1/nodes/n1", None, 200)
        .await;
    assert_eq!(body["name"], "n1");
    let (status, _) = controller.call(Method::GET, "/v1/nodes/n1", None).await;
    assert_eq!(status, 404);
    assert!(controller.nodes().await.is_empty());
    // The name is free again.
    controller.register("n1", "").await;
    controller.stop().await;
}

#[tokio::test]
async fn reported_labels_never_change_operator_labels() {
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start(dir.path(), LONG).await;
    let first = controller.register("n1", "").await;
    // A new node's reported labels seed its operator labels.
    let node = controller.node("n1").await;
    assert_eq!(node.labels, node.reported_labels);
    assert_eq!(node.labels["rack"], "r1");

    controller
        .expect(
            Method::PATCH,
            "/v1/nodes/n1",
            Some(json!({"labels": {"role": "probe"}})),
            200,
        )
        .await;

    // The agent restarts claiming another role and rack.
    let mut again = register_request(&controller.join_token, "n1", &first.node_id);
    again.node_secret = first.node_secret.clone();
    again.labels = [
        ("role".to_string(), "mscs".to_string()),
        ("rack".to_string(), "r9".to_string()),
    ]
    .into();
    controller.grpc().await.register(again).await.unwrap();
    let node: Node = controller.node("n1").await;
    assert_eq!(
        node.labels,
        [("role".to_string(), "probe".to_string())].into()
    );
    assert_eq!(node.reported_labels["role"], "mscs");
    assert_eq!(node.reported_labels["rack"], "r9");

    // Both survive a restart.
    controller.stop().await;
    let controller = TestController::start(dir.path(), LONG).await;
    let node = controller.node("n1").await;
    assert_eq!(node.labels["role"], "probe");
    assert_eq!(node.reported_labels["role"], "mscs");
    controller.stop().await;
}
