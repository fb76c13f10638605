//! L2 isolation through the agent's driver: two virtual platforms on two VLANs
//! use the same multicast group and port, and each receiver sees only its own
//! platform's sender. Needs root and openvswitch-switch.

mod ovs_common;

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::Result;
use measurelab_testbed::{plug_veth, Netns, OvsSandbox};
use ovs_common::*;

#[tokio::test(flavor = "multi_thread")]
async fn vlans_isolate_the_same_multicast_group() -> Result<()> {
    let pid = std::process::id();
    let ovs = OvsSandbox::start("agent-iso")?;
    let ns = |role: &str| Netns::new(&format!("iso-{role}-{pid}"));
    let (s10, r10, s20, r20) = (ns("s10")?, ns("r10")?, ns("s20")?, ns("r20")?);
    // One subnet for both platforms: only the VLAN keeps them apart.
    let ip = |last: u8| Ipv4Addr::new(10, 200, 20, last);
    for (port, netns, last) in [
        ("isos10", &s10, 1),
        ("isor10", &r10, 11),
        ("isos20", &s20, 2),
        ("isor20", &r20, 12),
    ] {
        plug_veth(&ovs, port, netns, "eth0", &format!("{}/24", ip(last)))?;
        netns.run(&["ip", "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
    }
    let switch = driver(&ovs).await?;
    let spec = switch_spec(
        &format!("node-iso-{pid}"),
        "br-iso",
        vec![
            vm("isos10", 10),
            vm("isor10", 10),
            vm("isos20", 20),
            vm("isor20", 20),
        ],
    );
    apply(&switch, &spec).await?;
    wait_ping(&s10, &ip(11).to_string(), Duration::from_secs(10))?;
    wait_ping(&s20, &ip(12).to_string(), Duration::from_secs(10))?;

    let group = Ipv4Addr::new(239, 1, 2, 3);
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let listen = Duration::from_secs(4);
    let got10 = multicast_receiver(&r10, ip(11), group, 5100, listen, ready_tx.clone());
    let got20 = multicast_receiver(&r20, ip(12), group, 5100, listen, ready_tx);
    // Both joined; the bridge floods multicast (no snooping), so the joins
    // need nothing from the switch before the senders start.
    ready.recv()?;
    ready.recv()?;
    let sent10 = multicast_sender(&s10, ip(1), group, 5100, "vlan10", 50);
    let sent20 = multicast_sender(&s20, ip(2), group, 5100, "vlan20", 50);
    assert_eq!(sent10.join().unwrap()?, 50);
    assert_eq!(sent20.join().unwrap()?, 50);
    let got10 = got10.join().unwrap()?;
    let got20 = got20.join().unwrap()?;

    let count = |seen: &[(std::net::IpAddr, String)], label: &str| {
        seen.iter()
            .filter(|(_, payload)| payload.starts_with(label))
            .count()
    };
    eprintln!(
        "receiver vlan10: {} own, {} foreign; receiver vlan20: {} own, {} foreign",
        count(&got10, "vlan10-"),
        count(&got10, "vlan20-"),
        count(&got20, "vlan20-"),
        count(&got20, "vlan10-")
    );
    assert!(
        count(&got10, "vlan10-") >= 45,
        "VLAN 10 receiver missed its own group traffic: {got10:?}"
    );
    assert!(
        count(&got20, "vlan20-") >= 45,
        "VLAN 20 receiver missed its own group traffic: {got20:?}"
    );
    assert_eq!(
        count(&got10, "vlan20-"),
        0,
        "VLAN 20 traffic leaked into VLAN 10"
    );
    assert_eq!(
        count(&got20, "vlan10-"),
        0,
        "VLAN 10 traffic leaked into VLAN 20"
    );
    assert!(got10.iter().all(|(from, _)| *from == ip(1)));
    assert!(got20.iter().all(|(from, _)| *from == ip(2)));
    Ok(())
}
