//! Appliances whose files the controller stores: the node agent fetches each
//! file over the real gRPC API, verifies its SHA-256, caches it under its
//! appliance directory and only then defines the VM. A file the controller
//! serves with other content than its digest (corrupted on the controller's
//! disk after the upload) is refused: the VM is not defined, its Ready
//! condition names the file and both digests, and nothing of it is kept.
//!
//! Everything is real, as in desired_push.rs: the in-process controller, a
//! private OVS, the namespace backend and the guest agent. Needs root.

mod reconcile_common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use measurelab_api::client::Client;
use measurelab_api::http::{
    ApplianceCreate, PlatformCreate, Vm, VmBackend, VmCreate, VmPowerState,
};
use measurelab_testbed::OvsSandbox;
use reconcile_common::{guest_agent, GuestCleanup, NodeController, RunningAgent};
use sha2::{Digest, Sha256};

/// Setup and each VM's way to Ready or refusal (the bound of a broken path,
/// not a timing target).
const BOUND: Duration = Duration::from_secs(90);

fn sha256(content: &[u8]) -> String {
    hex::encode(Sha256::digest(content))
}

fn appliance(name: &str, kernel: &str, initrd: &str) -> ApplianceCreate {
    ApplianceCreate {
        name: name.into(),
        version: "1".into(),
        arch: "x86_64".into(),
        os: "test".into(),
        kernel: String::new(),
        initrd: String::new(),
        disk: None,
        kernel_sha256: Some(kernel.into()),
        initrd_sha256: Some(initrd.into()),
        disk_sha256: None,
        min_memory_mib: 64,
        backends: vec!["namespace".into(), "libvirt".into()],
        request_id: None,
    }
}

fn vm_body(name: &str, appliance: &str) -> VmCreate {
    VmCreate {
        tenant: None,
        name: name.into(),
        platform: "apps".into(),
        node: "n1".into(),
        vcpus: 1,
        memory_mib: 64,
        disk_mib: None,
        swap_mib: None,
        max_vcpus: None,
        max_memory_mib: None,
        appliance: appliance.into(),
        qos_policy: None,
        power_state: VmPowerState::Running,
        backend: Some(VmBackend::Namespace),
        request_id: None,
    }
}

/// Polls VM `id` until `done` holds; the last state on timeout.
async fn wait_vm(client: &Client, id: &str, done: impl Fn(&Vm) -> bool) -> Result<Vm, Vm> {
    let deadline = Instant::now() + BOUND;
    loop {
        let vm = client.get_vm(id).await.unwrap();
        if done(&vm) {
            return Ok(vm);
        }
        if Instant::now() > deadline {
            return Err(vm);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ready(vm: &Vm) -> Option<&measurelab_api::http::Condition> {
    vm.conditions.iter().find(|c| c.condition_type == "Ready")
}

fn cache_entries(cache: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cache)
        .map(|dir| {
            dir.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_appliance_files_are_fetched_verified_and_a_tampered_one_refused() {
    let guest_agent = guest_agent();
    let ovs = OvsSandbox::start("apps").unwrap();
    let netns = ovs.netns().name().to_string();
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("agent");
    let appliance_dir = dir.path().join("appliances");
    let controller_dir = dir.path().join("controller");
    let _cleanup = GuestCleanup {
        state_dir: state_dir.clone(),
    };
    let controller = NodeController::start(&netns, &controller_dir, |_| {}, BOUND)
        .await
        .unwrap();
    let client = controller.client.clone();
    let mut agent_config = controller.agent_config("n1", state_dir.clone());
    agent_config.ovsdb = Some(ovs.db_target());
    agent_config.libvirt_uris = vec![];
    agent_config.guest_agent = Some(guest_agent);
    agent_config.appliance_dir = appliance_dir.clone();
    let mut agent = RunningAgent::start(&netns, agent_config);
    let deadline = Instant::now() + BOUND;
    while !client
        .list_nodes()
        .await
        .unwrap_or_default()
        .iter()
        .any(|n| n.name == "n1" && n.capabilities.namespace_backend)
    {
        assert!(Instant::now() < deadline, "agent did not register");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client
        .create_platform(&PlatformCreate {
            tenant: None,
            name: "apps".into(),
            nodes: vec!["n1".into()],
            admins: vec![],
            description: None,
            request_id: None,
            flow_monitoring: None,
            gateway: None,
        })
        .await
        .unwrap();

    // Several gRPC chunks (256 KiB each).
    let kernel: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let initrd = b"good initrd".to_vec();
    let (kernel_sha, initrd_sha) = (sha256(&kernel), sha256(&initrd));
    for (digest, content) in [(&kernel_sha, &kernel), (&initrd_sha, &initrd)] {
        client
            .upload_appliance_file(digest, content.clone())
            .await
            .unwrap();
    }
    client
        .create_appliance(&appliance("good", &kernel_sha, &initrd_sha))
        .await
        .unwrap();
    let vm = client.create_vm(&vm_body("v1", "good")).await.unwrap();
    let vm = wait_vm(&client, &vm.id, |vm| {
        vm.actual_state == "running" && ready(vm).is_some_and(|c| c.status == "True")
    })
    .await
    .unwrap_or_else(|vm| panic!("VM on a stored appliance never became Ready: {vm:?}"));
    let cache = appliance_dir.join("sha256");
    let cached = std::fs::read(cache.join(&kernel_sha)).unwrap();
    assert!(
        cached == kernel,
        "the cached kernel differs from the upload"
    );
    let mode = std::fs::metadata(cache.join(&kernel_sha))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o222, 0, "cached files are read-only: {mode:o}");
    eprintln!("{} Ready on appliance good", vm.name);

    // Uploaded intact, then corrupted on the controller's disk: the
    // controller serves bytes that no longer have the appliance's digest.
    let bad_initrd = b"initrd that will rot".to_vec();
    let bad_sha = sha256(&bad_initrd);
    client
        .upload_appliance_file(&bad_sha, bad_initrd)
        .await
        .unwrap();
    client
        .create_appliance(&appliance("tampered", &kernel_sha, &bad_sha))
        .await
        .unwrap();
    let stored = controller_dir.join("appliances/sha256").join(&bad_sha);
    let rotten = b"initrd that has rotted".to_vec();
    std::fs::write(&stored, &rotten).unwrap();
    let rotten_sha = sha256(&rotten);
    let vm = client.create_vm(&vm_body("v2", "tampered")).await.unwrap();
    let vm = wait_vm(&client, &vm.id, |vm| {
        ready(vm).is_some_and(|c| c.reason == "ApplianceChecksumMismatch")
    })
    .await
    .unwrap_or_else(|vm| panic!("the tampered initrd was not refused: {vm:?}"));
    let condition = ready(&vm).unwrap();
    assert_eq!(condition.status, "False");
    for part in ["initrd", "tampered", bad_sha.as_str(), rotten_sha.as_str()] {
        assert!(
            condition.message.contains(part),
            "{part} missing from {:?}",
            condition.message
        );
    }
    assert_ne!(vm.actual_state, "running", "{vm:?}");
    // Only the verified files are kept: no rotten copy, no partial file.
    let mut expected = vec![initrd_sha.clone(), kernel_sha.clone()];
    expected.sort();
    assert_eq!(cache_entries(&cache), expected);
    eprintln!("refused: {}", condition.message);

    agent.kill();
    controller
        .stop(Duration::from_secs(20))
        .await
        .expect("controller did not stop")
        .unwrap()
        .unwrap();
}
