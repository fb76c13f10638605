//! libvirt daemons and helpers shared by the QEMU/TCG tests
//! (`agent/tests/hypervisor_qemu.rs`, `guest/tests/qemu_guest.rs`, which
//! includes this file by path because only the guest crate's tests can name
//! the guest agent binary).
#![allow(dead_code)]

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use measurelab_agent::hypervisor::{Hypervisor, LibvirtHypervisor};
use uuid::Uuid;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, BoxError>;

macro_rules! bail {
    ($($arg:tt)*) => { return Err(format!($($arg)*).into()) };
}

pub const QEMU_URI: &str = "qemu:///system";
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const QEMU_CONF: &str = "/etc/libvirt/qemu.conf";

/// Daemons and system entries this test created; undone on drop, in reverse.
#[derive(Default)]
pub struct LibvirtSetup {
    daemons: Vec<(String, Child)>,
    created_user: bool,
    created_group: bool,
    created_qemu_conf: bool,
}

impl LibvirtSetup {
    pub fn ensure() -> Result<LibvirtSetup> {
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
pub struct GuestGuard<'a> {
    pub hv: &'a LibvirtHypervisor,
    pub id: Uuid,
    pub name: String,
}

impl Drop for GuestGuard<'_> {
    fn drop(&mut self) {
        let _ = self.hv.undefine(self.id);
        // virtlogd's per-domain log would otherwise pile up across runs.
        let _ = fs::remove_file(format!("/var/log/libvirt/qemu/{}.log", self.name));
    }
}

pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Builds measurelab-tiny around `guest_binary` into `out` and checks the
/// manifest's checksums; returns the manifest.
pub fn build_appliance(guest_binary: &Path, out: &Path) -> Result<serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-appliance.sh");
    run(Command::new("bash").arg(script).arg(guest_binary).arg(out))?;
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
    Ok(manifest)
}

pub fn wait_for_line(log: &Path, needle: &str, timeout: Duration) -> Result<String> {
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
