//! The point list end to end, everything real: an MSCS and a registered
//! measurement point (the mcast binaries, uploaded as programs) run in two
//! namespace VMs of one node; the MSCS posts its list to the guest agent's
//! local API, the node agent relays it to the in-process controller, and the
//! test reads it from `GET /v1/platforms/{id}/points`. Stopping the point's
//! VM kills the point; the list at the controller must then show it missing.
//!
//! Needs root (netns, cgroups, OVS), like reconcile_real. Torn down on drop.

mod reconcile_common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use measurelab_api::client::Client;
use measurelab_api::http::{
    DeploymentCreate, PlatformCreate, PlatformPoints, ProgramCreate, Vm, VmCreate, VmPatch,
    VmPowerState,
};
use measurelab_testbed::OvsSandbox;
use reconcile_common::{guest_agent, namespace_vm, GuestCleanup, NodeController, RunningAgent};

const WAIT: Duration = Duration::from_secs(60);
/// The MSCS's heartbeat deadline for points, seconds.
const DEADLINE_SECONDS: u64 = 3;
const MSCS_PORT: u16 = 7300;

/// mcast-mscs and mcast-point, built once and stripped into `into`: a debug
/// build is bigger than the controller takes as a program.
fn mcast_binaries(into: &Path) -> (PathBuf, PathBuf) {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let status = measurelab_testbed::cargo::command()
        .args(["build", "-q", "-p", "measurelab-mcast"])
        .args(["--bin", "mcast-mscs", "--bin", "mcast-point"])
        .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap())
        .status()
        .unwrap();
    assert!(status.success(), "building the mcast binaries failed");
    let strip = |name: &str| {
        let out = into.join(name);
        let status = Command::new("strip")
            .arg("-o")
            .arg(&out)
            .arg(profile_dir.join(name))
            .status()
            .unwrap();
        assert!(status.success(), "strip {name} failed");
        out
    };
    (strip("mcast-mscs"), strip("mcast-point"))
}

async fn wait_for<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ready(vm: &Vm) -> bool {
    vm.actual_state == "running"
        && vm
            .conditions
            .iter()
            .any(|c| c.condition_type == "Ready" && c.status == "True")
}

async fn upload(client: &Client, name: &str, path: &Path) -> String {
    let content = std::fs::read(path).unwrap();
    client
        .create_program(&ProgramCreate {
            tenant: None,
            name: name.into(),
            content_base64: base64::engine::general_purpose::STANDARD.encode(content),
            sha256: None,
            request_id: None,
        })
        .await
        .unwrap()
        .id
}

async fn deploy(client: &Client, program: &str, vm: &Vm, args: Vec<String>) {
    client
        .create_deployment(&DeploymentCreate {
            tenant: None,
            program: program.into(),
            vms: vec![vm.id.clone()],
            args,
            env: BTreeMap::from([("NO_COLOR".to_string(), "1".to_string())]),
            outputs: vec![],
            request_id: None,
        })
        .await
        .unwrap();
}

/// The point `name` of the controller's list, with the whole list.
async fn point_state(client: &Client, name: &str) -> Option<(String, PlatformPoints)> {
    let list = client.platform_points("pts").await.ok()?;
    let state = list.points.iter().find(|p| p.name == name)?.state.clone();
    Some((state, list))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_point_shows_missing_at_the_controller() {
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("[{:>6.1} s] {what}", t0.elapsed().as_secs_f64());
    let dir = tempfile::tempdir().unwrap();
    let (mscs_bin, point_bin) = mcast_binaries(dir.path());
    let guest_agent = guest_agent();
    phase("binaries built");
    let ovs = OvsSandbox::start("pts").unwrap();
    let netns = ovs.netns().name().to_string();
    let state_dir = dir.path().join("agent");
    let _cleanup = GuestCleanup {
        state_dir: state_dir.clone(),
    };
    let controller = NodeController::start(
        &netns,
        &dir.path().join("controller"),
        |config| {
            config.heartbeat_interval = Duration::from_secs(1);
            config.offline_after = Duration::from_secs(5);
        },
        WAIT,
    )
    .await
    .unwrap();
    let client = controller.client.clone();
    let mut agent_config = controller.agent_config("n1", state_dir.clone());
    agent_config.ovsdb = Some(ovs.db_target());
    agent_config.libvirt_uris = vec![];
    agent_config.guest_agent = Some(guest_agent);
    let mut agent = RunningAgent::start(&netns, agent_config);
    wait_for("node n1 online", async || {
        let nodes = client.list_nodes().await.ok()?;
        nodes
            .iter()
            .any(|n| n.name == "n1" && n.capabilities.namespace_backend)
            .then_some(())
    })
    .await;

    client
        .create_platform(&PlatformCreate {
            tenant: None,
            name: "pts".into(),
            nodes: vec!["n1".into()],
            admins: vec![],
            description: None,
            request_id: None,
            flow_monitoring: None,
            gateway: None,
        })
        .await
        .unwrap();
    for name in ["mscs", "p1"] {
        client
            .create_vm(&VmCreate {
                // The program binary lives on the guest's tmpfs, charged to its memory.
                memory_mib: 256,
                disk_mib: Some(128),
                ..namespace_vm(name, "pts")
            })
            .await
            .unwrap();
    }
    let vms = wait_for("both VMs ready", async || {
        let vms = client.list_vms("").await.ok()?;
        (vms.len() == 2 && vms.iter().all(ready)).then_some(vms)
    })
    .await;
    let vm = |name: &str| vms.iter().find(|v| v.name == name).unwrap().clone();
    let (mscs_vm, point_vm) = (vm("mscs"), vm("p1"));
    let address = |vm: &Vm| vm.address.split('/').next().unwrap().to_string();
    phase("VMs ready");

    let before = client.platform_points("pts").await.unwrap();
    assert_eq!(before.reported_at, None, "{before:?}");
    assert!(before.points.is_empty(), "{before:?}");

    let mscs_program = upload(&client, "mcast-mscs", &mscs_bin).await;
    let point_program = upload(&client, "mcast-point", &point_bin).await;
    let mscs_addr = format!("{}:{MSCS_PORT}", address(&mscs_vm));
    deploy(
        &client,
        &mscs_program,
        &mscs_vm,
        [
            "--listen",
            &mscs_addr,
            "--state-file",
            "mscs-state.json",
            "--platform-api",
            "http://127.0.0.1:7079",
            "--point-deadline-seconds",
            &DEADLINE_SECONDS.to_string(),
        ]
        .map(str::to_string)
        .to_vec(),
    )
    .await;
    deploy(
        &client,
        &point_program,
        &point_vm,
        [
            "serve",
            "--listen",
            &format!("{}:7400", address(&point_vm)),
            "--name",
            "p1",
            "--data-addr",
            &address(&point_vm),
            "--mscs",
            &mscs_addr,
        ]
        .map(str::to_string)
        .to_vec(),
    )
    .await;

    let (_, active) = wait_for("p1 active in the controller's list", async || {
        point_state(&client, "p1")
            .await
            .filter(|(state, _)| state == "active")
    })
    .await;
    phase("p1 active at the controller");
    assert_eq!(active.reported_by.as_deref(), Some("mscs"), "{active:?}");
    let p1 = &active.points[0];
    assert_eq!(active.points.len(), 1, "{active:?}");
    assert_eq!(p1.origin, "registered");
    assert_eq!(
        p1.data_address.as_deref(),
        Some(address(&point_vm).as_str())
    );
    assert_eq!(p1.control_address, format!("{}:7400", address(&point_vm)));
    assert!(
        p1.last_seen.is_some() && p1.protocol_version.is_some(),
        "{p1:?}"
    );

    // Kill the point: stopping its VM ends every process in it.
    let stopped_at = Instant::now();
    client
        .update_vm(
            &point_vm.id,
            &VmPatch {
                power_state: Some(VmPowerState::Stopped),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (_, missing) = wait_for("p1 missing in the controller's list", async || {
        point_state(&client, "p1")
            .await
            .filter(|(state, _)| state == "missing")
    })
    .await;
    let took = stopped_at.elapsed();
    phase(&format!("p1 missing at the controller after {took:?}"));
    // The deadline, plus at most the MSCS's look interval and post gap, the node
    // agent's 1 s report period and the VM stop itself.
    assert!(
        took < Duration::from_secs(DEADLINE_SECONDS + 10),
        "took {took:?}"
    );
    let time = |t: &Option<String>| {
        time::OffsetDateTime::parse(
            t.as_deref().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    assert!(
        time(&missing.reported_at) > time(&active.reported_at),
        "{active:?}\n{missing:?}"
    );
    // The last heartbeat stays what it was before the point died.
    assert!(missing.points[0].last_seen.is_some(), "{missing:?}");

    agent.kill();
    let _ = controller.stop(Duration::from_secs(10)).await;
    drop(_cleanup);
    for hierarchy in ["unified", "cpu", "memory", ""] {
        let _ = std::fs::remove_dir(
            Path::new("/sys/fs/cgroup")
                .join(hierarchy)
                .join("measurelab"),
        );
    }
}
