//! A real point (the service host's in-process point, `service::spawn_point`) on loopback
//! against a hostile peer (issue 10 §5): a 3 GiB request line, a `1e20` duration, a
//! flood order, a probe with sequence `u64::MAX` and more connections than the cap. The
//! point must refuse each with an error, never panic, keep serving valid requests, and
//! keep its memory bounded while the line streams in.
//!
//! Multicast stays on `lo` (joins and sends on 127.0.0.1), so no namespace is needed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use measurelab_mcast::auth::{ControlKey, KeyRing};
use measurelab_mcast::point::DEFAULT_MAX_CONNECTIONS;
use measurelab_mcast::protocol::{
    ControlRequest, ControlResponse, ReceiveRequest, SendRequest, MAX_REQUEST_LINE_BYTES,
};
use measurelab_mcast::service::{spawn_point, PointHandle};
use measurelab_mcast::wire::Probe;

const LINE_BYTES: u64 = 3 << 30;
/// Growth of this process's RSS the test tolerates while the line streams: the point's
/// buffers are 64 KiB, the rest is allocator noise. Without the bound the point holds
/// every byte of the line.
const RSS_GROWTH_LIMIT_KIB: u64 = 128 * 1024;
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

struct Control {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Control {
    fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
        Self {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        }
    }

    fn send_line(&mut self, line: &str) {
        self.writer.write_all(line.as_bytes()).unwrap();
        self.writer.write_all(b"\n").unwrap();
    }

    fn request(&mut self, request: &ControlRequest) -> ControlResponse {
        self.send_line(&serde_json::to_string(request).unwrap());
        self.answer()
    }

    fn answer(&mut self) -> ControlResponse {
        let mut line = String::new();
        let read = self.reader.read_line(&mut line).unwrap();
        assert!(
            read > 0,
            "the point closed the connection instead of answering"
        );
        serde_json::from_str(&line).unwrap()
    }
}

fn error_message(response: ControlResponse) -> String {
    match response {
        ControlResponse::Error { message } => message,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn assert_serves_info(point: &PointHandle) {
    match Control::open(point.local_addr()).request(&ControlRequest::Info) {
        ControlResponse::Info(info) => assert_eq!(info.name, point.name()),
        other => panic!("expected info, got {other:?}"),
    }
}

/// Streams a line of [`LINE_BYTES`] without a newline from one reused 1 MiB buffer,
/// until the point closes the connection. Returns the bytes the point accepted and the
/// point's answer.
fn stream_endless_line(addr: SocketAddr, baseline_rss_kib: u64) -> (u64, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut answer_stream = stream.try_clone().unwrap();
    answer_stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .unwrap();
    // The answer is read while the line is still streaming, before the connection is
    // reset under it.
    let answer = std::thread::spawn(move || {
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        while answer.last() != Some(&b'\n') {
            match answer_stream.read(&mut byte) {
                Ok(0) | Err(_) => break,
                Ok(_) => answer.push(byte[0]),
            }
        }
        String::from_utf8_lossy(&answer).into_owned()
    });
    let chunk = vec![b'x'; 1 << 20];
    let mut sent = 0u64;
    while sent < LINE_BYTES {
        match stream.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => sent += n as u64,
        }
        if sent % (64 << 20) < chunk.len() as u64 {
            let growth = vm_rss_kib().saturating_sub(baseline_rss_kib);
            assert!(
                growth < RSS_GROWTH_LIMIT_KIB,
                "RSS grew by {growth} KiB after {sent} bytes of one line"
            );
        }
    }
    (sent, answer.join().unwrap())
}

#[test]
fn a_hostile_peer_is_refused_and_the_point_keeps_serving() {
    let point = spawn_point(
        "127.0.0.1:0".parse().unwrap(),
        "svc",
        Ipv4Addr::LOCALHOST,
        None,
    )
    .unwrap();
    let addr = point.local_addr();
    assert_serves_info(&point);
    let baseline_rss_kib = vm_rss_kib();

    // 1. A 3 GiB line: refused with an error once past the bound, connection closed.
    let (sent, answer) = stream_endless_line(addr, baseline_rss_kib);
    assert!(
        sent < LINE_BYTES,
        "the point read the whole {LINE_BYTES}-byte line"
    );
    assert!(
        answer.contains(&format!("longer than {MAX_REQUEST_LINE_BYTES} bytes")),
        "answer to the long line: {answer:?}"
    );
    let growth = vm_rss_kib().saturating_sub(baseline_rss_kib);
    assert!(growth < RSS_GROWTH_LIMIT_KIB, "RSS grew by {growth} KiB");
    assert_serves_info(&point);

    // 2. Out-of-range numbers: errors naming the field, and the same connection still
    //    serves.
    let group = Ipv4Addr::new(239, 255, rand::random(), rand::random::<u8>().max(1));
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut control = Control::open(addr);
    let receive = ReceiveRequest {
        session_id: 7,
        group,
        port,
        ssm_source: None,
        max_duration_seconds: 1e20,
    };
    let message = error_message(control.request(&ControlRequest::Receive(receive.clone())));
    assert!(message.contains("max_duration_seconds"), "{message}");
    let flood = SendRequest {
        session_id: 7,
        group,
        port,
        rate_pps: 1_000_000.0,
        packet_size_bytes: 64,
        duration_seconds: 1.0,
        ttl: 1,
    };
    let message = error_message(control.request(&ControlRequest::Send(flood.clone())));
    assert!(message.contains("rate_pps"), "{message}");
    let endless = SendRequest {
        rate_pps: 10.0,
        duration_seconds: 1e20,
        ..flood
    };
    let message = error_message(control.request(&ControlRequest::Send(endless)));
    assert!(message.contains("duration_seconds"), "{message}");
    control.send_line(r#"{"op":"receive","session_id":7,"group":"239.1.1.1","port":5000,"ssm_source":null,"max_duration_seconds":1e400}"#);
    let message = error_message(control.answer());
    assert!(message.contains("bad request"), "{message}");
    assert!(matches!(
        control.request(&ControlRequest::Info),
        ControlResponse::Info(_)
    ));
    assert_eq!(
        point.counters().refused.snapshot(),
        [
            ("bad_request", 1),
            ("invalid_receive", 1),
            ("invalid_send", 2),
            ("line_too_long", 1)
        ],
        "each refusal so far under its reason"
    );

    // 3. A probe with sequence u64::MAX in a real receive: counted as malformed, the
    //    valid probes around it measured, no panic.
    let receive = ReceiveRequest {
        max_duration_seconds: 30.0,
        ..receive
    };
    match control.request(&ControlRequest::Receive(receive)) {
        ControlResponse::Ready { .. } => {}
        other => panic!("expected ready, got {other:?}"),
    }
    // Bound to 127.0.0.1, the socket sends its multicast out of lo.
    let sender = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .unwrap();
    sender.set_multicast_if_v4(&Ipv4Addr::LOCALHOST).unwrap();
    sender.set_multicast_loop_v4(true).unwrap();
    let sender: UdpSocket = sender.into();
    let destination = SocketAddrV4::new(group, port);
    for sequence in [0, u64::MAX, 1, 2] {
        let probe = Probe {
            session_id: 7,
            sequence,
            send_time_ns: u64::MAX,
        };
        sender
            .send_to(&probe.encode(64).unwrap(), destination)
            .unwrap();
    }
    let report = match control.request(&ControlRequest::Stop {
        packets_sent: Some(3),
        drain_seconds: Some(0.5),
    }) {
        ControlResponse::ReceiverReport(report) => report,
        other => panic!("expected a receiver report, got {other:?}"),
    };
    assert_eq!(report.malformed_packets, 1, "{report:?}");
    assert_eq!(report.metrics.packets_received, 3, "{report:?}");
    assert_eq!(report.metrics.packets_lost, 0);
    assert_serves_info(&point);
    drop(control);

    // 4. More connections than the cap: the one past it is refused with an error (the
    //    earlier connections may still hold slots, so it is at the latest that one), and
    //    the slots come back when the connections close.
    let held: Vec<TcpStream> = (0..DEFAULT_MAX_CONNECTIONS)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    let mut extra = Control::open(addr);
    let message = error_message(extra.answer());
    assert!(
        message.contains("too many control connections"),
        "{message}"
    );
    drop(held);
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    loop {
        let mut control = Control::open(addr);
        control.send_line(r#"{"op":"info"}"#);
        match control.answer() {
            ControlResponse::Info(_) => break,
            ControlResponse::Error { message } if Instant::now() < deadline => {
                assert!(message.contains("too many"), "{message}");
            }
            other => panic!("the point did not give its slots back: {other:?}"),
        }
    }
    let refused = point.counters().refused.snapshot();
    assert!(
        refused
            .iter()
            .any(|(reason, n)| *reason == "too_many_connections" && *n >= 1),
        "{refused:?}"
    );

    point.stop().unwrap();
}

/// The point's own counters: nothing was sent on a refused order.
fn sends_started(point: &PointHandle) -> u64 {
    point.counters().sends_started.load(Ordering::Relaxed)
}

#[test]
fn a_keyed_point_sends_only_for_the_holder_of_a_tasks_key() {
    let task_a = ControlKey::from_hex("task-a", &ControlKey::generate_hex()).unwrap();
    let task_b = ControlKey::from_hex("task-b", &ControlKey::generate_hex()).unwrap();
    // The point serves task B only.
    let keys = Arc::new(KeyRing::with_keys([task_b.clone()]));
    let point = spawn_point(
        "127.0.0.1:0".parse().unwrap(),
        "svc",
        Ipv4Addr::LOCALHOST,
        Some(Arc::clone(&keys)),
    )
    .unwrap();
    let send = ControlRequest::Send(SendRequest {
        session_id: 3,
        group: Ipv4Addr::new(239, 255, 3, 3),
        port: 6333,
        rate_pps: 100_000.0,
        packet_size_bytes: 64,
        duration_seconds: 0.2,
        ttl: 1,
    });
    let mut control = Control::open(point.local_addr());
    // Info stays open: it is how an MSCS checks the protocol version.
    assert!(matches!(
        control.request(&ControlRequest::Info),
        ControlResponse::Info(_)
    ));
    let message = error_message(control.request(&send));
    assert!(message.contains("send needs a key proof"), "{message}");
    // Task A's key naming task B: the proof does not match.
    let mut stolen = match task_a.sign(&send).unwrap() {
        ControlRequest::Signed(signed) => signed,
        other => panic!("{other:?}"),
    };
    stolen.task = "task-b".into();
    let message = error_message(control.request(&ControlRequest::Signed(stolen)));
    assert!(message.contains("does not match"), "{message}");
    // A captured valid order, replayed: refused, even though its MAC is right.
    let valid = task_b.sign(&send).unwrap();
    let ControlResponse::SenderReport(report) = control.request(&valid) else {
        panic!("the right key was refused");
    };
    assert!(report.packets_sent > 0, "{report:?}");
    let message = error_message(control.request(&valid));
    assert!(message.contains("replayed"), "{message}");
    // A receive is an order too.
    let receive = ControlRequest::Receive(ReceiveRequest {
        session_id: 3,
        group: Ipv4Addr::new(239, 255, 3, 3),
        port: 6333,
        ssm_source: None,
        max_duration_seconds: 5.0,
    });
    let message = error_message(control.request(&receive));
    assert!(message.contains("receive needs a key proof"), "{message}");

    assert_eq!(
        sends_started(&point),
        1,
        "only the signed send started a sender"
    );
    let counters = point.counters();
    assert_eq!(counters.receives_started.load(Ordering::Relaxed), 0);
    assert_eq!(counters.refused_unauthenticated.load(Ordering::Relaxed), 4);
    assert_eq!(
        counters.refused.snapshot(),
        [("bad_mac", 1), ("missing", 2), ("replayed", 1)],
        "each refusal under its reason"
    );
    assert_eq!(keys.refused(), 4);
    point.stop().unwrap();
}
