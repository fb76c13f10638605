//! Time from `POST /v1/vms` to a running VM whose guest agent registered
//! (`Ready=True`: running, port on br-int with its VLAN, `GuestRegistered`),
//! for N namespace guests on one node. Everything is real: the in-process
//! controller, an OVS sandbox as the node's switch, the agent's reconcile loop
//! and the guest agent in each namespace.
//!
//! An example rather than a bin because it links the controller, which the
//! agent must not depend on outside of tests.
//!
//! ```text
//! cargo run -p measurelab-agent --example vm-bench -- [--vms 50] [--one-by-one]
//! ```
//! Needs root. Prints median, p95 and max latency.

#[path = "../tests/reconcile_common/mod.rs"]
mod reconcile_common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use measurelab_api::http::{PlatformCreate, Vm, VmBackend, VmCreate, VmPowerState};
use measurelab_testbed::OvsSandbox;
use reconcile_common::{guest_agent, GuestCleanup, NodeController, RunningAgent};

fn ready(vm: &Vm) -> bool {
    vm.actual_state == "running"
        && vm
            .conditions
            .iter()
            .any(|c| c.condition_type == "Ready" && c.status == "True")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut count = 50usize;
    let mut one_by_one = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--vms" => {
                count = args
                    .next()
                    .context("--vms needs a number")?
                    .parse()
                    .context("--vms")?
            }
            "--one-by-one" => one_by_one = true,
            other => bail!("unknown argument {other:?} (use --vms N, --one-by-one)"),
        }
    }
    let guest_agent = guest_agent();
    let ovs = OvsSandbox::start("vmb")?;
    let netns = ovs.netns().name().to_string();
    let dir = tempfile::tempdir()?;
    let state_dir = dir.path().join("agent");
    let _cleanup = GuestCleanup {
        state_dir: state_dir.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let controller = NodeController::start(
        &netns,
        &dir.path().join("controller"),
        |config| config.heartbeat_interval = Duration::from_secs(1),
        Duration::from_secs(30),
    )
    .await?;
    let client = controller.client.clone();

    let mut agent_config = controller.agent_config("bench", state_dir.clone());
    agent_config.ovsdb = Some(ovs.db_target());
    agent_config.libvirt_uris = vec![];
    agent_config.guest_agent = Some(guest_agent);
    let mut agent = RunningAgent::start(&netns, agent_config);
    loop {
        let nodes = client.list_nodes().await.unwrap_or_default();
        if nodes
            .iter()
            .any(|n| n.name == "bench" && n.capabilities.namespace_backend)
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("agent did not register");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client
        .create_platform(&PlatformCreate {
            tenant: None,
            name: "bench".into(),
            nodes: vec!["bench".into()],
            admins: vec![],
            description: None,
            request_id: None,
            flow_monitoring: None,
            gateway: None,
        })
        .await?;

    let body = |i: usize| VmCreate {
        tenant: None,
        name: format!("vm{i}"),
        platform: "bench".into(),
        node: "bench".into(),
        vcpus: 1,
        memory_mib: 32,
        disk_mib: None,
        swap_mib: None,
        max_vcpus: None,
        max_memory_mib: None,
        appliance: "namespace".into(),
        qos_policy: None,
        power_state: VmPowerState::Running,
        backend: Some(VmBackend::Namespace),
        request_id: None,
    };
    let mut requested: HashMap<String, Instant> = HashMap::new();
    let mut latencies: HashMap<String, Duration> = HashMap::new();
    let started = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut next = 0usize;
    while latencies.len() < count {
        let waiting = requested.len() - latencies.len();
        if next < count && (!one_by_one || waiting == 0) {
            let at = Instant::now();
            let vm = client.create_vm(&body(next)).await?;
            requested.insert(vm.id, at);
            next += 1;
            if !one_by_one {
                continue;
            }
        }
        for vm in client.list_vms("").await? {
            if ready(&vm) && !latencies.contains_key(&vm.id) {
                if let Some(at) = requested.get(&vm.id) {
                    latencies.insert(vm.id.clone(), at.elapsed());
                }
            }
        }
        if Instant::now() > deadline {
            bail!("only {} of {count} VMs became ready", latencies.len());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let total = started.elapsed();
    // Cross-check on the host: every guest runs, and its agent said hello.
    let ns_config = measurelab_agent::hypervisor::NamespaceConfig::new(
        state_dir.join("namespace"),
        vec!["true".into()],
    );
    let hv = measurelab_agent::hypervisor::NamespaceHypervisor::new(ns_config)?;
    use measurelab_agent::hypervisor::Hypervisor as _;
    let running = hv
        .list_owned()?
        .iter()
        .filter(|g| g.state == measurelab_agent::hypervisor::GuestState::Running)
        .count();
    let ports = ovs.vsctl(&["list-ports", "br-int"])?.lines().count();
    println!("host check: {running} guests running, {ports} ports on br-int");
    if running != count || ports != count {
        bail!("expected {count} running guests and ports");
    }
    let mut sorted: Vec<Duration> = latencies.values().copied().collect();
    sorted.sort();
    println!(
        "vm-bench: {count} namespace VMs on one node ({}), request -> running+registered (Ready=True):",
        if one_by_one {
            "one by one"
        } else {
            "all requested at once"
        }
    );
    println!(
        "  median {:.3} s   p95 {:.3} s   max {:.3} s   min {:.3} s   all ready after {:.3} s",
        percentile(&sorted, 50.0).as_secs_f64(),
        percentile(&sorted, 95.0).as_secs_f64(),
        sorted[sorted.len() - 1].as_secs_f64(),
        sorted[0].as_secs_f64(),
        total.as_secs_f64()
    );
    println!(
        "  throughput: {:.1} guests/s ({:.0} ms of wall time per guest)",
        count as f64 / total.as_secs_f64(),
        total.as_secs_f64() * 1000.0 / count as f64
    );

    agent.kill();
    let _ = controller.stop(Duration::from_secs(10)).await;
    Ok(())
}
