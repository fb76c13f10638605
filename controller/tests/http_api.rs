//! Public HTTP API: auth, malformed requests and label patches. Every
//! rejected request is followed by a GET proving nothing changed.

mod common;

use std::time::Duration;

use common::TestController;
use measurelab_api::http::{ErrorBody, EventList, Node};
use reqwest::{Method, StatusCode};

async fn setup() -> (tempfile::TempDir, TestController) {
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start(dir.path(), Duration::from_secs(60)).await;
    controller.register("node-h", "").await;
    (dir, controller)
}

async fn patch_raw(
    controller: &TestController,
    token: Option<&str>,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, ErrorBody) {
    let mut request = reqwest::Client::new()
        .patch(controller.url("/v1/nodes/node-h"))
        .header("content-type", content_type)
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let body =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not an error JSON ({e}): {text}"));
    (status, body)
}

/// (description, token, content type, body, status, code, field, message fragment)
type Case<'a> = (
    &'a str,
    Option<&'a str>,
    &'a str,
    String,
    u16,
    &'a str,
    Option<&'a str>,
    &'a str,
);

#[tokio::test]
async fn malformed_requests_name_field_and_reason_and_change_nothing() {
    let (_dir, controller) = setup().await;
    let before: Node = controller.node("node-h").await;
    let events_before = controller.events().await.events.len();
    let token = controller.admin_token.clone();
    let json = "application/json";

    // (description, token, content type, body, status, code, field, message fragment)
    let cases: Vec<Case<'_>> = vec![
        (
            "malformed JSON",
            Some(&token),
            json,
            r#"{"labels": {"a": "b""#.into(),
            400,
            "malformed_json",
            Some("labels"),
            "not valid JSON",
        ),
        (
            "wrong type",
            Some(&token),
            json,
            r#"{"labels": {"rack": 7}}"#.into(),
            422,
            "invalid_field",
            Some("labels.rack"),
            "invalid type",
        ),
        (
            "labels not a map",
            Some(&token),
            json,
            r#"{"labels": ["a"]}"#.into(),
            422,
            "invalid_field",
            Some("labels"),
            "invalid type",
        ),
        (
            "missing field",
            Some(&token),
            json,
            r#"{}"#.into(),
            422,
            "invalid_field",
            Some("labels"),
            "missing field `labels`",
        ),
        (
            "invalid label key",
            Some(&token),
            json,
            r#"{"labels": {"bad key": "v"}}"#.into(),
            422,
            "invalid_field",
            Some("labels.bad key"),
            "label key contains ' '",
        ),
        (
            "trailing data",
            Some(&token),
            json,
            r#"{"labels": {}} {}"#.into(),
            400,
            "malformed_json",
            None,
            "after the JSON value",
        ),
        (
            "wrong content type",
            Some(&token),
            "text/plain",
            r#"{"labels": {}}"#.into(),
            415,
            "unsupported_media_type",
            None,
            "Content-Type",
        ),
        (
            "missing token",
            None,
            json,
            r#"{"labels": {}}"#.into(),
            401,
            "unauthorized",
            Some("Authorization"),
            "missing",
        ),
        (
            "wrong token",
            Some("nope"),
            json,
            r#"{"labels": {}}"#.into(),
            401,
            "unauthorized",
            Some("Authorization"),
            "wrong admin token",
        ),
        (
            "oversized body",
            Some(&token),
            json,
            format!(r#"{{"labels": {{"k": "{}"}}}}"#, "x".repeat(2 << 20)),
            413,
            "payload_too_large",
            None,
            "larger than 1048576 bytes",
        ),
    ];
    for (what, token, content_type, body, status, code, field, fragment) in cases {
        let (got_status, got) = patch_raw(&controller, token, content_type, body).await;
        assert_eq!(got_status.as_u16(), status, "{what}: {got:?}");
        assert_eq!(got.error.code, code, "{what}: {got:?}");
        assert_eq!(got.error.field.as_deref(), field, "{what}: {got:?}");
        assert!(got.error.message.contains(fragment), "{what}: {got:?}");
        if let Some(field) = field {
            assert!(
                got.error.message.contains(field) || code == "unauthorized",
                "{what}: message names the field: {got:?}"
            );
        }
    }
    let after: Node = controller.node("node-h").await;
    assert_eq!(after, before, "no rejected request changed the node");
    assert_eq!(
        controller.events().await.events.len(),
        events_before,
        "no event recorded"
    );
    controller.stop().await;
}

/// Kubernetes-style `fieldValidation`: an unknown body field is refused
/// under `Strict` (nothing applied), applied with a `Warning` naming it
/// under `Warn` (the default, so a newer client works against this
/// controller), and applied silently under `Ignore`.
#[tokio::test]
async fn unknown_body_fields_follow_field_validation() {
    let (_dir, controller) = setup().await;
    let before: Node = controller.node("node-h").await;
    let send = |query: &'static str, rack: &'static str| {
        let request = reqwest::Client::new()
            .patch(controller.url(&format!("/v1/nodes/node-h{query}")))
            .bearer_auth(&controller.admin_token)
            .json(&serde_json::json!({
                "labels": {"rack": rack},
                "colour": "red",
                "extra": {"nested": 1},
            }));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let warnings: Vec<String> = response
                .headers()
                .get_all("warning")
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect();
            (status, warnings, response.text().await.unwrap())
        }
    };

    let (status, warnings, text) = send("?fieldValidation=Strict", "r1").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
    let refused: ErrorBody = serde_json::from_str(&text).unwrap();
    assert_eq!(refused.error.field.as_deref(), Some("colour"), "{text}");
    assert!(refused.error.message.contains("unknown field"), "{text}");
    assert!(refused.error.message.contains("1 more"), "{text}");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        controller.node("node-h").await,
        before,
        "Strict applied nothing"
    );

    let (status, warnings, text) = send("", "r2").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(
        warnings,
        [
            r#"299 - "unknown field \"colour\" was ignored""#,
            r#"299 - "unknown field \"extra\" was ignored""#,
        ]
    );
    assert_eq!(controller.node("node-h").await.labels["rack"], "r2");

    let (status, warnings, text) = send("?fieldValidation=Ignore", "r3").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(controller.node("node-h").await.labels["rack"], "r3");

    let (status, _, text) = send("?fieldValidation=Loose", "r4").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
    assert!(text.contains("fieldValidation"), "{text}");
    assert_eq!(controller.node("node-h").await.labels["rack"], "r3");
    controller.stop().await;
}

#[tokio::test]
async fn oversized_chunked_body_is_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_dir, controller) = setup().await;
    // A chunked body has no Content-Length, so the limit must be enforced
    // while reading. reqwest cannot stream without an extra feature, so
    // speak HTTP/1.1 by hand.
    let mut stream = tokio::net::TcpStream::connect(controller.http)
        .await
        .unwrap();
    let head = format!(
        "PATCH /v1/nodes/node-h HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        controller.admin_token
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..32 {
        let header = format!("{:x}\r\n", chunk.len());
        // The server may answer and close before reading everything.
        if stream.write_all(header.as_bytes()).await.is_err()
            || stream.write_all(&chunk).await.is_err()
            || stream.write_all(b"\r\n").await.is_err()
        {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("\"payload_too_large\""), "{response}");
    assert_eq!(controller.node("node-h").await.labels.len(), 1);
    controller.stop().await;
}

#[tokio::test]
async fn get_routes_require_the_admin_token() {
    let (_dir, controller) = setup().await;
    let client = reqwest::Client::new();
    for path in [
        "/v1/nodes",
        "/v1/nodes/node-h",
        "/v1/nodes/node-h/logs",
        "/v1/events",
        "/v1/openapi.json",
    ] {
        let response = client.get(controller.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
        let body: ErrorBody = response.json().await.unwrap();
        assert_eq!(body.error.code, "unauthorized");
        let response = client
            .get(controller.url(path))
            .header("authorization", "Basic abc")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    // Health check and the admin page load without a token.
    let health = client.get(controller.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let page = client.get(controller.url("/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().await.unwrap().contains("/v1/nodes"));
    controller.stop().await;
}

#[tokio::test]
async fn unknown_node_and_bad_query_are_json_errors() {
    let (_dir, controller) = setup().await;
    let client = reqwest::Client::new();
    let get = |path: &str| {
        client
            .get(controller.url(path))
            .bearer_auth(&controller.admin_token)
            .send()
    };
    let response = get("/v1/nodes/ghost").await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: ErrorBody = response.json().await.unwrap();
    assert_eq!(body.error.code, "not_found");
    assert!(body.error.message.contains("ghost"));

    let response = get("/v1/nodes/ghost/logs").await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    for (path, field) in [
        ("/v1/nodes/node-h/logs?limit=abc", "limit"),
        ("/v1/nodes/node-h/logs?limit=0", "limit"),
        ("/v1/events?after=-1", "after"),
        ("/v1/events?limt=5", "limt"),
        ("/v1/events?before=0", "before"),
        ("/v1/events?after=1&before=9", "before"),
    ] {
        let response = get(path).await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path}"
        );
        let body: ErrorBody = response.json().await.unwrap();
        assert_eq!(body.error.field.as_deref(), Some(field), "{path}: {body:?}");
    }

    let response = get("/v1/nothing-here").await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: ErrorBody = response.json().await.unwrap();
    assert_eq!(body.error.code, "not_found");

    let response = client
        .put(controller.url("/v1/nodes/node-h"))
        .bearer_auth(&controller.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body: ErrorBody = response.json().await.unwrap();
    assert_eq!(body.error.code, "method_not_allowed");
    assert_eq!(controller.nodes().await.len(), 1, "PUT did nothing");
    controller.stop().await;
}

/// The admin page's "older events": `?before=` pages read back from the newest
/// event, each oldest first, and together they are the whole journal.
#[tokio::test]
async fn events_page_backwards_from_the_newest() {
    let (_dir, controller) = TestController::fresh().await;
    for k in 0..5 {
        controller.register(&format!("n{k}"), "").await;
    }
    let all = controller
        .expect(Method::GET, "/v1/events?limit=1000", None, 200)
        .await;
    let all: EventList = serde_json::from_value(all).unwrap();
    let ids: Vec<i64> = all.events.iter().map(|event| event.id).collect();
    assert!(
        ids.len() >= 5,
        "one event per registration at least: {ids:?}"
    );

    let mut read_back = Vec::new();
    let mut path = "/v1/events?limit=2&before=9223372036854775807".to_string();
    loop {
        let (status, page) = controller.call(Method::GET, &path, None).await;
        assert_eq!(status, 200, "{path}: {page}");
        let page: EventList = serde_json::from_value(page).unwrap();
        assert_eq!(
            page.next_cursor, None,
            "a before-page does not continue forwards"
        );
        let page_ids: Vec<i64> = page.events.iter().map(|event| event.id).collect();
        assert!(
            page_ids.windows(2).all(|w| w[0] < w[1]),
            "oldest first: {page_ids:?}"
        );
        read_back.splice(0..0, page_ids);
        match page.older_cursor {
            Some(cursor) => path = format!("/v1/events?limit=2&before={cursor}"),
            None => break,
        }
    }
    assert_eq!(read_back, ids);
    controller.stop().await;
}

#[tokio::test]
async fn patch_replaces_labels_and_records_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start(dir.path(), Duration::from_secs(60)).await;
    let registered = controller.register("node-h", "").await;
    let client = measurelab_api::client::Client::new(
        &format!("http://{}", controller.http),
        &controller.admin_token,
        None,
    )
    .unwrap();
    let labels = [("site".to_string(), "lab-2".to_string())].into();
    let node = client.set_node_labels("node-h", labels).await.unwrap();
    assert_eq!(
        node.labels.len(),
        1,
        "rack=r1 from registration was replaced"
    );
    assert_eq!(node.labels["site"], "lab-2");
    assert_eq!(controller.node("node-h").await.labels, node.labels);
    let events = client.events(0).await.unwrap().events;
    assert_eq!(events.last().unwrap().reason, "NodeLabelsChanged");

    // A re-registration leaves the operator's labels alone: the agent's
    // rack=r1 shows only as a reported label.
    let mut again = common::register_request(&controller.join_token, "node-h", "");
    again.node_secret = registered.node_secret.clone();
    controller.grpc().await.register(again).await.unwrap();
    let node = controller.node("node-h").await;
    assert_eq!(
        node.labels,
        [("site".to_string(), "lab-2".to_string())].into()
    );
    assert_eq!(node.reported_labels["rack"], "r1");

    let err = client.get_node("ghost").await.unwrap_err();
    assert!(err.is_not_found());
    controller.stop().await;
}
