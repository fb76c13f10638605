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
//! any                                            {"type":"error","message":...}
//! ```
//!
//! Version 1. A point answers an unknown `op` with an error, never by closing silently.

use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::metrics::ReceiverMetrics;
use crate::probe_log::ProbeLogReport;
use crate::receiver::TimestampSource;
use crate::sender::SenderReport;

/// Protocol version spoken by this build.
pub const PROTOCOL_VERSION: u32 = 1;

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

    #[test]
    fn responses_use_a_type_tag() {
        let line = serde_json::to_string(&ControlResponse::Ready {
            kernel_timestamps: true,
        })
        .unwrap();
        assert_eq!(line, r#"{"type":"ready","kernel_timestamps":true}"#);
    }
}
