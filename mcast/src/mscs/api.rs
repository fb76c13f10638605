//! The MSCS's HTTP/JSON API.
//!
//! - `GET /healthz`
//! - `POST /tasks` with a [`TaskSpec`] body: 201 with the queued [`TaskRecord`](super::state::TaskRecord)
//! - `GET /tasks`, `GET /tasks/{id}`
//! - `GET /results?since=SEQ&limit=N`: `{"results":[{"seq":..,"document":..}],"next_since":SEQ}`
//! - `GET /schedule`: the periodic schedules' positions (built-in and controller
//!   periodic tasks) and the platform outbox's size
//! - `POST /points` with a [`Registration`] body: a point registers or heartbeats; 200
//!   with a [`RegistrationAck`](crate::protocol::RegistrationAck), 409 on a protocol
//!   version mismatch or a taken name
//! - `GET /points`: `{"points":[PointStatus...]}`, the point list with liveness
//!
//! Errors are `{"error":{"code","message","field"}}`, as in the controller's API.
//!
//! An MSCS started with a control key (`--control-key`) answers every route but
//! `/healthz` only with `Authorization: Bearer KEY`; without it, or with another key,
//! 401 `unauthenticated` naming the reason, and nothing is done.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::Request;
use axum::extract::{Path, Query, State};
use axum::http::header::AUTHORIZATION;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::warn;

use super::engine::Mscs;
use super::registry::{RegistrationError, MAX_REGISTRATION_BYTES};
use super::state::{StoredResult, TaskSpec};
use crate::protocol::Registration;

/// Largest task body accepted: a task spec is a few hundred bytes.
pub const MAX_TASK_BYTES: usize = 64 * 1024;

/// An API error with its HTTP status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"error": {"code": self.code, "message": self.message, "field": self.field}});
        (self.status, Json(body)).into_response()
    }
}

fn invalid(field: &str, message: String) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "invalid_argument",
        message,
        field: (!field.is_empty()).then(|| field.to_string()),
    }
}

/// Requests the API refused for want of the key, since start.
static REFUSED_UNAUTHENTICATED: AtomicU64 = AtomicU64::new(0);

/// Requests refused with 401 since the process started.
pub fn refused_unauthenticated() -> u64 {
    REFUSED_UNAUTHENTICATED.load(Ordering::Relaxed)
}

/// Lets a request through only with the MSCS's key as its bearer token, when the MSCS
/// has one.
async fn require_key(State(mscs): State<Mscs>, request: Request, next: Next) -> Response {
    let Some(key) = &mscs.config().control_key else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .map(|value| value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")));
    let reason = match presented {
        None => "no Authorization header: this MSCS requires its control key as a bearer token",
        Some(None) => "the Authorization header is not `Bearer KEY`",
        Some(Some(token)) if key.matches_bearer(token) => return next.run(request).await,
        Some(Some(_)) => "the bearer token is not this MSCS's control key",
    };
    REFUSED_UNAUTHENTICATED.fetch_add(1, Ordering::Relaxed);
    warn!(method = %request.method(), path = %request.uri().path(), reason, "MSCS API request refused");
    ApiError {
        status: StatusCode::UNAUTHORIZED,
        code: "unauthenticated",
        message: reason.to_string(),
        field: None,
    }
    .into_response()
}

/// Builds the router.
pub fn router(mscs: Mscs) -> Router {
    let guarded = Router::new()
        .route(
            "/tasks",
            get(list_tasks)
                .post(submit_task)
                .layer(DefaultBodyLimit::max(MAX_TASK_BYTES)),
        )
        .route("/tasks/:id", get(get_task))
        .route("/results", get(list_results))
        .route("/schedule", get(schedule))
        .route(
            "/points",
            get(list_points)
                .post(register_point)
                .layer(DefaultBodyLimit::max(MAX_REGISTRATION_BYTES)),
        )
        .route_layer(middleware::from_fn_with_state(mscs.clone(), require_key));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(guarded)
        .with_state(mscs)
}

async fn submit_task(State(mscs): State<Mscs>, body: Bytes) -> Result<Response, ApiError> {
    // Parsed here rather than by the Json extractor so that a bad body gets our error
    // shape with the field named.
    let spec: TaskSpec = serde_json::from_slice(&body).map_err(|err| {
        let message = err.to_string();
        let field = message
            .split('`')
            .nth(1)
            .filter(|_| message.contains("field"))
            .unwrap_or("")
            .to_string();
        invalid(&field, format!("invalid task body: {message}"))
    })?;
    let record = mscs
        .submit_task(spec)
        .map_err(|err| invalid(&err.field, err.to_string()))?;
    Ok((StatusCode::CREATED, Json(record)).into_response())
}

async fn register_point(State(mscs): State<Mscs>, body: Bytes) -> Result<Response, ApiError> {
    let registration: Registration = serde_json::from_slice(&body)
        .map_err(|err| invalid("", format!("invalid registration body: {err}")))?;
    match mscs.register_point(&registration) {
        Ok(ack) => Ok(Json(ack).into_response()),
        Err(err) => {
            let (status, code) = match &err {
                RegistrationError::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid_argument"),
                RegistrationError::VersionMismatch { .. } => {
                    (StatusCode::CONFLICT, "protocol_version_mismatch")
                }
                RegistrationError::Conflict { .. } => (StatusCode::CONFLICT, "name_taken"),
                RegistrationError::Full { .. } => {
                    (StatusCode::SERVICE_UNAVAILABLE, "point_list_full")
                }
                RegistrationError::Disabled => (StatusCode::NOT_FOUND, "registration_disabled"),
                RegistrationError::Persist(_) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "state_not_persisted")
                }
            };
            Err(ApiError {
                status,
                code,
                field: err.field().map(str::to_string),
                message: err.to_string(),
            })
        }
    }
}

async fn list_points(State(mscs): State<Mscs>) -> Response {
    Json(json!({"points": mscs.points()})).into_response()
}

async fn list_tasks(State(mscs): State<Mscs>) -> Response {
    Json(json!({"tasks": mscs.snapshot().tasks})).into_response()
}

async fn get_task(State(mscs): State<Mscs>, Path(id): Path<String>) -> Result<Response, ApiError> {
    mscs.snapshot()
        .tasks
        .into_iter()
        .find(|t| t.id == id)
        .map(|task| Json(task).into_response())
        .ok_or(ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: format!("no task {id:?}"),
            field: Some("id".into()),
        })
}

/// Query of `GET /results`.
#[derive(Debug, Deserialize)]
pub struct ResultsQuery {
    /// Return results with a larger sequence number.
    #[serde(default)]
    pub since: u64,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// Body of `GET /results`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ResultsPage {
    /// The results, oldest first.
    pub results: Vec<StoredResult>,
    /// Pass as `since` to continue.
    pub next_since: u64,
}

async fn list_results(State(mscs): State<Mscs>, Query(query): Query<ResultsQuery>) -> Response {
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let results = mscs.snapshot().results_since(query.since, limit);
    let next_since = results.last().map_or(query.since, |r| r.seq);
    Json(ResultsPage {
        results,
        next_since,
    })
    .into_response()
}

async fn schedule(State(mscs): State<Mscs>) -> Response {
    let state = mscs.snapshot();
    let points: Vec<_> = mscs.points().into_iter().map(|p| p.name).collect();
    let next_source = points
        .get(state.next_source_index % points.len().max(1))
        .cloned();
    Json(json!({
        "points": points,
        "next_source_index": state.next_source_index,
        "next_source": next_source,
        "next_periodic_due_unix_ms": state.next_periodic_due_unix_ms,
        "periodic_runs_completed": state.periodic_runs_completed,
        "periodic_enabled": mscs.config().periodic.is_some(),
        "current_run": mscs.current_run(),
        "platform_api": mscs.config().platform.as_ref().map(|p| p.api_url.clone()),
        "platform_periodic": state.platform_periodic,
        "outbox_pending": state.outbox.len(),
        "results_delivered": state.results_delivered,
        "results_refused": state.results_refused,
    }))
    .into_response()
}
