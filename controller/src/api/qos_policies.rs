//! `/v1/qos_policies`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Json;
use measurelab_api::http::{QosPolicy, QosPolicyCreate, QosPolicyList, QosPolicyPatch};

use super::error::ApiError;
use super::extract::{key, JsonBody, QueryParams};
use super::idempotency::{answer, stored, Idempotent};
use super::state::AppState;
use crate::store::qos_policies;

pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<QosPolicyList>, ApiError> {
    let qos_policies = state
        .store()
        .resources()
        .read(|conn, _| qos_policies::list(conn))
        .await?;
    Ok(Json(QosPolicyList { qos_policies }))
}

pub(crate) async fn create(
    State(state): State<AppState>,
    JsonBody(input): JsonBody<QosPolicyCreate>,
) -> Result<Response, ApiError> {
    let result = state
        .store()
        .resources()
        .mutate(
            input.request_id.clone(),
            "POST /v1/qos_policies".into(),
            move |cx| Ok(stored(201, &qos_policies::create(cx, input)?)),
        )
        .await?;
    Ok(answer(result))
}

pub(crate) async fn get(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<QosPolicy>, ApiError> {
    let key = key(path)?;
    Ok(Json(
        state
            .store()
            .resources()
            .read(move |conn, _| qos_policies::get(conn, &key))
            .await?,
    ))
}

pub(crate) async fn patch(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    JsonBody(patch): JsonBody<QosPolicyPatch>,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    let route = format!("PATCH /v1/qos_policies/{key}");
    let result = state
        .store()
        .resources()
        .mutate(patch.request_id.clone(), route, move |cx| {
            Ok(stored(200, &qos_policies::update(cx, &key, patch)?))
        })
        .await?;
    Ok(answer(result))
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    query.only(&["request_id"])?;
    let route = format!("DELETE /v1/qos_policies/{key}");
    let result = state
        .store()
        .resources()
        .mutate(query.0.get("request_id").cloned(), route, move |cx| {
            Ok(stored(200, &qos_policies::delete(cx, &key)?))
        })
        .await?;
    Ok(answer(result))
}
