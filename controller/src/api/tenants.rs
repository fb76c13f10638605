//! `/v1/tenants` and `/v1/whoami`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Json;
use measurelab_api::http::{Tenant, TenantCreate, TenantList, TenantPatch, WhoAmI};

use super::auth::ensure_operator;
use super::change::{delete_request_id, Kind};
use super::error::ApiError;
use super::extract::{key, JsonBody, QueryParams};
use super::idempotency::{answer, stored, Idempotent};
use super::page;
use super::scoped::{read_one, read_page};
use super::state::AppState;
use crate::access::{Principal, Role, Scope};
use crate::store::sql::Connection;
use crate::store::{tenants, StoreError};

/// The caller's token, role and tenant (the provider's plan-time checks use it).
pub(crate) async fn whoami(principal: Principal) -> Json<WhoAmI> {
    Json(WhoAmI {
        token_id: principal.token_id,
        token_name: principal.token_name,
        role: principal.role,
        tenant_id: principal.tenant.as_ref().map(|t| t.id.clone()),
        tenant_name: principal.tenant.map(|t| t.name),
    })
}

/// The operator sees every tenant; a tenant token only its own.
pub(crate) async fn list(
    State(state): State<AppState>,
    principal: Principal,
    query: QueryParams,
) -> Result<Json<TenantList>, ApiError> {
    let (tenants, next_cursor) = read_page(
        &state,
        &principal,
        &query,
        |conn, _, scope| tenants::list(conn, scope),
        |item: &Tenant| page::by_name(&item.name, &item.id),
    )
    .await?;
    Ok(Json(TenantList {
        tenants,
        next_cursor,
    }))
}

pub(crate) async fn create(
    State(state): State<AppState>,
    principal: Principal,
    JsonBody(input): JsonBody<TenantCreate>,
) -> Result<Response, ApiError> {
    ensure_operator(&principal, "creating", "tenant", &input.name)?;
    let result = state
        .store()
        .resources()
        .mutate(
            input.request_id.clone(),
            "POST /v1/tenants".into(),
            move |cx| Ok(stored(201, &tenants::create(cx, input)?)),
        )
        .await?;
    Ok(answer(result))
}

pub(crate) async fn get(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Tenant>, ApiError> {
    read_one(&state, &principal, path, |conn, _, scope, key| {
        tenants::get(conn, scope, key)
    })
    .await
}

/// Whether `scope` sees the tenant (a tenant token only its own): tenants
/// are changed by the operator only, and a tenant token gets 403 for its
/// own tenant and 404 for any other.
fn visible(conn: &Connection, scope: &Scope, key: &str) -> Result<bool, StoreError> {
    Ok(tenants::find(conn, key)?.is_some_and(|tenant| scope.sees(&tenant.id)))
}

const TENANT: Kind = Kind {
    name: "tenant",
    collection: "/v1/tenants",
    writers: Role::Operator,
    visible,
};

pub(crate) async fn patch(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    JsonBody(patch): JsonBody<TenantPatch>,
) -> Result<Response, ApiError> {
    let change = TENANT.patch(key(path)?, patch.request_id.clone());
    TENANT
        .apply(&state, &principal, change, move |cx, _, key| {
            Ok(stored(200, &tenants::update(cx, key, patch)?))
        })
        .await
        .map(answer)
}

/// Refused (409) while the tenant owns objects; takes its tokens with it.
pub(crate) async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    let change = TENANT.delete(key, delete_request_id(&query)?);
    let result = TENANT
        .apply(&state, &principal, change, |cx, _, key| {
            Ok(stored(200, &tenants::delete(cx, key)?))
        })
        .await?;
    state.store().reload_tokens().await?;
    Ok(answer(result))
}
