//! A platform's control key (issue 10 §5): drawn at creation, put into every
//! program run of the platform unless the deployment sets its own, readable
//! by owners and members only, and nowhere else in the API or the events.

mod common;

use std::collections::HashMap;

use base64::Engine;
use common::TestController;
use measurelab_api::node_v1::RegisterResponse;
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
        .desired_state(node)
        .await
        .program_runs
        .into_iter()
        .map(|run| (run.deployment_id, run.env))
        .collect()
}

/// A controller with node n1, a member and a viewer of tenant t1, and a
/// member of another tenant, t2.
struct Parties {
    _dir: tempfile::TempDir,
    controller: TestController,
    n1: RegisterResponse,
    member: String,
    viewer: String,
    other: String,
}

impl Parties {
    async fn start() -> Parties {
        let (dir, controller) = TestController::fresh().await;
        Parties {
            n1: controller.register("n1", "").await,
            member: controller.tenant_token("t1", "ci", "member").await,
            viewer: controller.tenant_token("t1", "dashboard", "viewer").await,
            other: controller.tenant_token("t2", "other", "member").await,
            controller,
            _dir: dir,
        }
    }
}

#[tokio::test]
async fn a_platform_key_reaches_its_program_runs_and_only_its_members() {
    let Parties {
        _dir,
        controller,
        n1,
        member,
        viewer,
        other,
    } = Parties::start().await;
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
    let lab_key = controller
        .expect_as(
            &member,
            Method::GET,
            "/v1/platforms/lab/control-key",
            None,
            200,
        )
        .await;
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
    let body = controller
        .expect_as(
            &viewer,
            Method::GET,
            "/v1/platforms/lab/control-key",
            None,
            403,
        )
        .await;
    assert!(!body.to_string().contains(&secret));
    controller
        .expect_as(
            &other,
            Method::GET,
            "/v1/platforms/lab/control-key",
            None,
            404,
        )
        .await;
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
            let body = controller
                .expect_as(
                    member,
                    Method::POST,
                    "/v1/deployments",
                    Some(json!({"program": "mcast", "vms": vms, "env": env})),
                    201,
                )
                .await;
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

/// Rotation: a fresh key replaces the old one in every run of the platform
/// (so node agents restart them with it), only for those who may read it,
/// audited without the key, and a replayed request neither rotates again nor
/// reveals a key.
#[tokio::test]
async fn rotating_a_platform_key_replaces_it_in_every_run() {
    let Parties {
        _dir,
        controller,
        n1,
        member,
        viewer,
        other,
    } = Parties::start().await;
    create(
        &controller,
        &member,
        "/v1/platforms",
        json!({"name": "lab", "nodes": ["n1"]}),
    )
    .await;
    create(
        &controller,
        &member,
        "/v1/vms",
        json!({"name": "mscs", "platform": "lab", "node": "n1", "vcpus": 1,
               "memory_mib": 64, "appliance": "namespace", "power_state": "running"}),
    )
    .await;
    let program = base64::engine::general_purpose::STANDARD.encode(b"#!/bin/sh\n");
    create(
        &controller,
        &member,
        "/v1/programs",
        json!({"name": "mcast", "content_base64": program}),
    )
    .await;
    let deployment = controller
        .expect_as(
            &member,
            Method::POST,
            "/v1/deployments",
            Some(json!({"program": "mcast", "vms": ["lab/mscs"], "env": {"ROLE": "mscs"}})),
            201,
        )
        .await;
    let deployment_id = deployment["id"].as_str().unwrap().to_string();
    let (_, first) = controller
        .call_as(&member, Method::GET, "/v1/platforms/lab/control-key", None)
        .await;
    assert_eq!(first["version"], 1, "{first:?}");
    let old = first["control_key"].as_str().unwrap().to_string();

    let rotate = "/v1/platforms/lab/control-key/rotate";
    controller
        .expect_as(&viewer, Method::POST, rotate, Some(json!({})), 403)
        .await;
    controller
        .expect_as(&other, Method::POST, rotate, Some(json!({})), 404)
        .await;
    let (_, unchanged) = controller
        .call_as(&member, Method::GET, "/v1/platforms/lab/control-key", None)
        .await;
    assert_eq!(unchanged["control_key"], first["control_key"]);
    assert_eq!(unchanged["version"], 1);

    let request = json!({"request_id": "rotate-1"});
    let rotated = controller
        .expect_as(&member, Method::POST, rotate, Some(request.clone()), 200)
        .await;
    let new = rotated["control_key"].as_str().unwrap().to_string();
    assert!(
        new.len() == 64 && new.bytes().all(|b| b.is_ascii_hexdigit()),
        "{new}"
    );
    assert_ne!(new, old);
    assert_eq!(rotated["version"], 2);
    assert_eq!(rotated["platform"], first["platform"]);
    assert_eq!(
        rotated["key_id"], first["key_id"],
        "the programs' key id stays"
    );

    // A retry of the same request: the recorded answer, without the key,
    // and no second rotation.
    let replay = controller
        .expect_as(&member, Method::POST, rotate, Some(request), 200)
        .await;
    assert_eq!(replay["control_key"], "", "a replay never shows a key");
    assert_eq!(replay["version"], 2);
    let (_, current) = controller
        .call_as(&member, Method::GET, "/v1/platforms/lab/control-key", None)
        .await;
    assert_eq!(current["control_key"].as_str(), Some(new.as_str()));
    assert_eq!(current["version"], 2);

    // The run carries the new key, under the same id, with the tenant's env.
    let envs = run_envs(&controller, &n1).await;
    let env = envs
        .get(&deployment_id)
        .expect("the run is in n1's desired state");
    assert_eq!(env.get(KEY_ENV), Some(&new));
    assert_eq!(
        env.get(KEY_ID_ENV),
        first["key_id"].as_str().map(str::to_string).as_ref()
    );
    assert_eq!(env.get("ROLE").map(String::as_str), Some("mscs"));

    // One audited rotation naming the token, and neither key in any event.
    let events = controller.events().await;
    let rotations: Vec<_> = events
        .events
        .iter()
        .filter(|e| e.reason == "PlatformControlKeyRotated")
        .collect();
    assert_eq!(rotations.len(), 1, "{rotations:?}");
    assert!(rotations[0].message.contains("token ci"), "{rotations:?}");
    assert!(rotations[0].message.contains("version 2"), "{rotations:?}");
    let (_, listed) = controller
        .call_as(&member, Method::GET, "/v1/events", None)
        .await;
    for secret in [&old, &new] {
        assert!(
            !listed.to_string().contains(secret.as_str()),
            "an event shows a key"
        );
    }
    controller.stop().await;
}
