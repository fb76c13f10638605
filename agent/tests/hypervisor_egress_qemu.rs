//! libvirt's `<bandwidth><outbound>` on a QEMU guest's `type='ethernet'`
//! tap, for real (`qemu:///system`, TCG). libvirt enforces outbound with an
//! ingress qdisc plus a u32 filter with a police action on the tap:
//! - where tc police works, the domain starts with that filter on its tap
//!   and `set_egress_limit` changes it on the running guest;
//! - where it does not (the build machine: no act_police), libvirt fails
//!   every start of such a domain, so the backend refuses the limit at
//!   define, naming `egress_limit`. The test shows both halves there: the
//!   refusal, and that the raw XML really does not start.
//!
//! Needs root and what `hypervisor_qemu.rs` needs (see libvirt_setup).

mod libvirt_setup;

use std::path::{Path, PathBuf};
use std::process::Command;

use libvirt_setup::{build_appliance, GuestGuard, LibvirtSetup, Result, QEMU_URI};
use measurelab_agent::hypervisor::{
    domain_xml, probe_tc_police, BootImage, DomainFlavor, GuestSpec, Hypervisor, HypervisorError,
    LibvirtHypervisor, NicAttach, NicSpec, QemuAccel, RateLimit, ResizeOutcome,
};
use uuid::Uuid;

fn spec(appliance: &Path, tap: &str, egress: Option<RateLimit>) -> GuestSpec {
    let id = Uuid::new_v4();
    GuestSpec {
        id,
        name: format!("mleg-{}", &id.simple().to_string()[..8]),
        platform_id: None,
        vcpus: 1,
        memory_mib: 256,
        disk_mib: 0,
        swap_mib: 0,
        boot: BootImage {
            kernel: appliance.join("vmlinuz"),
            initrd: appliance.join("initrd.img"),
            disk: None,
            extra_cmdline: String::new(),
            console_log: None,
        },
        nic: Some(NicSpec {
            mac: "52:54:00:c8:0e:02".into(),
            bridge: "unused".into(),
            vlan_tag: Some(110),
            port_name: tap.to_string(),
            ipv4_cidr: Some("10.200.45.2/24".into()),
            attach: NicAttach::TapOnly,
        }),
        channel_socket: None,
        egress_limit: egress,
        max_vcpus: None,
        max_memory_mib: None,
    }
}

fn tap_filters(tap: &str) -> String {
    let out = Command::new("tc")
        .args(["filter", "show", "dev", tap, "parent", "ffff:"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out
}

#[test]
fn outbound_bandwidth_on_a_qemu_tap() -> Result<()> {
    let pid = std::process::id();
    let work = tempfile::tempdir()?;
    let appliance: PathBuf = work.path().join("appliance");
    build_appliance(Path::new("/usr/bin/uname"), &appliance)?;
    let _libvirt = LibvirtSetup::ensure()?;
    let hv =
        LibvirtHypervisor::connect(QEMU_URI)?.with_owner(&format!("test-egress-qemu-{pid}"))?;
    let tap = format!("te{}", pid % 1_000_000);
    let limit = RateLimit {
        max_kbps: 8_000,
        min_kbps: None,
        burst_kbytes: Some(64),
    };
    let limited = spec(&appliance, &tap, Some(limit));

    match probe_tc_police() {
        Err(reason) => {
            eprintln!("tc police unavailable here: {reason}");
            match hv.define(&limited) {
                Err(HypervisorError::InvalidSpec { field, reason }) => {
                    assert_eq!(field, "egress_limit");
                    assert!(reason.contains("police"), "{reason}");
                }
                other => panic!("expected a refusal naming egress_limit, got {other:?}"),
            }
            assert!(
                hv.info(limited.id)?.is_none(),
                "a refused guest was defined"
            );

            // The premise: the same XML, defined behind the backend's back,
            // does not start.
            let conn = hv.connection()?;
            let xml = domain_xml(&limited, DomainFlavor::Qemu(QemuAccel::Tcg));
            let dom = conn.define_domain_xml(&xml)?;
            let started = dom.create();
            let _ = dom.destroy();
            let _ = dom.undefine();
            let _ = std::fs::remove_file(format!("/var/log/libvirt/qemu/{}.log", limited.name));
            let err = started.expect_err("a domain with <outbound> started without tc police");
            eprintln!("libvirt start with <outbound>: {err}");
        }
        Ok(()) => {
            hv.define(&limited)?;
            let _guard = GuestGuard {
                hv: &hv,
                id: limited.id,
                name: limited.name.clone(),
            };
            hv.start(limited.id)?;
            let filters = tap_filters(&tap);
            assert!(filters.contains("police"), "{filters}");
            let changed = RateLimit {
                max_kbps: 4_000,
                ..limit
            };
            assert_eq!(
                hv.set_egress_limit(limited.id, Some(changed))?,
                ResizeOutcome::Applied
            );
            let filters = tap_filters(&tap);
            assert!(filters.contains("4Mbit"), "{filters}");
        }
    }
    Ok(())
}
