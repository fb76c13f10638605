//! A libvirt guest's tap, moved into the agent's network namespace.
//!
//! libvirtd plugs a `TapOnly` NIC into nothing and creates its tap in its
//! own namespace; an agent in a node namespace (a lab) must fetch it from
//! there before its OVS can open it.

use super::types::{ErrorClass, HypervisorError, NicAdoption};

/// libvirtd creates a TapOnly guest's tap in its own (usually the host's)
/// network namespace. An agent running in a node namespace (as in a lab)
/// moves it here, where the node's OVS can open it, and brings it up.
/// Says whether it changed anything.
///
/// "Here" is the calling thread's namespace, not the process's: tests (and
/// any embedding) run the agent on threads that entered the node namespace,
/// and the `ip` children forked from this thread inherit it.
///
/// Where the tap is: the namespace of the domain's QEMU process (libvirt's
/// pid file), else libvirtd's, else pid 1's - the first of those that holds
/// it. Sandboxes may forbid opening pid 1's namespace, so it comes last.
pub(super) fn adopt_tap(port: &str, domain: &str) -> Result<NicAdoption, HypervisorError> {
    match link_flags(port)? {
        Some(flags) if flags.split(',').any(|f| f == "UP") => return Ok(NicAdoption::Present),
        // Moved by an agent killed before it brought the tap up.
        Some(_) => {
            run_ip(&["ip", "link", "set", "dev", port, "up"])?;
            return Ok(NicAdoption::Moved);
        }
        None => {}
    }
    let here = std::fs::read_link("/proc/thread-self/ns/net")
        .map_err(|e| HypervisorError::io("read /proc/thread-self/ns/net", e))?;
    // `ip` resolves a netns argument containing '/' as a path; this thread's
    // namespace file stays valid while the thread waits for the command.
    let thread = std::fs::read_link("/proc/thread-self")
        .map_err(|e| HypervisorError::io("read /proc/thread-self", e))?;
    let target = format!("/proc/{}/ns/net", thread.display());
    let pid_files = [
        format!("/run/libvirt/qemu/{domain}.pid"),
        "/run/libvirtd.pid".to_string(),
        "/run/virtqemud.pid".to_string(),
    ];
    let mut pids: Vec<String> = pid_files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .map(|text| text.trim().to_string())
        .filter(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    pids.push("1".into());
    let mut tried = Vec::new();
    for pid in pids {
        let namespace = format!("/proc/{pid}/ns/net");
        match std::fs::read_link(&namespace) {
            Ok(ns) if ns != here && !tried.contains(&ns) => tried.push(ns),
            _ => continue,
        }
        let holds_tap = std::process::Command::new("nsenter")
            .arg(format!("--net={namespace}"))
            .args(["ip", "link", "show", "dev", port])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !holds_tap {
            continue;
        }
        run_ip(&[
            "nsenter",
            &format!("--net={namespace}"),
            "ip",
            "link",
            "set",
            "dev",
            port,
            "netns",
            &target,
        ])?;
        run_ip(&["ip", "link", "set", "dev", port, "up"])?;
        return Ok(NicAdoption::Moved);
    }
    // libvirt creates the tap before QEMU starts, so a running guest has one.
    Err(HypervisorError::Command {
        command: format!("ip link show dev {port}"),
        detail: format!(
            "the tap of running domain {domain} is neither in this network namespace nor in the domain's, libvirtd's or pid 1's (of those readable)"
        ),
        class: ErrorClass::Transient,
    })
}

/// The `<FLAGS>` of `port` in this thread's namespace; `None` if it is not here.
fn link_flags(port: &str) -> Result<Option<String>, HypervisorError> {
    let output = std::process::Command::new("ip")
        .args(["-o", "link", "show", "dev", port])
        .output()
        .map_err(|e| HypervisorError::Command {
            command: format!("ip -o link show dev {port}"),
            detail: e.to_string(),
            class: ErrorClass::Transient,
        })?;
    if !output.status.success() {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(flags, _)| flags.to_string()))
}

fn run_ip(step: &[&str]) -> Result<(), HypervisorError> {
    let output = std::process::Command::new(step[0])
        .args(&step[1..])
        .output()
        .map_err(|e| HypervisorError::Command {
            command: step.join(" "),
            detail: e.to_string(),
            class: ErrorClass::Transient,
        })?;
    if !output.status.success() {
        return Err(HypervisorError::Command {
            command: step.join(" "),
            detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            class: ErrorClass::Transient,
        });
    }
    Ok(())
}
