//! `/v1/platforms`: virtual platforms.

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Json;
use measurelab_api::http::{
    Platform, PlatformCreate, PlatformList, PlatformPatch, PlatformPowerState, RequestOptions,
};

use super::error::ApiError;
use super::extract::{key, optional_body, JsonBody, QueryParams};
use super::idempotency::{answer, stored, Idempotent};
use super::state::AppState;
use crate::store::platforms;

pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<PlatformList>, ApiError> {
    let platforms = state
        .store()
        .resources()
        .read(|conn, registry| {
            Ok(platforms::list(conn)?
                .iter()
                .map(|p| p.to_api(registry))
                .collect())
        })
        .await?;
    Ok(Json(PlatformList { platforms }))
}

pub(crate) async fn create(
    State(state): State<AppState>,
    JsonBody(input): JsonBody<PlatformCreate>,
) -> Result<Response, ApiError> {
    let request_id = input.request_id.clone();
    let result = state
        .store()
        .resources()
        .mutate(request_id, "POST /v1/platforms".into(), move |cx| {
            let row = platforms::create(cx, input)?;
            Ok(stored(201, &row.to_api(cx.registry)))
        })
        .await?;
    Ok(answer(result))
}

pub(crate) async fn get(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Platform>, ApiError> {
    let key = key(path)?;
    let platform = state
        .store()
        .resources()
        .read(move |conn, registry| Ok(platforms::get(conn, &key)?.to_api(registry)))
        .await?;
    Ok(Json(platform))
}

pub(crate) async fn patch(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    JsonBody(patch): JsonBody<PlatformPatch>,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    let route = format!("PATCH /v1/platforms/{key}");
    let result = state
        .store()
        .resources()
        .mutate(patch.request_id.clone(), route, move |cx| {
            let row = platforms::update(cx, &key, patch)?;
            Ok(stored(200, &row.to_api(cx.registry)))
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
    let route = format!("DELETE /v1/platforms/{key}");
    let result = state
        .store()
        .resources()
        .mutate(query.0.get("request_id").cloned(), route, move |cx| {
            let row = platforms::delete(cx, &key)?;
            Ok(stored(200, &row.to_api(cx.registry)))
        })
        .await?;
    Ok(answer(result))
}

async fn power(
    state: AppState,
    key: String,
    body: Bytes,
    power: PlatformPowerState,
) -> Result<Response, ApiError> {
    let options: RequestOptions = optional_body(&body)?;
    let verb = match power {
        PlatformPowerState::Running => "start",
        PlatformPowerState::Paused => "pause",
    };
    let route = format!("POST /v1/platforms/{key}/{verb}");
    let result = state
        .store()
        .resources()
        .mutate(options.request_id, route, move |cx| {
            let row = platforms::set_power(cx, &key, power)?;
            Ok(stored(200, &row.to_api(cx.registry)))
        })
        .await?;
    Ok(answer(result))
}

pub(crate) async fn start(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    power(state, key(path)?, body, PlatformPowerState::Running).await
}

pub(crate) async fn pause(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    power(state, key(path)?, body, PlatformPowerState::Paused).await
}
