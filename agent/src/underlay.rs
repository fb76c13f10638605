//! The check of `--tunnel-ip` against the node's own interfaces: the
//! address must be configured here (with the userspace datapath, on an OVS
//! bridge's internal port such as `br-phy`), and its interface must carry a
//! guest's full frame plus VXLAN's 50 bytes. A shortfall is not fatal: the
//! guests the agent creates get an MTU 50 bytes below the underlay's
//! ([`guest_mtu`]), so their full-size frames still fit in the tunnels
//! instead of being dropped silently. The choice is logged, which also
//! reaches the controller's node log.

use std::net::Ipv4Addr;

/// What VXLAN over IPv4 adds to an Ethernet frame: outer IPv4 (20), UDP
/// (8), VXLAN (8) and the inner Ethernet header (14).
pub const VXLAN_OVERHEAD: u32 = 50;
/// The guests' MTU where the underlay carries it (Linux's default, which
/// namespace guests and the appliances have unless told otherwise).
pub const GUEST_MTU: u32 = 1500;
/// The guest MTUs `--guest-mtu` accepts: IPv4's minimum datagram size up to
/// the common jumbo frame.
pub const GUEST_MTU_RANGE: std::ops::RangeInclusive<u32> = 576..=9000;

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

/// The MTU the guests get, and why: `explicit` (`--guest-mtu`) when given;
/// else, on an underlay too small for full frames, its MTU less
/// [`VXLAN_OVERHEAD`] (never below the range's minimum); else [`GUEST_MTU`].
/// `underlay`: the check of `--tunnel-ip`, `None` without one.
pub fn guest_mtu(explicit: Option<u32>, underlay: Option<&UnderlayCheck>) -> (u32, &'static str) {
    match (explicit, underlay) {
        (Some(mtu), _) => (mtu, "set by --guest-mtu"),
        (None, Some(UnderlayCheck::MtuTooSmall { mtu, .. })) => (
            mtu.saturating_sub(VXLAN_OVERHEAD)
                .max(*GUEST_MTU_RANGE.start()),
            "the underlay MTU less VXLAN's 50 bytes, so full guest frames fit in the tunnels",
        ),
        (None, Some(UnderlayCheck::Fits { .. })) => (
            GUEST_MTU,
            "the underlay carries full frames plus VXLAN's 50 bytes",
        ),
        (None, Some(UnderlayCheck::Missing)) => (
            GUEST_MTU,
            "the default: the tunnel address is not configured here, so its MTU is unknown",
        ),
        (None, None) => (GUEST_MTU, "the default: no --tunnel-ip, no VXLAN tunnels"),
    }
}

/// Choose the guests' MTU ([`guest_mtu`]) and log it, with a warning when
/// the tunnels still cannot carry the guests' full frames.
pub fn choose_guest_mtu_and_log(explicit: Option<u32>, underlay: Option<&UnderlayCheck>) -> u32 {
    let (chosen, why) = guest_mtu(explicit, underlay);
    tracing::info!(guest_mtu = chosen, "guests' MTU: {why}");
    if let Some(
        UnderlayCheck::Fits { interface, mtu } | UnderlayCheck::MtuTooSmall { interface, mtu },
    ) = underlay
    {
        if chosen + VXLAN_OVERHEAD > *mtu {
            tracing::warn!(
                %interface, underlay_mtu = mtu, guest_mtu = chosen,
                "guests' full-size frames will be dropped in the VXLAN tunnels: the underlay needs {} or more, or --guest-mtu {} or less",
                chosen + VXLAN_OVERHEAD,
                mtu.saturating_sub(VXLAN_OVERHEAD)
            );
        }
    }
    chosen
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
        UnderlayCheck::MtuTooSmall { interface, mtu } => tracing::info!(
            %ip, %interface, mtu,
            "tunnel endpoint found; its MTU is below {}, so 1500-byte guest frames do not fit in VXLAN (unless --guest-mtu is given, guests get the underlay MTU less 50)",
            GUEST_MTU + VXLAN_OVERHEAD
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

    #[test]
    fn guests_get_the_underlay_mtu_less_vxlan_unless_told() {
        let fits = UnderlayCheck::Fits {
            interface: "br-phy".into(),
            mtu: 1550,
        };
        let small = UnderlayCheck::MtuTooSmall {
            interface: "br-phy".into(),
            mtu: 1500,
        };
        let tiny = UnderlayCheck::MtuTooSmall {
            interface: "br-phy".into(),
            mtu: 600,
        };
        let mtu = |explicit, check| guest_mtu(explicit, check).0;
        assert_eq!(mtu(None, Some(&fits)), 1500);
        assert_eq!(mtu(None, Some(&small)), 1450);
        assert_eq!(mtu(None, Some(&UnderlayCheck::Missing)), 1500);
        assert_eq!(mtu(None, None), 1500);
        // Below IPv4's minimum no guest works; the floor keeps them usable.
        assert_eq!(mtu(None, Some(&tiny)), 576);
        // The operator's value wins either way.
        assert_eq!(mtu(Some(1400), Some(&small)), 1400);
        assert_eq!(mtu(Some(9000), Some(&fits)), 9000);
        assert_eq!(mtu(Some(1400), None), 1400);
    }
}
