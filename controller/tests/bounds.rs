//! What a peer can cost the controller: connection caps and timeouts on both
//! listeners, while honest clients and heartbeating nodes are served.

mod common;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::db::quote;
use common::sockets::{connect_from, wait_closed};
use common::{heartbeat_request, Heartbeats, TestController};
use measurelab_api::http::NodeStatus;
use measurelab_api::node_v1::{LogLine, ShipLogsRequest, WatchDesiredStateRequest};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Idle connections one attacker opens on each listener: the figure,
/// far over the per-source caps (128 HTTP, 1024 gRPC by default).
const SLOWLORIS: usize = 5000;

#[tokio::test]
async fn a_slowloris_from_one_source_holds_at_most_its_cap_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start_with(dir.path(), |config| {
        config.offline_after = Duration::from_secs(3);
    })
    .await;
    let per_source = measurelab_controller::DEFAULT_HTTP_LIMITS.max_connections_per_source;
    let registered = controller.register("steady", "").await;
    let beats = Heartbeats::start(
        controller.grpc().await,
        registered,
        Duration::from_millis(500),
    );

    let started = Instant::now();
    let mut attacker = Vec::with_capacity(SLOWLORIS);
    for _ in 0..SLOWLORIS {
        attacker.push(connect_from("127.0.0.2", controller.http).await.unwrap());
    }
    // Everything over the cap is closed at accept; the cap's worth stays open.
    let closed_now = wait_closed(&attacker, SLOWLORIS - per_source, Duration::from_secs(30)).await;
    assert_eq!(
        closed_now,
        SLOWLORIS - per_source,
        "the per-source cap holds"
    );

    // Another client is served while the attacker holds its share...
    let answered = Instant::now();
    let nodes = controller.nodes().await;
    assert!(
        answered.elapsed() < Duration::from_secs(2),
        "served in {:?}",
        answered.elapsed()
    );
    assert_eq!(nodes[0].status, NodeStatus::Online);
    // ...and the heartbeating node stays online past several offline deadlines.
    while started.elapsed() < Duration::from_secs(8) {
        assert_eq!(controller.node("steady").await.status, NodeStatus::Online);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    beats.stop_all_answered_within_a_second().await;
    drop(attacker);
    controller.stop().await;
}

#[tokio::test]
async fn idle_connections_from_many_sources_are_reclaimed_by_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let idle = Duration::from_secs(2);
    let controller = TestController::start_with(dir.path(), |config| {
        config.http_limits.idle_timeout = idle;
        config.http_limits.max_connections = 256;
    })
    .await;
    // 40 sources of 20: under the per-source cap, over the overall one.
    let mut attacker = Vec::new();
    for source in 0..40 {
        for _ in 0..20 {
            attacker.push(
                connect_from(&format!("127.0.1.{}", source + 1), controller.http)
                    .await
                    .unwrap(),
            );
        }
    }
    let total = attacker.len();
    wait_closed(&attacker, total - 256, Duration::from_secs(30)).await;
    // The listener is full; once the idle timeout passes, all are closed and
    // a client is served again.
    wait_closed(&attacker, total, idle * 5).await;
    assert!(controller.nodes().await.is_empty());
    controller.stop().await;
}

#[tokio::test]
async fn stalled_grpc_clients_do_not_block_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start_with(dir.path(), |config| {
        config.grpc_limits.handshake_timeout = Duration::from_secs(1);
        config.grpc_limits.request_timeout = Duration::from_secs(1);
        config.grpc_limits.max_connections_per_source = 64;
    })
    .await;
    let registered = controller.register("steady", "").await;

    // Sockets that never send the HTTP/2 preface, far over the per-source cap.
    let mut silent = Vec::with_capacity(SLOWLORIS);
    for _ in 0..SLOWLORIS {
        silent.push(connect_from("127.0.0.2", controller.grpc).await.unwrap());
    }
    // A client that opens a Heartbeat call, sends its headers and stalls
    // before the message.
    let tcp = connect_from("127.0.0.3", controller.grpc).await.unwrap();
    let (mut h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}/measurelab.node.v1.NodeService/Heartbeat",
            controller.grpc
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (stalled, _body_never_sent) = h2.send_request(request, false).unwrap();

    // Others are served meanwhile, promptly.
    let mut grpc = controller.grpc().await;
    for sequence in 1..=5 {
        let started = Instant::now();
        grpc.heartbeat(heartbeat_request(&registered, sequence))
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_millis(500));
    }
    // The stalled call is ended by the request timeout, not left open.
    let answer = tokio::time::timeout(Duration::from_secs(10), stalled)
        .await
        .expect("the stalled call is answered")
        .unwrap();
    let status = answer
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_string());
    assert!(
        status.as_deref().is_some_and(|s| s != "0"),
        "stalled call got {:?}",
        answer.headers()
    );
    // Every silent socket is closed: the ones over the cap at accept, the
    // rest by the handshake timeout.
    wait_closed(&silent, silent.len(), Duration::from_secs(10)).await;
    assert_eq!(controller.node("steady").await.status, NodeStatus::Online);
    controller.stop().await;
}

#[tokio::test]
async fn a_flooding_token_gets_429_while_another_token_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start_with(dir.path(), |config| {
        config.rate_limits = measurelab_controller::RateLimits {
            per_token: Some(measurelab_controller::TokenBucket {
                per_second: 1,
                burst: 20,
            }),
            per_source: None,
        };
    })
    .await;
    let token = controller
        .create(
            "/v1/tokens",
            serde_json::json!({"name": "second", "role": "operator"}),
        )
        .await;
    let second = token["secret"].as_str().unwrap().to_string();

    let client = reqwest::Client::new();
    let mut refused = None;
    for _ in 0..100 {
        let response = client
            .get(controller.url("/v1/nodes"))
            .bearer_auth(&controller.admin_token)
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            refused = Some(response);
            break;
        }
        assert_eq!(response.status(), 200);
    }
    let refused = refused.expect("the flood is limited");
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("per_token"), "{message}");

    // The other token has its own bucket.
    let other = client
        .get(controller.url("/v1/nodes"))
        .bearer_auth(&second)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    // gRPC is not limited by it.
    controller.register("steady", "").await;
    controller.stop().await;
}

#[tokio::test]
async fn one_source_is_limited_whatever_tokens_it_makes_up() {
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start_with(dir.path(), |config| {
        config.rate_limits.per_source = Some(measurelab_controller::TokenBucket {
            per_second: 1,
            burst: 20,
        });
    })
    .await;
    let client = reqwest::Client::new();
    let mut limited = false;
    for n in 0..100 {
        let response = client
            .get(controller.url("/v1/nodes"))
            .bearer_auth(format!("made-up-{n}"))
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            let body: serde_json::Value = response.json().await.unwrap();
            assert!(body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("per_source"));
            limited = true;
            break;
        }
        assert_eq!(response.status(), 401);
    }
    assert!(limited, "a source making up tokens is limited");
    controller.stop().await;
}

#[tokio::test]
async fn list_pages_follow_the_cursor_and_survive_a_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start(dir.path(), Duration::from_secs(60)).await;
    let names: Vec<String> = (0..7).map(|i| format!("t{i}")).collect();
    for name in &names {
        controller
            .create("/v1/tenants", serde_json::json!({ "name": name }))
            .await;
    }
    let mut seen = Vec::new();
    let mut path = "/v1/tenants?limit=3".to_string();
    let mut pages = 0;
    loop {
        let page = controller
            .expect(reqwest::Method::GET, &path, None, 200)
            .await;
        pages += 1;
        let got: Vec<String> = page["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect();
        assert!(got.len() <= 3);
        // The last item of the first page goes before the next page is read.
        if pages == 1 {
            let (status, _) = controller
                .call(
                    reqwest::Method::DELETE,
                    &format!("/v1/tenants/{}", got[2]),
                    None,
                )
                .await;
            assert!(status == 200 || status == 204, "{status}");
        }
        seen.extend(got);
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/tenants?limit=3&after={cursor}"),
            None => break,
        }
    }
    // The controller's own "default" tenant sorts first.
    let want: Vec<String> = std::iter::once("default".to_string())
        .chain(names.iter().cloned())
        .collect();
    assert_eq!(seen, want, "every tenant once, in name order");
    assert_eq!(pages, 3);
    // The client follows the pages itself.
    let all = controller.client().list_tenants().await.unwrap();
    assert_eq!(all.len(), want.len() - 1);
    let (status, body) = controller
        .call(reqwest::Method::GET, "/v1/tenants?after=%25%25", None)
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["field"], "after");
    controller.stop().await;
}

/// Writes `count` results of about `doc_bytes` each straight into the store,
/// as many runs would have over months.
fn insert_results(data_dir: &std::path::Path, count: usize, doc_bytes: usize) {
    let mut inserts = Vec::with_capacity(count);
    let padding = "x".repeat(doc_bytes);
    // Recent runs, one a second up to now: older ones would be the retention
    // pruner's to delete while the test reads them.
    let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    for n in 0..count {
        let started_ms = now_ms - (count - n) as i64 * 1000;
        let started_at =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(started_ms) * 1_000_000)
                .unwrap()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap();
        let document = serde_json::json!({"run_id": format!("run-{n}"), "padding": padding});
        let (started_at, document) = (quote(&started_at), quote(&document.to_string()));
        inserts.push(format!(
            "INSERT INTO results (id, task_id, task_name, received_at, started_at, started_ms,
                                  document, run_id)
             VALUES ('result-{n}', 'task-1', 'bulk', {started_at}, {started_at}, {started_ms},
                     {document}, 'run-{n}')"
        ));
    }
    common::db::write(data_dir, &inserts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_export_streams_while_heartbeats_are_served_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start(dir.path(), Duration::from_secs(60)).await;
    const RUNS: usize = 10_000;
    insert_results(dir.path(), RUNS, 4096);
    let registered = controller.register("steady", "").await;
    let beats = Heartbeats::start(
        controller.grpc().await,
        registered,
        Duration::from_millis(50),
    );

    let started = Instant::now();
    let response = reqwest::Client::new()
        .get(controller.url("/v1/results/export?format=json"))
        .bearer_auth(&controller.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let first_byte = started.elapsed();
    let body = response.bytes().await.unwrap();
    let took = started.elapsed();
    let slowest = beats.stop().await;
    let export: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let results = export["results"].as_array().unwrap();
    assert_eq!(results.len(), RUNS);
    assert_eq!(results[0]["id"], "result-0", "oldest first");
    assert!(export.get("truncated").is_none());
    eprintln!(
        "export of {} bytes: first byte {first_byte:?}, all {took:?}; slowest heartbeat {slowest:?}",
        body.len()
    );
    // Streamed: the answer starts before the whole range is read.
    assert!(
        first_byte < took / 2,
        "first byte {first_byte:?} of {took:?}"
    );
    // Within one heartbeat interval of the harness (1 s): reading 40 MB of
    // results under the registry lock took several.
    assert!(
        slowest < Duration::from_secs(1),
        "slowest heartbeat during the export: {slowest:?}"
    );
    controller.stop().await;
}

#[tokio::test]
async fn an_export_over_the_byte_cap_ends_with_a_trailer() {
    let dir = tempfile::tempdir().unwrap();
    let cap: u64 = 256 * 1024;
    let controller = TestController::start_with(dir.path(), |config| {
        config.export_max_bytes = cap;
    })
    .await;
    insert_results(dir.path(), 500, 2048);
    let json = reqwest::Client::new()
        .get(controller.url("/v1/results/export?format=json"))
        .bearer_auth(&controller.admin_token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(json.len() as u64 <= cap + 1024, "{} bytes", json.len());
    let export: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(
        export["truncated"]["max_bytes"],
        cap,
        "{} bytes, {} results",
        json.len(),
        export["results"].as_array().map_or(0, Vec::len)
    );
    let kept = export["results"].as_array().unwrap().len();
    assert!(kept > 0 && kept < 500, "{kept} results");
    controller.stop().await;
}

/// Reads `/v1/results` page by page to the end; returns the results' ids in
/// the order read and the pages' JSON sizes.
async fn results_pages(controller: &TestController, limit: usize) -> (Vec<String>, Vec<usize>) {
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    let mut sizes = Vec::new();
    let mut path = format!("/v1/results?limit={limit}");
    loop {
        let response = client
            .get(controller.url(&path))
            .bearer_auth(&controller.admin_token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let body = response.bytes().await.unwrap();
        sizes.push(body.len());
        let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
        // Pages go back in time, each oldest first: a page's ids go before
        // those already read.
        let got: Vec<String> = page["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        ids.splice(0..0, got);
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/results?limit={limit}&after={cursor}"),
            None => return (ids, sizes),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_results_list_is_read_while_heartbeats_are_served_on_time() {
    let dir = tempfile::tempdir().unwrap();
    // A cap over the whole range: one page of all 80 MB, the longest read.
    let controller = TestController::start_with(dir.path(), |config| {
        config.results_page_max_bytes = 1 << 30;
    })
    .await;
    const RUNS: usize = 10_000;
    insert_results(dir.path(), RUNS, 8192);
    let registered = controller.register("steady", "").await;
    let beats = Heartbeats::start(
        controller.grpc().await,
        registered,
        Duration::from_millis(50),
    );
    let started = Instant::now();
    let (ids, sizes) = results_pages(&controller, 100_000).await;
    let took = started.elapsed();
    let slowest = beats.stop().await;
    eprintln!("results list of {sizes:?} bytes in {took:?}; slowest heartbeat {slowest:?}");
    assert_eq!(sizes.len(), 1, "one page");
    assert_eq!(ids.len(), RUNS);
    assert_eq!(ids[0], "result-0", "oldest first");
    // Read under the registry lock, this page held a heartbeat up for about
    // 0.7 s (its documents parsed while the store writer waited); apart,
    // the slowest takes a few ms. Five heartbeat intervals of margin for a
    // loaded machine.
    assert!(
        slowest < Duration::from_millis(250),
        "slowest heartbeat during the results list: {slowest:?}"
    );
    controller.stop().await;
}

#[tokio::test]
async fn a_results_page_stops_at_the_byte_cap_and_its_cursor_reads_on() {
    let dir = tempfile::tempdir().unwrap();
    let cap: u64 = 64 * 1024;
    let controller = TestController::start_with(dir.path(), |config| {
        config.results_page_max_bytes = cap;
    })
    .await;
    const RUNS: usize = 200;
    insert_results(dir.path(), RUNS, 2048);
    let (ids, sizes) = results_pages(&controller, 1000).await;
    // About 30 documents of 2 KiB a page, far under the count limit.
    assert!(sizes.len() >= RUNS * 2048 / cap as usize, "pages {sizes:?}");
    for size in &sizes {
        // The cap counts documents; each record's other fields add < 300 B.
        assert!(*size as u64 <= cap + 32 * 300, "a page of {size} bytes");
    }
    let want: Vec<String> = (0..RUNS).map(|n| format!("result-{n}")).collect();
    assert_eq!(ids, want, "every result once, oldest first");
    controller.stop().await;
}

#[tokio::test]
async fn an_upload_over_the_program_limit_is_refused_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start(dir.path(), Duration::from_secs(60)).await;
    // One byte over the 64 MiB limit, sent as a stream.
    let limit = 64 * 1024 * 1024;
    let chunk = vec![7u8; 1024 * 1024];
    let chunks = (0..=64).map(move |n| {
        let len = if n == 64 { 1 } else { chunk.len() };
        Ok::<_, std::io::Error>(chunk[..len].to_vec())
    });
    let response = reqwest::Client::new()
        .post(controller.url("/v1/programs?name=huge"))
        .bearer_auth(&controller.admin_token)
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await;
    // The server may answer and close before the client has sent it all.
    if let Ok(response) = response {
        assert_eq!(response.status(), 413);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
    }
    let uploads = dir.path().join("uploads");
    let left: Vec<_> = std::fs::read_dir(&uploads)
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
    let (status, list) = controller
        .call(reqwest::Method::GET, "/v1/programs", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(list["programs"].as_array().unwrap().len(), 0, "{list}");

    // One at the limit is taken, with the checksum computed on the way in.
    let content = vec![7u8; limit];
    let sha256 = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&content))
    };
    let response = reqwest::Client::new()
        .post(controller.url(&format!("/v1/programs?name=max&sha256={sha256}")))
        .bearer_auth(&controller.admin_token)
        .header("content-type", "application/octet-stream")
        .body(content)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let program: serde_json::Value = response.json().await.unwrap();
    assert_eq!(program["sha256"], sha256.as_str());
    assert_eq!(program["size_bytes"], limit);
    let left: Vec<_> = std::fs::read_dir(&uploads)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    controller.stop().await;
}

#[tokio::test]
async fn an_upload_over_the_concurrency_cap_gets_503_with_retry_after_and_is_taken_later() {
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start_with(dir.path(), |config| {
        config.max_concurrent_uploads = 1;
    })
    .await;
    let upload = |name: &str, body: reqwest::Body| {
        reqwest::Client::new()
            .post(controller.url(&format!("/v1/programs?name={name}")))
            .bearer_auth(&controller.admin_token)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
    };

    // The first upload's body comes from a channel the test holds open.
    let (chunks, body) = futures::channel::mpsc::unbounded::<Result<Vec<u8>, std::io::Error>>();
    let first = tokio::spawn(upload("slow", reqwest::Body::wrap_stream(body)));
    chunks.unbounded_send(Ok(vec![1u8; 4096])).unwrap();
    // It holds the slot once its bytes reach the uploads directory.
    let uploads = dir.path().join("uploads");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(&uploads).map_or(true, |mut entries| entries.next().is_none()) {
        assert!(Instant::now() < deadline, "the first upload never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let refused = upload("quick", vec![2u8; 16].into()).await.unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("1")
    );
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("--max-concurrent-uploads"), "{message}");

    // The held upload completes, and frees the slot for the retry.
    chunks.unbounded_send(Ok(vec![1u8; 4096])).unwrap();
    drop(chunks);
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status(), 201);
    let retried = upload("quick", vec![2u8; 16].into()).await.unwrap();
    assert_eq!(retried.status(), 201);
    controller.stop().await;
}

/// `message` as the body of a gRPC call: uncompressed, length-prefixed.
fn grpc_frame(message: &impl Message) -> bytes::Bytes {
    let encoded = message.encode_to_vec();
    let mut frame = Vec::with_capacity(5 + encoded.len());
    frame.push(0);
    frame.extend_from_slice(&u32::try_from(encoded.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&encoded);
    frame.into()
}

/// A call to NodeService `method` on a raw HTTP/2 connection: its headers
/// are sent, its message is the caller's to send (or not).
fn start_call(
    h2: &mut h2::client::SendRequest<bytes::Bytes>,
    to: std::net::SocketAddr,
    method: &str,
) -> (h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>) {
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{to}/measurelab.node.v1.NodeService/{method}"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    h2.send_request(request, false).unwrap()
}

/// The grpc-status a raw call ended with: from its trailers, or from its
/// headers when it failed at once (a "trailers-only" answer).
async fn grpc_status(response: http::Response<h2::RecvStream>) -> String {
    if let Some(status) = response.headers().get("grpc-status") {
        return status.to_str().unwrap().to_string();
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    trailers["grpc-status"].to_str().unwrap().to_string()
}

#[tokio::test]
async fn calls_of_one_connection_over_its_concurrency_limit_wait_for_a_handler_slot() {
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start_with(dir.path(), |config| {
        config.grpc_limits.concurrency_per_connection = 2;
    })
    .await;
    let registered = controller.register("steady", "").await;
    let tcp = TcpStream::connect(controller.grpc).await.unwrap();
    let (mut h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);

    // Two calls whose messages have not come yet: each holds a handler slot.
    let (first, mut first_body) = start_call(&mut h2, controller.grpc, "Heartbeat");
    let (_second, mut second_body) = start_call(&mut h2, controller.grpc, "Heartbeat");
    // A whole third call on the same connection waits for a slot...
    let (mut third, mut third_body) = start_call(&mut h2, controller.grpc, "Heartbeat");
    third_body
        .send_data(grpc_frame(&heartbeat_request(&registered, 3)), true)
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(1), &mut third)
            .await
            .is_err(),
        "the third call was answered while two held the connection's slots"
    );
    // ...while another connection is served,
    controller
        .grpc()
        .await
        .heartbeat(heartbeat_request(&registered, 1))
        .await
        .unwrap();
    // and gets the slot the first call frees.
    first_body
        .send_data(grpc_frame(&heartbeat_request(&registered, 2)), true)
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), first)
        .await
        .expect("the first call is answered once its message came")
        .unwrap();
    assert_eq!(grpc_status(first).await, "0");
    let third = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the third call is answered once a slot is free")
        .unwrap();
    assert_eq!(grpc_status(third).await, "0");
    // The second call would hold its slot until the request timeout, and
    // the controller's graceful stop with it.
    second_body.send_reset(h2::Reason::CANCEL);
    controller.stop().await;
}

#[tokio::test]
async fn a_request_over_the_message_limit_is_refused_and_the_connection_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let limit = 64 * 1024;
    let controller = TestController::start_with(dir.path(), |config| {
        config.grpc_limits.max_request_message_bytes = limit;
    })
    .await;
    let registered = controller.register("steady", "").await;
    // Lines of 8 KiB, half the controller's cap on one line.
    let logs = |lines: usize| ShipLogsRequest {
        node_id: registered.node_id.clone(),
        node_secret: registered.node_secret.clone(),
        lines: (0..lines)
            .map(|n| LogLine {
                timestamp_unix_ms: n as i64,
                level: "INFO".into(),
                target: "test".into(),
                message: "x".repeat(8 * 1024),
            })
            .collect(),
    };
    let mut grpc = controller.grpc().await;
    // 80 KiB: far under tonic's own default of 4 MiB, over the configured limit.
    let status = grpc.ship_logs(logs(10)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains(&limit.to_string()),
        "the refusal names the limit: {status:?}"
    );
    // The same connection serves on, a message under the limit included.
    let shipped = grpc.ship_logs(logs(4)).await.unwrap().into_inner();
    assert_eq!(shipped.accepted, 4);
    grpc.heartbeat(heartbeat_request(&registered, 1))
        .await
        .unwrap();
    controller.stop().await;
}

/// A connection as a peer whose host vanished sees it once `vanished` is
/// set: nothing it is sent is read, nothing more is written, and no FIN or
/// reset says so.
struct Vanishing {
    inner: TcpStream,
    vanished: Arc<AtomicBool>,
}

impl AsyncRead for Vanishing {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.vanished.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Vanishing {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.vanished.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Opens a WatchDesiredState stream from `source` on a fresh connection and
/// waits for its first hint.
async fn watch_from(
    source: &str,
    controller: &TestController,
    registered: &measurelab_api::node_v1::RegisterResponse,
    io: impl FnOnce(TcpStream) -> Vanishing,
) -> h2::RecvStream {
    let tcp = connect_from(source, controller.grpc).await.unwrap();
    let (mut h2, connection) = h2::client::handshake(io(tcp)).await.unwrap();
    tokio::spawn(connection);
    let (response, mut body) = start_call(&mut h2, controller.grpc, "WatchDesiredState");
    let request = WatchDesiredStateRequest {
        node_id: registered.node_id.clone(),
        node_secret: registered.node_secret.clone(),
    };
    body.send_data(grpc_frame(&request), true).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("the watch is answered")
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().get("grpc-status").is_none(),
        "{response:?}"
    );
    let mut hints = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), hints.data())
        .await
        .expect("the first hint comes at once");
    assert!(first.is_some_and(|chunk| chunk.is_ok()));
    hints
}

#[tokio::test]
async fn a_vanished_peer_is_dropped_by_keepalive_and_its_slot_freed() {
    let dir = tempfile::tempdir().unwrap();
    let (interval, timeout) = (Duration::from_secs(1), Duration::from_secs(1));
    let controller = TestController::start_with(dir.path(), |config| {
        config.grpc_limits.keepalive_interval = interval;
        config.grpc_limits.keepalive_timeout = timeout;
        // The peer's source gets one connection: while the controller
        // believes it alive, nothing else from there is served.
        config.grpc_limits.max_connections_per_source = 1;
    })
    .await;
    let registered = controller.register("steady", "").await;
    let vanished = Arc::new(AtomicBool::new(false));
    let mut observer = None;
    let _hints = watch_from("127.0.0.5", &controller, &registered, |tcp| {
        // A second handle on the socket, to see the controller close it
        // after the peer's own side stopped reading.
        let std = tcp.into_std().unwrap();
        observer = Some(TcpStream::from_std(std.try_clone().unwrap()).unwrap());
        Vanishing {
            inner: TcpStream::from_std(std).unwrap(),
            vanished: vanished.clone(),
        }
    })
    .await;
    let observer = observer.unwrap();
    // Its source has no room for another connection meanwhile.
    let refused = connect_from("127.0.0.5", controller.grpc).await.unwrap();
    wait_closed(&[refused], 1, Duration::from_secs(5)).await;

    vanished.store(true, Ordering::SeqCst);
    let since = Instant::now();
    // A ping unanswered for the keepalive timeout ends the connection, its
    // watch stream with it; well within a few rounds of both.
    wait_closed(&[observer], 1, (interval + timeout) * 4).await;
    eprintln!("vanished peer dropped after {:?}", since.elapsed());
    // Its slot is free: the same source is served again.
    let _again = watch_from("127.0.0.5", &controller, &registered, |tcp| Vanishing {
        inner: tcp,
        vanished: Arc::new(AtomicBool::new(false)),
    })
    .await;
    controller.stop().await;
}
