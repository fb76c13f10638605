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
//! The boot time (define -> init marker on the serial console) is printed,
//! not asserted: run with `--nocapture` to see it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use measurelab_agent::hypervisor::{
    BootImage, GuestSpec, GuestState, Hypervisor, LibvirtHypervisor, NicAttach, NicSpec,
};
use measurelab_testbed::{attach_veth, Netns, OvsSandbox};
use uuid::Uuid;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T> = std::result::Result<T, BoxError>;

macro_rules! bail {
    ($($arg:tt)*) => { return Err(format!($($arg)*).into()) };
}

const QEMU_URI: &str = "qemu:///system";
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const QEMU_CONF: &str = "/etc/libvirt/qemu.conf";

/// Daemons and system entries this test created; undone on drop, in reverse.
#[derive(Default)]
struct LibvirtSetup {
    daemons: Vec<(String, Child)>,
    created_user: bool,
    created_group: bool,
    created_qemu_conf: bool,
}

impl LibvirtSetup {
    fn ensure() -> Result<LibvirtSetup> {
        let mut setup = LibvirtSetup::default();
        if LibvirtHypervisor::connect(QEMU_URI).is_ok() {
            return Ok(setup);
        }
        // libvirt's QEMU driver resolves its built-in user before reading
        // qemu.conf and refuses to start without it.
        if !Command::new("getent")
            .args(["group", "libvirt-qemu"])
            .stdout(Stdio::null())
            .status()?
            .success()
        {
            run(Command::new("groupadd").args(["-r", "libvirt-qemu"]))?;
            setup.created_group = true;
        }
        if !Command::new("id")
            .arg("libvirt-qemu")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?
            .success()
        {
            run(Command::new("useradd").args([
                "-r",
                "-g",
                "libvirt-qemu",
                "-d",
                "/var/lib/libvirt",
                "-s",
                "/usr/sbin/nologin",
                "libvirt-qemu",
            ]))?;
            setup.created_user = true;
        }
        if !Path::new(QEMU_CONF).exists() {
            // Run QEMU as root so it can read appliance files anywhere and
            // write the console log into the test's temp dir.
            fs::write(
                QEMU_CONF,
                "user = \"root\"\ngroup = \"root\"\nsecurity_driver = \"none\"\n",
            )?;
            setup.created_qemu_conf = true;
        }
        for daemon in ["virtlogd", "libvirtd"] {
            let child = Command::new(daemon)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("start {daemon}: {e}"))?;
            setup.daemons.push((daemon.to_string(), child));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while LibvirtHypervisor::connect(QEMU_URI).is_err() {
            if Instant::now() > deadline {
                bail!("libvirtd started but {QEMU_URI} does not answer within 30 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(setup)
    }
}

impl Drop for LibvirtSetup {
    fn drop(&mut self) {
        while let Some((name, mut child)) = self.daemons.pop() {
            // SIGTERM lets libvirtd remove its sockets and pid file.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    _ if Instant::now() > deadline => {
                        eprintln!("{name} ignored SIGTERM; killing it");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        if self.created_qemu_conf {
            let _ = fs::remove_file(QEMU_CONF);
        }
        if self.created_user {
            let _ = Command::new("userdel").arg("libvirt-qemu").status();
        }
        // userdel usually takes the same-named primary group with it.
        if self.created_group
            && Command::new("getent")
                .args(["group", "libvirt-qemu"])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        {
            let _ = Command::new("groupdel").arg("libvirt-qemu").status();
        }
    }
}

/// Undefines the guest even if an assertion failed.
struct GuestGuard<'a> {
    hv: &'a LibvirtHypervisor,
    id: Uuid,
    name: String,
}

impl Drop for GuestGuard<'_> {
    fn drop(&mut self) {
        let _ = self.hv.undefine(self.id);
        // virtlogd's per-domain log would otherwise pile up across runs.
        let _ = fs::remove_file(format!("/var/log/libvirt/qemu/{}.log", self.name));
    }
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn build_appliance(out: &Path) -> Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-appliance.sh");
    // A dynamically linked placeholder guest agent: proves the ldd closure.
    run(Command::new("bash")
        .arg(script)
        .arg("/usr/bin/uname")
        .arg(out))?;
    let manifest: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("manifest.json"))?)?;
    assert_eq!(manifest["name"], "measurelab-tiny");
    for (file, key) in [
        ("vmlinuz", "kernel_sha256"),
        ("initrd.img", "initrd_sha256"),
    ] {
        let sum = run(Command::new("sha256sum").arg(out.join(file)))?;
        assert_eq!(
            sum.split_whitespace().next(),
            manifest[key].as_str(),
            "{key} in manifest.json"
        );
    }
    Ok(())
}

fn wait_for_line(log: &Path, needle: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return Ok(line.to_string());
        }
        if Instant::now() > deadline {
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            bail!(
                "no {needle:?} on the console within {timeout:?}; last lines:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn appliance_boots_under_qemu_and_answers_on_ovs() -> Result<()> {
    let pid = std::process::id();
    let work = tempfile::tempdir()?;
    let appliance: PathBuf = work.path().join("appliance");
    build_appliance(&appliance)?;

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
    let hv = LibvirtHypervisor::connect(QEMU_URI)?;
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
