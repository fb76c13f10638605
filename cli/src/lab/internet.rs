//! The lab's public network: a stand-in for the internet, where nodes have
//! the public addresses researchers' WireGuard peers reach their platform
//! gateways at, and where test "laptops" live.
//!
//! - `<name>-inet`: a namespace with bridge `br-inet` at 198.51.100.1/24
//!   (TEST-NET-2, RFC 5737: never routed for real).
//! - Node K: `inet0` at 198.51.100.(10+K)/24, the other end
//!   `<name>-nK-in` on `br-inet`; its agent gets
//!   `--public-address 198.51.100.(10+K)`. Same for both topologies: the
//!   public network is neither the lab switch nor the routed underlay.
//! - `lab laptop --index I`: namespace `<name>-lapI` whose only link is
//!   `eth0` at 198.51.100.(100+I)/24 on `br-inet`: a researcher's machine
//!   that reaches the nodes' public addresses and nothing else of the lab.

use super::sys::{ip_in, link_exists, netns_ensure, tx_offload_off, veth_add};

/// The public network's bridge, in `<name>-inet`.
const BRIDGE: &str = "br-inet";
const PREFIX: &str = "198.51.100";

/// Node K's public address.
pub(super) fn node_public_ip(k: u32) -> String {
    format!("{PREFIX}.{}", 10 + k)
}

/// Laptop I's address.
pub(super) fn laptop_ip(i: u32) -> String {
    format!("{PREFIX}.{}", 100 + i)
}

/// The internet namespace `ns` and its bridge.
pub(super) fn ensure_internet(ns: &str) -> anyhow::Result<()> {
    netns_ensure(ns)?;
    ip_in(ns, &["link", "set", "lo", "up"])?;
    if !link_exists(Some(ns), BRIDGE) {
        ip_in(ns, &["link", "add", BRIDGE, "type", "bridge"])?;
        ip_in(
            ns,
            &["addr", "add", &format!("{PREFIX}.1/24"), "dev", BRIDGE],
        )?;
    }
    ip_in(ns, &["link", "set", BRIDGE, "up"])?;
    Ok(())
}

/// A link `inner` with `cidr` in namespace `ns`, its other end `outer` on
/// the internet bridge.
pub(super) fn ensure_attached(
    inet_ns: &str,
    outer: &str,
    ns: &str,
    inner: &str,
    cidr: &str,
) -> anyhow::Result<()> {
    if !link_exists(Some(ns), inner) {
        if link_exists(Some(inet_ns), outer) {
            ip_in(inet_ns, &["link", "del", outer])?;
        }
        veth_add(Some(inet_ns), outer, inner, Some(ns))?;
        tx_offload_off(Some(inet_ns), outer)?;
        tx_offload_off(Some(ns), inner)?;
        ip_in(ns, &["addr", "add", cidr, "dev", inner])?;
    }
    ip_in(inet_ns, &["link", "set", outer, "master", BRIDGE, "up"])?;
    ip_in(ns, &["link", "set", inner, "up"])?;
    Ok(())
}

/// The agent flag that publishes node K's public address.
pub(super) fn agent_args(k: u32) -> Vec<String> {
    vec!["--public-address".into(), node_public_ip(k)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_and_laptops_get_distinct_test_net_addresses() {
        assert_eq!(agent_args(3), ["--public-address", "198.51.100.13"]);
        assert_eq!(laptop_ip(1), "198.51.100.101");
    }
}
