//! The operator's tools the lab needs (`ip` and `ethtool` through
//! `measurelab-hostnet`, `ovs-*`) and the lab's background processes,
//! managed through pid files.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

// Running tools and the namespace/link steps are the workspace's one host
// networking helper, shared with the agent and the test bed.
pub use measurelab_hostnet::{
    command_in, describe, ip, ip_in, link_exists, netns_delete, netns_ensure, netns_exists,
    netns_list, netns_pids, run, tx_offload_off, veth_add,
};

/// Tools the lab shells out to, with the package that provides each.
pub const REQUIRED_TOOLS: [(&str, &str); 9] = [
    ("ip", "iproute2"),
    ("ethtool", "ethtool"),
    ("ovsdb-tool", "openvswitch-switch"),
    ("ovsdb-server", "openvswitch-switch"),
    ("ovs-vswitchd", "openvswitch-switch"),
    ("ovs-vsctl", "openvswitch-switch"),
    ("setsid", "util-linux"),
    ("nsenter", "util-linux"),
    ("ovs-appctl", "openvswitch-switch"),
];

pub fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

pub fn check_tools() -> anyhow::Result<()> {
    let missing: Vec<String> = REQUIRED_TOOLS
        .iter()
        .filter(|(tool, _)| find_in_path(tool).is_none())
        .map(|(tool, package)| format!("{tool} (package {package})"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "the lab needs these tools, which are not installed: {}; run scripts/setup.sh",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Pid recorded in a pid file, if the file exists and holds a number.
pub fn read_pid(pid_file: &Path) -> Option<i32> {
    fs::read_to_string(pid_file).ok()?.trim().parse().ok()
}

/// Command line of a process, arguments joined by spaces.
pub fn cmdline(pid: i32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// True when `pid` runs (not a zombie) and its command line contains
/// `marker`: guards against a recycled pid being taken for ours.
pub fn alive(pid: i32, marker: &str) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // State is the field after the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or("X");
    if state == "Z" || state == "X" {
        return false;
    }
    // While a process execs (setsid -> nsenter -> program) its cmdline can
    // read empty for a moment; look again before calling it someone else.
    for _ in 0..5 {
        match cmdline(pid) {
            Some(c) if c.is_empty() => std::thread::sleep(Duration::from_millis(20)),
            Some(c) => return c.contains(marker),
            None => return false,
        }
    }
    false
}

/// The live pid recorded in `pid_file`, if its process still matches `marker`.
pub fn live_pid(pid_file: &Path, marker: &str) -> Option<i32> {
    read_pid(pid_file).filter(|pid| alive(*pid, marker))
}

/// Send SIGTERM to every pid, wait up to `grace`, then SIGKILL the rest.
pub fn terminate(pids: &[i32], grace: Duration) {
    for pid in pids {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && pids.iter().any(|p| process_exists(*p)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in pids {
        if process_exists(*pid) {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && pids.iter().any(|p| process_exists(*p)) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True while the process exists and is not a zombie.
pub fn process_exists(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next()),
            Some("Z") | Some("X") | None
        ),
        Err(_) => false,
    }
}

/// Every pid on the machine.
pub fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Last `n` lines of a log file, or a note that it is missing.
pub fn log_tail(path: &Path, n: usize) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(n)..].join("\n");
            format!(
                "--- last {} lines of {} ---\n{tail}",
                n.min(lines.len()),
                path.display()
            )
        }
        Err(e) => format!("--- {} unreadable: {e} ---", path.display()),
    }
}

/// Write a new file readable by its owner only (secrets: tokens).
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}
