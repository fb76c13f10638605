//! Uplink bonding through the agent's driver: the node's bridge reaches a peer
//! switch over a bond of two veth pairs, and taking a member down, either one,
//! does not stop traffic between the VMs behind them. Needs root and
//! openvswitch-switch.
//!
//! Two peers, because a bond without LACP assumes an ordinary switch on the
//! other side: OVS drops what arrives on a backup member (active-backup) or
//! broadcasts on a non-designated one (balance-slb), so two such bonds back to
//! back only work when they happen to pick matching members. Without LACP the
//! peer is therefore a plain switch with two ordinary ports; with LACP it
//! is a second OVS bridge with its own bond, reconciled by its own owner.

mod ovs_common;

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use measurelab_agent::ovs::uplink_status::{self, UplinkStatus};
use measurelab_agent::ovs::{BondMode, BondSpec, UplinkSpec};
use measurelab_testbed::{attach_veth, plug_veth, Netns, OvsSandbox};
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

/// Poll the switch status the agent reports until `ready` holds for the
/// uplink (10 s at most); returns that uplink.
async fn wait_status(
    switch: &measurelab_agent::ovs::OvsdbSwitch,
    owner: &str,
    bridge: &str,
    what: &str,
    ready: impl Fn(&UplinkStatus) -> bool,
) -> Result<UplinkStatus> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = uplink_status::read(switch.client(), owner, bridge).await?;
        assert_eq!(status.datapath.as_deref(), Some("netdev"));
        match status.uplink {
            Some(uplink) if ready(&uplink) => return Ok(uplink),
            other if Instant::now() > deadline => {
                bail!("uplink status never showed {what}: {other:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Ping for ~4 s, taking `member` down after ~1 s; returns (sent, received).
fn ping_through_failure(
    ovs: &OvsSandbox,
    from: &Netns,
    to: &str,
    member: &str,
) -> Result<(u32, u32)> {
    use std::io::{BufRead, BufReader, Read};
    // The member goes down mid-run: after the first quarter of the pings
    // has been answered through the healthy bond.
    const ANSWERED_BEFORE_FAILURE: usize = 10;
    let mut pinger = from
        .command("ping")
        .args(["-c", "40", "-i", "0.1", "-W", "1", to])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut stdout = BufReader::new(pinger.stdout.take().context("ping stdout")?);
    let mut text = String::new();
    let mut answered = 0;
    while answered < ANSWERED_BEFORE_FAILURE {
        let before = text.len();
        if stdout.read_line(&mut text)? == 0 {
            bail!("ping ended before {member} was taken down:\n{text}");
        }
        if text[before..].contains("bytes from") {
            answered += 1;
        }
    }
    ovs.netns().run(&["ip", "link", "set", member, "down"])?;
    stdout.read_to_string(&mut text)?;
    pinger.wait()?;
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

/// The far end of the node's uplink.
enum Peer {
    /// An ordinary VLAN-trunk switch with both links as separate ports and no
    /// bonding (an OVS bridge in normal mode, like the lab switch). The
    /// kernel here has no 802.1Q or bridge VLAN filtering, so a Linux bridge
    /// cannot play this part.
    PlainSwitch,
    /// Another OVS bridge with a bond of its own, configured by the driver.
    OvsBond(BondSpec),
}

async fn bond_survives_member_failure(node_bond: BondSpec, peer: Peer, tag: &str) -> Result<()> {
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

    let switch = driver(&ovs).await?;
    let bond_a = format!("{tag}bonda");
    let (node_owner, node_bridge) = (format!("node-{tag}-{pid}"), format!("br-{tag}a"));
    let mut node = switch_spec(&node_owner, &node_bridge, vec![vm(&format!("{tag}x"), 10)]);
    node.uplink = Some(UplinkSpec {
        name: bond_a.clone(),
        members: vec![a0.clone(), a1.clone()],
        bond: Some(node_bond),
    });
    apply(&switch, &node).await?;
    assert!(apply(&switch, &node).await?.actions.is_empty());
    assert_eq!(
        ovs.vsctl(&["get", "Port", &bond_a, "bond_mode"])?,
        node_bond.mode.as_str()
    );

    let mut peer_spec = None;
    match &peer {
        Peer::PlainSwitch => {
            // Test infrastructure, like the lab switch: set up with ovs-vsctl,
            // not by the driver under test.
            let bridge = format!("br-{tag}b");
            ovs.add_bridge(&bridge)?;
            for member in [&b0, &b1] {
                ovs.vsctl(&["add-port", &bridge, member])?;
            }
            attach_veth(
                &ovs,
                &bridge,
                &format!("{tag}y"),
                &y,
                "eth0",
                "10.200.50.2/24",
                Some(10),
            )?;
        }
        Peer::OvsBond(peer_bond) => {
            plug_veth(&ovs, &format!("{tag}y"), &y, "eth0", "10.200.50.2/24")?;
            let mut spec = switch_spec(
                &format!("peer-{tag}-{pid}"),
                &format!("br-{tag}b"),
                vec![vm(&format!("{tag}y"), 10)],
            );
            spec.uplink = Some(UplinkSpec {
                name: format!("{tag}bondb"),
                members: vec![b0.clone(), b1.clone()],
                bond: Some(*peer_bond),
            });
            apply(&switch, &spec).await?;
            peer_spec = Some(spec);
        }
    }
    wait_member(&ovs, &bond_a, &a0, "enabled")?;
    wait_member(&ovs, &bond_a, &a1, "enabled")?;
    if node_bond.lacp {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ovs
            .appctl(&["lacp/show", &bond_a])?
            .contains("status: active negotiated")
        {
            if Instant::now() > deadline {
                bail!(
                    "LACP did not negotiate:\n{}",
                    ovs.appctl(&["lacp/show", &bond_a])?
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    wait_ping(&x, "10.200.50.2", Duration::from_secs(15))?;
    let healthy = wait_status(&switch, &node_owner, &node_bridge, "both members up", |u| {
        u.members.iter().all(|m| m.link_up) && u.active_member.is_some()
    })
    .await?;
    assert_eq!(healthy.name, bond_a);
    let mode = if node_bond.lacp {
        "lacp"
    } else {
        node_bond.mode.as_str()
    };
    assert_eq!(healthy.mode, mode);
    let names: Vec<&str> = healthy.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, [a0.as_str(), a1.as_str()]);

    for (down, other) in [(&a0, &a1), (&a1, &a0)] {
        let (sent, received) = ping_through_failure(&ovs, &x, "10.200.50.2", down)?;
        eprintln!(
            "{} lacp={}: {down} down mid-run: {received}/{sent} pings answered",
            node_bond.mode.as_str(),
            node_bond.lacp
        );
        wait_member(&ovs, &bond_a, down, "disabled")?;
        // What capabilities report: the member's link is down and the
        // other one carries the traffic.
        let failed = wait_status(&switch, &node_owner, &node_bridge, "failover", |u| {
            u.active_member.as_ref() == Some(other)
                && u.members.iter().any(|m| &m.name == down && !m.link_up)
        })
        .await?;
        assert!(failed.members.iter().any(|m| &m.name == other && m.link_up));
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

    // Changing the bond replaces the port whole, in one transaction, under the
    // same name: no duplicate, and traffic flows over the new bond.
    if let Some(mut peer_spec) = peer_spec {
        let other = BondSpec {
            mode: match node_bond.mode {
                BondMode::ActiveBackup => BondMode::BalanceSlb,
                BondMode::BalanceSlb => BondMode::ActiveBackup,
            },
            lacp: true,
        };
        for spec in [&mut node, &mut peer_spec] {
            if let Some(uplink) = spec.uplink.as_mut() {
                uplink.bond = Some(other);
            }
            apply(&switch, spec).await?;
        }
        assert_eq!(
            ovs.vsctl(&["get", "Port", &bond_a, "bond_mode"])?,
            other.mode.as_str()
        );
        assert_eq!(port_rows(&ovs, &bond_a)?, 1);
        assert_eq!(
            rows(&ovs, "Interface")?,
            2 + 2 + 2 + 2,
            "members duplicated or leaked"
        );
        if let Err(err) = wait_ping(&x, "10.200.50.2", Duration::from_secs(15)) {
            bail!(
                "after switching to {}: {err}\n{}\n{}",
                other.mode.as_str(),
                ovs.appctl(&["bond/show"])?,
                ovs.appctl(&["lacp/show"])?
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn active_backup_bond_to_a_plain_switch_fails_over() -> Result<()> {
    let bond = BondSpec {
        mode: BondMode::ActiveBackup,
        lacp: false,
    };
    bond_survives_member_failure(bond, Peer::PlainSwitch, "ab").await
}

#[tokio::test(flavor = "multi_thread")]
async fn balance_slb_bond_to_a_plain_switch_fails_over() -> Result<()> {
    let bond = BondSpec {
        mode: BondMode::BalanceSlb,
        lacp: false,
    };
    bond_survives_member_failure(bond, Peer::PlainSwitch, "sl").await
}

#[tokio::test(flavor = "multi_thread")]
async fn lacp_bond_between_two_ovs_fails_over_and_changes_mode() -> Result<()> {
    let bond = BondSpec {
        mode: BondMode::BalanceSlb,
        lacp: true,
    };
    bond_survives_member_failure(bond, Peer::OvsBond(bond), "lc").await
}
