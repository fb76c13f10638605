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

/// What the test harness set up on the host: daemons it started and system
/// entries it created. Shared by every test process through STATE_PATH,
/// so whichever test finishes last undoes it, whoever started it.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct HostState {
    daemon_pids: Vec<u32>,
    created_user: bool,
    created_group: bool,
    created_qemu_conf: bool,
}

/// Serializes setup and counts users across processes: each user holds a
/// shared flock for its lifetime; setup and teardown take it exclusively.
const LOCK_PATH: &str = "/run/measurelab-test-libvirt.lock";
const STATE_PATH: &str = "/run/measurelab-test-libvirt.json";

/// A test's use of qemu:///system. If no libvirtd answers, the first user
/// starts virtlogd + libvirtd (and creates the libvirt-qemu user and
/// qemu.conf if missing); the last user to drop stops and removes exactly
/// those. Tests of several engineers or binaries running at once therefore
/// never stop a libvirtd another test is still using (stopping virtlogd
/// under a running guest leaves its console file empty).
pub struct LibvirtSetup {
    lock: fs::File,
    /// Daemons this process started, so it can reap them if it is the one
    /// that stops them.
    children: Vec<Child>,
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
        let mut children = Vec::new();
        if LibvirtHypervisor::connect(QEMU_URI).is_err() {
            let mut state: HostState = fs::read_to_string(STATE_PATH)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            // Pids from a run that crashed are stale (and may be reused by
            // now); only what we start below is ours to stop.
            state.daemon_pids.clear();
            // libvirt's QEMU driver resolves its built-in user before reading
            // qemu.conf and refuses to start without it.
            if !Command::new("getent")
                .args(["group", "libvirt-qemu"])
                .stdout(Stdio::null())
                .status()?
                .success()
            {
                run(Command::new("groupadd").args(["-r", "libvirt-qemu"]))?;
                state.created_group = true;
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
                state.created_user = true;
            }
            if !Path::new(QEMU_CONF).exists() {
                // Run QEMU as root so it can read appliance files anywhere and
                // write the console log into the test's temp dir.
                fs::write(
                    QEMU_CONF,
                    "user = \"root\"\ngroup = \"root\"\nsecurity_driver = \"none\"\n",
                )?;
                state.created_qemu_conf = true;
            }
            for daemon in ["virtlogd", "libvirtd"] {
                let child = Command::new(daemon)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("start {daemon}: {e}"))?;
                state.daemon_pids.push(child.id());
                children.push(child);
            }
            fs::write(STATE_PATH, serde_json::to_vec(&state)?)?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while LibvirtHypervisor::connect(QEMU_URI).is_err() {
                if Instant::now() > deadline {
                    bail!("libvirtd started but {QEMU_URI} does not answer within 30 s");
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        // Converting to shared lets other tests in; they see libvirtd answer.
        flock(&lock, nix::fcntl::FlockArg::LockShared)?;
        Ok(LibvirtSetup { lock, children })
    }

    /// Stops what STATE_PATH records. Runs with the exclusive lock held.
    fn teardown(&mut self) {
        let Some(state) = fs::read_to_string(STATE_PATH)
            .ok()
            .and_then(|t| serde_json::from_str::<HostState>(&t).ok())
        else {
            return;
        };
        // libvirtd first (started last); SIGTERM lets it remove its sockets.
        for pid in state.daemon_pids.iter().rev() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while alive(*pid, &mut self.children) {
                if Instant::now() > deadline {
                    eprintln!("daemon {pid} ignored SIGTERM; killing it");
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                    std::thread::sleep(Duration::from_millis(100));
                    let _ = alive(*pid, &mut self.children);
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if state.created_qemu_conf {
            let _ = fs::remove_file(QEMU_CONF);
        }
        if state.created_user {
            let _ = Command::new("userdel").arg("libvirt-qemu").status();
        }
        // userdel usually takes the same-named primary group with it.
        if state.created_group
            && Command::new("getent")
                .args(["group", "libvirt-qemu"])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        {
            let _ = Command::new("groupdel").arg("libvirt-qemu").status();
        }
        let _ = fs::remove_file(STATE_PATH);
    }
}

/// Whether `pid` still runs; reaps it if it is our child.
fn alive(pid: u32, children: &mut [Child]) -> bool {
    if let Some(child) = children.iter_mut().find(|c| c.id() == pid) {
        return matches!(child.try_wait(), Ok(None));
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
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
