//! `/v1/programs` and `/v1/deployments`: program distribution.

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use axum::Json;
use base64::Engine;
use measurelab_api::http::{
    Deployment, DeploymentCreate, DeploymentList, Program, ProgramCreate, ProgramList,
};

use super::error::ApiError;
use super::extract::{decode_json, key, JsonBody, QueryParams};
use super::idempotency::{answer, stored, Idempotent};
use super::state::AppState;
use crate::store::programs;

pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<ProgramList>, ApiError> {
    let programs = state
        .store()
        .resources()
        .read(|conn, _| programs::list(conn))
        .await?;
    Ok(Json(ProgramList { programs }))
}

/// JSON `{name, content_base64, sha256?, request_id?}`, or the raw content
/// as `application/octet-stream` with `?name=&sha256=&request_id=`.
pub(crate) async fn create(
    State(state): State<AppState>,
    query: QueryParams,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let (name, content, sha256, request_id) = match content_type.as_str() {
        "application/json" => {
            query.only(&[])?;
            let input: ProgramCreate = decode_json(&body)?;
            let content = base64::engine::general_purpose::STANDARD
                .decode(input.content_base64.trim())
                .map_err(|e| ApiError::InvalidField {
                    field: "content_base64".into(),
                    reason: format!("is not standard base64: {e}"),
                })?;
            (input.name, content, input.sha256, input.request_id)
        }
        "application/octet-stream" => {
            query.only(&["name", "sha256", "request_id"])?;
            let name = query.0.get("name").cloned().ok_or(ApiError::InvalidField {
                field: "name".into(),
                reason: "query parameter name is required with application/octet-stream".into(),
            })?;
            (
                name,
                body.to_vec(),
                query.0.get("sha256").cloned(),
                query.0.get("request_id").cloned(),
            )
        }
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "Content-Type: expected application/json or application/octet-stream, got {other:?}"
            )))
        }
    };
    let result = state
        .store()
        .resources()
        .mutate(request_id, "POST /v1/programs".into(), move |cx| {
            let (program, created) = programs::create(cx, name, content, sha256)?;
            Ok(stored(if created { 201 } else { 200 }, &program))
        })
        .await?;
    Ok(answer(result))
}

pub(crate) async fn get(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Program>, ApiError> {
    let key = key(path)?;
    Ok(Json(
        state
            .store()
            .resources()
            .read(move |conn, _| programs::get(conn, &key))
            .await?,
    ))
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    query.only(&["request_id"])?;
    let route = format!("DELETE /v1/programs/{key}");
    let result = state
        .store()
        .resources()
        .mutate(query.0.get("request_id").cloned(), route, move |cx| {
            Ok(stored(200, &programs::delete(cx, &key)?))
        })
        .await?;
    Ok(answer(result))
}

pub(crate) async fn list_deployments(
    State(state): State<AppState>,
) -> Result<Json<DeploymentList>, ApiError> {
    let deployments = state
        .store()
        .resources()
        .read(|conn, _| programs::list_deployments(conn))
        .await?;
    Ok(Json(DeploymentList { deployments }))
}

pub(crate) async fn create_deployment(
    State(state): State<AppState>,
    JsonBody(input): JsonBody<DeploymentCreate>,
) -> Result<Response, ApiError> {
    let result = state
        .store()
        .resources()
        .mutate(
            input.request_id.clone(),
            "POST /v1/deployments".into(),
            move |cx| Ok(stored(201, &programs::create_deployment(cx, input)?)),
        )
        .await?;
    Ok(answer(result))
}

pub(crate) async fn get_deployment(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Deployment>, ApiError> {
    let key = key(path)?;
    Ok(Json(
        state
            .store()
            .resources()
            .read(move |conn, _| programs::get_deployment(conn, &key))
            .await?,
    ))
}

/// Stops every run of the deployment (the record stays for its statuses).
pub(crate) async fn delete_deployment(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    query.only(&["request_id"])?;
    let route = format!("DELETE /v1/deployments/{key}");
    let result = state
        .store()
        .resources()
        .mutate(query.0.get("request_id").cloned(), route, move |cx| {
            Ok(stored(200, &programs::stop_deployment(cx, &key)?))
        })
        .await?;
    Ok(answer(result))
}
