//! `/v1/nodes...`, `/v1/registration_requests` and `/v1/events`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::Json;
use measurelab_api::http::{
    EventList, LogList, Node, NodeList, NodePatch, RegistrationRequest, RegistrationRequestList,
};

use super::auth::ensure_operator;
use super::error::ApiError;
use super::extract::{key, JsonBody, QueryParams};
use super::page::{self, Page};
use super::state::AppState;
use crate::access::Principal;
use crate::placement::overcommit;
use crate::store::{self, EventPage, LOG_LINES_PER_NODE};
use crate::validation;

/// What a tenant may see of a node: how to reach it and what it runs are
/// the operator's; labels stay, since Terraform selects nodes by them.
fn for_principal(principal: &Principal, mut node: Node) -> Node {
    if !principal.is_operator() {
        node.management_address = String::new();
        node.agent_version = String::new();
    }
    node
}

pub(crate) async fn list(
    State(state): State<AppState>,
    principal: Principal,
    query: QueryParams,
) -> Result<Json<NodeList>, ApiError> {
    query.only(&["limit", "after"])?;
    let page = Page::from_query(&query)?;
    let (nodes, next_cursor) = page.apply(state.store().nodes(), |n| page::by_name(&n.name, &n.id));
    let nodes = with_flow_export(&state, nodes).await?;
    Ok(Json(NodeList {
        nodes: nodes
            .into_iter()
            .map(|node| for_principal(&principal, node))
            .collect(),
        next_cursor,
    }))
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
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Node>, ApiError> {
    let key = key(path)?;
    let node = state.store().node(&key).ok_or(ApiError::NotFound {
        kind: "node",
        id: key,
    })?;
    let mut nodes = with_flow_export(&state, vec![node]).await?;
    Ok(Json(for_principal(&principal, nodes.remove(0))))
}

/// Replace the node's labels and, when given, set its overcommit ratios and
/// its flow export setting. Every field is validated before the store is
/// touched, so a rejected patch changes nothing.
pub(crate) async fn patch(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    JsonBody(patch): JsonBody<NodePatch>,
) -> Result<Json<Node>, ApiError> {
    let key = key(path)?;
    ensure_operator(&principal, "changing", "node", &key)?;
    validation::labels("labels", &patch.labels)?;
    for (field, ratio) in [
        ("cpu_overcommit", patch.cpu_overcommit),
        ("memory_overcommit", patch.memory_overcommit),
    ] {
        if let Some(ratio) = ratio {
            overcommit::validate_ratio(field, ratio)?;
        }
    }
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
    let mut node = state.store().set_labels(key.clone(), patch.labels).await?;
    if patch.cpu_overcommit.is_some() || patch.memory_overcommit.is_some() {
        node = state
            .store()
            .set_overcommit(key, patch.cpu_overcommit, patch.memory_overcommit)
            .await?;
    }
    let mut nodes = with_flow_export(&state, vec![node]).await?;
    Ok(Json(nodes.remove(0)))
}

pub(crate) async fn logs(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Json<LogList>, ApiError> {
    let key = key(path)?;
    ensure_operator(&principal, "reading the logs of", "node", &key)?;
    query.only(&["limit"])?;
    let limit = query.int("limit", 100, 1, LOG_LINES_PER_NODE)?;
    let node = state.store().node(&key).ok_or(ApiError::NotFound {
        kind: "node",
        id: key,
    })?;
    let lines = state.store().logs(node.id, limit as u32).await?;
    Ok(Json(LogList { lines }))
}

/// Events about the caller's objects (all events for the operator).
pub(crate) async fn events(
    State(state): State<AppState>,
    principal: Principal,
    query: QueryParams,
) -> Result<Json<EventList>, ApiError> {
    query.only(&["after", "before", "limit"])?;
    let limit = query.int("limit", 100, 1, 1000)?;
    // `after` follows the journal from an id; `before` reads back from one (the
    // admin page's "older"). Both at once would be a range nobody pages through.
    let page = match (query.has("after"), query.has("before")) {
        (true, true) => {
            return Err(ApiError::InvalidField {
                field: "before".into(),
                reason: "give after or before, not both".into(),
            })
        }
        (_, true) => EventPage::Before(query.int("before", i64::MAX, 1, i64::MAX)?),
        _ => EventPage::After(query.int("after", 0, 0, i64::MAX)?),
    };
    let events = state
        .store()
        .events(principal.scope(), page, limit as u32)
        .await?;
    let full = events.len() as i64 == limit;
    // Event ids are the cursors already: the newest id continues forwards
    // (`?after=`), the oldest continues backwards (`?before=`).
    let next_cursor = match page {
        EventPage::After(_) if full => events.last().map(|event| event.id.to_string()),
        _ => None,
    };
    let older_cursor = match page {
        EventPage::Before(_) if full => events.first().map(|event| event.id.to_string()),
        _ => None,
    };
    Ok(Json(EventList {
        events,
        next_cursor,
        older_cursor,
    }))
}

/// Let the next registration under the node's name through, although it
/// lacks the node's secret (or the node is revoked); it gets a new secret.
pub(crate) async fn approve(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<RegistrationRequest>, ApiError> {
    let key = key(path)?;
    ensure_operator(&principal, "approving the registration of", "node", &key)?;
    Ok(Json(state.store().approve_registration(key).await?))
}

/// Refuse the node's heartbeats and calls from now on.
pub(crate) async fn revoke(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Node>, ApiError> {
    let key = key(path)?;
    ensure_operator(&principal, "revoking", "node", &key)?;
    Ok(Json(state.store().revoke_node(key).await?))
}

/// Refuse the node's unexpired certificates from now on; the node stays a
/// member and gets a new certificate when it registers again.
pub(crate) async fn revoke_certificate(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Node>, ApiError> {
    let key = key(path)?;
    ensure_operator(&principal, "revoking the certificate of", "node", &key)?;
    Ok(Json(state.store().revoke_certificates(key).await?))
}

/// Forget the node (409 while VMs or platforms use it).
pub(crate) async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Node>, ApiError> {
    let key = key(path)?;
    ensure_operator(&principal, "deleting", "node", &key)?;
    Ok(Json(state.store().delete_node(key).await?))
}

/// Refused registrations under existing names, waiting for an approval.
pub(crate) async fn registration_requests(
    State(state): State<AppState>,
    principal: Principal,
    query: QueryParams,
) -> Result<Json<RegistrationRequestList>, ApiError> {
    ensure_operator(&principal, "listing", "registration requests", "")?;
    query.only(&["limit", "after"])?;
    let page = Page::from_query(&query)?;
    let (requests, next_cursor) = page.apply(state.store().registration_requests().await?, |r| {
        page::by_name(&r.name, &r.node_id)
    });
    Ok(Json(RegistrationRequestList {
        requests,
        next_cursor,
    }))
}
