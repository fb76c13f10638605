//! What this node can really do, found by trying it rather than by reading
//! configuration: a URI counts only if libvirt opens it, the namespace
//! backend only if a network namespace can be created here.

use std::path::Path;
use std::time::Duration;

use measurelab_api::node_v1::{Capabilities, UplinkMember, UplinkStatus};

/// URIs probed when the configuration names none.
pub const DEFAULT_LIBVIRT_URIS: [&str; 3] = ["test:///default", "qemu:///system", "xen:///system"];

/// How long one libvirt open may take: a wedged libvirtd must not stall
/// the heartbeat.
const LIBVIRT_OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long reading the node's OVSDB may take.
const OVSDB_TIMEOUT: Duration = Duration::from_secs(5);

/// The measurement point of the mcast crate: what the service host runs for
/// quick multicast tasks without a virtual platform.
const MCAST_BINARIES: [&str; 1] = ["mcast-point"];

/// Inputs to a probe.
#[derive(Debug, Clone)]
pub struct ProbeTargets {
    /// libvirt URIs to try.
    pub libvirt_uris: Vec<String>,
    /// The node's own OVSDB, e.g. `unix:/run/ovs/db.sock`.
    pub ovsdb: Option<String>,
}

/// Probe everything. Never fails: a capability that cannot be shown to work
/// is simply absent, and why is logged.
pub async fn probe(targets: &ProbeTargets) -> Capabilities {
    let libvirt_uris = probe_libvirt(&targets.libvirt_uris).await;
    let namespace_backend = tokio::task::spawn_blocking(probe_namespace_backend)
        .await
        .unwrap_or(false);
    let (ovs_datapath_types, mut qos_features) = match &targets.ovsdb {
        Some(target) => probe_ovs(target).await,
        None => (Vec::new(), Vec::new()),
    };
    if namespace_backend {
        qos_features.extend(probe_guest_egress().await);
    }
    Capabilities {
        libvirt_uris,
        namespace_backend,
        ovs_datapath_types,
        qos_features,
        service_tools: probe_service_tools(),
        // Filled in by the session from the running service host.
        service_endpoint: String::new(),
        flow_export: String::new(),
        // Filled in by the session from the switch status poll.
        uplink: None,
        datapath: String::new(),
        // Filled in by the session from --tunnel-ip.
        tunnel_address: String::new(),
        // Filled in by the session from --public-address.
        public_address: String::new(),
        // Every node agent serves a service-host point of this version
        // when it runs one; what a peer's orchestrator may speak to it.
        control_protocol_version: Some(measurelab_mcast::protocol::PROTOCOL_VERSION),
    }
}

/// The bridge's datapath and the uplink (members, links, active member) as
/// the switch runs them now, in the heartbeat's terms; empty and `None` when
/// the switch cannot be read (logged at debug: the poll runs every few seconds).
pub async fn probe_switch_status(
    target: &str,
    owner: &str,
    bridge: &str,
) -> (String, Option<UplinkStatus>) {
    let query = crate::ovs::read_switch_status(target, owner, bridge);
    match tokio::time::timeout(OVSDB_TIMEOUT, query).await {
        Ok(Ok(status)) => (
            status.datapath.unwrap_or_default(),
            status.uplink.map(|uplink| UplinkStatus {
                name: uplink.name,
                mode: uplink.mode,
                members: uplink
                    .members
                    .into_iter()
                    .map(|m| UplinkMember {
                        name: m.name,
                        link_up: m.link_up,
                    })
                    .collect(),
                active_member: uplink.active_member.unwrap_or_default(),
            }),
        ),
        Ok(Err(e)) => {
            tracing::debug!(ovsdb = %target, error = %e, "cannot read the switch status");
            (String::new(), None)
        }
        Err(_) => {
            tracing::debug!(ovsdb = %target, "switch status: no answer within {OVSDB_TIMEOUT:?}");
            (String::new(), None)
        }
    }
}

async fn probe_libvirt(uris: &[String]) -> Vec<String> {
    let mut opened = Vec::new();
    for uri in uris {
        let owned = uri.clone();
        let attempt = tokio::task::spawn_blocking(move || {
            virt::connect::Connect::open(Some(&owned)).map(drop)
        });
        match tokio::time::timeout(LIBVIRT_OPEN_TIMEOUT, attempt).await {
            Ok(Ok(Ok(()))) => opened.push(uri.clone()),
            Ok(Ok(Err(e))) => tracing::debug!(uri = %uri, error = %e, "libvirt URI does not open"),
            Ok(Err(e)) => tracing::warn!(uri = %uri, error = %e, "libvirt probe task failed"),
            // The blocking thread is left to finish on its own; the runtime
            // does not wait for it at shutdown beyond its own timeout.
            Err(_) => {
                tracing::warn!(uri = %uri, "libvirt open timed out after {LIBVIRT_OPEN_TIMEOUT:?}")
            }
        }
    }
    opened
}

/// Stop libvirt from printing every failed connection attempt to stderr;
/// the probe logs what matters itself.
pub fn silence_libvirt_errors() {
    virt::error::clear_error_callback();
}

/// True when a network namespace can be created (and destroyed) here, a
/// cgroup v2 hierarchy is mounted and the namespace backend accepts the
/// cgroup layout and finds its tools.
pub fn probe_namespace_backend() -> bool {
    let cgroup2 = std::fs::read_to_string("/proc/self/mounts")
        .map(|mounts| has_cgroup2_mount(&mounts))
        .unwrap_or(false);
    if !cgroup2 {
        tracing::info!("namespace backend unavailable: no cgroup2 mount");
        return false;
    }
    // The backend's own check: the cgroup layout it will use and its tools.
    let defaults = crate::hypervisor::NamespaceConfig::new("", Vec::new());
    if let Err(e) = crate::hypervisor::NamespaceHypervisor::probe(&defaults.cgroup_mount) {
        tracing::info!(error = %e, "namespace backend unavailable");
        return false;
    }
    // A throwaway thread holds the new namespace; the kernel frees it when
    // the thread exits.
    match measurelab_hostnet::in_new_netns(|| ()) {
        Ok(()) => true,
        Err(e) => {
            tracing::info!(error = %e, "namespace backend unavailable: cannot create a network namespace");
            false
        }
    }
}

/// `guest-egress-shaping` when an htb qdisc and class really install here
/// (tc present, sch_htb in the kernel): how namespace guests' egress limits
/// are enforced, since OVS ingress policing needs act_police, which this
/// kind of kernel lacks. Only meaningful with the namespace backend; libvirt
/// enforces `<outbound>` with police and so needs `ingress-policing`.
async fn probe_guest_egress() -> Option<String> {
    let outcome = tokio::task::spawn_blocking(crate::hypervisor::probe_guest_egress_shaping)
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    match outcome {
        Ok(()) => Some("guest-egress-shaping".to_string()),
        Err(reason) => {
            tracing::info!(%reason, "guest egress shaping unavailable");
            None
        }
    }
}

/// True when /proc/mounts text lists a cgroup2 filesystem.
pub fn has_cgroup2_mount(mounts: &str) -> bool {
    mounts
        .lines()
        .any(|line| line.split_whitespace().nth(2) == Some("cgroup2"))
}

fn probe_service_tools() -> Vec<String> {
    let beside_us = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    let path_dirs: Vec<std::path::PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let found = MCAST_BINARIES.iter().any(|bin| {
        beside_us
            .iter()
            .chain(path_dirs.iter())
            .any(|dir| is_executable(&dir.join(bin)))
    });
    if found {
        vec!["mcast".to_string()]
    } else {
        Vec::new()
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Usable datapath types and working QoS features of the node's own OVS,
/// through the ovs module's OVSDB driver; empty when it cannot be read.
/// "system" is left out when the kernel has no openvswitch module, although
/// OVS lists it anyway.
async fn probe_ovs(target: &str) -> (Vec<String>, Vec<String>) {
    let query = async {
        crate::ovs::probe_capabilities(target)
            .await
            .map_err(|e| e.to_string())
    };
    let outcome = tokio::time::timeout(OVSDB_TIMEOUT, query)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {OVSDB_TIMEOUT:?}")));
    match outcome {
        Ok(caps) => {
            let mut datapath_types = caps.usable_datapath_types();
            datapath_types.sort();
            (datapath_types, caps.qos_features())
        }
        Err(reason) => {
            tracing::warn!(ovsdb = %target, %reason, "cannot read the node's OVS capabilities");
            (Vec::new(), Vec::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_among_mounts() {
        let hybrid = "cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert!(has_cgroup2_mount(hybrid));
        assert!(!has_cgroup2_mount(
            "cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n"
        ));
    }

    #[test]
    fn namespace_backend_works_as_root_with_cgroup2() {
        // CI machines run as root with a cgroup2 hierarchy mounted; this
        // really creates (and frees) a network namespace.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let layout_ok =
            crate::hypervisor::NamespaceHypervisor::probe(std::path::Path::new("/sys/fs/cgroup"))
                .is_ok();
        assert_eq!(
            probe_namespace_backend(),
            has_cgroup2_mount(&mounts) && layout_ok
        );
    }

    #[tokio::test]
    async fn guest_egress_shaping_is_reported_when_htb_installs() {
        // Root on a kernel with sch_htb (CI and the build machine): the
        // probe really installs an htb in a throwaway namespace.
        let feature = probe_guest_egress().await;
        let direct = crate::hypervisor::probe_guest_egress_shaping();
        assert_eq!(feature.is_some(), direct.is_ok(), "{direct:?}");
        assert_eq!(
            feature.as_deref(),
            Some("guest-egress-shaping"),
            "{direct:?}"
        );
        let caps = probe(&ProbeTargets {
            libvirt_uris: Vec::new(),
            ovsdb: None,
        })
        .await;
        assert_eq!(
            caps.qos_features
                .contains(&"guest-egress-shaping".to_string()),
            caps.namespace_backend
        );
        assert!(!caps.qos_features.contains(&"ingress-policing".to_string()));
    }

    #[tokio::test]
    async fn missing_ovsdb_socket_gives_no_ovs_capabilities() {
        let dir = tempfile::tempdir().unwrap();
        let target = format!("unix:{}/db.sock", dir.path().display());
        assert_eq!(probe_ovs(&target).await, (Vec::new(), Vec::new()));
    }

    #[tokio::test]
    async fn test_driver_opens_and_a_bogus_uri_does_not() {
        silence_libvirt_errors();
        let uris = vec![
            "test:///default".to_string(),
            "bogus:///nowhere".to_string(),
        ];
        assert_eq!(probe_libvirt(&uris).await, vec!["test:///default"]);
    }
}
