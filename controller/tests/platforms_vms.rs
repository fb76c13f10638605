//! Virtual platforms, QoS policies, appliances and VMs through the real HTTP
//! listener, and the node side (desired state, status reports) through the
//! real gRPC listener.

mod common;

use common::{heartbeat_request, register_request, TestController};
use measurelab_api::node_v1::{
    Capabilities, Condition, GuestReport, LogLine, StatusReport, VmStatus,
};
use reqwest::Method;
use serde_json::{json, Value};

fn field(body: &Value) -> &str {
    body["error"]["field"].as_str().unwrap_or("")
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

/// Sends `report` as the agent would, then reads what the API shows as the
/// actual state of VM `vm_id`.
async fn actual_state_after(
    controller: &TestController,
    report: StatusReport,
    vm_id: &str,
) -> String {
    controller.grpc().await.report_status(report).await.unwrap();
    controller
        .client()
        .get_vm(vm_id)
        .await
        .unwrap()
        .actual_state
}

async fn heartbeat_generation(
    controller: &TestController,
    registered: &measurelab_api::node_v1::RegisterResponse,
) -> u64 {
    controller
        .grpc()
        .await
        .heartbeat(heartbeat_request(registered, 1))
        .await
        .unwrap()
        .into_inner()
        .desired_generation
}

#[tokio::test]
async fn platforms_draw_vlans_and_subnets_from_the_pools_until_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start_with(dir.path(), |config| {
        config.vlan_pool = 200..=201;
    })
    .await;
    let n1 = controller.register("n1", "").await;
    controller.register("n2", "").await;
    assert_eq!(heartbeat_generation(&controller, &n1).await, 0);

    let a = controller
        .create(
            "/v1/platforms",
            json!({"name": "slice-a", "nodes": ["n1", "n2"], "admins": ["alice"]}),
        )
        .await;
    assert_eq!(a["vlan_tag"], 200);
    assert_eq!(a["subnet"], "10.201.0.0/24");
    assert_eq!(a["nodes"], json!(["n1", "n2"]));
    assert_eq!(a["power_state"], "running");
    // Membership is part of the node's desired state: its generation moved.
    let generation = heartbeat_generation(&controller, &n1).await;
    assert!(generation > 0);
    let state = controller.desired_state(&n1).await;
    assert_eq!(state.generation, generation);
    assert_eq!(state.platforms.len(), 1);
    assert_eq!(state.platforms[0].vlan_tag, 200);
    assert_eq!(state.platforms[0].subnet, "10.201.0.0/24");

    let b = controller
        .create("/v1/platforms", json!({"name": "slice-b", "nodes": ["n2"]}))
        .await;
    assert_eq!(b["vlan_tag"], 201);
    assert_eq!(b["subnet"], "10.201.1.0/24");

    let body = controller
        .expect(
            Method::POST,
            "/v1/platforms",
            Some(json!({"name": "slice-c", "nodes": ["n1"]})),
            409,
        )
        .await;
    assert_eq!(code(&body), "pool_exhausted");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("200-201"));

    let body = controller
        .expect(
            Method::POST,
            "/v1/platforms",
            Some(json!({"name": "slice-a", "nodes": []})),
            409,
        )
        .await;
    assert_eq!(field(&body), "name");
    let body = controller
        .expect(
            Method::POST,
            "/v1/platforms",
            Some(json!({"name": "slice-d", "nodes": ["n1", "nope"]})),
            422,
        )
        .await;
    assert_eq!(field(&body), "nodes[1]");
    let (status, body) = controller
        .call(
            Method::POST,
            "/v1/platforms",
            Some(json!({"name": "Bad_Name", "nodes": []})),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(field(&body), "name");
    // Nothing of the refused requests was stored.
    let list = controller.client().list_platforms().await.unwrap();
    assert_eq!(
        list.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        vec!["slice-a", "slice-b"]
    );

    // Freed tags and subnets are reused.
    let (status, _) = controller
        .call(Method::DELETE, "/v1/platforms/slice-a", None)
        .await;
    assert_eq!(status, 200);
    let c = controller
        .create("/v1/platforms", json!({"name": "slice-c", "nodes": ["n1"]}))
        .await;
    assert_eq!(c["vlan_tag"], 200);
    assert_eq!(c["subnet"], "10.201.0.0/24");

    // Pause and start.
    let before = heartbeat_generation(&controller, &n1).await;
    let paused = controller
        .expect(Method::POST, "/v1/platforms/slice-c/pause", None, 200)
        .await;
    assert_eq!(paused["power_state"], "paused");
    assert!(heartbeat_generation(&controller, &n1).await > before);
    let (status, started) = controller
        .call(Method::POST, "/v1/platforms/slice-c/start", Some(json!({})))
        .await;
    assert_eq!(status, 200);
    assert_eq!(started["power_state"], "running");
    assert!(started["generation"].as_u64().unwrap() > c["generation"].as_u64().unwrap());
    controller.stop().await;
}

#[tokio::test]
async fn qos_policies_validate_rates_and_refuse_deletion_while_used() {
    let (_dir, controller) = TestController::fresh().await;
    controller.register("n1", "").await;
    let body = controller
        .expect(
            Method::POST,
            "/v1/qos_policies",
            Some(json!({"name": "q", "ingress_max_kbps": 1000, "ingress_min_kbps": 2000})),
            422,
        )
        .await;
    assert_eq!(field(&body), "ingress_min_kbps");
    let (status, body) = controller
        .call(
            Method::POST,
            "/v1/qos_policies",
            Some(json!({"name": "q", "ingress_max_kbps": 1000, "egress_max_kbps": 100, "egress_min_kbps": 500})),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(field(&body), "egress_min_kbps");
    let (status, body) = controller
        .call(
            Method::POST,
            "/v1/qos_policies",
            Some(json!({"name": "q", "ingress_max_kbps": "fast"})),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(field(&body), "ingress_max_kbps");

    let q = controller
        .create(
            "/v1/qos_policies",
            json!({"name": "q", "ingress_max_kbps": 20000, "ingress_burst_kbytes": 64}),
        )
        .await;
    assert_eq!(q["egress_max_kbps"], Value::Null);
    let q2 = controller
        .expect(
            Method::PATCH,
            "/v1/qos_policies/q",
            Some(json!({"ingress_max_kbps": 10000, "ingress_burst_kbytes": null})),
            200,
        )
        .await;
    assert_eq!(q2["ingress_max_kbps"], 10000);
    assert_eq!(q2["ingress_burst_kbytes"], Value::Null);

    controller
        .call(
            Method::POST,
            "/v1/platforms",
            Some(json!({"name": "p", "nodes": ["n1"]})),
        )
        .await;
    controller
        .create(
            "/v1/vms",
            json!({"name": "v1", "platform": "p", "node": "n1", "vcpus": 1, "memory_mib": 128,
                        "appliance": "namespace", "qos_policy": "q", "power_state": "running"}),
        )
        .await;
    let body = controller
        .expect(Method::DELETE, "/v1/qos_policies/q", None, 409)
        .await;
    assert!(body["error"]["message"].as_str().unwrap().contains("v1"));
    controller.stop().await;
}

#[tokio::test]
async fn appliances_include_builtins_and_accept_operator_images() {
    let (_dir, controller) = TestController::fresh().await;
    let list = controller.client().list_appliances().await.unwrap();
    let names: Vec<_> = list.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, vec!["measurelab-tiny", "namespace"]);
    assert!(list.iter().all(|a| a.builtin));
    let image = json!({"name": "debian", "version": "12", "arch": "x86_64", "os": "debian",
                       "kernel": "/srv/vmlinuz", "initrd": "/srv/initrd.img",
                       "min_memory_mib": 256, "backends": ["libvirt"]});
    let created = controller.create("/v1/appliances", image.clone()).await;
    assert_eq!(created["builtin"], false);
    let (status, body) = controller
        .call(Method::POST, "/v1/appliances", Some(image.clone()))
        .await;
    assert_eq!(status, 409);
    assert_eq!(field(&body), "name");
    let mut bad = image.clone();
    bad["name"] = json!("other");
    bad["arch"] = json!("arm64");
    let (status, body) = controller
        .call(Method::POST, "/v1/appliances", Some(bad))
        .await;
    assert_eq!(status, 422);
    assert_eq!(field(&body), "arch");
    let mut bad = image;
    bad["name"] = json!("other");
    bad["kernel"] = json!("vmlinuz");
    let (status, body) = controller
        .call(Method::POST, "/v1/appliances", Some(bad))
        .await;
    assert_eq!(status, 422);
    assert_eq!(field(&body), "kernel");
    controller.stop().await;
}

fn vm_body(name: &str) -> Value {
    json!({"name": name, "platform": "p", "node": "n1", "vcpus": 1, "memory_mib": 128,
           "appliance": "measurelab-tiny", "power_state": "running"})
}

#[tokio::test]
async fn vm_creation_is_validated_field_by_field_and_nothing_is_half_created() {
    let (_dir, controller) = TestController::fresh().await;
    controller.register("n1", "").await;
    controller.register("n2", "").await;
    // n3 has neither backend.
    let mut bare = register_request(&controller.join_token, "n3", "");
    bare.capabilities = Some(Capabilities::default());
    controller.grpc().await.register(bare).await.unwrap();
    controller
        .call(
            Method::POST,
            "/v1/platforms",
            Some(json!({"name": "p", "nodes": ["n1", "n3"]})),
        )
        .await;

    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (json!({"platform": "nope"}), 422, "platform", "no platform"),
        (json!({"node": "nope"}), 422, "node", "no node"),
        (json!({"node": "n2"}), 422, "node", "not a member"),
        (
            json!({"appliance": "nope"}),
            422,
            "appliance",
            "no appliance",
        ),
        (
            json!({"qos_policy": "nope"}),
            422,
            "qos_policy",
            "no QoS policy",
        ),
        (
            json!({"memory_mib": 32}),
            422,
            "memory_mib",
            "minimum of appliance",
        ),
        (json!({"memory_mib": 8192}), 422, "memory_mib", "free"),
        (json!({"vcpus": 0}), 422, "vcpus", "out of range"),
        (
            json!({"node": "n3"}),
            422,
            "backend",
            "none of the backends",
        ),
        (
            json!({"node": "n3", "backend": "namespace"}),
            422,
            "backend",
            "lacks the namespace backend",
        ),
        (json!({"backend": "xen"}), 422, "backend", "unknown variant"),
        (
            json!({"power_state": "on"}),
            422,
            "power_state",
            "unknown variant",
        ),
        (json!({"colour": "red"}), 422, "colour", "unknown field"),
    ];
    for (change, status, expected_field, reason) in cases {
        let mut body = vm_body("v1");
        for (k, v) in change.as_object().unwrap() {
            body[k] = v.clone();
        }
        // Strict, as the project's client asks, so `colour` is refused.
        let (got, answer) = controller
            .call(
                Method::POST,
                "/v1/vms?fieldValidation=Strict",
                Some(body.clone()),
            )
            .await;
        assert_eq!(got, status, "{body} -> {answer}");
        assert_eq!(field(&answer), expected_field, "{body} -> {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains(reason),
            "{body} -> {answer}"
        );
    }
    assert!(controller.client().list_vms("").await.unwrap().is_empty());

    let vm = controller.create("/v1/vms", vm_body("v1")).await;
    assert_eq!(vm["address"], "10.201.0.2");
    assert!(vm["mac"].as_str().unwrap().starts_with("52:54:00:"));
    assert_eq!(
        vm["backend"], "libvirt",
        "the appliance's first backend the node has"
    );
    assert_eq!(vm["actual_state"], "pending");
    assert_eq!(vm["node"], "n1");
    let (status, body) = controller
        .call(Method::POST, "/v1/vms", Some(vm_body("v1")))
        .await;
    assert_eq!(status, 409);
    assert_eq!(field(&body), "name");

    // 1024 MiB reserved by the pending v1... n1 reports 3072 MiB free.
    let mut big = vm_body("v2");
    big["memory_mib"] = json!(2000);
    big["backend"] = json!("namespace");
    let v2 = controller.create("/v1/vms", big.clone()).await;
    assert_eq!(v2["address"], "10.201.0.3");
    big["name"] = json!("v3");
    let (status, body) = controller.call(Method::POST, "/v1/vms", Some(big)).await;
    assert_eq!(status, 422, "pending VMs reserve their memory: {body}");
    assert_eq!(field(&body), "memory_mib");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("reserved"));

    let listed = controller
        .client()
        .list_vms("platform=p&node=n1")
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    assert!(controller
        .client()
        .list_vms("node=n3")
        .await
        .unwrap()
        .is_empty());
    controller.stop().await;
}

#[tokio::test]
async fn vm_patch_is_in_place_and_immutable_fields_are_refused() {
    let (_dir, controller, n1) = TestController::with_platform_p_on_n1().await;
    controller
        .call(
            Method::POST,
            "/v1/qos_policies",
            Some(json!({"name": "q", "ingress_max_kbps": 5000})),
        )
        .await;
    let (_, vm) = controller
        .call(Method::POST, "/v1/vms", Some(vm_body("v1")))
        .await;
    let generation = heartbeat_generation(&controller, &n1).await;

    for (body, expected) in [
        (json!({"node": "n2"}), "node"),
        (json!({"appliance": "namespace"}), "appliance"),
        (json!({"platform": "other"}), "platform"),
        (json!({"backend": "namespace"}), "backend"),
        (json!({"name": "v9"}), "name"),
    ] {
        let (status, answer) = controller
            .call(Method::PATCH, "/v1/vms/p%2Fv1", Some(body.clone()))
            .await;
        assert_eq!(status, 422, "{body} -> {answer}");
        assert_eq!(field(&answer), expected);
        assert!(answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("field cannot change; replace the VM"));
    }
    let answer = controller.expect(Method::PATCH, "/v1/vms/v1", Some(json!({"node": "n1", "vcpus": 2, "memory_mib": 256, "qos_policy": "q", "power_state": "paused"})), 200).await;
    assert_eq!(answer["id"], vm["id"]);
    assert_eq!(answer["vcpus"], 2);
    assert_eq!(answer["memory_mib"], 256);
    assert_eq!(answer["qos_policy"], "q");
    assert_eq!(answer["power_state"], "paused");
    assert_eq!(answer["generation"], vm["generation"].as_u64().unwrap() + 1);
    assert!(heartbeat_generation(&controller, &n1).await > generation);
    let state = controller.desired_state(&n1).await;
    let desired_vm = &state.vms[0];
    assert_eq!(desired_vm.vcpus, 2);
    assert_eq!(desired_vm.power_state, "paused");
    assert_eq!(desired_vm.qos.as_ref().unwrap().ingress_max_kbps, 5000);
    assert_eq!(desired_vm.ipv4_cidr, "10.201.0.2/24");
    assert_eq!(desired_vm.vlan_tag, 100);
    assert!(desired_vm.port_name.len() <= 15);
    assert_eq!(
        desired_vm.appliance.as_ref().unwrap().name,
        "measurelab-tiny"
    );

    let (status, answer) = controller
        .call(
            Method::PATCH,
            "/v1/vms/v1",
            Some(json!({"qos_policy": null})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(answer["qos_policy"], Value::Null);
    controller.stop().await;
}

#[tokio::test]
async fn request_id_makes_creation_idempotent() {
    let (_dir, controller) = TestController::fresh().await;
    controller.register("n1", "").await;
    let body = json!({"name": "p", "nodes": ["n1"], "request_id": "req-1"});
    let (s1, first) = controller
        .call(Method::POST, "/v1/platforms", Some(body.clone()))
        .await;
    let (s2, second) = controller
        .call(Method::POST, "/v1/platforms", Some(body))
        .await;
    assert_eq!((s1, s2), (201, 201));
    assert_eq!(first, second, "the retry gets the first answer");
    assert_eq!(controller.client().list_platforms().await.unwrap().len(), 1);

    let mut vm = vm_body("v1");
    vm["request_id"] = json!("req-2");
    let (_, a) = controller
        .call(Method::POST, "/v1/vms", Some(vm.clone()))
        .await;
    let (_, b) = controller.call(Method::POST, "/v1/vms", Some(vm)).await;
    assert_eq!(a["id"], b["id"]);
    assert_eq!(controller.client().list_vms("").await.unwrap().len(), 1);
    // The key cannot be reused for another request.
    let body = controller
        .expect(
            Method::POST,
            "/v1/qos_policies",
            Some(json!({"name": "q", "ingress_max_kbps": 1, "request_id": "req-1"})),
            409,
        )
        .await;
    assert_eq!(field(&body), "request_id");
    controller.stop().await;
}

/// A change's request_id is recorded under its method and path: the PATCH
/// sent again gets its first answer, and the same request_id on the DELETE
/// of the same policy is refused naming both routes.
#[tokio::test]
async fn a_change_request_id_is_bound_to_its_method_and_path() {
    let (_dir, controller) = TestController::fresh().await;
    controller
        .create(
            "/v1/qos_policies",
            json!({"name": "q", "ingress_max_kbps": 1000}),
        )
        .await;
    let patch = json!({"ingress_max_kbps": 2000, "request_id": "req-3"});
    let (s1, first) = controller
        .call(Method::PATCH, "/v1/qos_policies/q", Some(patch.clone()))
        .await;
    let (s2, second) = controller
        .call(Method::PATCH, "/v1/qos_policies/q", Some(patch))
        .await;
    assert_eq!((s1, s2), (200, 200), "{first} {second}");
    assert_eq!(first, second, "the retry gets the first answer");
    assert_eq!(first["ingress_max_kbps"], 2000, "{first}");

    let body = controller
        .expect(
            Method::DELETE,
            "/v1/qos_policies/q?request_id=req-3",
            None,
            409,
        )
        .await;
    assert_eq!(field(&body), "request_id");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(
            "was already used for PATCH /v1/qos_policies/q; use a new request_id for DELETE /v1/qos_policies/q"
        ),
        "{body}"
    );
    let (status, _) = controller
        .call(Method::GET, "/v1/qos_policies/q", None)
        .await;
    assert_eq!(status, 200, "the refused DELETE deleted nothing");
    controller.stop().await;
}

#[tokio::test]
async fn delete_waits_for_the_agent_and_reports_flow_into_the_vm() {
    let (_dir, controller) = TestController::fresh().await;
    let n1 = controller.register("n1", "").await;
    let n2 = controller.register("n2", "").await;
    controller
        .call(
            Method::POST,
            "/v1/platforms",
            Some(json!({"name": "p", "nodes": ["n1", "n2"]})),
        )
        .await;
    let (_, vm) = controller
        .call(Method::POST, "/v1/vms", Some(vm_body("v1")))
        .await;
    let vm_id = vm["id"].as_str().unwrap().to_string();

    let ready = StatusReport {
        node_id: n1.node_id.clone(),
        node_secret: n1.node_secret.clone(),
        observed_generation: 1,
        vms: vec![VmStatus {
            vm_id: vm_id.clone(),
            actual_state: "running".into(),
            address: "10.201.0.2".into(),
            restart_required: true,
            conditions: vec![Condition {
                r#type: "Ready".into(),
                status: "True".into(),
                reason: "Running".into(),
                message: "domain running, port attached".into(),
            }],
            observed_generation: 1,
            ..Default::default()
        }],
        guests: vec![GuestReport {
            vm_id: vm_id.clone(),
            last_heartbeat_unix_ms: 1_700_000_000_000,
            usage: None,
            logs: vec![LogLine {
                timestamp_unix_ms: 1_700_000_000_000,
                level: "info".into(),
                target: "guest".into(),
                message: "hello from the guest".into(),
            }],
            points: None,
        }],
        program_runs: vec![],
        gateways: vec![],
    };
    controller
        .grpc()
        .await
        .report_status(ready.clone())
        .await
        .unwrap();
    let got = controller.client().get_vm(&vm_id).await.unwrap();
    assert_eq!(got.actual_state, "running");
    assert!(got.restart_required);
    assert_eq!(got.observed_generation, 1);
    assert_eq!(got.conditions[0].condition_type, "Ready");
    assert_eq!(
        got.guest_last_heartbeat.as_deref(),
        Some("2023-11-14T22:13:20Z")
    );
    let (_, logs) = controller.call(Method::GET, "/v1/vms/v1/logs", None).await;
    assert_eq!(logs["lines"][0]["message"], "hello from the guest");
    // Another node cannot report about this VM.
    let mut foreign = ready.clone();
    foreign.node_id = n2.node_id.clone();
    foreign.node_secret = n2.node_secret.clone();
    foreign.vms[0].actual_state = "failed".into();
    assert_eq!(
        actual_state_after(&controller, foreign, &vm_id).await,
        "running"
    );

    let deleting = controller
        .expect(Method::DELETE, "/v1/vms/v1", None, 202)
        .await;
    assert_eq!(deleting["actual_state"], "deleting");
    // Still there, still deleting, even when the agent reports it running.
    assert_eq!(
        actual_state_after(&controller, ready.clone(), &vm_id).await,
        "deleting"
    );
    let state = controller.desired_state(&n1).await;
    assert!(state.vms[0].deleting);
    controller
        .expect(Method::DELETE, "/v1/platforms/p", None, 409)
        .await;
    let body = controller
        .expect(
            Method::PATCH,
            "/v1/platforms/p",
            Some(json!({"nodes": ["n2"]})),
            409,
        )
        .await;
    assert_eq!(field(&body), "nodes");
    assert!(body["error"]["message"].as_str().unwrap().contains("v1"));

    let mut ack = ready;
    ack.vms[0].deleted = true;
    let generation = heartbeat_generation(&controller, &n1).await;
    let answer = controller
        .grpc()
        .await
        .report_status(ack)
        .await
        .unwrap()
        .into_inner();
    assert!(answer.desired_generation > generation);
    let err = controller.client().get_vm(&vm_id).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(controller.desired_state(&n1).await.vms.is_empty());

    // force=true removes at once.
    let (_, vm2) = controller
        .call(Method::POST, "/v1/vms", Some(vm_body("v2")))
        .await;
    let (status, _) = controller
        .call(Method::DELETE, "/v1/vms/v2?force=true", None)
        .await;
    assert_eq!(status, 200);
    assert!(controller
        .client()
        .get_vm(vm2["id"].as_str().unwrap())
        .await
        .unwrap_err()
        .is_not_found());

    let reasons: Vec<String> = controller
        .events()
        .await
        .events
        .into_iter()
        .map(|e| e.reason)
        .collect();
    for reason in [
        "PlatformCreated",
        "VmCreated",
        "VmReady",
        "GuestRegistered",
        "VmDeleting",
        "VmDeleted",
    ] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "{reason} missing from {reasons:?}"
        );
    }
    controller.stop().await;
}

#[tokio::test]
async fn paused_platform_pauses_its_vms_in_the_desired_state_and_state_survives_restart() {
    let (dir, controller, n1) = TestController::with_platform_p_on_n1().await;
    let (_, vm) = controller
        .call(Method::POST, "/v1/vms", Some(vm_body("v1")))
        .await;
    controller
        .call(Method::POST, "/v1/platforms/p/pause", None)
        .await;
    let state = controller.desired_state(&n1).await;
    assert_eq!(state.vms[0].power_state, "paused");
    assert_eq!(state.platforms[0].power_state, "paused");
    let generation = state.generation;
    controller.stop().await;

    let controller = TestController::start_with(dir.path(), |_| {}).await;
    let again = controller
        .client()
        .get_vm(vm["id"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(again.mac, vm["mac"].as_str().unwrap());
    assert_eq!(heartbeat_generation(&controller, &n1).await, generation);
    assert_eq!(
        controller.desired_state(&n1).await.vms[0].power_state,
        "paused"
    );
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creations_never_share_an_address_mac_or_vlan() {
    let (_dir, controller) = TestController::fresh().await;
    let n1 = controller.register("n1", "").await;
    let platforms = futures::future::join_all((0..8).map(|i| {
        controller.call(
            Method::POST,
            "/v1/platforms",
            Some(json!({"name": format!("p{i}"), "nodes": ["n1"]})),
        )
    }))
    .await;
    let mut tags: Vec<u64> = platforms
        .iter()
        .map(|(s, p)| {
            assert_eq!(*s, 201, "{p}");
            p["vlan_tag"].as_u64().unwrap()
        })
        .collect();
    tags.sort();
    tags.dedup();
    assert_eq!(tags.len(), 8);
    let vms = futures::future::join_all((0..24).map(|i| {
        controller.call(
            Method::POST,
            "/v1/vms",
            Some(
                json!({"name": format!("v{i}"), "platform": "p0", "node": "n1", "vcpus": 1,
                        "memory_mib": 16, "appliance": "namespace", "power_state": "running"}),
            ),
        )
    }))
    .await;
    let mut addresses = std::collections::HashSet::new();
    let mut macs = std::collections::HashSet::new();
    for (status, vm) in &vms {
        assert_eq!(*status, 201, "{vm}");
        assert!(
            addresses.insert(vm["address"].as_str().unwrap().to_string()),
            "{vm}"
        );
        assert!(macs.insert(vm["mac"].as_str().unwrap().to_string()), "{vm}");
    }
    assert_eq!(controller.desired_state(&n1).await.vms.len(), 24);
    controller.stop().await;
}

#[tokio::test]
async fn vm_maxima_reach_the_agent_and_refuse_sizes_beyond_them() {
    let (_dir, controller, n1) = TestController::with_platform_p_on_n1().await;
    let mut body = vm_body("v1");
    body["max_vcpus"] = json!(0);
    let answer = controller
        .expect(Method::POST, "/v1/vms", Some(body), 422)
        .await;
    assert_eq!(field(&answer), "max_vcpus");

    let mut body = vm_body("v1");
    body["max_vcpus"] = json!(4);
    body["max_memory_mib"] = json!(512);
    let vm = controller.create("/v1/vms", body).await;
    assert_eq!(
        (vm["max_vcpus"].clone(), vm["max_memory_mib"].clone()),
        (json!(4), json!(512))
    );
    assert_eq!(vm["pending_restart"], false);
    let sent = &controller.desired_state(&n1).await.vms[0];
    assert_eq!((sent.max_vcpus, sent.max_memory_mib), (4, 512));

    // Growing past a maximum without raising it is refused, naming it.
    let answer = controller
        .expect(Method::PATCH, "/v1/vms/v1", Some(json!({"vcpus": 6})), 422)
        .await;
    assert_eq!(field(&answer), "max_vcpus");
    let answer = controller
        .expect(
            Method::PATCH,
            "/v1/vms/v1",
            Some(json!({"memory_mib": 1024})),
            422,
        )
        .await;
    assert_eq!(field(&answer), "max_memory_mib");
    // Raised together: accepted, and the agent gets both.
    controller
        .expect(
            Method::PATCH,
            "/v1/vms/v1",
            Some(json!({"vcpus": 6, "max_vcpus": 8})),
            200,
        )
        .await;
    let sent = &controller.desired_state(&n1).await.vms[0];
    assert_eq!((sent.vcpus, sent.max_vcpus), (6, 8));

    // A VM without maxima sends 0: no room beyond its size.
    let (_, plain) = controller
        .call(Method::POST, "/v1/vms", Some(vm_body("v2")))
        .await;
    assert_eq!(plain["max_vcpus"], Value::Null);
    let state = controller.desired_state(&n1).await;
    let sent = state.vms.iter().find(|v| v.name == "v2").unwrap();
    assert_eq!((sent.max_vcpus, sent.max_memory_mib), (0, 0));

    // The agent's restart flag shows as pending_restart.
    let report = StatusReport {
        node_id: n1.node_id.clone(),
        node_secret: n1.node_secret.clone(),
        observed_generation: 1,
        vms: vec![VmStatus {
            vm_id: vm["id"].as_str().unwrap().to_string(),
            actual_state: "running".into(),
            restart_required: true,
            observed_generation: 2,
            ..Default::default()
        }],
        guests: vec![],
        program_runs: vec![],
        gateways: vec![],
    };
    controller.grpc().await.report_status(report).await.unwrap();
    let got = controller.client().get_vm("p/v1").await.unwrap();
    assert!(got.pending_restart);
    controller.stop().await;
}
