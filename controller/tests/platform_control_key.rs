//! A platform's control key (issue 10 §5): drawn at creation, put into every
//! program run of the platform unless the deployment sets its own, readable
//! by owners and members only, and nowhere else in the API or the events.

mod common;

use std::collections::HashMap;

use base64::Engine;
use common::TestController;
use measurelab_api::node_v1::{DesiredStateRequest, RegisterResponse};
use reqwest::Method;
use serde_json::json;

const KEY_ENV: &str = "MEASURELAB_CONTROL_KEY";
const KEY_ID_ENV: &str = "MEASURELAB_CONTROL_KEY_ID";

async fn create(controller: &TestController, token: &str, path: &str, body: serde_json::Value) {
    let (status, answer) = controller
        .call_as(token, Method::POST, path, Some(body))
        .await;
    assert_eq!(status, 201, "{path}: {answer}");
}

/// Env of each program run on `node`, by deployment id.
async fn run_envs(
    controller: &TestController,
    node: &RegisterResponse,
) -> HashMap<String, HashMap<String, String>> {
    controller
        .grpc()
        .await
        .get_desired_state(DesiredStateRequest {
            node_id: node.node_id.clone(),
            node_secret: node.node_secret.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .program_runs
        .into_iter()
        .map(|run| (run.deployment_id, run.env))
        .collect()
}

#[tokio::test]
async fn a_platform_key_reaches_its_program_runs_and_only_its_members() {
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start_with(dir.path(), |_| {}).await;
    let n1 = controller.register("n1", "").await;
    let member = controller.tenant_token("t1", "ci", "member").await;
    let viewer = controller.tenant_token("t1", "dashboard", "viewer").await;
    let other = controller.tenant_token("t2", "other", "member").await;
    for (token, platform) in [(&member, "lab"), (&member, "second"), (&other, "theirs")] {
        create(
            &controller,
            token,
            "/v1/platforms",
            json!({"name": platform, "nodes": ["n1"]}),
        )
        .await;
    }
    for (token, platform, vm) in [
        (&member, "lab", "mscs"),
        (&member, "lab", "point"),
        (&member, "second", "solo"),
        (&other, "theirs", "x"),
    ] {
        create(
            &controller,
            token,
            "/v1/vms",
            json!({"name": vm, "platform": platform, "node": "n1", "vcpus": 1,
                   "memory_mib": 64, "appliance": "namespace", "power_state": "running"}),
        )
        .await;
    }

    // Owners and members read it; a viewer sees the platform but not the key;
    // another tenant does not see the platform at all.
    let (status, lab_key) = controller
        .call_as(&member, Method::GET, "/v1/platforms/lab/control-key", None)
        .await;
    assert_eq!(status, 200, "{lab_key}");
    let (_, lab) = controller
        .call_as(&member, Method::GET, "/v1/platforms/lab", None)
        .await;
    assert_eq!(lab_key["platform"], lab["id"]);
    assert_eq!(lab_key["key_id"], lab["id"]);
    let secret = lab_key["control_key"].as_str().unwrap().to_string();
    assert!(
        secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit()),
        "{secret}"
    );
    let (status, body) = controller
        .call_as(&viewer, Method::GET, "/v1/platforms/lab/control-key", None)
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(!body.to_string().contains(&secret));
    let (status, body) = controller
        .call_as(&other, Method::GET, "/v1/platforms/lab/control-key", None)
        .await;
    assert_eq!(status, 404, "{body}");
    let (_, second_key) = controller
        .call_as(
            &member,
            Method::GET,
            "/v1/platforms/second/control-key",
            None,
        )
        .await;
    assert_ne!(second_key["control_key"], lab_key["control_key"]);

    // Every run of the platform gets its key under the platform's id, unless
    // the deployment brings its own key.
    let program = base64::engine::general_purpose::STANDARD.encode(b"#!/bin/sh\n");
    create(
        &controller,
        &member,
        "/v1/programs",
        json!({"name": "mcast", "content_base64": program}),
    )
    .await;
    let deploy = |vms: serde_json::Value, env: serde_json::Value| {
        let controller = &controller;
        let member = &member;
        async move {
            let (status, body) = controller
                .call_as(
                    member,
                    Method::POST,
                    "/v1/deployments",
                    Some(json!({"program": "mcast", "vms": vms, "env": env})),
                )
                .await;
            assert_eq!(status, 201, "{body}");
            body
        }
    };
    let plain = deploy(json!(["lab/mscs", "lab/point"]), json!({"ROLE": "x"})).await;
    let own_key = "ab".repeat(32);
    let overridden = deploy(json!(["lab/point"]), json!({ KEY_ENV: own_key })).await;
    let elsewhere = deploy(json!(["second/solo"]), json!({})).await;
    let envs = run_envs(&controller, &n1).await;
    let env_of = |deployment: &serde_json::Value| {
        envs.get(deployment["id"].as_str().unwrap())
            .cloned()
            .expect("the deployment's run is in n1's desired state")
    };
    let env = env_of(&plain);
    assert_eq!(env.get(KEY_ENV), Some(&secret));
    assert_eq!(
        env.get(KEY_ID_ENV),
        lab["id"].as_str().map(str::to_string).as_ref()
    );
    assert_eq!(env.get("ROLE").map(String::as_str), Some("x"));
    let env = env_of(&overridden);
    assert_eq!(env.get(KEY_ENV), Some(&own_key));
    assert_eq!(
        env.get(KEY_ID_ENV),
        None,
        "a tenant key keeps the programs' default id"
    );
    let env = env_of(&elsewhere);
    assert_eq!(
        env.get(KEY_ENV).map(String::as_str),
        second_key["control_key"].as_str()
    );

    // The key is in no deployment answer and no event; the read is audited.
    for path in [
        "/v1/deployments".to_string(),
        format!("/v1/deployments/{}", plain["id"].as_str().unwrap()),
        "/v1/platforms/lab".to_string(),
        "/v1/events".to_string(),
    ] {
        let (status, body) = controller.call_as(&member, Method::GET, &path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(!body.to_string().contains(&secret), "{path} shows the key");
    }
    let events = controller.events().await;
    let reads: Vec<_> = events
        .events
        .iter()
        .filter(|e| e.reason == "PlatformControlKeyRead")
        .collect();
    assert_eq!(reads.len(), 2, "two successful reads: {reads:?}");
    assert!(
        reads.iter().all(|e| e.message.contains("token ci")),
        "{reads:?}"
    );
    controller.stop().await;
}
