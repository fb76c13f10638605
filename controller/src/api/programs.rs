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
use rusqlite::Connection;

use super::auth::{creation_scope, ensure_can_change, ensure_can_create, requested_tenant};
use super::error::ApiError;
use super::extract::{decode_json, key, JsonBody, QueryParams};
use super::idempotency::{answer, stored, Idempotent};
use super::page::{self, Page};
use super::state::AppState;
use crate::access::{Principal, Scope};
use crate::store::{programs, tenants, StoreError};

pub(crate) async fn list(
    State(state): State<AppState>,
    principal: Principal,
    query: QueryParams,
) -> Result<Json<ProgramList>, ApiError> {
    query.only(&["limit", "after"])?;
    let page = Page::from_query(&query)?;
    let scope = principal.scope();
    let programs = state
        .store()
        .resources()
        .read(move |conn, _| programs::list(conn, &scope))
        .await?;
    let (programs, next_cursor) = page.apply(programs, |item| page::by_name(&item.name, &item.id));
    Ok(Json(ProgramList {
        programs,
        next_cursor,
    }))
}

/// JSON `{name, content_base64, sha256?, request_id?}`, or the raw content
/// as `application/octet-stream` with `?name=&sha256=&request_id=`.
pub(crate) async fn create(
    State(state): State<AppState>,
    principal: Principal,
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
    let (name, content, sha256, request_id, tenant) = match content_type.as_str() {
        "application/json" => {
            query.only(&[])?;
            let input: ProgramCreate = decode_json(&body)?;
            let content = base64::engine::general_purpose::STANDARD
                .decode(input.content_base64.trim())
                .map_err(|e| ApiError::InvalidField {
                    field: "content_base64".into(),
                    reason: format!("is not standard base64: {e}"),
                })?;
            (
                input.name,
                content,
                input.sha256,
                input.request_id,
                input.tenant,
            )
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
                // An operator's ?tenant= is taken by the authentication layer.
                None,
            )
        }
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "Content-Type: expected application/json or application/octet-stream, got {other:?}"
            )))
        }
    };
    ensure_can_create(&principal, "program", &name)?;
    let result = state
        .store()
        .resources()
        .mutate(
            principal.idempotency_key(request_id),
            "POST /v1/programs".into(),
            move |cx| {
                let requested = requested_tenant(&principal, tenant);
                let tenant =
                    tenants::target(cx.tx, principal.tenant.as_ref(), requested.as_deref())?;
                let (program, created) = programs::create(cx, &tenant, name, content, sha256)?;
                Ok(stored(if created { 201 } else { 200 }, &program))
            },
        )
        .await?;
    Ok(answer(result))
}

pub(crate) async fn get(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Program>, ApiError> {
    let key = key(path)?;
    let scope = principal.scope();
    Ok(Json(
        state
            .store()
            .resources()
            .read(move |conn, _| programs::get(conn, &scope, &key))
            .await?,
    ))
}

/// Whether `scope` sees the program (for 403 versus 404).
fn visible(conn: &Connection, scope: &Scope, key: &str) -> Result<bool, StoreError> {
    Ok(programs::find(conn, scope, key)?.is_some())
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    query.only(&["request_id"])?;
    ensure_can_change(&state, &principal, "deleting", "program", &key, visible).await?;
    let route = format!("DELETE /v1/programs/{key}");
    let scope = principal.scope();
    let request_id = principal.idempotency_key(query.0.get("request_id").cloned());
    let result = state
        .store()
        .resources()
        .mutate(request_id, route, move |cx| {
            Ok(stored(200, &programs::delete(cx, &scope, &key)?))
        })
        .await?;
    Ok(answer(result))
}

pub(crate) async fn list_deployments(
    State(state): State<AppState>,
    principal: Principal,
    query: QueryParams,
) -> Result<Json<DeploymentList>, ApiError> {
    query.only(&["limit", "after"])?;
    let page = Page::from_query(&query)?;
    let scope = principal.scope();
    let deployments = state
        .store()
        .resources()
        .read(move |conn, _| programs::list_deployments(conn, &scope))
        .await?;
    let (deployments, next_cursor) = page.apply(deployments, |item| {
        page::newest_first(&item.created_at, &item.id)
    });
    Ok(Json(DeploymentList {
        deployments,
        next_cursor,
    }))
}

pub(crate) async fn create_deployment(
    State(state): State<AppState>,
    principal: Principal,
    JsonBody(mut input): JsonBody<DeploymentCreate>,
) -> Result<Response, ApiError> {
    ensure_can_create(&principal, "deployment", &input.program)?;
    let result = state
        .store()
        .resources()
        .mutate(
            principal.idempotency_key(input.request_id.clone()),
            "POST /v1/deployments".into(),
            move |cx| {
                let requested = requested_tenant(&principal, input.tenant.take());
                let scope = creation_scope(cx.tx, &principal, requested.as_deref())?;
                Ok(stored(
                    201,
                    &programs::create_deployment(cx, &scope, input)?,
                ))
            },
        )
        .await?;
    Ok(answer(result))
}

pub(crate) async fn get_deployment(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Deployment>, ApiError> {
    let key = key(path)?;
    let scope = principal.scope();
    Ok(Json(
        state
            .store()
            .resources()
            .read(move |conn, _| programs::get_deployment(conn, &scope, &key))
            .await?,
    ))
}

/// Stops every run of the deployment (the record stays for its statuses).
/// Whether `scope` sees the deployment (for 403 versus 404).
fn deployment_visible(conn: &Connection, scope: &Scope, id: &str) -> Result<bool, StoreError> {
    Ok(programs::find_deployment(conn, scope, id)?.is_some())
}

pub(crate) async fn delete_deployment(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    query.only(&["request_id"])?;
    ensure_can_change(
        &state,
        &principal,
        "stopping",
        "deployment",
        &key,
        deployment_visible,
    )
    .await?;
    let route = format!("DELETE /v1/deployments/{key}");
    let scope = principal.scope();
    let request_id = principal.idempotency_key(query.0.get("request_id").cloned());
    let result = state
        .store()
        .resources()
        .mutate(request_id, route, move |cx| {
            Ok(stored(200, &programs::stop_deployment(cx, &scope, &key)?))
        })
        .await?;
    Ok(answer(result))
}
