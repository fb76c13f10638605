//! Two controller replicas on one PostgreSQL database (issue 13 §4): the
//! liveness sweep runs on the leader only, and counts heartbeats the other
//! replica heard; nodes, desired state and tokens cross between them.

mod common;

use std::time::{Duration, Instant};

use common::{heartbeat_request, TestController};
use measurelab_api::http::NodeStatus;

/// The advisory key of the leader lock (store/sql/pg/keys.rs), as pg_locks
/// shows a bigint key: high and low 32 bits.
const LEADER_KEY: i64 = 0x6d6c_6162_0000_0002;

/// How many sessions hold the leader lock of this database (pg_locks shows
/// every database's, and tests run beside each other on one server).
fn leader_locks(url: &str) -> i64 {
    let url = url.to_string();
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        client
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                   AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 1",
                &[&(LEADER_KEY >> 32), &(LEADER_KEY & 0xffff_ffff)],
            )
            .unwrap()
            .get(0)
    })
    .join()
    .unwrap()
}

/// `measurelab_controller_leader` in the replica's `/metrics`.
async fn leader_gauge(replica: &TestController) -> i64 {
    let text = replica.metrics_text().await;
    let line = text
        .lines()
        .find(|l| l.starts_with("measurelab_controller_leader "))
        .unwrap_or_else(|| panic!("no leader gauge in:\n{text}"));
    line["measurelab_controller_leader ".len()..]
        .trim()
        .parse()
        .unwrap()
}

async fn replica(dir: &std::path::Path, url: &str, offline_after: Duration) -> TestController {
    TestController::start_replica(dir, url, |config| config.offline_after = offline_after).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_heard_by_the_other_replica_stays_online_and_a_silent_one_goes_offline_once() {
    let db = measurelab_testbed::pg::database().unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // As in nodes.rs: 15 heartbeats of margin for the beating node.
    let offline_after = Duration::from_millis(1500);
    let a = replica(dir_a.path(), db.url(), offline_after).await;
    // A leads before B exists, so the sweeps that matter are A's.
    let deadline = Instant::now() + Duration::from_secs(10);
    while leader_locks(db.url()) != 1 {
        assert!(
            Instant::now() < deadline,
            "replica A never took the leader lock"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let quiet = a.register("quiet", "").await;
    let chatty = a.register("chatty", "").await;
    // B loads the nodes at start (it learns of later ones only on restart:
    // change notices between replicas are not built yet).
    let b = replica(dir_b.path(), db.url(), offline_after).await;
    assert_eq!(leader_locks(db.url()), 1);
    // Operators see which replica leads: A says 1, B says 0.
    assert_eq!(leader_gauge(&a).await, 1, "A");
    assert_eq!(leader_gauge(&b).await, 0, "B");

    // chatty beats to B only; quiet says nothing. Both were last heard by
    // A at registration, so A's own image finds both silent at once.
    let beating = common::keep_beating(b.grpc().await, chatty.clone());
    let nodes = a
        .wait_for("quiet offline at the leader", |nodes| {
            nodes
                .iter()
                .any(|n| n.name == "quiet" && n.status == NodeStatus::Offline)
        })
        .await;
    let chatty_at_a = nodes.iter().find(|n| n.name == "chatty").unwrap();
    assert_eq!(
        chatty_at_a.status,
        NodeStatus::Online,
        "heartbeats B recorded keep the node online at A"
    );

    // B, not leading, never sweeps: quiet goes offline once. Absence can
    // only be watched over a window: four of B's sweep periods.
    let watch_until = Instant::now() + offline_after;
    loop {
        let events = a.events().await.events;
        let offline_events = events
            .iter()
            .filter(|e| e.reason == "NodeOffline")
            .map(|e| e.object_id.as_str())
            .collect::<Vec<_>>();
        assert_eq!(
            offline_events,
            [quiet.node_id.as_str()],
            "{offline_events:?}"
        );
        if Instant::now() >= watch_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    beating.abort();
    b.stop().await;
    a.stop().await;
}

/// Poll `check` until it holds, failing after 10 s with `what`.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_registered_or_revoked_through_one_replica_is_known_to_the_other() {
    let db = measurelab_testbed::pg::database().unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let long = Duration::from_secs(60);
    let a = replica(dir_a.path(), db.url(), long).await;
    let b = replica(dir_b.path(), db.url(), long).await;
    // B started from an empty data dir and took A's tokens from the
    // database: an operator's token and a node's join token work at both.
    b.expect_as(&a.admin_token, reqwest::Method::GET, "/v1/nodes", None, 200)
        .await;
    assert_eq!(b.join_token, a.join_token);

    // Registered through A after B loaded its image: B takes its heartbeats.
    let node = a.register("n1", "").await;
    let mut at_b = b.grpc().await;
    let mut sequence = 0;
    eventually("B accepts the heartbeats of a node A registered", || {
        sequence += 1;
        let (mut grpc, request) = (at_b.clone(), heartbeat_request(&node, sequence));
        async move { grpc.heartbeat(request).await.is_ok() }
    })
    .await;

    // Revoked through A: B refuses it, and says so in its API.
    let (status, body) = a
        .call(reqwest::Method::POST, "/v1/nodes/n1/revoke", None)
        .await;
    assert_eq!(status, 200, "{body}");
    eventually("B refuses the node A revoked", || {
        sequence += 1;
        let (mut grpc, request) = (at_b.clone(), heartbeat_request(&node, sequence));
        async move {
            grpc.heartbeat(request)
                .await
                .is_err_and(|status| status.code() == tonic::Code::Unauthenticated)
        }
    })
    .await;
    assert_eq!(b.node("n1").await.status, NodeStatus::Revoked);
    let refused = at_b
        .heartbeat(heartbeat_request(&node, sequence + 1))
        .await
        .unwrap_err();
    assert!(refused.message().contains("revoked"), "{refused:?}");
    b.stop().await;
    a.stop().await;
}

/// The next hint, if it comes well within the stream's keepalive: one that
/// does was pushed by a change.
async fn next_hint(
    hints: &mut tonic::Streaming<measurelab_api::node_v1::DesiredStateHint>,
) -> Result<
    Result<Option<measurelab_api::node_v1::DesiredStateHint>, tonic::Status>,
    tokio::time::error::Elapsed,
> {
    tokio::time::timeout(Duration::from_secs(5), hints.message()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desired_state_change_through_one_replica_wakes_the_agent_streaming_from_the_other() {
    let db = measurelab_testbed::pg::database().unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let long = Duration::from_secs(60);
    let a = replica(dir_a.path(), db.url(), long).await;
    let node = a.register("n1", "").await;
    let b = replica(dir_b.path(), db.url(), long).await;
    let mut hints = b
        .grpc()
        .await
        .watch_desired_state(measurelab_api::node_v1::WatchDesiredStateRequest {
            node_id: node.node_id.clone(),
            node_secret: node.node_secret.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = next_hint(&mut hints).await.unwrap().unwrap().unwrap();
    assert_eq!(first.desired_generation, 0);

    a.create_platform("p", &["n1"]).await;
    let pushed = next_hint(&mut hints)
        .await
        .expect("B pushed the change A committed")
        .unwrap()
        .unwrap();
    assert!(pushed.desired_generation > 0, "{pushed:?}");
    let answered = b
        .grpc()
        .await
        .heartbeat(heartbeat_request(&node, 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answered.desired_generation, pushed.desired_generation);
    drop(hints);
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_appliance_file_uploaded_through_one_replica_is_served_by_those_sharing_its_dir() {
    use sha2::{Digest, Sha256};
    let db = measurelab_testbed::pg::database().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let long = Duration::from_secs(60);
    let sharing = |dir| {
        TestController::start_replica(dir, db.url(), |config| {
            config.offline_after = long;
            config.appliance_dir = Some(shared.path().to_path_buf());
        })
    };
    let a = sharing(dirs[0].path()).await;
    let b = sharing(dirs[1].path()).await;
    // C keeps its files in its own data dir, as replicas did before.
    let c = replica(dirs[2].path(), db.url(), long).await;

    let kernel = b"a kernel only A was sent".to_vec();
    let digest = hex::encode(Sha256::digest(&kernel));
    let (status, body) = common::upload_appliance_file(&a, &a.admin_token, &digest, &kernel).await;
    assert_eq!(status, 201, "{body}");
    let image = |name: &str| {
        serde_json::json!({"name": name, "version": "1", "arch": "x86_64", "os": "busybox",
                           "kernel_sha256": digest, "min_memory_mib": 64,
                           "backends": ["namespace"]})
    };
    let (status, body) = b
        .call(
            reqwest::Method::POST,
            "/v1/appliances",
            Some(image("via-b")),
        )
        .await;
    assert_eq!(status, 201, "B sees the file A stored: {body}");
    let (status, body) = c
        .call(
            reqwest::Method::POST,
            "/v1/appliances",
            Some(image("via-c")),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("kernel_sha256")),
        "C, with a directory of its own, does not: {body}"
    );
    c.stop().await;
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_made_or_revoked_through_one_replica_counts_at_the_other() {
    let db = measurelab_testbed::pg::database().unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let long = Duration::from_secs(60);
    let a = replica(dir_a.path(), db.url(), long).await;
    let b = replica(dir_b.path(), db.url(), long).await;

    // Made through A after B loaded its token book.
    let token = a.tenant_token("t1", "alice", "member").await;
    let status_at_b = || async {
        b.call_as(&token, reqwest::Method::GET, "/v1/platforms", None)
            .await
            .0
    };
    eventually("B takes the token A made", || async {
        status_at_b().await == 200
    })
    .await;

    // Revoked through A: B refuses it.
    let (tokens_status, list) = a.call(reqwest::Method::GET, "/v1/tokens", None).await;
    assert_eq!(tokens_status, 200, "{list}");
    let listed = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "alice")
        .unwrap_or_else(|| panic!("alice in {list}"));
    let id = listed["id"].as_str().unwrap().to_string();
    a.expect(
        reqwest::Method::DELETE,
        &format!("/v1/tokens/{id}"),
        None,
        200,
    )
    .await;
    eventually("B refuses the token A revoked", || async {
        status_at_b().await == 401
    })
    .await;
    b.stop().await;
    a.stop().await;
}

/// Flow archives across replicas: A and B share one flow root, each runs a
/// real nfcapd on a port of its own, and the node exports one flow to each,
/// as an agent does before and after failing over from A to B. Either
/// replica answers with both records; each collector wrote into its own
/// sub-directory of the root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_collected_by_either_replica_are_read_through_both() {
    use common::nfcapd::{netflow_v5, udp_bound, unix_now, V5Flow};
    use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
    let db = measurelab_testbed::pg::database().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let root = shared.path().join("flows");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Two free UDP ports, held together so they differ.
    let ports = {
        let (x, y) = (
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            UdpSocket::bind("127.0.0.1:0").unwrap(),
        );
        (
            x.local_addr().unwrap().port(),
            y.local_addr().unwrap().port(),
        )
    };
    let sharing = |dir, port: u16| {
        let root = root.clone();
        TestController::start_replica(dir, db.url(), move |config| {
            config.offline_after = Duration::from_secs(60);
            config.flow_dir = Some(root);
            let mut collector = measurelab_controller::FlowCollectorConfig::new(SocketAddr::from(
                (Ipv4Addr::LOCALHOST, port),
            ));
            collector.rotate_seconds = 2;
            config.flow_collector = Some(collector);
        })
    };
    let a = sharing(dir_a.path(), ports.0).await;
    let b = sharing(dir_b.path(), ports.1).await;

    // The node's exports come from its management address: loopback here.
    let mut request = common::register_request(&a.join_token, "n1", "");
    request.management_address = "127.0.0.1".into();
    a.grpc().await.register(request).await.unwrap();
    let platform = a
        .create(
            "/v1/platforms",
            serde_json::json!({"name": "watched", "nodes": ["n1"], "flow_monitoring": true}),
        )
        .await;
    let subnet: Ipv4Addr = platform["subnet"]
        .as_str()
        .and_then(|s| s.split('/').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no subnet in {platform}"));
    let host = |last: u8| {
        let [w, x, y, _] = subnet.octets();
        Ipv4Addr::new(w, x, y, last)
    };

    let deadline = Instant::now() + Duration::from_secs(20);
    while !(udp_bound(ports.0) && udp_bound(ports.1)) {
        assert!(
            Instant::now() < deadline,
            "the collectors never bound their ports"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exporter = UdpSocket::bind("127.0.0.1:0").unwrap();
    let flow = |src, dst, (src_port, dst_port), packets| {
        netflow_v5(&V5Flow {
            src,
            dst,
            src_port,
            dst_port,
            packets,
            exported_at: unix_now(),
        })
    };
    exporter
        .send_to(
            &flow(host(10), host(11), (5001, 6001), 7),
            ("127.0.0.1", ports.0),
        )
        .unwrap();
    exporter
        .send_to(
            &flow(host(12), host(13), (5002, 6002), 9),
            ("127.0.0.1", ports.1),
        )
        .unwrap();

    // A record is readable once its collector closed the file (2 s).
    let path = format!("/v1/platforms/{}/flows", platform["id"].as_str().unwrap());
    for (name, replica) in [("A", &a), ("B", &b)] {
        let deadline = Instant::now() + Duration::from_secs(30);
        let flows = loop {
            let (status, body) = replica.call(reqwest::Method::GET, &path, None).await;
            assert_eq!(status, 200, "through {name}: {body}");
            let flows = body["flows"].as_array().cloned().unwrap_or_default();
            if flows.len() >= 2 {
                break flows;
            }
            assert!(
                Instant::now() < deadline,
                "through {name}, the flows of both collectors never showed: {body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let mut seen: Vec<_> = flows
            .iter()
            .map(|f| {
                (
                    f["src_addr"].as_str().unwrap_or_default().to_string(),
                    f["dst_port"].as_u64(),
                    f["packets"].as_u64(),
                    f["node"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            vec![
                (host(10).to_string(), Some(6001), Some(7), "n1".to_string()),
                (host(12).to_string(), Some(6002), Some(9), "n1".to_string()),
            ],
            "through {name}"
        );
    }
    // Each collector has a directory of its own under the root, holding
    // closed files, so neither writes over the other's.
    let mut collectors = Vec::new();
    for entry in std::fs::read_dir(&root).unwrap() {
        let entry = entry.unwrap();
        assert!(
            entry.file_type().unwrap().is_dir(),
            "{:?} in the root",
            entry.path()
        );
        let closed = std::fs::read_dir(entry.path())
            .unwrap()
            .filter_map(|f| f.ok())
            .any(|f| {
                let name = f.file_name().to_string_lossy().to_string();
                name.starts_with("nfcapd.") && !name.starts_with("nfcapd.current")
            });
        assert!(
            closed,
            "no closed nfcapd file in {}",
            entry.path().display()
        );
        collectors.push(entry.file_name());
    }
    assert_eq!(collectors.len(), 2, "{collectors:?}");
    b.stop().await;
    a.stop().await;
}
