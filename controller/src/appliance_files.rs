//! The appliance files the controller keeps and hands to the nodes:
//! content-addressed under `<data_dir>/appliances/sha256/<hex>` (or
//! `--appliance-dir`, which controller replicas share: a file's name is its
//! digest and each upload is renamed into place from a partial file of its
//! own, so replicas storing the same file at once cannot corrupt it).
//!
//! An upload streams to a temporary file while it is hashed, so an image is
//! never held in memory, and it is renamed into place only when its digest is
//! the one the uploader named: a file under a digest's name always has that
//! digest (unless someone edits it on disk, which the nodes catch, since they
//! verify what they receive). Nothing here touches SQLite, so hashing a large
//! image never holds the store's write lock.

use std::path::{Path, PathBuf};

use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest appliance file accepted (a full-distribution disk image fits).
pub(crate) const MAX_APPLIANCE_FILE_BYTES: u64 = 16 * 1024 * 1024 * 1024;
/// Bytes per chunk sent to a node (well under gRPC's 4 MiB message limit).
pub(crate) const CHUNK_BYTES: usize = 256 * 1024;

/// Why an appliance file could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum ApplianceFileError {
    /// The digest is not a SHA-256 in lowercase hex.
    #[error("{value:?} is not a SHA-256 (64 lowercase hex digits)")]
    BadDigest {
        /// What was given.
        value: String,
    },
    /// The uploaded content is not what its digest says.
    #[error("the uploaded content has SHA-256 {actual}, not {expected}; nothing was stored")]
    Mismatch {
        /// The digest the uploader named.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// The upload is larger than [`MAX_APPLIANCE_FILE_BYTES`].
    #[error("the upload is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The request body broke off.
    #[error("the upload broke off: {0}")]
    Body(String),
    /// The file store cannot be read or written.
    #[error("appliance file store {path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ApplianceFileError + '_ {
    move |source| ApplianceFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Checks that `value` is a lowercase hex SHA-256 (it names a file, so
/// nothing else may pass).
pub(crate) fn check_digest(value: &str) -> Result<(), ApplianceFileError> {
    if value.len() == 64
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(ApplianceFileError::BadDigest {
            value: value.to_string(),
        })
    }
}

/// The file store; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct ApplianceFiles {
    dir: PathBuf,
}

impl ApplianceFiles {
    /// The files under `root/sha256/` (`root`: `<data_dir>/appliances` or
    /// `--appliance-dir`).
    pub fn new(root: &Path) -> Self {
        ApplianceFiles {
            dir: root.join("sha256"),
        }
    }

    fn path(&self, sha256: &str) -> Result<PathBuf, ApplianceFileError> {
        check_digest(sha256)?;
        Ok(self.dir.join(sha256))
    }

    /// Size of the stored file `sha256`; `None` when there is none.
    pub async fn size(&self, sha256: &str) -> Result<Option<u64>, ApplianceFileError> {
        let path = self.path(sha256)?;
        match tokio::fs::metadata(&path).await {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Stores `body` as file `expected`. Returns its size and whether it is
    /// new (an upload of a file already stored is read and dropped, so a
    /// repeated apply is harmless).
    pub async fn store<S, E>(
        &self,
        expected: &str,
        mut body: S,
    ) -> Result<(u64, bool), ApplianceFileError>
    where
        S: Stream<Item = Result<axum::body::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let target = self.path(expected)?;
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(io(&self.dir))?;
        let partial = self
            .dir
            .join(format!(".partial-{}", uuid::Uuid::new_v4().simple()));
        let written = async {
            let mut file = tokio::fs::File::create(&partial)
                .await
                .map_err(io(&partial))?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| ApplianceFileError::Body(e.to_string()))?;
                size += chunk.len() as u64;
                if size > MAX_APPLIANCE_FILE_BYTES {
                    return Err(ApplianceFileError::TooLarge {
                        limit: MAX_APPLIANCE_FILE_BYTES,
                    });
                }
                hasher.update(&chunk);
                file.write_all(&chunk).await.map_err(io(&partial))?;
            }
            let actual = hex::encode(hasher.finalize());
            if actual != expected {
                return Err(ApplianceFileError::Mismatch {
                    expected: expected.to_string(),
                    actual,
                });
            }
            // Durable before it is named: a crash must not leave a short
            // file under a digest's name.
            file.sync_all().await.map_err(io(&partial))?;
            Ok(size)
        }
        .await;
        let size = match written {
            Ok(size) => size,
            Err(e) => {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(e);
            }
        };
        if tokio::fs::try_exists(&target).await.unwrap_or(false) {
            let _ = tokio::fs::remove_file(&partial).await;
            return Ok((size, false));
        }
        tokio::fs::rename(&partial, &target)
            .await
            .map_err(io(&target))?;
        Ok((size, true))
    }

    /// The stored file `sha256` as a stream of chunks, with its size;
    /// `None` when there is none.
    pub async fn read(
        &self,
        sha256: &str,
    ) -> Result<
        Option<(
            u64,
            impl Stream<Item = Result<Vec<u8>, ApplianceFileError>> + Send + 'static,
        )>,
        ApplianceFileError,
    > {
        let path = self.path(sha256)?;
        let file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        let size = file.metadata().await.map_err(io(&path))?.len();
        let chunks = futures::stream::unfold(Some((file, path)), |state| async move {
            let (mut file, path) = state?;
            let mut buf = vec![0u8; CHUNK_BYTES];
            let mut filled = 0;
            // Fill whole chunks: reads may return less than asked.
            while filled < buf.len() {
                match file.read(&mut buf[filled..]).await {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) => return Some((Err(io(&path)(e)), None)),
                }
            }
            if filled == 0 {
                return None;
            }
            buf.truncate(filled);
            Some((Ok(buf), Some((file, path))))
        });
        Ok(Some((size, chunks)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&[u8]]) -> impl Stream<Item = Result<axum::body::Bytes, String>> + Unpin {
        futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(axum::body::Bytes::copy_from_slice(p)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn stores_by_digest_and_refuses_a_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let files = ApplianceFiles::new(dir.path());
        let digest = hex::encode(Sha256::digest(b"kernel bytes"));
        let (size, created) = files
            .store(&digest, chunks(&[b"kernel ", b"bytes"]))
            .await
            .unwrap();
        assert_eq!((size, created), (12, true));
        let (_, again) = files
            .store(&digest, chunks(&[b"kernel bytes"]))
            .await
            .unwrap();
        assert!(!again);
        let (size, stream) = files.read(&digest).await.unwrap().unwrap();
        let read: Vec<Vec<u8>> = stream.map(|c| c.unwrap()).collect().await;
        assert_eq!((size, read.concat()), (12, b"kernel bytes".to_vec()));

        let other = hex::encode(Sha256::digest(b"other"));
        let err = files
            .store(&other, chunks(&[b"not other"]))
            .await
            .unwrap_err();
        assert!(matches!(err, ApplianceFileError::Mismatch { .. }), "{err}");
        assert_eq!(files.size(&other).await.unwrap(), None);
        // No partial file is left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path().join("sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from(&digest)]);
        assert!(files.size("../../etc/passwd").await.is_err());
    }
}
