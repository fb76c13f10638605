//! The version-skew policy at the HTTP API: a provider or CLI outside the
//! versions this controller serves gets a `Warning: 299` naming both
//! versions, and its request is served all the same. Refusing would buy
//! nothing: field validation already fails a newer client's unknown field
//! where it matters, and an older client's requests are ones this
//! controller still answers.
//!
//! Only the project's own clients are judged, by their `User-Agent`
//! `measurelab-<component>/<version>`; curl and browsers get nothing.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

use super::state::AppState;
use crate::version_policy::{judge, Skew, Version};

/// Product-token prefix of the project's clients' `User-Agent`.
const PRODUCT_PREFIX: &str = "measurelab-";
/// Longest component name taken from a `User-Agent`.
const MAX_COMPONENT_CHARS: usize = 32;

/// Middleware: attach the skew warning, if any, to the answer.
pub(crate) async fn warn_skewed(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let warning = request
        .headers()
        .get(header::USER_AGENT)
        .and_then(|value| value.to_str().ok())
        .and_then(|agent| warning(state.controller_version(), agent));
    let mut response = next.run(request).await;
    if let Some(warning) = warning {
        response.headers_mut().append(header::WARNING, warning);
    }
    response
}

/// The `Warning` value for a client that sent `user_agent`, or `None` when
/// it is not one of the project's clients or is a version the policy serves.
fn warning(controller: Version, user_agent: &str) -> Option<HeaderValue> {
    let product = user_agent.split_ascii_whitespace().next()?;
    let (name, version) = product.strip_prefix(PRODUCT_PREFIX)?.split_once('/')?;
    let component_ok = !name.is_empty()
        && name.len() <= MAX_COMPONENT_CHARS
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !component_ok {
        return None;
    }
    let client = format!("{PRODUCT_PREFIX}{name}");
    let text = match judge(controller, version) {
        Skew::Older { client: v, oldest } => format!(
            "{client} {v} is older than this controller (measurelab {controller}) serves: it \
             serves clients of {oldest} and later; upgrade {client} to {oldest} or later \
             (docs/version-skew.md)"
        ),
        Skew::Newer(v) => format!(
            "{client} {v} is newer than this controller (measurelab {controller}); a client \
             newer than its controller is not supported: upgrade the controllers first \
             (docs/version-skew.md)"
        ),
        Skew::Supported(_) | Skew::Unknown => return None,
    };
    HeaderValue::from_str(&format!("299 - \"{text}\"")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warned(controller: &str, user_agent: &str) -> Option<String> {
        warning(controller.parse().unwrap(), user_agent)
            .map(|value| value.to_str().unwrap().to_string())
    }

    #[test]
    fn only_the_projects_clients_outside_the_policy_are_warned() {
        assert_eq!(
            warned("0.5.0", "measurelab-provider/0.3.9").as_deref(),
            Some(
                "299 - \"measurelab-provider 0.3.9 is older than this controller \
                 (measurelab 0.5.0) serves: it serves clients of 0.4 and later; upgrade \
                 measurelab-provider to 0.4 or later (docs/version-skew.md)\""
            )
        );
        assert_eq!(
            warned("0.5.0", "measurelab-cli/0.6.1 (linux)").as_deref(),
            Some(
                "299 - \"measurelab-cli 0.6.1 is newer than this controller (measurelab 0.5.0); \
                 a client newer than its controller is not supported: upgrade the controllers \
                 first (docs/version-skew.md)\""
            )
        );
        for served in [
            "measurelab-provider/0.4.0",
            "measurelab-cli/0.5.2",
            "measurelab-provider/dev",
            "curl/7.88.1",
            "Mozilla/5.0 (X11; Linux x86_64)",
            "measurelab-\"x\"/0.1.0",
            "measurelab-/0.1.0",
            "",
        ] {
            assert_eq!(warned("0.5.0", served), None, "{served}");
        }
    }
}
