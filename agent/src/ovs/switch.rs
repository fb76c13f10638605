//! What reconcile needs from a switch ([`Switch`]), what it reads back and the
//! actions it applies: shared by the planner and the real driver, so neither
//! imports the other or the parent module.

use async_trait::async_trait;

use super::error::OvsError;
use super::probe::KernelFeature;
use super::spec::{
    Datapath, IpfixSpec, NetflowSpec, PolicingSpec, QosSpec, SflowSpec, TunnelPortSpec, UplinkSpec,
    VmPortSpec,
};

/// What the switch can do, as probed on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchCapabilities {
    /// `ovs_version` of the Open_vSwitch row.
    pub ovs_version: Option<String>,
    /// `Open_vSwitch.datapath_types` (e.g. `netdev`, `system`).
    pub datapath_types: Vec<String>,
    /// `Open_vSwitch.iface_types`.
    pub iface_types: Vec<String>,
    /// linux-htb egress QoS: needs the kernel's HTB qdisc.
    pub linux_htb: KernelFeature,
    /// `ingress_policing_rate`: needs the ingress qdisc, a classifier
    /// (matchall or basic) and the police action.
    pub ingress_policing: KernelFeature,
    /// The `system` datapath: needs the openvswitch kernel module.
    pub kernel_datapath: KernelFeature,
}

impl SwitchCapabilities {
    /// Datapath types that can actually carry a bridge here: OVS lists
    /// `system` even without the kernel module.
    pub fn usable_datapath_types(&self) -> Vec<String> {
        self.datapath_types
            .iter()
            .filter(|t| t.as_str() != "system" || self.kernel_datapath.is_available())
            .cloned()
            .collect()
    }

    /// Feature names for the heartbeat's `qos_features` (only what works).
    pub fn qos_features(&self) -> Vec<String> {
        let mut features = Vec::new();
        if self.linux_htb.is_available() {
            features.push("linux-htb".to_string());
        }
        if self.ingress_policing.is_available() {
            features.push("ingress-policing".to_string());
        }
        features
    }
}

/// A QoS row as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedQos {
    /// Row id.
    pub uuid: String,
    /// Tagged with our owner id.
    pub owned: bool,
    /// The limits, if the row is a linux-htb QoS we can read as a [`QosSpec`].
    pub spec: Option<QosSpec>,
    /// Queue rows it references.
    pub queue_uuids: Vec<String>,
}

/// Which of our ports this is (from `external_ids:measurelab-role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRole {
    /// A VM's access port.
    Vm,
    /// The uplink (single interface or bond).
    Uplink,
    /// A VXLAN tunnel to a peer node.
    Tunnel,
}

/// A Port on the integration bridge, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedPort {
    /// Row id.
    pub uuid: String,
    /// Port name.
    pub name: String,
    /// Tagged with our owner id.
    pub owned: bool,
    /// Our role tag, if any.
    pub role: Option<PortRole>,
    /// `tag`.
    pub tag: Option<u16>,
    /// Interface names.
    pub interfaces: Vec<String>,
    /// `bond_mode`.
    pub bond_mode: Option<String>,
    /// `lacp`.
    pub lacp: Option<String>,
    /// The QoS it references.
    pub qos: Option<ObservedQos>,
    /// Ingress policing of its (first) interface; `None` when the rate is 0.
    pub policing: Option<PolicingSpec>,
    /// Type and `options` of its (first) interface when it is a tunnel
    /// (`vxlan`, `geneve`, ...); `None` for plain ports.
    pub tunnel: Option<ObservedTunnel>,
}

/// A tunnel interface as OVSDB holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedTunnel {
    /// `Interface.type`, e.g. `vxlan`.
    pub kind: String,
    /// `Interface.options` (`remote_ip`, `local_ip`, `key`, ...).
    pub options: std::collections::BTreeMap<String, String>,
    /// `Port.protected`: no forwarding to other protected ports.
    pub protected: bool,
}

impl ObservedTunnel {
    /// Whether this interface is exactly the tunnel `spec` asks for.
    pub fn matches(&self, spec: &TunnelPortSpec) -> bool {
        self.kind == "vxlan" && self.options == tunnel_options(spec) && self.protected
    }
}

/// The `Interface.options` of a tunnel: what the driver writes and what
/// [`ObservedTunnel::matches`] compares against, from one place.
pub fn tunnel_options(spec: &TunnelPortSpec) -> std::collections::BTreeMap<String, String> {
    [
        ("remote_ip", spec.remote_ip.to_string()),
        ("local_ip", spec.local_ip.to_string()),
        ("key", spec.key.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A flow-export row referenced by the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedExport<T> {
    /// Row id.
    pub uuid: String,
    /// Tagged with our owner id.
    pub owned: bool,
    /// Its settings in our terms.
    pub spec: T,
}

/// The integration bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedBridge {
    /// Row id.
    pub uuid: String,
    /// Tagged with our owner id.
    pub owned: bool,
    /// Every Port row it references (ours and foreign), for the concurrency guard.
    pub port_uuids: Vec<String>,
    /// `datapath_type` as stored (empty means `system` to OVS).
    pub datapath_type: String,
}

/// The actual state relevant to one [`SwitchSpec`](super::SwitchSpec).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObservedSwitch {
    /// The bridge, if it exists.
    pub bridge: Option<ObservedBridge>,
    /// Ports on the bridge.
    pub ports: Vec<ObservedPort>,
    /// Names of foreign Port or Interface rows anywhere (desired names must avoid them).
    pub foreign_names: Vec<String>,
    /// Our QoS rows that no Port references (deleted with their queues).
    pub orphan_qos: Vec<ObservedQos>,
    /// Our Queue rows that no QoS references.
    pub orphan_queues: Vec<String>,
    /// The bridge's sFlow row.
    pub sflow: Option<ObservedExport<SflowSpec>>,
    /// The bridge's NetFlow row.
    pub netflow: Option<ObservedExport<NetflowSpec>>,
    /// The bridge's IPFIX row.
    pub ipfix: Option<ObservedExport<IpfixSpec>>,
}

/// One change to the switch. A list of them is applied atomically.
#[derive(Debug, Clone, PartialEq)]
pub enum SwitchAction {
    /// Create the integration bridge on this datapath.
    CreateBridge(Datapath),
    /// Move our existing bridge to another datapath.
    SetBridgeDatapath(Datapath),
    /// Add a VM port with its tag, QoS and policing.
    AddVmPort(VmPortSpec),
    /// Fix a VM port's VLAN.
    SetPortTag {
        /// Port name.
        port: String,
        /// New VLAN.
        vlan: u16,
    },
    /// Replace (or remove, with `None`) a VM port's QoS; our old QoS and
    /// queues are deleted.
    SetPortQos {
        /// Port name.
        port: String,
        /// New limits.
        qos: Option<QosSpec>,
    },
    /// Set or clear ingress policing on a VM port's interface.
    SetPortPolicing {
        /// Port name.
        port: String,
        /// New policing.
        policing: Option<PolicingSpec>,
    },
    /// Remove one of our ports (and its QoS).
    RemovePort {
        /// Port name.
        port: String,
    },
    /// Add the uplink port (single or bond).
    AddUplink(UplinkSpec),
    /// Add a VXLAN tunnel port (access port of its VLAN).
    AddTunnel(TunnelPortSpec),
    /// Delete one of our QoS rows that nothing references, and its queues.
    DeleteQos {
        /// Row id.
        uuid: String,
    },
    /// Delete one of our Queue rows that nothing references.
    DeleteQueue {
        /// Row id.
        uuid: String,
    },
    /// Set or clear the bridge's sFlow.
    SetSflow(Option<SflowSpec>),
    /// Set or clear the bridge's NetFlow.
    SetNetflow(Option<NetflowSpec>),
    /// Set or clear the bridge's IPFIX.
    SetIpfix(Option<IpfixSpec>),
    /// Delete the whole bridge (teardown).
    DeleteBridge,
}

/// What reconcile needs from a switch. The real one is [`OvsdbSwitch`](super::OvsdbSwitch); tests
/// of the planning logic use a fake.
#[async_trait]
pub trait Switch: Send + Sync {
    /// Probe what this switch and kernel can do.
    async fn capabilities(&self) -> Result<SwitchCapabilities, OvsError>;
    /// Read the state relevant to `owner`'s bridge `bridge`.
    async fn observe(&self, owner: &str, bridge: &str) -> Result<ObservedSwitch, OvsError>;
    /// Apply `actions` atomically. `observed` is what they were planned from; a
    /// switch may refuse (transiently) if the state changed since.
    async fn apply(
        &self,
        owner: &str,
        bridge: &str,
        observed: &ObservedSwitch,
        actions: &[SwitchAction],
    ) -> Result<(), OvsError>;
}
