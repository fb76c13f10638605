//! Real packets through a private userspace OVS. Needs root and openvswitch-switch.

use anyhow::Result;
use measurelab_testbed::{attach_veth, Netns, OvsSandbox};

fn pings(from: &Netns, to_ip: &str) -> bool {
    from.command("ping")
        .args(["-c", "2", "-i", "0.2", "-W", "1", to_ip])
        .output()
        .map(|out| out.status.success())
        .unwrap_or(false)
}

#[test]
fn two_namespaces_on_one_bridge_ping_each_other() -> Result<()> {
    let pid = std::process::id();
    let ovs = OvsSandbox::start("tb-ping")?;
    ovs.add_bridge("br-tbping")?;
    let a = Netns::new(&format!("tb-ping-a-{pid}"))?;
    let b = Netns::new(&format!("tb-ping-b-{pid}"))?;
    attach_veth(&ovs, "br-tbping", "tbpa", &a, "eth0", "10.200.1.1/24", None)?;
    attach_veth(&ovs, "br-tbping", "tbpb", &b, "eth0", "10.200.1.2/24", None)?;
    assert!(
        pings(&a, "10.200.1.2"),
        "a cannot ping b on the same bridge"
    );
    assert!(
        pings(&b, "10.200.1.1"),
        "b cannot ping a on the same bridge"
    );
    Ok(())
}

#[test]
fn ports_with_different_vlan_tags_are_isolated() -> Result<()> {
    let pid = std::process::id();
    let ovs = OvsSandbox::start("tb-vlan")?;
    ovs.add_bridge("br-tbvlan")?;
    let a = Netns::new(&format!("tb-vlan-a-{pid}"))?;
    let b = Netns::new(&format!("tb-vlan-b-{pid}"))?;
    let c = Netns::new(&format!("tb-vlan-c-{pid}"))?;
    attach_veth(
        &ovs,
        "br-tbvlan",
        "tbva",
        &a,
        "eth0",
        "10.200.2.1/24",
        Some(10),
    )?;
    attach_veth(
        &ovs,
        "br-tbvlan",
        "tbvb",
        &b,
        "eth0",
        "10.200.2.2/24",
        Some(20),
    )?;
    attach_veth(
        &ovs,
        "br-tbvlan",
        "tbvc",
        &c,
        "eth0",
        "10.200.2.3/24",
        Some(10),
    )?;
    assert_eq!(ovs.vsctl(&["get", "Port", "tbvb", "tag"])?, "20");
    // Same tag reaches, so the failure below is the VLAN and not a broken setup.
    assert!(
        pings(&a, "10.200.2.3"),
        "same-VLAN ports cannot reach each other"
    );
    assert!(!pings(&a, "10.200.2.2"), "VLAN 10 reached VLAN 20");
    assert!(!pings(&b, "10.200.2.3"), "VLAN 20 reached VLAN 10");
    Ok(())
}

#[test]
fn drop_removes_daemons_namespace_and_run_dir() -> Result<()> {
    let ovs = OvsSandbox::start("tb-drop")?;
    ovs.add_bridge("br-tbdrop")?;
    let dir = ovs.dir().to_path_buf();
    let netns = ovs.netns().name().to_string();
    let pid = std::fs::read_to_string(dir.join("ovs-vswitchd.pid"))?
        .trim()
        .to_string();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(ovs);
    assert!(!dir.exists(), "run dir {} survived", dir.display());
    assert!(
        !std::path::Path::new("/run/netns").join(&netns).exists(),
        "netns {netns} survived"
    );
    // The pid is our reaped child, so it must be gone (reuse within a test is
    // vanishingly unlikely).
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    Ok(())
}

fn links(ns: &Netns) -> Result<String> {
    ns.run(&["ip", "-o", "link", "show"])
}

/// The userspace datapath's persistent taps (`ovs-netdev`, one per bridge)
/// go away with the switch, not just with its namespace: drop stops
/// ovs-vswitchd with `exit --cleanup`. A SIGKILLed vswitchd shows that the
/// check can fail: its taps stay behind.
#[test]
fn stopping_the_switch_removes_its_datapath_taps() -> Result<()> {
    let ovs = OvsSandbox::start("tb-clean")?;
    ovs.add_bridge("br-tbclean")?;
    let before = links(ovs.netns())?;
    assert!(before.contains("ovs-netdev"), "{before}");
    assert!(before.contains("br-tbclean"), "{before}");
    ovs.stop_switch();
    let after = links(ovs.netns())?;
    assert!(!after.contains("ovs-netdev"), "ovs-netdev left: {after}");
    assert!(!after.contains("br-tbclean"), "bridge tap left: {after}");

    let killed = OvsSandbox::start("tb-kill")?;
    killed.add_bridge("br-tbkill")?;
    let pid = std::fs::read_to_string(killed.dir().join("ovs-vswitchd.pid"))?;
    let status = std::process::Command::new("kill")
        .args(["-KILL", pid.trim()])
        .status()?;
    assert!(status.success());
    // Dead once it is gone or a zombie (the sandbox, its parent, reaps it
    // only on drop); its file descriptors, and so its taps, are closed then.
    let stat = format!("/proc/{}/stat", pid.trim());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_to_string(&stat).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or_default()
            .trim_start()
            .starts_with('Z')
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "ovs-vswitchd {} survived SIGKILL",
            pid.trim()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let leftover = links(killed.netns())?;
    assert!(
        leftover.contains("ovs-netdev"),
        "a killed vswitchd left no tap, so the check above proves nothing: {leftover}"
    );
    Ok(())
}

#[test]
fn two_sandboxes_run_side_by_side() -> Result<()> {
    let first = OvsSandbox::start("tb-two")?;
    let second = OvsSandbox::start("tb-two")?;
    first.add_bridge("br-tbtwo")?;
    second.add_bridge("br-tbtwo")?;
    for ovs in [&first, &second] {
        let ports = ovs.ofctl(&["show", "br-tbtwo"])?;
        assert!(ports.contains("LOCAL(br-tbtwo)"), "{ports}");
    }
    Ok(())
}
