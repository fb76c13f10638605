//! The admin page: served without external resources, and its script,
//! run by Node.js in a minimal DOM (tests/ui/harness.js) against a live
//! controller, renders platforms, VMs, results and per-receiver SVG charts.

mod common;

use common::TestController;
use measurelab_api::node_v1::{GuestReport, MscsPoint, MscsPointList, StatusReport};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn page_has_no_external_resources() {
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start_with(dir.path(), |_| {}).await;
    let page = reqwest::get(controller.url("/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for id in [
        "platforms",
        "points",
        "vms",
        "results",
        "chart-loss",
        "chart-delay",
        "chart-jitter",
    ] {
        assert!(page.contains(&format!("id=\"{id}\"")), "{id} missing");
    }
    // The lab has no internet: no script, style or image may come from elsewhere.
    for attribute in ["src=", "href=", "@import", "url("] {
        assert!(!page.contains(attribute), "the page references {attribute}");
    }
    controller.stop().await;
}

#[tokio::test]
async fn page_script_renders_tables_and_per_receiver_charts() {
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start_with(dir.path(), |_| {}).await;
    let n1 = controller.register("n1", "").await;
    controller
        .call(
            Method::POST,
            "/v1/platforms",
            Some(json!({"name": "p", "nodes": ["n1"]})),
        )
        .await;
    let (_, vm) = controller
        .call(
            Method::POST,
            "/v1/vms",
            Some(
                json!({"name": "mscs", "platform": "p", "node": "n1", "vcpus": 1, "memory_mib": 64,
                        "appliance": "namespace", "power_state": "running"}),
            ),
        )
        .await;
    let (_, task) = controller
        .call(
            Method::POST,
            "/v1/tasks",
            Some(
                json!({"name": "t", "mode": "platform", "platform": "p", "schedule": "periodic",
                        "interval_seconds": 60, "duration_seconds": 5, "rate_pps": 10,
                        "packet_size_bytes": 100, "group": "239.1.1.1", "port": 5000, "ttl": 2}),
            ),
        )
        .await;
    for (minute, loss) in [(0, 0.10), (1, 0.05), (2, 0.20)] {
        let document = common::result_document(
            task["id"].as_str(),
            &format!("2026-01-01T10:0{minute}:00Z"),
            vec![
                common::reporting_receiver("r1", 100, loss, 1500.0, 300.0),
                common::reporting_receiver("r2", 100, 0.0, 900.0, 100.0),
            ],
        );
        let (status, body) = controller
            .call(Method::POST, "/v1/results", Some(document))
            .await;
        assert_eq!(status, 201, "{body}");
    }
    // The MSCS in the VM reported one active and one missing point.
    let point = |name: &str, state: &str| MscsPoint {
        name: name.into(),
        control_address: "10.201.0.3:7001".into(),
        data_address: "10.201.0.3".into(),
        state: state.into(),
        last_seen_unix_ms: 1_700_000_000_000,
        protocol_version: 2,
        origin: "registered".into(),
    };
    controller
        .grpc()
        .await
        .report_status(StatusReport {
            node_id: n1.node_id.clone(),
            node_secret: n1.node_secret.clone(),
            guests: vec![GuestReport {
                vm_id: vm["id"].as_str().unwrap().into(),
                points: Some(MscsPointList {
                    points: vec![point("pa", "active"), point("pb", "missing")],
                }),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    let rendered = controller.render_admin_page(&controller.admin_token).await;
    assert_eq!(rendered["error"], "", "{rendered:#}");
    // The operator sees every tenant's use; the default tenant has no quota.
    let usage = &rendered["usage"][0];
    assert_eq!(usage[0], "default", "{rendered:#}");
    assert_eq!(usage[1], "1 / \u{221e}", "one platform: {rendered:#}");
    assert_eq!(usage[4], "64 / \u{221e}", "the VM's memory: {rendered:#}");
    assert_eq!(rendered["platforms"][0][0], "p");
    assert_eq!(rendered["platforms"][0][2], "100");
    assert_eq!(rendered["vms"][0][1], "mscs");
    let points = &rendered["points"];
    assert_eq!(points.as_array().map(Vec::len), Some(2), "{rendered:#}");
    assert_eq!(points[0][0], "p");
    assert_eq!(points[0][1], "pa");
    assert_eq!(points[0][2], "active");
    assert_eq!(points[1][2], "missing");
    assert_eq!(points[1][5], "2023-11-14T22:13:20Z");
    assert!(
        points[1][8].as_str().unwrap().ends_with(" by mscs"),
        "{points}"
    );
    assert_eq!(rendered["vms"][0][6], "10.201.0.2");
    assert_eq!(
        rendered["results"].as_array().unwrap().len(),
        6,
        "3 runs x 2 receivers"
    );
    assert_eq!(rendered["legend"], json!(["r1", "r2"]));
    for chart in ["loss", "delay", "jitter"] {
        assert_eq!(
            rendered[chart]["polylines"],
            json!([3, 3]),
            "{chart}: {rendered:#}"
        );
    }
    let loss_points: Vec<&str> = rendered["loss"]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        loss_points.contains(&"r1 2026-01-01T10:02:00.000Z: 20.00%"),
        "{loss_points:?}"
    );
    let delay = rendered["delay"]["points"].to_string();
    assert!(
        delay.contains("r2 2026-01-01T10:00:00.000Z: 0.9000ms"),
        "{delay}"
    );
    controller.stop().await;
}
