//! The calls of the tenancy routes (tenants, API tokens, usage), on the
//! wire types of `measurelab_api::http`.

use measurelab_api::client::{url_component, Client, ClientError};

pub use measurelab_api::http::{
    ApiToken, ApiTokenCreate, ApiTokenCreated, Quota, Tenant, TenantCreate, TenantPatch,
    TenantUsage as Usage, TenantUsageReport as TenantUsage,
};

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
