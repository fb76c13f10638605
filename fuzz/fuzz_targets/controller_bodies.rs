//! The controller's HTTP API as a tenant's client sees it: one real controller (SQLite
//! store in a temp dir, plain HTTP on loopback) is started once, and every input
//! becomes one request with a fuzzed body or query string to a route that parses one.
//!
//! Invariant: the controller answers every such request with a status below 500. A 5xx
//! to a client's bytes is a handler that panicked or a case validation missed, and the
//! answer is always JSON naming what was wrong.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use measurelab_api::http::ErrorBody;
use measurelab_controller::{run, ControllerConfig, RateLimits};

/// Routes whose handlers decode a JSON body. Objects they name ("p0", "v0", ...) are
/// mostly absent, so a body that decodes meets the not-found and conflict paths too.
const BODY_ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/tenants"),
    ("PATCH", "/v1/tenants/t0"),
    ("POST", "/v1/tokens"),
    ("PATCH", "/v1/nodes/n0"),
    ("POST", "/v1/join_tokens"),
    ("POST", "/v1/platforms"),
    ("PATCH", "/v1/platforms/p0"),
    ("POST", "/v1/platforms/p0/start"),
    ("POST", "/v1/qos_policies"),
    ("PATCH", "/v1/qos_policies/q0"),
    ("POST", "/v1/appliances"),
    ("POST", "/v1/vms"),
    ("PATCH", "/v1/vms/v0"),
    ("POST", "/v1/programs"),
    ("POST", "/v1/deployments"),
    ("POST", "/v1/tasks"),
    ("POST", "/v1/results"),
];

/// List routes whose query strings (cursors, filters, limits) are parsed.
const QUERY_ROUTES: &[&str] = &[
    "/v1/events",
    "/v1/nodes",
    "/v1/platforms",
    "/v1/vms",
    "/v1/tasks",
    "/v1/results",
    "/v1/results/latest",
    "/v1/results/export",
    "/v1/tokens",
];

const VALIDATION_MODES: &[&str] = &[
    "",
    "fieldValidation=Strict",
    "fieldValidation=Warn",
    "fieldValidation=Ignore",
];

struct Target {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    base: String,
    admin_token: String,
}

fn target() -> &'static Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET.get_or_init(start_controller)
}

fn start_controller() -> Target {
    // scripts/fuzz.sh points this at a directory it removes afterwards; libFuzzer exits
    // without running destructors, so a TempDir here would be left behind.
    let data_dir = std::env::var_os("MEASURELAB_FUZZ_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("measurelab-fuzz-{}", std::process::id()))
        });
    std::fs::create_dir_all(&data_dir).expect("fuzz data dir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let http = std::net::TcpListener::bind("127.0.0.1:0").expect("bind http");
    let grpc = std::net::TcpListener::bind("127.0.0.1:0").expect("bind grpc");
    let base = format!("http://{}", http.local_addr().expect("http addr"));
    let mut config = ControllerConfig::new(&data_dir, http, grpc);
    // Thousands of requests a second from one token is the point here.
    config.rate_limits = RateLimits {
        per_token: None,
        per_source: None,
    };
    runtime.spawn(run(config, std::future::pending::<()>()));
    // Without TCP_NODELAY the body waits behind the headers for a delayed ACK:
    // 40 ms per request, a few hundred inputs per smoke run instead of thousands.
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .expect("HTTP client");
    let deadline = Instant::now() + Duration::from_secs(30);
    runtime.block_on(async {
        // Polls a condition (the health endpoint), not a fixed sleep.
        loop {
            let healthy = client.get(format!("{base}/healthz")).send().await;
            if healthy.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(Instant::now() < deadline, "the controller did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let admin_token = std::fs::read_to_string(data_dir.join("admin.token"))
        .expect("admin.token")
        .trim()
        .to_string();
    Target {
        runtime,
        client,
        base,
        admin_token,
    }
}

fuzz_target!(|data: &[u8]| {
    let [selector, mode, rest @ ..] = data else {
        return;
    };
    let target = target();
    let mode = VALIDATION_MODES[usize::from(*mode) % VALIDATION_MODES.len()];
    let (method, url, body) = if selector & 0x80 == 0 {
        let (method, path) = BODY_ROUTES[usize::from(*selector) % BODY_ROUTES.len()];
        (
            method,
            format!("{}{path}?{mode}", target.base),
            rest.to_vec(),
        )
    } else {
        let path = QUERY_ROUTES[usize::from(*selector & 0x7f) % QUERY_ROUTES.len()];
        let query: String = String::from_utf8_lossy(rest)
            .chars()
            .filter(|c| !c.is_control() && *c != '#' && *c != ' ')
            .collect();
        ("GET", format!("{}{path}?{query}", target.base), Vec::new())
    };
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let (status, answer) = target.runtime.block_on(async {
        let response = target
            .client
            .request(method.clone(), &url)
            .bearer_auth(&target.admin_token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("the controller answers");
        let status = response.status();
        (status, response.bytes().await.expect("the answer arrives"))
    });
    assert!(
        status.as_u16() < 500,
        "{method} {url} -> {status}: {}",
        String::from_utf8_lossy(&answer)
    );
    if !status.is_success() {
        let error: ErrorBody = serde_json::from_slice(&answer).unwrap_or_else(|err| {
            panic!(
                "{method} {url} -> {status}: not an error body ({err}): {}",
                String::from_utf8_lossy(&answer)
            )
        });
        assert!(!error.error.message.is_empty(), "{error:?}");
    }
});
