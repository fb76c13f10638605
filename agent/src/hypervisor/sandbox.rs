//! The box a namespace guest runs in: its own host uid, its own user, mount,
//! PID, UTS and IPC namespaces (the network one is the backend's), a private
//! root filesystem, `no_new_privs` and no capabilities.
//!
//! # Host uids
//! Each guest gets one host uid (and the gid of the same number) from
//! [`GUEST_UID_FIRST`] ..= [`GUEST_UID_LAST`]: above systemd's container range
//! (524288..=1879048191) and useradd's subordinate-id ranges, below 2^31, so
//! no account, container or `/etc/subuid` entry of the host shares it. The
//! uid is kept in the guest's state record (stable across agent restarts)
//! and claimed host-wide in a registry directory (one file per uid, naming
//! the record that holds it) under an exclusive lock, so several agents on
//! one host (lab nodes, tests) never hand out the same uid. A claim whose
//! record is gone, or no longer names that uid, is stale and reused.
//!
//! # Root filesystem
//! A tmpfs sized `disk_mib` ([`DEFAULT_WRITABLE_MIB`] when the VM asks for
//! none) is the guest's `/` and its only writable layer. tmpfs rather than a
//! loop-mounted ext4 image: a namespace guest has no image to keep, what it
//! writes is scratch (programs are re-sent by the node agent after every
//! guest restart), the pages are charged to the guest's memory cgroup (so a
//! full layer cannot exhaust the host's memory beyond `memory_mib` either),
//! and it needs no loop device, mkfs or file to clean up after a crash. On
//! it, read-only binds of the host's `/usr` (and `/bin`, `/sbin`, `/lib*`,
//! as symlinks on merged-/usr hosts), a minimal read-only `/etc` (no
//! shadow, no host accounts, no resolver or host keys), a fresh `/proc`
//! of the guest's PID namespace, a small `/dev` (null, zero, full, random,
//! urandom, tty, shm, and a devpts instance of its own for `vm exec -t`),
//! the guest binaries read-only under [`GUEST_BIN_DIR`],
//! and the VM's channel directory at [`GUEST_CHANNEL_DIR`]. Nothing else of
//! the host is mounted: not `/sys`, not the agent's state, not `/run`.
//!
//! # Mechanism
//! util-linux's `unshare` and `setpriv` plus `mount`/`pivot_root`, driven by
//! a POSIX shell script ([`LAUNCHER`]), because the backend already starts
//! guests through `setsid`/`sh`/`ip netns exec`, and these tools are in every
//! Debian base system: no setuid helper, no new binary to install. In order:
//! 1. As host root in `ip netns exec`'s private mount namespace: mount the
//!    tmpfs and build the tree. The host-side sources (the channel directory
//!    in the agent's 0700 state dir, the guest binary) are reachable only
//!    by root, which is why binding happens here. These mounts become locked
//!    in the guest's namespace: it cannot unmount or remount them.
//! 2. `setpriv` to the guest uid (groups cleared, `no_new_privs`), then
//!    `unshare --user --map-root-user`: the guest's root maps to that one
//!    host uid and nothing else, so every process of the guest, including
//!    this launcher from here on, is that uid on the host.
//! 3. As root of the new user namespace: fresh `/proc`, hostname = VM name,
//!    `pivot_root` into the tree and detach the old root.
//! 4. `setpriv` with empty bounding, inheritable and ambient sets execs the
//!    guest: it and its programs hold no capability even in their own
//!    namespace, and cannot regain one (`no_new_privs`).

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::types::HypervisorError;

/// First host uid of namespace guests.
pub const GUEST_UID_FIRST: u32 = 0x7000_0000;
/// Last host uid of namespace guests (65536 guests per host).
pub const GUEST_UID_LAST: u32 = GUEST_UID_FIRST + 0xffff;
/// Where the uid claims of every agent on the host live.
pub const DEFAULT_UID_REGISTRY: &str = "/var/lib/measurelab/guest-uids";
/// Size of the writable layer of a VM with `disk_mib` 0.
pub const DEFAULT_WRITABLE_MIB: u64 = 256;
/// Inside the guest: where the guest binaries are (read-only).
pub const GUEST_BIN_DIR: &str = "/opt/measurelab/bin";
/// Inside the guest: the VM's channel directory (its socket is in there).
pub const GUEST_CHANNEL_DIR: &str = "/run/measurelab";
/// Inside the guest: the guest agent's programs directory, on the writable
/// layer so programs count against `disk_mib`.
pub const GUEST_PROGRAMS_DIR: &str = "/var/lib/measurelab-guest/programs";
/// `PATH` of the guest.
pub const GUEST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Steps 1 and 2, run as `sh -c "$SBX_LAUNCHER" measurelab-guest
/// GUEST_COMMAND...` by host root inside the guest's network namespace,
/// with the `SBX_*` variables set and fd 3 open on the file that receives
/// the guest's host pid. Step 1 only stages what the guest uid could not
/// reach by path (the channel directory under the agent's private state
/// dir, the guest binaries) on a small tmpfs at `$SBX_ROOT`.
pub const LAUNCHER: &str = r#"set -eu
mount -t tmpfs -o size=64k,mode=0755 measurelab-stage "$SBX_ROOT"
cd "$SBX_ROOT"
mkdir -m 0755 root bin
mkdir -m 0700 channel
if [ -n "$SBX_CHANNEL_DIR" ]; then mount --bind "$SBX_CHANNEL_DIR" channel; fi
old_ifs=$IFS; IFS=:; set -f
for b in $SBX_BINS; do
  t="bin/${b##*/}"
  touch "$t"; mount --bind "$b" "$t"; mount -o remount,bind,ro,nosuid,nodev "$t"
done
IFS=$old_ifs; set +f
# Step 2: the guest uid, in a user namespace of its own.
exec setpriv --reuid="$SBX_UID" --regid="$SBX_UID" --clear-groups --no-new-privs \
  unshare --user --map-root-user --mount --pid --uts --ipc --fork --kill-child \
  sh -c "$SBX_INIT" "$0" "$@"
"#;

/// Steps 3 and 4, as root of the guest's user namespace and pid 1 of its
/// PID namespace, in the staging directory; `$@` is the guest command. The
/// root tmpfs is mounted here, inside the user namespace, because
/// `pivot_root` refuses a mount that came locked from the host's namespace.
pub const GUEST_INIT: &str = r#"set -eu
# /proc is still the host's here, so /proc/self names the host pid.
read -r host_pid _ < /proc/self/stat
mount -c -t tmpfs -o "size=${SBX_DISK_MIB}m,mode=0755" measurelab-guest root
cd -P root
mkdir -m 0755 proc dev etc run opt opt/measurelab opt/measurelab/bin .oldroot
mkdir -m 0700 run/measurelab
mkdir -m 1777 tmp
mkdir -p var/tmp var/lib/measurelab-guest root
chmod 1777 var/tmp
for d in usr bin sbin lib lib32 lib64 libx32; do
  if [ -L "/$d" ]; then ln -s "$(readlink "/$d")" "$d"
  elif [ -d "/$d" ]; then mkdir "$d"; mount -c --bind "/$d" "$d"; mount -c -o remount,bind,ro,nosuid,nodev "$d"
  fi
done
for f in ld.so.cache ld.so.conf nsswitch.conf host.conf gai.conf services protocols localtime; do
  if [ -r "/etc/$f" ]; then cp -L "/etc/$f" etc/; fi
done
for d in ld.so.conf.d alternatives; do
  if [ -d "/etc/$d" ]; then cp -RP "/etc/$d" etc/; fi
done
printf 'root:x:0:0:measurelab guest:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' > etc/passwd
printf 'root:x:0:\nnogroup:x:65534:\n' > etc/group
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost\n' "$SBX_HOSTNAME" > etc/hosts
printf '%s\n' "$SBX_HOSTNAME" > etc/hostname
mount -c --bind etc etc
mount -c -o remount,bind,ro,nosuid,nodev etc
mount -c -t tmpfs -o size=64k,mode=0755,nosuid measurelab-dev dev
for n in null zero full random urandom tty; do
  touch "dev/$n"; mount -c --bind "/dev/$n" "dev/$n"
done
ln -s /proc/self/fd dev/fd
ln -s /proc/self/fd/0 dev/stdin
ln -s /proc/self/fd/1 dev/stdout
ln -s /proc/self/fd/2 dev/stderr
mkdir dev/shm
mount -c --bind tmp dev/shm
# The guest's own pty instance (`vm exec -t`): none of the host's ptys.
mkdir dev/pts
mount -c -t devpts -o newinstance,ptmxmode=0666,mode=0620,nosuid,noexec measurelab-pts dev/pts
ln -s pts/ptmx dev/ptmx
mount -c -o remount,bind,ro,nosuid dev
mount -c --bind ../channel run/measurelab
for b in ../bin/*; do
  if [ -f "$b" ]; then
    t="opt/measurelab/bin/${b##*/}"
    touch "$t"; mount -c --bind "$b" "$t"; mount -c -o remount,bind,ro,nosuid,nodev "$t"
  fi
done
mount -c -t proc -o nosuid,nodev,noexec proc proc
hostname "$SBX_HOSTNAME"
pivot_root . .oldroot
cd /
umount -l /.oldroot
rmdir /.oldroot
printf '%s\n' "$host_pid" >&3
exec 3>&-
unset SBX_UID SBX_ROOT SBX_DISK_MIB SBX_HOSTNAME SBX_CHANNEL_DIR SBX_BINS SBX_LAUNCHER SBX_INIT OLDPWD
# Step 4: no capabilities, for good.
exec setpriv --no-new-privs --inh-caps=-all --ambient-caps=-all --bounding-set=-all -- "$@"
"#;

/// The host-wide registry of guest uids.
pub struct UidRegistry {
    dir: PathBuf,
}

impl UidRegistry {
    /// A registry in `dir` (created on first use).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        UidRegistry { dir: dir.into() }
    }

    /// Claims a uid for the guest whose state record is `record`: the one it
    /// already holds, else the lowest free one. `holds(uid)` answers whether
    /// a record names `uid` (stale-claim check).
    pub fn claim(
        &self,
        record: &Path,
        holds: impl Fn(&Path, u32) -> bool,
    ) -> Result<u32, HypervisorError> {
        let _lock = self.lock()?;
        let owner = record.display().to_string();
        let mut taken = std::collections::BTreeSet::new();
        for (uid, claimed) in self.claims()? {
            if claimed == owner {
                return Ok(uid);
            }
            if holds(Path::new(&claimed), uid) {
                taken.insert(uid);
            }
        }
        let uid = (GUEST_UID_FIRST..=GUEST_UID_LAST)
            .find(|uid| !taken.contains(uid))
            .ok_or_else(|| HypervisorError::InvalidSpec {
                field: "guest uid",
                reason: format!(
                    "all {} guest uids ({GUEST_UID_FIRST}..={GUEST_UID_LAST}) are in use",
                    GUEST_UID_LAST - GUEST_UID_FIRST + 1
                ),
            })?;
        let path = self.claim_path(uid);
        let tmp = self.dir.join(format!(".{uid}.tmp"));
        fs::write(&tmp, &owner)
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(|e| HypervisorError::io(format!("claim {}", path.display()), e))?;
        Ok(uid)
    }

    /// Gives `uid` back if `record` holds it.
    pub fn release(&self, record: &Path, uid: u32) -> Result<(), HypervisorError> {
        let _lock = self.lock()?;
        if self.owner_of(uid)?.as_deref() == Some(&record.display().to_string()) {
            let path = self.claim_path(uid);
            fs::remove_file(&path)
                .map_err(|e| HypervisorError::io(format!("release {}", path.display()), e))?;
        }
        Ok(())
    }

    fn claim_path(&self, uid: u32) -> PathBuf {
        self.dir.join(uid.to_string())
    }

    /// Every claim in the registry: (uid, record path).
    fn claims(&self) -> Result<Vec<(u32, String)>, HypervisorError> {
        let entries = fs::read_dir(&self.dir)
            .map_err(|e| HypervisorError::io(format!("read {}", self.dir.display()), e))?;
        let mut claims = Vec::new();
        for entry in entries.flatten() {
            let Some(uid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|uid| (GUEST_UID_FIRST..=GUEST_UID_LAST).contains(uid))
            else {
                continue;
            };
            if let Some(owner) = self.owner_of(uid)? {
                claims.push((uid, owner));
            }
        }
        claims.sort();
        Ok(claims)
    }

    fn owner_of(&self, uid: u32) -> Result<Option<String>, HypervisorError> {
        let path = self.claim_path(uid);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(HypervisorError::io(format!("read {}", path.display()), e)),
        }
    }

    /// Exclusive lock over the whole registry, released on drop.
    fn lock(&self) -> Result<fs::File, HypervisorError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| HypervisorError::io(format!("create {}", self.dir.display()), e))?;
        let path = self.dir.join(".lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| HypervisorError::io(format!("open {}", path.display()), e))?;
        file.lock()
            .map_err(|e| HypervisorError::io(format!("lock {}", path.display()), e))?;
        Ok(file)
    }
}

/// Makes `dir` the guest's own channel directory: created if missing,
/// owned by `uid`, mode 0700, and any socket in it owned by `uid`, mode
/// 0600. The node agent (root) still binds and opens it.
pub fn prepare_channel_dir(dir: &Path, uid: u32) -> Result<(), HypervisorError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| HypervisorError::io(format!("create {}", dir.display()), e))?;
    let own = |path: &Path, mode: u32| {
        std::os::unix::fs::chown(path, Some(uid), Some(uid))
            .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(mode)))
            .map_err(|e| HypervisorError::io(format!("chown {uid} {}", path.display()), e))
    };
    own(dir, 0o700)?;
    let entries =
        fs::read_dir(dir).map_err(|e| HypervisorError::io(format!("read {}", dir.display()), e))?;
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| {
            use std::os::unix::fs::FileTypeExt;
            t.is_socket()
        }) {
            own(&entry.path(), 0o600)?;
        }
    }
    Ok(())
}

/// The guest's host pid from the launcher's pid file, once the launcher
/// has written the whole line.
pub fn read_pid_file(path: &Path) -> Option<u32> {
    let text = fs::read_to_string(path).ok()?;
    text.strip_suffix('\n')?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_stable_dense_and_reuse_stale_ones() {
        let dir = tempfile::tempdir().unwrap();
        let registry = UidRegistry::new(dir.path().join("uids"));
        let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
        let live = |_: &Path, _: u32| true;
        let ua = registry.claim(&a, live).unwrap();
        assert_eq!(ua, GUEST_UID_FIRST);
        assert_eq!(registry.claim(&a, live).unwrap(), ua, "stable");
        let ub = registry.claim(&b, live).unwrap();
        assert_eq!(ub, GUEST_UID_FIRST + 1);
        registry.release(&a, ua).unwrap();
        let c = dir.path().join("c.json");
        assert_eq!(registry.claim(&c, live).unwrap(), ua, "released uid reused");
        // A claim whose record no longer holds it is stale.
        let d = dir.path().join("d.json");
        let dead = |record: &Path, _: u32| record != c;
        assert_eq!(registry.claim(&d, dead).unwrap(), ua);
        assert_eq!(registry.claim(&b, live).unwrap(), ub);
    }
}
