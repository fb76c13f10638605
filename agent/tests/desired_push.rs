//! A VM requested through the public API reaches the node agent's reconcile
//! loop through the controller's WatchDesiredState push, not the heartbeat:
//! with a 30 s heartbeat interval, each VM must be running well within 10 s.
//! The bound is generous (a namespace guest is usually Ready in under a
//! second here); it fails only when the push path is broken and the agent
//! waits for a heartbeat or the 30 s resync. Not a timing target: those are
//! in scripts/bench-provider.sh.
//!
//! Everything is real, as in reconcile_real.rs: the in-process controller, a
//! private OVS, the namespace backend and the guest agent. Needs root.

mod reconcile_common;

use std::time::{Duration, Instant};

use measurelab_api::client::Client;
use measurelab_api::http::{PlatformCreate, Vm};
use measurelab_testbed::OvsSandbox;
use reconcile_common::{guest_agent, namespace_vm, GuestCleanup, NodeController, RunningAgent};

/// Far longer than any heartbeat-free path should take, far shorter than the
/// heartbeat interval and the desired-state resync (both 30 s).
const PUSH_BOUND: Duration = Duration::from_secs(10);
const HEARTBEAT: Duration = Duration::from_secs(30);
/// Setup steps (OVS start, registration, the first guest's first start).
const SETUP: Duration = Duration::from_secs(90);

fn ready(vm: &Vm) -> bool {
    vm.actual_state == "running"
        && vm
            .conditions
            .iter()
            .any(|c| c.condition_type == "Ready" && c.status == "True")
}

/// Create a VM and return how long it took to be running and Ready, or
/// `None` when it was not within `bound`.
async fn create_and_time(client: &Client, name: &str, bound: Duration) -> Option<Duration> {
    let started = Instant::now();
    let vm = client.create_vm(&namespace_vm(name, "push")).await.unwrap();
    while started.elapsed() < bound {
        if client.get_vm(&vm.id).await.is_ok_and(|vm| ready(&vm)) {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_vm_reaches_the_agent_without_waiting_for_a_heartbeat() {
    let t0 = Instant::now();
    let guest_agent = guest_agent();
    eprintln!("[{:?}] guest agent built", t0.elapsed());
    let ovs = OvsSandbox::start("push").unwrap();
    let netns = ovs.netns().name().to_string();
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("agent");
    let _cleanup = GuestCleanup {
        state_dir: state_dir.clone(),
    };

    let setup_deadline = Instant::now() + SETUP;
    let controller = NodeController::start(
        &netns,
        &dir.path().join("controller"),
        |config| {
            config.heartbeat_interval = HEARTBEAT;
            config.offline_after = HEARTBEAT * 3;
        },
        SETUP,
    )
    .await
    .unwrap();
    let client = controller.client.clone();

    let mut agent_config = controller.agent_config("n1", state_dir.clone());
    agent_config.ovsdb = Some(ovs.db_target());
    agent_config.libvirt_uris = vec![];
    agent_config.guest_agent = Some(guest_agent);
    let mut agent = RunningAgent::start(&netns, agent_config);
    loop {
        let nodes = client.list_nodes().await.unwrap_or_default();
        if nodes
            .iter()
            .any(|n| n.name == "n1" && n.capabilities.namespace_backend)
        {
            break;
        }
        assert!(Instant::now() < setup_deadline, "agent did not register");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client
        .create_platform(&PlatformCreate {
            tenant: None,
            name: "push".into(),
            nodes: vec!["n1".into()],
            admins: vec![],
            description: None,
            request_id: None,
            flow_monitoring: None,
            gateway: None,
        })
        .await
        .unwrap();

    // The first VM may also be picked up by the loop's start-up fetch (it
    // retries until the node is registered), so it only warms up: the guest
    // agent binary, the bridge, the cgroup parent.
    let warm_up = create_and_time(&client, "warm", SETUP).await;
    assert!(warm_up.is_some(), "the first VM never became Ready");

    // From here on only a heartbeat (30 s away), the resync (30 s) or the
    // push can tell the agent. Three in a row, each within the bound: without
    // the push, at most one of them could ride on a resync.
    let mut took = Vec::new();
    for name in ["p1", "p2", "p3"] {
        match create_and_time(&client, name, PUSH_BOUND).await {
            Some(elapsed) => took.push(elapsed),
            None => panic!(
                "VM {name} was not Ready within {PUSH_BOUND:?} of its request (heartbeat every \
                 {HEARTBEAT:?}): the desired-state push did not reach the agent; earlier: {took:?}"
            ),
        }
    }
    eprintln!("warm-up {warm_up:?}; request -> Ready: {took:?}");

    eprintln!("[{:?}] VMs done", t0.elapsed());
    agent.kill();
    eprintln!("[{:?}] agent killed", t0.elapsed());
    controller
        .stop(Duration::from_secs(20))
        .await
        .expect("controller did not stop")
        .unwrap()
        .unwrap();
    eprintln!("[{:?}] controller stopped", t0.elapsed());
}
