//! `/v1/tenants` and `/v1/whoami`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Json;
use measurelab_api::http::{Tenant, TenantCreate, TenantList, TenantPatch, WhoAmI};

use super::auth::ensure_operator;
use super::error::ApiError;
use super::extract::{key, JsonBody, QueryParams};
use super::idempotency::{answer, stored, Idempotent};
use super::page::{self, Page};
use super::state::AppState;
use crate::access::Principal;
use crate::store::tenants;

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
    query.only(&["limit", "after"])?;
    let page = Page::from_query(&query)?;
    let scope = principal.scope();
    let tenants = state
        .store()
        .resources()
        .read(move |conn, _| tenants::list(conn, &scope))
        .await?;
    let (tenants, next_cursor) = page.apply(tenants, |item| page::by_name(&item.name, &item.id));
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
    let key = key(path)?;
    let scope = principal.scope();
    Ok(Json(
        state
            .store()
            .resources()
            .read(move |conn, _| tenants::get(conn, &scope, &key))
            .await?,
    ))
}

/// Tenant-visible but operator-only: a tenant token gets 403 for its own
/// tenant and 404 for any other.
async fn ensure_operator_on(
    state: &AppState,
    principal: &Principal,
    action: &str,
    key: &str,
) -> Result<(), ApiError> {
    if principal.is_operator() {
        return Ok(());
    }
    let scope = principal.scope();
    let lookup = key.to_string();
    state
        .store()
        .resources()
        .read(move |conn, _| tenants::get(conn, &scope, &lookup))
        .await?;
    ensure_operator(principal, action, "tenant", key)
}

pub(crate) async fn patch(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    JsonBody(patch): JsonBody<TenantPatch>,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    ensure_operator_on(&state, &principal, "changing", &key).await?;
    let route = format!("PATCH /v1/tenants/{key}");
    let result = state
        .store()
        .resources()
        .mutate(patch.request_id.clone(), route, move |cx| {
            Ok(stored(200, &tenants::update(cx, &key, patch)?))
        })
        .await?;
    Ok(answer(result))
}

/// Refused (409) while the tenant owns objects; takes its tokens with it.
pub(crate) async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    query.only(&["request_id"])?;
    ensure_operator_on(&state, &principal, "deleting", &key).await?;
    let route = format!("DELETE /v1/tenants/{key}");
    let result = state
        .store()
        .resources()
        .mutate(query.0.get("request_id").cloned(), route, move |cx| {
            Ok(stored(200, &tenants::delete(cx, &key)?))
        })
        .await?;
    state.store().reload_tokens().await?;
    Ok(answer(result))
}
