//! `GET /`: the admin page, with a Content-Security-Policy made from its own
//! inline blocks.

use std::sync::LazyLock;

use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse};

use super::security_headers::inline_page_policy;

const PAGE: &str = include_str!("../ui/index.html");

/// Computed from the page as built, so editing the page cannot leave a stale
/// hash behind.
static POLICY: LazyLock<Option<HeaderValue>> =
    LazyLock::new(|| HeaderValue::from_str(&inline_page_policy(PAGE)).ok());

pub(crate) async fn serve() -> impl IntoResponse {
    // A policy that does not encode (it is base64 and ASCII, so it does)
    // would fall back to the API's stricter default added for every answer.
    let policy = POLICY
        .clone()
        .map(|value| [(header::CONTENT_SECURITY_POLICY, value)]);
    (policy, Html(PAGE))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy allows inline code by hash only: markup that runs code
    /// any other way would be blocked in the browser, so the page must not
    /// have any.
    #[test]
    fn the_admin_page_runs_no_code_the_policy_would_block() {
        let lower = PAGE.to_ascii_lowercase();
        assert_eq!(lower.matches("<script").count(), 1, "one inline script");
        assert_eq!(
            lower.matches("<script>").count(),
            1,
            "no script src/attributes"
        );
        let handler = find_event_handler(&lower);
        assert!(handler.is_none(), "inline event handler: {handler:?}");
        assert!(!lower.contains("javascript:"), "javascript: URL");
        assert!(
            !lower.contains(" style=\""),
            "style attribute (blocked by style-src)"
        );
        assert!(POLICY.is_some());
    }

    /// An ` on…=` attribute inside a tag, e.g. `<button onclick=...>`.
    fn find_event_handler(html: &str) -> Option<&str> {
        html.match_indices(" on").find_map(|(at, _)| {
            let name_len = html[at + 3..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase())
                .count();
            let after = &html[at + 3 + name_len..];
            let inside_tag = html[..at].rfind('<') > html[..at].rfind('>');
            (name_len > 0 && after.starts_with('=') && inside_tag)
                .then(|| &html[at..at + 3 + name_len])
        })
    }
}
