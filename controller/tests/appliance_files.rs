//! Appliance files the controller stores: uploaded by the operator over the
//! real HTTP listener, named by SHA-256 in an appliance, carried in the
//! desired state and streamed to the node that needs them over real gRPC.

mod common;

use common::{upload_appliance_file as upload, TestController};
use measurelab_api::node_v1::{DesiredStateRequest, FetchApplianceRequest};
use reqwest::Method;
use serde_json::json;
use sha2::{Digest, Sha256};

fn sha256(content: &[u8]) -> String {
    hex::encode(Sha256::digest(content))
}

async fn member_token(controller: &TestController) -> String {
    controller
        .create("/v1/tenants", json!({"name": "t1"}))
        .await;
    let body = controller
        .create(
            "/v1/tokens",
            json!({"name": "alice", "role": "member", "tenant": "t1"}),
        )
        .await;
    body["secret"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn uploaded_files_are_verified_named_by_digest_and_sent_to_their_node() {
    let (_dir, controller) = TestController::fresh().await;
    let admin = controller.admin_token.clone();
    // Larger than one gRPC chunk (256 KiB), so the stream is reassembled.
    let kernel: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    let initrd = b"initrd contents".to_vec();
    let (kernel_sha, initrd_sha) = (sha256(&kernel), sha256(&initrd));

    let (status, body) = upload(&controller, &admin, &kernel_sha, &kernel).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body, json!({"sha256": kernel_sha, "size_bytes": 600_000}));
    let (status, _) = upload(&controller, &admin, &kernel_sha, &kernel).await;
    assert_eq!(status, 200, "a repeated upload is harmless");
    // Damaged in transit (or the wrong digest): refused, nothing stored.
    let (status, body) = upload(&controller, &admin, &initrd_sha, b"initrd c0ntents").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "sha256");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&initrd_sha) && message.contains(&sha256(b"initrd c0ntents")),
        "{message}"
    );
    let (status, body) = upload(&controller, &admin, "not-a-digest", b"x").await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("sha256"))
    );

    let image = json!({"name": "stored", "version": "1", "arch": "x86_64", "os": "busybox",
                       "kernel_sha256": kernel_sha, "initrd_sha256": initrd_sha,
                       "min_memory_mib": 64, "backends": ["namespace", "libvirt"]});
    // The initrd was refused above, so no appliance may name it yet.
    let body = controller
        .expect(Method::POST, "/v1/appliances", Some(image.clone()), 422)
        .await;
    assert_eq!(body["error"]["field"], "initrd_sha256");
    let (status, _) = upload(&controller, &admin, &initrd_sha, &initrd).await;
    assert_eq!(status, 201);
    let mut both = image.clone();
    both["kernel"] = json!("/srv/vmlinuz");
    let (status, body) = controller
        .call(Method::POST, "/v1/appliances", Some(both))
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("kernel"))
    );

    // A member may neither upload nor register appliances.
    let member = member_token(&controller).await;
    let (status, body) = upload(&controller, &member, &initrd_sha, &initrd).await;
    assert_eq!(status, 403, "{body}");
    controller
        .expect_as(
            &member,
            Method::POST,
            "/v1/appliances",
            Some(image.clone()),
            403,
        )
        .await;

    controller.create("/v1/appliances", image).await;
    let listed = controller.client().list_appliances().await.unwrap();
    let stored = listed.iter().find(|a| a.name == "stored").unwrap();
    assert_eq!(stored.kernel_sha256.as_deref(), Some(kernel_sha.as_str()));
    assert_eq!(stored.initrd_sha256.as_deref(), Some(initrd_sha.as_str()));
    assert_eq!(stored.disk_sha256, None);
    let tiny = listed.iter().find(|a| a.name == "measurelab-tiny").unwrap();
    assert_eq!(tiny.kernel_sha256, None, "node-local paths carry no digest");

    // Node n1 runs a VM of it; n2 runs none.
    let n1 = controller.register("n1", "").await;
    let n2 = controller.register("n2", "").await;
    controller.create_platform("p", &["n1", "n2"]).await;
    controller
        .create(
            "/v1/vms",
            json!({"name": "v", "platform": "p", "node": "n1", "vcpus": 1,
                        "memory_mib": 64, "appliance": "stored", "power_state": "running"}),
        )
        .await;
    let mut grpc = controller.grpc().await;
    let desired = grpc
        .get_desired_state(DesiredStateRequest {
            node_id: n1.node_id.clone(),
            node_secret: n1.node_secret.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let appliance = desired.vms[0].appliance.clone().unwrap();
    assert_eq!(
        (
            appliance.kernel_sha256.as_str(),
            appliance.initrd_sha256.as_str()
        ),
        (kernel_sha.as_str(), initrd_sha.as_str())
    );
    assert_eq!(
        (appliance.kernel.as_str(), appliance.disk_sha256.as_str()),
        ("", "")
    );

    let fetch =
        |node: &measurelab_api::node_v1::RegisterResponse, digest: &str| FetchApplianceRequest {
            node_id: node.node_id.clone(),
            node_secret: node.node_secret.clone(),
            sha256: digest.to_string(),
        };
    let mut stream = grpc
        .fetch_appliance(fetch(&n1, &kernel_sha))
        .await
        .unwrap()
        .into_inner();
    let mut received = Vec::new();
    let mut chunks = 0;
    let mut total = 0;
    while let Some(chunk) = stream.message().await.unwrap() {
        if chunks == 0 {
            total = chunk.total_bytes;
        }
        chunks += 1;
        received.extend_from_slice(&chunk.data);
    }
    assert!(chunks > 1, "{chunks} chunk(s)");
    assert_eq!(total, 600_000);
    assert!(
        received == kernel,
        "the streamed kernel differs from the upload"
    );
    // A node without a VM of the appliance gets nothing, nor a wrong secret.
    let status = grpc
        .fetch_appliance(fetch(&n2, &kernel_sha))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status}");
    let mut wrong = fetch(&n1, &kernel_sha);
    wrong.node_secret = "wrong".into();
    let status = grpc.fetch_appliance(wrong).await.err().unwrap();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}");

    // In use: not deleted; a member may not delete it either.
    controller
        .expect_as(&member, Method::DELETE, "/v1/appliances/stored", None, 403)
        .await;
    let body = controller
        .expect(Method::DELETE, "/v1/appliances/stored", None, 409)
        .await;
    assert!(body["error"]["message"].as_str().unwrap().contains("v"));
    let (status, _) = controller
        .call(Method::DELETE, "/v1/appliances/namespace", None)
        .await;
    assert_eq!(status, 409, "built-in appliances stay");
    controller.stop().await;
}
