//! What this node can really do, found by trying it rather than by reading
//! configuration: a URI counts only if libvirt opens it, the namespace
//! backend only if a network namespace can be created here.

use std::path::Path;
use std::time::Duration;

use measurelab_api::node_v1::Capabilities;

/// URIs probed when the configuration names none.
pub const DEFAULT_LIBVIRT_URIS: [&str; 3] = ["test:///default", "qemu:///system", "xen:///system"];

/// How long one libvirt open may take: a wedged libvirtd must not stall
/// the heartbeat.
const LIBVIRT_OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long reading the node's OVSDB may take.
const OVSDB_TIMEOUT: Duration = Duration::from_secs(5);

/// Binaries that provide the built-in multicast measurement tool.
const MCAST_BINARIES: [&str; 2] = ["measurelab-mcast", "mcast"];

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
    let ovs_datapath_types = match &targets.ovsdb {
        Some(target) => probe_ovs_datapath_types(target).await,
        None => Vec::new(),
    };
    Capabilities {
        libvirt_uris,
        namespace_backend,
        ovs_datapath_types,
        qos_features: Vec::new(),
        service_tools: probe_service_tools(),
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
    // unshare() moves only the calling thread, so a throwaway thread holds
    // the new namespace and the kernel frees it when the thread exits.
    let created = std::thread::spawn(|| nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET))
        .join()
        .map_err(|_| nix::Error::EINVAL)
        .and_then(|r| r);
    match created {
        Ok(()) => true,
        Err(e) => {
            tracing::info!(error = %e, "namespace backend unavailable: cannot create a network namespace");
            false
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

/// Datapath types from the `Open_vSwitch` table of the node's OVSDB.
async fn probe_ovs_datapath_types(target: &str) -> Vec<String> {
    match read_ovs_datapath_types(target).await {
        Ok(types) => types,
        Err(reason) => {
            tracing::warn!(ovsdb = %target, %reason, "cannot read OVS datapath types");
            Vec::new()
        }
    }
}

async fn read_ovs_datapath_types(target: &str) -> Result<Vec<String>, String> {
    let select = serde_json::json!({
        "op": "select",
        "table": "Open_vSwitch",
        "where": [],
        "columns": ["datapath_types"],
    });
    let query = async {
        let client = measurelab_ovsdb::OvsdbClient::connect(target)
            .await
            .map_err(|e| e.to_string())?;
        client
            .transact("Open_vSwitch", vec![select])
            .await
            .map_err(|e| e.to_string())
    };
    let results = tokio::time::timeout(OVSDB_TIMEOUT, query)
        .await
        .map_err(|_| format!("no answer within {OVSDB_TIMEOUT:?}"))??;
    let first = results.first().ok_or("empty transact result")?;
    datapath_types_from_select(first)
}

/// Extract `datapath_types` from the result of a `select` on `Open_vSwitch`.
/// OVSDB encodes a set as `["set", [..]]`, or as a bare atom when it has
/// exactly one element.
pub fn datapath_types_from_select(result: &serde_json::Value) -> Result<Vec<String>, String> {
    let rows = result
        .get("rows")
        .and_then(|r| r.as_array())
        .ok_or("select result has no rows")?;
    let row = rows.first().ok_or("Open_vSwitch table is empty")?;
    let column = row
        .get("datapath_types")
        .ok_or("row has no datapath_types column")?;
    let mut types = match column {
        serde_json::Value::String(one) => vec![one.clone()],
        serde_json::Value::Array(parts) if parts.len() == 2 && parts[0] == "set" => parts[1]
            .as_array()
            .ok_or("datapath_types set is not an array")?
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or("datapath type is not a string")
            })
            .collect::<Result<Vec<_>, _>>()?,
        other => return Err(format!("unexpected datapath_types encoding: {other}")),
    };
    types.sort();
    Ok(types)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_cgroup2_among_mounts() {
        let hybrid = "cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert!(has_cgroup2_mount(hybrid));
        assert!(!has_cgroup2_mount(
            "cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n"
        ));
    }

    #[test]
    fn datapath_types_accepts_both_set_encodings() {
        let set = json!({"rows": [{"datapath_types": ["set", ["system", "netdev"]]}]});
        assert_eq!(
            datapath_types_from_select(&set).unwrap(),
            vec!["netdev", "system"]
        );
        let atom = json!({"rows": [{"datapath_types": "netdev"}]});
        assert_eq!(datapath_types_from_select(&atom).unwrap(), vec!["netdev"]);
        let empty = json!({"rows": [{"datapath_types": ["set", []]}]});
        assert!(datapath_types_from_select(&empty).unwrap().is_empty());
        assert!(datapath_types_from_select(&json!({"rows": []})).is_err());
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
    async fn missing_ovsdb_socket_gives_no_datapath_types() {
        let dir = tempfile::tempdir().unwrap();
        let target = format!("unix:{}/db.sock", dir.path().display());
        assert!(read_ovs_datapath_types(&target).await.is_err());
        assert!(probe_ovs_datapath_types(&target).await.is_empty());
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
