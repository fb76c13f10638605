//! End to end on one node, everything real: the in-process controller, a
//! private OVS (measurelab-testbed) as the node's switch, the namespace
//! backend with the real guest agent, and the agent's reconcile loop.
//!
//! The agent runs on its own thread inside the OVS sandbox's network
//! namespace (as it runs inside `<lab>-nK` in a lab), so the veths it creates
//! are switchable by that ovs-vswitchd; the controller's gRPC listener is
//! bound in the same namespace. "Killing" the agent drops its runtime without
//! any shutdown (no cleanup code runs), like SIGKILL - except that a
//! hypervisor call already running on a blocking thread finishes, which a
//! real SIGKILL would cut short (see the namespace backend's define).
//!
//! Needs root (netns, cgroups, OVS). Everything is torn down on drop.

mod reconcile_common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use measurelab_api::client::Client;
use measurelab_api::http::{
    DeploymentCreate, PlatformCreate, ProgramCreate, Vm, VmBackend, VmCreate, VmPowerState,
};
use measurelab_testbed::OvsSandbox;
use reconcile_common::{guest_agent, GuestCleanup, NodeController, RunningAgent};

const WAIT: Duration = Duration::from_secs(60);

/// Runs inside a guest: uses the local platform API, prints its argument.
const PROGRAM: &str = r#"#!/usr/bin/env python3
import json, os, sys, urllib.request
api = os.environ.get("MEASURELAB_PLATFORM_API", "http://127.0.0.1:7079")
tasks = json.load(urllib.request.urlopen(api + "/tasks", timeout=20))["tasks"]
print("hello", sys.argv[1], "tasks", len(tasks))
"#;

fn netns_list() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn vm_netns(vm: &Vm) -> String {
    format!("vm-{}", &vm.id.replace('-', "")[..8])
}

/// Port name -> tag of every Port on br-int.
fn ports(ovs: &OvsSandbox) -> BTreeMap<String, String> {
    let out = ovs
        .vsctl(&[
            "--format=csv",
            "--no-headings",
            "--columns=name,tag",
            "list",
            "Port",
        ])
        .unwrap_or_default();
    out.lines()
        .filter_map(|l| {
            let (name, tag) = l.split_once(',')?;
            Some((name.trim_matches('"').to_string(), tag.to_string()))
        })
        .collect()
}

fn port_names_of_bridge(ovs: &OvsSandbox) -> Vec<String> {
    ovs.vsctl(&["list-ports", "br-int"])
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn condition<'a>(vm: &'a Vm, kind: &str) -> Option<&'a str> {
    vm.conditions
        .iter()
        .find(|c| c.condition_type == kind)
        .map(|c| c.status.as_str())
}

fn ready(vm: &Vm) -> bool {
    vm.actual_state == "running"
        && condition(vm, "PortAttached") == Some("True")
        && condition(vm, "GuestRegistered") == Some("True")
        && condition(vm, "Ready") == Some("True")
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

async fn vms(client: &Client) -> Vec<Vm> {
    client.list_vms("").await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_vms_converge_survive_restart_and_repair() {
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("[{:>6.1} s] {what}", t0.elapsed().as_secs_f64());
    let guest_agent = guest_agent();
    phase("guest agent built");
    let ovs = OvsSandbox::start("rcl").unwrap();
    let netns = ovs.netns().name().to_string();
    let dir = tempfile::tempdir().unwrap();
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
    let mut agent = RunningAgent::start(&netns, agent_config.clone());

    phase("controller and agent started");
    wait_for("node n1 online", async || {
        let nodes = client.list_nodes().await.ok()?;
        nodes
            .iter()
            .any(|n| n.name == "n1" && n.capabilities.namespace_backend)
            .then_some(())
    })
    .await;

    let platform = client
        .create_platform(&PlatformCreate {
            tenant: None,
            name: "rcl".into(),
            nodes: vec!["n1".into()],
            admins: vec![],
            description: None,
            request_id: None,
            flow_monitoring: None,
        })
        .await
        .unwrap();
    let mut created = Vec::new();
    for name in ["a", "b"] {
        created.push(
            client
                .create_vm(&VmCreate {
                    tenant: None,
                    name: name.into(),
                    platform: "rcl".into(),
                    node: "n1".into(),
                    vcpus: 1,
                    memory_mib: 64,
                    disk_mib: None,
                    swap_mib: None,
                    max_vcpus: None,
                    max_memory_mib: None,
                    appliance: "namespace".into(),
                    qos_policy: None,
                    power_state: VmPowerState::Running,
                    backend: Some(VmBackend::Namespace),
                    request_id: None,
                })
                .await
                .unwrap(),
        );
    }

    // Kill the agent mid-creation: as soon as the first guest's namespace
    // exists, before the rest is done.
    let deadline = Instant::now() + WAIT;
    while !created
        .iter()
        .any(|vm| Path::new("/run/netns").join(vm_netns(vm)).exists())
    {
        assert!(Instant::now() < deadline, "no guest namespace appeared");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    phase("first guest namespace exists; killing the agent");
    agent.kill();
    let restarted_at = time::OffsetDateTime::now_utc();
    let mut agent = RunningAgent::start(&netns, agent_config.clone());

    let deadline = Instant::now() + WAIT;
    let running = loop {
        let all = vms(&client).await;
        // Guest heartbeats reach the controller only through the new agent,
        // so a heartbeat newer than the restart proves its channel works
        // (statuses alone could be left over from the killed agent).
        let heard_since_restart = |vm: &Vm| {
            vm.guest_last_heartbeat
                .as_deref()
                .and_then(|t| {
                    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .is_some_and(|t| t > restarted_at)
        };
        if all.len() == 2 && all.iter().all(|vm| ready(vm) && heard_since_restart(vm)) {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for both VMs running, attached and registered: {all:#?}\n{}",
            guest_logs(&state_dir)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    phase("both VMs ready after the restart");
    for vm in &running {
        assert_eq!(vm.backend, VmBackend::Namespace);
        assert!(!vm.address.is_empty(), "{vm:?}");
        assert!(vm.observed_generation >= 1, "{vm:?}");
    }

    // No duplicates: one namespace and one tagged port per VM, plus the
    // bridge's internal port.
    let list = netns_list();
    for vm in &running {
        assert_eq!(list.iter().filter(|n| **n == vm_netns(vm)).count(), 1);
    }
    let bridge_ports = port_names_of_bridge(&ovs);
    assert_eq!(bridge_ports.len(), 2, "{bridge_ports:?}");
    let tags = ports(&ovs);
    for port in &bridge_ports {
        assert_eq!(
            tags.get(port).map(String::as_str),
            Some(platform.vlan_tag.to_string().as_str()),
            "port {port} must carry the platform's VLAN: {tags:?}"
        );
    }
    let state_files: Vec<_> = std::fs::read_dir(state_dir.join("namespace"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .collect();
    assert_eq!(state_files.len(), 2);

    // Program distribution: the program reaches both guests through the
    // node agent, asks the local platform API for tasks (relayed as
    // poll_tasks -> PollTasks) and its exit status comes back.
    let program = client
        .create_program(&ProgramCreate {
            tenant: None,
            name: "hello.py".into(),
            content_base64: base64::engine::general_purpose::STANDARD.encode(PROGRAM),
            sha256: None,
            request_id: None,
        })
        .await
        .unwrap();
    let deployment = client
        .create_deployment(&DeploymentCreate {
            tenant: None,
            program: program.id.clone(),
            vms: running.iter().map(|vm| vm.id.clone()).collect(),
            args: vec!["world".into()],
            env: BTreeMap::new(),
            outputs: vec![],
            request_id: None,
        })
        .await
        .unwrap();
    let runs = wait_for("both program runs to exit", async || {
        let d = client.get_deployment(&deployment.id).await.ok()?;
        (d.runs.len() == 2 && d.runs.iter().all(|r| r.status == "exited")).then_some(d.runs)
    })
    .await;
    for run in &runs {
        assert_eq!(run.exit_code, Some(0), "{run:?}");
        assert!(run.stdout_tail.contains("hello world tasks 0"), "{run:?}");
    }

    phase("program ran in both guests");
    // Drift: a port deleted by hand comes back with its tag.
    let victim = bridge_ports[0].clone();
    ovs.vsctl(&["del-port", "br-int", &victim]).unwrap();
    assert!(!port_names_of_bridge(&ovs).contains(&victim));
    wait_for("the deleted port to be re-added", async || {
        port_names_of_bridge(&ovs).contains(&victim).then_some(())
    })
    .await;
    assert_eq!(
        ports(&ovs).get(&victim).cloned(),
        Some(platform.vlan_tag.to_string())
    );

    phase("port repaired");
    // Delete a VM: namespace, port and row disappear.
    let gone = running.iter().find(|vm| vm.name == "a").unwrap().clone();
    client.delete_vm(&gone.id, false).await.unwrap();
    wait_for(
        "VM a removed after the agent's ack",
        async || match client.get_vm(&gone.id).await {
            Err(e) if e.is_not_found() => Some(()),
            _ => None,
        },
    )
    .await;
    phase("VM deleted and acked");
    assert!(!netns_list().contains(&vm_netns(&gone)));
    assert_eq!(port_names_of_bridge(&ovs).len(), 1);
    let left = vms(&client).await;
    assert_eq!(left.len(), 1);
    assert!(ready(&left[0]), "{:?}\n{}", left[0], guest_logs(&state_dir));

    agent.kill();
    let _ = controller.stop(Duration::from_secs(10)).await;
    drop(_cleanup);
    cleanup_cgroup_parent(Path::new("/sys/fs/cgroup"));
}

/// The tail of every guest's log and its cgroup's memory events, so a
/// failure in CI says why a guest process died.
fn guest_logs(state_dir: &Path) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(state_dir.join("namespace")) else {
        return out;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let path = entry.path();
        if path.extension().is_some_and(|x| x == "log") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            out += &format!("--- {}\n{tail}\n", path.display());
        }
    }
    for events in [
        "/sys/fs/cgroup/measurelab",
        "/sys/fs/cgroup/unified/measurelab",
    ] {
        if let Ok(dirs) = std::fs::read_dir(events) {
            for dir in dirs.filter_map(|e| e.ok()) {
                let text =
                    std::fs::read_to_string(dir.path().join("memory.events")).unwrap_or_default();
                out += &format!("--- {}/memory.events\n{text}", dir.path().display());
            }
        }
    }
    out
}

/// The namespace backend's parent cgroup; removed only when empty, so a real
/// agent's guests on the same host are never touched.
fn cleanup_cgroup_parent(mount: &Path) {
    for hierarchy in ["unified", "cpu", "memory", ""] {
        let _ = std::fs::remove_dir(mount.join(hierarchy).join("measurelab"));
    }
}
