//! `/v1/vms`: VMs of virtual platforms. A VM is addressed by id, by
//! `platform/name` (URL-encoded `/`), or by a name unique across platforms.

use crate::store::sql::Connection;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Json;
use measurelab_api::http::{LogList, Vm, VmCreate, VmList, VmPatch};

use super::change::{Creation, Kind};
use super::error::ApiError;
use super::extract::{key, JsonBody, QueryParams};
use super::idempotency::{answer, stored};
use super::page::{self, Page};
use super::scoped::read_one;
use super::state::AppState;
use crate::access::{Principal, Role, Scope};
use crate::store::{desired, vms, StoreError};

pub(crate) async fn list(
    State(state): State<AppState>,
    principal: Principal,
    query: QueryParams,
) -> Result<Json<VmList>, ApiError> {
    query.only(&["platform", "node", "limit", "after"])?;
    let page = Page::from_query(&query)?;
    let platform = query.0.get("platform").cloned();
    let node = query.0.get("node").cloned();
    let scope = principal.scope();
    let controller = state.controller_version();
    let vms = state
        .store()
        .resources()
        .read(move |conn, registry| {
            Ok(
                vms::list(conn, registry, &scope, platform.as_deref(), node.as_deref())?
                    .iter()
                    .map(|vm| vm.to_api(registry, controller))
                    .collect(),
            )
        })
        .await?;
    // Ordered by platform, then name.
    let (vms, next_cursor) = page.apply(vms, |vm| {
        page::by_name(&format!("{}\u{0}{}", vm.platform, vm.name), &vm.id)
    });
    Ok(Json(VmList { vms, next_cursor }))
}

pub(crate) async fn create(
    State(state): State<AppState>,
    principal: Principal,
    JsonBody(mut input): JsonBody<VmCreate>,
) -> Result<Response, ApiError> {
    let controller = state.controller_version();
    let creation = Creation {
        name: input.name.clone(),
        request_id: input.request_id.clone(),
        tenant: input.tenant.take(),
    };
    VM.create(&state, principal, creation, move |cx, to| {
        let vm = vms::create(cx, &to.scope(cx.tx)?, input)?;
        Ok(stored(201, &vm.to_api(cx.registry, controller)))
    })
    .await
    .map(answer)
}

pub(crate) async fn get(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Vm>, ApiError> {
    let controller = state.controller_version();
    read_one(
        &state,
        &principal,
        path,
        move |conn, registry, scope, key| {
            Ok(vms::get(conn, scope, key)?.to_api(registry, controller))
        },
    )
    .await
}

/// Whether `scope` sees the VM (for 403 versus 404).
fn visible(conn: &Connection, scope: &Scope, key: &str) -> Result<bool, StoreError> {
    Ok(vms::find(conn, scope, key)?.is_some())
}

const VM: Kind = Kind {
    name: "VM",
    collection: "/v1/vms",
    writers: Role::Member,
    visible,
};

pub(crate) async fn patch(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    JsonBody(patch): JsonBody<VmPatch>,
) -> Result<Response, ApiError> {
    let change = VM.patch(key(path)?, patch.request_id.clone());
    let controller = state.controller_version();
    VM.apply(&state, &principal, change, move |cx, scope, key| {
        let vm = vms::update(cx, scope, key, patch)?;
        Ok(stored(200, &vm.to_api(cx.registry, controller)))
    })
    .await
    .map(answer)
}

/// Marks the VM deleting (202) until the node agent acks its cleanup;
/// `?force=true` removes it at once (200).
pub(crate) async fn delete(
    State(state): State<AppState>,
    principal: Principal,
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
    let change = VM
        .delete(key, query.0.get("request_id").cloned())
        .with_route_suffix(&format!("?force={force}"));
    let controller = state.controller_version();
    VM.apply(&state, &principal, change, move |cx, scope, key| {
        let vm = vms::delete(cx, scope, key, force)?;
        Ok(stored(
            if force { 200 } else { 202 },
            &vm.to_api(cx.registry, controller),
        ))
    })
    .await
    .map(answer)
}

/// Log lines the guest agent shipped through its node agent.
pub(crate) async fn logs(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Json<LogList>, ApiError> {
    let key = key(path)?;
    query.only(&["limit"])?;
    let limit = query.int("limit", 100, 1, 10_000)? as u32;
    let scope = principal.scope();
    let lines = state
        .store()
        .resources()
        .read(move |conn, _| {
            let vm = vms::get(conn, &scope, &key)?;
            desired::guest_logs(conn, &vm.id, limit)
        })
        .await?;
    Ok(Json(LogList { lines }))
}
