//! The join bundle: one string that tells a new node where the controller's
//! gRPC API is, which CA to pin, and the join token
//! (`measurelab join-bundle` prints it, `measurelab agent --join-bundle`
//! takes it).
//!
//! Format: `mlj1.` followed by the unpadded base64url of a JSON object
//! `{"endpoint": "https://…", "ca_sha256": "<64 hex>", "join_token": "…"}`.
//! The version prefix lets a later format be told apart.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Prefix of the current format.
pub const PREFIX: &str = "mlj1.";

/// What a bundle holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinBundle {
    /// gRPC endpoint of the controller, `https://HOST:PORT`.
    pub endpoint: String,
    /// SHA-256 of the controller CA's certificate (DER), lower-case hex.
    pub ca_sha256: String,
    /// The join token.
    pub join_token: String,
}

/// Why a bundle was refused; the message names the part that is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("join bundle: {0}")]
pub struct JoinBundleError(String);

impl JoinBundle {
    /// Check every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), JoinBundleError> {
        if !self.endpoint.starts_with("https://") {
            return Err(JoinBundleError(format!(
                "endpoint {:?} must be an https:// URL: a bundle pins a CA, which plaintext has none of",
                self.endpoint
            )));
        }
        if self.ca_sha256.len() != 64
            || !self
                .ca_sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(JoinBundleError(format!(
                "ca_sha256 {:?} must be 64 lower-case hex digits (SHA-256)",
                self.ca_sha256
            )));
        }
        if self.join_token.trim().is_empty() {
            return Err(JoinBundleError("join_token must not be empty".into()));
        }
        Ok(())
    }

    /// The bundle as one string.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    /// Parse and validate a bundle string (surrounding whitespace is ignored).
    pub fn decode(text: &str) -> Result<JoinBundle, JoinBundleError> {
        let text = text.trim();
        let body = text.strip_prefix(PREFIX).ok_or_else(|| {
            JoinBundleError(format!(
                "does not start with {PREFIX:?}; print one with `measurelab join-bundle`"
            ))
        })?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| JoinBundleError(format!("is not base64url after {PREFIX:?}: {e}")))?;
        let bundle: JoinBundle = serde_json::from_slice(&json)
            .map_err(|e| JoinBundleError(format!("does not hold the expected JSON: {e}")))?;
        bundle.validate()?;
        Ok(bundle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle() -> JoinBundle {
        JoinBundle {
            endpoint: "https://10.254.0.1:7071".into(),
            ca_sha256: "ab".repeat(32),
            join_token: "tok".into(),
        }
    }

    #[test]
    fn round_trips() {
        let text = bundle().encode();
        assert!(text.starts_with("mlj1."), "{text}");
        assert_eq!(JoinBundle::decode(&format!(" {text}\n")).unwrap(), bundle());
    }

    #[test]
    fn bad_bundles_name_what_is_wrong() {
        let err = JoinBundle::decode("xyz").unwrap_err().to_string();
        assert!(err.contains("mlj1."), "{err}");
        let plain = JoinBundle {
            endpoint: "http://10.254.0.1:7071".into(),
            ..bundle()
        };
        let err = JoinBundle::decode(&plain.encode()).unwrap_err().to_string();
        assert!(err.contains("endpoint"), "{err}");
        let short = JoinBundle {
            ca_sha256: "abc".into(),
            ..bundle()
        };
        let err = JoinBundle::decode(&short.encode()).unwrap_err().to_string();
        assert!(err.contains("ca_sha256"), "{err}");
    }
}
