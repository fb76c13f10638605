//! Helpers shared by the wave-2 resource handlers: path keys, optional
//! bodies, and turning a stored [`Answer`] into a response.

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;

use crate::api::extract::decode_json;
use crate::api::ApiError;
use crate::slices::store::resources::Answer;

/// The `{id_or_name}` path segment.
pub(crate) fn key(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(key)| key)
        .map_err(|rejection| ApiError::InvalidField {
            field: "id_or_name".into(),
            reason: rejection.body_text(),
        })
}

/// A JSON body that may be absent (DELETE, start, pause).
pub(crate) fn optional_body<T: DeserializeOwned + Default>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        decode_json(bytes)
    }
}

pub(crate) fn answer(answer: Answer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    (status, Json(answer.body)).into_response()
}
