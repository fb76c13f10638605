//! `GET /metrics` through the real listeners: counts that follow the
//! requests and heartbeats this test makes, nodes by status, and each
//! task's newest run per receiver; operator-only; and `promtool check
//! metrics` (Debian's prometheus package) accepts the exposition.

mod common;

use std::collections::BTreeMap;

use common::TestController;
use reqwest::Method;

/// `name{labels} value` lines of an exposition, keyed by `name{labels}`.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// A scrape as Prometheus makes it (`OpenMetrics` asked for) or as a plain
/// client does.
async fn scrape_as(
    controller: &TestController,
    token: &str,
    accept: &str,
) -> (u16, String, String) {
    let response = reqwest::Client::new()
        .get(controller.url("/metrics"))
        .bearer_auth(token)
        .header("accept", accept)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

async fn scrape(controller: &TestController, token: &str) -> (u16, String, String) {
    scrape_as(
        controller,
        token,
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    )
    .await
}

#[tokio::test]
async fn metrics_follow_requests_heartbeats_nodes_and_results() {
    let (_dir, controller) = TestController::fresh().await;
    let n1 = controller.register("n1", "").await;
    controller.register("n2", "").await;
    controller.create_platform("p", &["n1", "n2"]).await;
    controller.create_vm("mscs", "p", "n1").await;
    controller.create_vm("point", "p", "n2").await;
    controller
        .create("/v1/tasks", common::task_body("loss", "p", "once"))
        .await;

    let mut grpc = controller.grpc().await;
    for sequence in 1..=3 {
        grpc.heartbeat(common::heartbeat_request(&n1, sequence))
            .await
            .unwrap();
    }
    for _ in 0..4 {
        let (status, _) = controller.call(Method::GET, "/v1/nodes/n2", None).await;
        assert_eq!(status, 200);
    }
    let (status, _) = controller.call(Method::GET, "/v1/nodes/nope", None).await;
    assert_eq!(status, 404);
    // An older run, then the newest: only the newest becomes series.
    for (started, loss, delay_us) in [
        ("2026-03-01T00:00:00Z", 0.5, 9000.0),
        ("2026-03-01T00:05:00Z", 0.02, 400.0),
    ] {
        let run = common::result_document(
            Some("loss"),
            started,
            vec![common::reporting_receiver(
                "point", 1000, loss, delay_us, 25.0,
            )],
        );
        controller.create("/v1/results", run).await;
    }

    let (status, content_type, text) = scrape(&controller, &controller.admin_token).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let values = samples(&text);
    let value = |series: &str| {
        *values
            .get(series)
            .unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
    };
    assert_eq!(value(r#"measurelab_nodes{status="online"}"#), 2.0);
    // The only controller runs the sweep and the prune (on PostgreSQL once
    // its leadership thread took the lock: polled).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, _, text) = scrape(&controller, &controller.admin_token).await;
        if samples(&text).get("measurelab_controller_leader") == Some(&1.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not the leader within 10 s:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        value(r#"measurelab_grpc_requests_total{rpc="Register"}"#),
        2.0
    );
    assert_eq!(
        value(r#"measurelab_grpc_requests_total{rpc="Heartbeat"}"#),
        3.0
    );
    assert_eq!(
        value(r#"measurelab_grpc_request_duration_seconds_count{rpc="Heartbeat"}"#),
        3.0
    );
    let route = r#"method="GET",route="/v1/nodes/:id_or_name""#;
    assert_eq!(
        value(&format!(
            "measurelab_http_requests_total{{{route},status=\"200\"}}"
        )),
        4.0
    );
    assert_eq!(
        value(&format!(
            "measurelab_http_requests_total{{{route},status=\"404\"}}"
        )),
        1.0
    );
    assert_eq!(
        value(&format!(
            "measurelab_http_request_duration_seconds_count{{{route}}}"
        )),
        5.0
    );
    let receiver = r#"tenant="default",task="loss",receiver="point""#;
    assert_eq!(
        value(&format!("measurelab_result_loss_ratio{{{receiver}}}")),
        0.02
    );
    assert_eq!(
        value(&format!("measurelab_result_packets_lost{{{receiver}}}")),
        20.0
    );
    assert_eq!(
        value(&format!(
            "measurelab_result_one_way_delay_seconds{{{receiver},stat=\"median\"}}"
        )),
        0.0004
    );
    assert_eq!(
        value(&format!(
            "measurelab_result_one_way_delay_seconds{{{receiver},stat=\"p95\"}}"
        )),
        0.0008
    );
    assert_eq!(
        value(&format!("measurelab_result_jitter_seconds{{{receiver}}}")),
        0.000025
    );
    assert_eq!(
        value(r#"measurelab_result_started_timestamp_seconds{tenant="default",task="loss"}"#),
        1_772_323_500.0
    );

    // The task's series leave with it.
    controller
        .expect(Method::DELETE, "/v1/tasks/loss", None, 200)
        .await;
    let (_, _, after) = scrape(&controller, &controller.admin_token).await;
    assert!(!after.contains("task=\"loss\""), "{after}");

    // The classic format, for tools that do not read OpenMetrics, carries
    // the same samples; Prometheus' own linter accepts it.
    let (status, content_type, classic) =
        scrape_as(&controller, &controller.admin_token, "*/*").await;
    assert_eq!(status, 200, "{classic}");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(!classic.contains("# EOF"), "{classic}");
    assert_eq!(
        samples(&classic).keys().collect::<Vec<_>>(),
        samples(&after).keys().collect::<Vec<_>>()
    );
    if let Err(e) = measurelab_testbed::promtool_check(&classic) {
        panic!("{e:#}");
    }

    // Every series the Grafana dashboard queries is one the controller
    // serves, but the node agents' (checked against a real agent's /metrics
    // by the agent's `a_points_refusal_is_exported_with_its_reason`).
    let queried = measurelab_testbed::dashboard_series().unwrap();
    let (agents, ours): (Vec<_>, Vec<_>) = queried
        .iter()
        .partition(|name| name.starts_with("measurelab_agent_"));
    assert!(ours.len() >= 8, "{queried:?}");
    assert!(
        !agents.is_empty(),
        "the dashboard shows no agent series: {queried:?}"
    );
    let served: std::collections::BTreeSet<String> = samples(&text)
        .into_keys()
        .map(|series| series.split('{').next().unwrap_or_default().to_string())
        .collect();
    for name in &ours {
        assert!(
            served.contains(*name),
            "the dashboard queries {name}, which /metrics does not serve: {served:?}"
        );
    }

    // Operator only: the series name tenants and tasks.
    let member = controller.tenant_token("t1", "m", "member").await;
    let (status, _, text) = scrape(&controller, &member).await;
    assert_eq!(status, 403, "{text}");
    let (status, _, _) = scrape(&controller, "").await;
    assert_eq!(status, 401);
    controller.stop().await;
}

/// `measurelab_store_write_queue_depth` of one scrape.
async fn write_queue_depth(controller: &TestController) -> f64 {
    let (status, _, text) = scrape(controller, &controller.admin_token).await;
    assert_eq!(status, 200, "{text}");
    *samples(&text)
        .get("measurelab_store_write_queue_depth")
        .unwrap_or_else(|| panic!("no write queue depth in:\n{text}"))
}

/// Until `check` holds for the write queue's depth; fails after 10 s.
async fn until_depth(controller: &TestController, what: &str, check: impl Fn(f64) -> bool) -> f64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let depth = write_queue_depth(controller).await;
        if check(depth) {
            return depth;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "within 10 s the write queue's depth never {what}: {depth}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_write_queue_depth_counts_commands_held_behind_the_writer() {
    const QUEUED: usize = 5;
    let (dir, controller) = TestController::fresh().await;
    controller.register("n1", "").await;
    assert_eq!(write_queue_depth(&controller).await, 0.0);

    // A label change is a write the store's writer runs under the
    // database's write lock; with the lock held elsewhere the writer stops
    // in the first one it takes and the others wait in its queue.
    let set_labels = |value: String| {
        let url = controller.url("/v1/nodes/n1");
        let token = controller.admin_token.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .patch(url)
                .bearer_auth(token)
                .json(&serde_json::json!({"labels": {"k": value}}))
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    let write_lock = common::db::WriteLock::take(dir.path());
    let mut pending = vec![set_labels("plug".into())];
    // One scrape round trip for the plug to reach the writer before the
    // rest, which then queue one by one behind it.
    write_queue_depth(&controller).await;
    // The liveness sweep queues a command of its own now and then (one at a
    // time: it awaits each), so the depth is the commands of this test or
    // one more.
    for queued in 1..=QUEUED {
        pending.push(set_labels(format!("v{queued}")));
        let expected = queued as f64;
        let depth = until_depth(&controller, &format!("reached {queued}"), |d| d >= expected).await;
        assert!(depth <= expected + 1.0, "{queued} queued, depth {depth}");
    }

    drop(write_lock);
    until_depth(&controller, "went back to 0", |d| d == 0.0).await;
    for request in pending {
        assert_eq!(request.await.unwrap().unwrap(), 200);
    }
    controller.stop().await;
}

/// A `metrics` token is what Prometheus should hold: it scrapes `/metrics`
/// and reaches nothing else, though it belongs to no tenant (so the store,
/// if asked, would show it everything). Only the operator creates one, and
/// never inside a tenant.
#[tokio::test]
async fn a_metrics_token_scrapes_and_can_do_nothing_else() {
    let (_dir, controller) = TestController::fresh().await;
    controller.register("n1", "").await;
    controller.create_platform("p1", &["n1"]).await;

    let body = controller
        .create(
            "/v1/tokens",
            serde_json::json!({"name": "prometheus", "role": "metrics"}),
        )
        .await;
    assert_eq!(body["role"], "metrics", "{body}");
    assert!(body["tenant_id"].is_null(), "{body}");
    let scraper = body["secret"].as_str().unwrap().to_string();

    let (status, _, text) = scrape(&controller, &scraper).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("measurelab_nodes"), "{text}");
    let whoami = controller
        .expect_as(&scraper, Method::GET, "/v1/whoami", None, 200)
        .await;
    assert_eq!(whoami["role"], "metrics", "{whoami}");

    // Reads and writes of every kind, the operator's and a tenant's.
    for (method, path, body) in [
        (Method::GET, "/v1/platforms", None),
        (Method::GET, "/v1/platforms/p1", None),
        (Method::GET, "/v1/nodes", None),
        (Method::GET, "/v1/tenants", None),
        (Method::GET, "/v1/tokens", None),
        (Method::GET, "/v1/events", None),
        (Method::GET, "/v1/results/export", None),
        (Method::GET, "/metrics?tenant=t1", None),
        (Method::DELETE, "/v1/platforms/p1", None),
        (
            Method::POST,
            "/v1/tokens",
            Some(serde_json::json!({"name": "escalate", "role": "operator"})),
        ),
    ] {
        let (status, answer) = controller
            .call_as(&scraper, method.clone(), path, body)
            .await;
        assert_eq!(status, 403, "{method} {path}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("role metrics")),
            "{method} {path}: {answer}"
        );
    }
    let (status, platform) = controller.call(Method::GET, "/v1/platforms/p1", None).await;
    assert_eq!(status, 200, "the refused DELETE left p1: {platform}");

    // Who may create one: not a tenant's owner; not inside a tenant.
    let owner = controller.tenant_token("t1", "o", "owner").await;
    controller
        .expect_as(
            &owner,
            Method::POST,
            "/v1/tokens",
            Some(serde_json::json!({"name": "scrape", "role": "metrics", "tenant": "t1"})),
            403,
        )
        .await;
    let answer = controller
        .expect(
            Method::POST,
            "/v1/tokens",
            Some(serde_json::json!({"name": "scrape", "role": "metrics", "tenant": "t1"})),
            422,
        )
        .await;
    assert_eq!(answer["error"]["field"], "tenant", "{answer}");
    // The provider's plan-time diagnostic says the same (Role::tenant_refusal).
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("a metrics token belongs to no tenant; leave tenant out"),
        "{answer}"
    );
    controller.stop().await;
}
