//! `/v1/appliances`.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use measurelab_api::http::{Appliance, ApplianceCreate, ApplianceFile, ApplianceList};

use super::auth::ensure_operator;
use super::error::ApiError;
use super::extract::{key, JsonBody, QueryParams};
use super::idempotency::{answer, stored, Idempotent};
use super::page::{self, Page};
use super::state::AppState;
use crate::access::Principal;
use crate::appliance_files::ApplianceFileError;
use crate::store::{appliances, StoreError};

pub(crate) async fn list(
    State(state): State<AppState>,
    query: QueryParams,
) -> Result<Json<ApplianceList>, ApiError> {
    query.only(&["limit", "after"])?;
    let page = Page::from_query(&query)?;
    let appliances = state
        .store()
        .resources()
        .read(|conn, _| appliances::list(conn))
        .await?;
    let (appliances, next_cursor) =
        page.apply(appliances, |item| page::by_name(&item.name, &item.id));
    Ok(Json(ApplianceList {
        appliances,
        next_cursor,
    }))
}

/// The catalog is shared by every tenant: only the operator adds to it.
pub(crate) async fn create(
    State(state): State<AppState>,
    principal: Principal,
    JsonBody(input): JsonBody<ApplianceCreate>,
) -> Result<Response, ApiError> {
    ensure_operator(&principal, "creating", "appliance", &input.name)?;
    for (field, digest) in [
        ("kernel_sha256", &input.kernel_sha256),
        ("initrd_sha256", &input.initrd_sha256),
        ("disk_sha256", &input.disk_sha256),
    ] {
        if let Some(digest) = digest {
            uploaded(&state, field, digest).await?;
        }
    }
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

/// Checks that the file `digest` was uploaded (before the appliance names
/// it, so no node is ever told to fetch a file the controller lacks).
async fn uploaded(state: &AppState, field: &str, digest: &str) -> Result<(), ApiError> {
    let invalid = |reason: String| ApiError::InvalidField {
        field: field.into(),
        reason,
    };
    match state.store().appliance_files().size(digest).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(invalid(format!(
            "no file with SHA-256 {digest} was uploaded; PUT it to /v1/appliance_files/{digest} first"
        ))),
        Err(e @ ApplianceFileError::BadDigest { .. }) => Err(invalid(e.to_string())),
        Err(e) => Err(ApiError::Unavailable(e.to_string())),
    }
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    query.only(&["request_id"])?;
    ensure_operator(&principal, "deleting", "appliance", &key)?;
    let route = format!("DELETE /v1/appliances/{key}");
    let request_id = principal.idempotency_key(query.0.get("request_id").cloned());
    let result = state
        .store()
        .resources()
        .mutate(request_id, route, move |cx| {
            Ok(stored(200, &appliances::delete(cx, &key)?))
        })
        .await?;
    Ok(answer(result))
}

/// `PUT /v1/appliance_files/{sha256}`: the raw file, streamed to disk while
/// it is hashed; stored only when its SHA-256 is the one in the path.
pub(crate) async fn upload_file(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let sha256 = key(path)?;
    ensure_operator(&principal, "uploading", "appliance file", &sha256)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.eq_ignore_ascii_case("application/octet-stream") {
        return Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type: expected application/octet-stream, got {content_type:?}"
        )));
    }
    let stored = state
        .store()
        .appliance_files()
        .store(&sha256, body.into_data_stream())
        .await;
    let (size_bytes, created) = match stored {
        Ok(stored) => stored,
        Err(e @ (ApplianceFileError::BadDigest { .. } | ApplianceFileError::Mismatch { .. })) => {
            return Err(ApiError::InvalidField {
                field: "sha256".into(),
                reason: e.to_string(),
            })
        }
        Err(ApplianceFileError::TooLarge { limit }) => {
            return Err(ApiError::PayloadTooLarge {
                limit: limit as usize,
            })
        }
        Err(e) => return Err(ApiError::Unavailable(e.to_string())),
    };
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(ApplianceFile { sha256, size_bytes })).into_response())
}
