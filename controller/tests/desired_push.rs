//! WatchDesiredState through the real gRPC listener: a node learns of a
//! change to its desired state as it commits, only its own changes, and the
//! stream neither outlives nor blocks the controller's shutdown.

mod common;

use std::time::Duration;

use common::{heartbeat_request, TestController};
use measurelab_api::node_v1::{DesiredStateHint, RegisterResponse, WatchDesiredStateRequest};
use serde_json::json;
use tonic::Streaming;

/// Far below the controller's keepalive (20 s) and heartbeat interval, so a
/// hint that arrives within it was pushed by the change itself.
const PROMPT: Duration = Duration::from_secs(5);

async fn watch(
    controller: &TestController,
    node: &RegisterResponse,
) -> Streaming<DesiredStateHint> {
    controller
        .grpc()
        .await
        .watch_desired_state(WatchDesiredStateRequest {
            node_id: node.node_id.clone(),
            node_secret: node.node_secret.clone(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn next_hint(stream: &mut Streaming<DesiredStateHint>, what: &str) -> DesiredStateHint {
    match tokio::time::timeout(PROMPT, stream.message()).await {
        Ok(Ok(Some(hint))) => hint,
        Ok(Ok(None)) => panic!("stream ended after {what}"),
        Ok(Err(status)) => panic!("stream failed after {what}: {status}"),
        Err(_) => panic!("no hint within {PROMPT:?} after {what}"),
    }
}

async fn heartbeat_generation(controller: &TestController, node: &RegisterResponse) -> u64 {
    controller
        .grpc()
        .await
        .heartbeat(heartbeat_request(node, 1))
        .await
        .unwrap()
        .into_inner()
        .desired_generation
}

#[tokio::test]
async fn hints_follow_each_commit_for_the_node_concerned() {
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start(dir.path(), Duration::from_secs(60)).await;
    let n1 = controller.register("n1", "").await;
    let n2 = controller.register("n2", "").await;
    let mut n1_hints = watch(&controller, &n1).await;
    let mut n2_hints = watch(&controller, &n2).await;

    let first = next_hint(&mut n1_hints, "opening the stream").await;
    assert_eq!(first.desired_generation, 0, "nothing desired of n1 yet");
    assert!(first.keepalive_seconds > 0);
    assert_eq!(
        next_hint(&mut n2_hints, "opening the stream")
            .await
            .desired_generation,
        0
    );

    controller.create_platform("p", &["n1"]).await;
    let after_platform = next_hint(&mut n1_hints, "creating a platform on n1").await;
    assert!(after_platform.desired_generation > 0);
    assert_eq!(
        after_platform.desired_generation,
        heartbeat_generation(&controller, &n1).await,
        "the hint carries what a heartbeat would"
    );

    controller
        .create(
            "/v1/vms",
            json!({"name": "v1", "platform": "p", "node": "n1", "vcpus": 1,
                        "memory_mib": 128, "appliance": "namespace", "power_state": "running"}),
        )
        .await;
    let after_vm = next_hint(&mut n1_hints, "creating a VM on n1").await;
    assert!(after_vm.desired_generation > after_platform.desired_generation);

    // n2 is in neither change: its stream stays quiet (until its keepalive).
    assert!(
        tokio::time::timeout(Duration::from_millis(500), n2_hints.message())
            .await
            .is_err(),
        "n2 was told about n1's changes"
    );

    // A wrong secret opens no stream.
    let refused = controller
        .grpc()
        .await
        .watch_desired_state(WatchDesiredStateRequest {
            node_id: n1.node_id.clone(),
            node_secret: "wrong".into(),
        })
        .await
        .expect_err("a wrong secret was accepted");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // Open streams must not hold the graceful shutdown open.
    tokio::time::timeout(Duration::from_secs(10), controller.stop())
        .await
        .expect("the controller did not stop with streams open");
    let end = tokio::time::timeout(PROMPT, n1_hints.message())
        .await
        .expect("the stream outlived the controller");
    assert!(
        !matches!(end, Ok(Some(_))),
        "a hint after shutdown: {end:?}"
    );
}

async fn register_with_tunnel(
    controller: &TestController,
    name: &str,
    tunnel_address: &str,
) -> Result<RegisterResponse, tonic::Status> {
    let mut request = common::register_request(&controller.join_token, name, "");
    if let Some(caps) = request.capabilities.as_mut() {
        caps.tunnel_address = tunnel_address.into();
    }
    controller
        .grpc()
        .await
        .register(request)
        .await
        .map(|r| r.into_inner())
}

async fn tunnels_of(
    controller: &TestController,
    node: &RegisterResponse,
) -> Vec<(u32, String, String)> {
    let state = controller
        .grpc()
        .await
        .get_desired_state(measurelab_api::node_v1::DesiredStateRequest {
            node_id: node.node_id.clone(),
            node_secret: node.node_secret.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    state
        .tunnels
        .into_iter()
        .map(|t| (t.vlan_tag, t.remote_address, t.peer_node))
        .collect()
}

/// Nodes at routed sites: each learns a tunnel per (platform VLAN, peer) and
/// one per peer for the service network, a newcomer's tunnel address is
/// pushed to the nodes already there, and a bad address is refused naming
/// the field.
#[tokio::test]
async fn tunnels_follow_platform_membership_and_tunnel_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start(dir.path(), Duration::from_secs(60)).await;
    let n1 = register_with_tunnel(&controller, "n1", "10.60.1.2")
        .await
        .unwrap();
    let mut n1_hints = watch(&controller, &n1).await;
    let opened = next_hint(&mut n1_hints, "opening the stream").await;
    assert!(
        tunnels_of(&controller, &n1).await.is_empty(),
        "n1 alone has no peers"
    );

    // n2 appears with an address: n1 is told at once (not at its next resync).
    let n2 = register_with_tunnel(&controller, "n2", "10.60.2.2")
        .await
        .unwrap();
    let hint = next_hint(&mut n1_hints, "n2 registering a tunnel address").await;
    assert!(hint.desired_generation > opened.desired_generation);
    assert_eq!(
        tunnels_of(&controller, &n1).await,
        [(0, "10.60.2.2".to_string(), "n2".to_string())]
    );

    // n3 has no tunnel address: it meets nobody through tunnels.
    let n3 = controller.register("n3", "").await;
    let body = controller
        .create(
            "/v1/platforms",
            json!({"name": "p", "nodes": ["n1", "n2", "n3"]}),
        )
        .await;
    let vlan = body["vlan_tag"].as_u64().unwrap() as u32;
    controller.create_platform("q", &["n1", "n3"]).await;
    assert_eq!(
        tunnels_of(&controller, &n2).await,
        [
            (vlan, "10.60.1.2".to_string(), "n1".to_string()),
            (0, "10.60.1.2".to_string(), "n1".to_string())
        ]
    );
    assert!(tunnels_of(&controller, &n3).await.is_empty());

    let refused = register_with_tunnel(&controller, "n4", "239.1.1.1")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("tunnel_address"),
        "{}",
        refused.message()
    );
    controller.stop().await;
}
