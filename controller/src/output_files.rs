//! Program output files: the controller's own client of the exec channel
//! (`exec_hub`), used by `GET /v1/deployments/{id}/outputs[/...]`.
//!
//! A file is looked at with a `stat` session (size, mtime, SHA-256; the
//! guest reads it, nothing crosses the network) and fetched with the same
//! `get` session `vm cp` uses, so outputs have no transport of their own:
//! the guest and node agent bounds, the credit windows and the node and
//! stream scoping of `exec_hub` all apply unchanged. Here the controller is
//! the client: it credits the guest only for what the HTTP body has taken,
//! so a slow downloader slows the guest's reads rather than filling memory.

use std::time::Duration;

use axum::body::Bytes;
use base64::Engine;
use measurelab_api::exec::{frame_cost, ExecExit, ExecFrame, ExecOpen, STAT_ABSENT_CODE};
use tokio::sync::mpsc;

use crate::exec_hub::{ExecHub, ExecHubError, HubSession};

/// Largest output file listed with a digest or downloaded (as `vm cp`'s
/// default limit).
pub const MAX_OUTPUT_BYTES: u64 = 1024 * 1024 * 1024;

/// Longest a `stat` may take: it hashes up to [`MAX_OUTPUT_BYTES`] in the
/// guest (a few seconds per GiB), plus the way there and back.
pub const STAT_TIMEOUT: Duration = Duration::from_secs(120);

/// Chunks of a download queued between the guest session and the HTTP
/// body; the credit window bounds the rest.
const BODY_QUEUE: usize = 8;

/// What a `stat` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileStat {
    /// No such file (yet).
    Absent,
    /// A regular file.
    Present {
        /// Bytes.
        size: u64,
        /// Lowercase hex SHA-256, `None` above [`MAX_OUTPUT_BYTES`].
        sha256: Option<String>,
        /// Seconds since the epoch.
        mtime_unix: Option<i64>,
    },
}

/// Why a file could not be looked at or fetched.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The VM's node has no exec channel (offline, or too many sessions).
    #[error(transparent)]
    Offline(#[from] ExecHubError),
    /// The guest (or the node agent for it) refused or failed: no guest
    /// connected, not a regular file, unreadable.
    #[error("{0}")]
    Guest(String),
    /// The guest did not answer within [`STAT_TIMEOUT`].
    #[error("the guest did not answer within {} s", STAT_TIMEOUT.as_secs())]
    Timeout,
}

/// Looks at `path` in VM `vm_id` on `node_id`.
pub async fn stat(
    hub: &ExecHub,
    node_id: &str,
    vm_id: &str,
    path: &str,
) -> Result<FileStat, OutputError> {
    let open = ExecOpen::Stat {
        path: path.to_string(),
        max_hash_bytes: MAX_OUTPUT_BYTES,
    };
    let mut session = hub.open(node_id, vm_id, open).await?;
    let exit = tokio::time::timeout(STAT_TIMEOUT, last_exit(&mut session))
        .await
        .map_err(|_| OutputError::Timeout)?;
    if let Some(error) = exit.error {
        return Err(OutputError::Guest(error));
    }
    match (exit.code, exit.size) {
        (Some(STAT_ABSENT_CODE), _) => Ok(FileStat::Absent),
        (Some(0), Some(size)) => Ok(FileStat::Present {
            size,
            sha256: exit.sha256,
            mtime_unix: exit.mtime_unix,
        }),
        _ => Err(OutputError::Guest(format!(
            "the guest answered the stat of {path} without a size (exit {:?})",
            exit.code
        ))),
    }
}

/// The exit frame of a session that sends nothing else; frames before it
/// (a hostile guest's output) are dropped.
async fn last_exit(session: &mut HubSession) -> ExecExit {
    loop {
        match session.recv().await {
            Some(ExecFrame::Exit { exit }) => return exit,
            Some(_) => {}
            None => return ExecExit::error("the session was lost on its way to the guest"),
        }
    }
}

/// Starts streaming `path`, which a `stat` just found to be `size` bytes
/// with SHA-256 `sha256`. The receiver yields the content; when the guest's
/// exit reports anything else (the file changed in between, a read failed)
/// the last item is an error, which aborts the HTTP body so that a client
/// never takes a different file for the announced one.
pub async fn fetch(
    hub: &ExecHub,
    node_id: &str,
    vm_id: &str,
    path: &str,
    size: u64,
    sha256: String,
) -> Result<mpsc::Receiver<Result<Bytes, std::io::Error>>, OutputError> {
    let open = ExecOpen::Get {
        path: path.to_string(),
        max_bytes: MAX_OUTPUT_BYTES,
    };
    let session = hub.open(node_id, vm_id, open).await?;
    let (tx, rx) = mpsc::channel(BODY_QUEUE);
    tokio::spawn(pump(session, tx, size, sha256));
    Ok(rx)
}

async fn pump(
    mut session: HubSession,
    body: mpsc::Sender<Result<Bytes, std::io::Error>>,
    size: u64,
    sha256: String,
) {
    let sender = session.sender();
    let broken = |reason: String| Err(std::io::Error::other(reason));
    loop {
        match session.recv().await {
            Some(ExecFrame::Output { data, .. }) => {
                let bytes = match base64::engine::general_purpose::STANDARD.decode(data) {
                    Ok(bytes) => bytes,
                    Err(err) => {
                        let _ = body
                            .send(broken(format!("bad data from the guest: {err}")))
                            .await;
                        return;
                    }
                };
                let cost = frame_cost(bytes.len() as u64);
                // The downloader went away: dropping the session kills the
                // read in the guest.
                if body.send(Ok(Bytes::from(bytes))).await.is_err() {
                    return;
                }
                if sender
                    .send(&ExecFrame::Credit { bytes: cost })
                    .await
                    .is_err()
                {
                    let _ = body.send(broken("the VM's node went away".into())).await;
                    return;
                }
            }
            Some(ExecFrame::Exit { exit }) => {
                let intact = exit.error.is_none()
                    && exit.size == Some(size)
                    && exit.sha256.as_deref() == Some(sha256.as_str());
                if !intact {
                    let reason = exit.error.unwrap_or_else(|| {
                        format!(
                            "the file changed while it was sent: announced {size} bytes with sha256 {sha256}, read {:?} bytes with sha256 {:?}",
                            exit.size, exit.sha256
                        )
                    });
                    let _ = body.send(broken(reason)).await;
                }
                return;
            }
            Some(_) => {}
            None => {
                let _ = body
                    .send(broken(
                        "the session was lost on its way to the guest".into(),
                    ))
                    .await;
                return;
            }
        }
    }
}
