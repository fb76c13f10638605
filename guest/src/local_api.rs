//! The local platform API for programs inside the guest (the MSCS runs with
//! `--platform-api http://127.0.0.1:7079`). Everything is relayed over the
//! guest channel; the guest never talks to the management network.
//!
//! - `GET /tasks` -> `200 {"tasks":[...]}`: sends `poll_tasks`, returns the
//!   node agent's `tasks` answer (`504` if none within 10 s).
//! - `POST /results` -> `202 {"accepted":true}` once the document is queued on
//!   the channel. Body: the result document with a top-level `task_id`, or
//!   `{"task_id":..,"document":{..}}`; `?task_id=` overrides both.
//! - `GET /healthz` -> `200 {"channel_connected":bool}`.
//!
//! Errors are `{"error":{"code","message","field"?}}`; `503 channel_down`
//! while the node agent is unreachable, so a program can retry.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use measurelab_api::guest::GuestMessage;
use serde_json::{json, Value};

use crate::link::{Link, PollError};

const POLL_TIMEOUT: Duration = Duration::from_secs(10);

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
        };
        (status, Json(body)).into_response()
    }
}

pub(crate) fn router(link: Arc<Link>) -> Router {
    Router::new()
        .route("/tasks", get(get_tasks))
        .route("/results", post(post_result))
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
    }
}

async fn post_result(
    State(link): State<Arc<Link>>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), LocalApiError> {
    let (task_id, document) = parse_result(query.get("task_id").cloned(), &body)?;
    if !link.send(&GuestMessage::Result { task_id, document }) {
        return Err(LocalApiError::ChannelDown);
    }
    Ok((StatusCode::ACCEPTED, Json(json!({"accepted": true}))))
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
