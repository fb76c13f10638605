//! The join bundle: one string that tells a new node where the controller's
//! gRPC API is, which CA to pin, and the join token
//! (`measurelab join-bundle` prints it, `measurelab agent --join-bundle`
//! takes it).
//!
//! Format: `mlj1.` followed by the unpadded base64url of a JSON object
//! `{"endpoint": "https://…", "ca_sha256": "<64 hex>", "join_token": "…"}`.
//! The version prefix lets a later format be told apart.
//!
//! Several controllers: `endpoint` is the first, and `more_endpoints` (a JSON
//! array, absent with one controller) the others. The field was added
//! without a new prefix: an agent that predates it ignores unknown fields,
//! so it reads such a bundle as before and talks to the first controller
//! only (no failover); a bundle with one controller is byte for byte the
//! old format. (Release 0.1.0 has no join bundles at all.)

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Prefix of the current format.
pub const PREFIX: &str = "mlj1.";

/// What a bundle holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinBundle {
    /// gRPC endpoint of the controller, `https://HOST:PORT`.
    pub endpoint: String,
    /// gRPC endpoints of further controllers (replicas), tried after
    /// `endpoint` when it stops answering.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_endpoints: Vec<String>,
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
        for (field, endpoint) in std::iter::once(("endpoint", &self.endpoint))
            .chain(self.more_endpoints.iter().map(|e| ("more_endpoints", e)))
        {
            if !endpoint.starts_with("https://") || endpoint.contains(',') {
                return Err(JoinBundleError(format!(
                    "{field} {endpoint:?} must be one https:// URL: a bundle pins a CA, which plaintext has none of"
                )));
            }
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

    /// A bundle for the controllers of the comma-separated list `endpoints`
    /// (see [`crate::client::split_endpoints`]), checked.
    pub fn new(
        endpoints: &str,
        ca_sha256: String,
        join_token: String,
    ) -> Result<JoinBundle, JoinBundleError> {
        let mut list = crate::client::split_endpoints(endpoints)
            .map_err(|e| JoinBundleError(format!("endpoint {e}")))?
            .into_iter();
        let bundle = JoinBundle {
            endpoint: list.next().unwrap_or_default(),
            more_endpoints: list.collect(),
            ca_sha256,
            join_token,
        };
        bundle.validate()?;
        Ok(bundle)
    }

    /// Every controller endpoint as the agent's comma-separated list.
    pub fn controller(&self) -> String {
        std::iter::once(&self.endpoint)
            .chain(&self.more_endpoints)
            .cloned()
            .collect::<Vec<_>>()
            .join(",")
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
            more_endpoints: Vec::new(),
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

    /// A bundle of one controller is exactly the format before
    /// `more_endpoints`, and one of several still holds everything an agent
    /// that predates the field reads (it ignores the rest).
    #[test]
    fn several_controllers_keep_the_old_format_readable() {
        #[derive(Deserialize)]
        struct Before {
            endpoint: String,
            ca_sha256: String,
            join_token: String,
        }
        let json = |b: &JoinBundle| -> serde_json::Value {
            let text = b.encode();
            let body = text.strip_prefix(PREFIX).unwrap();
            serde_json::from_slice(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(body)
                    .unwrap(),
            )
            .unwrap()
        };
        assert_eq!(
            json(&bundle()),
            serde_json::json!({
                "endpoint": "https://10.254.0.1:7071",
                "ca_sha256": "ab".repeat(32),
                "join_token": "tok",
            })
        );
        let several = JoinBundle::new(
            "https://10.254.0.1:7071, https://10.254.0.2:7071/",
            "ab".repeat(32),
            "tok".into(),
        )
        .unwrap();
        assert_eq!(
            several.controller(),
            "https://10.254.0.1:7071,https://10.254.0.2:7071"
        );
        assert_eq!(JoinBundle::decode(&several.encode()).unwrap(), several);
        let old: Before = serde_json::from_value(json(&several)).unwrap();
        assert_eq!(old.endpoint, "https://10.254.0.1:7071");
        assert_eq!((old.ca_sha256.len(), old.join_token.as_str()), (64, "tok"));
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
        let mixed = JoinBundle::new(
            "https://10.254.0.1:7071,http://10.254.0.2:7071",
            "ab".repeat(32),
            "tok".into(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            mixed.contains("more_endpoints") && mixed.contains("10.254.0.2"),
            "{mixed}"
        );
        let empty = JoinBundle::new("https://10.254.0.1:7071,", "ab".repeat(32), "tok".into())
            .unwrap_err()
            .to_string();
        assert!(empty.contains("empty entry"), "{empty}");
    }
}
