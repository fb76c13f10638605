//! `/v1/vms`: VMs of virtual platforms. A VM is addressed by id, by
//! `platform/name` (URL-encoded `/`), or by a name unique across platforms.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Json;
use measurelab_api::http::{LogList, Vm, VmCreate, VmList, VmPatch};

use super::error::ApiError;
use super::extract::{key, JsonBody, QueryParams};
use super::idempotency::{answer, stored, Idempotent};
use super::state::AppState;
use crate::store::{desired, vms};

pub(crate) async fn list(
    State(state): State<AppState>,
    query: QueryParams,
) -> Result<Json<VmList>, ApiError> {
    query.only(&["platform", "node"])?;
    let platform = query.0.get("platform").cloned();
    let node = query.0.get("node").cloned();
    let vms = state
        .store()
        .resources()
        .read(move |conn, registry| {
            Ok(
                vms::list(conn, registry, platform.as_deref(), node.as_deref())?
                    .iter()
                    .map(|vm| vm.to_api(registry))
                    .collect(),
            )
        })
        .await?;
    Ok(Json(VmList { vms }))
}

pub(crate) async fn create(
    State(state): State<AppState>,
    JsonBody(input): JsonBody<VmCreate>,
) -> Result<Response, ApiError> {
    let result = state
        .store()
        .resources()
        .mutate(input.request_id.clone(), "POST /v1/vms".into(), move |cx| {
            let vm = vms::create(cx, input)?;
            Ok(stored(201, &vm.to_api(cx.registry)))
        })
        .await?;
    Ok(answer(result))
}

pub(crate) async fn get(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Vm>, ApiError> {
    let key = key(path)?;
    Ok(Json(
        state
            .store()
            .resources()
            .read(move |conn, registry| Ok(vms::get(conn, &key)?.to_api(registry)))
            .await?,
    ))
}

pub(crate) async fn patch(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    JsonBody(patch): JsonBody<VmPatch>,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    let route = format!("PATCH /v1/vms/{key}");
    let result = state
        .store()
        .resources()
        .mutate(patch.request_id.clone(), route, move |cx| {
            let vm = vms::update(cx, &key, patch)?;
            Ok(stored(200, &vm.to_api(cx.registry)))
        })
        .await?;
    Ok(answer(result))
}

/// Marks the VM deleting (202) until the node agent acks its cleanup;
/// `?force=true` removes it at once (200).
pub(crate) async fn delete(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    query.only(&["force", "request_id"])?;
    let force = match query.0.get("force").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::InvalidField {
                field: "force".into(),
                reason: format!("{other:?} is not true or false"),
            })
        }
    };
    let route = format!("DELETE /v1/vms/{key}?force={force}");
    let result = state
        .store()
        .resources()
        .mutate(query.0.get("request_id").cloned(), route, move |cx| {
            let vm = vms::delete(cx, &key, force)?;
            Ok(stored(
                if force { 200 } else { 202 },
                &vm.to_api(cx.registry),
            ))
        })
        .await?;
    Ok(answer(result))
}

/// Log lines the guest agent shipped through its node agent.
pub(crate) async fn logs(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Json<LogList>, ApiError> {
    let key = key(path)?;
    query.only(&["limit"])?;
    let limit = query.int("limit", 100, 1, 10_000)? as u32;
    let lines = state
        .store()
        .resources()
        .read(move |conn, _| {
            let vm = vms::get(conn, &key)?;
            desired::guest_logs(conn, &vm.id, limit)
        })
        .await?;
    Ok(Json(LogList { lines }))
}
