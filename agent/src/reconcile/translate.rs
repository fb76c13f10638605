//! Pure translation of the controller's [`DesiredVm`] into what the
//! hypervisor and switch modules take. No I/O, so a bad spec is found before
//! anything is touched and names the offending field.

use std::path::{Path, PathBuf};

use measurelab_api::node_v1::DesiredVm;
use uuid::Uuid;

use super::types::ReconcilerConfig;
use crate::guest_channel::channel_socket_path;
use crate::hypervisor::{BackendKind, BootImage, GuestSpec, NicAttach, NicSpec, RateLimit};
use crate::ovs::{QosSpec, VmPortSpec};

/// A desired VM this agent cannot act on. Always Permanent: the same spec
/// fails again, so the VM waits for the controller to change it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("desired VM field `{field}`: {reason}")]
pub struct TranslateError {
    /// Field of `DesiredVm`, e.g. `vlan_tag`.
    pub field: &'static str,
    /// Why.
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> TranslateError {
    TranslateError {
        field,
        reason: reason.into(),
    }
}

/// Parses the VM id.
pub(crate) fn vm_id(vm: &DesiredVm) -> Result<Uuid, TranslateError> {
    Uuid::parse_str(&vm.id).map_err(|e| invalid("id", format!("{:?} is not a UUID: {e}", vm.id)))
}

/// Host port name: the controller's, or `ml-<8 hex>` when it sent none.
pub(crate) fn port_name(vm: &DesiredVm, id: Uuid) -> String {
    if vm.port_name.is_empty() {
        format!("ml-{}", &id.simple().to_string()[..8])
    } else {
        vm.port_name.clone()
    }
}

fn vlan(vm: &DesiredVm) -> Result<u16, TranslateError> {
    u16::try_from(vm.vlan_tag)
        .ok()
        .filter(|tag| (1..=4094).contains(tag))
        .ok_or_else(|| {
            invalid(
                "vlan_tag",
                format!("{} is not a VLAN id (1..=4094)", vm.vlan_tag),
            )
        })
}

/// A MAC for VMs the controller sent none for: locally administered, from the id.
fn default_mac(id: Uuid) -> String {
    let b = id.as_bytes();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

fn absolute_or_placeholder(path: &str) -> PathBuf {
    // The namespace backend boots nothing; its spec still needs valid paths.
    if path.is_empty() {
        PathBuf::from("/dev/null")
    } else {
        PathBuf::from(path)
    }
}

/// The [`GuestSpec`] of `vm` on a backend of `kind`.
pub fn guest_spec(
    vm: &DesiredVm,
    kind: BackendKind,
    config: &ReconcilerConfig,
) -> Result<GuestSpec, TranslateError> {
    let id = vm_id(vm)?;
    let platform_id = if vm.platform_id.is_empty() {
        None
    } else {
        Some(Uuid::parse_str(&vm.platform_id).map_err(|e| {
            invalid(
                "platform_id",
                format!("{:?} is not a UUID: {e}", vm.platform_id),
            )
        })?)
    };
    let appliance = vm.appliance.clone().unwrap_or_default();
    let libvirt = kind != BackendKind::Namespace;
    if libvirt && (appliance.kernel.is_empty() || appliance.initrd.is_empty()) {
        return Err(invalid(
            "appliance",
            format!(
                "appliance {:?} has no kernel/initrd, so it cannot boot on libvirt",
                appliance.name
            ),
        ));
    }
    let guest_dir = config.state_dir.join("guests").join(id.to_string());
    let spec = GuestSpec {
        id,
        // libvirt domain names are host-global; the id keeps them unique
        // across platforms that reuse a VM name.
        name: format!(
            "ml-{}-{}",
            sanitize(&vm.name),
            &id.simple().to_string()[..8]
        ),
        platform_id,
        vcpus: vm.vcpus,
        memory_mib: vm.memory_mib,
        disk_mib: vm.disk_mib,
        swap_mib: vm.swap_mib,
        boot: BootImage {
            kernel: absolute_or_placeholder(&appliance.kernel),
            initrd: absolute_or_placeholder(&appliance.initrd),
            disk: (!appliance.disk.is_empty()).then(|| PathBuf::from(&appliance.disk)),
            extra_cmdline: String::new(),
            console_log: libvirt.then(|| guest_dir.join("console.log")),
        },
        nic: Some(NicSpec {
            mac: if vm.mac.is_empty() {
                default_mac(id)
            } else {
                vm.mac.clone()
            },
            bridge: config.bridge.clone(),
            vlan_tag: Some(vlan(vm)?),
            port_name: port_name(vm, id),
            ipv4_cidr: (!vm.ipv4_cidr.is_empty()).then(|| vm.ipv4_cidr.clone()),
            // libvirt's <virtualport type='openvswitch'> runs ovs-vsctl
            // against the default socket, which a node OVS with a private
            // run dir does not have: we plug the tap ourselves.
            attach: NicAttach::TapOnly,
        }),
        channel_socket: Some(channel_socket_path(&config.state_dir, id)),
        egress_limit: egress_limit(vm),
        // 0: the controller set no maximum, so it is the requested size.
        max_vcpus: (vm.max_vcpus != 0).then_some(vm.max_vcpus),
        max_memory_mib: (vm.max_memory_mib != 0).then_some(vm.max_memory_mib),
    };
    spec.validate().map_err(|e| match e {
        crate::hypervisor::HypervisorError::InvalidSpec { field, reason } => {
            invalid(map_field(field), reason)
        }
        other => invalid("spec", other.to_string()),
    })?;
    Ok(spec)
}

/// Hypervisor spec fields in terms of the desired VM the controller sent.
fn map_field(field: &'static str) -> &'static str {
    match field {
        "name" => "name",
        "nic.mac" => "mac",
        "nic.port_name" => "port_name",
        "nic.ipv4_cidr" => "ipv4_cidr",
        "nic.vlan_tag" => "vlan_tag",
        "boot.kernel" => "appliance.kernel",
        "boot.initrd" => "appliance.initrd",
        "boot.disk" => "appliance.disk",
        "channel_socket" => "id",
        "egress_limit.max_kbps" => "qos.egress_max_kbps",
        "egress_limit.min_kbps" => "qos.egress_min_kbps",
        "egress_limit.burst_kbytes" => "qos.egress_burst_kbytes",
        other => other,
    }
}

fn sanitize(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    if cleaned.is_empty() {
        "vm".into()
    } else {
        cleaned
    }
}

/// The QoS policy's egress (traffic out of the VM): shaped on the guest's
/// side of its link by the hypervisor backend, because this kernel cannot
/// police on the OVS port (no act_police).
fn egress_limit(vm: &DesiredVm) -> Option<RateLimit> {
    let q = vm.qos.as_ref()?;
    (q.egress_max_kbps > 0).then(|| RateLimit {
        max_kbps: q.egress_max_kbps,
        min_kbps: (q.egress_min_kbps > 0).then_some(q.egress_min_kbps),
        burst_kbytes: (q.egress_burst_kbytes > 0).then_some(q.egress_burst_kbytes),
    })
}

/// The access port of `vm`: the platform's VLAN and linux-htb shaping for the
/// QoS policy's ingress (traffic into the VM). Egress is the guest spec's
/// `egress_limit`, never port policing.
pub fn port_spec(vm: &DesiredVm) -> Result<VmPortSpec, TranslateError> {
    let id = vm_id(vm)?;
    let qos = vm.qos.as_ref();
    let shaping = match qos {
        Some(q) if q.ingress_max_kbps > 0 => {
            if q.ingress_min_kbps > q.ingress_max_kbps {
                return Err(invalid(
                    "qos.ingress_min_kbps",
                    format!(
                        "{} exceeds ingress_max_kbps {}",
                        q.ingress_min_kbps, q.ingress_max_kbps
                    ),
                ));
            }
            Some(QosSpec {
                max_rate_bps: q.ingress_max_kbps.saturating_mul(1000),
                min_rate_bps: (q.ingress_min_kbps > 0).then(|| q.ingress_min_kbps * 1000),
                burst_bits: (q.ingress_burst_kbytes > 0)
                    .then(|| q.ingress_burst_kbytes.saturating_mul(8000)),
            })
        }
        _ => None,
    };
    let port = VmPortSpec {
        name: port_name(vm, id),
        vlan: vlan(vm)?,
        qos: shaping,
        ingress_policing: None,
    };
    crate::ovs::spec::check_ifname("port_name", &port.name).map_err(|e| match e {
        crate::ovs::OvsError::InvalidSpec { reason, .. } => invalid("port_name", reason),
        other => invalid("port_name", other.to_string()),
    })?;
    if let Some(q) = &port.qos {
        q.validate("qos")
            .map_err(|e| invalid("qos", e.to_string()))?;
    }
    Ok(port)
}

/// Socket directory of a VM (also removed when the VM goes).
pub(crate) fn guest_dir(state_dir: &Path, id: Uuid) -> PathBuf {
    state_dir.join("guests").join(id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use measurelab_api::node_v1::{DesiredAppliance, DesiredQos};

    fn vm() -> DesiredVm {
        DesiredVm {
            id: "6f1c2a3b-4d5e-4f60-8172-8394a5b6c7d8".into(),
            name: "web-1".into(),
            platform_id: "0a0b0c0d-0e0f-4011-8213-141516171819".into(),
            vlan_tag: 101,
            backend: "namespace".into(),
            vcpus: 1,
            memory_mib: 64,
            appliance: Some(DesiredAppliance {
                name: "namespace".into(),
                ..Default::default()
            }),
            mac: "52:54:00:6f:1c:2a".into(),
            ipv4_cidr: "10.201.0.10/24".into(),
            power_state: "running".into(),
            port_name: "vm6f1c2a3b".into(),
            ..Default::default()
        }
    }

    fn config() -> ReconcilerConfig {
        ReconcilerConfig::new("/var/lib/measurelab/agent", "n1")
    }

    #[test]
    fn namespace_vm_translates() {
        let spec = guest_spec(&vm(), BackendKind::Namespace, &config()).unwrap();
        let nic = spec.nic.unwrap();
        assert_eq!(nic.vlan_tag, Some(101));
        assert_eq!(nic.port_name, "vm6f1c2a3b");
        assert_eq!(nic.bridge, "br-int");
        assert!(spec
            .channel_socket
            .unwrap()
            .ends_with("guests/6f1c2a3b-4d5e-4f60-8172-8394a5b6c7d8/channel.sock"));
    }

    #[test]
    fn bad_fields_are_named() {
        let mut bad = vm();
        bad.vlan_tag = 0;
        assert_eq!(
            guest_spec(&bad, BackendKind::Namespace, &config())
                .unwrap_err()
                .field,
            "vlan_tag"
        );
        let mut bad = vm();
        bad.mac = "01:00:5e:00:00:01".into();
        assert_eq!(
            guest_spec(&bad, BackendKind::Namespace, &config())
                .unwrap_err()
                .field,
            "mac"
        );
        let mut bad = vm();
        bad.memory_mib = 1;
        assert_eq!(
            guest_spec(&bad, BackendKind::Namespace, &config())
                .unwrap_err()
                .field,
            "memory_mib"
        );
        assert_eq!(
            guest_spec(&vm(), BackendKind::Qemu, &config())
                .unwrap_err()
                .field,
            "appliance"
        );
        let mut bad = vm();
        bad.qos = Some(DesiredQos {
            ingress_max_kbps: 10,
            ingress_min_kbps: 20,
            ..Default::default()
        });
        assert_eq!(port_spec(&bad).unwrap_err().field, "qos.ingress_min_kbps");
    }

    #[test]
    fn qos_units_convert() {
        let mut with_qos = vm();
        with_qos.qos = Some(DesiredQos {
            ingress_max_kbps: 20_000,
            ingress_burst_kbytes: 16,
            egress_max_kbps: 5_000,
            egress_burst_kbytes: 4,
            ..Default::default()
        });
        let port = port_spec(&with_qos).unwrap();
        assert_eq!(port.qos.unwrap().max_rate_bps, 20_000_000);
        assert_eq!(port.qos.unwrap().burst_bits, Some(128_000));
        assert_eq!(port.ingress_policing, None);
        let spec = guest_spec(&with_qos, BackendKind::Namespace, &config()).unwrap();
        let egress = spec.egress_limit.unwrap();
        assert_eq!((egress.max_kbps, egress.burst_kbytes), (5_000, Some(4)));
    }
}
