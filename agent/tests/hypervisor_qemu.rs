//! Boots the real `measurelab-tiny` appliance under QEMU (TCG) through the
//! libvirt driver at `qemu:///system`, with its NIC on a userspace OVS
//! bridge, and pings it from a namespace on the same VLAN.
//!
//! Needs root, qemu-system-x86, busybox-static, a Debian kernel (installed or
//! downloadable with apt), libvirt-daemon-driver-qemu and openvswitch-switch.
//! If no libvirtd answers on qemu:///system, the test starts virtlogd and
//! libvirtd itself and stops exactly those processes at the end; likewise it
//! creates the `libvirt-qemu` user and /etc/libvirt/qemu.conf only when they
//! are missing (libvirt-daemon-system, which normally provides them, is not
//! installed here) and removes only what it created.
//!
//! NIC attachment: `<virtualport type='openvswitch'/>` cannot work with the
//! lab's OVS. libvirt looks the bridge up as a kernel device in its own
//! namespace ("Cannot get interface MTU on 'br-int': No such device") and
//! then runs `ovs-vsctl` against the default socket, while our ovs-vswitchd
//! runs with a private run dir in its own namespace. So the guest uses
//! `NicAttach::TapOnly`: libvirt creates the tap, and the test - standing in
//! for the agent's OVS module - moves it to the switch namespace and adds it
//! to the bridge with the VLAN tag.
//!
//! A second test boots the appliance with a data disk (the VM's overlay of
//! the appliance's disk.img) and a swap disk, and checks from inside the
//! guest that `df /data` and `/proc/swaps` show `disk_mib` and `swap_mib`.
//!
//! The boot time (define -> init marker on the serial console) is printed,
//! not asserted: run with `--nocapture` to see it.

mod libvirt_setup;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use libvirt_setup::{
    build_appliance, run, wait_for_line, GuestGuard, LibvirtSetup, Result, BOOT_TIMEOUT, QEMU_URI,
};
use measurelab_agent::hypervisor::{
    BootImage, DiskConfig, GuestSpec, GuestState, Hypervisor, LibvirtHypervisor, NicAttach, NicSpec,
};
use measurelab_testbed::{attach_veth, Netns, OvsSandbox};
use uuid::Uuid;

macro_rules! bail {
    ($($arg:tt)*) => { return Err(format!($($arg)*).into()) };
}

#[test]
fn appliance_boots_under_qemu_and_answers_on_ovs() -> Result<()> {
    let pid = std::process::id();
    let work = tempfile::tempdir()?;
    let appliance: PathBuf = work.path().join("appliance");
    // A dynamically linked placeholder guest agent: proves the ldd closure.
    build_appliance(Path::new("/usr/bin/uname"), &appliance)?;

    let ovs = OvsSandbox::start("virtq")?;
    let bridge = format!("brq{}", pid % 100_000);
    ovs.add_bridge(&bridge)?;
    let peer = Netns::new(&format!("mlq-peer-{pid}"))?;
    attach_veth(
        &ovs,
        &bridge,
        &format!("pq{}", pid % 1_000_000),
        &peer,
        "eth0",
        "10.200.9.1/24",
        Some(109),
    )?;

    let _libvirt = LibvirtSetup::ensure()?;
    // Scoped, so other tests' orphan collection on the shared libvirtd
    // cannot destroy this guest.
    let hv = LibvirtHypervisor::connect(QEMU_URI)?
        .with_owner(&format!("test-hypervisor-qemu-{}", std::process::id()))?;
    let id = Uuid::new_v4();
    let tap = format!("tq{}", pid % 1_000_000);
    let console = work.path().join("console.log");
    let spec = GuestSpec {
        id,
        name: format!("mlq-{}", &id.simple().to_string()[..8]),
        platform_id: None,
        vcpus: 1,
        memory_mib: 256,
        disk_mib: 0,
        swap_mib: 0,
        boot: BootImage {
            kernel: appliance.join("vmlinuz"),
            initrd: appliance.join("initrd.img"),
            disk: None,
            extra_cmdline: "measurelab.guest_args=-a".into(),
            console_log: Some(console.clone()),
        },
        nic: Some(NicSpec {
            mac: "52:54:00:c8:09:02".into(),
            bridge: bridge.clone(),
            vlan_tag: Some(109),
            port_name: tap.clone(),
            ipv4_cidr: Some("10.200.9.2/24".into()),
            attach: NicAttach::TapOnly,
        }),
        channel_socket: None,
        egress_limit: None,
        max_vcpus: None,
        max_memory_mib: None,
    };

    let t_define = Instant::now();
    hv.define(&spec)?;
    let _guard = GuestGuard {
        hv: &hv,
        id,
        name: spec.name.clone(),
    };
    hv.start(id)?;
    let t_started = t_define.elapsed();

    // The agent's OVS module would do this through OVSDB; the switch lives
    // in its own namespace, so the tap moves there first.
    run(Command::new("ip").args(["link", "set", &tap, "netns", ovs.netns().name()]))?;
    ovs.netns().run(&["ip", "link", "set", &tap, "up"])?;
    ovs.vsctl(&["add-port", &bridge, &tap, "tag=109"])?;

    let init_line = wait_for_line(&console, "measurelab-tiny: init reached", BOOT_TIMEOUT)?;
    let t_init = t_define.elapsed();
    assert!(init_line.contains(&id.to_string()), "{init_line}");
    let eth0 = wait_for_line(&console, "measurelab-tiny: eth0", BOOT_TIMEOUT)?;
    assert!(eth0.contains("52:54:00:c8:09:02 10.200.9.2/24"), "{eth0}");
    wait_for_line(&console, "measurelab-tiny: guest started", BOOT_TIMEOUT)?;
    let t_guest = t_define.elapsed();
    // The placeholder guest agent (uname -a) ran with its shared libraries.
    let uname = wait_for_line(&console, "GNU/Linux", Duration::from_secs(30))?;
    assert!(uname.starts_with("Linux"), "{uname}");

    let info = hv.info(id)?.expect("guest listed");
    assert_eq!(info.state, GuestState::Running);
    assert!(hv.list_owned()?.iter().any(|g| g.id == id));

    // Real packets: ARP + ICMP through the userspace datapath on VLAN 109.
    let ping_deadline = Instant::now() + Duration::from_secs(60);
    let t_ping = loop {
        let ok = peer
            .command("ping")
            .args(["-c", "1", "-W", "1", "10.200.9.2"])
            .stdout(Stdio::null())
            .status()?
            .success();
        if ok {
            break t_define.elapsed();
        }
        if Instant::now() > ping_deadline {
            bail!("guest 10.200.9.2 does not answer ping through OVS");
        }
    };

    // Suspend really stops the guest: no ping answers while paused.
    hv.pause(id)?;
    assert_eq!(hv.info(id)?.unwrap().state, GuestState::Paused);
    let paused_ping = peer
        .command("ping")
        .args(["-c", "1", "-W", "1", "10.200.9.2"])
        .stdout(Stdio::null())
        .status()?
        .success();
    assert!(!paused_ping, "a paused guest answered ping");
    hv.resume(id)?;

    println!(
        "measurelab-tiny under QEMU/TCG: define+start {:.2} s, init marker {:.2} s, guest started {:.2} s, first ping {:.2} s (from define)",
        t_started.as_secs_f64(),
        t_init.as_secs_f64(),
        t_guest.as_secs_f64(),
        t_ping.as_secs_f64()
    );

    hv.undefine(id)?;
    assert!(hv.info(id)?.is_none());
    Ok(())
}

/// Stands in for the guest agent: once per boot, counts boots on /data
/// (which only a persistent disk remembers) and prints what the guest sees
/// of its data disk and swap.
const DISK_PROBE: &str = r#"#!/bin/sh
[ -e /run/probed ] && exec sleep 100000
touch /run/probed
n=$(cat /data/boots 2>/dev/null || echo 0)
n=$((n + 1))
echo "$n" > /data/boots
sync
echo "probe: boot $n"
df -k /data | sed -n '2s/^/probe: df /p'
sed 's/^/probe: swaps /' /proc/swaps
exec sleep 100000
"#;

/// The `index`th whitespace-separated field of the first console line that
/// starts (after any prefix) with `marker`, as a number.
fn console_number(console: &Path, marker: &str, index: usize) -> Result<u64> {
    let line = wait_for_line(console, marker, BOOT_TIMEOUT)?;
    let fields: Vec<&str> = line[line.find(marker).unwrap_or(0) + marker.len()..]
        .split_whitespace()
        .collect();
    fields
        .get(index)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| format!("field {index} of {line:?} is not a number").into())
}

fn sha256(path: &Path) -> Result<String> {
    let out = run(Command::new("sha256sum").arg(path))?;
    Ok(out
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// A VM with disk_mib and swap_mib sees exactly that much disk on /data
/// (df) and swap (/proc/swaps) from inside, keeps its data across a restart
/// of the domain, and never writes to the appliance's image.
#[test]
fn guest_sees_its_disk_and_swap_sizes() -> Result<()> {
    const DISK_MIB: u64 = 64;
    const SWAP_MIB: u64 = 32;
    let work = tempfile::tempdir()?;
    let root = std::fs::canonicalize(work.path())?;
    let appliances = root.join("appliances");
    let tiny = appliances.join("measurelab-tiny");
    let probe = root.join("probe.sh");
    std::fs::write(&probe, DISK_PROBE)?;
    std::fs::set_permissions(&probe, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let manifest = build_appliance(&probe, &tiny)?;
    assert_eq!(manifest["disk"], "disk.img");
    let base = tiny.join("disk.img");
    let base_hash = sha256(&base)?;

    let _libvirt = LibvirtSetup::ensure()?;
    let hv = LibvirtHypervisor::connect(QEMU_URI)?
        .with_owner(&format!("test-qemu-disks-{}", std::process::id()))?
        .with_disks(DiskConfig {
            appliance_dir: appliances.clone(),
            guests_dir: root.join("guests"),
        });
    let id = Uuid::new_v4();
    let console = root.join("console.log");
    let spec = GuestSpec {
        id,
        name: format!("mld-{}", &id.simple().to_string()[..8]),
        platform_id: None,
        vcpus: 1,
        memory_mib: 256,
        disk_mib: DISK_MIB,
        swap_mib: SWAP_MIB,
        boot: BootImage {
            kernel: tiny.join("vmlinuz"),
            initrd: tiny.join("initrd.img"),
            disk: Some(base.clone()),
            extra_cmdline: String::new(),
            console_log: Some(console.clone()),
        },
        nic: None,
        channel_socket: None,
        egress_limit: None,
        max_vcpus: None,
        max_memory_mib: None,
    };
    let t0 = Instant::now();
    hv.define(&spec)?;
    let _guard = GuestGuard {
        hv: &hv,
        id,
        name: spec.name.clone(),
    };
    hv.start(id)?;

    // busybox df -k: Filesystem 1K-blocks Used Available Use% Mounted-on.
    let data_kib = console_number(&console, "probe: df ", 1)?;
    let boot = t0.elapsed();
    assert_eq!(
        data_kib,
        DISK_MIB * 1024,
        "df /data inside the guest\n{}",
        std::fs::read_to_string(&console).unwrap_or_default()
    );
    // /proc/swaps: Filename Type Size(KiB) Used Priority; the first page
    // holds mkswap's header and is not swap space.
    let swap_kib = console_number(&console, "probe: swaps /dev/vdb ", 1)?;
    assert_eq!(
        swap_kib,
        SWAP_MIB * 1024 - 4,
        "/proc/swaps inside the guest"
    );
    wait_for_line(&console, "probe: boot 1", BOOT_TIMEOUT)?;

    // Power-cycle the domain: /data is the same disk, not a fresh overlay.
    hv.stop(id)?;
    hv.start(id)?;
    wait_for_line(&console, "probe: boot 2", BOOT_TIMEOUT)?;
    println!(
        "measurelab-tiny with a {DISK_MIB} MiB overlay and {SWAP_MIB} MiB swap: df at {:.1} s, second boot seen at {:.1} s (from define)",
        boot.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );

    hv.undefine(id)?;
    assert!(
        !root
            .join("guests")
            .join(id.to_string())
            .join("disk.qcow2")
            .exists(),
        "overlay left after undefine"
    );
    assert_eq!(sha256(&base)?, base_hash, "the appliance image changed");
    Ok(())
}
