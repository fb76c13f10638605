//! Bodies of node identity management (operator only): registrations that
//! wait for an operator's approval, and join tokens made through the API.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A registration under an existing node's name (or id) that carried only a
/// join token, not the node's current secret, or that came from a revoked
/// node. The controller refused it and keeps one entry per name (the latest
/// attempt and a count), so refused retries cannot grow the database.
/// `POST /v1/nodes/{id_or_name}/approve` lets the next attempt through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RegistrationRequest {
    /// Name the registration asked for.
    pub name: String,
    /// Id of the existing node the name (or the requested id) belongs to.
    #[schema(format = "uuid")]
    pub node_id: String,
    /// Why it was refused: `no_secret`, `wrong_secret` or `revoked`.
    pub reason: String,
    /// Refused attempts so far.
    pub attempts: u64,
    /// RFC 3339 time of the first refused attempt.
    #[schema(format = DateTime)]
    pub first_attempt_at: String,
    /// RFC 3339 time of the latest refused attempt.
    #[schema(format = DateTime)]
    pub last_attempt_at: String,
    /// Address the latest attempt came from (IP:port as the controller saw it).
    pub peer_address: String,
    /// Management address the latest attempt reported.
    pub management_address: String,
    /// Agent version the latest attempt reported.
    pub agent_version: String,
    /// RFC 3339 time an operator approved it; the next attempt under this
    /// name then registers (with a new secret) and the request disappears.
    #[schema(format = DateTime, required = true)]
    pub approved_at: Option<String>,
}

/// `GET /v1/registration_requests` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RegistrationRequestList {
    /// Ordered by name.
    pub requests: Vec<RegistrationRequest>,
    /// Set when more items follow: pass it as `?after=` for the next page
    /// (docs/pagination.md). Absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

paged!(RegistrationRequestList, requests, RegistrationRequest);

/// `POST /v1/join_tokens` body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenCreate {
    /// Free text for the operator (at most 256 bytes).
    #[serde(default)]
    pub description: String,
    /// Only a node of this name may register with the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The first successful registration consumes the token.
    #[serde(default)]
    pub single_use: bool,
    /// RFC 3339 time after which the token is refused. At most one of
    /// `expires_at` and `ttl_seconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    /// Seconds from now after which the token is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub ttl_seconds: Option<u64>,
}

/// Whether a join token still registers nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JoinTokenState {
    /// Registers nodes.
    Active,
    /// Single-use and already consumed.
    Used,
    /// Past its `expires_at`.
    Expired,
    /// Revoked by an operator.
    Revoked,
}

/// A join token made through the API. Its secret is shown only in the
/// answer to the create call; the controller keeps a digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JoinToken {
    /// Token id (also the first part of the token itself).
    #[schema(format = "uuid")]
    pub id: String,
    /// Free text for the operator.
    pub description: String,
    /// The only node name it registers; null for any name.
    #[schema(required = true)]
    pub node_name: Option<String>,
    /// Consumed by its first successful registration.
    pub single_use: bool,
    /// Whether it still registers nodes.
    pub state: JoinTokenState,
    /// RFC 3339 creation time.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// RFC 3339 expiry, null for none.
    #[schema(format = DateTime, required = true)]
    pub expires_at: Option<String>,
    /// RFC 3339 time of the latest registration made with it.
    #[schema(format = DateTime, required = true)]
    pub last_used_at: Option<String>,
    /// Node registered by its latest use.
    #[schema(format = "uuid", required = true)]
    pub last_used_by: Option<String>,
    /// RFC 3339 time it was revoked.
    #[schema(format = DateTime, required = true)]
    pub revoked_at: Option<String>,
}

/// `POST /v1/join_tokens` response: the token and, this once, its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenCreated {
    /// The stored token.
    pub join_token: JoinToken,
    /// The complete token to give the agent (`--join-token`,
    /// `--join-token-file`): `mlj_<id>_<secret>`. Not shown again.
    pub secret: String,
}

/// `GET /v1/join_tokens` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenList {
    /// Newest first.
    pub join_tokens: Vec<JoinToken>,
    /// Set when more items follow: pass it as `?after=` for the next page
    /// (docs/pagination.md). Absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

paged!(JoinTokenList, join_tokens, JoinToken);
