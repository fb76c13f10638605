//! Control protocol between the MSCS and a measurement point (`mcast-point serve`).
//!
//! Line-delimited JSON over TCP: each message is one JSON object on one line. A
//! connection carries one conversation, and its end is meaningful: if a point dies mid-run
//! its connection closes and the MSCS records that receiver as failed at once, without
//! waiting for a timeout.
//!
//! ```text
//! MSCS -> point                                  point -> MSCS
//! {"op":"info"}                                  {"type":"info",...}
//! {"op":"receive",...}                           {"type":"ready",...}   (joined, queueing)
//! {"op":"stop","packets_sent":N}                 {"type":"receiver_report",...}
//! {"op":"send",...}                              {"type":"sender_report",...}
//! {"op":"signed","task":..,"request":"{..}",..}  the answer to the inner request
//! any                                            {"type":"error","message":...}
//! ```
//!
//! Version 2: `signed` carries a request with its per-task key proof
//! ([`SignedRequest`]); a point started with keys refuses `send` and
//! `receive` outside it. Version 1 points answer `signed` with an unknown-op error. A
//! point answers an unknown `op` with an error, never by closing silently.

use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::metrics::ReceiverMetrics;
use crate::probe_log::ProbeLogReport;
use crate::receiver::TimestampSource;
use crate::sender::SenderReport;

/// Protocol version spoken by this build.
pub const PROTOCOL_VERSION: u32 = 2;

/// How long an orchestrator waits for a point's answer to `info` or `receive` (release
/// 0.1.0's waited as long). A point that answers later is answering no one.
pub const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Longest request line a point reads. Requests are a few hundred bytes; the bound is
/// what keeps a peer that never sends a newline from growing the point's memory.
pub const MAX_REQUEST_LINE_BYTES: usize = 64 * 1024;
/// Longest answer line the MSCS reads from a point: a receiver report carries the
/// per-probe record (up to [`crate::probe_log::DEFAULT_PROBE_LOG_CAPACITY`] delays of up
/// to 20 digits each plus the receipt bitmap), so the bound is generous but finite.
pub const MAX_RESPONSE_LINE_BYTES: usize = 64 * 1024 * 1024;
/// Longest send a point accepts, s (the sender's own limit).
pub const MAX_SEND_DURATION_SECONDS: f64 = 86_400.0;
/// Longest receive a point accepts, s: the longest send plus the MSCS's safety margin
/// and room for slow paths.
pub const MAX_RECEIVE_DURATION_SECONDS: f64 = MAX_SEND_DURATION_SECONDS + 3_600.0;
/// Default ceiling on the probe rate a point accepts from one `send`, pps: a single
/// control message must not be able to order an unbounded flood. Points raise it with
/// `mcast-point serve --max-rate-pps`.
pub const DEFAULT_MAX_RATE_PPS: f64 = 100_000.0;

/// A request field a point refuses, named as it is on the wire.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// The offending field.
    pub field: &'static str,
    /// Why it is refused.
    pub reason: String,
}

fn field_error(field: &'static str, reason: String) -> Result<(), FieldError> {
    Err(FieldError { field, reason })
}

/// Checks a duration in seconds from the wire: finite, positive, at most `max`. Every
/// duration goes through here before `Duration::from_secs_f64`, which panics on values
/// out of range (`1e20`, NaN).
pub fn check_seconds(field: &'static str, seconds: f64, max: f64) -> Result<(), FieldError> {
    if seconds.is_finite() && seconds > 0.0 && seconds <= max {
        Ok(())
    } else {
        field_error(field, format!("{seconds} is not in (0, {max}] seconds"))
    }
}

/// What one bounded line read got.
#[derive(Debug, PartialEq, Eq)]
pub enum LineRead {
    /// A whole line (without its newline) is in the buffer.
    Line,
    /// The peer closed the connection before any byte of a new line.
    Eof,
    /// The line grew past the bound; the connection must be closed, since the rest of
    /// the line is still unread and the buffer holds only its start.
    TooLong,
}

/// Reads one `\n`-terminated line into `line` (cleared first), holding at most
/// `max_bytes` of it: `BufRead::read_line` grows its buffer for as long as the peer sends
/// without a newline. A line cut short by the end of the stream counts as a line.
pub fn read_bounded_line(
    reader: &mut impl std::io::BufRead,
    line: &mut Vec<u8>,
    max_bytes: usize,
) -> std::io::Result<LineRead> {
    line.clear();
    loop {
        let available = match reader.fill_buf() {
            Ok(available) => available,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        if available.is_empty() {
            return Ok(if line.is_empty() {
                LineRead::Eof
            } else {
                LineRead::Line
            });
        }
        let (taken, complete) = match available.iter().position(|b| *b == b'\n') {
            Some(newline) => (newline, true),
            None => (available.len(), false),
        };
        if line.len() + taken > max_bytes {
            return Ok(LineRead::TooLong);
        }
        line.extend_from_slice(&available[..taken]);
        reader.consume(if complete { taken + 1 } else { taken });
        if complete {
            return Ok(LineRead::Line);
        }
    }
}

impl ReceiveRequest {
    /// Checks the fields a point uses before joining; the error names the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        if !self.group.is_multicast() {
            return field_error(
                "group",
                format!("{} is not an IPv4 multicast address", self.group),
            );
        }
        if self.port == 0 {
            return field_error("port", "must be 1..=65535".into());
        }
        check_seconds(
            "max_duration_seconds",
            self.max_duration_seconds,
            MAX_RECEIVE_DURATION_SECONDS,
        )
    }
}

impl SendRequest {
    /// Checks the fields a point uses before sending, against the point's rate ceiling;
    /// the error names the field.
    pub fn validate(&self, max_rate_pps: f64) -> Result<(), FieldError> {
        if !self.group.is_multicast() {
            return field_error(
                "group",
                format!("{} is not an IPv4 multicast address", self.group),
            );
        }
        if self.port == 0 {
            return field_error("port", "must be 1..=65535".into());
        }
        if !(self.rate_pps.is_finite() && self.rate_pps > 0.0 && self.rate_pps <= max_rate_pps) {
            return field_error(
                "rate_pps",
                format!(
                    "{} is not in (0, {max_rate_pps}] (this point's rate ceiling)",
                    self.rate_pps
                ),
            );
        }
        let sizes = crate::wire::HEADER_LEN..=crate::wire::MAX_PROBE_LEN;
        if !sizes.contains(&self.packet_size_bytes) {
            return field_error(
                "packet_size_bytes",
                format!(
                    "{} is not in {}..={}",
                    self.packet_size_bytes,
                    sizes.start(),
                    sizes.end()
                ),
            );
        }
        check_seconds(
            "duration_seconds",
            self.duration_seconds,
            MAX_SEND_DURATION_SECONDS,
        )?;
        if !(1..=255).contains(&self.ttl) {
            return field_error("ttl", format!("{} is not in 1..=255", self.ttl));
        }
        Ok(())
    }
}

/// A request from the MSCS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    /// Who are you?
    Info,
    /// Join and start receiving; answer `ready`, then wait for `stop`.
    Receive(ReceiveRequest),
    /// End a `receive`: drain and report.
    Stop {
        /// The sender's count, if the sender reported; otherwise the receiver uses the
        /// highest sequence number plus one.
        packets_sent: Option<u64>,
        /// How long to keep reading for probes still in flight before reporting;
        /// default [`crate::point::DRAIN_AFTER_STOP`]. Raise it for long paths.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        drain_seconds: Option<f64>,
    },
    /// Send probes, then answer with a sender report.
    Send(SendRequest),
    /// Another request with its per-task key proof.
    Signed(SignedRequest),
}

impl ControlRequest {
    /// The op as it is on the wire, for errors and logs.
    pub fn op(&self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Receive(_) => "receive",
            Self::Stop { .. } => "stop",
            Self::Send(_) => "send",
            Self::Signed(_) => "signed",
        }
    }
}

/// A request with its key proof: the `signed` op. The proof is made and checked in
/// `crate::auth`; this is only its wire shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedRequest {
    /// The task whose key signed it.
    pub task: String,
    /// When it was signed, Unix ms.
    pub timestamp_ms: i64,
    /// `crate::auth::NONCE_BYTES` random bytes, hex.
    pub nonce: String,
    /// HMAC-SHA256 of `crate::auth::mac_input`, hex.
    pub mac: String,
    /// The request line itself (a [`ControlRequest`] as JSON, never another `signed`).
    pub request: String,
}

/// Parameters of a receive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiveRequest {
    /// Session to accept.
    pub session_id: u64,
    /// Group to join.
    pub group: Ipv4Addr,
    /// UDP port.
    pub port: u16,
    /// SSM source, if the run is SSM.
    pub ssm_source: Option<Ipv4Addr>,
    /// The receiver gives up on its own after this long, so a vanished MSCS cannot leave
    /// it joined forever.
    pub max_duration_seconds: f64,
}

/// Parameters of a send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendRequest {
    /// Session id for the probes.
    pub session_id: u64,
    /// Group.
    pub group: Ipv4Addr,
    /// UDP port.
    pub port: u16,
    /// Probes per second.
    pub rate_pps: f64,
    /// UDP payload bytes per probe.
    pub packet_size_bytes: usize,
    /// How long to send.
    pub duration_seconds: f64,
    /// IP TTL.
    pub ttl: u32,
}

/// A point's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlResponse {
    /// Answer to `info`.
    Info(PointInfo),
    /// The receiver has joined.
    Ready {
        /// Whether SO_TIMESTAMPNS was enabled on the socket.
        kernel_timestamps: bool,
    },
    /// Answer to `stop`.
    ReceiverReport(Box<ReceiverReport>),
    /// Answer to `send`.
    SenderReport(SenderReport),
    /// Anything that went wrong.
    Error {
        /// What went wrong.
        message: String,
    },
}

/// Identity of a point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointInfo {
    /// The point's name.
    pub name: String,
    /// Its data-plane address (multicast interface and SSM source address).
    pub data_addr: Ipv4Addr,
    /// [`PROTOCOL_VERSION`] of the point.
    pub protocol_version: u32,
}

/// A point's registration with its MSCS, repeated as its heartbeat: the body of
/// `POST /points` on the MSCS's HTTP API (`mcast-point serve --mscs ADDR`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// The point's name, unique among the MSCS's points.
    pub name: String,
    /// Its data-plane address (multicast interface and SSM source address).
    pub data_addr: Ipv4Addr,
    /// Where its `mcast-point serve` listener is reachable from the MSCS.
    pub control_addr: SocketAddr,
    /// [`PROTOCOL_VERSION`] of the point; the MSCS refuses any other.
    pub protocol_version: u32,
}

/// The MSCS's answer to a [`Registration`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegistrationAck {
    /// Register again (heartbeat) this often.
    pub heartbeat_seconds: f64,
    /// A point not heard from for this long leaves the rotation until it is heard again.
    pub deadline_seconds: f64,
    /// [`PROTOCOL_VERSION`] of the MSCS.
    pub protocol_version: u32,
}

/// What a receiver measured in one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiverReport {
    /// The reporting point.
    pub point: String,
    /// The session measured.
    pub session_id: u64,
    /// Where the receive timestamps came from.
    pub timestamp_source: TimestampSource,
    /// Resolution of the receiver's CLOCK_REALTIME, ns.
    pub clock_resolution_ns: u64,
    /// Valid probes of other sessions, dropped.
    pub foreign_session_packets: u64,
    /// Datagrams on the port that were not valid probes.
    pub malformed_packets: u64,
    /// The statistics.
    pub metrics: ReceiverMetrics,
    /// Per-probe receipts and delays over the window `0..metrics.packets_sent`; absent
    /// from points built before it and for runs longer than the point records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_log: Option<ProbeLogReport>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_use_an_op_tag() {
        let line = serde_json::to_string(&ControlRequest::Stop {
            packets_sent: Some(5),
            drain_seconds: None,
        })
        .unwrap();
        assert_eq!(line, r#"{"op":"stop","packets_sent":5}"#);
        let parsed: ControlRequest = serde_json::from_str(r#"{"op":"info"}"#).unwrap();
        assert_eq!(parsed, ControlRequest::Info);
        assert!(serde_json::from_str::<ControlRequest>(r#"{"op":"dance"}"#).is_err());
    }

    fn send() -> SendRequest {
        SendRequest {
            session_id: 1,
            group: Ipv4Addr::new(239, 1, 1, 1),
            port: 5000,
            rate_pps: 1_000.0,
            packet_size_bytes: 200,
            duration_seconds: 1.0,
            ttl: 8,
        }
    }

    #[test]
    fn send_requests_are_checked_field_by_field() {
        send().validate(DEFAULT_MAX_RATE_PPS).unwrap();
        type Mutation = fn(&mut SendRequest);
        let cases: [(&str, Mutation); 12] = [
            ("group", |r| r.group = Ipv4Addr::new(10, 0, 0, 1)),
            ("port", |r| r.port = 0),
            ("rate_pps", |r| r.rate_pps = 1_000_000.0),
            ("rate_pps", |r| r.rate_pps = 100_001.0),
            ("rate_pps", |r| r.rate_pps = f64::NAN),
            ("rate_pps", |r| r.rate_pps = 0.0),
            ("packet_size_bytes", |r| r.packet_size_bytes = 31),
            ("packet_size_bytes", |r| r.packet_size_bytes = usize::MAX),
            ("duration_seconds", |r| r.duration_seconds = 1e20),
            ("duration_seconds", |r| r.duration_seconds = f64::INFINITY),
            ("ttl", |r| r.ttl = 0),
            ("ttl", |r| r.ttl = 256),
        ];
        for (field, mutate) in cases {
            let mut request = send();
            mutate(&mut request);
            let err = request.validate(DEFAULT_MAX_RATE_PPS).unwrap_err();
            assert_eq!(err.field, field, "{request:?}");
        }
        // The ceiling is the point's, not a constant.
        let mut fast = send();
        fast.rate_pps = 200_000.0;
        fast.validate(250_000.0).unwrap();
    }

    #[test]
    fn line_reads_stop_at_the_bound() {
        let mut line = Vec::new();
        let mut input = std::io::Cursor::new(b"{\"op\":\"info\"}\nabc".to_vec());
        assert_eq!(
            read_bounded_line(&mut input, &mut line, 16).unwrap(),
            LineRead::Line
        );
        assert_eq!(line, b"{\"op\":\"info\"}");
        assert_eq!(
            read_bounded_line(&mut input, &mut line, 16).unwrap(),
            LineRead::Line
        );
        assert_eq!(line, b"abc");
        assert_eq!(
            read_bounded_line(&mut input, &mut line, 16).unwrap(),
            LineRead::Eof
        );
        // A line of exactly the bound passes, one byte more does not; a small buffer
        // makes the line arrive in many pieces.
        let long = [
            vec![b'x'; 16],
            b"\n".to_vec(),
            vec![b'y'; 17],
            b"\n".to_vec(),
        ]
        .concat();
        let mut input = std::io::BufReader::with_capacity(3, std::io::Cursor::new(long));
        assert_eq!(
            read_bounded_line(&mut input, &mut line, 16).unwrap(),
            LineRead::Line
        );
        assert_eq!(line.len(), 16);
        assert_eq!(
            read_bounded_line(&mut input, &mut line, 16).unwrap(),
            LineRead::TooLong
        );
        assert!(line.len() <= 16);
    }

    #[test]
    fn receive_durations_are_bounded() {
        let mut request = ReceiveRequest {
            session_id: 1,
            group: Ipv4Addr::new(239, 1, 1, 1),
            port: 5000,
            ssm_source: None,
            max_duration_seconds: 90.0,
        };
        request.validate().unwrap();
        for bad in [
            1e20,
            f64::NAN,
            -1.0,
            0.0,
            MAX_RECEIVE_DURATION_SECONDS * 2.0,
        ] {
            request.max_duration_seconds = bad;
            let err = request.validate().unwrap_err();
            assert_eq!(err.field, "max_duration_seconds");
            assert!(
                err.to_string().starts_with("max_duration_seconds: "),
                "{err}"
            );
        }
    }

    #[test]
    fn responses_use_a_type_tag() {
        let line = serde_json::to_string(&ControlResponse::Ready {
            kernel_timestamps: true,
        })
        .unwrap();
        assert_eq!(line, r#"{"type":"ready","kernel_timestamps":true}"#);
    }
}
