//! Resource regulation through the real HTTP listener: node overcommit
//! ratios and the admission checks built on them.

mod common;

use common::TestController;
use reqwest::Method;
use serde_json::{json, Value};

fn field(body: &Value) -> &str {
    body["error"]["field"].as_str().unwrap_or("")
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or("")
}

fn vm(name: &str, vcpus: u32, memory_mib: u64) -> Value {
    json!({"name": name, "platform": "p", "node": "n1", "vcpus": vcpus,
           "memory_mib": memory_mib, "appliance": "namespace", "power_state": "running"})
}

async fn vm_names(controller: &TestController) -> Vec<String> {
    let (status, list) = controller.call(Method::GET, "/v1/vms", None).await;
    assert_eq!(status, 200, "{list}");
    let mut names: Vec<String> = list["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vm| vm["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// The test node reports 2 CPUs and 4096 MiB total, 1024 MiB used.
#[tokio::test]
async fn node_overcommit_ratios_bound_vcpus_and_memory_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start_with(dir.path(), |_| {}).await;
    controller.register("n1", "").await;
    let node = controller.node("n1").await;
    assert_eq!((node.cpu_overcommit, node.memory_overcommit), (16.0, 1.0));

    for (body, expected_field) in [
        (
            json!({"labels": {}, "cpu_overcommit": 0.5}),
            "cpu_overcommit",
        ),
        (
            json!({"labels": {}, "memory_overcommit": 65}),
            "memory_overcommit",
        ),
        (
            json!({"labels": {}, "cpu_overcommit": 2.0, "memory_overcommit": "much"}),
            "memory_overcommit",
        ),
    ] {
        let (status, answer) = controller
            .call(Method::PATCH, "/v1/nodes/n1", Some(body.clone()))
            .await;
        assert_eq!(status, 422, "{body} -> {answer}");
        assert_eq!(field(&answer), expected_field, "{body} -> {answer}");
    }
    let node = controller.node("n1").await;
    assert_eq!(
        (node.cpu_overcommit, node.memory_overcommit),
        (16.0, 1.0),
        "a refused patch changes nothing"
    );
    assert_eq!(node.labels.get("rack").map(String::as_str), Some("r1"));

    // Labels are a complete set, as before; the ratios ride along.
    let (status, answer) = controller
        .call(
            Method::PATCH,
            "/v1/nodes/n1",
            Some(json!({"labels": {"rack": "r1"}, "cpu_overcommit": 2.0})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["cpu_overcommit"], 2.0);
    assert_eq!(answer["memory_overcommit"], 1.0, "an absent ratio is kept");

    let (status, platform) = controller
        .call(
            Method::POST,
            "/v1/platforms",
            Some(json!({"name": "p", "nodes": ["n1"]})),
        )
        .await;
    assert_eq!(status, 201, "{platform}");

    // 2 CPUs × 2.0 = 4 vCPUs.
    let (status, answer) = controller
        .call(Method::POST, "/v1/vms", Some(vm("a", 3, 128)))
        .await;
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = controller
        .call(Method::POST, "/v1/vms", Some(vm("b", 2, 128)))
        .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(field(&answer), "vcpus");
    assert!(
        message(&answer).contains(
            "vm \"p/b\": node \"n1\" has 3 of 4 vCPUs (2 cpus × overcommit 2.0) in use; 2 more requested"
        ),
        "{answer}"
    );
    let (status, answer) = controller
        .call(Method::PATCH, "/v1/vms/a", Some(json!({"vcpus": 5})))
        .await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        message(&answer).contains("has 3 of 4 vCPUs") && message(&answer).contains("2 more"),
        "{answer}"
    );
    let (_, a) = controller.call(Method::GET, "/v1/vms/a", None).await;
    assert_eq!(a["vcpus"], 3, "the refused patch left the VM as it was");
    assert_eq!(vm_names(&controller).await, ["a"]);

    // 4096 MiB × 1.5 = 6144 MiB may be promised, more than the node has
    // free: with memory overcommitted only the placed VMs count. 3.0 leaves
    // vCPUs to spare, so memory is what refuses.
    let (status, answer) = controller
        .call(
            Method::PATCH,
            "/v1/nodes/n1",
            Some(
                json!({"labels": {"rack": "r1"}, "memory_overcommit": 1.5, "cpu_overcommit": 3.0}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = controller
        .call(Method::POST, "/v1/vms", Some(vm("c", 1, 5000)))
        .await;
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = controller
        .call(Method::POST, "/v1/vms", Some(vm("d", 1, 1100)))
        .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(field(&answer), "memory_mib");
    assert!(
        message(&answer).contains(
            "node \"n1\" has 5128 of 6144 MiB of memory (4096 MiB × overcommit 1.5) in use; 1100 more requested"
        ),
        "{answer}"
    );
    assert_eq!(vm_names(&controller).await, ["a", "c"]);

    // 2 × 2.5 = 5 vCPUs, 4 placed: of eight racing creates exactly one fits.
    let (status, answer) = controller
        .call(
            Method::PATCH,
            "/v1/nodes/n1",
            Some(json!({"labels": {"rack": "r1"}, "cpu_overcommit": 2.5})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let answers = futures::future::join_all(
        (0..8).map(|i| controller.call(Method::POST, "/v1/vms", Some(vm(&format!("r{i}"), 1, 16)))),
    )
    .await;
    let created = answers.iter().filter(|(status, _)| *status == 201).count();
    assert_eq!(created, 1, "{answers:?}");
    for (status, answer) in answers.iter().filter(|(status, _)| *status != 201) {
        assert_eq!(*status, 422, "{answer}");
        assert!(message(answer).contains("has 5 of 5 vCPUs"), "{answer}");
    }
    assert_eq!(vm_names(&controller).await.len(), 3);

    controller.stop().await;
    let controller = TestController::start_with(dir.path(), |_| {}).await;
    let node = controller.node("n1").await;
    assert_eq!((node.cpu_overcommit, node.memory_overcommit), (2.5, 1.5));
    controller.stop().await;
}
