//! `/v1/tasks`: multicast measurement tasks.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Json;
use measurelab_api::http::{Task, TaskCreate, TaskList};

use super::error::ApiError;
use super::extract::{key, JsonBody, QueryParams};
use super::idempotency::{answer, stored, Idempotent};
use super::state::AppState;
use crate::store::tasks;

pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<TaskList>, ApiError> {
    let tasks = state
        .store()
        .resources()
        .read(|conn, _| tasks::list(conn))
        .await?;
    Ok(Json(TaskList { tasks }))
}

pub(crate) async fn create(
    State(state): State<AppState>,
    JsonBody(input): JsonBody<TaskCreate>,
) -> Result<Response, ApiError> {
    let result = state
        .store()
        .resources()
        .mutate(
            input.request_id.clone(),
            "POST /v1/tasks".into(),
            move |cx| Ok(stored(201, &tasks::create(cx, input)?.task)),
        )
        .await?;
    Ok(answer(result))
}

pub(crate) async fn get(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Task>, ApiError> {
    let key = key(path)?;
    Ok(Json(
        state
            .store()
            .resources()
            .read(move |conn, _| Ok(tasks::get(conn, &key)?.task))
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
    let route = format!("DELETE /v1/tasks/{key}");
    let result = state
        .store()
        .resources()
        .mutate(query.0.get("request_id").cloned(), route, move |cx| {
            Ok(stored(200, &tasks::delete(cx, &key)?))
        })
        .await?;
    Ok(answer(result))
}
