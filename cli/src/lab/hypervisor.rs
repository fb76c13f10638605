//! `lab up --hypervisor qemu`: real QEMU VMs in the lab. Starts the system
//! libvirtd that QEMU guests need (through the agent's `system_libvirtd`,
//! the same code the QEMU tests use) when none answers, records in the lab
//! dir exactly what it started or created, and `lab down` undoes that and
//! nothing else: a libvirtd the lab did not start is never touched.

use std::path::{Path, PathBuf};

use anyhow::Context;
use measurelab_agent::system_libvirtd::{self, StartedLibvirtd, QEMU_SYSTEM_URI};
use serde::{Deserialize, Serialize};

/// What runs the lab's libvirt VMs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(super) enum LabHypervisor {
    /// Namespace guests only (plus whatever libvirt URI already answers).
    #[default]
    Namespace,
    /// QEMU/TCG guests through qemu:///system, started if needed.
    Qemu,
}

impl LabHypervisor {
    /// The agent's `--libvirt-uri` arguments: none keeps the agent's default
    /// probing; with QEMU the agent uses the system libvirtd only.
    pub(super) fn agent_libvirt_uris(self) -> &'static [&'static str] {
        match self {
            LabHypervisor::Namespace => &[],
            LabHypervisor::Qemu => &[QEMU_SYSTEM_URI],
        }
    }
}

/// A note when the built-in appliance's files are missing: its VMs would
/// then fail on the node, long after `lab up` said all was well.
pub(super) fn appliance_notice() -> Option<String> {
    let dir = Path::new(measurelab_agent::DEFAULT_APPLIANCE_DIR).join("measurelab-tiny");
    let missing: Vec<&str> = ["vmlinuz", "initrd.img", "disk.img"]
        .into_iter()
        .filter(|file| !dir.join(file).is_file())
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "note: {} lacks {}: libvirt VMs on measurelab-tiny will fail until `scripts/build-appliance.sh target/release/measurelab-guest-agent` builds it",
            dir.display(),
            missing.join(", ")
        )
    })
}

/// The lab's record of what it did to the host for QEMU.
fn record_path(lab_dir: &Path) -> PathBuf {
    lab_dir.join("libvirtd.json")
}

fn load_record(lab_dir: &Path) -> anyhow::Result<Option<StartedLibvirtd>> {
    let path = record_path(lab_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("{} is corrupt", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Makes qemu:///system answer; returns what was started (empty when it
/// already answered). Idempotent: a second `up` starts nothing, and after
/// a libvirtd the lab started has died, starts it again.
pub(super) fn ensure_qemu(lab_dir: &Path, log: &Path) -> anyhow::Result<Vec<String>> {
    let Some(started) = system_libvirtd::start_for_qemu(log).with_context(|| {
        format!("--hypervisor qemu: cannot start libvirtd for {QEMU_SYSTEM_URI}")
    })?
    else {
        return Ok(Vec::new());
    };
    // A user or qemu.conf created by an earlier `up` of this lab is still
    // ours to remove, though this start did not create it.
    let mut record = load_record(lab_dir)?.unwrap_or_default();
    record.daemons = started.daemons.clone();
    record.created_group |= started.created_group;
    record.created_user |= started.created_user;
    record.created_qemu_conf |= started.created_qemu_conf;
    crate::controller_cmd::write_atomically(
        &record_path(lab_dir),
        &serde_json::to_string_pretty(&record)?,
    )?;
    Ok(started
        .daemons
        .iter()
        .map(|d| format!("{} (pid {})", d.program, d.pid))
        .collect())
}

/// Undoes what the lab recorded, once the lab's own domains are gone.
/// When other domains still live in that libvirtd (another lab's, a
/// user's), it is left running and the record kept, so a later `down`
/// stops it; returns what was undone and, if so, why something was kept.
pub(super) fn undo_qemu(lab_dir: &Path) -> anyhow::Result<Vec<String>> {
    let Some(record) = load_record(lab_dir)? else {
        return Ok(Vec::new());
    };
    if let Some(others) = other_domains() {
        if others > 0 {
            println!(
                "libvirtd started by this lab left running: {others} other domain(s) use {QEMU_SYSTEM_URI}; `lab down` again stops it once they are gone"
            );
            return Ok(Vec::new());
        }
    }
    let undone = record.undo();
    let path = record_path(lab_dir);
    std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    Ok(undone)
}

/// How many domains qemu:///system holds; None when it does not answer.
fn other_domains() -> Option<usize> {
    let hypervisor =
        measurelab_agent::hypervisor::LibvirtHypervisor::connect(QEMU_SYSTEM_URI).ok()?;
    let conn = hypervisor.connection().ok()?;
    conn.list_all_domains(0).ok().map(|d| d.len())
}
