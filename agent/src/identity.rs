//! The node's credentials, persisted so a restarted agent is the same node.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors reading or writing `identity.json`.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The file exists but cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// identity.json path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file exists but is not valid JSON of the expected shape.
    #[error("{path} is corrupt ({reason}); delete it to register as a new node")]
    Corrupt {
        /// identity.json path.
        path: PathBuf,
        /// Parser message.
        reason: String,
    },
}

/// What the controller handed out at registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Stable node id.
    pub node_id: String,
    /// Secret for Heartbeat/ShipLogs.
    pub node_secret: String,
}

/// File name inside the state dir.
pub const IDENTITY_FILE: &str = "identity.json";

/// Path of the identity file in `state_dir`.
pub fn identity_path(state_dir: &Path) -> PathBuf {
    state_dir.join(IDENTITY_FILE)
}

/// Load the identity, `None` when the node never registered.
pub fn load(state_dir: &Path) -> Result<Option<Identity>, IdentityError> {
    let path = identity_path(state_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(IdentityError::Io { path, source }),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| IdentityError::Corrupt {
            path,
            reason: e.to_string(),
        })
}

/// Store the identity atomically with mode 0600: it holds a credential.
pub fn store(state_dir: &Path, identity: &Identity) -> Result<(), IdentityError> {
    let path = identity_path(state_dir);
    let io = |source| IdentityError::Io {
        path: path.clone(),
        source,
    };
    let tmp = state_dir.join(format!(".{IDENTITY_FILE}.tmp"));
    let body = serde_json::to_vec_pretty(identity).map_err(|e| IdentityError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        // The mode in open() only applies on creation; a stale tmp file
        // could carry looser bits.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
        file.write_all(&body).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, &path).map_err(io)
}

/// The current identity once there is one, marked as seen so the caller can
/// wait for the next change; `None` when the agent shuts down (or the
/// identity's sender is gone). The loops that follow a stream per identity
/// (desired state, exec channel) start each round here.
pub(crate) async fn next_identity(
    identity_rx: &mut tokio::sync::watch::Receiver<Option<Identity>>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<Identity> {
    let identity = tokio::select! {
        identity = identity_rx.wait_for(|i| i.is_some()) => identity.ok()?.clone(),
        _ = shutdown.wait_for(|stop| *stop) => return None,
    };
    identity_rx.mark_unchanged();
    identity
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let id = Identity {
            node_id: "n-1".into(),
            node_secret: "s3cret".into(),
        };
        store(dir.path(), &id).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(id));
        let mode = std::fs::metadata(identity_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn corrupt_file_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(identity_path(dir.path()), "{not json").unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("identity.json is corrupt"),
            "{err}"
        );
    }
}
