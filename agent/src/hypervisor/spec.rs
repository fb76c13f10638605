//! The typed description of one guest, shared by all backends.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::types::HypervisorError;

/// Linux limits interface names to 15 bytes (IFNAMSIZ - 1).
const MAX_IFNAME_LEN: usize = 15;

/// Everything a backend needs to create one guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestSpec {
    /// VM id; becomes the libvirt domain UUID.
    pub id: Uuid,
    /// Host-visible name (libvirt domain name). `[A-Za-z0-9_.-]`, at most 64 chars.
    pub name: String,
    /// Virtual platform (slice) the VM belongs to.
    pub platform_id: Option<Uuid>,
    /// Number of virtual CPUs, 1..=64.
    pub vcpus: u32,
    /// Memory, MiB, at least 16.
    pub memory_mib: u64,
    /// Size of the VM's own disk, MiB: on libvirt a copy-on-write overlay
    /// of the appliance disk (at least the image's size), or a blank disk
    /// for a diskless appliance. 0: the image's size, or no disk.
    pub disk_mib: u64,
    /// Size of the swap disk, MiB (0: none).
    pub swap_mib: u64,
    /// What to boot. Ignored by the namespace backend.
    pub boot: BootImage,
    /// The guest's one network interface, if any.
    pub nic: Option<NicSpec>,
    /// Unix socket of the guest channel (see `crate::guest_channel`). For
    /// libvirt guests, libvirt binds it for a virtio-serial port (the
    /// guest's `/dev/virtio-ports/org.measurelab.guest.0`; a PV channel on
    /// Xen) and the node agent
    /// connects; the namespace backend passes it to the guest process as
    /// `MEASURELAB_CHANNEL` and the node agent listens on it. Left out of the
    /// serialized spec when `None`, so spec hashes of older specs stay put.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_socket: Option<PathBuf>,
    /// Cap on traffic OUT OF the guest (the QoS policy's `egress_*`),
    /// enforced by shaping on the guest's side of its link: an htb qdisc
    /// on the namespace guest's `eth0`, libvirt's `<bandwidth><outbound>`
    /// on a tap. Traffic INTO the guest is the OVS port's linux-htb QoS.
    /// Changes apply in place (`Hypervisor::set_egress_limit`, or a
    /// `define` with the new spec) without a restart. Left out of the
    /// serialized spec when `None`, so hashes of older specs stay put.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_limit: Option<RateLimit>,
    /// Most vCPUs the guest may be given without a restart (libvirt
    /// `<vcpu current=...>`); `None`: `vcpus`. The namespace backend has no
    /// such bound (cgroups change freely). Left out of the serialized spec
    /// when `None`, so hashes of older specs stay put.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vcpus: Option<u32>,
    /// Most memory, MiB, the guest may be given without a restart (libvirt
    /// `<memory>` with `<currentMemory>` below it); `None`: `memory_mib`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_mib: Option<u64>,
}

/// A bandwidth limit in the units of the QoS policy API (kbit/s = 1000
/// bit/s, kbytes = 1000 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RateLimit {
    /// Ceiling, kbit/s (1..=100_000_000, i.e. up to 100 Gbit/s).
    pub max_kbps: u64,
    /// Guaranteed rate, kbit/s; at most `max_kbps`. `None`: the ceiling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_kbps: Option<u64>,
    /// Bucket size, kbytes (1..=1_000_000); `None`: the shaper's minimum
    /// for the rate (one timer tick's worth plus an MTU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_kbytes: Option<u64>,
}

/// Highest rate we accept: 100 Gbit/s. tc's rate fields overflow far above
/// it, and nothing on a measurement node needs more.
const MAX_RATE_KBPS: u64 = 100_000_000;
/// 1 GB of burst is already meaningless for a shaper; larger is a typo.
const MAX_BURST_KBYTES: u64 = 1_000_000;

impl RateLimit {
    /// Checks the limit; `prefix` names it in the error (e.g. `egress_limit`).
    pub fn validate(&self) -> Result<(), HypervisorError> {
        let invalid =
            |field: &'static str, reason: String| HypervisorError::InvalidSpec { field, reason };
        if !(1..=MAX_RATE_KBPS).contains(&self.max_kbps) {
            return Err(invalid(
                "egress_limit.max_kbps",
                format!("must be 1 to {MAX_RATE_KBPS}, got {}", self.max_kbps),
            ));
        }
        if let Some(min) = self.min_kbps {
            if min == 0 || min > self.max_kbps {
                return Err(invalid(
                    "egress_limit.min_kbps",
                    format!("must be 1 to max_kbps ({}), got {min}", self.max_kbps),
                ));
            }
        }
        if let Some(burst) = self.burst_kbytes {
            if !(1..=MAX_BURST_KBYTES).contains(&burst) {
                return Err(invalid(
                    "egress_limit.burst_kbytes",
                    format!("must be 1 to {MAX_BURST_KBYTES}, got {burst}"),
                ));
            }
        }
        Ok(())
    }

    /// The guaranteed rate in effect (`min_kbps`, else the ceiling).
    pub fn guaranteed_kbps(&self) -> u64 {
        self.min_kbps.unwrap_or(self.max_kbps)
    }
}

/// A direct-kernel-boot appliance (kernel + initrd, optional disk).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootImage {
    /// Absolute path of the kernel (vmlinuz) on the node.
    pub kernel: PathBuf,
    /// Absolute path of the initramfs on the node.
    pub initrd: PathBuf,
    /// Absolute path of the appliance's disk image (raw or qcow2), if it
    /// has one. Shared by every VM booting the appliance, so never attached
    /// itself: the libvirt backend gives each VM an overlay of it.
    pub disk: Option<PathBuf>,
    /// Extra kernel command line, appended after the generated part
    /// (console, `measurelab.ip`, `measurelab.vm_id`).
    pub extra_cmdline: String,
    /// If set, the serial console is written to this file (QEMU and test
    /// driver); otherwise it is a pty.
    pub console_log: Option<PathBuf>,
}

/// How the guest's interface reaches Open vSwitch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NicAttach {
    /// `<interface type='bridge'>` with `<virtualport type='openvswitch'/>`:
    /// libvirt runs `ovs-vsctl` itself against the default OVSDB socket.
    OvsVirtualport,
    /// `<interface type='ethernet'>`: libvirt only creates the tap named
    /// `port_name`; the agent's OVS module adds it to the bridge (with the
    /// VLAN tag) through OVSDB. Needed when OVS runs with a private run dir.
    TapOnly,
    /// QEMU user-mode networking: no host port at all. Tests only.
    UserMode,
}

/// The guest's interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicSpec {
    /// Unicast MAC, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// OVS bridge the port joins.
    pub bridge: String,
    /// VLAN tag of the virtual platform (1..=4094), if any.
    pub vlan_tag: Option<u16>,
    /// Host-side port name (tap or veth), at most 15 chars.
    pub port_name: String,
    /// Guest address with prefix, e.g. `10.200.9.2/24`.
    pub ipv4_cidr: Option<String>,
    /// How the port is attached.
    pub attach: NicAttach,
}

impl GuestSpec {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), HypervisorError> {
        let invalid =
            |field: &'static str, reason: String| HypervisorError::InvalidSpec { field, reason };
        if self.id.is_nil() {
            return Err(invalid("id", "must not be the nil UUID".into()));
        }
        if self.name.is_empty() || self.name.len() > 64 {
            return Err(invalid(
                "name",
                format!("must be 1 to 64 characters, got {}", self.name.len()),
            ));
        }
        if let Some(bad) = self
            .name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(invalid(
                "name",
                format!("character {bad:?} is not allowed (use A-Z a-z 0-9 - _ .)"),
            ));
        }
        if !(1..=64).contains(&self.vcpus) {
            return Err(invalid(
                "vcpus",
                format!("must be 1 to 64, got {}", self.vcpus),
            ));
        }
        if !(16..=1024 * 1024).contains(&self.memory_mib) {
            return Err(invalid(
                "memory_mib",
                format!("must be 16 to 1048576, got {}", self.memory_mib),
            ));
        }
        if let Some(max) = self.max_vcpus {
            if !(self.vcpus..=64).contains(&max) {
                return Err(invalid(
                    "max_vcpus",
                    format!("must be vcpus ({}) to 64, got {max}", self.vcpus),
                ));
            }
        }
        if let Some(max) = self.max_memory_mib {
            if !(self.memory_mib..=1024 * 1024).contains(&max) {
                return Err(invalid(
                    "max_memory_mib",
                    format!(
                        "must be memory_mib ({}) to 1048576, got {max}",
                        self.memory_mib
                    ),
                ));
            }
        }
        self.boot.validate()?;
        if let Some(nic) = &self.nic {
            nic.validate()?;
        }
        if let Some(socket) = &self.channel_socket {
            validate_socket_path(socket).map_err(|reason| invalid("channel_socket", reason))?;
        }
        if let Some(limit) = &self.egress_limit {
            if self.nic.is_none() {
                return Err(invalid(
                    "egress_limit",
                    "the guest has no NIC to limit".into(),
                ));
            }
            if self
                .nic
                .as_ref()
                .is_some_and(|n| n.attach == NicAttach::UserMode)
            {
                return Err(invalid(
                    "egress_limit",
                    "user-mode networking has no host interface to shape".into(),
                ));
            }
            limit.validate()?;
        }
        Ok(())
    }

    /// Stable hash of the whole spec (FNV-1a 64 over its JSON form), written
    /// into the guest's tag so the reconcile loop can tell whether a guest
    /// matches its spec without parsing it back. Stable across Rust releases,
    /// unlike `DefaultHasher`.
    pub fn spec_hash(&self) -> String {
        // Serializing a struct of plain fields cannot fail.
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        format!("{:016x}", fnv1a64(&bytes))
    }

    /// vCPUs the guest is defined with room for.
    pub fn vcpu_maximum(&self) -> u32 {
        self.max_vcpus.unwrap_or(self.vcpus)
    }

    /// Memory, MiB, the guest is defined with room for.
    pub fn memory_maximum_mib(&self) -> u64 {
        self.max_memory_mib.unwrap_or(self.memory_mib)
    }

    /// [`Self::spec_hash`] of everything but the sizes (`vcpus`,
    /// `memory_mib` and their maxima): two specs with the same fixed hash
    /// differ at most in sizes, which a running guest takes live as long
    /// as the new maxima fit in the ones it booted with.
    pub fn fixed_hash(&self) -> String {
        let mut fixed = self.clone();
        fixed.max_vcpus = None;
        fixed.max_memory_mib = None;
        fixed.vcpus = 0;
        fixed.memory_mib = 0;
        fixed.spec_hash()
    }

    /// First 8 hex digits of the id: short names for namespaces and ports.
    pub fn short_id(&self) -> String {
        short_id(self.id)
    }
}

/// First 8 hex digits of a UUID.
pub(crate) fn short_id(id: Uuid) -> String {
    id.simple().to_string()[..8].to_string()
}

impl BootImage {
    fn validate(&self) -> Result<(), HypervisorError> {
        for (field, path) in [("boot.kernel", &self.kernel), ("boot.initrd", &self.initrd)] {
            if !path.is_absolute() {
                return Err(HypervisorError::InvalidSpec {
                    field,
                    reason: format!("must be an absolute path, got {}", path.display()),
                });
            }
        }
        if let Some(disk) = &self.disk {
            if !disk.is_absolute() {
                return Err(HypervisorError::InvalidSpec {
                    field: "boot.disk",
                    reason: format!("must be an absolute path, got {}", disk.display()),
                });
            }
        }
        if let Some(log) = &self.console_log {
            if !log.is_absolute() {
                return Err(HypervisorError::InvalidSpec {
                    field: "boot.console_log",
                    reason: format!("must be an absolute path, got {}", log.display()),
                });
            }
        }
        if self.extra_cmdline.chars().any(|c| c.is_control()) {
            return Err(HypervisorError::InvalidSpec {
                field: "boot.extra_cmdline",
                reason: "must not contain control characters".into(),
            });
        }
        Ok(())
    }
}

impl NicSpec {
    fn validate(&self) -> Result<(), HypervisorError> {
        parse_mac(&self.mac).map_err(|reason| HypervisorError::InvalidSpec {
            field: "nic.mac",
            reason,
        })?;
        validate_ifname(&self.port_name).map_err(|reason| HypervisorError::InvalidSpec {
            field: "nic.port_name",
            reason,
        })?;
        if self.attach != NicAttach::UserMode {
            validate_ifname(&self.bridge).map_err(|reason| HypervisorError::InvalidSpec {
                field: "nic.bridge",
                reason,
            })?;
        }
        if let Some(tag) = self.vlan_tag {
            if !(1..=4094).contains(&tag) {
                return Err(HypervisorError::InvalidSpec {
                    field: "nic.vlan_tag",
                    reason: format!("must be 1 to 4094, got {tag}"),
                });
            }
        }
        if let Some(cidr) = &self.ipv4_cidr {
            parse_cidr(cidr).map_err(|reason| HypervisorError::InvalidSpec {
                field: "nic.ipv4_cidr",
                reason,
            })?;
        }
        Ok(())
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`; rejects multicast MACs (a NIC must be unicast).
pub(crate) fn parse_mac(mac: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = mac.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("{mac:?} is not six colon-separated hex octets"));
    }
    let mut bytes = [0u8; 6];
    for (byte, part) in bytes.iter_mut().zip(&parts) {
        if part.len() != 2 {
            return Err(format!("{mac:?}: octet {part:?} must be two hex digits"));
        }
        hex::decode_to_slice(part, std::slice::from_mut(byte))
            .map_err(|_| format!("{mac:?}: octet {part:?} is not hex"))?;
    }
    if bytes[0] & 1 == 1 {
        return Err(format!("{mac:?} is a multicast address"));
    }
    Ok(bytes)
}

/// Parses `a.b.c.d/len`.
pub(crate) fn parse_cidr(cidr: &str) -> Result<(Ipv4Addr, u8), String> {
    let (addr, len) = cidr
        .split_once('/')
        .ok_or_else(|| format!("{cidr:?} has no /prefix"))?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| format!("prefix {len:?} must be 0 to 32"))?;
    Ok((addr, len))
}

/// Linux interface name rules: 1..=15 bytes, no '/', ':' or whitespace.
pub(crate) fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_IFNAME_LEN {
        return Err(format!(
            "{name:?} must be 1 to {MAX_IFNAME_LEN} bytes, got {}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is reserved"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!("{name:?}: character {bad:?} is not allowed"));
    }
    Ok(())
}

/// A unix socket path Linux can bind: absolute, at most 107 bytes (sun_path
/// holds 108 with the NUL), no characters that would break the XML or the
/// environment.
pub(crate) fn validate_socket_path(path: &std::path::Path) -> Result<(), String> {
    if !path.is_absolute() {
        return Err(format!("must be an absolute path, got {}", path.display()));
    }
    let len = path.as_os_str().len();
    if len > 107 {
        return Err(format!(
            "{} is {len} bytes; unix socket paths are limited to 107",
            path.display()
        ));
    }
    if path.to_string_lossy().chars().any(|c| c.is_control()) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_spec() -> GuestSpec {
        GuestSpec {
            id: Uuid::parse_str("6f1c2a3b-4d5e-4f60-8172-8394a5b6c7d8").unwrap(),
            name: "mlab-vm-6f1c2a3b".into(),
            platform_id: Some(Uuid::parse_str("0a0b0c0d-0e0f-4011-8213-141516171819").unwrap()),
            vcpus: 2,
            memory_mib: 256,
            disk_mib: 0,
            swap_mib: 0,
            boot: BootImage {
                kernel: "/var/lib/measurelab/appliances/measurelab-tiny/vmlinuz".into(),
                initrd: "/var/lib/measurelab/appliances/measurelab-tiny/initrd.img".into(),
                disk: None,
                extra_cmdline: "quiet".into(),
                console_log: Some("/var/log/measurelab/6f1c2a3b.console.log".into()),
            },
            nic: Some(NicSpec {
                mac: "52:54:00:6f:1c:2a".into(),
                bridge: "br-int".into(),
                vlan_tag: Some(101),
                port_name: "vm-6f1c2a3b".into(),
                ipv4_cidr: Some("10.200.9.2/24".into()),
                attach: NicAttach::OvsVirtualport,
            }),
            channel_socket: Some(
                "/var/lib/measurelab/agent/guests/6f1c2a3b-4d5e-4f60-8172-8394a5b6c7d8/channel.sock"
                    .into(),
            ),
            egress_limit: None,
            max_vcpus: None,
            max_memory_mib: None,
        }
    }

    #[test]
    fn sample_is_valid() {
        sample_spec().validate().unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        type Mutation = Box<dyn Fn(&mut GuestSpec)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("name", Box::new(|s| s.name = "bad name".into())),
            ("vcpus", Box::new(|s| s.vcpus = 0)),
            ("memory_mib", Box::new(|s| s.memory_mib = 8)),
            (
                "boot.kernel",
                Box::new(|s| s.boot.kernel = "vmlinuz".into()),
            ),
            (
                "nic.mac",
                Box::new(|s| s.nic.as_mut().unwrap().mac = "01:00:5e:00:00:01".into()),
            ),
            (
                "nic.mac",
                Box::new(|s| s.nic.as_mut().unwrap().mac = "52:54:00:zz:00:01".into()),
            ),
            (
                "nic.port_name",
                Box::new(|s| s.nic.as_mut().unwrap().port_name = "a-very-long-port-name".into()),
            ),
            (
                "nic.vlan_tag",
                Box::new(|s| s.nic.as_mut().unwrap().vlan_tag = Some(4095)),
            ),
            (
                "nic.ipv4_cidr",
                Box::new(|s| s.nic.as_mut().unwrap().ipv4_cidr = Some("10.200.1.2/33".into())),
            ),
            (
                "channel_socket",
                Box::new(|s| s.channel_socket = Some("channel.sock".into())),
            ),
            (
                "egress_limit.max_kbps",
                Box::new(|s| s.egress_limit = Some(limit(0, None, None))),
            ),
            (
                "egress_limit.min_kbps",
                Box::new(|s| s.egress_limit = Some(limit(10_000, Some(20_000), None))),
            ),
            (
                "egress_limit.burst_kbytes",
                Box::new(|s| s.egress_limit = Some(limit(10_000, None, Some(0)))),
            ),
            (
                "channel_socket",
                Box::new(|s| s.channel_socket = Some(format!("/{}", "x".repeat(107)).into())),
            ),
        ];
        for (field, mutate) in cases {
            let mut spec = sample_spec();
            mutate(&mut spec);
            match spec.validate() {
                Err(HypervisorError::InvalidSpec { field: got, .. }) => {
                    assert_eq!(got, field, "wrong field reported")
                }
                other => panic!("expected InvalidSpec for {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn spec_hash_is_stable_and_sensitive() {
        let spec = sample_spec();
        assert_eq!(spec.spec_hash(), sample_spec().spec_hash());
        assert_eq!(spec.spec_hash().len(), 16);
        let mut changed = sample_spec();
        changed.memory_mib += 1;
        assert_ne!(spec.spec_hash(), changed.spec_hash());
    }

    #[test]
    fn maxima_are_checked_and_absent_ones_keep_old_hashes() {
        let plain = sample_spec();
        let json = serde_json::to_string(&plain).unwrap();
        assert!(!json.contains("max_"), "{json}");
        assert_eq!((plain.vcpu_maximum(), plain.memory_maximum_mib()), (2, 256));
        let mut roomy = sample_spec();
        roomy.max_vcpus = Some(4);
        roomy.max_memory_mib = Some(1024);
        roomy.validate().unwrap();
        assert_eq!(
            (roomy.vcpu_maximum(), roomy.memory_maximum_mib()),
            (4, 1024)
        );
        let mut low = sample_spec();
        low.max_vcpus = Some(1);
        assert!(matches!(
            low.validate(),
            Err(HypervisorError::InvalidSpec {
                field: "max_vcpus",
                ..
            })
        ));
        let mut low = sample_spec();
        low.max_memory_mib = Some(128);
        assert!(matches!(
            low.validate(),
            Err(HypervisorError::InvalidSpec {
                field: "max_memory_mib",
                ..
            })
        ));
    }

    #[test]
    fn fixed_hash_ignores_sizes_only() {
        let base = sample_spec();
        let mut resized = sample_spec();
        resized.vcpus = 1;
        resized.memory_mib = 512;
        resized.max_memory_mib = Some(1024);
        assert_eq!(base.fixed_hash(), resized.fixed_hash());
        assert_ne!(base.spec_hash(), resized.spec_hash());
        let mut other = sample_spec();
        other.boot.extra_cmdline = "loglevel=4".into();
        assert_ne!(base.fixed_hash(), other.fixed_hash());
    }

    fn limit(max: u64, min: Option<u64>, burst: Option<u64>) -> RateLimit {
        RateLimit {
            max_kbps: max,
            min_kbps: min,
            burst_kbytes: burst,
        }
    }

    #[test]
    fn egress_limit_changes_the_hash_and_absent_keeps_it() {
        let plain = sample_spec();
        let json = serde_json::to_string(&plain).unwrap();
        assert!(!json.contains("egress_limit"), "{json}");
        let mut limited = sample_spec();
        limited.egress_limit = Some(limit(20_000, Some(5_000), Some(32)));
        limited.validate().unwrap();
        assert_ne!(plain.spec_hash(), limited.spec_hash());
        let mut other = limited.clone();
        other.egress_limit = Some(limit(10_000, Some(5_000), Some(32)));
        assert_ne!(limited.spec_hash(), other.spec_hash());
        let back: GuestSpec =
            serde_json::from_str(&serde_json::to_string(&limited).unwrap()).unwrap();
        assert_eq!(back, limited);
    }

    #[test]
    fn absent_channel_keeps_the_old_hash_form() {
        let mut spec = sample_spec();
        spec.channel_socket = None;
        let json = serde_json::to_string(&spec).unwrap();
        assert!(!json.contains("channel_socket"), "{json}");
        let back: GuestSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn short_id_is_eight_hex() {
        assert_eq!(sample_spec().short_id(), "6f1c2a3b");
    }
}
