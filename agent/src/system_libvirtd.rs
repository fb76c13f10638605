//! Starting (and later stopping) a system libvirtd for QEMU guests on a
//! host that has the packages but no running daemon: what `measurelab lab up
//! --hypervisor qemu` and the QEMU tests do, in one place.
//!
//! What it takes here (see DESIGN.md, "verified machine facts"):
//! - libvirt's QEMU driver resolves its built-in `libvirt-qemu` user before
//!   it reads qemu.conf, and refuses to load without it;
//! - a `qemu.conf` that runs QEMU as root without a security driver, so QEMU
//!   can read appliance files and write console logs anywhere (a lab's or a
//!   test's directory);
//! - `virtlogd` (QEMU's console goes through it), then `libvirtd`.
//!
//! [`start_for_qemu`] does only what is missing and returns a
//! [`StartedLibvirtd`] naming exactly what it did; [`StartedLibvirtd::undo`]
//! reverses exactly that. A libvirtd that already answered is never touched.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::hypervisor::LibvirtHypervisor;

/// The libvirt URI of QEMU guests run by the system libvirtd.
pub const QEMU_SYSTEM_URI: &str = "qemu:///system";
const QEMU_CONF: &str = "/etc/libvirt/qemu.conf";
const QEMU_USER: &str = "libvirt-qemu";
/// In start order; stopped in reverse.
const DAEMONS: [&str; 2] = ["virtlogd", "libvirtd"];
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Why the system libvirtd could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SystemLibvirtdError {
    /// A host command (groupadd, useradd, a daemon) failed.
    #[error("{command}: {detail}")]
    Command {
        /// The command as run.
        command: String,
        /// Its error output or the spawn error.
        detail: String,
    },
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The daemons started but the URI never answered.
    #[error("libvirtd started but {uri} did not answer within {}s; see {}", timeout.as_secs(), log.display())]
    NoAnswer {
        /// The URI polled.
        uri: &'static str,
        /// How long it was polled.
        timeout: Duration,
        /// Where the daemons' output went.
        log: PathBuf,
    },
}

/// A daemon this module started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartedDaemon {
    /// Program name (`virtlogd`, `libvirtd`): checked against the pid's
    /// command line before stopping it, so a recycled pid is left alone.
    pub program: String,
    /// Its pid.
    pub pid: u32,
}

/// What [`start_for_qemu`] did to the host; serialisable so that another
/// process (`lab down`, the last test) can undo it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartedLibvirtd {
    /// Daemons started, in start order.
    pub daemons: Vec<StartedDaemon>,
    /// The `libvirt-qemu` group was created.
    pub created_group: bool,
    /// The `libvirt-qemu` user was created.
    pub created_user: bool,
    /// /etc/libvirt/qemu.conf was written (it did not exist).
    pub created_qemu_conf: bool,
}

/// True when `qemu:///system` answers now.
pub fn qemu_system_answers() -> bool {
    LibvirtHypervisor::connect(QEMU_SYSTEM_URI).is_ok()
}

/// Makes `qemu:///system` answer. Returns `None` when it already did
/// (nothing was touched), else what was created and started. The daemons'
/// output is appended to `log`. On failure, whatever was done is undone.
pub fn start_for_qemu(log: &Path) -> Result<Option<StartedLibvirtd>, SystemLibvirtdError> {
    if qemu_system_answers() {
        return Ok(None);
    }
    let mut started = StartedLibvirtd::default();
    match start_missing(&mut started, log) {
        Ok(()) => Ok(Some(started)),
        Err(e) => {
            started.undo();
            Err(e)
        }
    }
}

fn start_missing(started: &mut StartedLibvirtd, log: &Path) -> Result<(), SystemLibvirtdError> {
    if !succeeds(Command::new("getent").args(["group", QEMU_USER])) {
        run(Command::new("groupadd").args(["-r", QEMU_USER]))?;
        started.created_group = true;
    }
    if !succeeds(Command::new("id").arg(QEMU_USER)) {
        run(Command::new("useradd").args([
            "-r",
            "-g",
            QEMU_USER,
            "-d",
            "/var/lib/libvirt",
            "-s",
            "/usr/sbin/nologin",
            QEMU_USER,
        ]))?;
        started.created_user = true;
    }
    if !Path::new(QEMU_CONF).exists() {
        // Root without a security driver: QEMU reads appliance files and
        // writes console logs in directories libvirt does not know about.
        fs::write(
            QEMU_CONF,
            "user = \"root\"\ngroup = \"root\"\nsecurity_driver = \"none\"\n",
        )
        .map_err(|source| SystemLibvirtdError::Io {
            path: QEMU_CONF.into(),
            source,
        })?;
        started.created_qemu_conf = true;
    }
    let open_log = || {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| SystemLibvirtdError::Io {
                path: log.to_path_buf(),
                source,
            })
    };
    for program in DAEMONS {
        use std::os::unix::process::CommandExt;
        let child = Command::new(program)
            .stdin(Stdio::null())
            .stdout(open_log()?)
            .stderr(open_log()?)
            // Its own process group: a Ctrl-C meant for the starter must not
            // take the daemon (and every running guest) down with it.
            .process_group(0)
            .spawn()
            .map_err(|e| SystemLibvirtdError::Command {
                command: program.into(),
                detail: e.to_string(),
            })?;
        started.daemons.push(StartedDaemon {
            program: program.into(),
            pid: child.id(),
        });
    }
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    while !qemu_system_answers() {
        if Instant::now() > deadline {
            return Err(SystemLibvirtdError::NoAnswer {
                uri: QEMU_SYSTEM_URI,
                timeout: ANSWER_TIMEOUT,
                log: log.to_path_buf(),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

impl StartedLibvirtd {
    /// True when nothing was started or created.
    pub fn is_empty(&self) -> bool {
        *self == StartedLibvirtd::default()
    }

    /// Stops the daemons (libvirtd first, SIGTERM so it removes its sockets,
    /// SIGKILL after a grace period) and removes what was created. Returns
    /// one line per thing undone.
    pub fn undo(&self) -> Vec<String> {
        let mut undone = Vec::new();
        for daemon in self.daemons.iter().rev() {
            if stop_daemon(daemon) {
                undone.push(format!("{} (pid {})", daemon.program, daemon.pid));
            }
        }
        if self.created_qemu_conf && fs::remove_file(QEMU_CONF).is_ok() {
            undone.push(QEMU_CONF.into());
        }
        if self.created_user && succeeds(Command::new("userdel").arg(QEMU_USER)) {
            undone.push(format!("user {QEMU_USER}"));
        }
        // userdel usually takes the same-named primary group with it.
        if self.created_group
            && succeeds(Command::new("getent").args(["group", QEMU_USER]))
            && succeeds(Command::new("groupdel").arg(QEMU_USER))
        {
            undone.push(format!("group {QEMU_USER}"));
        }
        undone
    }
}

/// Stops one daemon if its pid still runs that program; true if it did.
fn stop_daemon(daemon: &StartedDaemon) -> bool {
    use nix::sys::signal::{kill, Signal};
    let Ok(raw) = i32::try_from(daemon.pid) else {
        return false;
    };
    if !runs_program(daemon.pid, &daemon.program) {
        return false;
    }
    let pid = nix::unistd::Pid::from_raw(raw);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + STOP_GRACE;
    while runs_program(daemon.pid, &daemon.program) {
        if Instant::now() > deadline {
            let _ = kill(pid, Signal::SIGKILL);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// True while `pid` is a live (not zombie) process running `program`.
fn runs_program(pid: u32, program: &str) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.split_whitespace().next());
    if matches!(state, Some("Z") | Some("X") | None) {
        return false;
    }
    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|raw| {
        let argv0 = raw.split(|b| *b == 0).next().unwrap_or_default();
        Path::new(&*String::from_utf8_lossy(argv0))
            .file_name()
            .is_some_and(|name| name == program)
    })
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(cmd: &mut Command) -> Result<(), SystemLibvirtdError> {
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| SystemLibvirtdError::Command {
        command: command.clone(),
        detail: e.to_string(),
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(SystemLibvirtdError::Command {
            command,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recycled_pid_running_another_program_is_not_ours() {
        let me = std::process::id();
        assert!(!runs_program(me, "libvirtd"));
        let exe = std::env::current_exe().unwrap();
        let name = exe.file_name().unwrap().to_string_lossy().into_owned();
        assert!(runs_program(me, &name));
        // Undoing a record whose daemon is now someone else stops nothing.
        let record = StartedLibvirtd {
            daemons: vec![StartedDaemon {
                program: "libvirtd".into(),
                pid: me,
            }],
            ..Default::default()
        };
        assert!(record.undo().is_empty());
    }

    #[test]
    fn an_empty_record_undoes_nothing() {
        assert!(StartedLibvirtd::default().is_empty());
        assert!(StartedLibvirtd::default().undo().is_empty());
    }
}
