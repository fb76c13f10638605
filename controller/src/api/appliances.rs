//! `/v1/appliances`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Json;
use measurelab_api::http::{Appliance, ApplianceCreate, ApplianceList};

use super::auth::ensure_operator;
use super::error::ApiError;
use super::extract::{key, JsonBody};
use super::idempotency::{answer, stored, Idempotent};
use super::state::AppState;
use crate::access::Principal;
use crate::store::{appliances, StoreError};

pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<ApplianceList>, ApiError> {
    let appliances = state
        .store()
        .resources()
        .read(|conn, _| appliances::list(conn))
        .await?;
    Ok(Json(ApplianceList { appliances }))
}

/// The catalog is shared by every tenant: only the operator adds to it.
pub(crate) async fn create(
    State(state): State<AppState>,
    principal: Principal,
    JsonBody(input): JsonBody<ApplianceCreate>,
) -> Result<Response, ApiError> {
    ensure_operator(&principal, "creating", "appliance", &input.name)?;
    let result = state
        .store()
        .resources()
        .mutate(
            input.request_id.clone(),
            "POST /v1/appliances".into(),
            move |cx| Ok(stored(201, &appliances::create(cx, input)?)),
        )
        .await?;
    Ok(answer(result))
}

pub(crate) async fn get(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Appliance>, ApiError> {
    let key = key(path)?;
    Ok(Json(
        state
            .store()
            .resources()
            .read(move |conn, _| {
                appliances::find(conn, &key)?.ok_or(StoreError::NotFound {
                    kind: "appliance",
                    id: key,
                })
            })
            .await?,
    ))
}
