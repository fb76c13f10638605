//! `/v1/qos_policies`.

use crate::store::sql::Connection;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Json;
use measurelab_api::http::{QosPolicy, QosPolicyCreate, QosPolicyList, QosPolicyPatch};

use super::auth::{ensure_can_change, ensure_can_create, requested_tenant};
use super::error::ApiError;
use super::extract::{key, JsonBody, QueryParams};
use super::idempotency::{answer, stored, Idempotent};
use super::page::{self, Page};
use super::state::AppState;
use crate::access::{Principal, Scope};
use crate::store::{qos_policies, tenants, StoreError};

pub(crate) async fn list(
    State(state): State<AppState>,
    principal: Principal,
    query: QueryParams,
) -> Result<Json<QosPolicyList>, ApiError> {
    query.only(&["limit", "after"])?;
    let page = Page::from_query(&query)?;
    let scope = principal.scope();
    let qos_policies = state
        .store()
        .resources()
        .read(move |conn, _| qos_policies::list(conn, &scope))
        .await?;
    let (qos_policies, next_cursor) =
        page.apply(qos_policies, |item| page::by_name(&item.name, &item.id));
    Ok(Json(QosPolicyList {
        qos_policies,
        next_cursor,
    }))
}

pub(crate) async fn create(
    State(state): State<AppState>,
    principal: Principal,
    JsonBody(mut input): JsonBody<QosPolicyCreate>,
) -> Result<Response, ApiError> {
    ensure_can_create(&principal, "QoS policy", &input.name)?;
    let result = state
        .store()
        .resources()
        .mutate(
            principal.idempotency_key(input.request_id.clone()),
            "POST /v1/qos_policies".into(),
            move |cx| {
                let requested = requested_tenant(&principal, input.tenant.take());
                let tenant =
                    tenants::target(cx.tx, principal.tenant.as_ref(), requested.as_deref())?;
                Ok(stored(201, &qos_policies::create(cx, &tenant, input)?))
            },
        )
        .await?;
    Ok(answer(result))
}

pub(crate) async fn get(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<QosPolicy>, ApiError> {
    let key = key(path)?;
    let scope = principal.scope();
    Ok(Json(
        state
            .store()
            .resources()
            .read(move |conn, _| qos_policies::get(conn, &scope, &key))
            .await?,
    ))
}

/// Whether `scope` sees the policy (for 403 versus 404).
fn visible(conn: &Connection, scope: &Scope, key: &str) -> Result<bool, StoreError> {
    Ok(qos_policies::find(conn, scope, key)?.is_some())
}

pub(crate) async fn patch(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    JsonBody(patch): JsonBody<QosPolicyPatch>,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    ensure_can_change(&state, &principal, "changing", "QoS policy", &key, visible).await?;
    let route = format!("PATCH /v1/qos_policies/{key}");
    let scope = principal.scope();
    let result = state
        .store()
        .resources()
        .mutate(
            principal.idempotency_key(patch.request_id.clone()),
            route,
            move |cx| Ok(stored(200, &qos_policies::update(cx, &scope, &key, patch)?)),
        )
        .await?;
    Ok(answer(result))
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    query.only(&["request_id"])?;
    ensure_can_change(&state, &principal, "deleting", "QoS policy", &key, visible).await?;
    let route = format!("DELETE /v1/qos_policies/{key}");
    let scope = principal.scope();
    let result = state
        .store()
        .resources()
        .mutate(
            principal.idempotency_key(query.0.get("request_id").cloned()),
            route,
            move |cx| Ok(stored(200, &qos_policies::delete(cx, &scope, &key)?)),
        )
        .await?;
    Ok(answer(result))
}
