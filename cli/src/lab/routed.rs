//! `lab up --topology routed`: nodes at different sites, as the paper's
//! measurement nodes sit behind routers rather than on one switch.
//!
//! - `<name>-rt`: the router, a namespace with `ip_forward` on and one veth
//!   per node, `<name>-nK-up` at 10.60.K.1/24.
//! - Node K: `uplink0` is a port of `br-phy`, a netdev bridge of the node's
//!   own OVS that holds the node's underlay address 10.60.K.2/24 (default
//!   route via the router). The userspace datapath sends VXLAN only out of
//!   one of its own bridges, so the tunnel endpoint must live on one: this
//!   is the operator's part on a real host (OVS's "userspace tunneling"
//!   layout), done here by the lab.
//! - The agent gets `--tunnel-ip 10.60.K.2` and no `--uplink`: its
//!   platforms' VLANs and the service network reach the other nodes only
//!   through the per-platform VXLAN tunnels it builds on `br-int`.
//! - MTU: the underlay carries 1550 bytes, so the guests' 1500-byte frames
//!   fit with VXLAN's 50 bytes of headers and nothing is fragmented or
//!   silently dropped.
//!
//! The management network stays the shared `br-mgmt` bridge: it stands for
//! the operator's out-of-band network to the controller, and routing it too
//! would test nothing the data plane does not.

use std::path::Path;
use std::process::Command;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use super::sys::{command_in, ip_in, link_exists, netns_ensure, run, tx_offload_off, veth_add};

/// How the lab's nodes are joined.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(super) enum LabTopology {
    /// Every node trunked to one lab switch (one L2 segment).
    #[default]
    Switched,
    /// Every node in its own subnet behind a router; VXLAN between nodes.
    Routed,
}

/// The node bridge holding the underlay address.
pub(super) const UNDERLAY_BRIDGE: &str = "br-phy";
/// The underlay's MTU: a guest's 1500 plus VXLAN's 50 bytes.
pub(super) const UNDERLAY_MTU: u32 = 1550;

/// Node K's underlay address (its tunnel endpoint).
pub(super) fn node_underlay_ip(k: u32) -> String {
    format!("10.60.{k}.2")
}

/// The router's address in node K's subnet.
fn router_ip(k: u32) -> String {
    format!("10.60.{k}.1")
}

/// The router namespace `ns`, forwarding between the node subnets.
pub(super) fn ensure_router(ns: &str) -> anyhow::Result<()> {
    netns_ensure(ns)?;
    ip_in(ns, &["link", "set", "lo", "up"])?;
    run(command_in(Some(ns), "sysctl").args(["-qw", "net.ipv4.ip_forward=1"]))?;
    Ok(())
}

/// The veth between node K (`uplink0` in `node_ns`) and the router (`peer`
/// in `router_ns`), before the node's OVS runs.
pub(super) fn ensure_routed_link(
    node_ns: &str,
    router_ns: &str,
    peer: &str,
    k: u32,
) -> anyhow::Result<()> {
    let mtu = UNDERLAY_MTU.to_string();
    if !link_exists(Some(node_ns), "uplink0") {
        if link_exists(Some(router_ns), peer) {
            ip_in(router_ns, &["link", "del", peer])?;
        }
        veth_add(Some(router_ns), peer, "uplink0", Some(node_ns))?;
        tx_offload_off(Some(router_ns), peer)?;
        tx_offload_off(Some(node_ns), "uplink0")?;
        ip_in(
            router_ns,
            &["addr", "add", &format!("{}/24", router_ip(k)), "dev", peer],
        )?;
    }
    ip_in(router_ns, &["link", "set", peer, "mtu", &mtu, "up"])?;
    ip_in(node_ns, &["link", "set", "uplink0", "mtu", &mtu, "up"])?;
    Ok(())
}

/// `br-phy` with `uplink0` and node K's underlay address, once the node's
/// OVS (database socket `db_sock`) runs. ovs-vsctl waits until
/// ovs-vswitchd has made the bridge's tap, so `ip` finds it afterwards.
pub(super) fn ensure_underlay_bridge(node_ns: &str, db_sock: &Path, k: u32) -> anyhow::Result<()> {
    let mtu = format!("mtu_request={UNDERLAY_MTU}");
    run(Command::new("ovs-vsctl")
        .arg(format!("--db=unix:{}", db_sock.display()))
        .arg("--timeout=30")
        .args([
            "--may-exist",
            "add-br",
            UNDERLAY_BRIDGE,
            "--",
            "set",
            "bridge",
            UNDERLAY_BRIDGE,
            "datapath_type=netdev",
            "--",
            "set",
            "interface",
            UNDERLAY_BRIDGE,
            &mtu,
            "--",
            "--may-exist",
            "add-port",
            UNDERLAY_BRIDGE,
            "uplink0",
            "--",
            "set",
            "interface",
            "uplink0",
            &mtu,
        ]))?;
    let cidr = format!("{}/24", node_underlay_ip(k));
    let addresses = ip_in(node_ns, &["-o", "addr", "show", "dev", UNDERLAY_BRIDGE])?;
    if !addresses.contains(&format!(" {cidr} ")) {
        ip_in(node_ns, &["addr", "add", &cidr, "dev", UNDERLAY_BRIDGE])?;
    }
    ip_in(node_ns, &["link", "set", UNDERLAY_BRIDGE, "up"])?;
    // Only the other sites go via the router; mgmt0's /24 stays direct.
    ip_in(
        node_ns,
        &["route", "replace", "10.60.0.0/16", "via", &router_ip(k)],
    )?;
    Ok(())
}

/// The agent flags that join node K to its peers for `topology`.
pub(super) fn agent_args(
    topology: LabTopology,
    k: u32,
    uplinks: u32,
    bond_mode: &str,
) -> Vec<String> {
    match topology {
        LabTopology::Switched => super::uplinks::agent_args(uplinks, bond_mode),
        LabTopology::Routed => vec!["--tunnel-ip".into(), node_underlay_ip(k)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_routed_node_gets_its_own_tunnel_address_and_no_uplink() {
        assert_eq!(
            agent_args(LabTopology::Routed, 3, 1, "active-backup"),
            ["--tunnel-ip", "10.60.3.2"]
        );
        assert_eq!(
            agent_args(LabTopology::Switched, 3, 1, "active-backup"),
            ["--uplink", "uplink0"]
        );
    }
}
