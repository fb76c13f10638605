//! Per-VM disk files of libvirt guests: a copy-on-write overlay of the
//! appliance image and a swap disk, both in the VM's own state directory, and
//! the containment of appliance files in the operator's appliance directory.
//!
//! The appliance image is shared by every VM booting it, so it is only ever
//! a qcow2 backing file (QEMU opens backing files read-only) and its write
//! bits are cleared on disk. Each VM writes to its own overlay, which outlives
//! agent restarts (adopted, never recreated) and goes with the VM.
//!
//! Files are created under a temporary name and renamed into place, so a
//! crash halfway never leaves a half-made disk that a later pass adopts.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use uuid::Uuid;

use super::spec::GuestSpec;
use super::types::{ErrorClass, HypervisorError};

const MIB: u64 = 1024 * 1024;
/// The overlay's file name in the VM's directory.
pub(crate) const OVERLAY_FILE: &str = "disk.qcow2";
/// The swap disk's file name in the VM's directory.
pub(crate) const SWAP_FILE: &str = "swap.img";

/// Where the libvirt backend keeps and takes disk files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// Appliance files (kernel, initrd, disk image) must lie under this
    /// directory; anything else is refused. Set by the operator.
    pub appliance_dir: PathBuf,
    /// Per-VM directories `<guests_dir>/<vm id>/` hold the overlay and the
    /// swap disk (the node agent's `<state_dir>/guests`, shared with the
    /// guest's console log and channel socket).
    pub guests_dir: PathBuf,
}

/// The disk files a guest's domain attaches, in target order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct GuestDisks {
    /// qcow2 overlay (writable, backed by the appliance image if it has one).
    pub data: Option<PathBuf>,
    /// Raw swap disk, formatted with mkswap.
    pub swap: Option<PathBuf>,
}

impl DiskConfig {
    fn vm_dir(&self, id: Uuid) -> PathBuf {
        self.guests_dir.join(id.to_string())
    }

    /// Checks that every appliance file of `spec` lies under the appliance
    /// directory. Returns the canonical path of the appliance disk, if any.
    pub(crate) fn check_appliance(
        &self,
        spec: &GuestSpec,
    ) -> Result<Option<PathBuf>, HypervisorError> {
        let dir = resolve(&self.appliance_dir).map_err(|reason| HypervisorError::InvalidSpec {
            field: "appliance_dir",
            reason,
        })?;
        let mut files = vec![
            ("boot.kernel", &spec.boot.kernel),
            ("boot.initrd", &spec.boot.initrd),
        ];
        if let Some(disk) = &spec.boot.disk {
            files.push(("boot.disk", disk));
        }
        let mut base = None;
        for (field, path) in files {
            let outside = |reason: String| HypervisorError::OutsideApplianceDir {
                field,
                path: path.clone(),
                dir: self.appliance_dir.clone(),
                reason,
            };
            let resolved = resolve(path).map_err(outside)?;
            if !resolved.starts_with(&dir) {
                return Err(outside(format!("it resolves to {}", resolved.display())));
            }
            if field == "boot.disk" {
                base = Some(resolved);
            }
        }
        Ok(base)
    }

    /// Creates or adopts the overlay and the swap disk `spec` asks for.
    /// `base` is the canonical appliance disk from [`Self::check_appliance`].
    pub(crate) fn ensure(
        &self,
        spec: &GuestSpec,
        base: Option<&Path>,
    ) -> Result<GuestDisks, HypervisorError> {
        if base.is_none() && spec.disk_mib == 0 && spec.swap_mib == 0 {
            return Ok(GuestDisks::default());
        }
        let dir = self.vm_dir(spec.id);
        fs::create_dir_all(&dir)
            .map_err(|e| HypervisorError::io(format!("create {}", dir.display()), e))?;
        let mut disks = GuestDisks::default();
        if base.is_some() || spec.disk_mib > 0 {
            let overlay = dir.join(OVERLAY_FILE);
            ensure_overlay(&overlay, base, spec.disk_mib)?;
            disks.data = Some(overlay);
        }
        if spec.swap_mib > 0 {
            let swap = dir.join(SWAP_FILE);
            ensure_swap(&swap, spec.swap_mib)?;
            disks.swap = Some(swap);
        }
        Ok(disks)
    }

    /// Removes the VM's disk files (the directory itself belongs to the
    /// agent, which removes it with the VM's other files).
    pub(crate) fn remove(&self, id: Uuid) -> Result<(), HypervisorError> {
        let dir = self.vm_dir(id);
        for name in [OVERLAY_FILE, SWAP_FILE] {
            let path = dir.join(name);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(HypervisorError::io(format!("remove {}", path.display()), e)),
            }
        }
        Ok(())
    }
}

/// `path` with every symlink resolved and no `.` or `..` left. A path that
/// does not exist (yet) resolves its longest existing ancestor; the rest,
/// which contains no symlink because it does not exist, is appended as is.
/// `..` is refused outright rather than interpreted.
fn resolve(path: &Path) -> Result<PathBuf, String> {
    if !path.is_absolute() {
        return Err(format!("{} is not an absolute path", path.display()));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!("{} contains '..'", path.display()));
    }
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        match fs::canonicalize(&existing) {
            Ok(mut resolved) => {
                resolved.extend(rest.iter().rev());
                return Ok(resolved);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let Some(name) = existing.file_name().map(|n| n.to_os_string()) else {
                    return Err(format!("{}: nothing of it exists", path.display()));
                };
                rest.push(name);
                existing.pop();
            }
            Err(e) => return Err(format!("cannot resolve {}: {e}", path.display())),
        }
    }
}

/// What `qemu-img info` says about an image.
#[derive(Debug, serde::Deserialize)]
struct ImageInfo {
    format: String,
    #[serde(rename = "virtual-size")]
    virtual_size: u64,
    #[serde(rename = "full-backing-filename")]
    full_backing_filename: Option<PathBuf>,
    #[serde(rename = "backing-filename")]
    backing_filename: Option<PathBuf>,
}

fn image_info(path: &Path) -> Result<ImageInfo, HypervisorError> {
    // -U: a running guest holds the image's lock; reading metadata is safe.
    let out = run(Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(path))?;
    serde_json::from_slice(&out).map_err(|e| HypervisorError::Command {
        command: format!("qemu-img info {}", path.display()),
        detail: format!("unreadable JSON: {e}"),
        class: ErrorClass::Permanent,
    })
}

/// Creates `overlay` (qcow2, `disk_mib` MiB or the base's size when 0) on
/// top of `base`, or adopts an existing one that has the same backing file.
fn ensure_overlay(
    overlay: &Path,
    base: Option<&Path>,
    disk_mib: u64,
) -> Result<(), HypervisorError> {
    let base_info = base.map(image_info).transpose()?;
    if let (Some(info), true) = (&base_info, disk_mib > 0) {
        if disk_mib * MIB < info.virtual_size {
            return Err(HypervisorError::InvalidSpec {
                field: "disk_mib",
                reason: format!(
                    "{disk_mib} MiB is smaller than the appliance image ({} MiB)",
                    info.virtual_size.div_ceil(MIB)
                ),
            });
        }
    }
    if let (Some(path), Some(info)) = (base, &base_info) {
        make_read_only(path)?;
        if info.format == "qcow2" && info.backing_filename.is_some() {
            // A chain would be writable through nothing, but its lower
            // layers might lie outside the appliance directory.
            return Err(HypervisorError::InvalidSpec {
                field: "boot.disk",
                reason: format!("{} has a backing file itself", path.display()),
            });
        }
    }
    if overlay.exists() {
        let info = image_info(overlay)?;
        let backing = info.full_backing_filename.or(info.backing_filename);
        if info.format != "qcow2" || backing.as_deref() != base {
            return Err(HypervisorError::InvalidSpec {
                field: "boot.disk",
                reason: format!(
                    "the VM's disk {} is backed by {:?}, not by {:?}; its data is kept: delete the VM to start over",
                    overlay.display(),
                    backing,
                    base
                ),
            });
        }
        return Ok(());
    }
    let partial = overlay.with_extension("qcow2.partial");
    let mut cmd = Command::new("qemu-img");
    cmd.args(["create", "-q", "-f", "qcow2"]);
    if let (Some(path), Some(info)) = (base, &base_info) {
        cmd.args(["-F", &info.format, "-b"]).arg(path);
    }
    cmd.arg(&partial);
    if disk_mib > 0 {
        cmd.arg(format!("{disk_mib}M"));
    }
    run(&mut cmd)?;
    fs::rename(&partial, overlay)
        .map_err(|e| HypervisorError::io(format!("rename {} into place", partial.display()), e))
}

/// Clears the write bits of the shared appliance image.
fn make_read_only(path: &Path) -> Result<(), HypervisorError> {
    let meta = fs::metadata(path)
        .map_err(|e| HypervisorError::io(format!("stat {}", path.display()), e))?;
    let mut perms = meta.permissions();
    if perms.mode() & 0o222 != 0 {
        perms.set_mode(perms.mode() & !0o222);
        fs::set_permissions(path, perms)
            .map_err(|e| HypervisorError::io(format!("chmod a-w {}", path.display()), e))?;
    }
    Ok(())
}

/// Creates `swap` (sparse, `swap_mib` MiB, mkswap'd) unless a file of that
/// size is there; swap holds nothing worth keeping across a size change.
fn ensure_swap(swap: &Path, swap_mib: u64) -> Result<(), HypervisorError> {
    let size = swap_mib * MIB;
    if fs::metadata(swap).is_ok_and(|m| m.len() == size) {
        return Ok(());
    }
    let partial = swap.with_extension("img.partial");
    let file = fs::File::create(&partial)
        .map_err(|e| HypervisorError::io(format!("create {}", partial.display()), e))?;
    file.set_len(size)
        .map_err(|e| HypervisorError::io(format!("size {}", partial.display()), e))?;
    drop(file);
    run(Command::new("mkswap").arg("-q").arg(&partial))?;
    fs::rename(&partial, swap)
        .map_err(|e| HypervisorError::io(format!("rename {} into place", partial.display()), e))
}

/// Runs `cmd`; a failure names the command and carries its stderr. Bad
/// arguments or a missing tool fail again the same way: Permanent.
fn run(cmd: &mut Command) -> Result<Vec<u8>, HypervisorError> {
    let line = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| HypervisorError::Command {
        command: line.clone(),
        detail: format!("cannot start: {e}"),
        class: ErrorClass::Permanent,
    })?;
    if !out.status.success() {
        return Err(HypervisorError::Command {
            command: line,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            class: ErrorClass::Permanent,
        });
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_refuses_dotdot_and_follows_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        let apps = root.join("apps");
        fs::create_dir(&apps).unwrap();
        assert!(resolve(&apps.join("../etc/passwd")).is_err());
        std::os::unix::fs::symlink("/etc", apps.join("escape")).unwrap();
        assert_eq!(
            resolve(&apps.join("escape/passwd")).unwrap(),
            fs::canonicalize("/etc/passwd").unwrap()
        );
        // Not there yet: the existing part is resolved, the rest appended.
        assert_eq!(
            resolve(&apps.join("tiny/vmlinuz")).unwrap(),
            apps.join("tiny/vmlinuz")
        );
        assert!(resolve(Path::new("relative")).is_err());
    }
}
