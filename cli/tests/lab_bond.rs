//! Bonded uplinks through the whole product: `lab up --uplinks 2` gives every
//! node a bond of two links to the lab switch, and a multicast run between
//! two nodes' service hosts (the real mcast programs, over the service VLAN
//! that the uplinks trunk) survives the sending node's active member going
//! down mid-run. The capabilities the agent reports show the switch-over.
//! Needs root and the packages of scripts/packages.txt.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use common::LabGuard;
use measurelab_api::http::{Node, TaskCreate, UplinkStatus};
use measurelab_api::result::{ReceiptBitmap, ResultDocument};

const WAIT: Duration = Duration::from_secs(120);
const RATE_PPS: u64 = 100;
const DURATION_SECONDS: u64 = 15;

fn uplink(node: &Node) -> Option<&UplinkStatus> {
    node.capabilities.uplink.as_ref()
}

/// Poll `lab status` until node `name` satisfies `ready`.
fn wait_node(lab: &LabGuard, name: &str, what: &str, ready: impl Fn(&Node) -> bool) -> Node {
    let deadline = Instant::now() + WAIT;
    loop {
        let node = lab.node(name);
        if ready(&node) {
            return node;
        }
        if Instant::now() > deadline {
            panic!(
                "{name} never showed {what}: {:?}\n{}",
                node.capabilities,
                lab.log_tail("n1-agent", 30)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Packets sent by interface `dev` in namespace `ns`.
fn tx_packets(ns: &str, dev: &str) -> u64 {
    let out = Command::new("ip")
        .args(["-n", ns, "-s", "-j", "link", "show", dev])
        .output()
        .expect("ip link show");
    let links: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("ip -j link show {dev}: {e}"));
    links[0]["stats64"]["tx"]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no tx counter for {dev}: {links}"))
}

/// Received flag of each probe `0..probes`.
fn receipts(bitmap: &ReceiptBitmap) -> Vec<bool> {
    match bitmap {
        ReceiptBitmap::Runs { runs, .. } => {
            let mut bits = Vec::new();
            for (i, run) in runs.iter().enumerate() {
                bits.extend(std::iter::repeat_n(i % 2 == 0, *run as usize));
            }
            bits
        }
        ReceiptBitmap::Bitmap { probes, base64 } => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(base64)
                .expect("receipt bitmap base64");
            (0..*probes)
                .map(|s| bytes[(s / 8) as usize] & (1 << (s % 8)) != 0)
                .collect()
        }
    }
}

#[test]
fn multicast_run_survives_the_active_bond_member_going_down() {
    let lab = LabGuard::new('b');
    let out = lab
        .up_command(2, 1)
        .args(["--uplinks", "2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lab up --uplinks 2 failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Both nodes: bond0 of uplink0 + uplink1, both links up, one active, on
    // the userspace datapath (the lab pins it; this machine has no module).
    for name in ["n1", "n2"] {
        let node = wait_node(&lab, name, "a healthy bond", |n| {
            uplink(n).is_some_and(|u| {
                u.members.len() == 2
                    && u.members.iter().all(|m| m.link_up)
                    && !u.active_member.is_empty()
            })
        });
        let bond = uplink(&node).unwrap();
        assert_eq!(bond.name, "bond0");
        assert_eq!(bond.mode, "active-backup");
        let members: Vec<&str> = bond.members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(members, ["uplink0", "uplink1"]);
        assert_eq!(node.capabilities.datapath, "netdev");
    }
    let active_before = uplink(&lab.node("n1")).unwrap().active_member.clone();
    let (down_index, other) = match active_before.as_str() {
        "uplink0" => (0, "uplink1"),
        "uplink1" => (1, "uplink0"),
        other => panic!("unexpected active member {other:?}"),
    };

    let (client, runtime) = lab.client();
    // No probe of the run is sent before this moment.
    let created_at = Instant::now();
    let task = runtime
        .block_on(client.create_task(&TaskCreate {
            name: "bond-failover".into(),
            mode: "service_host".into(),
            platform: None,
            nodes: Some(vec!["n1".into(), "n2".into()]),
            schedule: "once".into(),
            interval_seconds: None,
            duration_seconds: Some(DURATION_SECONDS),
            rate_pps: RATE_PPS,
            packet_size_bytes: 200,
            group: "239.192.9.1".into(),
            port: 50090,
            ttl: 8,
            ssm: false,
            source: Some("n1".into()),
            receivers: Some(vec!["n2".into()]),
            bottleneck_loss_threshold: None,
            bottleneck_delay_stddev_us: None,
            compare_with_service_host: false,
            tenant: None,
            request_id: None,
        }))
        .expect("create the task");

    // The run is under way once n1's active member carries a second of probes.
    let node_ns = lab.node_ns(1);
    let start = tx_packets(&node_ns, &active_before);
    let deadline = Instant::now() + WAIT;
    while tx_packets(&node_ns, &active_before) < start + RATE_PPS {
        assert!(
            Instant::now() < deadline,
            "no probes leave n1 over {active_before}; task: {:?}",
            runtime.block_on(client.get_task(&task.name))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Take the lab switch's end of the active link down: n1 loses carrier.
    let peer = match down_index {
        0 => format!("{}-n1-up", lab.name),
        _ => format!("{}-n1-up{down_index}", lab.name),
    };
    let switch_ns = format!("{}-sw", lab.name);
    let status = Command::new("ip")
        .args(["-n", &switch_ns, "link", "set", &peer, "down"])
        .status()
        .expect("ip link set down");
    assert!(status.success(), "cannot take {peer} down");

    let failed_over = wait_node(&lab, "n1", "the failover", |n| {
        uplink(n).is_some_and(|u| {
            u.active_member == other
                && u.members
                    .iter()
                    .any(|m| m.name == active_before && !m.link_up)
        })
    });
    let failover_seen_at = Instant::now();
    eprintln!(
        "n1 uplink after {peer} went down: {:?}",
        uplink(&failed_over)
    );
    // The failover must land inside the run, or the receipts below say nothing.
    // (A once service-host task goes from `pending` straight to `completed`:
    // its nodes get it through desired state, which marks nothing running.)
    let mid_run = runtime.block_on(client.get_task(&task.name)).expect("task");
    assert!(
        mid_run.status == "pending" || mid_run.status == "running",
        "the run ended before the failover was reported: {mid_run:?}"
    );
    let after_failover = tx_packets(&node_ns, other);

    let deadline = Instant::now() + WAIT;
    let task = loop {
        let task = runtime.block_on(client.get_task(&task.name)).expect("task");
        if task.status == "completed" || task.status == "failed" {
            break task;
        }
        assert!(
            Instant::now() < deadline,
            "the run never finished: {task:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(task.status, "completed", "{task:?}");
    // Probes went out over the surviving member.
    assert!(
        tx_packets(&node_ns, other) > after_failover,
        "nothing left n1 over {other} after the failover"
    );

    let record = runtime
        .block_on(client.latest_result(&task.name))
        .expect("result");
    let document: ResultDocument =
        serde_json::from_value(record.document).expect("result document");
    let receiver = document
        .receivers
        .iter()
        .find(|r| r.point == "n2")
        .expect("n2's result");
    let metrics = receiver.metrics.as_ref().expect("n2's metrics");
    eprintln!(
        "bond failover mid-run: n2 received {}/{} probes, lost {} (loss ratio {:?})",
        metrics.packets_received, metrics.packets_sent, metrics.packets_lost, metrics.loss_ratio
    );
    assert!(metrics.packets_sent >= RATE_PPS * DURATION_SECONDS / 2);
    let got = receipts(receiver.receipts.as_ref().expect("n2's receipts"));
    assert_eq!(got.len() as u64, metrics.packets_sent);
    // Probe s leaves s / RATE_PPS after the run starts, which is after
    // `created_at`: every probe from `first_after` on was sent after the
    // capabilities showed the failover. With a broken failover (traffic
    // still pinned to the dead link) none of them arrives.
    let first_after =
        ((failover_seen_at - created_at).as_secs_f64() * RATE_PPS as f64).ceil() as usize;
    assert!(
        first_after < got.len(),
        "the failover was reported only after the run's last probe ({first_after} >= {})",
        got.len()
    );
    let after = &got[first_after..];
    let received_after = after.iter().filter(|r| **r).count();
    eprintln!(
        "probes sent after the failover was reported: {received_after}/{} received",
        after.len()
    );
    assert!(
        received_after > 0,
        "no probe sent after the failover arrived"
    );
    let last_second = &got[got.len().saturating_sub(RATE_PPS as usize)..];
    assert!(
        last_second.iter().any(|r| *r),
        "receipts stopped before the run's last second"
    );
}
