//! Deleting nfcapd's files once they are older than the flow retention
//! (`--flow-retention-hours`). nfcapd itself never deletes anything, so
//! without this a busy testbed's flow root fills its disk.
//!
//! A file's age is the time in its name, not its mtime: nfcapd names each
//! closed file after the start of the interval it holds
//! (`nfcapd.YYYYMMDDhhmm`, or `nfcapd.YYYYMMDDhhmmss` when it rotates more
//! often than once a minute), in UTC since the collector runs with TZ=UTC.
//! A copy or a restore keeps the name, whereas it may renew the mtime.
//!
//! The file a collector is writing, `nfcapd.current.<pid>`, has no time in
//! its name, and a live one must not go. But nfcapd replaces it at every
//! rotation, even with no traffic (it closes it into `nfcapd.<time>` and
//! creates a new one; seen with nfcapd 1.7.1), so a live one's mtime is at
//! most one rotation interval old. One whose mtime is older than the
//! retention plus the longest interval the controller lets nfcapd use
//! ([`MAX_ROTATE_SECONDS`]) was left by a collector that is gone (a replica
//! killed or stopped: the controller kills nfcapd, which leaves it), and
//! holds only flows older than the retention: it goes like a closed file.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use time::OffsetDateTime;

use super::names::{closed_file_time, is_current_file};
use super::MAX_ROTATE_SECONDS;

/// How much older than the cutoff a `nfcapd.current.*` file's mtime must be
/// to be a dead collector's: the longest rotation interval. The retention
/// is at least an hour too, so a live file is never within a factor of two
/// of being taken for a dead one, whatever the interval of the replica
/// writing it (each replica of a shared root may have its own).
const LIVE_FILE_MAX_AGE: time::Duration = time::Duration::seconds(MAX_ROTATE_SECONDS as i64);

/// What a prune did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pruned {
    /// Closed files deleted.
    pub removed: usize,
    /// Entries that could not be read or deleted (each one logged); they
    /// are tried again at the next prune.
    pub failed: usize,
}

/// Delete the closed nfcapd files anywhere under `root` whose name says
/// they started more than `retention` before now; see [`prune_before`].
/// Runs on a blocking thread: a large tree is many system calls.
pub(crate) async fn prune_aged(root: PathBuf, retention: Duration) -> io::Result<Pruned> {
    let Some(cutoff) = time::Duration::try_from(retention)
        .ok()
        .and_then(|kept| OffsetDateTime::now_utc().checked_sub(kept))
    else {
        return Ok(Pruned::default());
    };
    tokio::task::spawn_blocking(move || prune_before(&root, cutoff))
        .await
        .map_err(io::Error::other)?
}

/// Delete the closed nfcapd files under `root` (at any depth: one
/// sub-directory per replica's collector under a shared `--flow-dir`, and a
/// dead replica's directory too) whose name time is before `cutoff`, and
/// the `nfcapd.current.*` files whose mtime is before `cutoff` less
/// [`LIVE_FILE_MAX_AGE`] (dead collectors' files; see the module doc).
///
/// Left alone: younger `nfcapd.current.*` files (a live collector may be
/// writing them), any other name that does not parse as a closed file,
/// symbolic links (neither
/// deleted nor followed, so nothing outside the root is touched), and
/// directories, even empty ones: a running collector creates its directory
/// only when it starts, so removing it would lose every later file.
///
/// A missing root is nothing to prune. One entry that cannot be read or
/// deleted is logged and counted, and the others are still pruned.
pub(crate) fn prune_before(root: &Path, cutoff: OffsetDateTime) -> io::Result<Pruned> {
    let mut pruned = Pruned::default();
    match std::fs::read_dir(root) {
        Ok(entries) => prune_entries(entries, cutoff, &mut pruned),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(pruned)
}

fn prune_entries(entries: std::fs::ReadDir, cutoff: OffsetDateTime, pruned: &mut Pruned) {
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list a flow directory entry; retrying next prune");
                pruned.failed += 1;
                continue;
            }
        };
        let path = entry.path();
        // DirEntry::file_type does not follow a symbolic link.
        let kind = match entry.file_type() {
            Ok(kind) => kind,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot stat a flow file; retrying next prune");
                pruned.failed += 1;
                continue;
            }
        };
        if kind.is_dir() {
            match std::fs::read_dir(&path) {
                Ok(inner) => prune_entries(inner, cutoff, pruned),
                Err(e) => {
                    tracing::warn!(dir = %path.display(), error = %e, "cannot read a flow directory; retrying next prune");
                    pruned.failed += 1;
                }
            }
            continue;
        }
        let name = entry.file_name();
        let name = name.to_str().filter(|_| kind.is_file());
        let aged = if let Some(started) = name.and_then(closed_file_time) {
            started < cutoff
        } else if name.is_some_and(is_current_file) {
            match entry.metadata().and_then(|m| m.modified()) {
                Ok(modified) => {
                    OffsetDateTime::from(modified) < cutoff.saturating_sub(LIVE_FILE_MAX_AGE)
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read a flow file's mtime; retrying next prune");
                    pruned.failed += 1;
                    continue;
                }
            }
        } else {
            tracing::debug!(path = %path.display(), "not an nfcapd file; left alone");
            continue;
        };
        if !aged {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => pruned.removed += 1,
            // Gone meanwhile (an operator, another replica's prune): the
            // same outcome.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot delete an aged flow file; retrying next prune");
                pruned.failed += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::names::closed_file_name;

    fn now() -> OffsetDateTime {
        time::macros::datetime!(2026-12-07 03:50 UTC)
    }

    /// A shared root with a directory per replica (one of them a dead
    /// replica's): only the closed files older than the retention go,
    /// wherever they are; the live file, odd names, directories and
    /// whatever a symbolic link leads to stay.
    #[test]
    fn only_closed_files_older_than_the_cutoff_are_removed() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = root.path();
        let hours = |h: i64| now() - time::Duration::hours(h);
        let cutoff = hours(168);
        let a = root.join("c1-0.0.0.0-2055");
        let dead = root.join("c2-0.0.0.0-2055");
        let empty = root.join("c3-0.0.0.0-2055");
        for dir in [&a, &dead, &empty] {
            std::fs::create_dir(dir).unwrap();
        }
        let old = [
            root.join(closed_file_name(hours(169), false)),
            a.join(closed_file_name(hours(200), false)),
            a.join(closed_file_name(
                hours(168) - time::Duration::seconds(2),
                true,
            )),
            dead.join(closed_file_name(hours(24 * 365), false)),
        ];
        let kept = [
            root.join(closed_file_name(hours(1), false)),
            a.join(closed_file_name(hours(167), false)),
            a.join(closed_file_name(hours(0), true)),
            // Exactly at the cutoff (a whole minute): not older than the
            // retention.
            a.join(closed_file_name(cutoff, false)),
            a.join("nfcapd.current.4242"),
            dead.join("nfcapd.current.17"),
            a.join("nfcapd.2020"),
            a.join("notes.txt"),
            root.join(".nfstat"),
        ];
        for file in old.iter().chain(&kept) {
            std::fs::write(file, b"x").unwrap();
        }
        // A directory named like a file is not deleted, only looked into.
        let odd_dir = root.join(closed_file_name(hours(500), false));
        std::fs::create_dir(&odd_dir).unwrap();
        // Symbolic links are neither deleted nor followed out of the root.
        let outside_file = outside.path().join(closed_file_name(hours(500), false));
        std::fs::write(&outside_file, b"x").unwrap();
        let linked_dir = root.join("elsewhere");
        std::os::unix::fs::symlink(outside.path(), &linked_dir).unwrap();
        let linked_file = a.join(closed_file_name(hours(400), false));
        std::os::unix::fs::symlink(&outside_file, &linked_file).unwrap();

        let pruned = prune_before(root, cutoff).unwrap();

        assert_eq!(
            pruned,
            Pruned {
                removed: old.len(),
                failed: 0
            }
        );
        for file in &old {
            assert!(!file.exists(), "{} was kept", file.display());
        }
        for file in &kept {
            assert!(file.exists(), "{} was removed", file.display());
        }
        assert!(empty.is_dir() && odd_dir.is_dir() && dead.is_dir());
        assert!(outside_file.exists(), "followed a link out of the root");
        assert!(linked_file.symlink_metadata().is_ok(), "removed a link");
        // Nothing left to do: a second prune removes nothing.
        assert_eq!(prune_before(root, cutoff).unwrap(), Pruned::default());
    }

    /// A replica that died (or was stopped: the controller kills nfcapd)
    /// leaves its `nfcapd.current.<pid>` behind. Once its mtime is older
    /// than the retention and one longest rotation interval, no live
    /// collector can be writing it, and it goes; a younger one stays, and
    /// so does a link and an odd name however old.
    #[test]
    fn a_dead_collectors_current_file_goes_once_older_than_any_live_one() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let cutoff = now() - time::Duration::hours(168);
        let dead = root.join("c2-0.0.0.0-2055");
        let live = root.join("c1-0.0.0.0-2055");
        std::fs::create_dir(&dead).unwrap();
        std::fs::create_dir(&live).unwrap();
        let with_mtime = |path: PathBuf, at: OffsetDateTime| {
            let file = std::fs::File::create(&path).unwrap();
            file.set_modified(at.into()).unwrap();
            path
        };
        let gone = [
            with_mtime(
                dead.join("nfcapd.current.17"),
                cutoff - LIVE_FILE_MAX_AGE - time::Duration::seconds(1),
            ),
            with_mtime(
                dead.join("nfcapd.current.9"),
                cutoff - time::Duration::days(30),
            ),
        ];
        let kept = [
            // Older than the retention, but not by a whole longest
            // interval: a collector rotating once an hour may still be
            // writing it.
            with_mtime(
                dead.join("nfcapd.current.18"),
                cutoff - LIVE_FILE_MAX_AGE + time::Duration::seconds(1),
            ),
            // Rotated a moment ago.
            with_mtime(live.join("nfcapd.current.4242"), now()),
            with_mtime(
                dead.join("nfcapd.current."),
                cutoff - time::Duration::days(30),
            ),
            with_mtime(
                dead.join("nfcapd.current.1x"),
                cutoff - time::Duration::days(30),
            ),
            with_mtime(
                dead.join("nfcapd.currentx"),
                cutoff - time::Duration::days(30),
            ),
        ];
        let link = live.join("nfcapd.current.1");
        std::os::unix::fs::symlink(&gone[1], &link).unwrap();

        let pruned = prune_before(root, cutoff).unwrap();

        assert_eq!(
            pruned,
            Pruned {
                removed: gone.len(),
                failed: 0
            }
        );
        for file in &gone {
            assert!(!file.exists(), "{} was kept", file.display());
        }
        for file in &kept {
            assert!(file.exists(), "{} was removed", file.display());
        }
        assert!(link.symlink_metadata().is_ok(), "removed a link");
    }

    #[test]
    fn a_missing_root_is_nothing_to_prune() {
        let root = tempfile::tempdir().unwrap();
        let missing = root.path().join("flows");
        assert_eq!(prune_before(&missing, now()).unwrap(), Pruned::default());
    }
}
