//! `--grpc-max-response-message-bytes` (GrpcLimits::max_response_message_bytes):
//! FetchProgram answers carry a whole program, so the default must let the
//! largest one the API accepts reach an agent, and a smaller cap must fail
//! that download alone.

mod common;

use std::time::Duration;

use common::{heartbeat_request, TestController};
use measurelab_api::client::ProgramUpload;
use measurelab_api::node_v1::node_service_client::NodeServiceClient;
use measurelab_api::node_v1::{FetchProgramRequest, RegisterResponse};
use serde_json::json;
use sha2::Digest;
use tonic::transport::Channel;

/// The largest program the HTTP API takes (store::programs::MAX_PROGRAM_BYTES).
const MAX_PROGRAM_BYTES: usize = 64 * 1024 * 1024;
/// What a node agent decodes at most (agent/src/session.rs
/// MAX_PROGRAM_MESSAGE_BYTES): the test's client is configured as the agent.
const AGENT_MAX_DECODING_BYTES: usize = 64 * 1024 * 1024 + 64 * 1024;

/// A program of the largest size, deployed onto a VM of node n1: n1, the
/// program's id and its SHA-256.
async fn largest_program_deployed(
    controller: &TestController,
    dir: &std::path::Path,
) -> (RegisterResponse, String, String) {
    let n1 = controller.register("n1", "").await;
    controller.create_platform("p", &["n1"]).await;
    controller.create_vm("mscs", "p", "n1").await;
    let content: Vec<u8> = (0..MAX_PROGRAM_BYTES).map(|i| (i % 251) as u8).collect();
    let sha256 = hex::encode(sha2::Sha256::digest(&content));
    let path = dir.join("largest.bin");
    std::fs::write(&path, &content).unwrap();
    drop(content);
    let program = controller
        .client()
        .upload_program(&ProgramUpload {
            name: "largest",
            path: &path,
            sha256: Some(&sha256),
            request_id: None,
            tenant: None,
        })
        .await
        .unwrap();
    controller
        .create(
            "/v1/deployments",
            json!({"program": "largest", "vms": ["p/mscs"]}),
        )
        .await;
    (n1, program.id, sha256)
}

/// A gRPC client as the node agent builds it.
async fn agent_client(controller: &TestController) -> NodeServiceClient<Channel> {
    controller
        .grpc()
        .await
        .max_decoding_message_size(AGENT_MAX_DECODING_BYTES)
}

fn fetch(node: &RegisterResponse, program_id: &str) -> FetchProgramRequest {
    FetchProgramRequest {
        node_id: node.node_id.clone(),
        node_secret: node.node_secret.clone(),
        program_id: program_id.to_string(),
    }
}

#[tokio::test]
async fn the_default_response_cap_carries_a_program_of_the_largest_size_to_an_agent() {
    let (dir, controller) = TestController::fresh().await;
    let (n1, program_id, sha256) = largest_program_deployed(&controller, dir.path()).await;
    let blob = agent_client(&controller)
        .await
        .fetch_program(fetch(&n1, &program_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(blob.content.len(), MAX_PROGRAM_BYTES);
    assert_eq!(hex::encode(sha2::Sha256::digest(&blob.content)), sha256);
    controller.stop().await;
}

#[tokio::test]
async fn a_small_response_cap_fails_the_download_clearly_and_heartbeats_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 1024 * 1024;
    let controller = TestController::start_with(dir.path(), |config| {
        config.grpc_limits.max_response_message_bytes = cap;
    })
    .await;
    let (n1, program_id, _) = largest_program_deployed(&controller, dir.path()).await;
    let mut agent = agent_client(&controller).await;
    let refused = agent
        .fetch_program(fetch(&n1, &program_id))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused}");
    let message = refused.message();
    assert!(
        message.contains("--grpc-max-response-message-bytes"),
        "the agent's error must name the controller's flag: {message}"
    );
    assert!(message.contains(&cap.to_string()), "{message}");

    // The same connection, and the controller, serve on.
    for sequence in 1..=3 {
        agent
            .heartbeat(heartbeat_request(&n1, sequence))
            .await
            .unwrap();
    }
    let node = controller.node("n1").await;
    assert_eq!(
        node.status,
        measurelab_api::http::NodeStatus::Online,
        "{node:?}"
    );
    let refused_again = tokio::time::timeout(
        Duration::from_secs(30),
        agent.fetch_program(fetch(&n1, &program_id)),
    )
    .await
    .expect("a second download hung")
    .unwrap_err();
    assert_eq!(refused_again.code(), tonic::Code::OutOfRange);
    controller.stop().await;
}
