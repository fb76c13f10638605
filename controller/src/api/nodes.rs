//! `/v1/nodes...` and `/v1/events`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::Json;
use measurelab_api::http::{EventList, LogList, Node, NodeList, NodePatch};

use super::error::ApiError;
use super::extract::{key, JsonBody, QueryParams};
use super::state::AppState;
use crate::store::{self, LOG_LINES_PER_NODE};
use crate::validation;

pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<NodeList>, ApiError> {
    let nodes = with_flow_export(&state, state.store().nodes()).await?;
    Ok(Json(NodeList { nodes }))
}

/// Fill in each node's flow export setting, which lives in its own table.
async fn with_flow_export(state: &AppState, mut nodes: Vec<Node>) -> Result<Vec<Node>, ApiError> {
    let ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    let exports = state
        .store()
        .resources()
        .read(move |conn, _| {
            ids.iter()
                .map(|id| store::flows::node_export(conn, id))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    for (node, export) in nodes.iter_mut().zip(exports) {
        node.flow_export = export;
    }
    Ok(nodes)
}

pub(crate) async fn get(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Node>, ApiError> {
    let key = key(path)?;
    let node = state.store().node(&key).ok_or(ApiError::NotFound {
        kind: "node",
        id: key,
    })?;
    let mut nodes = with_flow_export(&state, vec![node]).await?;
    Ok(Json(nodes.remove(0)))
}

/// Replace the node's labels and, when given, its flow export setting.
/// Validation happens before the store is touched, so a rejected patch
/// changes nothing.
pub(crate) async fn patch(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    JsonBody(patch): JsonBody<NodePatch>,
) -> Result<Json<Node>, ApiError> {
    let key = key(path)?;
    validation::labels("labels", &patch.labels)?;
    if let Some(Some(export)) = &patch.flow_export {
        store::flows::validate("flow_export", export)?;
    }
    if let Some(export) = patch.flow_export {
        let node = state.store().node(&key).ok_or(ApiError::NotFound {
            kind: "node",
            id: key.clone(),
        })?;
        state
            .store()
            .resources()
            .transact(move |cx| store::flows::set_node_export(cx, &node.id, export))
            .await?;
    }
    let node = state.store().set_labels(key, patch.labels).await?;
    let mut nodes = with_flow_export(&state, vec![node]).await?;
    Ok(Json(nodes.remove(0)))
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
