//! Wire types of the tenancy routes (tenants, API tokens, usage), as the
//! tenancy contract words them, and the calls that send them.
//!
//! Kept beside the provider until `measurelab_api::http` carries them; the
//! resources import them from here only, so the switch is one file.

use measurelab_api::client::{url_component, Client, ClientError};
use serde::{Deserialize, Serialize};

/// Per-tenant limits; `None` is unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Platforms.
    #[serde(default)]
    pub max_platforms: Option<u64>,
    /// VMs.
    #[serde(default)]
    pub max_vms: Option<u64>,
    /// Summed vCPUs of the VMs.
    #[serde(default)]
    pub max_vcpus: Option<u64>,
    /// Summed memory of the VMs.
    #[serde(default)]
    pub max_memory_mib: Option<u64>,
    /// Summed QoS bandwidth.
    #[serde(default)]
    pub max_bandwidth_kbps: Option<u64>,
    /// Summed program storage.
    #[serde(default)]
    pub max_program_bytes: Option<u64>,
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    /// Stable id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Limits.
    #[serde(default)]
    pub quota: Quota,
    /// RFC 3339.
    pub created_at: String,
}

/// `POST /v1/tenants`.
#[derive(Debug, Clone, Serialize)]
pub struct TenantCreate {
    /// Unique name.
    pub name: String,
    /// Free text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Limits.
    pub quota: Quota,
    /// Idempotency key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `PATCH /v1/tenants/{id}`.
#[derive(Debug, Clone, Serialize)]
pub struct TenantPatch {
    /// Free text.
    pub description: String,
    /// Limits, every one sent (a null clears it).
    pub quota: Quota,
}

/// An API token (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// Token id (the `<id>` of `mlt_<id>_<secret>`).
    pub id: String,
    /// Name.
    pub name: String,
    /// `operator`, `owner`, `member` or `viewer`.
    pub role: String,
    /// The tenant; none for operator tokens.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, if it expires.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// RFC 3339, if it was used.
    #[serde(default)]
    pub last_used_at: Option<String>,
    /// RFC 3339, if it was revoked.
    #[serde(default)]
    pub revoked_at: Option<String>,
}

/// The answer of `POST /v1/tokens`: the token and, once, its secret.
#[derive(Debug, Clone, Deserialize)]
pub struct ApiTokenCreated {
    /// The token.
    #[serde(flatten)]
    pub token: ApiToken,
    /// The whole bearer token (`mlt_<id>_<secret>`).
    pub secret: String,
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, Serialize)]
pub struct ApiTokenCreate {
    /// Name.
    pub name: String,
    /// Role.
    pub role: String,
    /// Tenant id or name (none for an operator token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Expiry, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Lifetime from now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    /// Idempotency key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// What a tenant uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Platforms.
    #[serde(default)]
    pub platforms: u64,
    /// VMs.
    #[serde(default)]
    pub vms: u64,
    /// Summed vCPUs.
    #[serde(default)]
    pub vcpus: u64,
    /// Summed memory.
    #[serde(default)]
    pub memory_mib: u64,
    /// Summed QoS bandwidth.
    #[serde(default)]
    pub bandwidth_kbps: u64,
    /// Summed program storage.
    #[serde(default)]
    pub program_bytes: u64,
}

/// `GET /v1/tenants/{id}/usage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantUsage {
    /// The tenant.
    pub tenant_id: String,
    /// Its limits.
    #[serde(default)]
    pub quota: Quota,
    /// Its use.
    #[serde(default)]
    pub usage: Usage,
}

fn path(collection: &str, key: &str) -> String {
    format!("/v1/{collection}/{}", url_component(key))
}

/// `POST /v1/tenants`.
pub async fn create_tenant(client: &Client, body: &TenantCreate) -> Result<Tenant, ClientError> {
    client
        .request(reqwest::Method::POST, "/v1/tenants", Some(body))
        .await
}

/// `GET /v1/tenants/{id_or_name}`.
pub async fn get_tenant(client: &Client, key: &str) -> Result<Tenant, ClientError> {
    client
        .request::<(), _>(reqwest::Method::GET, &path("tenants", key), None)
        .await
}

/// `PATCH /v1/tenants/{id_or_name}`.
pub async fn update_tenant(
    client: &Client,
    key: &str,
    body: &TenantPatch,
) -> Result<Tenant, ClientError> {
    client
        .request(reqwest::Method::PATCH, &path("tenants", key), Some(body))
        .await
}

/// `DELETE /v1/tenants/{id_or_name}`.
pub async fn delete_tenant(client: &Client, key: &str) -> Result<(), ClientError> {
    client
        .request::<(), serde_json::Value>(reqwest::Method::DELETE, &path("tenants", key), None)
        .await
        .map(drop)
}

/// `GET /v1/tenants/{id_or_name}/usage`.
pub async fn tenant_usage(client: &Client, key: &str) -> Result<TenantUsage, ClientError> {
    let usage = format!("{}/usage", path("tenants", key));
    client
        .request::<(), _>(reqwest::Method::GET, &usage, None)
        .await
}

/// `POST /v1/tokens`.
pub async fn create_token(
    client: &Client,
    body: &ApiTokenCreate,
) -> Result<ApiTokenCreated, ClientError> {
    client
        .request(reqwest::Method::POST, "/v1/tokens", Some(body))
        .await
}

/// `GET /v1/tokens/{id}`.
pub async fn get_token(client: &Client, id: &str) -> Result<ApiToken, ClientError> {
    client
        .request::<(), _>(reqwest::Method::GET, &path("tokens", id), None)
        .await
}

/// `DELETE /v1/tokens/{id}`: revoke.
pub async fn revoke_token(client: &Client, id: &str) -> Result<(), ClientError> {
    client
        .request::<(), serde_json::Value>(reqwest::Method::DELETE, &path("tokens", id), None)
        .await
        .map(drop)
}
