//! `/v1/programs` and `/v1/deployments`: program distribution.

use crate::store::sql::Connection;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, Path, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::Json;
use base64::Engine;
use measurelab_api::http::{
    Deployment, DeploymentCreate, DeploymentList, DeploymentPatch, Program, ProgramCreate,
    ProgramList,
};

use super::change::{delete_request_id, Creation, Kind};
use super::error::ApiError;
use super::extract::{decode_json, key, JsonBody, QueryParams};
use super::idempotency::{answer, stored};
use super::page;
use super::scoped::{read_one, read_page};
use super::state::AppState;
use crate::access::{Principal, Role, Scope};
use crate::store::programs::MAX_PROGRAM_BYTES;
use crate::store::{programs, StoreError};

pub(crate) async fn list(
    State(state): State<AppState>,
    principal: Principal,
    query: QueryParams,
) -> Result<Json<ProgramList>, ApiError> {
    let (programs, next_cursor) = read_page(
        &state,
        &principal,
        &query,
        |conn, _, scope| programs::list(conn, scope),
        |item: &Program| page::by_name(&item.name, &item.id),
    )
    .await?;
    Ok(Json(ProgramList {
        programs,
        next_cursor,
    }))
}

/// JSON `{name, content_base64, sha256?, request_id?}`, or the raw content
/// as `application/octet-stream` with `?name=&sha256=&request_id=`.
///
/// The raw content is streamed to a file in `<data_dir>/uploads` and hashed
/// as it arrives; an upload over the size limit is refused as soon as it
/// passes it, and its file removed. Size and checksum are checked before the
/// write transaction, which then only records the program.
pub(crate) async fn create(
    State(state): State<AppState>,
    principal: Principal,
    query: QueryParams,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    // Refused rather than queued: a queued upload would hold its connection
    // and request timeout while it waits, and the client can retry.
    let _permit = state.try_upload_permit().map_err(|max| ApiError::Busy {
        message: format!(
            "{max} program uploads are being received already (--max-concurrent-uploads); retry after 1 s"
        ),
        retry_after_seconds: 1,
    })?;
    let (name, content, sha256, expected, request_id, tenant) = match content_type.as_str() {
        "application/json" => {
            query.only(&[])?;
            // Within the route's DefaultBodyLimit (base64 of the largest program).
            let body =
                Bytes::from_request(request, &())
                    .await
                    .map_err(|rejection| match rejection.status() {
                        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge {
                            limit: JSON_UPLOAD_LIMIT,
                        },
                        _ => ApiError::InvalidField {
                            field: "(body)".into(),
                            reason: rejection.body_text(),
                        },
                    })?;
            let input: ProgramCreate = decode_json(&body)?;
            drop(body);
            let content = base64::engine::general_purpose::STANDARD
                .decode(input.content_base64.trim())
                .map_err(|e| ApiError::InvalidField {
                    field: "content_base64".into(),
                    reason: format!("is not standard base64: {e}"),
                })?;
            let (content, sha256) = tokio::task::spawn_blocking(move || {
                let sha256 = programs::sha256_hex(&content);
                (content, sha256)
            })
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
            (
                input.name,
                content,
                sha256,
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
            // Before the bytes: a caller who may not create programs sends none.
            PROGRAM.ensure_can_create(&principal, &name)?;
            let (upload, sha256) =
                receive(state.store().uploads_dir(), request.into_body()).await?;
            let content = tokio::fs::read(&upload.path)
                .await
                .map_err(|e| ApiError::Unavailable(format!("reading the received upload: {e}")))?;
            drop(upload);
            (
                name,
                content,
                sha256,
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
    programs::check_upload(content.len(), &sha256, expected.as_deref())?;
    let creation = Creation {
        name: name.clone(),
        request_id,
        tenant,
    };
    PROGRAM
        .create(&state, principal, creation, move |cx, to| {
            let (program, created) =
                programs::create(cx, &to.tenant(cx.tx)?, name, content, sha256)?;
            Ok(stored(if created { 201 } else { 200 }, &program))
        })
        .await
        .map(answer)
}

/// The JSON upload body limit (mirrors the route's DefaultBodyLimit).
const JSON_UPLOAD_LIMIT: usize = MAX_PROGRAM_BYTES / 3 * 4 + 64 * 1024;

/// A received upload's file, removed when dropped: on success once read, on
/// a refusal or a client gone mid-upload at once.
struct Upload {
    path: std::path::PathBuf,
}

impl Drop for Upload {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Streams `body` into a new file under `dir`, hashing it; refuses it once it
/// passes the program size limit.
async fn receive(dir: &std::path::Path, body: Body) -> Result<(Upload, String), ApiError> {
    use futures::StreamExt;
    use sha2::Digest;
    use tokio::io::AsyncWriteExt;
    let unavailable =
        |e: std::io::Error| ApiError::Unavailable(format!("receiving the upload: {e}"));
    tokio::fs::create_dir_all(dir).await.map_err(unavailable)?;
    let upload = Upload {
        path: dir.join(format!("program-{}.part", uuid::Uuid::new_v4().simple())),
    };
    let mut file = tokio::fs::File::create(&upload.path)
        .await
        .map_err(unavailable)?;
    let mut hasher = sha2::Sha256::new();
    let mut size = 0usize;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::InvalidField {
            field: "(body)".into(),
            reason: format!("the upload broke off: {e}"),
        })?;
        size += chunk.len();
        if size > MAX_PROGRAM_BYTES {
            return Err(ApiError::PayloadTooLarge {
                limit: MAX_PROGRAM_BYTES,
            });
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(unavailable)?;
    }
    file.flush().await.map_err(unavailable)?;
    Ok((upload, hex::encode(hasher.finalize())))
}

pub(crate) async fn get(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Program>, ApiError> {
    read_one(&state, &principal, path, |conn, _, scope, key| {
        programs::get(conn, scope, key)
    })
    .await
}

/// Whether `scope` sees the program (for 403 versus 404).
fn visible(conn: &Connection, scope: &Scope, key: &str) -> Result<bool, StoreError> {
    Ok(programs::find(conn, scope, key)?.is_some())
}

const PROGRAM: Kind = Kind {
    name: "program",
    collection: "/v1/programs",
    writers: Role::Member,
    visible,
};

pub(crate) async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    let change = PROGRAM.delete(key, delete_request_id(&query)?);
    PROGRAM
        .apply(&state, &principal, change, |cx, scope, key| {
            Ok(stored(200, &programs::delete(cx, scope, key)?))
        })
        .await
        .map(answer)
}

pub(crate) async fn list_deployments(
    State(state): State<AppState>,
    principal: Principal,
    query: QueryParams,
) -> Result<Json<DeploymentList>, ApiError> {
    let (deployments, next_cursor) = read_page(
        &state,
        &principal,
        &query,
        |conn, _, scope| programs::list_deployments(conn, scope),
        |item: &Deployment| page::newest_first(&item.created_at, &item.id),
    )
    .await?;
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
    let creation = Creation {
        name: input.program.clone(),
        request_id: input.request_id.clone(),
        tenant: input.tenant.take(),
    };
    DEPLOYMENT
        .create(&state, principal, creation, move |cx, to| {
            let deployment = programs::create_deployment(cx, &to.scope(cx.tx)?, input)?;
            Ok(stored(201, &deployment))
        })
        .await
        .map(answer)
}

pub(crate) async fn get_deployment(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Deployment>, ApiError> {
    read_one(&state, &principal, path, |conn, _, scope, key| {
        programs::get_deployment(conn, scope, key)
    })
    .await
}

/// Whether `scope` sees the deployment (for 403 versus 404).
fn deployment_visible(conn: &Connection, scope: &Scope, id: &str) -> Result<bool, StoreError> {
    Ok(programs::find_deployment(conn, scope, id)?.is_some())
}

const DEPLOYMENT: Kind = Kind {
    name: "deployment",
    collection: "/v1/deployments",
    writers: Role::Member,
    visible: deployment_visible,
};

/// Changes what can change without restarting the runs: the outputs.
pub(crate) async fn patch_deployment(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    JsonBody(input): JsonBody<DeploymentPatch>,
) -> Result<Response, ApiError> {
    let change = DEPLOYMENT.patch(key(path)?, input.request_id.clone());
    DEPLOYMENT
        .apply(&state, &principal, change, move |cx, scope, key| {
            let deployment = match input.outputs {
                Some(outputs) => programs::set_outputs(cx, scope, key, outputs)?,
                None => programs::get_deployment(cx.tx, scope, key)?,
            };
            Ok(stored(200, &deployment))
        })
        .await
        .map(answer)
}

/// Stops every run of the deployment (the record stays for its statuses).
pub(crate) async fn delete_deployment(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    let change = DEPLOYMENT.change("stopping", "DELETE", key, delete_request_id(&query)?);
    DEPLOYMENT
        .apply(&state, &principal, change, |cx, scope, key| {
            Ok(stored(200, &programs::stop_deployment(cx, scope, key)?))
        })
        .await
        .map(answer)
}
