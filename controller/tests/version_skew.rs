//! The version-skew policy (docs/version-skew.md) through the real
//! listeners of a controller that believes it is 0.5.0: agents older than
//! 0.4 are refused at Register and Heartbeat with nothing written, 0.4.x and
//! 0.5.x are served, a newer agent is served and counted, a guest agent
//! older than 0.4 is shown and counted but not refused, and providers and
//! CLIs outside the policy get a `Warning` while curl gets none.

mod common;

use common::TestController;
use measurelab_api::http::EventList;
use measurelab_api::node_v1::{StatusReport, VmStatus};

const CONTROLLER: &str = "0.5.0";

async fn start(dir: &std::path::Path) -> TestController {
    TestController::start_with(dir, |config| {
        config.version = CONTROLLER.parse().unwrap();
    })
    .await
}

/// `measurelab_nodes_by_agent_skew` by its `skew` label, from a scrape.
async fn nodes_by_skew(controller: &TestController) -> Vec<(String, f64)> {
    by_skew(controller, "measurelab_nodes_by_agent_skew").await
}

/// Gauge `metric` by its `skew` label, from a scrape.
async fn by_skew(controller: &TestController, metric: &str) -> Vec<(String, f64)> {
    let series = format!("{metric}{{skew=\"");
    let text = controller.metrics_text().await;
    let mut found: Vec<(String, f64)> = text
        .lines()
        .filter_map(|line| line.strip_prefix(series.as_str()))
        .filter_map(|rest| {
            let (skew, value) = rest.split_once("\"} ")?;
            Some((skew.to_string(), value.parse().ok()?))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

#[tokio::test]
async fn an_agent_older_than_the_controller_serves_is_refused_with_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let controller = start(dir.path()).await;
    let mut grpc = controller.grpc().await;
    let events_before: EventList = controller.events().await;

    let mut old = common::register_request(&controller.join_token, "n-old", "");
    old.agent_version = "0.3.9".into();
    let status = grpc.register(old).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert_eq!(
        status.message(),
        "agent_version: the agent on node n-old is 0.3.9, older than this controller \
         (measurelab 0.5.0) serves: it serves agents of 0.4 and later. Upgrade the agent on \
         node n-old to 0.4 or later (docs/version-skew.md)"
    );
    assert!(controller.nodes().await.is_empty());
    assert_eq!(
        controller.events().await.events.len(),
        events_before.events.len(),
        "a refused registration records nothing"
    );

    // Registered while it was supported, then downgraded: the heartbeat is
    // refused and the node keeps what its last served heartbeat said.
    let mut request = common::register_request(&controller.join_token, "n1", "");
    request.agent_version = "0.4.0".into();
    let n1 = grpc.register(request).await.unwrap().into_inner();
    let mut beat = common::heartbeat_request(&n1, 1);
    beat.agent_version = "0.5.2".into();
    grpc.heartbeat(beat).await.unwrap();
    let served = controller.node("n1").await;
    assert_eq!(served.agent_version, "0.5.2");

    let mut beat = common::heartbeat_request(&n1, 2);
    beat.agent_version = "0.3.0-rc.1".into();
    let status = grpc.heartbeat(beat).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("the agent on node n1 is 0.3.0")
            && status
                .message()
                .contains("Upgrade the agent on node n1 to 0.4 or later"),
        "{}",
        status.message()
    );
    let after = controller.node("n1").await;
    assert_eq!(after.agent_version, "0.5.2");
    assert_eq!(after.last_heartbeat, served.last_heartbeat);
    assert_eq!(
        nodes_by_skew(&controller).await,
        [("supported".into(), 1.0)]
    );
    controller.stop().await;
}

#[tokio::test]
async fn a_newer_or_unparseable_agent_is_served_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let controller = start(dir.path()).await;
    let mut grpc = controller.grpc().await;
    let mut newer = common::register_request(&controller.join_token, "n-new", "");
    newer.agent_version = "0.6.0".into();
    let registered = grpc.register(newer).await.unwrap().into_inner();
    let mut beat = common::heartbeat_request(&registered, 1);
    beat.agent_version = "0.6.0".into();
    grpc.heartbeat(beat).await.unwrap();
    // The harness's own version, "test-1", is no MAJOR.MINOR.PATCH.
    controller.register("n-dev", "").await;
    let mut current = common::register_request(&controller.join_token, "n-cur", "");
    current.agent_version = "0.5.0".into();
    grpc.register(current).await.unwrap();

    assert_eq!(controller.node("n-new").await.agent_version, "0.6.0");
    assert_eq!(
        nodes_by_skew(&controller).await,
        [
            ("newer".into(), 1.0),
            ("supported".into(), 1.0),
            ("unknown".into(), 1.0)
        ]
    );
    controller.stop().await;
}

/// A guest agent is judged as an agent is, but never refused: a refusal
/// would stop a running measurement. Its VM shows the version, an older
/// or newer one adds `GuestAgentSupported=False`, and the gauge counts it.
#[tokio::test]
async fn a_guest_agent_older_than_the_controller_serves_is_shown_not_refused() {
    let dir = tempfile::tempdir().unwrap();
    let controller = start(dir.path()).await;
    let n1 = controller.register("n1", "").await;
    controller.create_platform("p", &["n1"]).await;
    let client = controller.client();
    let mut ids = Vec::new();
    for name in ["old", "current", "silent"] {
        controller.create_vm(name, "p", "n1").await;
        ids.push(client.get_vm(name).await.unwrap().id);
    }
    let status = |id: &str, guest_agent_version: &str| VmStatus {
        vm_id: id.to_string(),
        actual_state: "running".into(),
        observed_generation: 1,
        guest_agent_version: guest_agent_version.into(),
        ..Default::default()
    };
    let outcome = controller
        .grpc()
        .await
        .report_status(StatusReport {
            node_id: n1.node_id.clone(),
            node_secret: n1.node_secret.clone(),
            observed_generation: 1,
            vms: vec![
                status(&ids[0], "0.3.9"),
                status(&ids[1], "0.5.1"),
                status(&ids[2], ""),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(outcome.refused.is_empty(), "{:?}", outcome.refused);

    let skew_conditions = |vm: &measurelab_api::http::Vm| -> Vec<(String, String, String)> {
        vm.conditions
            .iter()
            .filter(|c| c.condition_type == "GuestAgentSupported")
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
            .collect()
    };
    let old = client.get_vm(&ids[0]).await.unwrap();
    assert_eq!(old.guest_agent_version.as_deref(), Some("0.3.9"));
    assert_eq!(old.actual_state, "running", "served, not refused");
    assert_eq!(
        skew_conditions(&old),
        [(
            "False".to_string(),
            "GuestAgentTooOld".to_string(),
            "the guest agent is 0.3.9, older than this controller (measurelab 0.5.0) serves: \
             it serves guest agents of 0.4 and later. The VM keeps running; upgrade the guest \
             agent in its appliance to 0.4 or later (docs/version-skew.md)"
                .to_string()
        )]
    );
    let current = client.get_vm(&ids[1]).await.unwrap();
    assert_eq!(current.guest_agent_version.as_deref(), Some("0.5.1"));
    assert_eq!(skew_conditions(&current), []);
    let silent = client.get_vm(&ids[2]).await.unwrap();
    assert_eq!(silent.guest_agent_version, None);
    assert_eq!(skew_conditions(&silent), []);
    // The list shows what the single VM does.
    let listed = client.list_vms("").await.unwrap();
    let listed_old = listed.iter().find(|vm| vm.id == ids[0]).unwrap();
    assert_eq!(skew_conditions(listed_old), skew_conditions(&old));

    assert_eq!(
        by_skew(&controller, "measurelab_vms_by_guest_agent_skew").await,
        [("older".into(), 1.0), ("supported".into(), 1.0)]
    );
    controller.stop().await;
}

#[tokio::test]
async fn providers_and_clis_outside_the_policy_get_a_warning_and_an_answer() {
    let dir = tempfile::tempdir().unwrap();
    let controller = start(dir.path()).await;
    let get = |user_agent: &'static str| {
        let request = reqwest::Client::new()
            .get(controller.url("/v1/nodes"))
            .bearer_auth(&controller.admin_token)
            .header("user-agent", user_agent);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let warnings: Vec<String> = response
                .headers()
                .get_all("warning")
                .iter()
                .map(|value| value.to_str().unwrap().to_string())
                .collect();
            (status, warnings)
        }
    };
    let (status, warnings) = get("measurelab-provider/0.3.9").await;
    assert_eq!(status, 200);
    assert_eq!(
        warnings,
        [
            "299 - \"measurelab-provider 0.3.9 is older than this controller (measurelab 0.5.0) \
          serves: it serves clients of 0.4 and later; upgrade measurelab-provider to 0.4 or \
          later (docs/version-skew.md)\""
        ]
    );
    let (status, warnings) = get("measurelab-cli/0.6.0").await;
    assert_eq!(status, 200);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0]
            .contains("measurelab-cli 0.6.0 is newer than this controller (measurelab 0.5.0)"),
        "{warnings:?}"
    );
    for quiet in [
        "measurelab-provider/0.4.1",
        "measurelab-cli/0.5.0",
        "curl/8.5.0",
    ] {
        let (status, warnings) = get(quiet).await;
        assert_eq!((status, warnings), (200, vec![]), "{quiet}");
    }
    controller.stop().await;
}
