//! `/v1/platforms/{id_or_name}/peers`: WireGuard peers of a platform's
//! gateway. A generated private key is in the create answer only; the
//! store never has it, and a replayed create (same request_id) gets the
//! peer without it.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Json;
use measurelab_api::http::{PlatformPeer, PlatformPeerCreate, PlatformPeerList};

use super::auth::ensure_can_change;
use super::error::ApiError;
use super::extract::{key, JsonBody, QueryParams};
use super::idempotency::{answer, stored, Idempotent};
use super::page::{self, Page};
use super::platforms::visible;
use super::state::AppState;
use crate::access::Principal;
use crate::store::gateways::{self, GatewayRow, PeerRow};
use crate::store::platforms::{self, PlatformRow};
use crate::store::Registry;
use crate::wg_keys;

fn to_api(
    platform: &PlatformRow,
    gateway: &GatewayRow,
    peer: PeerRow,
    registry: &Registry,
) -> PlatformPeer {
    let mut api = PlatformPeer {
        id: peer.id,
        name: peer.name,
        platform_id: peer.platform_id,
        public_key: peer.public_key,
        tunnel_address: peer.tunnel_address,
        allowed_ips: platform.subnet.clone(),
        // Empty only while the node stopped reporting its public address.
        endpoint: gateway.endpoint(registry).unwrap_or_default(),
        gateway_public_key: gateway.public_key.clone(),
        created_at: peer.created_at,
        config: String::new(),
        private_key: None,
    };
    api.config = api.wg_quick_config(None);
    api
}

pub(crate) async fn list(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Json<PlatformPeerList>, ApiError> {
    let platform_key = key(path)?;
    query.only(&["limit", "after"])?;
    let page = Page::from_query(&query)?;
    let scope = principal.scope();
    let peers = state
        .store()
        .resources()
        .read(move |conn, registry| {
            let platform = platforms::get(conn, &scope, &platform_key)?;
            let Some(gateway) = &platform.wg_gateway else {
                return Ok(Vec::new());
            };
            Ok(gateways::peers(conn, &platform.id)?
                .into_iter()
                .map(|peer| to_api(&platform, gateway, peer, registry))
                .collect())
        })
        .await?;
    let (peers, next_cursor) = page.apply(peers, |item| page::by_name(&item.name, &item.id));
    Ok(Json(PlatformPeerList { peers, next_cursor }))
}

pub(crate) async fn get(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<PlatformPeer>, ApiError> {
    let (platform_key, peer_key) = key(path)?;
    let scope = principal.scope();
    let peer = state
        .store()
        .resources()
        .read(move |conn, registry| {
            let platform = platforms::get(conn, &scope, &platform_key)?;
            let row = gateways::peer(conn, &platform.id, &peer_key)?;
            let gateway = gateway_of(&platform)?;
            Ok(to_api(&platform, gateway, row, registry))
        })
        .await?;
    Ok(Json(peer))
}

/// A peer row exists only under a gateway (the table's foreign key).
fn gateway_of(platform: &PlatformRow) -> Result<&GatewayRow, crate::store::StoreError> {
    platform.wg_gateway.as_ref().ok_or_else(|| {
        crate::store::StoreError::Corrupt(format!(
            "platform {} has peers but no gateway",
            platform.id
        ))
    })
}

pub(crate) async fn create(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    JsonBody(input): JsonBody<PlatformPeerCreate>,
) -> Result<Response, ApiError> {
    let platform_key = key(path)?;
    ensure_can_change(
        &state,
        &principal,
        "adding a peer to",
        "platform",
        &platform_key,
        visible,
    )
    .await?;
    // Checked before the transaction, so a bad key changes nothing.
    let (public_key, generated) = match &input.public_key {
        Some(given) => (wg_keys::public_key("public_key", given)?, None),
        None => {
            let pair = wg_keys::generate().map_err(|e| ApiError::Unavailable(e.to_string()))?;
            (pair.public_key, Some(pair.private_key))
        }
    };
    let route = format!("POST /v1/platforms/{platform_key}/peers");
    let scope = principal.scope();
    let recorded_key = public_key.clone();
    let result = state
        .store()
        .resources()
        .mutate(
            principal.idempotency_key(input.request_id.clone()),
            route,
            move |cx| {
                let platform = platforms::get(cx.tx, &scope, &platform_key)?;
                let (gateway, row) =
                    gateways::add_peer(cx, &platform.as_ref(), &input.name, &recorded_key)?;
                // Recorded without the private key: a replay must not reveal it.
                Ok(stored(201, &to_api(&platform, &gateway, row, cx.registry)))
            },
        )
        .await?;
    // A replay answers with the first request's key, not this one's.
    let fresh = result.text_field("public_key") == Some(public_key.as_str());
    let shown_once = match (generated, result.body_as::<PlatformPeer>()) {
        (Some(private_key), Some(peer)) if fresh => {
            let config = peer.wg_quick_config(Some(&private_key));
            result
                .with_unrecorded("private_key", private_key)
                .with_unrecorded("config", config)
        }
        _ => result,
    };
    Ok(answer(shown_once))
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<(String, String)>, PathRejection>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let (platform_key, peer_key) = key(path)?;
    query.only(&["request_id"])?;
    ensure_can_change(
        &state,
        &principal,
        "removing a peer of",
        "platform",
        &platform_key,
        visible,
    )
    .await?;
    let route = format!("DELETE /v1/platforms/{platform_key}/peers/{peer_key}");
    let scope = principal.scope();
    let request_id = principal.idempotency_key(query.0.get("request_id").cloned());
    let result = state
        .store()
        .resources()
        .mutate(request_id, route, move |cx| {
            let platform = platforms::get(cx.tx, &scope, &platform_key)?;
            let (gateway, row) = gateways::remove_peer(cx, &platform.as_ref(), &peer_key)?;
            Ok(stored(200, &to_api(&platform, &gateway, row, cx.registry)))
        })
        .await?;
    Ok(answer(result))
}
