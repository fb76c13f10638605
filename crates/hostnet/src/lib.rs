//! Host networking for the node agent, the `measurelab lab` command and the
//! test bed: named network namespaces, links and veth pairs through
//! iproute2 (`ip`), tx checksum offload through `ethtool`, and running code
//! inside a namespace on a thread of its own.
//!
//! # Layout
//! - [`run`], [`succeeds`], [`describe`]: running a tool, its stderr in the error.
//! - [`ip`], [`ip_in`]: `ip ...` and `ip -n NS ...`.
//! - [`netns_list`], [`netns_exists`], [`netns_ensure`], [`netns_pids`],
//!   [`netns_delete`]: named namespaces (`/run/netns`).
//! - [`process_start_time`]: a process's identity across pid reuse.
//! - [`link_exists`], [`link_show`], [`link_flags`], [`veth_add`],
//!   [`tx_offload_off`]: links.
//! - [`command_in`]: any program inside a namespace (`ip netns exec`).
//! - [`in_netns`], [`in_new_netns`]: a closure run inside a namespace.
//!
//! A namespace or link argument of `None` means the caller's own namespace.
//! Everything needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN).
#![warn(missing_docs)]

use std::fs::File;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

use nix::sched::CloneFlags;

/// Where `ip netns add` mounts named namespaces.
const NETNS_RUN_DIR: &str = "/run/netns";

/// Why a host networking step failed.
#[derive(Debug, thiserror::Error)]
pub enum HostnetError {
    /// The tool could not be started (not installed, no permission).
    #[error("cannot run {command}: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The tool ran and exited non-zero.
    #[error("{command} failed ({status}): {detail}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its stderr, or its stdout when stderr was empty, trimmed.
        detail: String,
    },
    /// A namespace name that `ip netns` cannot hold.
    #[error("{name:?} is not a network namespace name (1..=64 bytes, no '/')")]
    BadNamespaceName {
        /// The name given.
        name: String,
    },
    /// Entering or creating a namespace failed.
    #[error("cannot {action} network namespace {name}: {source}")]
    Namespace {
        /// What was tried: "open", "enter" or "create".
        action: &'static str,
        /// The namespace (`new` for an anonymous one).
        name: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The thread that held the namespace panicked.
    #[error("the thread inside network namespace {name} panicked")]
    ThreadPanicked {
        /// The namespace.
        name: String,
    },
}

/// Runs `cmd` to completion with no stdin; returns its stdout. A non-zero
/// exit is an error carrying the command line and stderr.
pub fn run(cmd: &mut Command) -> Result<String, HostnetError> {
    let command = describe(cmd);
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| HostnetError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        let detail = if stderr.is_empty() {
            String::from_utf8_lossy(&output.stdout).trim().to_string()
        } else {
            stderr
        };
        return Err(HostnetError::Failed {
            command,
            status: output.status,
            detail,
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `cmd` silently and tells only whether it succeeded (existence checks).
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `program args...` as one line for messages.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program().to_string_lossy().into_owned())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `ip ARGS`, in namespace `ns` (`ip -n NS ARGS`) when given.
fn ip_command(ns: Option<&str>) -> Command {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.arg("-n").arg(ns);
    }
    cmd
}

/// `ip ARGS` in the caller's namespace; returns stdout.
pub fn ip(args: &[&str]) -> Result<String, HostnetError> {
    run(ip_command(None).args(args))
}

/// `ip -n NS ARGS`; returns stdout.
pub fn ip_in(ns: &str, args: &[&str]) -> Result<String, HostnetError> {
    run(ip_command(Some(ns)).args(args))
}

/// Named namespaces, as `ip netns list` shows them (empty if `ip` fails).
pub fn netns_list() -> Vec<String> {
    // Lines read "name" or "name (id: N)" once the namespace has an id.
    ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// True when namespace `name` is mounted under `/run/netns`.
///
/// Not `/sys` or `ip netns list` alone: the caller may itself run inside
/// another namespace with the host's `/run` (under `nsenter --net`).
pub fn netns_exists(name: &str) -> bool {
    Path::new(NETNS_RUN_DIR).join(name).exists()
}

/// Creates namespace `name` unless it exists, and brings its loopback up.
pub fn netns_ensure(name: &str) -> Result<(), HostnetError> {
    check_netns_name(name)?;
    if !netns_exists(name) {
        ip(&["netns", "add", name])?;
    }
    ip_in(name, &["link", "set", "lo", "up"]).map(drop)
}

/// Pids of the processes inside namespace `name` (empty if it has none or
/// does not exist).
pub fn netns_pids(name: &str) -> Vec<i32> {
    ip(&["netns", "pids", name])
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Start time (clock ticks since boot) of a live, non-zombie process: with
/// the pid, it names one process, so a record of a daemon started earlier
/// never matches an unrelated process that reused its pid.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces: parse after its ')'.
    let after_comm = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // fields[0] is field 3 (state); start time is field 22.
    if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Deletes namespace `name` (`ip netns del`); its veth ends go with it, and
/// their peers too. Processes still inside keep the namespace alive,
/// nameless: stop them first (see [`netns_pids`]).
pub fn netns_delete(name: &str) -> Result<(), HostnetError> {
    ip(&["netns", "del", name]).map(drop)
}

fn check_netns_name(name: &str) -> Result<(), HostnetError> {
    if name.is_empty() || name.contains('/') || name.len() > 64 {
        return Err(HostnetError::BadNamespaceName {
            name: name.to_string(),
        });
    }
    Ok(())
}

/// True when link `link` exists in namespace `ns` (or the caller's).
pub fn link_exists(ns: Option<&str>, link: &str) -> bool {
    succeeds(ip_command(ns).args(["link", "show", "dev", link]))
}

/// Link `link` in namespace `ns` (or the caller's) as `ip -o link show`
/// prints it, or `None` when `ip` reports no such device. Unlike
/// [`link_exists`], any other failure (a missing namespace, no `ip`) is an
/// error, so a caller never mistakes a broken lookup for an absent link.
pub fn link_show(ns: Option<&str>, link: &str) -> Result<Option<String>, HostnetError> {
    match run(ip_command(ns).args(["-o", "link", "show", "dev", link])) {
        Ok(line) => Ok(Some(line)),
        Err(HostnetError::Failed { detail, .. })
            if detail.contains("does not exist") || detail.contains("Cannot find device") =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The `<FLAGS>` of a [`link_show`] line, e.g. `["LOOPBACK", "UP"]`;
/// `None` when the line has none.
pub fn link_flags(line: &str) -> Option<Vec<&str>> {
    let (_, rest) = line.split_once('<')?;
    let (flags, _) = rest.split_once('>')?;
    Some(flags.split(',').collect())
}

/// Creates veth pair `name` (in `ns`) and `peer` (in `peer_ns`; with `None`
/// it stays beside `name`). Both ends stay down.
pub fn veth_add(
    ns: Option<&str>,
    name: &str,
    peer: &str,
    peer_ns: Option<&str>,
) -> Result<(), HostnetError> {
    let mut cmd = ip_command(ns);
    cmd.args(["link", "add", name, "type", "veth", "peer", "name", peer]);
    if let Some(peer_ns) = peer_ns {
        cmd.args(["netns", peer_ns]);
    }
    run(&mut cmd).map(drop)
}

/// Turns off tx checksum offload on `link`: on a veth or a userspace OVS
/// tap, UDP otherwise leaves with a partial checksum that nothing fixes, and
/// receivers drop it.
pub fn tx_offload_off(ns: Option<&str>, link: &str) -> Result<(), HostnetError> {
    run(command_in(ns, "ethtool").args(["-K", link, "tx", "off"])).map(drop)
}

/// A command that runs `program` in namespace `ns` (`ip netns exec`, which
/// execs the program: the child's pid is the program's own), or plainly.
pub fn command_in(ns: Option<&str>, program: &str) -> Command {
    match ns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns, program]);
            cmd
        }
        None => Command::new(program),
    }
}

/// Runs `work` on a new thread inside namespace `name` and returns its
/// result. Only that thread changes namespace (setns moves the calling
/// thread alone), so the caller's threads, an async runtime's included,
/// stay where they are; sockets `work` opens stay in `name`.
pub fn in_netns<T: Send>(name: &str, work: impl FnOnce() -> T + Send) -> Result<T, HostnetError> {
    check_netns_name(name)?;
    let path = Path::new(NETNS_RUN_DIR).join(name);
    let target = File::open(&path).map_err(|source| HostnetError::Namespace {
        action: "open",
        name: name.to_string(),
        source,
    })?;
    on_own_thread(name, move || {
        nix::sched::setns(&target, CloneFlags::CLONE_NEWNET).map_err(|errno| {
            HostnetError::Namespace {
                action: "enter",
                name: name.to_string(),
                source: errno.into(),
            }
        })?;
        Ok(work())
    })
}

/// Runs `work` on a new thread inside a new, anonymous namespace, which the
/// kernel frees when the thread ends. Also tells whether this process may
/// create namespaces at all (`in_new_netns(|| ())`).
pub fn in_new_netns<T: Send>(work: impl FnOnce() -> T + Send) -> Result<T, HostnetError> {
    on_own_thread("new", move || {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|errno| HostnetError::Namespace {
            action: "create",
            name: "new".to_string(),
            source: errno.into(),
        })?;
        Ok(work())
    })
}

fn on_own_thread<T: Send>(
    name: &str,
    work: impl FnOnce() -> Result<T, HostnetError> + Send,
) -> Result<T, HostnetError> {
    std::thread::scope(|scope| {
        scope.spawn(work).join().unwrap_or_else(|_| {
            Err(HostnetError::ThreadPanicked {
                name: name.to_string(),
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_joins_program_and_arguments() {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", "lab a", "link"]);
        assert_eq!(describe(&cmd), "ip -n lab a link");
        let inside = command_in(Some("lab"), "ethtool");
        assert_eq!(describe(&inside), "ip netns exec lab ethtool");
        assert_eq!(describe(&command_in(None, "ethtool")), "ethtool");
    }

    #[test]
    fn a_failing_tool_reports_its_stderr_or_else_its_stdout() {
        let err =
            run(Command::new("sh").args(["-c", "echo out; echo oops >&2; exit 3"])).unwrap_err();
        assert!(
            matches!(&err, HostnetError::Failed { detail, .. } if detail == "oops"),
            "{err}"
        );
        let err = run(Command::new("sh").args(["-c", "echo only-out; exit 1"])).unwrap_err();
        assert!(
            matches!(&err, HostnetError::Failed { detail, .. } if detail == "only-out"),
            "{err}"
        );
        assert_eq!(
            run(Command::new("sh").args(["-c", "echo fine"])).unwrap(),
            "fine\n"
        );
    }

    #[test]
    fn a_missing_tool_is_a_spawn_error() {
        let err = run(&mut Command::new("measurelab-no-such-tool")).unwrap_err();
        assert!(matches!(err, HostnetError::Spawn { .. }), "{err}");
        assert!(!succeeds(&mut Command::new("measurelab-no-such-tool")));
    }

    #[test]
    fn namespace_names_are_checked_before_any_tool_runs() {
        for bad in ["", "a/b", &"x".repeat(65)] {
            assert!(matches!(
                netns_ensure(bad),
                Err(HostnetError::BadNamespaceName { .. })
            ));
            assert!(matches!(
                in_netns(bad, || ()),
                Err(HostnetError::BadNamespaceName { .. })
            ));
        }
    }

    #[test]
    fn link_flags_are_read_from_the_angle_brackets() {
        let line = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN";
        assert_eq!(link_flags(line), Some(vec!["LOOPBACK", "UP", "LOWER_UP"]));
        assert_eq!(link_flags("7: tap0: mtu 1500"), None);
    }

    #[test]
    fn link_show_tells_an_absent_link_from_a_failed_lookup() {
        let lo = link_show(None, "lo").unwrap();
        assert!(lo.as_deref().and_then(link_flags).is_some(), "{lo:?}");
        assert_eq!(link_show(None, "measurelab-nolink").unwrap(), None);
        let err = link_show(Some("measurelab-hostnet-missing"), "lo").unwrap_err();
        assert!(matches!(err, HostnetError::Failed { .. }), "{err}");
    }

    #[test]
    fn entering_a_missing_namespace_fails_to_open_it() {
        let err = in_netns("measurelab-hostnet-missing", || ()).unwrap_err();
        assert!(
            matches!(err, HostnetError::Namespace { action: "open", .. }),
            "{err}"
        );
    }
}
