//! What a controller checks before it serves: sole ownership of its data
//! directory. And what every answer carries for browsers.

mod common;

use std::time::Duration;

use common::TestController;
use measurelab_controller::{run, ControllerConfig, ControllerError, DataDirLockError};

#[tokio::test]
async fn a_second_controller_on_the_same_data_dir_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let first = TestController::start(dir.path(), Duration::from_secs(60)).await;

    let config = ControllerConfig::new(
        dir.path(),
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
    );
    let outcome =
        tokio::time::timeout(Duration::from_secs(10), run(config, std::future::pending()))
            .await
            .expect("the second controller must fail at once, not serve");
    match outcome {
        Err(ControllerError::DataDirLock(DataDirLockError::InUse { holder, .. })) => {
            assert_eq!(holder, format!("pid {}", std::process::id()));
        }
        other => panic!("expected DataDirLock(InUse), got {other:?}"),
    }
    // The first one was not disturbed.
    let (status, _) = first.call(reqwest::Method::GET, "/v1/nodes", None).await;
    assert_eq!(status, 200);

    // Once the first stops, the directory is free again.
    first.stop().await;
    let again = TestController::start(dir.path(), Duration::from_secs(60)).await;
    let (status, _) = again.call(reqwest::Method::GET, "/v1/nodes", None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn answers_carry_browser_hardening_headers() {
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start(dir.path(), Duration::from_secs(60)).await;
    let client = reqwest::Client::new();

    let page = client
        .get(format!("http://{}/", controller.http))
        .send()
        .await
        .unwrap();
    let header = |response: &reqwest::Response, name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(header(&page, "x-frame-options"), "DENY");
    assert_eq!(header(&page, "x-content-type-options"), "nosniff");
    let policy = header(&page, "content-security-policy");
    assert!(policy.contains("script-src 'sha256-"), "{policy}");
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    // The hash in the policy is the hash of the script the page really has.
    let body = page.text().await.unwrap();
    let script = body
        .split("<script>")
        .nth(1)
        .and_then(|rest| rest.split("</script>").next())
        .expect("the page has an inline script");
    use base64::Engine;
    use sha2::Digest;
    let digest = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(script));
    assert!(policy.contains(&format!("'sha256-{digest}'")), "{policy}");

    // API answers, refused ones included, get the strict default.
    let refused = client
        .get(format!("http://{}/v1/nodes", controller.http))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(header(&refused, "x-content-type-options"), "nosniff");
    assert_eq!(
        header(&refused, "content-security-policy"),
        "default-src 'none'; frame-ancestors 'none'"
    );
}
