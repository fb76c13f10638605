//! Resource regulation through the real HTTP listener: node overcommit
//! ratios and the admission checks built on them.

mod common;

use base64::Engine;
use common::TestController;
use reqwest::Method;
use serde_json::{json, Value};

fn field(body: &Value) -> &str {
    body["error"]["field"].as_str().unwrap_or("")
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or("")
}

fn vm(name: &str, vcpus: u32, memory_mib: u64) -> Value {
    json!({"name": name, "platform": "p", "node": "n1", "vcpus": vcpus,
           "memory_mib": memory_mib, "appliance": "namespace", "power_state": "running"})
}

async fn vm_names(controller: &TestController) -> Vec<String> {
    let list = controller.expect(Method::GET, "/v1/vms", None, 200).await;
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
    let (dir, controller) = TestController::fresh().await;
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
    let answer = controller
        .expect(
            Method::PATCH,
            "/v1/nodes/n1",
            Some(json!({"labels": {"rack": "r1"}, "cpu_overcommit": 2.0})),
            200,
        )
        .await;
    assert_eq!(answer["cpu_overcommit"], 2.0);
    assert_eq!(answer["memory_overcommit"], 1.0, "an absent ratio is kept");

    controller.create_platform("p", &["n1"]).await;

    // 2 CPUs × 2.0 = 4 vCPUs.
    controller.create("/v1/vms", vm("a", 3, 128)).await;
    let answer = controller
        .expect(Method::POST, "/v1/vms", Some(vm("b", 2, 128)), 422)
        .await;
    assert_eq!(field(&answer), "vcpus");
    assert!(
        message(&answer).contains(
            "vm \"p/b\": node \"n1\" has 3 of 4 vCPUs (2 cpus × overcommit 2.0) in use; 2 more requested"
        ),
        "{answer}"
    );
    let answer = controller
        .expect(Method::PATCH, "/v1/vms/a", Some(json!({"vcpus": 5})), 422)
        .await;
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
    controller
        .expect(
            Method::PATCH,
            "/v1/nodes/n1",
            Some(
                json!({"labels": {"rack": "r1"}, "memory_overcommit": 1.5, "cpu_overcommit": 3.0}),
            ),
            200,
        )
        .await;
    controller.create("/v1/vms", vm("c", 1, 5000)).await;
    let answer = controller
        .expect(Method::POST, "/v1/vms", Some(vm("d", 1, 1100)), 422)
        .await;
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

/// A tenant with `quota` and a member token of it; returns the token.
async fn tenant_with_quota(controller: &TestController, tenant: &str, quota: Value) -> String {
    controller
        .create("/v1/tenants", json!({"name": tenant, "quota": quota}))
        .await;
    let body = controller
        .create(
            "/v1/tokens",
            json!({"name": "ci", "role": "member", "tenant": tenant}),
        )
        .await;
    body["secret"].as_str().unwrap().to_string()
}

/// Names in `GET path` (a list under `key`) as the tenant sees them.
async fn names(controller: &TestController, token: &str, path: &str, key: &str) -> Vec<String> {
    let list = controller
        .expect_as(token, Method::GET, path, None, 200)
        .await;
    let mut names: Vec<String> = list[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// Refused with 422 `quota_exceeded` on `expected_field`, naming the quota,
/// the tenant, the use, the request and the limit.
fn assert_quota_refusal(status: u16, answer: &Value, expected_field: Option<&str>, text: &str) {
    assert_eq!(status, 422, "{answer}");
    assert_eq!(code(answer), "quota_exceeded", "{answer}");
    assert_eq!(
        answer["error"]["field"].as_str(),
        expected_field,
        "{answer}"
    );
    assert!(message(answer).contains(text), "{answer}");
}

#[tokio::test]
async fn every_tenant_quota_refuses_growth_past_it_and_nothing_is_half_created() {
    let (_dir, controller) = TestController::fresh().await;
    controller.register("n1", "").await;
    let token = tenant_with_quota(
        &controller,
        "t1",
        json!({"max_platforms": 1, "max_vms": 2, "max_vcpus": 3, "max_memory_mib": 256,
               "max_bandwidth_kbps": 3000, "max_program_bytes": 40}),
    )
    .await;
    let as_member = |method: Method, path: &'static str, body: Option<Value>| {
        controller.call_as(&token, method, path, body)
    };

    let (status, usage) = as_member(Method::GET, "/v1/tenants/t1/usage", None).await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(usage["quota"]["max_vcpus"], 3);
    assert_eq!(
        usage["usage"],
        json!({"platforms": 0, "vms": 0, "vcpus": 0, "memory_mib": 0,
               "bandwidth_kbps": 0, "program_bytes": 0})
    );

    let (status, answer) = as_member(
        Method::POST,
        "/v1/platforms",
        Some(json!({"name": "lab", "nodes": ["n1"]})),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = as_member(
        Method::POST,
        "/v1/platforms",
        Some(json!({"name": "lab2", "nodes": ["n1"]})),
    )
    .await;
    assert_quota_refusal(
        status,
        &answer,
        None,
        "quota max_platforms of tenant \"t1\" exceeded: 1 in use + 1 requested > 1",
    );
    assert_eq!(
        names(&controller, &token, "/v1/platforms", "platforms").await,
        ["lab"]
    );

    // 1000 + 500 kbit/s a VM; "open" has no egress ceiling.
    for body in [
        json!({"name": "q1", "ingress_max_kbps": 1000, "egress_max_kbps": 500}),
        json!({"name": "open", "ingress_max_kbps": 1000}),
    ] {
        let (status, answer) = as_member(Method::POST, "/v1/qos_policies", Some(body)).await;
        assert_eq!(status, 201, "{answer}");
    }
    let vm = |name: &str, vcpus: u32, memory_mib: u64, qos: Option<&str>| {
        let mut body = json!({"name": name, "platform": "lab", "node": "n1", "vcpus": vcpus,
                              "memory_mib": memory_mib, "appliance": "namespace",
                              "power_state": "running"});
        if let Some(qos) = qos {
            body["qos_policy"] = json!(qos);
        }
        body
    };
    let (status, answer) = as_member(Method::POST, "/v1/vms", Some(vm("v1", 2, 128, None))).await;
    assert_quota_refusal(
        status,
        &answer,
        Some("qos_policy"),
        "VM \"lab/v1\" has no qos_policy",
    );
    assert!(message(&answer).contains("max_bandwidth_kbps of tenant \"t1\" is 3000 kbit/s"));
    let (status, answer) = as_member(
        Method::POST,
        "/v1/vms",
        Some(vm("v1", 2, 128, Some("open"))),
    )
    .await;
    assert_quota_refusal(
        status,
        &answer,
        Some("qos_policy"),
        "has no egress_max_kbps",
    );

    let (status, answer) =
        as_member(Method::POST, "/v1/vms", Some(vm("v1", 2, 128, Some("q1")))).await;
    assert_eq!(status, 201, "{answer}");
    let (status, answer) =
        as_member(Method::POST, "/v1/vms", Some(vm("v2", 2, 64, Some("q1")))).await;
    assert_quota_refusal(
        status,
        &answer,
        Some("vcpus"),
        "quota max_vcpus of tenant \"t1\" exceeded: 2 in use + 2 requested > 3",
    );
    let (status, answer) =
        as_member(Method::POST, "/v1/vms", Some(vm("v2", 1, 200, Some("q1")))).await;
    assert_quota_refusal(
        status,
        &answer,
        Some("memory_mib"),
        "quota max_memory_mib of tenant \"t1\" exceeded: 128 in use + 200 requested > 256",
    );
    // Raising a used policy's ceiling raises every using VM's bandwidth.
    let (status, answer) = as_member(
        Method::PATCH,
        "/v1/qos_policies/q1",
        Some(json!({"ingress_max_kbps": 3000})),
    )
    .await;
    assert_quota_refusal(
        status,
        &answer,
        Some("ingress_max_kbps"),
        "quota max_bandwidth_kbps of tenant \"t1\" exceeded: 1500 in use + 2000 requested > 3000",
    );
    let (_, q1) = as_member(Method::GET, "/v1/qos_policies/q1", None).await;
    assert_eq!(
        q1["ingress_max_kbps"], 1000,
        "the refused patch changed nothing"
    );

    let (status, answer) =
        as_member(Method::POST, "/v1/vms", Some(vm("v2", 1, 64, Some("q1")))).await;
    assert_eq!(status, 201, "{answer}");
    let (status, answer) =
        as_member(Method::POST, "/v1/vms", Some(vm("v3", 1, 16, Some("q1")))).await;
    assert_quota_refusal(
        status,
        &answer,
        None,
        "quota max_vms of tenant \"t1\" exceeded: 2 in use + 1 requested > 2",
    );
    let (status, answer) = as_member(Method::PATCH, "/v1/vms/v1", Some(json!({"vcpus": 3}))).await;
    assert_quota_refusal(
        status,
        &answer,
        Some("vcpus"),
        "quota max_vcpus of tenant \"t1\" exceeded: 3 in use + 1 requested > 3",
    );
    let (_, v1) = as_member(Method::GET, "/v1/vms/v1", None).await;
    assert_eq!(v1["vcpus"], 2, "the refused patch changed nothing");
    // Moving v1 to the unbounded policy would uncount its bandwidth.
    let (status, answer) = as_member(
        Method::PATCH,
        "/v1/vms/v1",
        Some(json!({"qos_policy": "open"})),
    )
    .await;
    assert_quota_refusal(
        status,
        &answer,
        Some("qos_policy"),
        "has no egress_max_kbps",
    );
    assert_eq!(
        names(&controller, &token, "/v1/vms", "vms").await,
        ["v1", "v2"]
    );

    let program = |name: &str, bytes: usize| {
        json!({"name": name,
               "content_base64": base64::engine::general_purpose::STANDARD.encode(vec![b'#'; bytes])})
    };
    let (status, answer) = as_member(Method::POST, "/v1/programs", Some(program("p1", 32))).await;
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = as_member(Method::POST, "/v1/programs", Some(program("p2", 16))).await;
    assert_quota_refusal(
        status,
        &answer,
        Some("content_base64"),
        "quota max_program_bytes of tenant \"t1\" exceeded: 32 in use + 16 requested > 40",
    );
    assert_eq!(
        names(&controller, &token, "/v1/programs", "programs").await,
        ["p1"]
    );

    let (_, usage) = as_member(Method::GET, "/v1/tenants/t1/usage", None).await;
    assert_eq!(
        usage["usage"],
        json!({"platforms": 1, "vms": 2, "vcpus": 3, "memory_mib": 192,
               "bandwidth_kbps": 3000, "program_bytes": 32})
    );
    // Another tenant's usage is as invisible as the tenant itself.
    let other = tenant_with_quota(&controller, "t2", json!({})).await;
    let (status, _) = controller
        .call_as(&other, Method::GET, "/v1/tenants/t1/usage", None)
        .await;
    assert_eq!(status, 404);
    controller.stop().await;
}

#[tokio::test]
async fn concurrent_creates_racing_for_the_last_unit_of_quota_admit_exactly_one() {
    let (_dir, controller) = TestController::fresh().await;
    controller.register("n1", "").await;
    let token =
        tenant_with_quota(&controller, "t1", json!({"max_platforms": 2, "max_vms": 1})).await;
    let platforms = futures::future::join_all((0..6).map(|i| {
        controller.call_as(
            &token,
            Method::POST,
            "/v1/platforms",
            Some(json!({"name": format!("p{i}"), "nodes": ["n1"]})),
        )
    }))
    .await;
    let created: Vec<&Value> = platforms
        .iter()
        .filter(|(status, _)| *status == 201)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(created.len(), 2, "{platforms:?}");
    for (status, answer) in platforms.iter().filter(|(status, _)| *status != 201) {
        assert_quota_refusal(*status, answer, None, "2 in use + 1 requested > 2");
    }
    let platform = created[0]["name"].as_str().unwrap().to_string();
    let vms = futures::future::join_all((0..8).map(|i| {
        controller.call_as(
            &token,
            Method::POST,
            "/v1/vms",
            Some(
                json!({"name": format!("v{i}"), "platform": platform, "node": "n1", "vcpus": 1,
                        "memory_mib": 16, "appliance": "namespace", "power_state": "running"}),
            ),
        )
    }))
    .await;
    assert_eq!(
        vms.iter().filter(|(status, _)| *status == 201).count(),
        1,
        "{vms:?}"
    );
    for (status, answer) in vms.iter().filter(|(status, _)| *status != 201) {
        assert_quota_refusal(*status, answer, None, "1 in use + 1 requested > 1");
    }
    assert_eq!(names(&controller, &token, "/v1/vms", "vms").await.len(), 1);
    controller.stop().await;
}
