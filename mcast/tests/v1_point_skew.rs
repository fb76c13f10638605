//! Control protocol skew (docs/version-skew.md): an orchestrator of version 2 drives a
//! point of release 0.1.0 (protocol version 1, no keys) only when the controller listed
//! it as that old (`RunSpec.v1_points`), never because the point said so.
//!
//! The version-1 point is a stub that speaks exactly 0.1.0's protocol on the wire
//! (`git show 64e1e0e:mcast/src/protocol.rs`): `info` answers `protocol_version: 1`;
//! `info`, `receive`, `send` and `stop` are the same requests as version 2 has; a
//! `signed` line is not one of its ops and gets the serde error 0.1.0's point answered
//! (`bad request: unknown variant ...`). Everything else is relayed to a real open
//! point, so the probes are real multicast on loopback.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use measurelab_mcast::auth::{ControlKey, KeyRing};
use measurelab_mcast::mscs::runner::{run_measurement, PointEndpoint, RunSpec};
use measurelab_mcast::result::{ReceiverStatus, RunConfig, RunKind, RunStatus};
use measurelab_mcast::service::{spawn_point, PointHandle};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// The ops release 0.1.0's point knew, in its enum's order (its serde error names them).
const V1_OPS: &str = "`info`, `receive`, `stop`, `send`";

/// A 0.1.0 point in front of a real open point; records the `op` of every line.
struct V1Stub {
    addr: SocketAddr,
    ops: Arc<Mutex<Vec<String>>>,
    _upstream: PointHandle,
}

async fn v1_stub() -> V1Stub {
    let upstream = spawn_point(
        "127.0.0.1:0".parse().unwrap(),
        "old",
        Ipv4Addr::LOCALHOST,
        None,
    )
    .unwrap();
    let target = upstream.local_addr();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ops = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&ops);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(v1_connection(stream, target, Arc::clone(&seen)));
        }
    });
    V1Stub {
        addr,
        ops,
        _upstream: upstream,
    }
}

/// One connection as 0.1.0 served it: line by line until an order, whose conversation
/// (a send's report, a receive's ready/stop/report) is then relayed as it is.
async fn v1_connection(stream: TcpStream, target: SocketAddr, ops: Arc<Mutex<Vec<String>>>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let request: Value = serde_json::from_str(line.trim()).unwrap_or(Value::Null);
        let op = request["op"].as_str().unwrap_or_default().to_string();
        ops.lock().unwrap().push(op.clone());
        match op.as_str() {
            "info" => {
                let answer = serde_json::json!({
                    "type": "info", "name": "old", "data_addr": "127.0.0.1", "protocol_version": 1
                });
                let mut out = answer.to_string();
                out.push('\n');
                write.write_all(out.as_bytes()).await.unwrap();
            }
            "send" | "receive" => {
                let mut upstream = TcpStream::connect(target).await.unwrap();
                upstream.write_all(line.as_bytes()).await.unwrap();
                let mut client = lines.into_inner().reunite(write).unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                return;
            }
            other => {
                let message = format!(
                    "bad request: unknown variant `{other}`, expected one of {V1_OPS} at line 1 column {}",
                    line.trim().len()
                );
                let mut out = serde_json::json!({"type": "error", "message": message}).to_string();
                out.push('\n');
                write.write_all(out.as_bytes()).await.unwrap();
            }
        }
    }
}

fn spec(source: SocketAddr, receiver: SocketAddr, key: &ControlKey, v1: &[&str]) -> RunSpec {
    RunSpec {
        kind: RunKind::Task,
        task_id: Some("skew".into()),
        source: PointEndpoint {
            name: "old".into(),
            control: source,
        },
        receivers: vec![PointEndpoint {
            name: "new".into(),
            control: receiver,
        }],
        group: Ipv4Addr::new(239, 255, rand::random(), rand::random::<u8>().max(1)),
        port: std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(),
        config: RunConfig {
            rate_pps: 200.0,
            packet_size_bytes: 64,
            duration_seconds: 0.5,
            ttl: 1,
            ssm: false,
        },
        clock_sync_bound_us: None,
        receiver_drain_seconds: 0.2,
        control_key: Some(key.clone()),
        v1_points: v1.iter().map(|p| p.to_string()).collect::<BTreeSet<_>>(),
    }
}

#[tokio::test]
async fn a_v1_point_gets_unsigned_orders_only_when_the_controller_says_it_is_old() {
    let key = ControlKey::from_hex("skew", &ControlKey::generate_hex()).unwrap();
    // The upgraded node's point: it holds the task's key and obeys nothing else.
    let new = spawn_point(
        "127.0.0.1:0".parse().unwrap(),
        "new",
        Ipv4Addr::LOCALHOST,
        Some(Arc::new(KeyRing::with_keys([key.clone()]))),
    )
    .unwrap();
    let old = v1_stub().await;

    // The point says version 1, but the controller did not list it: no downgrade, the
    // run fails with the version error and the old point is ordered nothing.
    let refused = run_measurement(&spec(old.addr, new.local_addr(), &key, &[])).await;
    assert_eq!(refused.status, RunStatus::Failed, "{refused:#?}");
    let error = refused.source.error.clone().unwrap_or_default();
    assert!(
        error.contains("point speaks control protocol version 1, this MSCS speaks 2"),
        "{error}"
    );
    assert_eq!(*old.ops.lock().unwrap(), ["info"]);
    assert_eq!(
        new.counters()
            .receives_started
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    // Listed by the controller: the old point gets an unsigned send, the new one still
    // a signed receive, and the probes arrive.
    old.ops.lock().unwrap().clear();
    let document = run_measurement(&spec(old.addr, new.local_addr(), &key, &["old"])).await;
    assert_eq!(document.status, RunStatus::Ok, "{document:#?}");
    assert_eq!(*old.ops.lock().unwrap(), ["info", "send"]);
    let receiver = &document.receivers[0];
    assert_eq!(receiver.status, ReceiverStatus::Ok, "{receiver:#?}");
    let received = receiver
        .metrics
        .as_ref()
        .map(|m| m.packets_received)
        .unwrap_or(0);
    assert!(received > 0, "{receiver:#?}");
    assert_eq!(new.counters().refused.snapshot(), []);

    // The new point listed as old by mistake still answers version 2 and gets signed
    // orders; the old point unlisted as a receiver refuses the signed receive, failing
    // only its own part.
    old.ops.lock().unwrap().clear();
    let mut swapped = spec(new.local_addr(), old.addr, &key, &["new"]);
    swapped.source.name = "new".into();
    swapped.receivers[0].name = "old".into();
    let document = run_measurement(&swapped).await;
    assert_eq!(*old.ops.lock().unwrap(), ["signed"], "{document:#?}");
    assert_eq!(document.receivers[0].status, ReceiverStatus::Missing);
    let error = document.receivers[0].error.clone().unwrap_or_default();
    assert!(error.contains("unknown variant `signed`"), "{error}");
    new.stop().unwrap();
}

/// One line of a 0.1.0 orchestrator's conversation: written as its `ControlRequest`
/// serialized it (`{"op": ..., fields}`), answered with one line.
async fn v1_exchange(
    lines: &mut BufReader<TcpStream>,
    request: &Value,
) -> measurelab_mcast::protocol::ControlResponse {
    let mut out = request.to_string();
    out.push('\n');
    lines.get_mut().write_all(out.as_bytes()).await.unwrap();
    let mut answer = String::new();
    lines.read_line(&mut answer).await.unwrap();
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer:?}"))
}

/// A control connection of an orchestrator whose node's service address is `source`.
async fn connect_from(source: Ipv4Addr, point: SocketAddr) -> BufReader<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source.into(), 0)).unwrap();
    BufReader::new(socket.connect(point).await.unwrap())
}

/// What 0.1.0's `run_measurement` did, line for line: `info` to every point (it goes on
/// only if each says version 1), `receive` to the receiver, `send` to the source, `stop`
/// to the receiver. Returns the receiver's packets, or the first refusal.
async fn v1_orchestrate(
    source_addr: Ipv4Addr,
    sender: SocketAddr,
    receiver: SocketAddr,
    group: Ipv4Addr,
    port: u16,
) -> Result<u64, String> {
    use measurelab_mcast::protocol::ControlResponse;
    let mut to_sender = connect_from(source_addr, sender).await;
    let mut to_receiver = connect_from(source_addr, receiver).await;
    for conversation in [&mut to_sender, &mut to_receiver] {
        match v1_exchange(conversation, &serde_json::json!({"op": "info"})).await {
            ControlResponse::Info(info) if info.protocol_version == 1 => {}
            ControlResponse::Info(info) => {
                return Err(format!(
                    "point speaks control protocol version {}, this MSCS speaks 1",
                    info.protocol_version
                ))
            }
            other => return Err(format!("{other:?}")),
        }
    }
    let receive = serde_json::json!({"op": "receive", "session_id": 41, "group": group,
        "port": port, "ssm_source": null, "max_duration_seconds": 10.0});
    match v1_exchange(&mut to_receiver, &receive).await {
        ControlResponse::Ready { .. } => {}
        ControlResponse::Error { message } => return Err(message),
        other => return Err(format!("{other:?}")),
    }
    let send = serde_json::json!({"op": "send", "session_id": 41, "group": group, "port": port,
        "rate_pps": 200.0, "packet_size_bytes": 64, "duration_seconds": 0.5, "ttl": 1});
    let sent = match v1_exchange(&mut to_sender, &send).await {
        ControlResponse::SenderReport(report) => report.packets_sent,
        ControlResponse::Error { message } => return Err(message),
        other => return Err(format!("{other:?}")),
    };
    let stop = serde_json::json!({"op": "stop", "packets_sent": sent});
    match v1_exchange(&mut to_receiver, &stop).await {
        ControlResponse::ReceiverReport(report) => Ok(report.metrics.packets_received),
        ControlResponse::Error { message } => Err(message),
        other => Err(format!("{other:?}")),
    }
}

/// The other direction (docs/version-skew.md): a task orchestrated by a 0.1.0 node, which
/// cannot sign, against upgraded points. A point obeys its unsigned orders only once the
/// controller marked that node version 1 for that task (the agent puts it into the
/// point's ring), only from that node's service address and only for that task's group
/// and port; everyone else still needs the key proof.
#[tokio::test]
async fn a_v1_orchestrator_drives_upgraded_points_only_for_the_task_the_controller_marked() {
    use measurelab_mcast::auth::LegacyOrchestrator;
    let task_a = ControlKey::from_hex("task-a", &ControlKey::generate_hex()).unwrap();
    let task_b = ControlKey::from_hex("task-b", &ControlKey::generate_hex()).unwrap();
    let ring = || Arc::new(KeyRing::with_keys([task_a.clone(), task_b.clone()]));
    let (sender_ring, receiver_ring) = (ring(), ring());
    let point = |name: &str, keys: &Arc<KeyRing>| {
        spawn_point(
            "127.0.0.1:0".parse().unwrap(),
            name,
            Ipv4Addr::LOCALHOST,
            Some(Arc::clone(keys)),
        )
        .unwrap()
    };
    let sender = point("sender", &sender_ring);
    let receiver = point("receiver", &receiver_ring);
    let free_port = || {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let group_a = Ipv4Addr::new(239, 255, rand::random(), rand::random::<u8>().max(1));
    let (port_a, port_b) = (free_port(), free_port());
    let group_b = Ipv4Addr::new(239, 254, rand::random(), rand::random::<u8>().max(1));
    let old_node = Ipv4Addr::new(127, 0, 0, 2);
    let started = |p: &PointHandle| {
        p.counters()
            .receives_started
            .load(std::sync::atomic::Ordering::Relaxed)
            + p.counters()
                .sends_started
                .load(std::sync::atomic::Ordering::Relaxed)
    };

    // Not marked: the points answer version 2, so the old orchestrator stops there, and
    // an unsigned order from it is refused anyway.
    let refused = v1_orchestrate(
        old_node,
        sender.local_addr(),
        receiver.local_addr(),
        group_a,
        port_a,
    )
    .await;
    assert_eq!(
        refused,
        Err("point speaks control protocol version 2, this MSCS speaks 1".into())
    );
    let mut raw = connect_from(old_node, receiver.local_addr()).await;
    let answer = v1_exchange(
        &mut raw,
        &serde_json::json!({"op": "receive", "session_id": 1, "group": group_a, "port": port_a,
            "ssm_source": null, "max_duration_seconds": 5.0}),
    )
    .await;
    assert!(
        format!("{answer:?}").contains("unauthenticated: receive needs a key proof"),
        "{answer:?}"
    );
    assert_eq!(started(&sender) + started(&receiver), 0);

    // Marked by the controller for task a: the whole 0.1.0 run works, probes flow.
    let marked = LegacyOrchestrator {
        task: "task-a".into(),
        source: old_node.into(),
        group: group_a,
        port: port_a,
    };
    for keys in [&sender_ring, &receiver_ring] {
        keys.replace_legacy([marked.clone()]);
    }
    let received = v1_orchestrate(
        old_node,
        sender.local_addr(),
        receiver.local_addr(),
        group_a,
        port_a,
    )
    .await
    .expect("the marked orchestrator's run");
    assert!(received > 0, "no probe arrived");

    // The same marked node ordering another task's group and port: refused.
    let other_task = v1_orchestrate(
        old_node,
        sender.local_addr(),
        receiver.local_addr(),
        group_b,
        port_b,
    )
    .await;
    let error = other_task.expect_err("an unsigned order for task b was obeyed");
    assert!(error.contains("unauthenticated"), "{error}");
    // Task a's group and port from another address: version 2 and refused.
    let elsewhere = v1_orchestrate(
        Ipv4Addr::new(127, 0, 0, 3),
        sender.local_addr(),
        receiver.local_addr(),
        group_a,
        port_a,
    )
    .await;
    assert_eq!(
        elsewhere,
        Err("point speaks control protocol version 2, this MSCS speaks 1".into())
    );
    sender.stop().unwrap();
    receiver.stop().unwrap();
}

/// A 0.1.0 orchestrator orders its receivers as soon as its own desired state lists the
/// task, and a receiver's agent may apply the desired state that marks it a moment
/// later (a lab run saw `receive needs a key proof` from such a point). The point waits
/// for the mark, and asks its keeper for the desired state at once, as it waits for the
/// key of a signed order's task.
#[tokio::test]
async fn an_unsigned_order_that_arrives_before_the_mark_waits_for_it() {
    use measurelab_mcast::auth::LegacyOrchestrator;
    use measurelab_mcast::protocol::ControlResponse;
    let task_a = ControlKey::from_hex("task-a", &ControlKey::generate_hex()).unwrap();
    let keys = Arc::new(KeyRing::with_keys([task_a]));
    let receiver = spawn_point(
        "127.0.0.1:0".parse().unwrap(),
        "receiver",
        Ipv4Addr::LOCALHOST,
        Some(Arc::clone(&keys)),
    )
    .unwrap();
    let old_node = Ipv4Addr::new(127, 0, 0, 4);
    let group = Ipv4Addr::new(239, 253, rand::random(), rand::random::<u8>().max(1));
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut conversation = connect_from(old_node, receiver.local_addr()).await;
    let receive = serde_json::json!({"op": "receive", "session_id": 43, "group": group,
        "port": port, "ssm_source": null, "max_duration_seconds": 10.0});
    let ordered = tokio::spawn(async move {
        let answer = v1_exchange(&mut conversation, &receive).await;
        (conversation, answer)
    });

    tokio::time::timeout(std::time::Duration::from_secs(30), keys.key_missed())
        .await
        .expect("the point did not ask its keeper for the desired state");
    keys.replace_legacy([LegacyOrchestrator {
        task: "task-a".into(),
        source: old_node.into(),
        group,
        port,
    }]);
    let (mut conversation, answer) = ordered.await.unwrap();
    assert!(
        matches!(answer, ControlResponse::Ready { .. }),
        "{answer:?}"
    );
    let stop = serde_json::json!({"op": "stop", "packets_sent": 0});
    let report = v1_exchange(&mut conversation, &stop).await;
    assert!(
        matches!(report, ControlResponse::ReceiverReport(_)),
        "{report:?}"
    );
    assert_eq!(keys.refused(), 0);
    receiver.stop().unwrap();
}
