//! A libvirt guest's tap, moved into the agent's network namespace.
//!
//! libvirtd plugs a `TapOnly` NIC into nothing and creates its tap in its
//! own namespace; an agent in a node namespace (a lab) must fetch it from
//! there before its OVS can open it.

use std::process::Command;

use measurelab_hostnet::{self as hostnet, HostnetError};

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
        Some(flags) if flags.iter().any(|f| f == "UP") => return Ok(NicAdoption::Present),
        // Moved by an agent killed before it brought the tap up.
        Some(_) => {
            hostnet::ip(&["link", "set", "dev", port, "up"]).map_err(transient)?;
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
        let holds_tap = hostnet::succeeds(
            Command::new("nsenter")
                .arg(format!("--net={namespace}"))
                .args(["ip", "link", "show", "dev", port]),
        );
        if !holds_tap {
            continue;
        }
        hostnet::run(
            Command::new("nsenter")
                .arg(format!("--net={namespace}"))
                .args(["ip", "link", "set", "dev", port, "netns", &target]),
        )
        .map_err(transient)?;
        hostnet::ip(&["link", "set", "dev", port, "up"]).map_err(transient)?;
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

/// The `<FLAGS>` of `port` in this thread's namespace; `None` if it is not
/// here (or `ip` cannot show it: then the search below decides).
fn link_flags(port: &str) -> Result<Option<Vec<String>>, HypervisorError> {
    match hostnet::link_show(None, port) {
        Ok(line) => Ok(line
            .as_deref()
            .and_then(hostnet::link_flags)
            .map(|flags| flags.into_iter().map(str::to_string).collect())),
        Err(HostnetError::Failed { .. }) => Ok(None),
        Err(e) => Err(transient(e)),
    }
}

/// Every failure here may clear on the next pass: libvirtd creates and
/// moves taps while the guest starts.
fn transient(error: HostnetError) -> HypervisorError {
    HypervisorError::from(error).reclassified(ErrorClass::Transient)
}
