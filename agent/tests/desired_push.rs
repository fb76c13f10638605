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
use reconcile_common::{
    guest_agent, in_netns, namespace_vm, GuestCleanup, NodeController, RunningAgent,
};

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
    // The agent serves /metrics in the node's namespace, as a node host on
    // its management address: a port picked there and handed over.
    let metrics_addr = in_netns(&netns, || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    });
    agent_config.metrics_listen = Some(metrics_addr);
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

    // The running agent's own /metrics shows what it was asked and did.
    let text = in_netns(&netns, move || scrape_classic(metrics_addr));
    let values = samples(&text);
    let value = |series: &str| {
        *values
            .get(series)
            .unwrap_or_else(|| panic!("{series} missing from the agent's /metrics:\n{text}"))
    };
    assert_eq!(
        value("measurelab_agent_desired_vms"),
        4.0,
        "the controller asked for warm, p1, p2 and p3"
    );
    assert_eq!(
        value("measurelab_agent_guests{state=\"running\"}"),
        4.0,
        "warm, p1, p2 and p3 are Ready, so running"
    );
    let passes: f64 = values
        .iter()
        .filter(|(series, _)| series.starts_with("measurelab_agent_reconcile_passes_total{"))
        .map(|(_, value)| value)
        .sum();
    assert!(passes > 0.0, "no reconcile pass counted:\n{text}");
    assert!(
        value("measurelab_agent_reconcile_pass_duration_seconds_count") > 0.0,
        "{text}"
    );
    assert!(value("measurelab_agent_relay_queue_depth") >= 0.0);
    if let Err(e) = measurelab_testbed::promtool_check(&text) {
        panic!("promtool check metrics refused the agent's /metrics: {e:#}\n{text}");
    }

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

/// `GET /metrics` in the classic text format (what `promtool check metrics`
/// reads), blocking: the body. Retried until the listener is up (10 s).
fn scrape_classic(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut socket = loop {
        match std::net::TcpStream::connect(addr) {
            Ok(socket) => break socket,
            Err(e) => assert!(Instant::now() < deadline, "agent /metrics at {addr}: {e}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    socket
        .write_all(
            b"GET /metrics HTTP/1.1\r\nhost: x\r\naccept: text/plain\r\nconnection: close\r\n\r\n",
        )
        .unwrap();
    let mut raw = String::new();
    socket.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// `name{labels} value` lines of an exposition, keyed by `name{labels}`.
fn samples(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}
