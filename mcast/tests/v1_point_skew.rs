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
