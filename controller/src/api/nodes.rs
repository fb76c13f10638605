//! `/v1/nodes...`, `/v1/registration_requests` and `/v1/events`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::Json;
use measurelab_api::http::{
    EventList, LogList, Node, NodeList, NodePatch, RegistrationRequest, RegistrationRequestList,
};

use super::error::ApiError;
use super::extract::{key, JsonBody, QueryParams};
use super::state::AppState;
use crate::store::LOG_LINES_PER_NODE;
use crate::validation;

pub(crate) async fn list(State(state): State<AppState>) -> Json<NodeList> {
    Json(NodeList {
        nodes: state.store().nodes(),
    })
}

pub(crate) async fn get(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Node>, ApiError> {
    let key = key(path)?;
    state
        .store()
        .node(&key)
        .map(Json)
        .ok_or(ApiError::NotFound {
            kind: "node",
            id: key,
        })
}

/// Replace the node's labels. Validation happens before the store is
/// touched, so a rejected patch changes nothing.
pub(crate) async fn patch(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    JsonBody(patch): JsonBody<NodePatch>,
) -> Result<Json<Node>, ApiError> {
    let key = key(path)?;
    validation::labels("labels", &patch.labels)?;
    Ok(Json(state.store().set_labels(key, patch.labels).await?))
}

pub(crate) async fn logs(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Json<LogList>, ApiError> {
    let key = key(path)?;
    query.only(&["limit"])?;
    let limit = query.int("limit", 100, 1, LOG_LINES_PER_NODE)?;
    let node = state.store().node(&key).ok_or(ApiError::NotFound {
        kind: "node",
        id: key,
    })?;
    let lines = state.store().logs(node.id, limit as u32).await?;
    Ok(Json(LogList { lines }))
}

pub(crate) async fn events(
    State(state): State<AppState>,
    query: QueryParams,
) -> Result<Json<EventList>, ApiError> {
    query.only(&["after", "limit"])?;
    let after = query.int("after", 0, 0, i64::MAX)?;
    let limit = query.int("limit", 100, 1, 1000)?;
    let events = state.store().events(after, limit as u32).await?;
    Ok(Json(EventList { events }))
}

/// Let the next registration under the node's name through, although it
/// lacks the node's secret (or the node is revoked); it gets a new secret.
pub(crate) async fn approve(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<RegistrationRequest>, ApiError> {
    let key = key(path)?;
    Ok(Json(state.store().approve_registration(key).await?))
}

/// Refuse the node's heartbeats and calls from now on.
pub(crate) async fn revoke(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Node>, ApiError> {
    let key = key(path)?;
    Ok(Json(state.store().revoke_node(key).await?))
}

/// Forget the node (409 while VMs or platforms use it).
pub(crate) async fn delete(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Node>, ApiError> {
    let key = key(path)?;
    Ok(Json(state.store().delete_node(key).await?))
}

/// Refused registrations under existing names, waiting for an approval.
pub(crate) async fn registration_requests(
    State(state): State<AppState>,
) -> Result<Json<RegistrationRequestList>, ApiError> {
    Ok(Json(RegistrationRequestList {
        requests: state.store().registration_requests().await?,
    }))
}
