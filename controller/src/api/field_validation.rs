//! Server-side field validation, after Kubernetes' `fieldValidation`.
//!
//! A body field this controller does not know is, by default, ignored with
//! a `Warning: 299` header naming it (`Warn`), so a newer client that sends
//! an optional field an older controller lacks still works during a rolling
//! upgrade. `?fieldValidation=Strict` turns the same field into a 422 naming
//! it; that is what the project's own client asks for, because it only sends
//! optional fields a user set, and a setting the controller would silently
//! drop must fail instead. `Ignore` drops unknown fields without a word.
//!
//! The mode and the warnings travel in a task-local rather than through
//! every handler's signature: the middleware sets them around the handler,
//! and [`super::extract::decode_json`] reads them.

use std::cell::RefCell;

use axum::extract::Request;
use axum::http::{HeaderValue, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// Query parameter that picks the mode; removed before the handler runs, so
/// routes that refuse unknown query parameters never see it.
pub(crate) const PARAMETER: &str = "fieldValidation";

/// At most this many `Warning` headers per answer; a hostile body can hold
/// thousands of unknown keys.
const MAX_WARNINGS: usize = 16;
/// Longest field path quoted in a warning, in characters.
const MAX_PATH_CHARS: usize = 200;

/// What to do with a body field the controller does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Refuse the request with a 422 naming the field.
    Strict,
    /// Apply the request and name the field in a `Warning` header.
    Warn,
    /// Apply the request and say nothing.
    Ignore,
}

impl Mode {
    fn parse(text: &str) -> Result<Self, ApiError> {
        match text.to_ascii_lowercase().as_str() {
            "strict" => Ok(Mode::Strict),
            "warn" => Ok(Mode::Warn),
            "ignore" => Ok(Mode::Ignore),
            _ => Err(ApiError::InvalidField {
                field: PARAMETER.into(),
                reason: format!("{text:?} is not one of Strict, Warn, Ignore"),
            }),
        }
    }
}

struct Scope {
    mode: Mode,
    warnings: RefCell<Vec<String>>,
}

tokio::task_local! {
    static SCOPE: Scope;
}

/// What the decoder does with the unknown field paths it found. Outside a
/// request (unit tests, internal callers) the answer is `Strict`: nothing
/// may be dropped silently where no one could be warned.
pub(crate) fn handle_unknown(paths: Vec<String>) -> Result<(), ApiError> {
    if paths.is_empty() {
        return Ok(());
    }
    let mode = SCOPE
        .try_with(|scope| {
            if scope.mode == Mode::Warn {
                scope.warnings.borrow_mut().extend(paths.iter().cloned());
            }
            scope.mode
        })
        .unwrap_or(Mode::Strict);
    match mode {
        Mode::Ignore | Mode::Warn => Ok(()),
        Mode::Strict => {
            let others = match paths.len() {
                1 => String::new(),
                n => format!(" (and {} more unknown field(s))", n - 1),
            };
            Err(ApiError::InvalidField {
                field: paths[0].clone(),
                reason: format!(
                    "unknown field{others}; this controller (measurelab {}) does not know it \
                     and {PARAMETER}=Strict was asked for",
                    env!("CARGO_PKG_VERSION")
                ),
            })
        }
    }
}

/// Middleware: take the mode from the query (default `Warn`), run the
/// handler inside it, then attach one `Warning` per unknown field.
pub(crate) async fn scope(mut request: Request, next: Next) -> Response {
    let (mode, rest) = match split_parameter(request.uri()) {
        Ok(split) => split,
        Err(error) => return error.into_response(),
    };
    if let Some(rest) = rest {
        *request.uri_mut() = rest;
    }
    let scope = Scope {
        mode: mode.unwrap_or(Mode::Warn),
        warnings: RefCell::new(Vec::new()),
    };
    let (mut response, unknown) = SCOPE
        .scope(scope, async {
            let response = next.run(request).await;
            let warnings = SCOPE.with(|scope| scope.warnings.take());
            (response, warnings)
        })
        .await;
    let headers = response.headers_mut();
    for value in warning_values(&unknown) {
        headers.append(axum::http::header::WARNING, value);
    }
    response
}

/// The mode named in `uri`'s query, and the URI without it (`None` when the
/// parameter was absent, so the URI is left as it came).
fn split_parameter(uri: &Uri) -> Result<(Option<Mode>, Option<Uri>), ApiError> {
    let Some(query) = uri.query() else {
        return Ok((None, None));
    };
    let mut mode = None;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some((PARAMETER, value)) => {
                if mode.is_some() {
                    return Err(ApiError::InvalidField {
                        field: PARAMETER.into(),
                        reason: "given more than once".into(),
                    });
                }
                mode = Some(Mode::parse(value)?);
            }
            None if pair == PARAMETER => {
                return Err(ApiError::InvalidField {
                    field: PARAMETER.into(),
                    reason: "needs a value: Strict, Warn or Ignore".into(),
                })
            }
            _ => kept.push(pair),
        }
    }
    if mode.is_none() {
        return Ok((None, None));
    }
    let path_and_query = match kept.is_empty() {
        true => uri.path().to_string(),
        false => format!("{}?{}", uri.path(), kept.join("&")),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().map_err(|_| ApiError::InvalidField {
        field: "(query)".into(),
        reason: "not a valid query string".into(),
    })?);
    let rest = Uri::from_parts(parts).map_err(|_| ApiError::InvalidField {
        field: "(query)".into(),
        reason: "not a valid query string".into(),
    })?;
    Ok((mode, Some(rest)))
}

/// RFC 7234 `Warning` values (code 299, "miscellaneous persistent warning",
/// as Kubernetes uses), with the field path reduced to printable ASCII so a
/// hostile key cannot break the header.
fn warning_values(paths: &[String]) -> Vec<HeaderValue> {
    let mut values: Vec<HeaderValue> = paths
        .iter()
        .take(MAX_WARNINGS)
        .filter_map(|path| {
            let printable: String = path
                .chars()
                .take(MAX_PATH_CHARS)
                .map(|c| match c {
                    '"' | '\\' => '_',
                    c if c.is_ascii_graphic() || c == ' ' => c,
                    _ => '?',
                })
                .collect();
            HeaderValue::from_str(&format!(
                "299 - \"unknown field \\\"{printable}\\\" was ignored\""
            ))
            .ok()
        })
        .collect();
    if paths.len() > MAX_WARNINGS {
        values.push(
            HeaderValue::from_str(&format!(
                "299 - \"{} more unknown field(s) were ignored\"",
                paths.len() - MAX_WARNINGS
            ))
            .unwrap_or(HeaderValue::from_static(
                "299 - \"more unknown fields were ignored\"",
            )),
        );
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(uri: &str) -> Result<(Option<Mode>, Option<String>), String> {
        split_parameter(&uri.parse().unwrap())
            .map(|(mode, rest)| (mode, rest.map(|u| u.to_string())))
            .map_err(|e| format!("{e:?}"))
    }

    #[test]
    fn the_parameter_is_taken_out_of_the_query() {
        assert_eq!(split("/v1/vms").unwrap(), (None, None));
        assert_eq!(split("/v1/results?task=a").unwrap(), (None, None));
        assert_eq!(
            split("/v1/vms?fieldValidation=Strict").unwrap(),
            (Some(Mode::Strict), Some("/v1/vms".into()))
        );
        assert_eq!(
            split("/v1/results?task=a&fieldValidation=ignore&request_id=b").unwrap(),
            (
                Some(Mode::Ignore),
                Some("/v1/results?task=a&request_id=b".into())
            )
        );
    }

    #[test]
    fn a_bad_mode_is_refused_by_name() {
        for uri in [
            "/v1/vms?fieldValidation=Loose",
            "/v1/vms?fieldValidation",
            "/v1/vms?fieldValidation=Warn&fieldValidation=Strict",
        ] {
            let error = split(uri).unwrap_err();
            assert!(error.contains("fieldValidation"), "{uri}: {error}");
        }
    }

    #[test]
    fn warnings_are_bounded_and_printable() {
        let paths: Vec<String> = (0..40).map(|i| format!("k\"{i}\u{7}é")).collect();
        let values = warning_values(&paths);
        assert_eq!(values.len(), MAX_WARNINGS + 1);
        assert_eq!(
            values[0].to_str().unwrap(),
            "299 - \"unknown field \\\"k_0??\\\" was ignored\""
        );
        assert!(values[MAX_WARNINGS]
            .to_str()
            .unwrap()
            .contains("24 more unknown field(s)"));
    }
}
