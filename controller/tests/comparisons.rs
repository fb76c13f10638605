//! Platform vs nodes (`compare_with_service_host`), through the real HTTP and
//! gRPC listeners: a stored platform run schedules a service-host run between
//! the nodes of its source and receivers, and that run's result lands in the
//! platform document's `comparison`.

mod common;

use common::TestController;
use measurelab_api::node_v1::{PostResultRequest, RegisterResponse, ServiceTask};
use reqwest::Method;
use serde_json::{json, Value};

async fn with_service_host(
    controller: &TestController,
    name: &str,
    endpoint: &str,
) -> RegisterResponse {
    let mut request = common::register_request(&controller.join_token, name, "");
    if let Some(caps) = request.capabilities.as_mut() {
        caps.service_endpoint = endpoint.into();
    }
    controller
        .grpc()
        .await
        .register(request)
        .await
        .unwrap()
        .into_inner()
}

async fn service_tasks(controller: &TestController, node: &RegisterResponse) -> Vec<ServiceTask> {
    controller.desired_state(node).await.service_tasks
}

async fn post_as(
    controller: &TestController,
    node: &RegisterResponse,
    task_id: &str,
    document: &Value,
) -> Result<String, tonic::Status> {
    controller
        .grpc()
        .await
        .post_result(PostResultRequest {
            node_id: node.node_id.clone(),
            node_secret: node.node_secret.clone(),
            vm_id: String::new(),
            task_id: task_id.into(),
            document_json: document.to_string(),
        })
        .await
        .map(|r| r.into_inner().result_id)
}

fn task(name: &str, platform: &str, schedule: &str) -> Value {
    let mut body = common::task_body(name, platform, schedule);
    body["compare_with_service_host"] = json!(true);
    body
}

#[tokio::test]
async fn a_platform_run_is_compared_with_a_service_host_run_of_its_nodes() {
    let (_dir, controller) = TestController::fresh().await;
    let n1 = with_service_host(&controller, "n1", "10.253.0.11:7090").await;
    let n2 = with_service_host(&controller, "n2", "10.253.0.12:7090").await;
    controller.register("n3", "").await;
    controller.create_platform("p", &["n1", "n2"]).await;
    controller.create_platform("bare", &["n1", "n3"]).await;
    controller.create_vm("mscs", "p", "n1").await;
    controller.create_vm("point", "p", "n2").await;

    // Refused, naming the field: on a service_host task, and on a platform
    // with a node that runs no service host.
    let mut service = task("svc", "p", "once");
    service["mode"] = json!("service_host");
    service["nodes"] = json!(["n1", "n2"]);
    service.as_object_mut().unwrap().remove("platform");
    for (body, needle) in [
        (service, "only for mode platform"),
        (task("bare", "bare", "once"), "\"n3\""),
    ] {
        let (status, answer) = controller.call(Method::POST, "/v1/tasks", Some(body)).await;
        assert_eq!(status, 422, "{answer}");
        assert_eq!(
            answer["error"]["field"], "compare_with_service_host",
            "{answer}"
        );
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{answer}");
    }

    let created = controller
        .create("/v1/tasks", task("cmp", "p", "once"))
        .await;
    assert_eq!(created["compare_with_service_host"], true);

    // The platform run: point (on n2) lost 1 %, median delay 320 us.
    let run = common::result_document(
        Some("cmp"),
        "2026-03-01T00:00:00Z",
        vec![common::reporting_receiver("point", 1000, 0.01, 320.0, 12.0)],
    );
    let stored = controller.create("/v1/results", run).await;
    let platform_result = stored["id"].as_str().unwrap().to_string();
    let pending = &stored["document"]["comparison"];
    assert_eq!(pending["status"], "pending", "{pending:#}");
    assert_eq!(pending["source_node"], "n1");
    assert_eq!(pending["receivers"][0]["node"], "n2");
    assert_eq!(pending["receivers"][0]["platform"]["packets_lost"], 10);
    let comparison_id = pending["service_host_task_id"]
        .as_str()
        .unwrap()
        .to_string();

    // Both nodes get the service-host run; n1, the source's node, drives it.
    for node in [&n1, &n2] {
        let tasks = service_tasks(&controller, node).await;
        assert_eq!(tasks.len(), 1, "{tasks:?}");
        assert_eq!(tasks[0].task_id, comparison_id);
        let peers: Vec<&str> = tasks[0].peers.iter().map(|p| p.node.as_str()).collect();
        assert_eq!(peers, ["n1", "n2"]);
        let spec: Value = serde_json::from_str(&tasks[0].spec_json).unwrap();
        assert_eq!(spec["mode"], "service_host");
        assert_eq!(spec["schedule"], "once");
        assert_eq!(spec["source"], "n1");
        assert_eq!(spec["receivers"], json!(["n2"]));
        for same in [
            "rate_pps",
            "duration_seconds",
            "packet_size_bytes",
            "group",
            "port",
            "ttl",
        ] {
            assert_eq!(spec[same], created[same], "{same}");
        }
    }

    // The service-host run: n2 lost 2 %, median 150 us.
    let mut service_run = common::result_document(
        Some(&comparison_id),
        "2026-03-01T00:00:07Z",
        vec![common::reporting_receiver("n2", 1000, 0.02, 150.0, 10.0)],
    );
    service_run["source_point"] = json!("n1");
    service_run["source"]["point"] = json!("n1");
    // Only the orchestrating node may post it.
    let refused = post_as(&controller, &n2, &comparison_id, &service_run)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let result_id = post_as(&controller, &n1, &comparison_id, &service_run)
        .await
        .unwrap();
    assert_eq!(result_id, platform_result);

    let latest = controller.client().latest_result("cmp").await.unwrap();
    let comparison = &latest.document["comparison"];
    assert_eq!(comparison["status"], "completed", "{comparison:#}");
    assert_eq!(comparison["service_host_run_id"], service_run["run_id"]);
    let point = &comparison["receivers"][0];
    assert_eq!(point["service_host"]["point"], "n2");
    // 1 % vs 2 % of 1000: the z = 3 bound is 3 sqrt(0.015 0.985 2/1000) = 0.0163.
    assert!(
        (point["loss_difference"].as_f64().unwrap() + 0.01).abs() < 1e-9,
        "{point:#}"
    );
    assert!(
        (point["loss_bound"].as_f64().unwrap() - 0.016307).abs() < 1e-5,
        "{point:#}"
    );
    assert_eq!(point["loss_within_bound"], true);
    // 170 us apart, against 200 us plus both 50 us clock error bounds.
    assert_eq!(point["delay_median_difference_us"], 170.0);
    assert_eq!(point["delay_bound_us"], 300.0);
    assert_eq!(point["delay_within_bound"], true);
    assert_eq!(point["jitter_difference_us"], 2.0);
    assert_eq!(comparison["consistent"], true);
    // The run closed: the nodes drop it, a repeat is absorbed, another run refused.
    assert!(service_tasks(&controller, &n1).await.is_empty());
    assert_eq!(
        post_as(&controller, &n1, &comparison_id, &service_run)
            .await
            .unwrap(),
        platform_result
    );
    service_run["run_id"] = json!("another");
    let refused = post_as(&controller, &n1, &comparison_id, &service_run)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    controller.stop().await;
}

#[tokio::test]
async fn a_newer_run_or_deleting_the_task_closes_an_open_comparison() {
    let (_dir, controller) = TestController::fresh().await;
    let n1 = with_service_host(&controller, "n1", "10.253.0.11:7090").await;
    with_service_host(&controller, "n2", "10.253.0.12:7090").await;
    controller.create_platform("p", &["n1", "n2"]).await;
    controller.create_vm("mscs", "p", "n1").await;
    controller.create_vm("point", "p", "n2").await;
    controller
        .create("/v1/tasks", task("every", "p", "periodic"))
        .await;
    let post = |started: &str| {
        common::result_document(
            Some("every"),
            started,
            vec![common::reporting_receiver("point", 1000, 0.0, 300.0, 10.0)],
        )
    };
    for started in ["2026-03-01T00:00:00Z", "2026-03-01T00:01:00Z"] {
        controller.create("/v1/results", post(started)).await;
    }
    let history = controller
        .client()
        .list_results("task=every")
        .await
        .unwrap();
    assert_eq!(history.len(), 2);
    let first = &history[0].document["comparison"];
    assert_eq!(first["status"], "failed", "{first:#}");
    assert!(
        first["reason"]
            .as_str()
            .unwrap()
            .contains("before the service-host run"),
        "{first:#}"
    );
    assert_eq!(history[1].document["comparison"]["status"], "pending");
    // Only the newest is still run.
    let open = service_tasks(&controller, &n1).await;
    assert_eq!(open.len(), 1);
    assert_eq!(
        open[0].task_id,
        history[1].document["comparison"]["service_host_task_id"]
            .as_str()
            .unwrap()
    );

    let (status, _) = controller
        .call(Method::DELETE, "/v1/tasks/every", None)
        .await;
    assert_eq!(status, 200, "{status}");
    assert!(service_tasks(&controller, &n1).await.is_empty());
    let history = controller
        .client()
        .list_results("task=every")
        .await
        .unwrap();
    let last = &history[1].document["comparison"];
    assert_eq!(last["status"], "failed", "{last:#}");
    assert!(
        last["reason"].as_str().unwrap().contains("deleted"),
        "{last:#}"
    );
    controller.stop().await;
}

#[tokio::test]
async fn a_run_with_every_receiver_on_the_source_node_is_skipped() {
    let (_dir, controller) = TestController::fresh().await;
    let n1 = with_service_host(&controller, "n1", "10.253.0.11:7090").await;
    with_service_host(&controller, "n2", "10.253.0.12:7090").await;
    controller.create_platform("p", &["n1", "n2"]).await;
    controller.create_vm("mscs", "p", "n1").await;
    controller.create_vm("point", "p", "n1").await;
    controller
        .create("/v1/tasks", task("local", "p", "once"))
        .await;
    let run = common::result_document(
        Some("local"),
        "2026-03-01T00:00:00Z",
        vec![common::reporting_receiver("point", 1000, 0.0, 30.0, 1.0)],
    );
    let stored = controller.create("/v1/results", run).await;
    let comparison = &stored["document"]["comparison"];
    assert_eq!(comparison["status"], "skipped", "{comparison:#}");
    assert!(comparison["reason"]
        .as_str()
        .unwrap()
        .contains("no receiver runs on another node"));
    assert!(service_tasks(&controller, &n1).await.is_empty());
    controller.stop().await;
}
