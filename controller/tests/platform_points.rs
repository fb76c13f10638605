//! `GET /v1/platforms/{id}/points`: the point list a platform's MSCS reports
//! through its node's status reports, scoped to the platform's tenant and
//! checked field by field (guest content), replaced whole, never half stored.

mod common;

use common::TestController;
use measurelab_api::node_v1::{GuestReport, LogLine, MscsPoint, MscsPointList, StatusReport};
use reqwest::Method;
use serde_json::{json, Value};

async fn create(controller: &TestController, token: &str, path: &str, body: Value) -> Value {
    let (status, answer) = controller
        .call_as(token, Method::POST, path, Some(body))
        .await;
    assert_eq!(status, 201, "POST {path}: {answer}");
    answer
}

/// A platform `lab` on n1 with a VM `mscs`; returns (platform id, VM id).
async fn platform_with_mscs(controller: &TestController, token: &str) -> (String, String) {
    let platform = create(
        controller,
        token,
        "/v1/platforms",
        json!({"name": "lab", "nodes": ["n1"]}),
    )
    .await;
    let vm = create(
        controller,
        token,
        "/v1/vms",
        json!({"name": "mscs", "platform": "lab", "node": "n1", "vcpus": 1, "memory_mib": 64,
               "appliance": "namespace", "power_state": "running"}),
    )
    .await;
    let id = |v: &Value| v["id"].as_str().unwrap().to_string();
    (id(&platform), id(&vm))
}

fn point(name: &str, state: &str, last_seen_unix_ms: i64) -> MscsPoint {
    MscsPoint {
        name: name.into(),
        control_address: "10.201.0.3:7001".into(),
        data_address: "10.201.0.3".into(),
        state: state.into(),
        last_seen_unix_ms,
        protocol_version: 2,
        origin: "registered".into(),
    }
}

fn report(
    node: &measurelab_api::node_v1::RegisterResponse,
    vm: &str,
    points: Vec<MscsPoint>,
    log: &str,
) -> StatusReport {
    StatusReport {
        node_id: node.node_id.clone(),
        node_secret: node.node_secret.clone(),
        guests: vec![GuestReport {
            vm_id: vm.into(),
            logs: vec![LogLine {
                timestamp_unix_ms: 1_700_000_000_000,
                level: "info".into(),
                target: "guest".into(),
                message: log.into(),
            }],
            points: Some(MscsPointList { points }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[tokio::test]
async fn the_point_list_is_the_platforms_tenants_checked_and_replaced_whole() {
    let (_dir, controller) = TestController::fresh().await;
    let n1 = controller.register("n1", "").await;
    let n2 = controller.register("n2", "").await;
    let alice = controller.tenant_token("t1", "alice", "member").await;
    let bob = controller.tenant_token("t2", "bob", "member").await;
    let (platform, vm) = platform_with_mscs(&controller, &alice).await;
    let (bobs_platform, _) = platform_with_mscs(&controller, &bob).await;
    let points_of = |p: &str| format!("/v1/platforms/{p}/points");

    // Nothing reported yet.
    let body = controller
        .expect_as(&alice, Method::GET, &points_of(&platform), None, 200)
        .await;
    assert_eq!(body["reported_at"], Value::Null, "{body}");
    assert_eq!(body["points"], json!([]), "{body}");

    let mut grpc = controller.grpc().await;
    grpc.report_status(report(
        &n1,
        &vm,
        vec![
            point("p1", "active", 1_700_000_000_000),
            point("p2", "missing", 1_699_999_990_000),
        ],
        "first",
    ))
    .await
    .unwrap();
    // By id and by name (the caller's own "lab").
    for key in [platform.as_str(), "lab"] {
        let body = controller
            .expect_as(&alice, Method::GET, &points_of(key), None, 200)
            .await;
        assert_eq!(body["platform"], platform.as_str());
        assert_eq!(body["reported_by"], "mscs");
        assert!(body["reported_at"].is_string(), "{body}");
        assert_eq!(
            body["points"],
            json!([
                {"name": "p1", "control_address": "10.201.0.3:7001", "data_address": "10.201.0.3",
                 "state": "active", "last_seen": "2023-11-14T22:13:20Z", "protocol_version": 2,
                 "origin": "registered"},
                {"name": "p2", "control_address": "10.201.0.3:7001", "data_address": "10.201.0.3",
                 "state": "missing", "last_seen": "2023-11-14T22:13:10Z", "protocol_version": 2,
                 "origin": "registered"},
            ]),
            "{body}"
        );
    }

    // Another tenant: alice's platform is not found, and bob's own "lab" has
    // no list (the two tenants' platforms share a name and a node).
    let body = controller
        .expect_as(&bob, Method::GET, &points_of(&platform), None, 404)
        .await;
    assert_eq!(body["error"]["code"], "not_found", "{body}");
    let body = controller
        .expect_as(&bob, Method::GET, &points_of("lab"), None, 200)
        .await;
    assert_eq!(body["platform"], bobs_platform.as_str());
    assert_eq!(body["points"], json!([]), "{body}");
    let (status, _) = controller
        .call_as(&alice, Method::GET, &points_of("nope"), None)
        .await;
    assert_eq!(status, 404);

    // Bad lists are dropped whole; the rest of the report (the log line) still counts.
    let mut bad_lists = Vec::new();
    for spoil in [
        (|p: &mut MscsPoint| p.control_address = "10.201.0.3".into()) as fn(&mut MscsPoint),
        |p| p.data_address = "not-an-ip".into(),
        |p| p.state = "gone".into(),
        |p| p.origin = "injected".into(),
        |p| p.name = "<script>".into(),
        |p| p.last_seen_unix_ms = -1,
        |p| p.name = "p1".into(),
    ] {
        let mut spoilt = point("p3", "active", 1_700_000_000_000);
        spoil(&mut spoilt);
        bad_lists.push(vec![point("p1", "active", 1_700_000_000_000), spoilt]);
    }
    bad_lists.push(
        (0..257)
            .map(|i| point(&format!("p{i}"), "active", 1))
            .collect(),
    );
    let before = controller
        .call_as(&alice, Method::GET, &points_of(&platform), None)
        .await
        .1;
    for (i, list) in bad_lists.into_iter().enumerate() {
        grpc.report_status(report(&n1, &vm, list, &format!("bad {i}")))
            .await
            .unwrap();
        let (_, after) = controller
            .call_as(&alice, Method::GET, &points_of(&platform), None)
            .await;
        assert_eq!(after, before, "bad list {i} changed the stored one");
        let (_, logs) = controller
            .call_as(&alice, Method::GET, &format!("/v1/vms/{vm}/logs"), None)
            .await;
        let last = logs["lines"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["message"], format!("bad {i}"), "{logs}");
    }

    // A node that does not host the VM cannot report its MSCS's list.
    grpc.report_status(report(&n2, &vm, vec![], "foreign"))
        .await
        .unwrap();
    let (_, after) = controller
        .call_as(&alice, Method::GET, &points_of(&platform), None)
        .await;
    assert_eq!(after, before, "n2 replaced n1's VM's list");

    // A new list replaces the old one whole.
    grpc.report_status(report(
        &n1,
        &vm,
        vec![point("p2", "active", 1_700_000_001_000)],
        "new",
    ))
    .await
    .unwrap();
    let (_, body) = controller
        .call_as(&alice, Method::GET, &points_of(&platform), None)
        .await;
    let names: Vec<&str> = body["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["p2"], "{body}");
    assert_eq!(body["points"][0]["state"], "active");

    // The MSCS's VM gone: its list goes with it.
    controller
        .expect_as(
            &alice,
            Method::DELETE,
            &format!("/v1/vms/{vm}?force=true"),
            None,
            200,
        )
        .await;
    let (_, body) = controller
        .call_as(&alice, Method::GET, &points_of(&platform), None)
        .await;
    assert_eq!(body["reported_at"], Value::Null, "{body}");
    assert_eq!(body["points"], json!([]), "{body}");
    controller.stop().await;
}
