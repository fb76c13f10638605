//! The check of `--tunnel-ip` against the node's own interfaces: the
//! address must be configured here (with the userspace datapath, on an OVS
//! bridge's internal port such as `br-phy`), and its interface must carry a
//! guest's full frame plus VXLAN's 50 bytes. A shortfall is not fatal (the
//! operator may fix the host while the agent runs) but drops full-size
//! frames silently, so it is logged as a warning, which also reaches the
//! controller's node log.

use std::net::Ipv4Addr;

/// What VXLAN over IPv4 adds to an Ethernet frame: outer IPv4 (20), UDP
/// (8), VXLAN (8) and the inner Ethernet header (14).
pub const VXLAN_OVERHEAD: u32 = 50;
/// The guests' MTU (namespace guests and the appliances keep Linux's 1500).
pub const GUEST_MTU: u32 = 1500;

/// How the tunnel address looks on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnderlayCheck {
    /// On `interface`, whose MTU carries full guest frames.
    Fits {
        /// The interface holding the address.
        interface: String,
        /// Its MTU.
        mtu: u32,
    },
    /// On `interface`, but its MTU is below [`GUEST_MTU`] + [`VXLAN_OVERHEAD`].
    MtuTooSmall {
        /// The interface holding the address.
        interface: String,
        /// Its MTU.
        mtu: u32,
    },
    /// No interface in this namespace holds the address.
    Missing,
}

/// The interface holding `ip` in `ip -o -4 addr show` output
/// (`2: br-phy    inet 10.60.1.2/24 brd ... scope global br-phy ...`).
pub fn interface_of(ip_output: &str, ip: Ipv4Addr) -> Option<String> {
    let wanted = ip.to_string();
    ip_output.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let name = fields.nth(1)?;
        let (family, cidr) = (fields.next()?, fields.next()?);
        (family == "inet" && cidr.split('/').next() == Some(wanted.as_str()))
            .then(|| name.split('@').next().unwrap_or(name).to_string())
    })
}

/// Judge an interface's MTU.
pub fn judge(interface: Option<(String, u32)>) -> UnderlayCheck {
    match interface {
        None => UnderlayCheck::Missing,
        Some((interface, mtu)) if mtu < GUEST_MTU + VXLAN_OVERHEAD => {
            UnderlayCheck::MtuTooSmall { interface, mtu }
        }
        Some((interface, mtu)) => UnderlayCheck::Fits { interface, mtu },
    }
}

/// Look at this namespace's interfaces and log what the tunnels will meet.
pub fn check_and_log(ip: Ipv4Addr) -> UnderlayCheck {
    let interface = measurelab_hostnet::ip(&["-o", "-4", "addr", "show"])
        .ok()
        .and_then(|out| interface_of(&out, ip))
        .and_then(|name| {
            let mtu = std::fs::read_to_string(format!("/sys/class/net/{name}/mtu")).ok()?;
            Some((name, mtu.trim().parse().ok()?))
        });
    let check = judge(interface);
    match &check {
        UnderlayCheck::Fits { interface, mtu } => {
            tracing::info!(%ip, %interface, mtu, "tunnel endpoint found")
        }
        UnderlayCheck::MtuTooSmall { interface, mtu } => tracing::warn!(
            %ip, %interface, mtu,
            "the underlay MTU is below {}: guests' full-size frames will be dropped in the VXLAN tunnels; raise it to {} or more, or give the guests an MTU of {}",
            GUEST_MTU + VXLAN_OVERHEAD,
            GUEST_MTU + VXLAN_OVERHEAD,
            mtu.saturating_sub(VXLAN_OVERHEAD)
        ),
        UnderlayCheck::Missing => tracing::warn!(
            %ip,
            "no interface here holds --tunnel-ip; tunnels will carry nothing until it is configured (with userspace OVS: on a netdev bridge such as br-phy that holds the NIC)"
        ),
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP_OUTPUT: &str = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
3: mgmt0@if2    inet 10.254.0.11/24 scope global mgmt0\\       valid_lft forever preferred_lft forever
5: br-phy    inet 10.60.1.2/24 scope global br-phy\\       valid_lft forever preferred_lft forever
";

    #[test]
    fn finds_the_interface_holding_the_address() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            interface_of(IP_OUTPUT, ip("10.60.1.2")).as_deref(),
            Some("br-phy")
        );
        assert_eq!(
            interface_of(IP_OUTPUT, ip("10.254.0.11")).as_deref(),
            Some("mgmt0")
        );
        // A prefix of another address is not a match.
        assert_eq!(interface_of(IP_OUTPUT, ip("10.60.1.20")), None);
    }

    #[test]
    fn full_frames_need_fifty_bytes_on_top() {
        assert_eq!(
            judge(Some(("br-phy".into(), 1550))),
            UnderlayCheck::Fits {
                interface: "br-phy".into(),
                mtu: 1550
            }
        );
        assert_eq!(
            judge(Some(("br-phy".into(), 1549))),
            UnderlayCheck::MtuTooSmall {
                interface: "br-phy".into(),
                mtu: 1549
            }
        );
        assert_eq!(judge(None), UnderlayCheck::Missing);
    }
}
