//! Uplink bonding through the agent's driver: two bridges (this node and a
//! peer switch, each reconciled by its own owner) joined by a bond of two veth
//! pairs. Taking a member down, either one, does not stop traffic between the
//! VMs behind them. Needs root and openvswitch-switch.

mod ovs_common;

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use measurelab_agent::ovs::{BondMode, BondSpec, UplinkSpec};
use measurelab_testbed::{plug_veth, Netns, OvsSandbox};
use ovs_common::*;

/// `bond/show` text for one member: "member NAME: enabled|disabled" ... "active member".
fn member_state(ovs: &OvsSandbox, bond: &str, member: &str) -> Result<String> {
    let show = ovs.appctl(&["bond/show", bond])?;
    let marker = format!("member {member}: ");
    let Some(start) = show.find(&marker) else {
        bail!("{member} not in bond/show {bond}:\n{show}");
    };
    let rest = &show[start + marker.len()..];
    Ok(rest.lines().next().unwrap_or_default().trim().to_string())
}

fn wait_member(ovs: &OvsSandbox, bond: &str, member: &str, state: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = member_state(ovs, bond, member)?;
        if now == state {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("bond {bond} member {member} is {now:?}, expected {state:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Ping for ~4 s, taking `member` down after ~1 s; returns (sent, received).
fn ping_through_failure(
    ovs: &OvsSandbox,
    from: &Netns,
    to: &str,
    member: &str,
) -> Result<(u32, u32)> {
    let pinger = from
        .command("ping")
        .args(["-c", "40", "-i", "0.1", "-W", "1", to])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(1000));
    ovs.netns().run(&["ip", "link", "set", member, "down"])?;
    let out = pinger.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_default()
        .to_string();
    let numbers: Vec<u32> = summary
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    match numbers.as_slice() {
        [sent, received, ..] => Ok((*sent, *received)),
        _ => bail!("cannot parse ping summary: {text}"),
    }
}

async fn bond_survives_member_failure(mode: BondMode, lacp: bool, tag: &str) -> Result<()> {
    let pid = std::process::id();
    let ovs = OvsSandbox::start(&format!("agent-{tag}"))?;
    let x = Netns::new(&format!("{tag}-x-{pid}"))?;
    let y = Netns::new(&format!("{tag}-y-{pid}"))?;
    let (a0, a1, b0, b1) = (
        format!("{tag}a0"),
        format!("{tag}a1"),
        format!("{tag}b0"),
        format!("{tag}b1"),
    );
    ovs.veth_pair(&a0, &b0)?;
    ovs.veth_pair(&a1, &b1)?;
    plug_veth(&ovs, &format!("{tag}x"), &x, "eth0", "10.200.50.1/24")?;
    plug_veth(&ovs, &format!("{tag}y"), &y, "eth0", "10.200.50.2/24")?;

    let bond = Some(BondSpec { mode, lacp });
    let mut node = switch_spec(
        &format!("node-{tag}-{pid}"),
        &format!("br-{tag}a"),
        vec![vm(&format!("{tag}x"), 10)],
    );
    node.uplink = Some(UplinkSpec {
        name: format!("{tag}bonda"),
        members: vec![a0.clone(), a1.clone()],
        bond,
    });
    let mut peer = switch_spec(
        &format!("peer-{tag}-{pid}"),
        &format!("br-{tag}b"),
        vec![vm(&format!("{tag}y"), 10)],
    );
    peer.uplink = Some(UplinkSpec {
        name: format!("{tag}bondb"),
        members: vec![b0.clone(), b1.clone()],
        bond,
    });
    let switch = driver(&ovs).await?;
    apply(&switch, &node).await?;
    apply(&switch, &peer).await?;
    assert!(apply(&switch, &node).await?.actions.is_empty());
    assert_eq!(
        ovs.vsctl(&["get", "Port", &format!("{tag}bonda"), "bond_mode"])?,
        mode.as_str()
    );
    let bond_a = format!("{tag}bonda");
    wait_member(&ovs, &bond_a, &a0, "enabled")?;
    wait_member(&ovs, &bond_a, &a1, "enabled")?;
    if lacp {
        let lacp_show = ovs.appctl(&["lacp/show", &bond_a])?;
        assert!(
            lacp_show.contains("negotiated"),
            "LACP did not negotiate:\n{lacp_show}"
        );
    }
    wait_ping(&x, "10.200.50.2", Duration::from_secs(15))?;

    for (down, other) in [(&a0, &a1), (&a1, &a0)] {
        let (sent, received) = ping_through_failure(&ovs, &x, "10.200.50.2", down)?;
        eprintln!(
            "{} lacp={lacp}: {down} down mid-run: {received}/{sent} pings answered",
            mode.as_str()
        );
        wait_member(&ovs, &bond_a, down, "disabled")?;
        assert!(
            sent >= 30 && received + 5 >= sent,
            "bond lost too much traffic: {received}/{sent}"
        );
        assert!(pings(&x, "10.200.50.2"), "no traffic over {other} alone");
        ovs.netns()
            .run(&["ip", "link", "set", down.as_str(), "up"])?;
        wait_member(&ovs, &bond_a, down, "enabled")?;
        wait_ping(&x, "10.200.50.2", Duration::from_secs(15))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn active_backup_bond_fails_over() -> Result<()> {
    bond_survives_member_failure(BondMode::ActiveBackup, false, "ab").await
}

#[tokio::test(flavor = "multi_thread")]
async fn balance_slb_bond_with_lacp_fails_over() -> Result<()> {
    bond_survives_member_failure(BondMode::BalanceSlb, true, "slb").await
}
