//! libvirt daemons and helpers shared by the QEMU/TCG tests
//! (`agent/tests/hypervisor_qemu.rs`, `guest/tests/qemu_guest.rs`, which
//! includes this file by path because only the guest crate's tests can name
//! the guest agent binary).
#![allow(dead_code)]

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use measurelab_agent::hypervisor::{Hypervisor, LibvirtHypervisor};
use measurelab_agent::system_libvirtd::{self, StartedLibvirtd};
use uuid::Uuid;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, BoxError>;

macro_rules! bail {
    ($($arg:tt)*) => { return Err(format!($($arg)*).into()) };
}

pub const QEMU_URI: &str = system_libvirtd::QEMU_SYSTEM_URI;
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// Serializes setup and counts users across processes: each user holds a
/// shared flock for its lifetime; setup and teardown take it exclusively.
const LOCK_PATH: &str = "/run/measurelab-test-libvirt.lock";
/// What the first user started (a [`StartedLibvirtd`]), so that whichever
/// test finishes last undoes it, whoever started it.
const STATE_PATH: &str = "/run/measurelab-test-libvirt.json";
const DAEMON_LOG: &str = "/run/measurelab-test-libvirtd.log";

/// A test's use of qemu:///system. If no libvirtd answers, the first user
/// starts it through the product's own [`system_libvirtd`] (as `lab up
/// --hypervisor qemu` does); the last user to drop undoes exactly that.
/// Tests of several engineers or binaries running at once therefore never
/// stop a libvirtd another test is still using (stopping virtlogd under a
/// running guest leaves its console file empty).
pub struct LibvirtSetup {
    lock: fs::File,
}

#[allow(deprecated)] // nix::fcntl::flock: the RAII Flock does not fit a lock held in a struct and converted.
fn flock(file: &fs::File, arg: nix::fcntl::FlockArg) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    nix::fcntl::flock(file.as_raw_fd(), arg)
}

impl LibvirtSetup {
    pub fn ensure() -> Result<LibvirtSetup> {
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_PATH)?;
        flock(&lock, nix::fcntl::FlockArg::LockExclusive)?;
        // A record left by a run that crashed is stale (its pids may be
        // reused by now): only what is started below is ours to stop.
        if let Some(started) = system_libvirtd::start_for_qemu(Path::new(DAEMON_LOG))? {
            fs::write(STATE_PATH, serde_json::to_vec(&started)?)?;
        }
        // Converting to shared lets other tests in; they see libvirtd answer.
        flock(&lock, nix::fcntl::FlockArg::LockShared)?;
        Ok(LibvirtSetup { lock })
    }

    /// Undoes what STATE_PATH records. Runs with the exclusive lock held.
    fn teardown(&mut self) {
        let Some(started) = fs::read_to_string(STATE_PATH)
            .ok()
            .and_then(|t| serde_json::from_str::<StartedLibvirtd>(&t).ok())
        else {
            return;
        };
        started.undo();
        let _ = fs::remove_file(STATE_PATH);
    }
}

impl Drop for LibvirtSetup {
    fn drop(&mut self) {
        use nix::fcntl::FlockArg;
        // Last user? Converting shared -> exclusive succeeds only if no other
        // test holds the lock. If two finish at once, both may fail the
        // conversion; each then drops its lock and tries once more, so one
        // of them still gets it.
        let last = flock(&self.lock, FlockArg::LockExclusiveNonblock).is_ok() || {
            let _ = flock(&self.lock, FlockArg::Unlock);
            flock(&self.lock, FlockArg::LockExclusiveNonblock).is_ok()
        };
        if last {
            self.teardown();
        }
        let _ = flock(&self.lock, FlockArg::Unlock);
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
        // The emulated serial port writes a byte at a time, so the file can
        // end in half a line ("eth0 52:54:00:c8:"); match finished lines only.
        let finished = text.rfind('\n').map_or("", |end| &text[..end]);
        if let Some(line) = finished.lines().find(|l| l.contains(needle)) {
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
