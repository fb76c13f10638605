//! Where downloads land (`vm cp` from a VM, `deployment fetch`): a
//! temporary file beside the target, hashed as it is written, renamed over
//! the target only once size and digest check out, removed otherwise.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use anyhow::Context;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWrite;

/// Removes a half-written download unless forgotten.
pub(crate) struct TempFile(PathBuf);

impl TempFile {
    pub(crate) fn new(path: PathBuf) -> Self {
        TempFile(path)
    }

    /// The file is complete and renamed into place: leave it.
    pub(crate) fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Hashes what it writes, so a download is checked as it lands.
pub(crate) struct HashingWriter {
    pub(crate) inner: tokio::fs::File,
    pub(crate) hasher: Sha256,
    pub(crate) written: u64,
}

impl HashingWriter {
    pub(crate) fn new(inner: tokio::fs::File) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }
}

impl AsyncWrite for HashingWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.hasher.update(&buf[..n]);
            this.written += n as u64;
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Where a download of `remote` (a path in a VM) goes: into `local` when it
/// is a directory (keeping the file name), else `local` itself.
pub(crate) fn target(local: &Path, remote: &str) -> anyhow::Result<PathBuf> {
    if local.is_dir() {
        let name = Path::new(remote)
            .file_name()
            .context("the remote PATH names no file")?;
        Ok(local.join(name))
    } else {
        Ok(local.to_path_buf())
    }
}

/// Creates the temporary file for `target` in the same directory (so the
/// final rename stays on one file system).
pub(crate) async fn create_beside(
    target: &Path,
) -> anyhow::Result<(TempFile, PathBuf, tokio::fs::File)> {
    let dir = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .context("DESTINATION names no file")?
        .to_string_lossy()
        .into_owned();
    let temp_path = dir.join(format!(".{name}.mlcp-{}", std::process::id()));
    let temp = TempFile::new(temp_path.clone());
    let file = tokio::fs::File::create(&temp_path)
        .await
        .with_context(|| format!("cannot create {}", temp_path.display()))?;
    Ok((temp, temp_path, file))
}
