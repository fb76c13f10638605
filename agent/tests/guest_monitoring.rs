//! Guest monitoring end to end on one node, everything real (as
//! `reconcile_real`): the in-process controller, a private OVS, the
//! namespace backend running the real guest agent, the agent's loop.
//!
//! - A guest frozen with SIGSTOP keeps its channel open but stops
//!   heartbeating: its VM turns `GuestRegistered=False`
//!   (`GuestHeartbeatMissed`) within the agent's deadline, and True again
//!   after SIGCONT.
//! - The usage it relays is stored and served by `GET /v1/vms/{id}/usage`.
//!
//! Needs root (netns, cgroups, OVS). Everything is torn down on drop.

mod reconcile_common;

use std::path::Path;
use std::time::{Duration, Instant};

use measurelab_agent::hypervisor::{NamespaceConfig, NamespaceHypervisor};
use measurelab_api::client::Client;
use measurelab_api::http::{PlatformCreate, Vm};
use measurelab_testbed::OvsSandbox;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use reconcile_common::{guest_agent, namespace_vm, GuestCleanup, NodeController, RunningAgent};

const WAIT: Duration = Duration::from_secs(60);
/// Above the guest agent's 5 s heartbeat interval, short enough for a test.
const HEARTBEAT_DEADLINE: Duration = Duration::from_secs(8);
/// From the deadline running out to the controller showing it: the agent's
/// pass (scheduled at the deadline) and one ReportStatus.
const REPORT_LATENCY: Duration = Duration::from_secs(3);

fn condition<'a>(vm: &'a Vm, kind: &str) -> Option<(&'a str, &'a str)> {
    vm.conditions
        .iter()
        .find(|c| c.condition_type == kind)
        .map(|c| (c.status.as_str(), c.reason.as_str()))
}

async fn wait_vm(
    client: &Client,
    id: &str,
    what: &str,
    within: Duration,
    check: impl Fn(&Vm) -> bool,
) -> Vm {
    let deadline = Instant::now() + within;
    loop {
        let vm = client.get_vm(id).await.ok();
        if let Some(vm) = vm.as_ref().filter(|vm| check(vm)) {
            return vm.clone();
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}: {vm:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Resumes the guest whatever happens, so a failed assertion leaves no
/// stopped process behind for the cleanup to trip over.
struct Resume(Pid);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_guest_misses_its_heartbeat_and_usage_is_served() {
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("[{:>6.1} s] {what}", t0.elapsed().as_secs_f64());
    let guest_agent = guest_agent();
    let ovs = OvsSandbox::start("gmon").unwrap();
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
    agent_config.guest_heartbeat_deadline = HEARTBEAT_DEADLINE;
    let mut agent = RunningAgent::start(&netns, agent_config);

    let deadline = Instant::now() + WAIT;
    while !client.list_nodes().await.is_ok_and(|nodes| {
        nodes
            .iter()
            .any(|n| n.name == "n1" && n.capabilities.namespace_backend)
    }) {
        assert!(Instant::now() < deadline, "node n1 did not come online");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client
        .create_platform(&PlatformCreate {
            tenant: None,
            name: "gmon".into(),
            nodes: vec!["n1".into()],
            admins: vec![],
            description: None,
            request_id: None,
            flow_monitoring: None,
            gateway: None,
        })
        .await
        .unwrap();
    let vm = client.create_vm(&namespace_vm("g", "gmon")).await.unwrap();
    wait_vm(&client, &vm.id, "the guest registered", WAIT, |vm| {
        condition(vm, "GuestRegistered") == Some(("True", "Registered"))
            && condition(vm, "Ready").is_some_and(|(status, _)| status == "True")
    })
    .await;
    phase("guest registered");

    let hypervisor = NamespaceHypervisor::new(NamespaceConfig::new(
        state_dir.join("namespace"),
        vec!["true".into()],
    ))
    .unwrap();
    let guest_pid = hypervisor
        .guest_pid(vm.id.parse().unwrap())
        .unwrap()
        .expect("the guest process runs");
    let pid = Pid::from_raw(guest_pid as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    let resume = Resume(pid);
    let stopped_at = Instant::now();
    phase("guest agent stopped (SIGSTOP)");
    let missed = wait_vm(
        &client,
        &vm.id,
        "GuestRegistered=False (GuestHeartbeatMissed)",
        HEARTBEAT_DEADLINE + REPORT_LATENCY,
        |vm| condition(vm, "GuestRegistered") == Some(("False", "GuestHeartbeatMissed")),
    )
    .await;
    phase(&format!(
        "heartbeat missed, reported {:.1} s after SIGSTOP",
        stopped_at.elapsed().as_secs_f64()
    ));
    // The process is alive, so the VM still runs; it is just not Ready.
    assert_eq!(missed.actual_state, "running", "{missed:#?}");
    assert_eq!(
        condition(&missed, "Ready"),
        Some(("False", "GuestNotRegistered")),
        "{missed:#?}"
    );

    drop(resume);
    let resumed_at = Instant::now();
    wait_vm(
        &client,
        &vm.id,
        "GuestRegistered=True after SIGCONT",
        WAIT,
        |vm| {
            condition(vm, "GuestRegistered") == Some(("True", "Registered"))
                && condition(vm, "Ready").is_some_and(|(status, _)| status == "True")
        },
    )
    .await;
    phase(&format!(
        "registered again {:.1} s after SIGCONT",
        resumed_at.elapsed().as_secs_f64()
    ));

    // Usage: heartbeats before the freeze and after it landed in separate
    // 10 s steps, so at least two samples, the later one with rates.
    let deadline = Instant::now() + WAIT;
    let usage = loop {
        let usage = client.vm_usage(&vm.id, None, None, Some(10)).await.unwrap();
        if usage.samples.len() >= 2 {
            break usage;
        }
        assert!(Instant::now() < deadline, "no usage samples: {usage:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    phase(&format!("{} usage samples", usage.samples.len()));
    assert_eq!(usage.vm_id, vm.id);
    for sample in &usage.samples {
        // The guest sees its cgroup's memory limit (64 MiB) or the host's.
        assert!(sample.memory_total_bytes > 0, "{sample:?}");
        assert!(sample.memory_used_bytes > 0, "{sample:?}");
        assert!(
            (0.0..=100.0).contains(&sample.cpu_used_percent),
            "{sample:?}"
        );
        assert!(sample.cpu_count >= 1, "{sample:?}");
    }
    let last = usage.samples.last().unwrap();
    assert!(last.network_rx_bytes_per_second.is_some(), "{usage:#?}");

    agent.kill();
    let _ = controller.stop(Duration::from_secs(10)).await;
    drop(_cleanup);
    // The namespace backend's parent cgroup; removed only when empty, so a
    // real agent's guests on the same host are never touched.
    for hierarchy in ["unified", "cpu", "memory", ""] {
        let _ = std::fs::remove_dir(
            Path::new("/sys/fs/cgroup")
                .join(hierarchy)
                .join("measurelab"),
        );
    }
}
