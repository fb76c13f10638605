//! The desired state of one node's switch, as the agent derives it from the
//! controller, with validation that names the offending field.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};

use super::error::OvsError;

/// Linux limits interface names to 15 bytes.
pub const MAX_IFNAME_LEN: usize = 15;

/// Everything the agent wants on its integration bridge.
#[derive(Debug, Clone, PartialEq)]
pub struct SwitchSpec {
    /// Value of `external_ids:measurelab-owner` on every row we create; rows
    /// without it are never modified or deleted.
    pub owner: String,
    /// The integration bridge.
    pub bridge: String,
    /// The trunk towards the rest of the lab, if any.
    pub uplink: Option<UplinkSpec>,
    /// One access port per VM interface.
    pub ports: Vec<VmPortSpec>,
    /// VXLAN tunnels to peer nodes at other sites, one per (VLAN, peer).
    pub tunnels: Vec<TunnelPortSpec>,
    /// sFlow / NetFlow / IPFIX export on the bridge.
    pub flow_export: FlowExportSpec,
    /// The bridge's datapath (see [`super::datapath::choose`]).
    pub datapath: Datapath,
}

/// An OVS datapath a bridge can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datapath {
    /// The userspace datapath: works everywhere, costs CPU per packet.
    Netdev,
    /// The kernel datapath: needs the openvswitch kernel module.
    System,
}

impl Datapath {
    /// The `Bridge.datapath_type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Datapath::Netdev => "netdev",
            Datapath::System => "system",
        }
    }

    /// Parse a `Bridge.datapath_type` value; OVS reads an empty one as `system`.
    pub fn from_column(value: &str) -> Option<Self> {
        match value {
            "netdev" => Some(Datapath::Netdev),
            "system" | "" => Some(Datapath::System),
            _ => None,
        }
    }
}

/// The uplink: one interface, or a bond of several.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkSpec {
    /// The OVS port name (the bond's name, e.g. `bond0`, or the interface name).
    pub name: String,
    /// Member interfaces; exactly one unless `bond` is set, then at least two.
    pub members: Vec<String>,
    /// Bonding, for two or more members.
    pub bond: Option<BondSpec>,
}

/// How the uplink bond balances and fails over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BondSpec {
    /// `bond_mode`.
    pub mode: BondMode,
    /// `lacp=active` when true, otherwise LACP off.
    pub lacp: bool,
}

/// OVS bond modes the platform supports (DESIGN: balance-slb or active-backup).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BondMode {
    /// Source-MAC load balancing; needs no switch support.
    BalanceSlb,
    /// One member carries traffic, the others take over on failure.
    ActiveBackup,
}

impl BondMode {
    /// The `bond_mode` column value.
    pub fn as_str(self) -> &'static str {
        match self {
            BondMode::BalanceSlb => "balance-slb",
            BondMode::ActiveBackup => "active-backup",
        }
    }

    /// Parse a `bond_mode` column value.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "balance-slb" => Some(BondMode::BalanceSlb),
            "active-backup" => Some(BondMode::ActiveBackup),
            _ => None,
        }
    }
}

/// A VM's access port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPortSpec {
    /// Port and interface name (the VM's vif/tap or veth, created by the hypervisor).
    pub name: String,
    /// The virtual platform's VLAN.
    pub vlan: u16,
    /// Shaping of traffic towards the VM (linux-htb egress on this port).
    pub qos: Option<QosSpec>,
    /// Policing of traffic from the VM; needs kernel support that this platform
    /// probes (see [`super::SwitchCapabilities::ingress_policing`]).
    pub ingress_policing: Option<PolicingSpec>,
}

/// A VXLAN tunnel port that carries one VLAN to one peer node: an access
/// port (`tag`) whose interface encapsulates with VNI = the VLAN. OVS floods
/// a VLAN's broadcast and multicast to it like to any access port, so
/// multicast crosses sites by head-end replication to each peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelPortSpec {
    /// Port and interface name, see [`TunnelPortSpec::port_name`].
    pub name: String,
    /// The VLAN the tunnel carries (its port's `tag`).
    pub vlan: u16,
    /// VXLAN network identifier (`options:key`).
    pub key: u32,
    /// This node's underlay address (`options:local_ip`).
    pub local_ip: Ipv4Addr,
    /// The peer's underlay address (`options:remote_ip`).
    pub remote_ip: Ipv4Addr,
}

impl TunnelPortSpec {
    /// A tunnel for `vlan` to `remote_ip`, with VNI = the VLAN: both ends
    /// derive the same key without agreeing on anything else.
    pub fn new(vlan: u16, local_ip: Ipv4Addr, remote_ip: Ipv4Addr) -> Self {
        TunnelPortSpec {
            name: Self::port_name(vlan, remote_ip),
            vlan,
            key: u32::from(vlan),
            local_ip,
            remote_ip,
        }
    }

    /// `vx<VLAN>-<remote IPv4 as 8 hex digits>`, at most 15 bytes: unique per
    /// (VLAN, peer) and stable across restarts, so reconcile finds its own
    /// ports again by name.
    pub fn port_name(vlan: u16, remote_ip: Ipv4Addr) -> String {
        format!("vx{vlan}-{:08x}", u32::from(remote_ip))
    }
}

/// linux-htb limits for one port (one QoS row with one default queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QosSpec {
    /// Ceiling in bit/s.
    pub max_rate_bps: u64,
    /// Guaranteed rate in bit/s.
    pub min_rate_bps: Option<u64>,
    /// Burst size in bits.
    pub burst_bits: Option<u64>,
}

/// `ingress_policing_rate` / `ingress_policing_burst` on the VM's interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicingSpec {
    /// Rate in kbit/s.
    pub rate_kbps: u32,
    /// Burst in kbit.
    pub burst_kbits: u32,
}

/// Flow export rows on the bridge; `None` removes ours.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlowExportSpec {
    /// sFlow.
    pub sflow: Option<SflowSpec>,
    /// NetFlow v5.
    pub netflow: Option<NetflowSpec>,
    /// IPFIX.
    pub ipfix: Option<IpfixSpec>,
}

/// An sFlow agent on the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SflowSpec {
    /// Collectors as `ip:port`.
    pub targets: Vec<String>,
    /// Sample one packet in N.
    pub sampling: u32,
    /// Counter polling interval in seconds.
    pub polling_seconds: u32,
    /// Bytes of each sampled packet to send.
    pub header_bytes: Option<u32>,
    /// Agent address: an IP or an interface name.
    pub agent: Option<String>,
}

/// NetFlow v5 export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetflowSpec {
    /// Collectors as `ip:port`.
    pub targets: Vec<String>,
    /// Seconds after which long flows are exported anyway (-1: never).
    pub active_timeout_seconds: i64,
}

/// IPFIX export (bridge-wide sampling).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpfixSpec {
    /// Collectors as `ip:port`.
    pub targets: Vec<String>,
    /// Sample one packet in N.
    pub sampling: u32,
    /// Seconds after which active flows are exported.
    pub cache_active_timeout_seconds: u32,
    /// Observation domain id.
    pub obs_domain_id: Option<u32>,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> OvsError {
    OvsError::InvalidSpec {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Interface names: what the kernel and OVS accept.
pub fn check_ifname(field: &str, name: &str) -> Result<(), OvsError> {
    if name.is_empty() || name.len() > MAX_IFNAME_LEN {
        return Err(invalid(
            field,
            format!("{name:?} must be 1..={MAX_IFNAME_LEN} bytes"),
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(invalid(
            field,
            format!("{name:?} may only contain ASCII letters, digits, '-', '_' and '.'"),
        ));
    }
    Ok(())
}

fn check_targets(field: &str, targets: &[String]) -> Result<(), OvsError> {
    if targets.is_empty() {
        return Err(invalid(field, "needs at least one collector"));
    }
    for (i, target) in targets.iter().enumerate() {
        if target.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                format!("{field}[{i}]"),
                format!("{target:?} is not IP:PORT"),
            ));
        }
    }
    Ok(())
}

impl QosSpec {
    /// Check the limits, naming `field` in errors.
    pub fn validate(&self, field: &str) -> Result<(), OvsError> {
        if self.max_rate_bps == 0 {
            return Err(invalid(format!("{field}.max_rate_bps"), "must be > 0"));
        }
        if let Some(min) = self.min_rate_bps {
            if min == 0 || min > self.max_rate_bps {
                return Err(invalid(
                    format!("{field}.min_rate_bps"),
                    format!("{min} must be in 1..={}", self.max_rate_bps),
                ));
            }
        }
        if self.burst_bits == Some(0) {
            return Err(invalid(format!("{field}.burst_bits"), "must be > 0"));
        }
        Ok(())
    }
}

impl SwitchSpec {
    /// Reject anything OVS would refuse or that would be ambiguous, before any
    /// change is made.
    pub fn validate(&self) -> Result<(), OvsError> {
        if self.owner.is_empty() {
            return Err(invalid("owner", "must not be empty"));
        }
        check_ifname("bridge", &self.bridge)?;
        let mut names = BTreeSet::from([self.bridge.clone()]);
        if let Some(uplink) = &self.uplink {
            check_ifname("uplink.name", &uplink.name)?;
            if !names.insert(uplink.name.clone()) {
                return Err(invalid(
                    "uplink.name",
                    format!("{:?} is already used", uplink.name),
                ));
            }
            match (&uplink.bond, uplink.members.len()) {
                (None, 1) | (Some(_), 2..) => {}
                (None, n) => {
                    return Err(invalid(
                        "uplink.members",
                        format!(
                            "a single uplink needs exactly 1 member, got {n}; set bond for more"
                        ),
                    ))
                }
                (Some(_), n) => {
                    return Err(invalid(
                        "uplink.members",
                        format!("a bond needs at least 2 members, got {n}"),
                    ))
                }
            }
            for (i, member) in uplink.members.iter().enumerate() {
                let field = format!("uplink.members[{i}]");
                check_ifname(&field, member)?;
                // A single-member uplink may reuse its interface's name as port name.
                if member != &uplink.name && !names.insert(member.clone()) {
                    return Err(invalid(field, format!("{member:?} is already used")));
                }
            }
        }
        for (i, port) in self.ports.iter().enumerate() {
            let field = format!("ports[{i}]");
            check_ifname(&format!("{field}.name"), &port.name)?;
            if !names.insert(port.name.clone()) {
                return Err(invalid(
                    format!("{field}.name"),
                    format!("{:?} is already used", port.name),
                ));
            }
            if !(1..=4094).contains(&port.vlan) {
                return Err(invalid(
                    format!("{field}.vlan"),
                    format!("{} is not a VLAN id (1..=4094)", port.vlan),
                ));
            }
            if let Some(qos) = &port.qos {
                qos.validate(&format!("{field}.qos"))?;
            }
            if let Some(policing) = &port.ingress_policing {
                if policing.rate_kbps == 0 {
                    return Err(invalid(
                        format!("{field}.ingress_policing.rate_kbps"),
                        "must be > 0 (omit ingress_policing to disable it)",
                    ));
                }
            }
        }
        for (i, tunnel) in self.tunnels.iter().enumerate() {
            let field = format!("tunnels[{i}]");
            check_ifname(&format!("{field}.name"), &tunnel.name)?;
            if !names.insert(tunnel.name.clone()) {
                return Err(invalid(
                    format!("{field}.name"),
                    format!("{:?} is already used", tunnel.name),
                ));
            }
            if !(1..=4094).contains(&tunnel.vlan) {
                return Err(invalid(
                    format!("{field}.vlan"),
                    format!("{} is not a VLAN id (1..=4094)", tunnel.vlan),
                ));
            }
            // VXLAN's VNI is 24 bits.
            if tunnel.key >= 1 << 24 {
                return Err(invalid(
                    format!("{field}.key"),
                    format!("{} does not fit VXLAN's 24-bit VNI", tunnel.key),
                ));
            }
            if tunnel.remote_ip == tunnel.local_ip {
                return Err(invalid(
                    format!("{field}.remote_ip"),
                    format!("{} is this node's own tunnel address", tunnel.remote_ip),
                ));
            }
            for (name, ip) in [
                ("local_ip", tunnel.local_ip),
                ("remote_ip", tunnel.remote_ip),
            ] {
                if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback()
                {
                    return Err(invalid(
                        format!("{field}.{name}"),
                        format!("{ip} is not a unicast underlay address"),
                    ));
                }
            }
        }
        if let Some(sflow) = &self.flow_export.sflow {
            check_targets("flow_export.sflow.targets", &sflow.targets)?;
            if sflow.sampling == 0 {
                return Err(invalid("flow_export.sflow.sampling", "must be >= 1"));
            }
        }
        if let Some(netflow) = &self.flow_export.netflow {
            check_targets("flow_export.netflow.targets", &netflow.targets)?;
            if netflow.active_timeout_seconds < -1 {
                return Err(invalid(
                    "flow_export.netflow.active_timeout_seconds",
                    "must be -1 (never) or >= 0",
                ));
            }
        }
        if let Some(ipfix) = &self.flow_export.ipfix {
            check_targets("flow_export.ipfix.targets", &ipfix.targets)?;
            if ipfix.sampling == 0 {
                return Err(invalid("flow_export.ipfix.sampling", "must be >= 1"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SwitchSpec {
        SwitchSpec {
            owner: "node-1".into(),
            bridge: "br-int".into(),
            uplink: Some(UplinkSpec {
                name: "bond0".into(),
                members: vec!["eth1".into(), "eth2".into()],
                bond: Some(BondSpec {
                    mode: BondMode::ActiveBackup,
                    lacp: false,
                }),
            }),
            ports: vec![VmPortSpec {
                name: "vm1-0".into(),
                vlan: 10,
                qos: Some(QosSpec {
                    max_rate_bps: 20_000_000,
                    min_rate_bps: None,
                    burst_bits: None,
                }),
                ingress_policing: None,
            }],
            tunnels: vec![TunnelPortSpec::new(
                10,
                Ipv4Addr::new(10, 60, 1, 2),
                Ipv4Addr::new(10, 60, 2, 2),
            )],
            flow_export: FlowExportSpec::default(),
            datapath: Datapath::Netdev,
        }
    }

    #[test]
    fn tunnel_names_fit_an_interface_name_and_differ_per_vlan_and_peer() {
        let peer = Ipv4Addr::new(255, 255, 255, 254);
        let longest = TunnelPortSpec::port_name(4094, peer);
        assert_eq!(longest, "vx4094-fffffffe");
        assert!(longest.len() <= MAX_IFNAME_LEN);
        assert_ne!(
            TunnelPortSpec::port_name(10, Ipv4Addr::new(10, 60, 2, 2)),
            TunnelPortSpec::port_name(11, Ipv4Addr::new(10, 60, 2, 2))
        );
        assert_ne!(
            TunnelPortSpec::port_name(10, Ipv4Addr::new(10, 60, 2, 2)),
            TunnelPortSpec::port_name(10, Ipv4Addr::new(10, 60, 3, 2))
        );
    }

    fn field_of(err: OvsError) -> String {
        match err {
            OvsError::InvalidSpec { field, .. } => field,
            other => panic!("expected InvalidSpec, got {other}"),
        }
    }

    #[test]
    fn valid_spec_passes() {
        spec().validate().unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        let mut s = spec();
        s.ports[0].vlan = 0;
        assert_eq!(field_of(s.validate().unwrap_err()), "ports[0].vlan");
        let mut s = spec();
        s.ports[0].name = "a-very-long-interface".into();
        assert_eq!(field_of(s.validate().unwrap_err()), "ports[0].name");
        let mut s = spec();
        s.ports[0].qos = Some(QosSpec {
            max_rate_bps: 10,
            min_rate_bps: Some(20),
            burst_bits: None,
        });
        assert_eq!(
            field_of(s.validate().unwrap_err()),
            "ports[0].qos.min_rate_bps"
        );
        let mut s = spec();
        s.uplink.as_mut().unwrap().members.pop();
        assert_eq!(field_of(s.validate().unwrap_err()), "uplink.members");
        let mut s = spec();
        s.ports.push(s.ports[0].clone());
        assert_eq!(field_of(s.validate().unwrap_err()), "ports[1].name");
        let mut s = spec();
        s.ports[0].name = "eth1".into();
        assert_eq!(field_of(s.validate().unwrap_err()), "ports[0].name");
        let mut s = spec();
        s.flow_export.sflow = Some(SflowSpec {
            targets: vec!["collector:6343".into()],
            sampling: 1,
            polling_seconds: 1,
            header_bytes: None,
            agent: None,
        });
        assert_eq!(
            field_of(s.validate().unwrap_err()),
            "flow_export.sflow.targets[0]"
        );
        let mut s = spec();
        s.tunnels[0].remote_ip = s.tunnels[0].local_ip;
        assert_eq!(field_of(s.validate().unwrap_err()), "tunnels[0].remote_ip");
        let mut s = spec();
        s.tunnels[0].key = 1 << 24;
        assert_eq!(field_of(s.validate().unwrap_err()), "tunnels[0].key");
        let mut s = spec();
        s.tunnels.push(s.tunnels[0].clone());
        assert_eq!(field_of(s.validate().unwrap_err()), "tunnels[1].name");
        let mut s = spec();
        s.owner.clear();
        assert_eq!(field_of(s.validate().unwrap_err()), "owner");
    }
}
