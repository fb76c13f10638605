//! Program distribution, measurement tasks and results, through the real
//! HTTP and gRPC listeners.

mod common;

use base64::Engine;
use common::TestController;
use measurelab_api::node_v1::{
    FetchProgramRequest, PollTasksRequest, PostResultRequest, ProgramRunStatus, RegisterRequest,
    RegisterResponse, StatusReport,
};
use reqwest::Method;
use serde_json::{json, Value};

async fn slice(
    controller: &TestController,
) -> (RegisterResponse, RegisterResponse, String, String) {
    let n1 = controller.register("n1", "").await;
    let n2 = controller.register("n2", "").await;
    controller.create_platform("p", &["n1", "n2"]).await;
    let mut ids = Vec::new();
    for (name, node) in [("mscs", "n1"), ("point", "n2")] {
        let vm = controller
            .create(
                "/v1/vms",
                json!({"name": name, "platform": "p", "node": node, "vcpus": 1,
                            "memory_mib": 64, "appliance": "namespace", "power_state": "running"}),
            )
            .await;
        ids.push(vm["id"].as_str().unwrap().to_string());
    }
    let point = ids.pop().unwrap();
    let mscs = ids.pop().unwrap();
    (n1, n2, mscs, point)
}

#[tokio::test]
async fn programs_are_deployed_fetched_by_their_nodes_only_and_report_back() {
    let (_dir, controller) = TestController::fresh().await;
    let (n1, n2, mscs, _point) = slice(&controller).await;
    let content = b"#!/bin/sh\necho measuring\n".to_vec();
    let encoded = base64::engine::general_purpose::STANDARD.encode(&content);

    let body = controller
        .expect(
            Method::POST,
            "/v1/programs",
            Some(json!({"name": "probe", "content_base64": encoded, "sha256": "00"})),
            422,
        )
        .await;
    assert_eq!(body["error"]["field"], "sha256");
    let (status, body) = controller
        .call(
            Method::POST,
            "/v1/programs",
            Some(json!({"name": "probe", "content_base64": "***"})),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["field"], "content_base64");
    let program = controller
        .create(
            "/v1/programs",
            json!({"name": "probe", "content_base64": encoded}),
        )
        .await;
    assert_eq!(program["size_bytes"], content.len());
    assert_eq!(program["sha256"].as_str().unwrap().len(), 64);
    // Re-uploading the same content is harmless; other content under the name is not.
    let (status, again) = controller
        .call(
            Method::POST,
            "/v1/programs",
            Some(json!({"name": "probe", "content_base64": encoded})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(again["id"], program["id"]);
    let other = base64::engine::general_purpose::STANDARD.encode(b"other");
    let (status, _) = controller
        .call(
            Method::POST,
            "/v1/programs",
            Some(json!({"name": "probe", "content_base64": other})),
        )
        .await;
    assert_eq!(status, 409);

    let (status, body) = controller
        .call(
            Method::POST,
            "/v1/deployments",
            Some(json!({"program": "probe", "vms": ["p/mscs", "ghost"]})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "vms[1]");
    let deployment = controller.create("/v1/deployments", json!({"program": "probe", "vms": ["p/mscs"], "args": ["--fast"], "env": {"ROLE": "mscs"}})).await;
    assert_eq!(deployment["runs"][0]["status"], "pending");
    assert_eq!(deployment["runs"][0]["vm"], "p/mscs");
    let deployment_id = deployment["id"].as_str().unwrap().to_string();

    let state = controller.desired_state(&n1).await;
    assert_eq!(state.program_runs.len(), 1);
    let run = &state.program_runs[0];
    assert_eq!(run.vm_id, mscs);
    assert_eq!(run.args, vec!["--fast"]);
    assert_eq!(run.env.get("ROLE").map(String::as_str), Some("mscs"));

    let blob = controller
        .grpc()
        .await
        .fetch_program(FetchProgramRequest {
            node_id: n1.node_id.clone(),
            node_secret: n1.node_secret.clone(),
            program_id: run.program_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(blob.content, content);
    assert_eq!(blob.sha256, run.sha256);
    // n2 hosts no run of it.
    let refused = controller
        .grpc()
        .await
        .fetch_program(FetchProgramRequest {
            node_id: n2.node_id.clone(),
            node_secret: n2.node_secret.clone(),
            program_id: run.program_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound);

    let report = |status: &str, exit_code: Option<i32>| StatusReport {
        node_id: n1.node_id.clone(),
        node_secret: n1.node_secret.clone(),
        program_runs: vec![ProgramRunStatus {
            deployment_id: deployment_id.clone(),
            vm_id: mscs.clone(),
            status: status.into(),
            exit_code,
            stdout_tail: "measuring\n".into(),
            stderr_tail: String::new(),
        }],
        ..Default::default()
    };
    controller
        .grpc()
        .await
        .report_status(report("running", None))
        .await
        .unwrap();
    // A bad item is refused by itself (the rest of a report would apply).
    let ack = controller
        .grpc()
        .await
        .report_status(report("sleeping", None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.refused.len(), 1, "{ack:?}");
    assert!(
        ack.refused[0].reason.starts_with("program_runs[0].status"),
        "{}",
        ack.refused[0].reason
    );
    controller
        .grpc()
        .await
        .report_status(report("exited", Some(0)))
        .await
        .unwrap();
    let got = controller
        .client()
        .get_deployment(&deployment_id)
        .await
        .unwrap();
    let run = &got.runs[0];
    assert_eq!(run.status, "exited");
    assert_eq!(run.exit_code, Some(0));
    assert_eq!(run.stdout_tail, "measuring\n");
    assert!(run.started_at.is_some() && run.finished_at.is_some());
    // A finished run leaves the desired state.
    let state = controller.desired_state(&n1).await;
    assert!(state.program_runs.is_empty());
    let (status, stopped) = controller
        .call(
            Method::DELETE,
            &format!("/v1/deployments/{deployment_id}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        stopped["runs"][0]["status"], "exited",
        "a finished run keeps its status"
    );

    // Stopping a running deployment ends its runs; late reports do not revive them.
    let (_, second) = controller
        .call(
            Method::POST,
            "/v1/deployments",
            Some(json!({"program": "probe", "vms": ["p/mscs"]})),
        )
        .await;
    let second_id = second["id"].as_str().unwrap().to_string();
    let (_, stopped) = controller
        .call(
            Method::DELETE,
            &format!("/v1/deployments/{second_id}"),
            None,
        )
        .await;
    assert_eq!(stopped["runs"][0]["status"], "stopped");
    let mut late = report("running", None);
    late.program_runs[0].deployment_id = second_id.clone();
    controller.grpc().await.report_status(late).await.unwrap();
    let got = controller
        .client()
        .get_deployment(&second_id)
        .await
        .unwrap();
    assert_eq!(got.runs[0].status, "stopped");
    assert!(got.runs[0].finished_at.is_some());
    controller.stop().await;
}

/// A registration of node `name` whose service host listens on `endpoint`
/// and speaks control protocol `version` (`None`: an agent from before
/// the protocol had versions).
fn service_host_registration(
    controller: &TestController,
    name: &str,
    endpoint: &str,
    version: Option<u32>,
) -> RegisterRequest {
    let mut request = common::register_request(&controller.join_token, name, "");
    if let Some(caps) = request.capabilities.as_mut() {
        caps.service_endpoint = endpoint.into();
        caps.control_protocol_version = version;
    }
    request
}

/// A measurement among service hosts on `nodes` to group `group`.
fn service_host_task(name: &str, nodes: &[&str], schedule: &str, group: &str) -> Value {
    json!({"name": name, "mode": "service_host", "nodes": nodes, "schedule": schedule,
           "rate_pps": 10, "packet_size_bytes": 100, "group": group, "port": 6000,
           "ttl": 2, "ssm": true})
}

/// Waits (10 s at most) until the store marks task `name` running, which
/// happens off the path of the poll that started it.
async fn wait_until_running(controller: &TestController, name: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while controller.client().get_task(name).await.unwrap().status != "running" {
        assert!(
            std::time::Instant::now() < deadline,
            "task {name} never marked running"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A result of `task_id` posted by `node` as if relayed from VM `vm_id`.
fn post_result_request(
    node: &RegisterResponse,
    vm_id: &str,
    task_id: &str,
    document: &Value,
) -> PostResultRequest {
    PostResultRequest {
        node_id: node.node_id.clone(),
        node_secret: node.node_secret.clone(),
        vm_id: vm_id.to_string(),
        task_id: task_id.to_string(),
        document_json: document.to_string(),
    }
}

fn result_document(started_at: &str, loss: f64) -> Value {
    common::result_document(
        None,
        started_at,
        vec![common::reporting_receiver("point", 500, loss, 20.0, 2.5)],
    )
}

#[tokio::test]
async fn tasks_are_polled_by_the_platform_and_results_form_a_history() {
    let (dir, controller) = TestController::fresh().await;
    let (n1, n2, mscs, point) = slice(&controller).await;

    let task = json!({"name": "loss", "mode": "platform", "platform": "p", "schedule": "periodic",
                      "interval_seconds": 60, "duration_seconds": 5, "rate_pps": 100,
                      "packet_size_bytes": 200, "group": "239.1.2.3", "port": 5000, "ttl": 4});
    for (change, expected) in [
        (json!({"group": "10.0.0.1"}), "group"),
        (json!({"ssm": true}), "group"),
        (json!({"interval_seconds": 5}), "interval_seconds"),
        (json!({"mode": "everywhere"}), "mode"),
        (json!({"platform": "nope"}), "platform"),
        (json!({"rate_pps": 0}), "rate_pps"),
    ] {
        let mut body = task.clone();
        for (k, v) in change.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, answer) = controller.call(Method::POST, "/v1/tasks", Some(body)).await;
        assert_eq!(status, 422, "{change} -> {answer}");
        assert_eq!(answer["error"]["field"], expected, "{change} -> {answer}");
    }
    let created = controller.create("/v1/tasks", task).await;
    assert_eq!(created["status"], "pending");
    let task_id = created["id"].as_str().unwrap().to_string();

    let polled = controller
        .grpc()
        .await
        .poll_tasks(PollTasksRequest {
            node_id: n1.node_id.clone(),
            node_secret: n1.node_secret.clone(),
            vm_id: mscs.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(polled.tasks_json.len(), 1);
    let spec: measurelab_api::http::Task = serde_json::from_str(&polled.tasks_json[0]).unwrap();
    assert_eq!(spec.id, task_id);
    assert_eq!(spec.group, "239.1.2.3");
    assert_eq!(spec.status, "running", "what the guest sees");
    // The store follows off the poll's path (PollTasks only reads).
    wait_until_running(&controller, "loss").await;
    // A VM of another node is not n1's to poll for.
    let err = controller
        .grpc()
        .await
        .poll_tasks(PollTasksRequest {
            node_id: n1.node_id.clone(),
            node_secret: n1.node_secret.clone(),
            vm_id: point.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // Results from the guest relay (gRPC) and from HTTP.
    let ack = controller
        .grpc()
        .await
        .post_result(post_result_request(
            &n1,
            &mscs,
            &task_id,
            &result_document("2026-01-01T10:00:00Z", 0.1),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!ack.result_id.is_empty());
    let err = controller
        .grpc()
        .await
        .post_result(post_result_request(
            &n2,
            &mscs,
            &task_id,
            &result_document("2026-01-01T10:01:00Z", 0.1),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "n2 does not host the MSCS"
    );
    // A document of the right shape but a wrong type deep inside is refused
    // with the path of that field, over gRPC as over HTTP (below).
    let mut bad = result_document("2026-01-01T10:02:00Z", 0.1);
    bad["receivers"][0]["metrics"]["packets_lost"] = json!("fifty");
    let err = controller
        .grpc()
        .await
        .post_result(post_result_request(&n1, &mscs, &task_id, &bad))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message()
            .starts_with("receivers[0].metrics.packets_lost: invalid type"),
        "{}",
        err.message()
    );
    let body = controller
        .expect(
            Method::POST,
            &format!("/v1/results?task={task_id}"),
            Some(bad),
            422,
        )
        .await;
    assert_eq!(body["error"]["field"], "receivers[0].metrics.packets_lost");
    let mut partial = result_document("2026-01-01T10:03:00Z", 0.1);
    partial["receivers"][0]["metrics"]
        .as_object_mut()
        .unwrap()
        .remove("quantiles_exact");
    let body = controller
        .expect(
            Method::POST,
            &format!("/v1/results?task={task_id}"),
            Some(partial),
            422,
        )
        .await;
    assert_eq!(
        body["error"]["field"],
        "receivers[0].metrics.quantiles_exact"
    );
    for (started, loss) in [
        ("2026-01-01T10:05:00Z", 0.2),
        ("2026-01-01T10:10:00.5Z", 0.3),
    ] {
        let mut document = result_document(started, loss);
        document["task_id"] = json!(task_id);
        controller.create("/v1/results", document).await;
    }
    // The relay may repeat a POST after a crash: the run id absorbs it.
    let mut repeat = result_document("2026-01-01T10:05:00Z", 0.2);
    repeat["task_id"] = json!(task_id);
    let first = controller
        .expect(Method::POST, "/v1/results", Some(repeat.clone()), 200)
        .await;
    let (status, again) = controller
        .call(Method::POST, "/v1/results", Some(repeat))
        .await;
    assert_eq!(status, 200);
    assert_eq!(first["id"], again["id"]);
    let mut wrong = result_document("2026-01-01T10:15:00Z", 0.0);
    wrong["schema"] = json!("something/v2");
    let (status, body) = controller
        .call(
            Method::POST,
            &format!("/v1/results?task={task_id}"),
            Some(wrong),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["field"], "schema");

    let all = controller.client().list_results("task=loss").await.unwrap();
    let losses: Vec<f64> = all
        .iter()
        .map(|r| {
            r.document["receivers"][0]["metrics"]["loss_ratio"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert_eq!(losses, vec![0.1, 0.2, 0.3], "oldest first");
    let window = controller
        .client()
        .list_results("task=loss&since=2026-01-01T10:05:00Z&until=2026-01-01T10:10:00Z")
        .await
        .unwrap();
    assert_eq!(window.len(), 1);
    assert_eq!(window[0].started_at, "2026-01-01T10:05:00Z");
    let latest = controller.client().latest_result("loss").await.unwrap();
    assert_eq!(latest.started_at, "2026-01-01T10:10:00.5Z");
    let task_now = controller.client().get_task(&task_id).await.unwrap();
    assert_eq!(task_now.last_result_id.as_deref(), Some(latest.id.as_str()));
    assert_eq!(task_now.status, "running", "a periodic task keeps running");
    let (status, body) = controller
        .call(Method::GET, "/v1/results?since=yesterday", None)
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["field"], "since");

    let response = reqwest::Client::new()
        .get(controller.url("/v1/results/export?task=loss&format=csv"))
        .bearer_auth(&controller.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let csv = response.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines.len(),
        4,
        "header + one row per receiver per run:\n{csv}"
    );
    let header: Vec<&str> = lines[0].split(',').collect();
    let row: Vec<&str> = lines[3].split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    // The newest run: 500 sent, loss 0.3, delays from a 20 us median, jitter 2.5 us.
    assert_eq!(row[col("run_id")], "run-2026-01-01T10:10:00.5Z");
    assert_eq!(row[col("run_status")], "ok");
    assert_eq!(row[col("group")], "239.1.2.3");
    assert_eq!(row[col("receiver")], "point");
    assert_eq!(row[col("receiver_status")], "ok");
    assert_eq!(row[col("packets_sent")], "500");
    assert_eq!(row[col("packets_received")], "350");
    assert_eq!(row[col("packets_lost")], "150");
    assert_eq!(row[col("loss_ratio")], "0.3");
    assert_eq!(row[col("delay_min_us")], "10.0");
    assert_eq!(row[col("delay_median_us")], "20.0");
    assert_eq!(row[col("delay_mean_us")], "22.0");
    assert_eq!(row[col("delay_p95_us")], "40.0");
    assert_eq!(row[col("delay_max_us")], "50.0");
    assert_eq!(row[col("ipdv_mean_abs_us")], "3.0");
    assert_eq!(row[col("pdv_us")], "30.0");
    assert_eq!(row[col("jitter_us")], "2.5");
    assert_eq!(row[col("clock_error_bound_us")], "50.0");
    let (status, json_export) = controller
        .call(
            Method::GET,
            "/v1/results/export?task=loss&format=json",
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(json_export["results"].as_array().unwrap().len(), 3);

    // Results are durable and outlive their task.
    controller.stop().await;
    let controller = TestController::start_with(dir.path(), |_| {}).await;
    let (status, _) = controller
        .call(Method::DELETE, "/v1/tasks/loss", None)
        .await;
    assert_eq!(status, 200);
    let history = controller
        .client()
        .list_results(&format!("task={task_id}"))
        .await
        .unwrap();
    assert_eq!(history.len(), 3);
    controller.stop().await;
}

#[tokio::test]
async fn service_host_tasks_reach_the_listed_nodes() {
    let (_dir, controller) = TestController::fresh().await;
    // n1 runs a current agent; n2 one of release 0.1.0, which reports no
    // control protocol version.
    let mut grpc = controller.grpc().await;
    let n1 = grpc
        .register(service_host_registration(
            &controller,
            "n1",
            "10.253.0.11:7090",
            Some(2),
        ))
        .await
        .unwrap()
        .into_inner();
    let n2 = grpc
        .register(service_host_registration(
            &controller,
            "n2",
            "10.253.0.12:7090",
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    controller.register("n3", "").await;
    let body = controller
        .expect(
            Method::POST,
            "/v1/tasks",
            Some(service_host_task(
                "quick",
                &["n1", "n3"],
                "once",
                "232.1.1.1",
            )),
            422,
        )
        .await;
    assert_eq!(body["error"]["field"], "nodes[1]");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no service host"),
        "{body}"
    );
    let body = controller
        .expect(
            Method::POST,
            "/v1/tasks",
            Some(service_host_task("quick", &["n1"], "once", "232.1.1.1")),
            422,
        )
        .await;
    assert_eq!(body["error"]["field"], "nodes");
    let task = controller
        .create(
            "/v1/tasks",
            service_host_task("quick", &["n1", "n2"], "once", "232.1.1.1"),
        )
        .await;
    assert_eq!(task["interval_seconds"], 300);
    assert_eq!(task["duration_seconds"], 30);
    let state = controller.desired_state(&n1).await;
    assert_eq!(state.service_tasks.len(), 1);
    assert_eq!(state.service_tasks[0].task_id, task["id"].as_str().unwrap());
    let peers: Vec<(&str, &str)> = state.service_tasks[0]
        .peers
        .iter()
        .map(|p| (p.node.as_str(), p.endpoint.as_str()))
        .collect();
    assert_eq!(
        peers,
        [("n1", "10.253.0.11:7090"), ("n2", "10.253.0.12:7090")]
    );
    // Only the old agent's point may get unsigned version-1 orders.
    let versions: Vec<Option<u32>> = state.service_tasks[0]
        .peers
        .iter()
        .map(|p| p.control_protocol_version)
        .collect();
    assert_eq!(versions, [None, Some(1)]);
    // The task's control key goes to both listed nodes and nowhere a tenant looks.
    let key = state.service_tasks[0]
        .control_key
        .clone()
        .expect("a service task carries its control key");
    assert!(
        key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()),
        "{key}"
    );
    let n2_state = controller.desired_state(&n2).await;
    assert_eq!(
        n2_state.service_tasks[0].control_key.as_deref(),
        Some(key.as_str())
    );
    assert!(!state.service_tasks[0].spec_json.contains(&key));
    for path in ["/v1/tasks", "/v1/tasks/quick", "/v1/events"] {
        let (status, body) = controller.call(Method::GET, path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(!body.to_string().contains(&key), "{path} shows the key");
    }
    // Another task, another key.
    let other = controller
        .create(
            "/v1/tasks",
            service_host_task("other", &["n1", "n2"], "periodic", "232.1.1.2"),
        )
        .await;
    let state = controller.desired_state(&n1).await;
    let other_key = state
        .service_tasks
        .iter()
        .find(|t| t.task_id == other["id"].as_str().unwrap())
        .and_then(|t| t.control_key.clone())
        .expect("the second task's key");
    assert_ne!(other_key, key);
    let (status, _) = controller
        .call(Method::DELETE, "/v1/tasks/other", None)
        .await;
    assert_eq!(status, 200);
    // The once task completes with its first result and leaves the desired state.
    controller
        .grpc()
        .await
        .post_result(post_result_request(
            &n1,
            "",
            "quick",
            &result_document("2026-02-01T00:00:00Z", 0.0),
        ))
        .await
        .unwrap();
    assert_eq!(
        controller.client().get_task("quick").await.unwrap().status,
        "completed"
    );
    let state = controller.desired_state(&n1).await;
    assert!(state.service_tasks.is_empty());
    controller.stop().await;
}

/// A run whose receivers recorded receipts gets its tree from placement and the
/// per-link inference when the controller stores it: loss injected on one node's
/// path is pinned there, and the clean path is not blamed.
#[tokio::test]
async fn stored_runs_get_their_tree_and_bottlenecks() {
    use measurelab_inference::simulate::{self, LinkModel};
    use measurelab_inference::tree::{distribution_tree, Placement};

    let (_dir, controller) = TestController::fresh().await;
    let mut grpc = controller.grpc().await;
    for (name, endpoint) in [
        ("n1", "10.253.0.11:7090"),
        ("n2", "10.253.0.12:7090"),
        ("n3", "10.253.0.13:7090"),
    ] {
        grpc.register(service_host_registration(&controller, name, endpoint, None))
            .await
            .unwrap();
    }
    controller
        .create(
            "/v1/tasks",
            service_host_task("trees", &["n1", "n2", "n3"], "once", "232.1.1.1"),
        )
        .await;

    // Service hosts are named like their node; the run is simulated with 8 % loss on
    // n2's uplink. The controller must work the tree out itself: the posted document
    // has none.
    let at = |point| Placement { point, node: point };
    let tree = distribution_tree(&at("n1"), &[at("n2"), at("n3")]);
    let model = LinkModel {
        loss: [("uplink:n2".to_string(), 0.08)].into_iter().collect(),
        ..LinkModel::default()
    };
    let run = simulate::run(&tree, &model, 20_000, 11);
    let mut document = simulate::document(&tree, &run);
    document.tree = None;
    document.task_id = Some("trees".into());
    let stored = controller
        .create("/v1/results", serde_json::to_value(&document).unwrap())
        .await;
    let stored = &stored["document"];
    assert_eq!(
        stored["tree"],
        serde_json::to_value(&tree).unwrap(),
        "{stored:#}"
    );
    let links: Vec<&str> = stored["inference"]["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["link"].as_str().unwrap())
        .collect();
    assert_eq!(
        links,
        [
            "port:n1+uplink:n1",
            "uplink:n2+port:n2",
            "uplink:n3+port:n3"
        ]
    );
    let bottlenecks: Vec<&str> = stored["bottlenecks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["link"].as_str().unwrap())
        .collect();
    assert_eq!(bottlenecks, ["uplink:n2+port:n2"]);
    let lossy = &stored["inference"]["links"][1];
    let (low, high) = (
        lossy["loss_ci_low"].as_f64().unwrap(),
        lossy["loss_ci_high"].as_f64().unwrap(),
    );
    assert!(low <= 0.08 && 0.08 <= high, "{lossy}");

    // A receipt record that does not add up is refused, naming the receiver.
    let mut broken = serde_json::to_value(&document).unwrap();
    broken["run_id"] = json!("broken");
    broken["receivers"][1]["receipts"] = json!({"encoding": "runs", "probes": 20000, "runs": [5]});
    let body = controller
        .expect(Method::POST, "/v1/results", Some(broken), 422)
        .await;
    assert_eq!(body["error"]["field"], "receivers[1].receipts");
    controller.stop().await;
}

/// A task's own bottleneck thresholds steer the report of its runs: the same 8 % link
/// is a bottleneck under the default 1 % and not under a task's 10 %; thresholds that
/// are no loss ratio or no positive time are refused naming the field.
#[tokio::test]
async fn a_tasks_bottleneck_thresholds_decide_what_is_reported() {
    use measurelab_inference::simulate::{self, LinkModel};
    use measurelab_inference::tree::{distribution_tree, Placement};

    let (_dir, controller) = TestController::fresh().await;
    controller.register("n1", "").await;
    controller.create_platform("p", &["n1"]).await;
    let task = |name: &str, extra: serde_json::Value| {
        let mut body = json!({"name": name, "mode": "platform", "platform": "p",
            "schedule": "once", "rate_pps": 10, "packet_size_bytes": 100,
            "group": "239.1.1.1", "port": 5000, "ttl": 2});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    for (field, value, reason) in [
        ("bottleneck_loss_threshold", json!(1.0), "loss ratio"),
        ("bottleneck_loss_threshold", json!(-0.1), "loss ratio"),
        ("bottleneck_delay_stddev_us", json!(0), "positive"),
    ] {
        let (status, body) = controller
            .call(
                Method::POST,
                "/v1/tasks",
                Some(task("bad", json!({ field: value }))),
            )
            .await;
        assert_eq!(status, 422, "{field}={value}: {body}");
        assert_eq!(body["error"]["field"], field, "{body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(reason),
            "{body}"
        );
    }

    let default = controller
        .create("/v1/tasks", task("default", json!({})))
        .await;
    assert_eq!(default["bottleneck_loss_threshold"], 0.01);
    assert_eq!(default["bottleneck_delay_stddev_us"], 1000.0);
    let lenient = controller
        .create(
            "/v1/tasks",
            task(
                "lenient",
                json!({"bottleneck_loss_threshold": 0.10, "bottleneck_delay_stddev_us": 50}),
            ),
        )
        .await;
    assert_eq!(lenient["bottleneck_loss_threshold"], 0.10);

    let at = |point, node| Placement { point, node };
    let tree = distribution_tree(
        &at("p1", "n1"),
        &[at("p2", "n2"), at("p3", "n2"), at("p4", "n3")],
    );
    let model = LinkModel {
        loss: [("uplink:n2".to_string(), 0.08)].into_iter().collect(),
        ..LinkModel::default()
    };
    let run = simulate::run(&tree, &model, 20_000, 3);
    for (name, expected) in [("default", vec!["uplink:n2"]), ("lenient", vec![])] {
        let mut document = simulate::document(&tree, &run);
        document.task_id = Some(name.into());
        let stored = controller
            .create("/v1/results", serde_json::to_value(&document).unwrap())
            .await;
        let links: Vec<&str> = stored["document"]["bottlenecks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["link"].as_str().unwrap())
            .collect();
        assert_eq!(links, expected, "{name}: {stored:#}");
        let inference = &stored["document"]["inference"];
        let threshold = if name == "default" { 0.01 } else { 0.10 };
        assert_eq!(inference["loss_threshold"], threshold, "{inference:#}");
    }
    controller.stop().await;
}

fn vm_status(vm_id: &str, state: &str) -> measurelab_api::node_v1::VmStatus {
    measurelab_api::node_v1::VmStatus {
        vm_id: vm_id.into(),
        actual_state: state.into(),
        observed_generation: 1,
        ..Default::default()
    }
}

/// A node's report mixes good items with bad ones (a VM of another node, an
/// unknown VM, an oversized log line and tail, a program run the VM does
/// not have, a deletion ack): the bad ones are refused one by one and
/// named, the good ones - a VM status, a guest heartbeat, the deletion -
/// are applied.
#[tokio::test]
async fn report_items_are_refused_one_by_one_and_the_rest_applied() {
    use measurelab_api::node_v1::{GuestReport, LogLine};
    let (_dir, controller) = TestController::fresh().await;
    let (n1, _n2, mscs, point) = slice(&controller).await;
    let gone = controller
        .create(
            "/v1/vms",
            json!({"name": "gone", "platform": "p", "node": "n1", "vcpus": 1,
                        "memory_mib": 64, "appliance": "namespace", "power_state": "running"}),
        )
        .await;
    let gone = gone["id"].as_str().unwrap().to_string();
    let (status, body) = controller
        .call(Method::DELETE, &format!("/v1/vms/{gone}"), None)
        .await;
    assert!((200..300).contains(&status), "{status} {body}");

    let line = |message: String| LogLine {
        timestamp_unix_ms: 1_764_000_000_000,
        level: "info".into(),
        target: "guest".into(),
        message,
    };
    let run = |deployment: &str, tail: String| ProgramRunStatus {
        deployment_id: deployment.into(),
        vm_id: mscs.clone(),
        status: "running".into(),
        exit_code: None,
        stdout_tail: tail,
        stderr_tail: String::new(),
    };
    let deleted = measurelab_api::node_v1::VmStatus {
        deleted: true,
        ..vm_status(&gone, "deleting")
    };
    let report = StatusReport {
        node_id: n1.node_id.clone(),
        node_secret: n1.node_secret.clone(),
        observed_generation: 1,
        vms: vec![
            vm_status(&mscs, "running"),
            vm_status(&point, "failed"),
            vm_status("ghost", "running"),
            deleted,
        ],
        guests: vec![
            GuestReport {
                vm_id: mscs.clone(),
                logs: vec![line("x".repeat(100 * 1024))],
                ..Default::default()
            },
            GuestReport {
                vm_id: mscs.clone(),
                last_heartbeat_unix_ms: 1_764_000_000_000,
                logs: vec![line("fine".into())],
                ..Default::default()
            },
        ],
        program_runs: vec![
            run("not-a-deployment", String::new()),
            run("not-a-deployment", "y".repeat(1024 * 1024)),
        ],
        // Gateway items are checked in controller/tests/gateways.rs.
        gateways: Vec::new(),
    };
    let ack = controller
        .grpc()
        .await
        .report_status(report)
        .await
        .unwrap()
        .into_inner();
    let refused: Vec<(String, u32, String)> = ack
        .refused
        .iter()
        .map(|r| {
            let field = r.reason.split(':').next().unwrap_or_default().to_string();
            (r.list.clone(), r.index, field)
        })
        .collect();
    assert_eq!(
        refused,
        vec![
            ("vms".into(), 1, "vms[1].vm_id".into()),
            ("vms".into(), 2, "vms[2].vm_id".into()),
            ("guests".into(), 0, "guests[0].logs[0].message".into()),
            (
                "program_runs".into(),
                0,
                "program_runs[0].deployment_id".into()
            ),
            (
                "program_runs".into(),
                1,
                "program_runs[1].stdout_tail".into()
            ),
        ],
        "{ack:#?}"
    );
    let vm = controller.client().get_vm(&mscs).await.unwrap();
    assert_eq!(vm.actual_state, "running", "the good VM status applied");
    assert!(
        vm.guest_last_heartbeat.is_some(),
        "the good guest item applied: {vm:?}"
    );
    let point_vm = controller.client().get_vm(&point).await.unwrap();
    assert_ne!(point_vm.actual_state, "failed", "n1 cannot set n2's VM");
    let (status, _) = controller
        .call(Method::GET, &format!("/v1/vms/{gone}"), None)
        .await;
    assert_eq!(status, 404, "the deletion completed");
    controller.stop().await;
}

/// PollTasks only reads: with another process holding the database's write
/// lock, polls are still answered at once (a write transaction would wait
/// for the lock, then fail). A results post for a task of another platform
/// is refused.
#[tokio::test]
async fn polls_only_read_and_results_for_other_platforms_tasks_are_refused() {
    let (dir, controller) = TestController::fresh().await;
    let (n1, _n2, mscs, _point) = slice(&controller).await;
    controller.create_platform("q", &["n1"]).await;
    for (name, platform) in [("mine", "p"), ("theirs", "q")] {
        let task = json!({"name": name, "mode": "platform", "platform": platform,
                          "schedule": "periodic", "interval_seconds": 60, "duration_seconds": 5,
                          "rate_pps": 100, "packet_size_bytes": 200, "group": "239.1.2.3",
                          "port": 5000, "ttl": 4});
        controller.create("/v1/tasks", task).await;
    }
    let poll = || PollTasksRequest {
        node_id: n1.node_id.clone(),
        node_secret: n1.node_secret.clone(),
        vm_id: mscs.clone(),
    };
    let mut grpc = controller.grpc().await;
    let first = grpc.poll_tasks(poll()).await.unwrap().into_inner();
    assert_eq!(first.tasks_json.len(), 1, "only the VM's platform's task");
    wait_until_running(&controller, "mine").await;

    let write_lock = common::db::WriteLock::take(dir.path());
    for _ in 0..20 {
        let answered =
            tokio::time::timeout(std::time::Duration::from_secs(1), grpc.poll_tasks(poll()))
                .await
                .expect("a poll waited for the write lock")
                .unwrap()
                .into_inner();
        assert_eq!(answered.tasks_json.len(), 1);
    }
    drop(write_lock);

    let theirs = controller.client().get_task("theirs").await.unwrap();
    let err = grpc
        .post_result(post_result_request(
            &n1,
            &mscs,
            &theirs.id,
            &result_document("2026-01-01T10:00:00Z", 0.1),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().starts_with("task_id"), "{}", err.message());
    controller.stop().await;
}
