//! `ApiError`: the one place where HTTP errors become responses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use measurelab_api::http::{ErrorBody, ErrorDetail};

use crate::store::StoreError;
use crate::validation::FieldError;

/// Every error the public API returns, as `{"error":{"code","message","field"}}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No or wrong bearer token.
    #[error("{0}")]
    Unauthorized(String),
    /// The body is not JSON at all (syntax error, truncated).
    #[error("{message}")]
    MalformedJson {
        /// Path of the value being parsed when the syntax broke, if known.
        field: Option<String>,
        /// Parser message with line and column.
        message: String,
    },
    /// The JSON is well-formed but a field is unknown, missing, of the wrong
    /// type or has an invalid value.
    #[error("{field}: {reason}")]
    InvalidField {
        /// JSON path (or query parameter) of the field.
        field: String,
        /// Why it is rejected.
        reason: String,
    },
    /// The body has the wrong content type.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The body exceeds the limit.
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// Limit in bytes.
        limit: usize,
    },
    /// The addressed object does not exist.
    #[error("{kind} {id:?} not found")]
    NotFound {
        /// Kind of object, e.g. `node`.
        kind: &'static str,
        /// Id or name that was asked for.
        id: String,
    },
    /// No route has this path.
    #[error("no route for {0}")]
    NoRoute(String),
    /// The route exists but not with this method.
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
    },
    /// The request conflicts with the current state (name taken, object in
    /// use, request_id reused for another call).
    #[error("{message}")]
    Conflict {
        /// Field to blame, if one is.
        field: Option<String>,
        /// What conflicts.
        message: String,
    },
    /// The caller's role may not do this (the object, if any, is visible).
    #[error("{0}")]
    Forbidden(String),
    /// A VLAN or subnet pool has no free entry.
    #[error("{0}")]
    PoolExhausted(String),
    /// The request would take its tenant past a quota. 422 like any refused
    /// value, with the field, so Terraform points at the attribute; the
    /// code tells it apart from a malformed value.
    #[error("{message}")]
    QuotaExceeded {
        /// Request field whose value passes the quota, if one does.
        field: Option<String>,
        /// Quota, tenant, use, request and limit.
        message: String,
    },
    /// The store failed; nothing was changed.
    #[error("{0}")]
    Unavailable(String),
    /// A bounded resource (concurrent program uploads) is in use up to its
    /// limit; nothing was done. 503 like `Unavailable`, with `Retry-After`:
    /// it frees itself as the requests holding it end.
    #[error("{message}")]
    Busy {
        /// The limit and what holds it.
        message: String,
        /// Whole seconds after which a retry may find room.
        retry_after_seconds: u64,
    },
    /// A rate limit's bucket is empty; nothing was done.
    #[error("rate limit {limit} ({per_second}/s, burst {burst}) exceeded; retry after {retry_after_seconds} s")]
    RateLimited {
        /// `per_token` or `per_source`.
        limit: &'static str,
        /// The limit's sustained rate.
        per_second: u32,
        /// The limit's burst.
        burst: u32,
        /// Whole seconds until the bucket admits a request again.
        retry_after_seconds: u64,
    },
}

impl ApiError {
    fn status_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::MalformedJson { .. } => (StatusCode::BAD_REQUEST, "malformed_json"),
            ApiError::InvalidField { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            ApiError::NotFound { .. } | ApiError::NoRoute(_) => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            ApiError::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            ApiError::Unavailable(_) | ApiError::Busy { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            ApiError::Conflict { .. } => (StatusCode::CONFLICT, "conflict"),
            ApiError::PoolExhausted(_) => (StatusCode::CONFLICT, "pool_exhausted"),
            ApiError::QuotaExceeded { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "quota_exceeded"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        }
    }

    fn field(&self) -> Option<String> {
        match self {
            ApiError::InvalidField { field, .. } => Some(field.clone()),
            ApiError::MalformedJson { field, .. } => field.clone(),
            ApiError::Unauthorized(_) => Some("Authorization".into()),
            ApiError::Conflict { field, .. } => field.clone(),
            ApiError::QuotaExceeded { field, .. } => field.clone(),
            _ => None,
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::InvalidField {
            field: e.field,
            reason: e.reason,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownNode(id) => ApiError::NotFound { kind: "node", id },
            StoreError::Invalid { field, reason } => ApiError::InvalidField { field, reason },
            StoreError::NotFound { kind, id } => ApiError::NotFound { kind, id },
            StoreError::Conflict { field, message } => ApiError::Conflict { field, message },
            StoreError::PoolExhausted(message) => ApiError::PoolExhausted(message),
            StoreError::QuotaExceeded { field, message } => {
                ApiError::QuotaExceeded { field, message }
            }
            StoreError::Forbidden(message) => ApiError::Forbidden(message),
            other => ApiError::Unavailable(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_code();
        let retry_after = match &self {
            ApiError::RateLimited {
                retry_after_seconds,
                ..
            }
            | ApiError::Busy {
                retry_after_seconds,
                ..
            } => Some(*retry_after_seconds),
            _ => None,
        };
        // A full upload slot is the limit working, not a failure to log.
        if status.is_server_error() && !matches!(self, ApiError::Busy { .. }) {
            tracing::error!(error = %self, "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_string(),
                message: self.to_string(),
                field: self.field(),
            },
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"measurelab\""),
            );
        }
        response
    }
}
