//! `GET /metrics`: Prometheus scrapes it with a `metrics` token (or the
//! operator's): its series name tenants and tasks, which no tenant's token
//! may see.

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};

use super::auth::ensure_operator;
use super::error::ApiError;
use super::state::AppState;
use crate::access::{Principal, Role};
use crate::metrics::ScrapeError;
use measurelab_api::exposition::Format;

pub(crate) async fn serve(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if principal.role != Role::Metrics {
        ensure_operator(&principal, "reading", "metrics", "")?;
    }
    let text = state
        .metrics()
        .scrape(state.store())
        .await
        .map_err(|error| match error {
            ScrapeError::Store(e) => ApiError::from(e),
            ScrapeError::Encode(e) => ApiError::Unavailable(format!("encoding metrics: {e}")),
        })?;
    let format = Format::from_accept(
        headers
            .get(header::ACCEPT)
            .and_then(|value| value.to_str().ok()),
    );
    Ok((
        [(header::CONTENT_TYPE, format.content_type())],
        format.render(text),
    )
        .into_response())
}
