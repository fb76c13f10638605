//! Flow monitoring end to end, everything real: the in-process controller
//! runs nfcapd, the agent's reconcile loop turns the node's flow export on in
//! a private OVS, namespace guests of two platforms ping each other, and
//! `GET /v1/platforms/{id}/flows` returns each platform's own flows with the
//! exact counts. NetFlow v5, because OVS reports every packet of it (no
//! sampling) as per-flow deltas; nfdump 1.7 files OVS's IPFIX records under
//! the exporter-wide total counters instead (seen here: each record's
//! packets grew by one across all flows), so IPFIX counts are not per flow. An operator's `enabled = false` stops the
//! export.
//!
//! Needs root (netns, cgroups, OVS) and nfdump. Everything is torn down on drop.

mod reconcile_common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use measurelab_agent::reconcile::FlowExportSettings;
use measurelab_api::client::Client;
use measurelab_api::http::{Flow, FlowExport, FlowProtocol, NodePatch, PlatformCreate, Vm};
use measurelab_controller::FlowCollectorConfig;
use measurelab_testbed::OvsSandbox;
use reconcile_common::{guest_agent, namespace_vm, GuestCleanup, NodeController, RunningAgent};

const WAIT: Duration = Duration::from_secs(90);
/// An ICMP echo as Open vSwitch counts its bytes: the whole Ethernet frame,
/// 14 bytes Ethernet + 20 IP + 8 ICMP headers, plus the payload.
const FRAME_HEADERS: u64 = 42;

fn vm_netns(vm: &Vm) -> String {
    format!("vm-{}", &vm.id.replace('-', "")[..8])
}

fn ready(vm: &Vm) -> bool {
    vm.actual_state == "running"
        && vm
            .conditions
            .iter()
            .any(|c| c.condition_type == "Ready" && c.status == "True")
}

async fn wait_for<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `count` echo requests of `payload` bytes from `from` to `to`; every one
/// must be answered, so the expected counts are exact.
fn ping(from: &Vm, to: &Vm, count: u32, payload: u32) {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &vm_netns(from), "ping", "-q", "-c"])
        .arg(count.to_string())
        .args(["-i", "0.05", "-W", "2", "-s"])
        .arg(payload.to_string())
        .arg(&to.address)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ping {} -> {} failed: {}{}",
        from.name,
        to.address,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (packets, bytes) of the ICMP flow `from` -> `to` summed over the records.
fn icmp_totals(flows: &[Flow], from: &Vm, to: &Vm) -> (u64, u64) {
    flows
        .iter()
        .filter(|f| f.protocol == 1 && f.src_addr == from.address && f.dst_addr == to.address)
        .fold((0, 0), |(p, b), f| (p + f.packets, b + f.bytes))
}

async fn flows(client: &Client, platform: &str) -> Vec<Flow> {
    client.platform_flows(platform, None, None).await.unwrap()
}

async fn create_vm(client: &Client, platform: &str, name: &str) -> Vm {
    client
        .create_vm(&namespace_vm(name, platform))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_flows_are_exported_collected_and_kept_apart() {
    let guest_agent = guest_agent();
    let ovs = OvsSandbox::start("flw").unwrap();
    let netns = ovs.netns().name().to_string();
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("agent");
    let _cleanup = GuestCleanup {
        state_dir: state_dir.clone(),
    };
    // The collector listens on the node namespace's loopback, where
    // ovs-vswitchd runs: the export leaves no namespace of the test.
    let collector: SocketAddr = "127.0.0.1:2055".parse().unwrap();
    let collector_netns = netns.clone();
    let controller = NodeController::start(
        &netns,
        &dir.path().join("controller"),
        move |config| {
            config.heartbeat_interval = Duration::from_secs(1);
            config.offline_after = Duration::from_secs(5);
            let mut flows = FlowCollectorConfig::new(collector);
            flows.netns = Some(collector_netns);
            flows.rotate_seconds = 2;
            config.flow_collector = Some(flows);
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
    // The exporter address nfcapd records is the UDP source, loopback here.
    agent_config.management_address = "127.0.0.1".into();
    agent_config.flow_export = Some(FlowExportSettings {
        protocol: FlowProtocol::Netflow,
        sampling: 1,
        active_timeout_seconds: 1,
        collector: None,
    });
    let _agent = RunningAgent::start(&netns, agent_config);
    wait_for("node n1 online", async || {
        let nodes = client.list_nodes().await.ok()?;
        nodes
            .iter()
            .any(|n| n.name == "n1" && n.capabilities.namespace_backend)
            .then_some(())
    })
    .await;

    for name in ["fa", "fb"] {
        client
            .create_platform(&PlatformCreate {
                name: name.into(),
                nodes: vec!["n1".into()],
                admins: vec![],
                description: None,
                tenant: None,
                request_id: None,
                flow_monitoring: Some(true),
                gateway: None,
            })
            .await
            .unwrap();
    }
    let mut vms = Vec::new();
    for (platform, name) in [("fa", "fa1"), ("fa", "fa2"), ("fb", "fb1"), ("fb", "fb2")] {
        vms.push(create_vm(&client, platform, name).await);
    }
    let vms = wait_for("four VMs ready", async || {
        let listed = client.list_vms("").await.ok()?;
        let ready: Vec<Vm> = vms
            .iter()
            .filter_map(|vm| listed.iter().find(|l| l.id == vm.id && ready(l)).cloned())
            .collect();
        (ready.len() == 4).then_some(ready)
    })
    .await;
    let (fa1, fa2, fb1, fb2) = (&vms[0], &vms[1], &vms[2], &vms[3]);

    // The agent's configuration applies: no operator setting yet.
    let node = wait_for("netflow export active", async || {
        let node = client.get_node("n1").await.ok()?;
        node.capabilities
            .flow_export
            .starts_with("netflow-v5 sampling=1/1 active_timeout=1s -> 127.0.0.1:2055")
            .then_some(node)
    })
    .await;
    assert_eq!(node.flow_export, None, "no operator setting was made");
    assert_ne!(
        ovs.vsctl(&["get", "Bridge", "br-int", "netflow"]).unwrap(),
        "[]"
    );

    ping(fa1, fa2, 20, 100);
    ping(fb1, fb2, 7, 200);
    let fa_flows = wait_for("fa1 -> fa2 fully counted", async || {
        let listed = flows(&client, "fa").await;
        (icmp_totals(&listed, fa1, fa2).0 >= 20).then_some(listed)
    })
    .await;
    eprintln!("platform fa flows: {fa_flows:#?}");
    assert_eq!(
        icmp_totals(&fa_flows, fa1, fa2),
        (20, 20 * (100 + FRAME_HEADERS)),
        "echo requests fa1 -> fa2 (packets, frame bytes)"
    );
    let fb_flows = wait_for("fb1 -> fb2 fully counted", async || {
        let listed = flows(&client, "fb").await;
        (icmp_totals(&listed, fb1, fb2).0 >= 7).then_some(listed)
    })
    .await;
    assert_eq!(
        icmp_totals(&fb_flows, fb1, fb2),
        (7, 7 * (200 + FRAME_HEADERS))
    );
    let foreign = |listed: &[Flow], others: [&Vm; 2]| {
        listed
            .iter()
            .filter(|f| {
                others
                    .iter()
                    .any(|o| f.src_addr == o.address || f.dst_addr == o.address)
            })
            .count()
    };
    assert_eq!(
        foreign(&fa_flows, [fb1, fb2]),
        0,
        "fb traffic in fa's flows"
    );
    assert_eq!(
        foreign(&fb_flows, [fa1, fa2]),
        0,
        "fa traffic in fb's flows"
    );
    let fa_vlan = client.get_platform("fa").await.unwrap().vlan_tag;
    assert!(fa_flows.iter().all(|f| f.vlan == fa_vlan && f.node == "n1"));

    // The operator turns export off for the node, overriding the agent.
    let labels = node.labels.clone();
    let off = FlowExport {
        enabled: false,
        protocol: FlowProtocol::Netflow,
        sampling: 1,
        active_timeout_seconds: 1,
        collector: None,
    };
    let patched = client
        .patch_node("n1", &flow_export_patch(labels.clone(), off.clone()))
        .await
        .unwrap();
    assert_eq!(patched.flow_export, Some(off));
    wait_for("export off on the bridge", async || {
        let node = client.get_node("n1").await.ok()?;
        let row = ovs.vsctl(&["get", "Bridge", "br-int", "netflow"]).ok()?;
        (node.capabilities.flow_export.is_empty() && row == "[]").then_some(())
    })
    .await;
    // Traffic while off, then a marker once the operator's NetFlow setting is
    // on again: when the marker is counted, anything sent while off would
    // have been too.
    ping(fa1, fa2, 5, 300);
    // NetFlow in OVS reads the datapath flows' counters, so a flow cached
    // while export was off would be reported in full once export is on
    // again; drop the cache (its counts go nowhere while export is off).
    ovs.appctl(&["revalidator/purge"]).unwrap();
    let on = FlowExport {
        enabled: true,
        protocol: FlowProtocol::Netflow,
        sampling: 1,
        active_timeout_seconds: 1,
        collector: None,
    };
    client
        .patch_node("n1", &flow_export_patch(labels, on))
        .await
        .unwrap();
    wait_for("export on again", async || {
        let node = client.get_node("n1").await.ok()?;
        (!node.capabilities.flow_export.is_empty()).then_some(())
    })
    .await;
    ping(fa2, fa1, 3, 400);
    let fa_flows = wait_for("marker fa2 -> fa1 counted", async || {
        let listed = flows(&client, "fa").await;
        let marker = listed.iter().any(|f| {
            f.protocol == 1 && f.src_addr == fa2.address && f.bytes == 3 * (400 + FRAME_HEADERS)
        });
        marker.then_some(listed)
    })
    .await;
    // The off-time frames were 342 bytes each way; the marker's replies
    // (fa1 -> fa2) are 442 bytes; the first run's requests 142 bytes.
    let off_size = 300 + FRAME_HEADERS;
    let sent_while_off: Vec<&Flow> = fa_flows
        .iter()
        .filter(|f| f.protocol == 1 && f.packets > 0 && f.bytes == f.packets * off_size)
        .collect();
    assert!(
        sent_while_off.is_empty(),
        "traffic sent while the export was off reached the collector: {sent_while_off:?}"
    );
    let marker_size = 400 + FRAME_HEADERS;
    let before: Vec<Flow> = fa_flows
        .iter()
        .filter(|f| f.bytes != f.packets * marker_size)
        .cloned()
        .collect();
    assert_eq!(
        icmp_totals(&before, fa1, fa2),
        (20, 20 * (100 + FRAME_HEADERS))
    );

    // A platform without flow monitoring has no flows to read.
    let err = client
        .update_platform(
            "fb",
            &measurelab_api::http::PlatformPatch {
                flow_monitoring: Some(false),
                ..Default::default()
            },
        )
        .await
        .map(|_| ());
    assert!(err.is_ok(), "{err:?}");
    let refused = client.platform_flows("fb", None, None).await.unwrap_err();
    assert!(refused.to_string().contains("flow_monitoring"), "{refused}");

    let _ = controller.stop(Duration::from_secs(10)).await;
}

/// The operator's PATCH that sets a node's flow export, labels unchanged.
fn flow_export_patch(labels: BTreeMap<String, String>, export: FlowExport) -> NodePatch {
    NodePatch {
        labels,
        flow_export: Some(Some(export)),
        cpu_overcommit: None,
        memory_overcommit: None,
    }
}
