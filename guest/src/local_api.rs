//! The local platform API for programs inside the guest (the MSCS runs with
//! `--platform-api http://127.0.0.1:7079`). Everything is relayed over the
//! guest channel; the guest never talks to the management network.
//!
//! - `GET /tasks` -> `200 {"tasks":[...]}`: sends `poll_tasks`, returns the
//!   node agent's `tasks` answer (`504` if none within 10 s).
//! - `POST /results` -> `202 {"accepted":true}` once the node agent says the
//!   document is durable (written to its disk, to be re-posted until the
//!   controller commits it); `503 not_stored` when it refused (its spool is
//!   full, the guest posts too fast), `504` without an answer in 10 s. A
//!   program retries on both; the controller keeps one result per `run_id`.
//!   Body: the result document with a top-level `task_id`, or
//!   `{"task_id":..,"document":{..}}`; `?task_id=` overrides both.
//! - `POST /points` -> `202 {"accepted":true}` once the list is queued on the
//!   channel. Body: `{"points":[...]}`, the MSCS's own `GET /points` answer;
//!   each post replaces the platform's list at the controller. Checked field by
//!   field here (`422` naming the field) so the MSCS learns of a bad list.
//! - `GET /healthz` -> `200 {"channel_connected":bool}`.
//!
//! Errors are `{"error":{"code","message","field"?}}`; `503 channel_down`
//! while the node agent is unreachable, so a program can retry.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use measurelab_api::guest::{check_points, GuestMessage, GuestPoint};
use serde_json::{json, Value};

use crate::link::{Link, PollError, PostError};

const POLL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a result post waits for the node agent's "stored".
const RESULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest `POST /points` body: 256 points of about 250 bytes each fit twice.
const MAX_POINTS_BODY_BYTES: usize = 128 * 1024;

/// Errors of the local API, each one HTTP answer.
#[derive(Debug, thiserror::Error)]
enum LocalApiError {
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("the channel to the node agent is down; retry later")]
    ChannelDown,
    #[error("the node agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the node agent did not take the request: {0}")]
    Refused(String),
    #[error("the result is not stored: {0}; retry later")]
    NotStored(String),
    #[error("the controller refused the result: {0}; posting it again will not help")]
    Rejected(String),
}

impl IntoResponse for LocalApiError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let (status, body) = match self {
            LocalApiError::Invalid { field, .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error":{"code":"invalid","message":message,"field":field}}),
            ),
            LocalApiError::ChannelDown => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error":{"code":"channel_down","message":message}}),
            ),
            LocalApiError::Timeout(_) => (
                StatusCode::GATEWAY_TIMEOUT,
                json!({"error":{"code":"timeout","message":message}}),
            ),
            LocalApiError::Refused(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                json!({"error":{"code":"refused","message":message}}),
            ),
            LocalApiError::NotStored(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error":{"code":"not_stored","message":message}}),
            ),
            LocalApiError::Rejected(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error":{"code":"rejected","message":message}}),
            ),
        };
        (status, Json(body)).into_response()
    }
}

pub(crate) fn router(link: Arc<Link>) -> Router {
    Router::new()
        .route("/tasks", get(get_tasks))
        .route("/results", post(post_result))
        .route(
            "/points",
            post(post_points).layer(DefaultBodyLimit::max(MAX_POINTS_BODY_BYTES)),
        )
        .route("/healthz", get(healthz))
        .with_state(link)
}

pub(crate) async fn serve(listener: tokio::net::TcpListener, link: Arc<Link>) {
    if let Err(err) = axum::serve(listener, router(link)).await {
        tracing::error!(%err, "local platform API stopped");
    }
}

async fn healthz(State(link): State<Arc<Link>>) -> Json<Value> {
    Json(json!({"channel_connected": link.connected()}))
}

async fn get_tasks(State(link): State<Arc<Link>>) -> Result<Json<Value>, LocalApiError> {
    match link.poll_tasks(POLL_TIMEOUT).await {
        Ok(tasks) => Ok(Json(json!({ "tasks": tasks }))),
        Err(PollError::ChannelDown) => Err(LocalApiError::ChannelDown),
        Err(PollError::Timeout) => Err(LocalApiError::Timeout(POLL_TIMEOUT)),
        Err(PollError::Refused(reason)) => Err(LocalApiError::Refused(reason)),
    }
}

async fn post_result(
    State(link): State<Arc<Link>>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), LocalApiError> {
    let (task_id, document) = parse_result(query.get("task_id").cloned(), &body)?;
    match link.post_result(task_id, document, RESULT_TIMEOUT).await {
        Ok(()) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({"accepted": true, "durable": true})),
        )),
        Err(PostError::ChannelDown) => Err(LocalApiError::ChannelDown),
        Err(PostError::Timeout) => Err(LocalApiError::Timeout(RESULT_TIMEOUT)),
        Err(PostError::Refused(reason)) => Err(LocalApiError::NotStored(reason)),
        Err(PostError::Rejected(reason)) => Err(LocalApiError::Rejected(reason)),
    }
}

async fn post_points(
    State(link): State<Arc<Link>>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), LocalApiError> {
    let points = parse_points(&body)?;
    if !link.send(&GuestMessage::Points { points }) {
        return Err(LocalApiError::ChannelDown);
    }
    Ok((StatusCode::ACCEPTED, Json(json!({"accepted": true}))))
}

fn parse_points(body: &[u8]) -> Result<Vec<GuestPoint>, LocalApiError> {
    let not_a_list = |e: String| LocalApiError::Invalid {
        field: "points",
        message: format!("body: not a {{\"points\":[...]}} list: {e}"),
    };
    let mut body: Value = serde_json::from_slice(body).map_err(|e| not_a_list(e.to_string()))?;
    let list = body
        .get_mut("points")
        .map(Value::take)
        .ok_or_else(|| not_a_list("no \"points\" field".into()))?;
    let points: Vec<GuestPoint> =
        serde_json::from_value(list).map_err(|e| not_a_list(e.to_string()))?;
    check_points(&points).map_err(|e| LocalApiError::Invalid {
        // The element's path is in the message; `field` names the list.
        field: "points",
        message: e.to_string(),
    })?;
    Ok(points)
}

fn parse_result(
    query_task_id: Option<String>,
    body: &[u8],
) -> Result<(String, Value), LocalApiError> {
    let body: Value = serde_json::from_slice(body).map_err(|e| LocalApiError::Invalid {
        field: "body",
        message: format!("body: not JSON: {e}"),
    })?;
    let Value::Object(object) = &body else {
        return Err(LocalApiError::Invalid {
            field: "body",
            message: "body: must be a JSON object (the result document)".into(),
        });
    };
    let body_task_id = match object.get("task_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id.clone()),
        Some(other) => {
            return Err(LocalApiError::Invalid {
                field: "task_id",
                message: format!("task_id: must be a string, got {other}"),
            })
        }
    };
    let task_id = query_task_id
        .or(body_task_id)
        .filter(|id| !id.trim().is_empty())
        .ok_or(LocalApiError::Invalid {
            field: "task_id",
            message: "task_id: required (query ?task_id= or a top-level field)".into(),
        })?;
    let document = match object.get("document") {
        Some(Value::Object(_)) if object.len() <= 2 => object["document"].clone(),
        _ => body.clone(),
    };
    Ok((task_id, document))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_bodies_are_understood() {
        let (id, doc) = parse_result(
            None,
            br#"{"task_id":"t1","schema":"measurelab.mcast.result/v1"}"#,
        )
        .unwrap();
        assert_eq!(id, "t1");
        assert_eq!(doc["schema"], "measurelab.mcast.result/v1");

        let (id, doc) =
            parse_result(None, br#"{"task_id":"t2","document":{"receivers":[]}}"#).unwrap();
        assert_eq!(id, "t2");
        assert_eq!(doc, json!({"receivers":[]}));

        let (id, _) = parse_result(Some("q".into()), br#"{"task_id":"b"}"#).unwrap();
        assert_eq!(id, "q");
    }

    #[test]
    fn point_lists_are_checked_before_they_are_relayed() {
        let good = br#"{"points":[{"name":"p1","control_addr":"10.0.0.2:7001",
            "data_addr":"10.0.0.2","origin":"registered","state":"missing",
            "last_heartbeat_unix_ms":1764000000000,"protocol_version":2}]}"#;
        let points = parse_points(good).unwrap();
        assert_eq!(points[0].state, "missing");
        for (body, needle) in [
            (&b"nope"[..], "not a"),
            (&br#"{"points":{}}"#[..], "not a"),
            (
                &br#"{"points":[{"name":"p","control_addr":"x","origin":"static","state":"active"}]}"#[..],
                "points[0].control_addr",
            ),
        ] {
            match parse_points(body) {
                Err(LocalApiError::Invalid { message, .. }) => {
                    assert!(message.contains(needle), "{message}")
                }
                other => panic!("{body:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_result_bodies_name_the_field() {
        for (body, field) in [
            (&b"nope"[..], "body"),
            (&b"[1]"[..], "body"),
            (&br#"{"x":1}"#[..], "task_id"),
            (&br#"{"task_id":7}"#[..], "task_id"),
        ] {
            match parse_result(None, body) {
                Err(LocalApiError::Invalid { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{body:?}: {other:?}"),
            }
        }
    }
}
