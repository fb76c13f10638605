//! Browser-facing hardening headers.
//!
//! The admin page holds an API token in the browser and draws text that
//! tenants wrote (names, descriptions, event messages). If any of it ever
//! reached the page as markup, a Content-Security-Policy that allows only
//! the page's own inline script (by hash) keeps an injected script from
//! running; `frame-ancestors`/`X-Frame-Options` stop the page being framed
//! for clickjacking; `nosniff` stops a browser reading a JSON or CSV answer
//! as HTML.

use axum::http::{header, HeaderValue};
use axum::response::Response;
use base64::Engine;
use sha2::{Digest, Sha256};

/// For API answers: nothing in them may load or run anything.
const API_POLICY: &str = "default-src 'none'; frame-ancestors 'none'";

/// Adds the headers every answer carries; keeps a policy a handler set.
pub(crate) async fn add(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(API_POLICY));
    response
}

/// A page's policy: its inline `<script>` and `<style>` blocks by SHA-256,
/// API calls to this origin only, nothing else.
pub(crate) fn inline_page_policy(page: &str) -> String {
    let sources = |tag: &str| -> String {
        inline_blocks(page, tag)
            .map(|body| {
                let digest = Sha256::digest(body.as_bytes());
                format!(
                    " 'sha256-{}'",
                    base64::engine::general_purpose::STANDARD.encode(digest)
                )
            })
            .collect()
    };
    format!(
        "default-src 'none'; script-src{}; style-src{}; connect-src 'self'; img-src 'self' data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        sources("script"),
        sources("style"),
    )
}

/// Bodies of `<tag>…</tag>` blocks, exactly as a browser hashes them (the
/// text between the tags). The page's blocks carry no attributes.
fn inline_blocks<'a>(page: &'a str, tag: &str) -> impl Iterator<Item = &'a str> + 'a {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut rest = page;
    std::iter::from_fn(move || {
        let start = rest.find(&open)? + open.len();
        let end = start + rest[start..].find(&close)?;
        let body = &rest[start..end];
        rest = &rest[end + close.len()..];
        Some(body)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_lists_each_inline_block_by_its_own_hash() {
        let page = "<style>a{}</style><p>x</p><script>let a = 1;</script><script>go()</script>";
        let policy = inline_page_policy(page);
        let hash = |s: &str| {
            base64::engine::general_purpose::STANDARD.encode(Sha256::digest(s.as_bytes()))
        };
        assert!(
            policy.contains(&format!(
                "script-src 'sha256-{}' 'sha256-{}';",
                hash("let a = 1;"),
                hash("go()")
            )),
            "{policy}"
        );
        assert!(
            policy.contains(&format!("style-src 'sha256-{}';", hash("a{}"))),
            "{policy}"
        );
        assert!(!policy.contains("unsafe-inline"), "{policy}");
    }
}
