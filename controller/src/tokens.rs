//! Admin and join tokens: random secrets kept in files of the data directory,
//! created on first start and reused afterwards, so agents and operators keep
//! working across controller restarts.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;

/// The operator's admin token, in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// The join token agents register with, in the data directory (unless
/// `ControllerConfig::join_token` gives one).
pub const JOIN_TOKEN_FILE: &str = "join.token";

/// Errors reading or creating a token file.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file exists but cannot be read or fixed.
    #[error("cannot read token file {path}: {source}")]
    Read {
        /// Token file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file cannot be created.
    #[error("cannot create token file {path}: {source}")]
    Create {
        /// Token file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file exists but is empty.
    #[error("token file {0} is empty; delete it to get a new token")]
    Empty(PathBuf),
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Read the token in `path`, or create it (mode 0600) with a fresh random one.
pub(crate) fn load_or_create(path: &Path) -> Result<String, TokenError> {
    let read_error = |source| TokenError::Read {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let token = text.trim().to_string();
            if token.is_empty() {
                return Err(TokenError::Empty(path.to_path_buf()));
            }
            // A token readable by others is a leaked token; tighten it.
            let mode = std::fs::metadata(path)
                .map_err(read_error)?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "token file was readable by others; setting mode 0600");
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(read_error)?;
            }
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = random_token();
            let create_error = |source| TokenError::Create {
                path: path.to_path_buf(),
                source,
            };
            // create_new: two controllers racing on one data dir must not
            // hand out different tokens.
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(create_error)?;
            file.write_all(format!("{token}\n").as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(create_error)?;
            Ok(token)
        }
        Err(e) => Err(read_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        let first = load_or_create(&path).unwrap();
        assert_eq!(first.len(), 64);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create(&path).unwrap(), first);
    }

    #[test]
    fn loose_permissions_are_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("join.token");
        std::fs::write(&path, "abc\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(load_or_create(&path).unwrap(), "abc");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
