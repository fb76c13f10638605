//! Tenants, roles and API tokens through the real HTTP listener: two
//! tenants share the nodes and never see or change each other's objects.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::{result_document, TestController};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// `POST /v1/tokens` as `token`, whatever the answer; returns status and body.
async fn mint_token(controller: &TestController, token: &str, body: Value) -> (u16, Value) {
    controller
        .call_as(token, Method::POST, "/v1/tokens", Some(body))
        .await
}

fn id(value: &Value) -> String {
    value["id"].as_str().unwrap().to_string()
}

/// One tenant's world: a platform `lab` on n1 and n2, a QoS policy, a VM,
/// a program deployed onto it and a task with one result.
struct World {
    platform: String,
    qos: String,
    vm: String,
    program: String,
    deployment: String,
    task: String,
}

async fn build_world(controller: &TestController, token: &str, started_at: &str) -> World {
    let platform = controller
        .create_as(
            token,
            "/v1/platforms",
            json!({"name": "lab", "nodes": ["n1", "n2"]}),
        )
        .await;
    let qos = controller
        .create_as(
            token,
            "/v1/qos_policies",
            json!({"name": "slow", "ingress_max_kbps": 1000}),
        )
        .await;
    let vm = controller
        .create_as(
            token,
            "/v1/vms",
            json!({"name": "vm1", "platform": "lab", "node": "n1", "vcpus": 1, "memory_mib": 64,
               "appliance": "namespace", "power_state": "running", "qos_policy": "slow"}),
        )
        .await;
    let content = base64::engine::general_purpose::STANDARD.encode(b"#!/bin/sh\necho hi\n");
    let program = controller
        .create_as(
            token,
            "/v1/programs",
            json!({"name": "prog", "content_base64": content}),
        )
        .await;
    let deployment = controller
        .create_as(
            token,
            "/v1/deployments",
            json!({"program": "prog", "vms": [id(&vm)]}),
        )
        .await;
    let task = controller
        .create_as(
            token,
            "/v1/tasks",
            json!({"name": "loss", "mode": "platform", "platform": "lab", "schedule": "once",
               "rate_pps": 100, "packet_size_bytes": 200, "group": "239.1.2.3", "port": 5000,
               "ttl": 4}),
        )
        .await;
    let document = result_document(Some(&id(&task)), started_at, Vec::new());
    controller
        .expect_as(token, Method::POST, "/v1/results", Some(document), 201)
        .await;
    World {
        platform: id(&platform),
        qos: id(&qos),
        vm: id(&vm),
        program: id(&program),
        deployment: id(&deployment),
        task: id(&task),
    }
}

#[tokio::test]
async fn tenants_see_only_their_own_objects_and_cannot_touch_the_others() {
    let (_dir, controller) = TestController::fresh().await;
    controller.register("n1", "").await;
    controller.register("n2", "").await;
    let alice = controller.tenant_token("t1", "alice", "member").await;
    let bob = controller.tenant_token("t2", "bob", "member").await;

    let a = build_world(&controller, &alice, "2026-12-05T01:00:00Z").await;
    // Names are per tenant: t2 uses the very same ones.
    let b = build_world(&controller, &bob, "2026-12-05T01:05:00Z").await;
    assert_ne!(a.platform, b.platform);

    let (_, before) = controller
        .call(Method::GET, &format!("/v1/platforms/{}", a.platform), None)
        .await;
    let (_, vm_before) = controller
        .call(Method::GET, &format!("/v1/vms/{}", a.vm), None)
        .await;

    // Lists hold only bob's objects.
    for (path, key) in [
        ("/v1/platforms", "platforms"),
        ("/v1/qos_policies", "qos_policies"),
        ("/v1/vms", "vms"),
        ("/v1/programs", "programs"),
        ("/v1/deployments", "deployments"),
        ("/v1/tasks", "tasks"),
        ("/v1/results", "results"),
        ("/v1/tenants", "tenants"),
    ] {
        let (status, body) = controller.call_as(&bob, Method::GET, path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        let items = body[key].as_array().unwrap();
        assert_eq!(items.len(), 1, "{path}: {body}");
        let tenant_id = items[0]["tenant_id"].as_str().unwrap_or_else(|| {
            items[0]["id"].as_str().unwrap() // the tenant list holds the tenant itself
        });
        assert_ne!(tenant_id, "", "{path}: {body}");
    }
    let (_, list) = controller
        .call_as(&bob, Method::GET, "/v1/platforms", None)
        .await;
    assert_eq!(list["platforms"][0]["id"], b.platform.as_str());
    // A list filter naming alice's platform finds nothing.
    let (_, vms) = controller
        .call_as(
            &bob,
            Method::GET,
            &format!("/v1/vms?platform={}", a.platform),
            None,
        )
        .await;
    assert_eq!(vms["vms"], json!([]), "{vms}");

    // Every read of alice's objects by id answers 404, like a missing object.
    for path in [
        format!("/v1/platforms/{}", a.platform),
        format!("/v1/qos_policies/{}", a.qos),
        format!("/v1/vms/{}", a.vm),
        format!("/v1/vms/{}/logs", a.vm),
        format!("/v1/programs/{}", a.program),
        format!("/v1/deployments/{}", a.deployment),
        format!("/v1/tasks/{}", a.task),
        format!("/v1/results?task={}", a.task),
        format!("/v1/results/latest?task={}", a.task),
        format!("/v1/results/export?format=csv&task={}", a.task),
        "/v1/tenants/t1".to_string(),
        "/v1/platforms?tenant=t1".to_string(),
    ] {
        let (status, body) = controller.call_as(&bob, Method::GET, &path, None).await;
        assert_eq!(status, 404, "GET {path}: {body}");
        assert_eq!(body["error"]["code"], "not_found", "GET {path}: {body}");
    }
    // Every write answers 404 too.
    for (method, path, body) in [
        (
            Method::PATCH,
            format!("/v1/platforms/{}", a.platform),
            Some(json!({"description": "mine"})),
        ),
        (
            Method::DELETE,
            format!("/v1/platforms/{}", a.platform),
            None,
        ),
        (
            Method::POST,
            format!("/v1/platforms/{}/pause", a.platform),
            None,
        ),
        (
            Method::PATCH,
            format!("/v1/qos_policies/{}", a.qos),
            Some(json!({"ingress_max_kbps": 1})),
        ),
        (Method::DELETE, format!("/v1/qos_policies/{}", a.qos), None),
        (
            Method::PATCH,
            format!("/v1/vms/{}", a.vm),
            Some(json!({"power_state": "stopped"})),
        ),
        (Method::DELETE, format!("/v1/vms/{}?force=true", a.vm), None),
        (Method::DELETE, format!("/v1/programs/{}", a.program), None),
        (
            Method::DELETE,
            format!("/v1/deployments/{}", a.deployment),
            None,
        ),
        (Method::DELETE, format!("/v1/tasks/{}", a.task), None),
    ] {
        let (status, answer) = controller.call_as(&bob, method.clone(), &path, body).await;
        assert_eq!(status, 404, "{method} {path}: {answer}");
    }
    // Deploying bob's program into alice's VM: no such VM, as for a missing one.
    let (status, refused) = controller
        .call_as(
            &bob,
            Method::POST,
            "/v1/deployments",
            Some(json!({"program": "prog", "vms": [a.vm.clone()]})),
        )
        .await;
    let (_, missing) = controller
        .call_as(
            &bob,
            Method::POST,
            "/v1/deployments",
            Some(json!({"program": "prog", "vms": ["00000000-0000-4000-8000-00000000dead"]})),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"]["field"], "vms[0]");
    assert_eq!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .replace(&a.vm, "X"),
        missing["error"]["message"]
            .as_str()
            .unwrap()
            .replace("00000000-0000-4000-8000-00000000dead", "X"),
    );
    // Nor can bob post results into alice's task or name t1 for a create.
    let document = result_document(Some(&a.task), "2026-12-05T02:00:00Z", Vec::new());
    controller
        .expect_as(&bob, Method::POST, "/v1/results", Some(document), 422)
        .await;
    controller
        .expect_as(
            &bob,
            Method::POST,
            "/v1/qos_policies",
            Some(json!({"name": "sneaky", "ingress_max_kbps": 1, "tenant": "t1"})),
            403,
        )
        .await;

    // Events: bob sees his own objects' events, none of alice's, none of the nodes'.
    let (_, events) = controller
        .call_as(&bob, Method::GET, "/v1/events?limit=1000", None)
        .await;
    let events = events["events"].as_array().unwrap();
    assert!(!events.is_empty());
    let alice_ids = [
        &a.platform,
        &a.qos,
        &a.vm,
        &a.program,
        &a.deployment,
        &a.task,
    ];
    for event in events {
        let object = event["object_id"].as_str().unwrap();
        assert!(!alice_ids.iter().any(|id| *id == object), "{event}");
        assert_ne!(event["object_kind"], "node", "{event}");
    }
    // The CSV export holds only bob's run.
    let response = reqwest::Client::new()
        .get(controller.url("/v1/results/export?format=csv"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    let csv = response.text().await.unwrap();
    assert!(!csv.contains("2026-12-05T01:00:00Z"), "{csv}");

    // Nodes: visible without the operator's fields; their logs are the operator's.
    let (_, nodes) = controller
        .call_as(&bob, Method::GET, "/v1/nodes", None)
        .await;
    assert_eq!(nodes["nodes"].as_array().unwrap().len(), 2);
    assert_eq!(nodes["nodes"][0]["management_address"], "");
    controller
        .expect_as(&bob, Method::GET, "/v1/nodes/n1/logs", None, 403)
        .await;
    controller
        .expect_as(
            &bob,
            Method::PATCH,
            "/v1/nodes/n1",
            Some(json!({"labels": {"mine": "yes"}})),
            403,
        )
        .await;
    // Appliances: a shared catalog everyone reads and only the operator extends.
    let (status, _) = controller
        .call_as(&bob, Method::GET, "/v1/appliances/namespace", None)
        .await;
    assert_eq!(status, 200);
    controller
        .expect_as(
            &bob,
            Method::POST,
            "/v1/appliances",
            Some(
                json!({"name": "evil", "version": "1", "arch": "x86_64", "os": "x",
                    "kernel": "/etc/shadow", "initrd": "/etc/shadow", "min_memory_mib": 64,
                    "backends": ["libvirt"]}),
            ),
            403,
        )
        .await;

    // Nothing of alice's changed.
    let (status, after) = controller
        .call(Method::GET, &format!("/v1/platforms/{}", a.platform), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(after, before);
    let (_, vm_after) = controller
        .call(Method::GET, &format!("/v1/vms/{}", a.vm), None)
        .await;
    assert_eq!(vm_after, vm_before);
    for path in [
        format!("/v1/qos_policies/{}", a.qos),
        format!("/v1/programs/{}", a.program),
        format!("/v1/tasks/{}", a.task),
    ] {
        let (status, _) = controller.call_as(&alice, Method::GET, &path, None).await;
        assert_eq!(status, 200, "{path}");
    }
    let (_, deployment) = controller
        .call_as(
            &alice,
            Method::GET,
            &format!("/v1/deployments/{}", a.deployment),
            None,
        )
        .await;
    assert_eq!(deployment["runs"][0]["status"], "pending", "{deployment}");
    let (_, results) = controller
        .call_as(&alice, Method::GET, "/v1/results", None)
        .await;
    assert_eq!(results["results"].as_array().unwrap().len(), 1, "{results}");

    // The operator sees both; a name both tenants use is ambiguous.
    let (_, all) = controller.call(Method::GET, "/v1/platforms", None).await;
    assert_eq!(all["platforms"].as_array().unwrap().len(), 2);
    let answer = controller
        .expect(Method::GET, "/v1/platforms/lab", None, 409)
        .await;
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("t1, t2") && message.contains("?tenant="),
        "{message}"
    );
    let answer = controller
        .expect(Method::GET, "/v1/platforms/lab?tenant=t1", None, 200)
        .await;
    assert_eq!(answer["id"], a.platform.as_str());
    controller.stop().await;
}

#[tokio::test]
async fn a_viewer_reads_but_every_write_is_refused_with_the_role_it_needs() {
    let (_dir, controller) = TestController::fresh().await;
    controller.register("n1", "").await;
    let member = controller.tenant_token("t1", "ci", "member").await;
    let viewer = controller.tenant_token("t1", "dashboard", "viewer").await;
    let other = controller.tenant_token("t2", "other", "member").await;
    controller
        .create_as(
            &member,
            "/v1/platforms",
            json!({"name": "lab", "nodes": ["n1"]}),
        )
        .await;
    let foreign = controller
        .create_as(
            &other,
            "/v1/platforms",
            json!({"name": "theirs", "nodes": ["n1"]}),
        )
        .await;

    controller
        .expect_as(&viewer, Method::GET, "/v1/platforms/lab", None, 200)
        .await;
    let body = controller
        .expect_as(&viewer, Method::DELETE, "/v1/platforms/lab", None, 403)
        .await;
    assert_eq!(body["error"]["code"], "forbidden");
    assert_eq!(
        body["error"]["message"],
        "deleting platform \"lab\" needs role member in tenant \"t1\"; token \"dashboard\" has role viewer"
    );
    let body = controller
        .expect_as(
            &viewer,
            Method::PATCH,
            "/v1/platforms/lab",
            Some(json!({"flow_monitoring": true})),
            403,
        )
        .await;
    assert_eq!(
        body["error"]["message"],
        "changing platform \"lab\" needs role member in tenant \"t1\"; token \"dashboard\" has role viewer"
    );
    let body = controller
        .expect_as(
            &viewer,
            Method::POST,
            "/v1/platforms",
            Some(json!({"name": "more", "nodes": ["n1"]})),
            403,
        )
        .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("creating platform \"more\" needs role member in tenant \"t1\""),
        "{body}"
    );
    // Another tenant's object stays invisible, even to a refused write.
    let (status, _) = controller
        .call_as(
            &viewer,
            Method::DELETE,
            &format!("/v1/platforms/{}", id(&foreign)),
            None,
        )
        .await;
    assert_eq!(status, 404);
    // A viewer cannot mint tokens either (that is an owner's).
    let (status, body) = mint_token(
        &controller,
        &viewer,
        json!({"name": "escalate", "role": "owner"}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // Nothing changed.
    let (_, list) = controller.call(Method::GET, "/v1/platforms", None).await;
    assert_eq!(list["platforms"].as_array().unwrap().len(), 2);
    let (_, whoami) = controller
        .call_as(&viewer, Method::GET, "/v1/whoami", None)
        .await;
    assert_eq!(whoami["role"], "viewer");
    assert_eq!(whoami["tenant_name"], "t1");
    controller.stop().await;
}

#[tokio::test]
async fn token_secrets_are_shown_once_stored_as_digests_and_refused_once_revoked_or_expired() {
    let (dir, controller) = TestController::fresh().await;
    let (status, _) = controller
        .call(Method::POST, "/v1/tenants", Some(json!({"name": "t1"})))
        .await;
    assert_eq!(status, 201);
    let (status, created) = mint_token(
        &controller,
        &controller.admin_token,
        json!({"name": "ci", "role": "owner", "tenant": "t1", "request_id": "tok-1"}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let bearer = created["secret"].as_str().unwrap().to_string();
    let token_id = id(&created);
    assert!(bearer.starts_with(&format!("mlt_{token_id}_")), "{bearer}");
    let secret = bearer.rsplit('_').next().unwrap().to_string();

    // Shown once: a replay of the create and every read leave it out.
    let (status, replay) = mint_token(
        &controller,
        &controller.admin_token,
        json!({"name": "ci", "role": "owner", "tenant": "t1", "request_id": "tok-1"}),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(replay["id"], token_id.as_str());
    assert_eq!(replay["secret"], "");
    let (_, listed) = controller.call(Method::GET, "/v1/tokens", None).await;
    assert!(!listed.to_string().contains(&secret), "{listed}");
    // Only a digest is stored, and the secret appears nowhere in the database.
    let digest = common::db::value(
        dir.path(),
        &format!(
            "SELECT secret_digest FROM api_tokens WHERE id = {}",
            common::db::quote(&token_id)
        ),
    )
    .unwrap();
    assert_eq!(
        digest,
        format!("sha256:{}", hex::encode(Sha256::digest(secret.as_bytes())))
    );
    let dump = common::db::value(
        dir.path(),
        &format!(
            "SELECT COUNT(*) FROM idempotency WHERE body LIKE '%' || {} || '%'",
            common::db::quote(&secret)
        ),
    );
    assert_eq!(dump.as_deref(), Some("0"));

    // The token works, and its use is recorded.
    let whoami = controller
        .expect_as(&bearer, Method::GET, "/v1/whoami", None, 200)
        .await;
    assert_eq!(whoami["token_name"], "ci");
    assert_eq!(whoami["role"], "owner");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, token) = controller
            .call(Method::GET, &format!("/v1/tokens/{token_id}"), None)
            .await;
        if token["last_used_at"].is_string() {
            break;
        }
        assert!(Instant::now() < deadline, "last_used_at never set: {token}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A wrong secret for a real id is refused.
    let (status, _) = controller
        .call_as(
            &format!("mlt_{token_id}_{}", "0".repeat(64)),
            Method::GET,
            "/v1/whoami",
            None,
        )
        .await;
    assert_eq!(status, 401);

    // The owner mints a member token for its tenant, but not for another one.
    let (status, body) = mint_token(
        &controller,
        &bearer,
        json!({"name": "short", "role": "member", "ttl_seconds": 1}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let short = body["secret"].as_str().unwrap().to_string();
    let (status, body) = mint_token(
        &controller,
        &bearer,
        json!({"name": "op", "role": "operator"}),
    )
    .await;
    assert_eq!(status, 403, "{body}");

    // Expired: refused with the reason.
    let deadline = Instant::now() + Duration::from_secs(10);
    let refusal = loop {
        let (status, body) = controller
            .call_as(&short, Method::GET, "/v1/whoami", None)
            .await;
        if status == 401 {
            break body;
        }
        assert!(Instant::now() < deadline, "the token never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        refusal["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"short\" expired at"),
        "{refusal}"
    );

    // Revoked: refused with the reason; the record stays.
    let revoked = controller
        .expect(Method::DELETE, &format!("/v1/tokens/{token_id}"), None, 200)
        .await;
    assert!(revoked["revoked_at"].is_string());
    let body = controller
        .expect_as(&bearer, Method::GET, "/v1/whoami", None, 401)
        .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"ci\" was revoked at"),
        "{body}"
    );
    let (status, _) = controller
        .call(Method::GET, &format!("/v1/tokens/{token_id}"), None)
        .await;
    assert_eq!(status, 200);
    controller.stop().await;
}

#[tokio::test]
async fn the_admin_page_with_a_tenant_token_shows_that_tenant_only() {
    let (_dir, controller) = TestController::fresh().await;
    controller.register("n1", "").await;
    controller.register("n2", "").await;
    let alice = controller.tenant_token("t1", "alice", "member").await;
    let bob = controller.tenant_token("t2", "bob", "member").await;
    build_world(&controller, &alice, "2026-12-05T01:00:00Z").await;
    controller
        .create_as(
            &bob,
            "/v1/platforms",
            json!({"name": "bobs", "nodes": ["n1"]}),
        )
        .await;

    let rendered = controller.render_admin_page(&bob).await;
    assert_eq!(rendered["error"], "", "{rendered:#}");
    assert_eq!(rendered["whoami"], "token bob: member of tenant t2");
    assert_eq!(
        rendered["platforms"].as_array().unwrap().len(),
        1,
        "{rendered:#}"
    );
    assert_eq!(rendered["platforms"][0][0], "bobs");
    assert_eq!(rendered["vms"], json!([]), "{rendered:#}");
    assert_eq!(rendered["results"], json!([]), "{rendered:#}");
    controller.stop().await;
}

/// Node identity routes (approve, revoke, delete, join tokens, pending
/// registrations) act on the whole testbed: even a tenant's owner is refused,
/// and the node is still there and online afterwards.
#[tokio::test]
async fn node_identity_routes_are_the_operators_alone() {
    let (_dir, controller) = TestController::fresh().await;
    controller.register("n1", "").await;
    let owner = controller.tenant_token("t1", "boss", "owner").await;
    let refused: [(Method, &str, Option<Value>); 7] = [
        (Method::POST, "/v1/nodes/n1/approve", None),
        (Method::POST, "/v1/nodes/n1/revoke", None),
        (Method::DELETE, "/v1/nodes/n1", None),
        (Method::GET, "/v1/registration_requests", None),
        (Method::GET, "/v1/join_tokens", None),
        (
            Method::POST,
            "/v1/join_tokens",
            Some(json!({"node_name": "n9", "single_use": true})),
        ),
        (Method::DELETE, "/v1/join_tokens/anything", None),
    ];
    for (method, path, body) in refused {
        let (status, answer) = controller.call_as(&owner, method.clone(), path, body).await;
        assert_eq!(status, 403, "{method} {path}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("needs role operator")),
            "{method} {path}: {answer}"
        );
    }
    let (status, node) = controller.call(Method::GET, "/v1/nodes/n1", None).await;
    assert_eq!(status, 200, "{node}");
    assert_eq!(node["status"], "online", "{node}");
    let tokens = controller
        .expect(Method::GET, "/v1/join_tokens", None, 200)
        .await;
    assert_eq!(tokens["join_tokens"], json!([]), "{tokens}");
}

/// A platform's flows are its tenant's alone: another tenant's token gets
/// the 404 of a missing platform (before the collector is even asked), a
/// viewer cannot switch monitoring, and a node's export is the operator's.
#[tokio::test]
async fn flows_belong_to_the_platforms_tenant_and_export_to_the_operator() {
    let (_dir, controller) = TestController::fresh().await;
    controller.register("n1", "").await;
    let alice = controller.tenant_token("t1", "alice", "member").await;
    let viewer = controller.tenant_token("t1", "vera", "viewer").await;
    let owner = controller.tenant_token("t1", "boss", "owner").await;
    let bob = controller.tenant_token("t2", "bob", "member").await;
    let platform = id(&controller
        .create_as(
            &alice,
            "/v1/platforms",
            json!({"name": "lab", "nodes": ["n1"], "flow_monitoring": true}),
        )
        .await);
    let flows = format!("/v1/platforms/{platform}/flows");

    let body = controller
        .expect_as(&bob, Method::GET, &flows, None, 404)
        .await;
    assert_eq!(body["error"]["code"], "not_found", "{body}");
    // Alice gets past the lookup: this controller runs no collector.
    controller
        .expect_as(&alice, Method::GET, &flows, None, 503)
        .await;

    let off = json!({"flow_monitoring": false});
    let patch = format!("/v1/platforms/{platform}");
    // The viewer sees the platform (403), bob does not (404).
    for (token, refusal) in [(&viewer, 403), (&bob, 404)] {
        let (status, body) = controller
            .call_as(token, Method::PATCH, &patch, Some(off.clone()))
            .await;
        assert_eq!(status, refusal, "{body}");
    }
    let body = controller
        .expect_as(&alice, Method::PATCH, &patch, Some(off), 200)
        .await;
    assert_eq!(body["flow_monitoring"], false, "{body}");
    controller
        .expect_as(&alice, Method::GET, &flows, None, 409)
        .await;

    let export = json!({"labels": {}, "flow_export": {"enabled": true, "protocol": "ipfix",
        "sampling": 64, "active_timeout_seconds": 30, "collector": null}});
    controller
        .expect_as(
            &owner,
            Method::PATCH,
            "/v1/nodes/n1",
            Some(export.clone()),
            403,
        )
        .await;
    let (_, node) = controller.call(Method::GET, "/v1/nodes/n1", None).await;
    assert_eq!(node["flow_export"], Value::Null, "{node}");
    let node = controller
        .expect(Method::PATCH, "/v1/nodes/n1", Some(export), 200)
        .await;
    assert_eq!(node["flow_export"]["protocol"], "ipfix", "{node}");
    assert_eq!(node["flow_export"]["sampling"], 64, "{node}");
}

/// A VM's guest usage is its tenant's alone, like the VM: another tenant's
/// token gets the 404 of a missing VM; the owner gets what the node relayed,
/// one sample per 10 s step, with rates from the counters.
#[tokio::test]
async fn vm_usage_is_stored_per_step_and_belongs_to_the_vms_tenant() {
    use measurelab_api::node_v1::{GuestReport, ResourceUsage, StatusReport};
    let (_dir, controller) = TestController::fresh().await;
    let n1 = controller.register("n1", "").await;
    let alice = controller.tenant_token("t1", "alice", "member").await;
    let bob = controller.tenant_token("t2", "bob", "member").await;
    controller
        .create_as(
            &alice,
            "/v1/platforms",
            json!({"name": "lab", "nodes": ["n1"]}),
        )
        .await;
    let vm = id(&controller
        .create_as(
            &alice,
            "/v1/vms",
            json!({"name": "vm1", "platform": "lab", "node": "n1", "vcpus": 1, "memory_mib": 64,
               "appliance": "namespace", "power_state": "running"}),
        )
        .await);

    // Three heartbeats in one 10 s step, then one in the next: two rows.
    let now_s = time::OffsetDateTime::now_utc().unix_timestamp();
    // On a minute boundary, so a 60 s step holds both 10 s steps.
    let step_start = (now_s - 120) / 60 * 60;
    for (offset_ms, cpu, rx) in [
        (0, 10.0, 1_000),
        (3_000, 90.0, 2_000),
        (9_000, 90.0, 3_000),
        (10_000, 30.0, 6_000),
    ] {
        let report = StatusReport {
            node_id: n1.node_id.clone(),
            node_secret: n1.node_secret.clone(),
            guests: vec![GuestReport {
                vm_id: vm.clone(),
                last_heartbeat_unix_ms: step_start * 1000 + offset_ms,
                usage: Some(ResourceUsage {
                    cpu_count: 1,
                    cpu_used_percent: cpu,
                    memory_total_bytes: 64 << 20,
                    memory_used_bytes: 8 << 20,
                    network_rx_bytes: rx,
                    network_tx_bytes: rx / 10,
                    ..Default::default()
                }),
                logs: vec![],
                points: None,
            }],
            ..Default::default()
        };
        controller.grpc().await.report_status(report).await.unwrap();
    }

    let path = format!("/v1/vms/{vm}/usage?step=10");
    let body = controller
        .expect_as(&bob, Method::GET, &path, None, 404)
        .await;
    assert_eq!(body["error"]["code"], "not_found", "{body}");

    let body = controller
        .expect_as(&alice, Method::GET, &path, None, 200)
        .await;
    assert_eq!(body["vm_id"], vm.as_str());
    assert_eq!(body["step_seconds"], 10);
    let samples = body["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 2, "{body}");
    // The first heartbeat of a step is the one kept.
    assert_eq!(samples[0]["cpu_used_percent"], 10.0, "{body}");
    assert_eq!(samples[0]["network_rx_bytes"], 1_000);
    assert!(samples[0].get("network_rx_bytes_per_second").is_none());
    assert_eq!(samples[1]["cpu_used_percent"], 30.0, "{body}");
    // (6000 - 1000) bytes in the 10 s between the two kept samples.
    assert_eq!(samples[1]["network_rx_bytes_per_second"], 500.0, "{body}");
    assert_eq!(samples[1]["memory_used_bytes"], 8u64 << 20);

    // A coarser step folds both into one sample with the mean CPU.
    let since = time::OffsetDateTime::from_unix_timestamp(step_start)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let body = controller
        .expect_as(
            &alice,
            Method::GET,
            &format!("/v1/vms/{vm}/usage?step=60&since={since}"),
            None,
            200,
        )
        .await;
    assert_eq!(body["samples"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["samples"][0]["cpu_used_percent"], 20.0, "{body}");

    // Bad input names the field.
    for (query, field) in [
        ("step=5", "step"),
        ("step=10&since=2020-01-01T00:00:00Z", "step"),
        (
            "until=2020-01-01T00:00:00Z&since=2021-01-01T00:00:00Z",
            "until",
        ),
        ("since=yesterday", "since"),
        ("limit=3", "limit"),
    ] {
        let (status, body) = controller
            .call_as(
                &alice,
                Method::GET,
                &format!("/v1/vms/{vm}/usage?{query}"),
                None,
            )
            .await;
        assert_eq!(status, 422, "{query}: {body}");
        assert_eq!(body["error"]["field"], field, "{query}: {body}");
    }
}
