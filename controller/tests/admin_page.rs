//! The admin page: served without external resources, and its script,
//! run by Node.js in a minimal DOM (tests/ui/harness.js) against a live
//! controller, renders platforms, VMs, results and per-receiver SVG charts.

mod common;

use common::TestController;
use measurelab_api::node_v1::{GuestReport, MscsPoint, MscsPointList, StatusReport, VmStatus};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn page_has_no_external_resources() {
    let (_dir, controller) = TestController::fresh().await;
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
    let (_dir, controller, n1) = TestController::with_platform_p_on_n1().await;
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
        controller.create("/v1/results", document).await;
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
            vms: vec![VmStatus {
                vm_id: vm["id"].as_str().unwrap().into(),
                actual_state: "running".into(),
                guest_agent_version: "0.1.0".into(),
                ..Default::default()
            }],
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
    assert_eq!(rendered["vms"][0][12], "0.1.0", "the guest agent's version");
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

/// The tree of the latest stored run, drawn from the result the controller stored
/// (with the inference it added at insert): the lossy uplink is coloured away from the
/// clean green and drawn thick as a bottleneck; clean links stay green and thin.
#[tokio::test]
async fn page_script_draws_the_latest_runs_tree_coloured_by_inferred_loss() {
    use measurelab_inference::simulate::{self, LinkModel};
    use measurelab_inference::tree::{distribution_tree, Placement};

    let (_dir, controller) = TestController::fresh().await;
    controller.register("n1", "").await;
    controller
        .call(
            Method::POST,
            "/v1/platforms",
            Some(json!({"name": "p", "nodes": ["n1"]})),
        )
        .await;
    let (_, task) = controller
        .call(
            Method::POST,
            "/v1/tasks",
            Some(
                json!({"name": "t", "mode": "platform", "platform": "p", "schedule": "once",
                        "rate_pps": 10, "packet_size_bytes": 100, "group": "239.1.1.1",
                        "port": 5000, "ttl": 2}),
            ),
        )
        .await;
    let at = |point, node| Placement { point, node };
    let tree = distribution_tree(
        &at("p1", "n1"),
        &[
            at("p2", "n2"),
            at("p3", "n2"),
            at("p4", "n3"),
            at("p5", "n3"),
        ],
    );
    let model = LinkModel {
        loss: [("uplink:n2".to_string(), 0.08)].into_iter().collect(),
        ..LinkModel::default()
    };
    let run = simulate::run(&tree, &model, 20_000, 5);
    let mut document = simulate::document(&tree, &run);
    document.task_id = task["id"].as_str().map(str::to_string);
    let body = controller
        .create("/v1/results", serde_json::to_value(&document).unwrap())
        .await;
    assert_eq!(
        body["document"]["bottlenecks"][0]["link"], "uplink:n2",
        "{body:#}"
    );

    let rendered = controller.render_admin_page(&controller.admin_token).await;
    assert_eq!(rendered["error"], "", "{rendered:#}");
    let info = rendered["treeinfo"].as_str().unwrap();
    assert!(
        info.contains("20000 probes") && info.contains("bottlenecks: uplink:n2 (loss)"),
        "{info}"
    );
    let links = rendered["tree"]["links"].as_array().unwrap();
    // One line per tree link: source port, uplink n1, two uplinks down, four ports.
    assert_eq!(links.len(), 8, "{rendered:#}");
    const CLEAN: &str = "hsl(120,70%,40%)";
    for link in links {
        let title = link["title"].as_str().unwrap();
        if title.starts_with("uplink:n2:") {
            assert_ne!(link["stroke"], CLEAN, "{link}");
            assert_eq!(link["width"], "6", "{link}");
            assert!(title.ends_with(", bottleneck"), "{title}");
        } else {
            assert_eq!(link["stroke"], CLEAN, "{link}");
            assert_eq!(link["width"], "3", "{link}");
            assert!(title.contains(": loss 0.00%"), "{title}");
        }
    }
    let labels = rendered["tree"]["labels"].to_string();
    for label in ["p1", "p5", "bridge n2", "lab switch"] {
        assert!(labels.contains(label), "{label} in {labels}");
    }
    controller.stop().await;
}

/// The VM usage charts draw what the guest reported: CPU, memory used and
/// total, and network rates from the second step on (the first has none).
#[tokio::test]
async fn page_script_charts_the_selected_vms_usage() {
    use measurelab_api::node_v1::{GuestReport, ResourceUsage, StatusReport};
    let (_dir, controller, n1) = TestController::with_platform_p_on_n1().await;
    let (_, vm) = controller
        .call(
            Method::POST,
            "/v1/vms",
            Some(
                json!({"name": "g", "platform": "p", "node": "n1", "vcpus": 1, "memory_mib": 64,
                        "appliance": "namespace", "power_state": "running"}),
            ),
        )
        .await;
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    for (i, cpu) in [25.0, 50.0, 75.0].into_iter().enumerate() {
        let i = i as u64;
        let report = StatusReport {
            node_id: n1.node_id.clone(),
            node_secret: n1.node_secret.clone(),
            guests: vec![GuestReport {
                vm_id: vm["id"].as_str().unwrap().to_string(),
                last_heartbeat_unix_ms: now_ms - 60_000 + i as i64 * 20_000,
                usage: Some(ResourceUsage {
                    cpu_count: 1,
                    cpu_used_percent: cpu,
                    memory_total_bytes: 64 << 20,
                    memory_used_bytes: (8 + i) << 20,
                    network_rx_bytes: i * 40_000,
                    network_tx_bytes: i * 20_000,
                    ..Default::default()
                }),
                logs: vec![],
                points: None,
            }],
            ..Default::default()
        };
        controller.grpc().await.report_status(report).await.unwrap();
    }
    let rendered = controller.render_admin_page(&controller.admin_token).await;
    assert_eq!(rendered["error"], "", "{rendered:#}");
    assert_eq!(rendered["vm_cpu"]["polylines"], json!([3]), "{rendered:#}");
    assert_eq!(
        rendered["vm_memory"]["polylines"],
        json!([3, 3]),
        "{rendered:#}"
    );
    assert_eq!(
        rendered["vm_network"]["polylines"],
        json!([2, 2]),
        "{rendered:#}"
    );
    let cpu = rendered["vm_cpu"]["points"].to_string();
    assert!(cpu.contains(": 75.00%"), "{cpu}");
    // 40 000 bytes received in the 20 s between two samples: 2 kB/s.
    let network = rendered["vm_network"]["points"].to_string();
    assert!(network.contains(": 2.000 kB/s"), "{network}");
    assert!(network.contains(": 1.000 kB/s"), "{network}");
    controller.stop().await;
}

/// The event list opens on the newest page; "older events" reads the page before
/// it, and hides itself once the journal's start is shown.
#[tokio::test]
async fn page_script_pages_the_event_list_backwards() {
    let (_dir, controller) = TestController::fresh().await;
    for k in 0..25 {
        controller.register(&format!("n{k:02}"), "").await;
    }
    let total = controller.events().await.events.len();
    assert!(
        (21..=40).contains(&total),
        "one page and part of another: {total}"
    );

    let first = controller.render_admin_page(&controller.admin_token).await;
    assert_eq!(first["error"], "", "{first:#}");
    let shown = first["events"].as_array().unwrap();
    assert_eq!(shown.len(), 20, "the newest page: {first:#}");
    assert_eq!(first["older_events_hidden"], false);
    // Newest first on screen: the last registration's event leads.
    assert_eq!(shown[0][2], controller.node("n24").await.id, "{first:#}");

    let after = controller
        .render_admin_page_after_clicks(&controller.admin_token, &["older-events"])
        .await;
    assert_eq!(after["error"], "", "{after:#}");
    assert_eq!(after["events"].as_array().unwrap().len(), total);
    assert_eq!(after["older_events_hidden"], true, "{after:#}");
    assert_eq!(after["events"][total - 1], {
        let oldest = &controller.events().await.events[0];
        json!([oldest.time, oldest.reason, oldest.object_id, oldest.message])
    });
    controller.stop().await;
}
