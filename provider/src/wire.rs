//! The calls of the tenancy routes (tenants, API tokens, usage) and their
//! wire types. The usage types are kept here until `measurelab_api::http`
//! carries them; the resources import them from here only.

use measurelab_api::client::{url_component, Client, ClientError};
use serde::{Deserialize, Serialize};

pub use measurelab_api::http::{
    ApiToken, ApiTokenCreate, ApiTokenCreated, Quota, Tenant, TenantCreate, TenantPatch,
};

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
