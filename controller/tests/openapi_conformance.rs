//! Every platform, VM, program, task and result body the controller sends
//! (and the typed client sends it) matches the schema published in
//! /v1/openapi.json, checked with the validator the provider's acceptance
//! tests use (`measurelab-conformance`: full JSON Schema, formats and bounds
//! included).

mod common;

use base64::Engine;
use common::TestController;
use measurelab_api::http::{PlatformPatch, QosPolicyPatch, VmPatch, VmPowerState};
use reqwest::Method;
use serde_json::{json, Value};

fn assert_conforms(document: &Value, schema: &str, value: &Value) {
    let found = measurelab_conformance::violations(document, schema, value).unwrap();
    assert!(found.is_empty(), "{schema}: {found:#?}\n{value:#}");
}

#[tokio::test]
async fn bodies_match_the_published_schemas() {
    let (_dir, controller) = TestController::fresh().await;
    let (_, document) = controller.call(Method::GET, "/v1/openapi.json", None).await;
    controller.register("n1", "").await;

    let call = |method: Method,
                path: &'static str,
                body: Option<Value>,
                schema: &'static str,
                status: u16| {
        let controller = &controller;
        let document = &document;
        async move {
            if let Some(body) = &body {
                let create = match schema {
                    "Platform" | "Vm" | "QosPolicy" | "Appliance" | "Program" | "Deployment"
                    | "Task"
                        if method == Method::POST =>
                    {
                        Some(format!("{schema}Create"))
                    }
                    _ => None,
                };
                if let Some(create) = create {
                    assert_conforms(document, &create, body);
                }
            }
            let (got, answer) = controller.call(method, path, body).await;
            assert_eq!(got, status, "{path}: {answer}");
            assert_conforms(document, schema, &answer);
            answer
        }
    };
    call(
        Method::POST,
        "/v1/platforms",
        Some(json!({"name": "p", "nodes": ["n1"], "description": "d"})),
        "Platform",
        201,
    )
    .await;
    call(
        Method::POST,
        "/v1/qos_policies",
        Some(json!({"name": "q", "ingress_max_kbps": 1000})),
        "QosPolicy",
        201,
    )
    .await;
    call(
        Method::POST,
        "/v1/vms",
        Some(
            json!({"name": "v", "platform": "p", "node": "n1", "vcpus": 1, "memory_mib": 64,
                    "appliance": "namespace", "qos_policy": "q", "power_state": "running"}),
        ),
        "Vm",
        201,
    )
    .await;
    let program = base64::engine::general_purpose::STANDARD.encode(b"x");
    call(
        Method::POST,
        "/v1/programs",
        Some(json!({"name": "prog", "content_base64": program})),
        "Program",
        201,
    )
    .await;
    call(
        Method::POST,
        "/v1/deployments",
        Some(json!({"program": "prog", "vms": ["v"]})),
        "Deployment",
        201,
    )
    .await;
    let task = call(
        Method::POST,
        "/v1/tasks",
        Some(json!({"name": "t", "mode": "platform", "platform": "p", "schedule": "once", "rate_pps": 10,
                    "packet_size_bytes": 100, "group": "239.1.1.1", "port": 5000, "ttl": 1})),
        "Task",
        201,
    )
    .await;
    let result = common::result_document(task["id"].as_str(), "2026-01-01T00:00:00Z", vec![]);
    assert_conforms(&document, "ResultDocument", &result);
    let (status, stored) = controller
        .call(Method::POST, "/v1/results", Some(result))
        .await;
    assert_eq!(status, 201);
    assert_conforms(&document, "ResultRecord", &stored);

    // Node ids are UUIDs and times RFC 3339: formats the schemas assert.
    call(Method::GET, "/v1/nodes", None, "NodeList", 200).await;
    call(Method::GET, "/v1/events", None, "EventList", 200).await;
    call(Method::GET, "/v1/platforms", None, "PlatformList", 200).await;
    call(Method::GET, "/v1/qos_policies", None, "QosPolicyList", 200).await;
    call(Method::GET, "/v1/appliances", None, "ApplianceList", 200).await;
    call(Method::GET, "/v1/vms", None, "VmList", 200).await;
    call(Method::GET, "/v1/programs", None, "ProgramList", 200).await;
    call(Method::GET, "/v1/deployments", None, "DeploymentList", 200).await;
    call(Method::GET, "/v1/tasks", None, "TaskList", 200).await;
    call(Method::GET, "/v1/results", None, "ResultList", 200).await;
    call(Method::GET, "/v1/results/latest", None, "ResultRecord", 200).await;
    call(
        Method::GET,
        "/v1/results/export?format=json",
        None,
        "ResultList",
        200,
    )
    .await;
    call(Method::GET, "/v1/vms/v/logs", None, "LogList", 200).await;

    // Typed patch bodies as the provider serializes them.
    let patches = [
        (
            "PlatformPatch",
            serde_json::to_value(PlatformPatch {
                description: Some("x".into()),
                ..Default::default()
            })
            .unwrap(),
        ),
        (
            "QosPolicyPatch",
            serde_json::to_value(QosPolicyPatch {
                ingress_min_kbps: Some(None),
                ..Default::default()
            })
            .unwrap(),
        ),
        (
            "VmPatch",
            serde_json::to_value(VmPatch {
                qos_policy: Some(None),
                power_state: Some(VmPowerState::Paused),
                ..Default::default()
            })
            .unwrap(),
        ),
    ];
    for (schema, body) in &patches {
        assert_conforms(&document, schema, body);
    }
    call(
        Method::PATCH,
        "/v1/vms/v",
        Some(patches[2].1.clone()),
        "Vm",
        200,
    )
    .await;
    call(
        Method::PATCH,
        "/v1/platforms/p",
        Some(patches[0].1.clone()),
        "Platform",
        200,
    )
    .await;
    call(
        Method::PATCH,
        "/v1/qos_policies/q",
        Some(patches[1].1.clone()),
        "QosPolicy",
        200,
    )
    .await;
    call(Method::DELETE, "/v1/vms/v", None, "Vm", 202).await;
    let (status, error) = controller
        .call(
            Method::POST,
            "/v1/platforms",
            Some(json!({"name": "p", "nodes": []})),
        )
        .await;
    assert_eq!(status, 409);
    assert_conforms(&document, "ErrorBody", &error);
    controller.stop().await;
}

/// The result document's schema is the one generated from its types, nested
/// parts included: a real run's document passes, and one with a wrong type
/// deep inside a receiver's metrics does not.
#[test]
fn result_documents_are_checked_down_to_nested_fields() {
    let document: Value = serde_json::from_str(measurelab_controller::openapi::json()).unwrap();
    let run = common::result_document(
        Some("task"),
        "2026-01-01T00:00:00Z",
        vec![common::reporting_receiver("point", 500, 0.1, 20.0, 2.5)],
    );
    assert_conforms(&document, "ResultDocument", &run);

    let mut wrong = run;
    wrong["receivers"][0]["metrics"]["one_way_delay_us"]["p95"] = json!("slow");
    // `metrics` is optional (anyOf: the metrics or null), so the validator
    // reports the wrong field there; its own component names it.
    let found = measurelab_conformance::violations(&document, "ResultDocument", &wrong).unwrap();
    assert!(
        found
            .iter()
            .any(|violation| violation.starts_with("$/receivers/0/metrics:")),
        "{found:#?}"
    );
    let delay = &wrong["receivers"][0]["metrics"]["one_way_delay_us"];
    let found = measurelab_conformance::violations(&document, "DelaySummaryUs", delay).unwrap();
    assert!(
        found
            .iter()
            .any(|violation| violation.starts_with("$/p95:")),
        "{found:#?}"
    );
}
