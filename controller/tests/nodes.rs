//! Node lifecycle through the real gRPC and HTTP listeners.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{heartbeat_request, register_request, TestController};
use measurelab_api::http::{LogList, NodeStatus};
use measurelab_api::node_v1::{LogLine, ShipLogsRequest};

const LONG: Duration = Duration::from_secs(60);

#[tokio::test]
async fn register_and_heartbeat_make_the_node_online() {
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start(dir.path(), LONG).await;
    let registered = controller.register("node-a", "").await;
    assert_eq!(registered.heartbeat_interval_seconds, 1);

    let before = controller.node("node-a").await;
    assert_eq!(before.status, NodeStatus::Online);
    assert_eq!(before.last_heartbeat, None);

    let response = controller
        .grpc()
        .await
        .heartbeat(heartbeat_request(&registered, 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.heartbeat_interval_seconds, 1);

    let nodes = controller.nodes().await;
    assert_eq!(nodes.len(), 1);
    let node = &nodes[0];
    assert_eq!(node.id, registered.node_id);
    assert_eq!(node.name, "node-a");
    assert_eq!(node.status, NodeStatus::Online);
    let last = node.last_heartbeat.as_deref().expect("heartbeat recorded");
    time::OffsetDateTime::parse(last, &time::format_description::well_known::Rfc3339)
        .expect("last_heartbeat is RFC 3339");
    // Heartbeats replace what registration reported.
    assert_eq!(node.agent_version, "test-2");
    assert_eq!(node.capabilities.ovs_datapath_types, vec!["netdev"]);
    assert_eq!(node.resources.cpu_count, 2);
    assert_eq!(node.labels.get("rack").map(String::as_str), Some("r1"));
    assert_eq!(node.management_address, "10.254.0.11");
    // Lookup by id works as well as by name.
    assert_eq!(controller.node(&registered.node_id).await.name, "node-a");

    let reasons: Vec<_> = controller
        .events()
        .await
        .events
        .into_iter()
        .map(|e| e.reason)
        .collect();
    assert_eq!(reasons, vec!["NodeRegistered"]);
    controller.stop().await;
}

#[tokio::test]
async fn nodes_are_listed_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start(dir.path(), LONG).await;
    for name in ["zulu", "alpha", "mike"] {
        controller.register(name, "").await;
    }
    let names: Vec<_> = controller
        .nodes()
        .await
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, vec!["alpha", "mike", "zulu"]);
    controller.stop().await;
}

#[tokio::test]
async fn bad_join_token_is_refused_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start(dir.path(), LONG).await;
    let status = controller
        .grpc()
        .await
        .register(register_request("not-the-token", "intruder", ""))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(
        status.message().contains("join_token"),
        "{}",
        status.message()
    );

    assert!(controller.nodes().await.is_empty(), "nothing registered");
    let events = controller.events().await.events;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].reason, "RegistrationRefused");
    assert_eq!(events[0].object_id, "intruder");
    controller.stop().await;
}

/// Register is open to anyone who reaches the port: a flood of bad tokens
/// must not cost a stored row each. The refusals are still all accounted
/// for: the first as its own event, the rest in per-period summaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_bad_registrations_are_counted_not_stored_one_by_one() {
    const ATTEMPTS: u64 = 20_000;
    const SENDERS: u64 = 16;
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start_with(dir.path(), |config| {
        config.refused_registration_report_interval = Duration::from_secs(1);
    })
    .await;
    let grpc = controller.grpc().await;
    let mut senders = tokio::task::JoinSet::new();
    for sender in 0..SENDERS {
        let mut grpc = grpc.clone();
        senders.spawn(async move {
            for attempt in 0..ATTEMPTS / SENDERS {
                let token = if attempt % 2 == 0 { "wrong" } else { "" };
                let name = format!("intruder-{sender}-{attempt}");
                let status = grpc
                    .register(register_request(token, &name, ""))
                    .await
                    .unwrap_err();
                assert_eq!(status.code(), tonic::Code::Unauthenticated);
            }
        });
    }
    while let Some(outcome) = senders.join_next().await {
        outcome.unwrap();
    }

    // Summaries come at the end of each 1 s period: wait until every
    // refusal is accounted for.
    let refused_in = |events: &[measurelab_api::http::Event]| -> u64 {
        events
            .iter()
            .map(|e| match e.reason.as_str() {
                "RegistrationRefused" => 1,
                "RegistrationsRefused" => e
                    .message
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("summary without a count: {}", e.message)),
                _ => 0,
            })
            .sum()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let events = loop {
        let events = controller.events().await.events;
        if refused_in(&events) >= ATTEMPTS {
            break events;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {ATTEMPTS} refusals accounted for: {events:#?}",
            refused_in(&events)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(refused_in(&events), ATTEMPTS);
    // One event for the first refusal of each period and one summary per
    // period: a handful, however long the flood took, never one per attempt.
    assert!(
        events.len() < 100,
        "{} events for {ATTEMPTS} refusals",
        events.len()
    );
    let summary = events
        .iter()
        .find(|e| e.reason == "RegistrationsRefused")
        .expect("a summary");
    assert!(
        summary.message.contains("wrong join token: "),
        "{}",
        summary.message
    );
    assert!(
        summary.message.contains("no join token: "),
        "{}",
        summary.message
    );
    assert!(controller.nodes().await.is_empty());
    controller.stop().await;
}

#[tokio::test]
async fn invalid_grpc_fields_are_named_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start(dir.path(), LONG).await;
    let mut grpc = controller.grpc().await;
    for (name, expected) in [
        ("", "name: must not be empty"),
        ("Upper", "name: contains 'U'"),
    ] {
        let status = grpc
            .register(register_request(&controller.join_token, name, ""))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().starts_with(expected),
            "{}",
            status.message()
        );
    }
    let long = "a".repeat(64);
    let status = grpc
        .register(register_request(&controller.join_token, &long, ""))
        .await
        .unwrap_err();
    assert!(
        status.message().starts_with("name: "),
        "{}",
        status.message()
    );
    let status = grpc
        .register(register_request(&controller.join_token, "ok", "not-a-uuid"))
        .await
        .unwrap_err();
    assert!(
        status.message().starts_with("node_id: "),
        "{}",
        status.message()
    );
    assert!(controller.nodes().await.is_empty());

    let registered = controller.register("good", "").await;
    let mut bad_secret = heartbeat_request(&registered, 1);
    bad_secret.node_secret = "wrong".into();
    let status = grpc.heartbeat(bad_secret).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let mut unknown = heartbeat_request(&registered, 1);
    unknown.node_id = uuid::Uuid::new_v4().to_string();
    let status = grpc.heartbeat(unknown).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(controller.node("good").await.last_heartbeat, None);
    controller.stop().await;
}

#[tokio::test]
async fn silent_node_goes_offline_and_comes_back_on_its_next_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    // 15 heartbeats of margin for the beating node, so a loaded CI machine
    // that stalls the test for a few hundred ms cannot make it flap.
    let offline_after = Duration::from_millis(1500);
    let controller = TestController::start(dir.path(), offline_after).await;
    let quiet = controller.register("quiet", "").await;
    let chatty = controller.register("chatty", "").await;
    let mut grpc = controller.grpc().await;

    // chatty keeps beating well inside the deadline; quiet says nothing.
    let beating = common::keep_beating(grpc.clone(), chatty.clone());
    let nodes = controller
        .wait_for("quiet offline", |nodes| {
            nodes
                .iter()
                .any(|n| n.name == "quiet" && n.status == NodeStatus::Offline)
        })
        .await;
    let chatty_node = nodes.iter().find(|n| n.name == "chatty").unwrap();
    assert_eq!(
        chatty_node.status,
        NodeStatus::Online,
        "the beating node stays online"
    );

    grpc.heartbeat(heartbeat_request(&quiet, 1)).await.unwrap();
    assert_eq!(controller.node("quiet").await.status, NodeStatus::Online);
    beating.abort();

    let events = controller.events().await.events;
    let for_quiet: Vec<_> = events
        .iter()
        .filter(|e| e.object_id == quiet.node_id)
        .map(|e| e.reason.as_str())
        .collect();
    assert_eq!(
        for_quiet,
        vec!["NodeRegistered", "NodeOffline", "NodeOnline"]
    );
    assert!(
        !events
            .iter()
            .any(|e| e.object_id == chatty.node_id && e.reason == "NodeOffline"),
        "chatty never went offline"
    );
    assert_eq!(controller.nodes().await.len(), 2, "no new registration");
    controller.stop().await;
}

#[tokio::test]
async fn reregistration_keeps_the_node_row() {
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start(dir.path(), LONG).await;
    let first = controller.register("node-r", "").await;
    let mut grpc = controller.grpc().await;
    // A restarted agent: its persisted id and secret.
    let mut again = register_request(&controller.join_token, "node-r", &first.node_id);
    again.node_secret = first.node_secret.clone();
    let second = grpc.register(again).await.unwrap().into_inner();
    assert_eq!(second.node_id, first.node_id);
    assert_ne!(second.node_secret, first.node_secret, "secret rotates");
    // Lost its id but kept the secret: the name and the secret identify it.
    let mut by_name = register_request(&controller.join_token, "node-r", "");
    by_name.node_secret = second.node_secret.clone();
    let third = grpc.register(by_name).await.unwrap().into_inner();
    assert_eq!(third.node_id, first.node_id);
    // The old secret no longer works, the new one does.
    let status = grpc
        .heartbeat(heartbeat_request(&first, 1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    grpc.heartbeat(heartbeat_request(&third, 1)).await.unwrap();
    assert_eq!(controller.nodes().await.len(), 1);

    // A different node may not take the name with its own id.
    let other = controller.register("node-s", "").await;
    let status = grpc
        .register(register_request(
            &controller.join_token,
            "node-r",
            &other.node_id,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::AlreadyExists);
    controller.stop().await;
}

#[tokio::test]
async fn shipped_logs_appear_newest_last() {
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start(dir.path(), LONG).await;
    let registered = controller.register("logger", "").await;
    // Stamped now: the retention prune that runs at start deletes lines
    // older than 7 days, and may run after the lines are shipped.
    let now = time::OffsetDateTime::now_utc()
        .replace_millisecond(0)
        .unwrap();
    let now_ms = now.unix_timestamp() * 1000;
    let lines = (0..5)
        .map(|i| LogLine {
            timestamp_unix_ms: now_ms + i,
            level: "info".into(),
            target: "agent".into(),
            message: format!("line {i}"),
        })
        .collect();
    let accepted = controller
        .grpc()
        .await
        .ship_logs(ShipLogsRequest {
            node_id: registered.node_id.clone(),
            node_secret: registered.node_secret.clone(),
            lines,
        })
        .await
        .unwrap()
        .into_inner()
        .accepted;
    assert_eq!(accepted, 5);
    let all: LogList = controller.get_json("/v1/nodes/logger/logs").await;
    let messages: Vec<_> = all.lines.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(
        messages,
        vec!["line 0", "line 1", "line 2", "line 3", "line 4"]
    );
    assert_eq!(all.lines[0].level, "info");
    let expected_time = now
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    assert_eq!(all.lines[0].time, expected_time);
    let newest: LogList = controller.get_json("/v1/nodes/logger/logs?limit=2").await;
    let messages: Vec<_> = newest.lines.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(messages, vec!["line 3", "line 4"]);
    let by_id: LogList = controller
        .get_json(&format!("/v1/nodes/{}/logs", registered.node_id))
        .await;
    assert_eq!(by_id.lines.len(), 5);
    controller.stop().await;
}

#[tokio::test]
async fn restart_keeps_nodes_history_and_logs() {
    let dir = tempfile::tempdir().unwrap();
    // Long enough that the checks right after the restart run inside the
    // grace period even on a loaded machine.
    let offline_after = Duration::from_millis(2000);
    let controller = TestController::start(dir.path(), offline_after).await;
    let admin_token = controller.admin_token.clone();
    let join_token = controller.join_token.clone();
    let one = controller.register("one", "").await;
    let two = controller.register("two", "").await;
    let mut grpc = controller.grpc().await;
    grpc.heartbeat(heartbeat_request(&one, 1)).await.unwrap();
    grpc.ship_logs(ShipLogsRequest {
        node_id: one.node_id.clone(),
        node_secret: one.node_secret.clone(),
        lines: vec![LogLine {
            // Now: a line older than the node-log retention would be pruned
            // at the restart.
            timestamp_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64,
            level: "warn".into(),
            target: "agent".into(),
            message: "before restart".into(),
        }],
    })
    .await
    .unwrap();
    let events_before = controller.events().await.events;
    let heartbeat_before = controller.node("one").await.last_heartbeat;
    drop(grpc);
    controller.stop().await;

    let controller = TestController::start(dir.path(), offline_after).await;
    assert_eq!(controller.admin_token, admin_token, "tokens are reused");
    assert_eq!(controller.join_token, join_token);
    let nodes = controller.nodes().await;
    assert_eq!(nodes.len(), 2, "same nodes, no duplicates");
    let one_after = nodes.iter().find(|n| n.name == "one").unwrap();
    assert_eq!(one_after.id, one.node_id);
    assert_eq!(one_after.last_heartbeat, heartbeat_before);
    assert_eq!(
        one_after.agent_version, "test-2",
        "heartbeat data was durable"
    );
    // Grace period: right after startup nobody is offline yet.
    assert_eq!(one_after.status, NodeStatus::Online);
    let events_after = controller.events().await.events;
    assert_eq!(&events_after[..events_before.len()], &events_before[..]);
    let logs: LogList = controller.get_json("/v1/nodes/one/logs").await;
    assert_eq!(logs.lines.len(), 1);
    assert_eq!(logs.lines[0].message, "before restart");

    // The old credentials still work: heartbeat without registering again.
    let mut grpc = controller.grpc().await;
    let beating = {
        let mut grpc = grpc.clone();
        let one = one.clone();
        tokio::spawn(async move {
            for sequence in 2.. {
                grpc.heartbeat(heartbeat_request(&one, sequence))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    controller
        .wait_for("two offline after the grace", |nodes| {
            nodes
                .iter()
                .any(|n| n.name == "two" && n.status == NodeStatus::Offline)
        })
        .await;
    assert_eq!(controller.node("one").await.status, NodeStatus::Online);
    grpc.heartbeat(heartbeat_request(&two, 1)).await.unwrap();
    assert_eq!(controller.node("two").await.status, NodeStatus::Online);
    beating.abort();
    assert_eq!(controller.nodes().await.len(), 2);
    let new_events: Vec<_> = controller.events().await.events[events_before.len()..]
        .iter()
        .map(|e| e.reason.clone())
        .collect();
    assert!(
        !new_events.iter().any(|r| r.contains("Registered")),
        "no registration after restart: {new_events:?}"
    );
    assert!(
        new_events.contains(&"NodeOnline".to_string()),
        "{new_events:?}"
    );
    controller.stop().await;
}

#[tokio::test]
async fn desired_state_and_status_need_node_credentials() {
    use measurelab_api::node_v1::{DesiredStateRequest, StatusReport};
    let dir = tempfile::tempdir().unwrap();
    let controller = TestController::start(dir.path(), LONG).await;
    let registered = controller.register("node-d", "").await;
    let mut grpc = controller.grpc().await;
    let desired = grpc
        .get_desired_state(DesiredStateRequest {
            node_id: registered.node_id.clone(),
            node_secret: registered.node_secret.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let heartbeat = grpc
        .heartbeat(heartbeat_request(&registered, 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(desired.generation, heartbeat.desired_generation);
    assert!(desired.vms.is_empty() && desired.platforms.is_empty());

    let status = grpc
        .get_desired_state(DesiredStateRequest {
            node_id: registered.node_id.clone(),
            node_secret: "wrong".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    let ack = grpc
        .report_status(StatusReport {
            node_id: registered.node_id.clone(),
            node_secret: registered.node_secret.clone(),
            observed_generation: desired.generation,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.desired_generation, desired.generation);
    controller.stop().await;
}
