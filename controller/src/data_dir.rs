//! Exclusive ownership of the controller's data directory.
//!
//! Two controllers on one `controller.db` would each keep their own node
//! registry in memory and overwrite each other's writes; SQLite's own locking
//! only serialises the transactions, it does not stop the split brain. The
//! second controller must refuse to start, and say which process holds the
//! directory.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Name of the lock file inside the data directory.
pub const LOCK_FILE: &str = "controller.lock";

/// Why the data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum DataDirLockError {
    /// Another live process holds the lock.
    #[error(
        "the data directory {dir} is in use by another controller ({holder}); \
         stop it first, or give this one its own --data-dir"
    )]
    InUse {
        /// Data directory.
        dir: PathBuf,
        /// What the lock file says about its holder, e.g. `pid 1234`.
        holder: String,
    },
    /// The lock file cannot be opened, locked or written.
    #[error("cannot lock the data directory {dir} ({file}): {source}")]
    Io {
        /// Data directory.
        dir: PathBuf,
        /// Lock file.
        file: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// Held for as long as the controller runs; dropping it (or the process
/// dying, even by SIGKILL) releases the lock, so there is no stale lock to
/// clean up by hand.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Take `<dir>/controller.lock` exclusively, without waiting.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, DataDirLockError> {
        let path = dir.join(LOCK_FILE);
        let io_error = |source| DataDirLockError::Io {
            dir: dir.to_path_buf(),
            file: path.clone(),
            source,
        };
        // Not truncated on open: the holder's pid must still be readable by
        // the process that fails to take the lock.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "holder unknown".to_string(),
                    pid => format!("pid {pid}"),
                };
                return Err(DataDirLockError::InUse {
                    dir: dir.to_path_buf(),
                    holder,
                });
            }
            Err(TryLockError::Error(source)) => return Err(io_error(source)),
        }
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .and_then(|()| file.sync_all())
            .map_err(io_error)?;
        Ok(DataDirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_dir_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let err = DataDirLock::acquire(dir.path()).unwrap_err();
        match &err {
            DataDirLockError::InUse { holder, .. } => {
                assert_eq!(holder, &format!("pid {}", std::process::id()))
            }
            other => panic!("expected InUse, got {other:?}"),
        }
        assert!(err.to_string().contains("in use by another controller"));
        drop(first);
        DataDirLock::acquire(dir.path()).expect("free again once the holder is gone");
    }
}
