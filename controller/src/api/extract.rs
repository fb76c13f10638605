//! Request extractors whose failures are `ApiError`s naming the field,
//! instead of axum's plain-text rejections.

use std::collections::HashMap;

use axum::async_trait;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::field_validation;

/// Largest request body accepted; label patches are tiny, so anything bigger
/// is a mistake or an attack.
pub(crate) const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The `{id_or_name}` path segment.
pub(crate) fn key<T>(path: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
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

/// A JSON body, decoded with the path of any offending field.
pub(crate) struct JsonBody<T>(pub T);

#[async_trait]
impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if !(essence.eq_ignore_ascii_case("application/json") || essence.ends_with("+json")) {
            return Err(ApiError::UnsupportedMediaType(format!(
                "Content-Type: expected application/json, got {:?}",
                content_type
            )));
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge {
                        limit: MAX_BODY_BYTES,
                    }
                } else {
                    ApiError::MalformedJson {
                        field: None,
                        message: format!("cannot read the request body: {}", rejection.body_text()),
                    }
                }
            })?;
        decode_json(&bytes).map(JsonBody)
    }
}

/// Decode `bytes` as `T`; errors carry the JSON path (`labels.rack`) and the
/// reason (missing field, wrong type, syntax). Fields `T` does not know are
/// collected and handed to [`field_validation::handle_unknown`], which
/// refuses, warns or ignores as the request asked.
pub(crate) fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let mut unknown = Vec::new();
    let mut note_unknown = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
    let tracked = serde_ignored::Deserializer::new(&mut deserializer, &mut note_unknown);
    let value = match serde_path_to_error::deserialize(tracked) {
        Ok(value) => value,
        Err(e) => {
            // serde_path_to_error writes `?` for a map key it had not read
            // yet when the syntax broke; name the enclosing value instead.
            let path = e
                .path()
                .to_string()
                .split('.')
                .filter(|segment| !segment.is_empty() && *segment != "?")
                .collect::<Vec<_>>()
                .join(".");
            let inner = e.into_inner();
            let path = (!path.is_empty()).then_some(path);
            return Err(match inner.classify() {
                serde_json::error::Category::Data => {
                    let reason = inner.to_string();
                    // serde reports a missing field at its parent's path;
                    // name the field itself.
                    let field = match missing_field(&reason) {
                        Some(missing) => match &path {
                            Some(parent) => format!("{parent}.{missing}"),
                            None => missing.to_string(),
                        },
                        None => path.unwrap_or_else(|| "(body)".to_string()),
                    };
                    ApiError::InvalidField { field, reason }
                }
                _ => ApiError::MalformedJson {
                    message: match &path {
                        Some(path) => format!("{path}: request body is not valid JSON: {inner}"),
                        None => format!("request body is not valid JSON: {inner}"),
                    },
                    field: path,
                },
            });
        }
    };
    deserializer.end().map_err(|e| ApiError::MalformedJson {
        field: None,
        message: format!("request body has data after the JSON value: {e}"),
    })?;
    field_validation::handle_unknown(unknown)?;
    Ok(value)
}

fn missing_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next()
}

/// Query parameters as a map; typed parsing happens in [`QueryParams::int`] so
/// errors can name the parameter.
pub(crate) struct QueryParams(pub HashMap<String, String>);

#[async_trait]
impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(map) = Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::InvalidField {
                field: "(query)".into(),
                reason: rejection.body_text(),
            })?;
        Ok(QueryParams(map))
    }
}

impl QueryParams {
    /// Refuse parameters the route does not know, so a typo (`?limt=`) is
    /// an error rather than a silently ignored setting.
    pub fn only(&self, allowed: &[&str]) -> Result<(), ApiError> {
        match self.0.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(unknown) => Err(ApiError::InvalidField {
                field: unknown.clone(),
                reason: format!(
                    "unknown query parameter; this route accepts {}",
                    allowed.join(", ")
                ),
            }),
            None => Ok(()),
        }
    }

    /// Whether the request names `name`, with or without a value.
    pub fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// An integer parameter in `min..=max`, or `default` when absent.
    pub fn int(&self, name: &str, default: i64, min: i64, max: i64) -> Result<i64, ApiError> {
        let Some(text) = self.0.get(name) else {
            return Ok(default);
        };
        let value: i64 = text.parse().map_err(|_| ApiError::InvalidField {
            field: name.into(),
            reason: format!("{text:?} is not an integer"),
        })?;
        if !(min..=max).contains(&value) {
            return Err(ApiError::InvalidField {
                field: name.into(),
                reason: format!("{value} is out of range {min}..={max}"),
            });
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use measurelab_api::http::NodePatch;

    fn field_of(body: &str) -> (String, String) {
        match decode_json::<NodePatch>(body.as_bytes()).unwrap_err() {
            ApiError::InvalidField { field, reason } => (field, reason),
            ApiError::MalformedJson { field, message } => {
                (field.unwrap_or_else(|| "-".into()), message)
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_json_path() {
        let (field, reason) = field_of(r#"{"labels":{},"color":"red"}"#);
        assert_eq!(field, "color");
        assert!(reason.contains("unknown field"), "{reason}");

        let (field, reason) = field_of(r#"{"labels":{"rack":7}}"#);
        assert_eq!(field, "labels.rack");
        assert!(reason.contains("invalid type"), "{reason}");

        let (field, reason) = field_of(r#"{}"#);
        assert_eq!(field, "labels");
        assert!(reason.contains("missing field"), "{reason}");

        let (_, message) = field_of(r#"{"labels":"#);
        assert!(message.contains("not valid JSON"), "{message}");

        let (_, message) = field_of(r#"{"labels":{}} x"#);
        assert!(message.contains("after the JSON value"), "{message}");
    }
}
