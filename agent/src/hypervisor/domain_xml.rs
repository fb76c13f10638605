//! libvirt domain XML for our guests: one generator, three flavors.
//!
//! The Xen PV flavor cannot be exercised on the build machine (no Xen
//! hypervisor); it is checked only against its golden file and libvirt's
//! RelaxNG schema (`virt-xml-validate`). The QEMU flavor boots for real in
//! `agent/tests/hypervisor_qemu.rs`, the test flavor runs against
//! `test:///default`.

use std::fmt::Write as _;

use super::disks::GuestDisks;
use super::spec::{GuestSpec, NicAttach, RateLimit};
use super::types::{BackendKind, OWNER_XML_NAMESPACE};

/// QEMU accelerator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QemuAccel {
    /// Software emulation (`type='qemu'`). KVM hangs on the build machine.
    Tcg,
    /// Hardware virtualization (`type='kvm'`).
    Kvm,
}

/// Which libvirt driver the XML is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainFlavor {
    /// Xen paravirtualized guest (`xen:///system`): direct kernel boot, PV
    /// console `hvc0`, `xvd*` disks, netfront NIC.
    XenPv,
    /// QEMU/KVM HVM guest (`qemu:///system`) with direct kernel boot.
    Qemu(QemuAccel),
    /// libvirt's test driver (`test:///default`).
    Test,
}

impl DomainFlavor {
    /// The flavor that fits a connection URI (`xen:`, `qemu:`, `test:`).
    pub fn for_uri(uri: &str) -> Option<DomainFlavor> {
        let scheme = uri.split([':', '+']).next().unwrap_or_default();
        match scheme {
            "xen" | "libxl" => Some(DomainFlavor::XenPv),
            "qemu" => Some(DomainFlavor::Qemu(QemuAccel::Tcg)),
            "test" => Some(DomainFlavor::Test),
            _ => None,
        }
    }

    /// The backend kind reported for this flavor.
    pub fn backend_kind(self) -> BackendKind {
        match self {
            DomainFlavor::XenPv => BackendKind::Xen,
            DomainFlavor::Qemu(_) => BackendKind::Qemu,
            DomainFlavor::Test => BackendKind::LibvirtTest,
        }
    }

    fn domain_type(self) -> &'static str {
        match self {
            DomainFlavor::XenPv => "xen",
            DomainFlavor::Qemu(QemuAccel::Tcg) => "qemu",
            DomainFlavor::Qemu(QemuAccel::Kvm) => "kvm",
            DomainFlavor::Test => "test",
        }
    }
}

/// Kernel command line: console first, then our parameters, then the spec's
/// extra part. The appliance's /init reads `measurelab.ip` and
/// `measurelab.vm_id`, and mounts `measurelab.data` on /data and enables
/// `measurelab.swap` as swap.
pub(crate) fn kernel_cmdline(spec: &GuestSpec, flavor: DomainFlavor, disks: &GuestDisks) -> String {
    let console = match flavor {
        DomainFlavor::XenPv => "console=hvc0",
        _ => "console=ttyS0",
    };
    let mut cmdline = format!("{console} measurelab.vm_id={}", spec.id);
    if let Some(cidr) = spec.nic.as_ref().and_then(|n| n.ipv4_cidr.as_ref()) {
        let _ = write!(cmdline, " measurelab.ip={cidr}");
    }
    if spec.channel_socket.is_some() {
        let _ = write!(
            cmdline,
            " measurelab.channel={}",
            guest_channel_device(flavor)
        );
    }
    for disk in attached_disks(flavor, disks) {
        let _ = write!(cmdline, " measurelab.{}=/dev/{}", disk.role, disk.target);
    }
    if !spec.boot.extra_cmdline.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(&spec.boot.extra_cmdline);
    }
    cmdline
}

/// One disk file as the guest sees it.
struct AttachedDisk<'a> {
    /// Kernel parameter suffix (`measurelab.<role>=/dev/<target>`).
    role: &'static str,
    path: &'a std::path::Path,
    format: &'static str,
    /// Device name in the guest, e.g. `vdb`.
    target: String,
}

/// The guest's disks in attachment order: data (the overlay), then swap.
fn attached_disks(flavor: DomainFlavor, disks: &GuestDisks) -> Vec<AttachedDisk<'_>> {
    let prefix = match flavor {
        DomainFlavor::XenPv => "xvd",
        _ => "vd",
    };
    [
        ("data", disks.data.as_deref(), "qcow2"),
        ("swap", disks.swap.as_deref(), "raw"),
    ]
    .into_iter()
    .filter_map(|(role, path, format)| path.map(|path| (role, path, format)))
    .zip('a'..)
    .map(|((role, path, format), letter)| AttachedDisk {
        role,
        path,
        format,
        target: format!("{prefix}{letter}"),
    })
    .collect()
}

/// Where the guest sees its channel: under QEMU the virtio-serial port named
/// [`GUEST_CHANNEL_NAME`] (the guest agent finds it by that name in sysfs
/// when no udev made the link); on Xen PV the first PV channel after the
/// console (unverified here: no Xen).
pub(crate) fn guest_channel_device(flavor: DomainFlavor) -> &'static str {
    match flavor {
        DomainFlavor::XenPv => "/dev/hvc1",
        _ => "/dev/virtio-ports/org.measurelab.guest.0",
    }
}

/// Name of the virtio-serial port (QEMU) or Xen PV channel (xenstore
/// `name`) that carries the guest channel.
pub const GUEST_CHANNEL_NAME: &str = "org.measurelab.guest.0";

/// The ownership element, also used alone with `virDomainSetMetadata`.
/// `owner` scopes the domain to one node agent (see
/// `LibvirtHypervisor::with_owner`); it is left out when `None`.
pub(crate) fn owner_metadata(spec: &GuestSpec, owner: Option<&str>) -> String {
    format!(
        "<measurelab:guest xmlns:measurelab=\"{OWNER_XML_NAMESPACE}\" {}/>",
        owner_attributes(spec, owner)
    )
}

/// Our tag as `virDomainSetMetadata` takes it: libvirt adds the prefix and
/// namespace itself and refuses an element that declares them.
pub(crate) fn owner_metadata_unprefixed(spec: &GuestSpec, owner: Option<&str>) -> String {
    format!("<guest {}/>", owner_attributes(spec, owner))
}

fn owner_attributes(spec: &GuestSpec, owner: Option<&str>) -> String {
    let platform = spec
        .platform_id
        .map(|p| format!(" platform-id=\"{p}\""))
        .unwrap_or_default();
    let owner = owner
        .map(|o| format!(" owner=\"{}\"", esc(o)))
        .unwrap_or_default();
    format!(
        "vm-id=\"{}\"{platform}{owner} spec-hash=\"{}\" fixed-hash=\"{}\"",
        spec.id,
        spec.spec_hash(),
        spec.fixed_hash()
    )
}

/// Renders the domain XML of a guest without disks. The spec must have
/// passed [`GuestSpec::validate`]. The appliance disk (`boot.disk`) is
/// never attached itself: the libvirt backend attaches a per-VM overlay of it.
pub fn domain_xml(spec: &GuestSpec, flavor: DomainFlavor) -> String {
    domain_xml_for_owner(
        spec,
        flavor,
        None,
        &GuestDisks::default(),
        crate::underlay::GUEST_MTU,
    )
}

/// [`domain_xml`] with the ownership tag scoped to `owner` (a node agent),
/// the guest's own disk files attached and its platform NIC's MTU `nic_mtu`.
pub(crate) fn domain_xml_for_owner(
    spec: &GuestSpec,
    flavor: DomainFlavor,
    owner: Option<&str>,
    disks: &GuestDisks,
    nic_mtu: u32,
) -> String {
    let mut x = String::new();
    // `write!` into a String cannot fail; the results are ignored on purpose.
    let _ = writeln!(x, "<domain type='{}'>", flavor.domain_type());
    let _ = writeln!(x, "  <name>{}</name>", esc(&spec.name));
    let _ = writeln!(x, "  <uuid>{}</uuid>", spec.id);
    let _ = writeln!(
        x,
        "  <metadata>\n    {}\n  </metadata>",
        owner_metadata(spec, owner)
    );
    // The maxima are what the guest boots with room for; the current
    // sizes can then move within them on the running guest.
    let _ = writeln!(
        x,
        "  <memory unit='MiB'>{}</memory>",
        spec.memory_maximum_mib()
    );
    let _ = writeln!(
        x,
        "  <currentMemory unit='MiB'>{}</currentMemory>",
        spec.memory_mib
    );
    let _ = writeln!(
        x,
        "  <vcpu placement='static' current='{}'>{}</vcpu>",
        spec.vcpus,
        spec.vcpu_maximum()
    );
    x.push_str("  <os>\n");
    match flavor {
        DomainFlavor::XenPv => {
            x.push_str("    <type arch='x86_64' machine='xenpv'>linux</type>\n");
        }
        DomainFlavor::Qemu(_) => {
            x.push_str("    <type arch='x86_64' machine='pc'>hvm</type>\n");
        }
        DomainFlavor::Test => x.push_str("    <type arch='x86_64'>hvm</type>\n"),
    }
    let _ = writeln!(
        x,
        "    <kernel>{}</kernel>",
        esc(&spec.boot.kernel.to_string_lossy())
    );
    let _ = writeln!(
        x,
        "    <initrd>{}</initrd>",
        esc(&spec.boot.initrd.to_string_lossy())
    );
    let _ = writeln!(
        x,
        "    <cmdline>{}</cmdline>",
        esc(&kernel_cmdline(spec, flavor, disks))
    );
    x.push_str("  </os>\n");
    if let DomainFlavor::Qemu(_) = flavor {
        x.push_str("  <features>\n    <acpi/>\n  </features>\n");
    }
    x.push_str("  <on_poweroff>destroy</on_poweroff>\n");
    x.push_str("  <on_reboot>restart</on_reboot>\n");
    x.push_str("  <on_crash>destroy</on_crash>\n");
    x.push_str("  <devices>\n");
    let bus = match flavor {
        DomainFlavor::XenPv => "xen",
        _ => "virtio",
    };
    for disk in attached_disks(flavor, disks) {
        x.push_str("    <disk type='file' device='disk'>\n");
        let _ = writeln!(x, "      <driver name='qemu' type='{}'/>", disk.format);
        let _ = writeln!(
            x,
            "      <source file='{}'/>",
            esc(&disk.path.to_string_lossy())
        );
        let _ = writeln!(x, "      <target dev='{}' bus='{bus}'/>", disk.target);
        x.push_str("    </disk>\n");
    }
    if let Some(nic) = &spec.nic {
        match nic.attach {
            // For Xen, libvirt turns this into the xl vif spec
            // `bridge=BR.TAG,script=vif-openvswitch` (libvirt's xenFormatNet
            // and libxlMakeNic), so the dom0 hotplug script adds the vif to
            // OVS with the tag. Unverified here: the machine has no Xen.
            NicAttach::OvsVirtualport => {
                x.push_str("    <interface type='bridge'>\n");
                let _ = writeln!(x, "      <source bridge='{}'/>", esc(&nic.bridge));
                x.push_str("      <virtualport type='openvswitch'/>\n");
                if let Some(tag) = nic.vlan_tag {
                    let _ = writeln!(x, "      <vlan>\n        <tag id='{tag}'/>\n      </vlan>");
                }
            }
            // libvirt only creates the tap; VLAN and bridge are set by the
            // agent's OVS module, so they are not in the XML.
            NicAttach::TapOnly => {
                x.push_str("    <interface type='ethernet'>\n");
            }
            NicAttach::UserMode => {
                x.push_str("    <interface type='user'>\n");
            }
        }
        if nic.attach != NicAttach::UserMode {
            let _ = writeln!(x, "      <target dev='{}'/>", esc(&nic.port_name));
        }
        let _ = writeln!(x, "      <mac address='{}'/>", esc(&nic.mac));
        match flavor {
            DomainFlavor::Qemu(_) => x.push_str("      <model type='virtio'/>\n"),
            DomainFlavor::XenPv | DomainFlavor::Test => {}
        }
        // A TapOnly tap goes to our userspace (netdev) OVS, which forwards
        // the partial checksums of a virtio NIC's offload as they are: the
        // receiver drops such TCP/UDP. Without the host's `csum` feature the
        // guest computes every checksum itself.
        if matches!(flavor, DomainFlavor::Qemu(_)) && nic.attach == NicAttach::TapOnly {
            x.push_str("      <driver>\n        <host csum='off'/>\n      </driver>\n");
        }
        // libvirt sets it on the tap and, for QEMU, tells the guest through
        // virtio-net's host_mtu. Left out at the default, so nodes whose
        // underlay fits keep the XML they had; a user-mode NIC is no
        // platform NIC (and QEMU's slirp takes no MTU from libvirt).
        if nic_mtu != crate::underlay::GUEST_MTU && nic.attach != NicAttach::UserMode {
            let _ = writeln!(x, "      <mtu size='{nic_mtu}'/>");
        }
        if let Some(limit) = &spec.egress_limit {
            x.push_str(&bandwidth_xml(limit));
        }
        x.push_str("    </interface>\n");
    }
    match (flavor, &spec.boot.console_log) {
        (DomainFlavor::XenPv, _) => {
            x.push_str(
                "    <console type='pty'>\n      <target type='xen' port='0'/>\n    </console>\n",
            );
        }
        (_, Some(log)) => {
            x.push_str("    <serial type='file'>\n");
            let _ = writeln!(x, "      <source path='{}'/>", esc(&log.to_string_lossy()));
            x.push_str("      <target port='0'/>\n    </serial>\n");
        }
        (_, None) => {
            x.push_str("    <serial type='pty'>\n      <target port='0'/>\n    </serial>\n");
        }
    }
    if let Some(socket) = &spec.channel_socket {
        let path = esc(&socket.to_string_lossy());
        match flavor {
            // libxl has no second serial port for PV guests, but it has PV
            // channels with a unix backend (libvirt libxlMakeChannel).
            DomainFlavor::XenPv => {
                x.push_str("    <channel type='unix'>\n");
                let _ = writeln!(x, "      <source mode='bind' path='{path}'/>");
                let _ = writeln!(x, "      <target type='xen' name='{GUEST_CHANNEL_NAME}'/>");
                x.push_str("    </channel>\n");
            }
            // QEMU listens on the socket (server, nowait); the node agent
            // connects. A virtio-serial port, not a second 16550: QEMU's
            // UART has no receive flow control, so under load the guest's
            // tty buffer overran and dropped program bytes (`bo:` in
            // /proc/tty/driver/serial); virtio-serial makes QEMU wait for
            // the guest's buffers. libvirt adds the virtio-serial controller.
            DomainFlavor::Qemu(_) | DomainFlavor::Test => {
                x.push_str("    <channel type='unix'>\n");
                let _ = writeln!(x, "      <source mode='bind' path='{path}'/>");
                let _ = writeln!(
                    x,
                    "      <target type='virtio' name='{GUEST_CHANNEL_NAME}'/>"
                );
                x.push_str("    </channel>\n");
            }
        }
    }
    if let DomainFlavor::Qemu(_) = flavor {
        if spec.max_memory_mib.is_some() {
            // Memory that moves within a maximum needs the balloon.
            x.push_str("    <memballoon model='virtio'/>\n");
        } else {
            // No balloon: memory is sized by the spec, and TCG guests boot
            // faster without the extra device.
            x.push_str("    <memballoon model='none'/>\n");
        }
    }
    x.push_str("  </devices>\n</domain>\n");
    x
}

/// Escapes text for both element content and single- or double-quoted attributes.
/// libvirt's `<bandwidth>` for traffic out of the guest (`outbound`, seen
/// from the guest). Units: `average` in kB/s (1000 bytes, tc's `kbps`),
/// `burst` in KiB (tc's `kb`). Outbound has no guaranteed rate in libvirt
/// (`floor` is inbound-only), so `min_kbps` is not expressed here.
///
/// libvirt enforces outbound with an ingress qdisc plus a u32 filter with a
/// police action on the tap. Kernels without `act_police` (the build
/// machine's) make libvirt fail to start such a domain; the agent reports
/// `guest-egress-shaping` from the namespace backend's probe only.
pub(crate) fn bandwidth_xml(limit: &RateLimit) -> String {
    let average = limit.max_kbps.div_ceil(8).max(1);
    let mut outbound = format!("<outbound average='{average}'");
    if let Some(kbytes) = limit.burst_kbytes {
        let _ = write!(
            outbound,
            " burst='{}'",
            (kbytes * 1000).div_ceil(1024).max(1)
        );
    }
    format!("      <bandwidth>\n        {outbound}/>\n      </bandwidth>\n")
}

/// The `<interface>...</interface>` element of a domain XML (libvirt's own
/// formatting), with its `<bandwidth>` replaced by `limit`'s (or removed),
/// for `virDomainUpdateDeviceFlags`. `None` if the XML has no interface.
///
/// The parser only locates the elements; the text around them is kept byte
/// for byte, so libvirt sees its own formatting of everything else.
pub(crate) fn interface_with_bandwidth(domain: &str, limit: Option<&RateLimit>) -> Option<String> {
    let doc = roxmltree::Document::parse(domain).ok()?;
    let interface = doc
        .root_element()
        .children()
        .filter(|n| n.has_tag_name("devices"))
        .flat_map(|devices| devices.children())
        .find(|n| n.has_tag_name("interface"))?;
    let start = interface.range().start;
    let relative = |range: std::ops::Range<usize>| range.start - start..range.end - start;
    let bandwidth = interface
        .children()
        .find(|n| n.has_tag_name("bandwidth"))
        .map(|n| relative(n.range()));
    let mut iface = domain[interface.range()].to_string();
    if let Some(range) = bandwidth {
        iface.replace_range(range, "");
    }
    if let Some(limit) = limit {
        // An interface with children has an end tag, and it holds the
        // element's last `</`.
        let close = iface.rfind("</")?;
        iface.insert_str(close, &bandwidth_xml(limit));
    }
    Some(iface)
}

/// The `<source file>` of every `<disk>` of a domain XML, in order.
pub(crate) fn disk_sources(domain: &str) -> Vec<std::path::PathBuf> {
    let Ok(doc) = roxmltree::Document::parse(domain) else {
        return Vec::new();
    };
    doc.root_element()
        .children()
        .filter(|n| n.has_tag_name("devices"))
        .flat_map(|devices| devices.children())
        .filter(|n| n.has_tag_name("disk"))
        .filter_map(|disk| {
            disk.children()
                .find(|n| n.has_tag_name("source"))
                .and_then(|source| source.attribute("file"))
                .map(std::path::PathBuf::from)
        })
        .collect()
}

fn esc(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// Value of the unprefixed attribute `name` on the root element of `xml`
/// (the one flat element libvirt hands back from `virDomainGetMetadata`),
/// unescaped. `None` when the XML is not well-formed or lacks the attribute.
pub(crate) fn first_tag_attribute(xml: &str, name: &str) -> Option<String> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    doc.root_element().attribute(name).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use super::super::spec::tests::sample_spec;
    use super::*;

    fn golden(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/hypervisor/testdata")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Checks well-formedness with an XML parser (balanced tags, escaped
    /// text and attributes). Catches broken output from a generator edit
    /// that the golden update might hide.
    fn assert_balanced(xml: &str) {
        if let Err(err) = roxmltree::Document::parse(xml) {
            panic!("not well-formed XML: {err}\n{xml}");
        }
    }

    /// Validates against libvirt's RelaxNG schema when `virt-xml-validate`
    /// and `xmllint` are installed (libvirt-clients, libxml2-utils).
    fn validate_with_libvirt_schema(xml: &str, label: &str) {
        let have_tools = ["virt-xml-validate", "xmllint"].iter().all(|tool| {
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        });
        if !have_tools {
            eprintln!("skipping RelaxNG validation of {label}: virt-xml-validate/xmllint missing");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("{label}.xml"));
        std::fs::write(&path, xml).unwrap();
        let out = Command::new("virt-xml-validate")
            .arg(&path)
            .arg("domain")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{label} fails libvirt's domain schema: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn maxima_give_room_to_resize_live() {
        let mut spec = sample_spec();
        spec.max_vcpus = Some(4);
        spec.max_memory_mib = Some(1024);
        for flavor in [
            DomainFlavor::Test,
            DomainFlavor::XenPv,
            DomainFlavor::Qemu(QemuAccel::Tcg),
        ] {
            let xml = domain_xml(&spec, flavor);
            assert!(xml.contains("<memory unit='MiB'>1024</memory>"), "{xml}");
            assert!(
                xml.contains("<currentMemory unit='MiB'>256</currentMemory>"),
                "{xml}"
            );
            assert!(
                xml.contains("<vcpu placement='static' current='2'>4</vcpu>"),
                "{xml}"
            );
            assert_balanced(&xml);
            validate_with_libvirt_schema(&xml, "maxima");
        }
        // QEMU resizes memory through the balloon, which is otherwise off.
        assert!(domain_xml(&spec, DomainFlavor::Qemu(QemuAccel::Tcg))
            .contains("<memballoon model='virtio'/>"));
        assert!(
            domain_xml(&sample_spec(), DomainFlavor::Qemu(QemuAccel::Tcg))
                .contains("<memballoon model='none'/>")
        );
    }

    fn check_variant(flavor: DomainFlavor, golden_name: &str) -> String {
        let xml = domain_xml(&sample_spec(), flavor);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("src/hypervisor/testdata")
                .join(golden_name);
            std::fs::write(path, &xml).unwrap();
        }
        assert_eq!(
            xml,
            golden(golden_name),
            "XML differs from src/hypervisor/testdata/{golden_name}"
        );
        assert_balanced(&xml);
        validate_with_libvirt_schema(&xml, golden_name);
        xml
    }

    #[test]
    fn xen_pv_matches_golden() {
        let xml = check_variant(DomainFlavor::XenPv, "xen-pv.xml");
        assert!(xml.starts_with("<domain type='xen'>"));
        assert!(xml.contains("machine='xenpv'>linux</type>"));
        assert!(xml.contains("console=hvc0"));
        assert!(xml.contains("<target type='xen' port='0'/>"));
        assert!(xml.contains("measurelab.channel=/dev/hvc1"));
        assert!(xml.contains("<target type='xen' name='org.measurelab.guest.0'/>"));
    }

    #[test]
    fn qemu_tcg_matches_golden() {
        let xml = check_variant(DomainFlavor::Qemu(QemuAccel::Tcg), "qemu-tcg.xml");
        assert!(xml.starts_with("<domain type='qemu'>"));
        assert!(xml.contains("<virtualport type='openvswitch'/>"));
        assert!(xml.contains("<tag id='101'/>"));
        assert!(xml.contains("<target dev='vm-6f1c2a3b'/>"));
        assert!(xml.contains("<mac address='52:54:00:6f:1c:2a'/>"));
        assert!(xml.contains("measurelab.ip=10.200.9.2/24"));
        assert!(xml.contains("measurelab.channel=/dev/virtio-ports/org.measurelab.guest.0"));
        assert!(xml.contains("<channel type='unix'>\n      <source mode='bind' path='/var/lib/measurelab/agent/guests/6f1c2a3b-4d5e-4f60-8172-8394a5b6c7d8/channel.sock'/>\n      <target type='virtio' name='org.measurelab.guest.0'/>\n    </channel>"));
        assert!(!xml.contains("<target port='1'/>"), "no second UART: {xml}");
    }

    #[test]
    fn egress_limit_becomes_outbound_bandwidth_in_tc_units() {
        let mut spec = sample_spec();
        spec.nic.as_mut().unwrap().attach = NicAttach::TapOnly;
        spec.egress_limit = Some(RateLimit {
            max_kbps: 20_000,
            min_kbps: Some(5_000),
            burst_kbytes: Some(64),
        });
        for flavor in [
            DomainFlavor::Qemu(QemuAccel::Tcg),
            DomainFlavor::XenPv,
            DomainFlavor::Test,
        ] {
            let xml = domain_xml(&spec, flavor);
            // 20 Mbit/s = 2500 kB/s; 64 000 bytes = 62.5 KiB, rounded up.
            assert!(
                xml.contains(
                    "<bandwidth>\n        <outbound average='2500' burst='63'/>\n      </bandwidth>\n    </interface>"
                ),
                "{xml}"
            );
            assert_balanced(&xml);
            validate_with_libvirt_schema(&xml, &format!("egress-{flavor:?}"));
        }
        spec.egress_limit = None;
        assert!(!domain_xml(&spec, DomainFlavor::Test).contains("<bandwidth>"));
    }

    #[test]
    fn a_lowered_guest_mtu_reaches_the_platform_nic() {
        for attach in [NicAttach::OvsVirtualport, NicAttach::TapOnly] {
            let mut spec = sample_spec();
            spec.nic.as_mut().unwrap().attach = attach;
            for flavor in [
                DomainFlavor::Qemu(QemuAccel::Tcg),
                DomainFlavor::XenPv,
                DomainFlavor::Test,
            ] {
                let disks = GuestDisks::default();
                let xml = domain_xml_for_owner(&spec, flavor, None, &disks, 1450);
                let interface =
                    &xml[xml.find("<interface").unwrap()..xml.find("</interface>").unwrap()];
                assert!(interface.contains("<mtu size='1450'/>"), "{xml}");
                assert_balanced(&xml);
                validate_with_libvirt_schema(&xml, &format!("mtu-{attach:?}-{flavor:?}"));
                // The default stays out: such nodes keep the XML they had.
                let default = domain_xml_for_owner(&spec, flavor, None, &disks, 1500);
                assert!(!default.contains("<mtu"), "{default}");
            }
        }
        let mut user = sample_spec();
        user.nic.as_mut().unwrap().attach = NicAttach::UserMode;
        let xml = domain_xml_for_owner(
            &user,
            DomainFlavor::Qemu(QemuAccel::Tcg),
            None,
            &GuestDisks::default(),
            1450,
        );
        assert!(!xml.contains("<mtu"), "{xml}");
    }

    #[test]
    fn interface_bandwidth_is_replaced_or_removed() {
        let libvirt_formatted = "<domain><devices><interface type='ethernet'>\n      <mac address='52:54:00:6f:1c:2a'/>\n      <target dev='vm-x'/>\n      <bandwidth>\n        <outbound average='2500'/>\n      </bandwidth>\n    </interface></devices></domain>";
        let ten = RateLimit {
            max_kbps: 10_000,
            min_kbps: None,
            burst_kbytes: None,
        };
        let changed = interface_with_bandwidth(libvirt_formatted, Some(&ten)).unwrap();
        assert!(
            changed.starts_with("<interface type='ethernet'>"),
            "{changed}"
        );
        assert!(changed.ends_with("</interface>"), "{changed}");
        assert!(changed.contains("<outbound average='1250'/>"), "{changed}");
        assert!(!changed.contains("2500"), "{changed}");
        assert_balanced(&changed);
        let removed = interface_with_bandwidth(libvirt_formatted, None).unwrap();
        assert!(!removed.contains("bandwidth"), "{removed}");
        assert!(removed.contains("<target dev='vm-x'/>"), "{removed}");
        assert_eq!(interface_with_bandwidth("<domain/>", None), None);
    }

    #[test]
    fn interface_is_found_by_structure_not_by_text() {
        // A comment and a description that mention `<interface ` come before
        // the real one; an empty `<bandwidth/>` is removed too.
        let domain = "<domain><description>see &lt;interface type='x'&gt;</description><devices>\
            <!-- <interface type='commented'></interface> -->\
            <interface type='bridge'><target dev='vm-y'/><bandwidth/></interface></devices></domain>";
        let iface = interface_with_bandwidth(domain, None).unwrap();
        assert_eq!(
            iface,
            "<interface type='bridge'><target dev='vm-y'/></interface>"
        );
        assert_eq!(interface_with_bandwidth("<domain><devices>", None), None);
    }

    #[test]
    fn metadata_as_libvirt_returns_it() {
        // libvirt hands the element back with its own prefix (or none) and
        // with double-quoted, escaped attributes.
        let xml = format!(
            "<guest xmlns=\"{OWNER_XML_NAMESPACE}\" vm-id=\"a\" owner=\"x &amp; &quot;y&quot;\"/>"
        );
        let xml = xml.as_str();
        assert_eq!(
            first_tag_attribute(xml, "owner").as_deref(),
            Some("x & \"y\"")
        );
        assert_eq!(first_tag_attribute(xml, "vm-id").as_deref(), Some("a"));
        assert_eq!(first_tag_attribute("<guest vm-id='a'", "vm-id"), None);
    }

    #[test]
    fn no_channel_no_second_serial() {
        let mut spec = sample_spec();
        spec.channel_socket = None;
        for flavor in [
            DomainFlavor::Qemu(QemuAccel::Tcg),
            DomainFlavor::XenPv,
            DomainFlavor::Test,
        ] {
            let xml = domain_xml(&spec, flavor);
            assert!(!xml.contains("measurelab.channel"), "{xml}");
            assert!(!xml.contains("<source mode='bind'"), "{xml}");
            assert_balanced(&xml);
        }
    }

    #[test]
    fn guest_disks_are_attached_in_order_and_named_on_the_cmdline() {
        let disks = GuestDisks {
            data: Some("/var/lib/measurelab/agent/guests/x/disk.qcow2".into()),
            swap: Some("/var/lib/measurelab/agent/guests/x/swap.img".into()),
        };
        for (flavor, data, swap, bus) in [
            (DomainFlavor::Qemu(QemuAccel::Tcg), "vda", "vdb", "virtio"),
            (DomainFlavor::XenPv, "xvda", "xvdb", "xen"),
            (DomainFlavor::Test, "vda", "vdb", "virtio"),
        ] {
            let xml = domain_xml_for_owner(&sample_spec(), flavor, None, &disks, 1500);
            assert!(
                xml.contains(&format!(
                    "<driver name='qemu' type='qcow2'/>\n      <source file='/var/lib/measurelab/agent/guests/x/disk.qcow2'/>\n      <target dev='{data}' bus='{bus}'/>"
                )),
                "{xml}"
            );
            assert!(
                xml.contains(&format!(
                    "<driver name='qemu' type='raw'/>\n      <source file='/var/lib/measurelab/agent/guests/x/swap.img'/>\n      <target dev='{swap}' bus='{bus}'/>"
                )),
                "{xml}"
            );
            assert!(
                xml.contains(&format!(
                    "measurelab.data=/dev/{data} measurelab.swap=/dev/{swap}"
                )),
                "{xml}"
            );
            assert_eq!(
                disk_sources(&xml),
                vec![disks.data.clone().unwrap(), disks.swap.clone().unwrap()]
            );
            assert_balanced(&xml);
            validate_with_libvirt_schema(&xml, &format!("disks-{flavor:?}"));
        }
        // Swap alone is the first disk.
        let swap_only = GuestDisks {
            data: None,
            swap: disks.swap.clone(),
        };
        let xml = domain_xml_for_owner(&sample_spec(), DomainFlavor::Test, None, &swap_only, 1500);
        assert!(xml.contains("measurelab.swap=/dev/vda"), "{xml}");
        assert!(!xml.contains("measurelab.data"), "{xml}");
    }

    #[test]
    fn the_appliance_disk_itself_is_never_attached() {
        let mut spec = sample_spec();
        spec.boot.disk = Some("/var/lib/measurelab/appliances/tiny/disk.img".into());
        for flavor in [DomainFlavor::Qemu(QemuAccel::Tcg), DomainFlavor::XenPv] {
            let xml = domain_xml(&spec, flavor);
            assert!(!xml.contains("disk.img"), "{xml}");
            assert!(!xml.contains("<disk "), "{xml}");
        }
    }

    #[test]
    fn test_driver_matches_golden() {
        let xml = check_variant(DomainFlavor::Test, "test.xml");
        assert!(xml.starts_with("<domain type='test'>"));
    }

    #[test]
    fn kvm_differs_only_in_type() {
        let tcg = domain_xml(&sample_spec(), DomainFlavor::Qemu(QemuAccel::Tcg));
        let kvm = domain_xml(&sample_spec(), DomainFlavor::Qemu(QemuAccel::Kvm));
        assert_eq!(
            kvm.replacen("<domain type='kvm'>", "<domain type='qemu'>", 1),
            tcg
        );
    }

    #[test]
    fn tap_only_nic_leaves_bridge_to_the_agent() {
        let mut spec = sample_spec();
        spec.nic.as_mut().unwrap().attach = NicAttach::TapOnly;
        let xml = domain_xml(&spec, DomainFlavor::Qemu(QemuAccel::Tcg));
        assert!(xml.contains("<interface type='ethernet'>"));
        assert!(xml.contains("<host csum='off'/>"), "{xml}");
        assert!(!xml.contains("virtualport"));
        assert!(!xml.contains("<source bridge"));
        assert_balanced(&xml);
        validate_with_libvirt_schema(&xml, "tap-only");
    }

    #[test]
    fn hostile_strings_are_escaped() {
        let mut spec = sample_spec();
        spec.boot.extra_cmdline = "a='<b>' & \"c\"".into();
        let xml = domain_xml(&spec, DomainFlavor::Test);
        assert!(xml.contains("a=&apos;&lt;b&gt;&apos; &amp; &quot;c&quot;"));
        assert_balanced(&xml);
    }

    #[test]
    fn metadata_round_trips() {
        let spec = sample_spec();
        let meta = owner_metadata(&spec, None);
        assert_eq!(
            first_tag_attribute(&meta, "vm-id").as_deref(),
            Some("6f1c2a3b-4d5e-4f60-8172-8394a5b6c7d8")
        );
        assert_eq!(
            first_tag_attribute(&meta, "platform-id").as_deref(),
            Some("0a0b0c0d-0e0f-4011-8213-141516171819")
        );
        assert_eq!(
            first_tag_attribute(&meta, "spec-hash"),
            Some(spec.spec_hash())
        );
        // "id" must not match the tail of "vm-id" or "platform-id".
        assert_eq!(first_tag_attribute(&meta, "id"), None);
    }

    #[test]
    fn flavor_from_uri() {
        assert_eq!(
            DomainFlavor::for_uri("xen:///system"),
            Some(DomainFlavor::XenPv)
        );
        assert_eq!(
            DomainFlavor::for_uri("qemu+ssh://h/system"),
            Some(DomainFlavor::Qemu(QemuAccel::Tcg))
        );
        assert_eq!(
            DomainFlavor::for_uri("test:///default"),
            Some(DomainFlavor::Test)
        );
        assert_eq!(DomainFlavor::for_uri("lxc:///"), None);
    }
}
