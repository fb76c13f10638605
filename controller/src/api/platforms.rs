//! `/v1/platforms`: virtual platforms.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Json;
use measurelab_api::http::{
    Platform, PlatformControlKey, PlatformCreate, PlatformList, PlatformPatch, PlatformPoints,
    PlatformPowerState, RequestOptions,
};

use super::auth::ensure_can_change;
use super::change::{delete_request_id, Creation, Kind};
use super::error::ApiError;
use super::extract::{key, optional_body, JsonBody, QueryParams};
use super::idempotency::{answer, stored};
use super::page;
use super::scoped::{read_one, read_page};
use super::state::AppState;
use crate::access::{Principal, Role, Scope};
use crate::store::sql::Connection;
use crate::store::{control_keys, platform_points, platforms, StoreError};

pub(crate) async fn list(
    State(state): State<AppState>,
    principal: Principal,
    query: QueryParams,
) -> Result<Json<PlatformList>, ApiError> {
    let (platforms, next_cursor) = read_page(
        &state,
        &principal,
        &query,
        |conn, registry, scope| {
            Ok(platforms::list(conn, scope)?
                .iter()
                .map(|p| p.to_api(registry))
                .collect())
        },
        |item: &Platform| page::by_name(&item.name, &item.id),
    )
    .await?;
    Ok(Json(PlatformList {
        platforms,
        next_cursor,
    }))
}

pub(crate) async fn create(
    State(state): State<AppState>,
    principal: Principal,
    JsonBody(mut input): JsonBody<PlatformCreate>,
) -> Result<Response, ApiError> {
    let creation = Creation {
        name: input.name.clone(),
        request_id: input.request_id.clone(),
        tenant: input.tenant.take(),
    };
    PLATFORM
        .create(&state, principal, creation, move |cx, to| {
            let row = platforms::create(cx, &to.tenant(cx.tx)?, input)?;
            Ok(stored(201, &row.to_api(cx.registry)))
        })
        .await
        .map(answer)
}

pub(crate) async fn get(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Platform>, ApiError> {
    read_one(&state, &principal, path, |conn, registry, scope, key| {
        Ok(platforms::get(conn, scope, key)?.to_api(registry))
    })
    .await
}

/// `GET /v1/platforms/{id_or_name}/points`: the point list its MSCS last
/// reported. The platform is looked up in the caller's scope first, so
/// another tenant's platform is not found and its list never read.
pub(crate) async fn points(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<PlatformPoints>, ApiError> {
    let key = key(path)?;
    let scope = principal.scope();
    let points = state
        .store()
        .resources()
        .read(move |conn, _| {
            let platform = platforms::get(conn, &scope, &key)?;
            platform_points::get(conn, &platform.id)
        })
        .await?;
    Ok(Json(points))
}

/// `GET /v1/platforms/{id_or_name}/control-key`: the key of the platform's
/// MSCS and points, for its owners and members (a viewer may see the
/// platform but not act as its MSCS's caller). Each read leaves an event
/// naming the token, never the key.
pub(crate) async fn control_key(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<PlatformControlKey>, ApiError> {
    let key = key(path)?;
    ensure_can_change(
        &state,
        &principal,
        "reading the control key of",
        PLATFORM.name,
        &key,
        visible,
    )
    .await?;
    let scope = principal.scope();
    let reader = principal.token_name.clone();
    let answer = state
        .store()
        .resources()
        .transact(move |cx| platforms::read_control_key(cx, &scope, &key, &reader))
        .await?;
    Ok(Json(answer))
}

/// `POST /v1/platforms/{id_or_name}/control-key/rotate`: a fresh key for the
/// platform, for whoever may read it. The idempotency record holds the answer
/// without the key, so a replay never reveals it (as for a token's secret).
pub(crate) async fn rotate_control_key(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let options: RequestOptions = optional_body(&body)?;
    let change = PLATFORM
        .change(
            "rotating the control key of",
            "POST",
            key(path)?,
            options.request_id,
        )
        .with_route_suffix("/control-key/rotate");
    let rotator = principal.token_name.clone();
    let secret = control_keys::new_secret();
    // The body runs only when this is not a replay.
    let fresh = Arc::new(AtomicBool::new(false));
    let result = PLATFORM
        .apply(&state, &principal, change, {
            let (secret, fresh) = (secret.clone(), fresh.clone());
            move |cx, scope, key| {
                let mut rotated = platforms::rotate_control_key(cx, scope, key, &secret, &rotator)?;
                rotated.control_key.clear();
                fresh.store(true, Ordering::Relaxed);
                Ok(stored(200, &rotated))
            }
        })
        .await?;
    Ok(answer(if fresh.load(Ordering::Relaxed) {
        result.with_unrecorded("control_key", secret)
    } else {
        result
    }))
}

/// Whether `scope` sees the platform (for 403 versus 404).
pub(crate) fn visible(conn: &Connection, scope: &Scope, key: &str) -> Result<bool, StoreError> {
    Ok(platforms::find(conn, scope, key)?.is_some())
}

const PLATFORM: Kind = Kind {
    name: "platform",
    collection: "/v1/platforms",
    writers: Role::Member,
    visible,
};

pub(crate) async fn patch(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    JsonBody(patch): JsonBody<PlatformPatch>,
) -> Result<Response, ApiError> {
    let change = PLATFORM.patch(key(path)?, patch.request_id.clone());
    PLATFORM
        .apply(&state, &principal, change, move |cx, scope, key| {
            let row = platforms::update(cx, scope, key, patch)?;
            Ok(stored(200, &row.to_api(cx.registry)))
        })
        .await
        .map(answer)
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    let change = PLATFORM.delete(key, delete_request_id(&query)?);
    PLATFORM
        .apply(&state, &principal, change, |cx, scope, key| {
            let row = platforms::delete(cx, scope, key)?;
            Ok(stored(200, &row.to_api(cx.registry)))
        })
        .await
        .map(answer)
}

async fn power(
    state: AppState,
    principal: Principal,
    key: String,
    body: Bytes,
    power: PlatformPowerState,
) -> Result<Response, ApiError> {
    let options: RequestOptions = optional_body(&body)?;
    let (verb, action) = match power {
        PlatformPowerState::Running => ("start", "starting"),
        PlatformPowerState::Paused => ("pause", "pausing"),
    };
    let change = PLATFORM
        .change(action, "POST", key, options.request_id)
        .with_route_suffix(&format!("/{verb}"));
    PLATFORM
        .apply(&state, &principal, change, move |cx, scope, key| {
            let row = platforms::set_power(cx, scope, key, power)?;
            Ok(stored(200, &row.to_api(cx.registry)))
        })
        .await
        .map(answer)
}

pub(crate) async fn start(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    power(
        state,
        principal,
        key(path)?,
        body,
        PlatformPowerState::Running,
    )
    .await
}

pub(crate) async fn pause(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    power(
        state,
        principal,
        key(path)?,
        body,
        PlatformPowerState::Paused,
    )
    .await
}
