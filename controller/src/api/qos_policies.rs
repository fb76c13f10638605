//! `/v1/qos_policies`.

use crate::store::sql::Connection;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Json;
use measurelab_api::http::{QosPolicy, QosPolicyCreate, QosPolicyList, QosPolicyPatch};

use super::change::{delete_request_id, Creation, Kind};
use super::error::ApiError;
use super::extract::{key, JsonBody, QueryParams};
use super::idempotency::{answer, stored};
use super::page;
use super::scoped::{read_one, read_page};
use super::state::AppState;
use crate::access::{Principal, Role, Scope};
use crate::store::{qos_policies, StoreError};

pub(crate) async fn list(
    State(state): State<AppState>,
    principal: Principal,
    query: QueryParams,
) -> Result<Json<QosPolicyList>, ApiError> {
    let (qos_policies, next_cursor) = read_page(
        &state,
        &principal,
        &query,
        |conn, _, scope| qos_policies::list(conn, scope),
        |item: &QosPolicy| page::by_name(&item.name, &item.id),
    )
    .await?;
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
    let creation = Creation {
        name: input.name.clone(),
        request_id: input.request_id.clone(),
        tenant: input.tenant.take(),
    };
    QOS_POLICY
        .create(&state, principal, creation, move |cx, to| {
            Ok(stored(
                201,
                &qos_policies::create(cx, &to.tenant(cx.tx)?, input)?,
            ))
        })
        .await
        .map(answer)
}

pub(crate) async fn get(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<QosPolicy>, ApiError> {
    read_one(&state, &principal, path, |conn, _, scope, key| {
        qos_policies::get(conn, scope, key)
    })
    .await
}

/// Whether `scope` sees the policy (for 403 versus 404).
fn visible(conn: &Connection, scope: &Scope, key: &str) -> Result<bool, StoreError> {
    Ok(qos_policies::find(conn, scope, key)?.is_some())
}

const QOS_POLICY: Kind = Kind {
    name: "QoS policy",
    collection: "/v1/qos_policies",
    writers: Role::Member,
    visible,
};

pub(crate) async fn patch(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    JsonBody(patch): JsonBody<QosPolicyPatch>,
) -> Result<Response, ApiError> {
    let change = QOS_POLICY.patch(key(path)?, patch.request_id.clone());
    QOS_POLICY
        .apply(&state, &principal, change, move |cx, scope, key| {
            Ok(stored(200, &qos_policies::update(cx, scope, key, patch)?))
        })
        .await
        .map(answer)
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    let change = QOS_POLICY.delete(key, delete_request_id(&query)?);
    QOS_POLICY
        .apply(&state, &principal, change, |cx, scope, key| {
            Ok(stored(200, &qos_policies::delete(cx, scope, key)?))
        })
        .await
        .map(answer)
}
