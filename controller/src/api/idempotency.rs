//! Idempotent mutating requests: a request that carries a `request_id` and
//! is retried (a timeout, a lost response) gets exactly the first response
//! and changes nothing again; a request_id reused for another route is
//! refused.

use std::future::Future;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::store::idempotency::{self, Record};
use crate::store::{ResourceStore, StoreError, TxContext};

/// Longest request_id accepted.
const MAX_REQUEST_ID: usize = 200;

/// The response of a mutating request: status and JSON body, recorded under
/// the request_id so a retry gets exactly the first response.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    status: StatusCode,
    body: serde_json::Value,
}

/// An [`Answer`] of `value` with status `status` (201 or 200).
pub(crate) fn stored<T: serde::Serialize>(status: u16, value: &T) -> Answer {
    Answer {
        status: StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        body: serde_json::to_value(value).unwrap_or(serde_json::Value::Null),
    }
}

/// The HTTP response of an [`Answer`].
pub(crate) fn answer(answer: Answer) -> Response {
    (answer.status, Json(answer.body)).into_response()
}

impl Answer {
    /// A top-level text field of the body, e.g. the id of what was created.
    pub(crate) fn text_field(&self, key: &str) -> Option<&str> {
        self.body.get(key).and_then(serde_json::Value::as_str)
    }

    /// Set a field in this response only, after it was recorded: for what
    /// must be shown once and never stored (a token secret).
    pub(crate) fn with_unrecorded(mut self, key: &str, value: String) -> Self {
        if let Some(object) = self.body.as_object_mut() {
            object.insert(key.to_string(), serde_json::Value::String(value));
        }
        self
    }

    /// The body as `T`, to complete it with unrecorded fields.
    pub(crate) fn body_as<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_value(self.body.clone()).ok()
    }

    fn to_record(&self, route: String) -> Record {
        Record {
            route,
            status: self.status.as_u16(),
            body: self.body.to_string(),
        }
    }

    fn from_record(record: Record) -> Result<Answer, StoreError> {
        Ok(Answer {
            status: StatusCode::from_u16(record.status).unwrap_or(StatusCode::OK),
            body: serde_json::from_str(&record.body)
                .map_err(|e| StoreError::Corrupt(format!("idempotency.body: {e}")))?,
        })
    }
}

/// Mutations of the resource store under an optional request_id. A trait
/// so handlers read `store.resources().mutate(..)` while the replay rules stay
/// here, in the API layer, and the transaction stays the store's.
pub(crate) trait Idempotent {
    /// Run `body` in one transaction, or, when `request_id` was used for
    /// `route` before, return the recorded answer and change nothing.
    fn mutate(
        &self,
        request_id: Option<String>,
        route: String,
        body: impl FnOnce(&mut TxContext<'_>) -> Result<Answer, StoreError> + Send + 'static,
    ) -> impl Future<Output = Result<Answer, StoreError>> + Send;
}

impl Idempotent for ResourceStore {
    async fn mutate(
        &self,
        request_id: Option<String>,
        route: String,
        body: impl FnOnce(&mut TxContext<'_>) -> Result<Answer, StoreError> + Send + 'static,
    ) -> Result<Answer, StoreError> {
        if let Some(id) = &request_id {
            if id.is_empty() || id.len() > MAX_REQUEST_ID {
                return Err(StoreError::invalid(
                    "request_id",
                    format!("must be 1 to {MAX_REQUEST_ID} characters long"),
                ));
            }
        }
        self.transact(move |cx| {
            let Some(id) = request_id else {
                return body(cx);
            };
            if let Some(record) = idempotency::find(cx.tx, &id)? {
                if record.route != route {
                    return Err(StoreError::conflict(
                        Some("request_id"),
                        format!(
                            "request_id: {id:?} was already used for {}; use a new request_id for {route}",
                            record.route
                        ),
                    ));
                }
                return Answer::from_record(record);
            }
            let answer = body(cx)?;
            idempotency::insert(cx, &id, &answer.to_record(route))?;
            Ok(answer)
        })
        .await
    }
}
