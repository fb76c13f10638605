//! `Client::upload_program`: the program file streamed from disk as the raw
//! `application/octet-stream` body (what the provider sends).

mod common;

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use common::TestController;
use measurelab_api::client::{Client, ClientError, ProgramUpload};
use reqwest::Method;
use sha2::Digest;

/// `len` bytes that differ from offset to offset, so a reordered, repeated
/// or dropped chunk changes the digest.
fn program_bytes(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0])
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

#[tokio::test]
async fn a_program_file_arrives_whole_in_the_named_tenant_and_other_content_is_refused() {
    let (dir, controller) = TestController::fresh().await;
    controller.tenant_token("lab-a", "setup", "member").await;
    // Several of reqwest's and hyper's chunks, and not a multiple of them.
    let content = program_bytes(3 * 1024 * 1024 + 17);
    let path = dir.path().join("probe.bin");
    std::fs::write(&path, &content).unwrap();
    let sha256 = sha256_hex(&content);
    let client = controller.client();
    let upload = ProgramUpload {
        name: "probe",
        path: &path,
        sha256: Some(&sha256),
        request_id: Some("upload-1"),
        tenant: Some("lab-a"),
    };

    let program = client.upload_program(&upload).await.unwrap();
    // The controller's digest and size of what it received.
    assert_eq!(program.sha256, sha256);
    assert_eq!(program.size_bytes, content.len() as u64);
    let tenant = controller
        .expect(Method::GET, "/v1/tenants/lab-a", None, 200)
        .await;
    assert_eq!(program.tenant_id, tenant["id"].as_str().unwrap());
    let programs = controller
        .expect(Method::GET, "/v1/programs?tenant=default", None, 200)
        .await;
    assert_eq!(programs["programs"].as_array().unwrap().len(), 0);

    // The same request again is answered from the idempotency record.
    let again = client.upload_program(&upload).await.unwrap();
    assert_eq!(again.id, program.id);

    // The file changed after it was hashed: nothing is stored.
    std::fs::write(&path, b"#!/bin/sh\necho changed\n").unwrap();
    let err = client
        .upload_program(&ProgramUpload {
            name: "changed",
            request_id: Some("upload-2"),
            ..upload
        })
        .await
        .unwrap_err();
    match &err {
        ClientError::Api { field, message, .. } => {
            assert_eq!(field.as_deref(), Some("sha256"), "{err}");
            assert!(message.contains(&sha256), "{message}");
        }
        other => panic!("expected the controller's refusal, got {other}"),
    }
    let err = client.get_program("changed").await.unwrap_err();
    assert!(err.is_not_found(), "{err}");

    // A file that cannot be opened is the client's error, naming the file.
    let missing = dir.path().join("missing.bin");
    let err = client
        .upload_program(&ProgramUpload {
            path: &missing,
            ..upload
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Source(text) if text.contains("missing.bin")),
        "{err}"
    );
    controller.stop().await;
}

/// What the stand-in received: query, content type and body of each POST.
type Received = Arc<Mutex<Vec<(String, String, Bytes)>>>;

/// A controller stand-in whose upload slots are all taken for the first
/// POST: it reads the whole body, then answers 503 with `Retry-After: 1`;
/// the next POST is stored.
async fn busy_once(
    State(received): State<Received>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let sha256 = sha256_hex(&body);
    let size = body.len();
    let attempt = {
        let mut received = received.lock().unwrap();
        received.push((query.unwrap_or_default(), content_type, body));
        received.len()
    };
    if attempt == 1 {
        let error = serde_json::json!({"error": {"code": "unavailable",
            "message": "1 program uploads are being received already (--max-concurrent-uploads); retry after 1 s"}});
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "1")],
            axum::Json(error),
        )
            .into_response();
    }
    let program = serde_json::json!({"id": "prg-1", "name": "probe", "sha256": sha256,
        "size_bytes": size, "tenant_id": "t-1", "created_at": "2026-12-07T00:00:00Z"});
    (StatusCode::CREATED, axum::Json(program)).into_response()
}

#[tokio::test]
async fn an_upload_refused_for_a_full_slot_is_sent_again_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let content = program_bytes(2 * 1024 * 1024 + 5);
    let path = dir.path().join("probe.bin");
    std::fs::write(&path, &content).unwrap();
    let received = Received::default();
    let app = axum::Router::new()
        .route("/v1/programs", axum::routing::post(busy_once))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = Client::new(&endpoint, "token", None).unwrap();
    let sha256 = sha256_hex(&content);

    let program = client
        .upload_program(&ProgramUpload {
            name: "probe",
            path: &path,
            sha256: Some(&sha256),
            request_id: Some("r 1"),
            tenant: Some("lab-a"),
        })
        .await
        .unwrap();
    assert_eq!(program.sha256, sha256);

    let received = received.lock().unwrap();
    assert_eq!(received.len(), 2, "one refusal, one upload");
    for (query, content_type, body) in received.iter() {
        assert_eq!(
            query,
            &format!("name=probe&sha256={sha256}&request_id=r+1&tenant=lab-a")
        );
        assert_eq!(content_type, "application/octet-stream");
        assert_eq!(body.len(), content.len());
        assert!(
            body[..] == content[..],
            "the body is not the file's content"
        );
    }
    server.abort();
}
