//! `lab down`'s sweep of the libvirt domains the lab's agents defined.
//!
//! A namespace guest dies with its namespace and cgroup (see `down`), and a
//! `test:///default` domain lives inside the agent process; but a domain in
//! a system libvirtd (`qemu:///system`, `xen:///system`) is persistent and
//! outlives the agent that defined it. One libvirtd serves every lab and
//! test on the host, so a domain is this lab's only if it carries the
//! agents' ownership tag AND its definition points into this lab's node
//! state (its guest channel socket and console log live under
//! `DIR/nodes/nK/agent/guests/`). The tag's owner scope is not relied on:
//! it identifies an agent, not a lab, and older agents set none.

use std::path::Path;

use measurelab_agent::hypervisor::{LibvirtHypervisor, OWNER_XML_NAMESPACE};

/// libvirt URIs whose domains persist beyond the defining process.
const PERSISTENT_LIBVIRT_URIS: [&str; 2] = ["qemu:///system", "xen:///system"];

/// Destroys and undefines every domain of the lab in `lab_dir`; returns
/// their names. URIs without a daemon are skipped: nothing can be left there.
pub(super) fn remove_libvirt_guests(lab_dir: &Path) -> Vec<String> {
    let marker = format!("{}/nodes/", lab_dir.display());
    let mut removed = Vec::new();
    for uri in PERSISTENT_LIBVIRT_URIS {
        let Ok(hypervisor) = LibvirtHypervisor::connect(uri) else {
            continue;
        };
        let conn = match hypervisor.connection() {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("cannot clean libvirt domains on {uri}: {e}");
                continue;
            }
        };
        let domains = match conn.list_all_domains(0) {
            Ok(domains) => domains,
            Err(e) => {
                eprintln!("cannot list libvirt domains on {uri}: {e}");
                continue;
            }
        };
        for domain in domains {
            // The inactive definition is what persists; a transient domain
            // has none and is read live.
            let Ok(xml) = domain.xml_desc(0) else {
                continue;
            };
            if !(xml.contains(OWNER_XML_NAMESPACE) && xml.contains(&marker)) {
                continue;
            }
            let name = domain.name().unwrap_or_default();
            let persistent = domain.is_persistent().unwrap_or(true);
            if domain.is_active().unwrap_or(false) {
                if let Err(e) = domain.destroy() {
                    eprintln!("cannot stop libvirt domain {name} on {uri}: {e}");
                    continue;
                }
            }
            // A transient domain is gone once destroyed.
            let outcome = if persistent {
                domain.undefine()
            } else {
                Ok(())
            };
            match outcome {
                Ok(()) => {
                    // libvirt keeps a domain's log after it is gone; this
                    // lab's names are not reused.
                    let _ = std::fs::remove_file(format!("/var/log/libvirt/qemu/{name}.log"));
                    removed.push(format!("libvirt domain {name}"));
                }
                Err(e) => eprintln!("cannot undefine libvirt domain {name} on {uri}: {e}"),
            }
        }
    }
    removed
}
