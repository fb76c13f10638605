//! Per-VM bandwidth through the agent's driver: a linux-htb QoS on the
//! receiving VM's port caps TCP throughput into that VM; removing it restores
//! the line rate and leaves no QoS or Queue rows. Needs root, openvswitch-switch
//! and iperf3. Prints the measured rates.

mod ovs_common;

use anyhow::Result;
use measurelab_testbed::{plug_veth, Netns, OvsSandbox};
use ovs_common::*;

const POLICY_BPS: u64 = 20_000_000;

#[tokio::test(flavor = "multi_thread")]
async fn htb_policy_caps_throughput_into_the_vm_and_removal_restores_it() -> Result<()> {
    let pid = std::process::id();
    let ovs = OvsSandbox::start("agent-qos")?;
    let sender = Netns::new(&format!("qos-snd-{pid}"))?;
    let receiver = Netns::new(&format!("qos-rcv-{pid}"))?;
    plug_veth(&ovs, "qossnd", &sender, "eth0", "10.200.31.1/24")?;
    plug_veth(&ovs, "qosrcv", &receiver, "eth0", "10.200.31.2/24")?;
    let switch = driver(&ovs).await?;
    let owner = format!("node-qos-{pid}");

    let mut spec = switch_spec(
        &owner,
        "br-qos",
        vec![vm("qossnd", 10), vm_with_rate("qosrcv", 10, POLICY_BPS)],
    );
    apply(&switch, &spec).await?;
    assert_eq!(
        ovs.vsctl(&[
            "get",
            "QoS",
            &ovs.vsctl(&["get", "Port", "qosrcv", "qos"])?,
            "type"
        ])?,
        "linux-htb"
    );
    wait_ping(&sender, "10.200.31.2", std::time::Duration::from_secs(10))?;

    let capped = iperf3_received_bps(&receiver, "10.200.31.2", &sender, 5)?;
    eprintln!(
        "with a {} Mbit/s linux-htb policy: {:.1} Mbit/s",
        POLICY_BPS / 1_000_000,
        capped / 1e6
    );
    let policy = POLICY_BPS as f64;
    assert!(
        (policy * 0.9..=policy * 1.1).contains(&capped),
        "throughput {:.1} Mbit/s is not within 10 % of the {} Mbit/s policy",
        capped / 1e6,
        POLICY_BPS / 1_000_000
    );

    spec.ports[1].qos = None;
    apply(&switch, &spec).await?;
    assert_eq!(ovs.vsctl(&["get", "Port", "qosrcv", "qos"])?, "[]");
    assert_eq!(rows(&ovs, "QoS")?, 0, "QoS row left behind");
    assert_eq!(rows(&ovs, "Queue")?, 0, "Queue row left behind");
    wait_htb(&ovs, "qosrcv", false, std::time::Duration::from_secs(10))?;
    let line = iperf3_received_bps(&receiver, "10.200.31.2", &sender, 5)?;
    eprintln!("without a policy: {:.1} Mbit/s", line / 1e6);
    assert!(
        line > 3.0 * policy,
        "line rate {:.1} Mbit/s not restored",
        line / 1e6
    );
    Ok(())
}
