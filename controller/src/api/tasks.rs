//! `/v1/tasks`: multicast measurement tasks.

use crate::store::sql::Connection;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Json;
use measurelab_api::http::{Task, TaskCreate, TaskList};

use super::change::{delete_request_id, Creation, Kind};
use super::error::ApiError;
use super::extract::{key, JsonBody, QueryParams};
use super::idempotency::{answer, stored};
use super::page;
use super::scoped::{read_one, read_page};
use super::state::AppState;
use crate::access::{Principal, Role, Scope};
use crate::store::{tasks, StoreError};

pub(crate) async fn list(
    State(state): State<AppState>,
    principal: Principal,
    query: QueryParams,
) -> Result<Json<TaskList>, ApiError> {
    let (tasks, next_cursor) = read_page(
        &state,
        &principal,
        &query,
        |conn, _, scope| tasks::list(conn, scope),
        |item: &Task| page::by_name(&item.name, &item.id),
    )
    .await?;
    Ok(Json(TaskList { tasks, next_cursor }))
}

pub(crate) async fn create(
    State(state): State<AppState>,
    principal: Principal,
    JsonBody(mut input): JsonBody<TaskCreate>,
) -> Result<Response, ApiError> {
    let creation = Creation {
        name: input.name.clone(),
        request_id: input.request_id.clone(),
        tenant: input.tenant.take(),
    };
    TASK.create(&state, principal, creation, move |cx, to| {
        let (scope, tenant) = (to.scope(cx.tx)?, to.tenant(cx.tx)?);
        Ok(stored(
            201,
            &tasks::create(cx, &scope, &tenant, input)?.task,
        ))
    })
    .await
    .map(answer)
}

pub(crate) async fn get(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Task>, ApiError> {
    read_one(&state, &principal, path, |conn, _, scope, key| {
        Ok(tasks::get(conn, scope, key)?.task)
    })
    .await
}

/// Whether `scope` sees the task (for 403 versus 404).
fn visible(conn: &Connection, scope: &Scope, key: &str) -> Result<bool, StoreError> {
    Ok(tasks::find(conn, scope, key)?.is_some())
}

const TASK: Kind = Kind {
    name: "task",
    collection: "/v1/tasks",
    writers: Role::Member,
    visible,
};

pub(crate) async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    let change = TASK.delete(key, delete_request_id(&query)?);
    TASK.apply(&state, &principal, change, |cx, scope, key| {
        Ok(stored(200, &tasks::delete(cx, scope, key)?))
    })
    .await
    .map(answer)
}
