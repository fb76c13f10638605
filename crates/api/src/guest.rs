//! The guest channel: what a guest agent (inside a VM) and its node agent say
//! to each other.
//!
//! Framing: one JSON object per line (`\n`-terminated), UTF-8, over a byte
//! stream - a unix socket for namespace guests (`MEASURELAB_CHANNEL`), a
//! virtio-serial port for QEMU guests
//! (`/dev/virtio-ports/org.measurelab.guest.0` inside, a libvirt unix socket
//! outside), a PV channel for Xen guests (`/dev/hvc1`), or a serial port
//! (`/dev/ttyS1`) where a guest has nothing better. Every object has a
//! `"type"` tag.
//!
//! Programs travel in bounded pieces ([`AgentMessage::ProgramBegin`], then
//! [`AgentMessage::ProgramChunk`]s of at most [`PROGRAM_CHUNK_BYTES`]), and
//! the guest checks the SHA-256 of the whole before it runs anything; a
//! transfer that does not add up is answered with
//! [`GuestMessage::ProgramTransferFailed`] and sent again. So lines stay
//! small on both sides, and a transport that loses bytes (an emulated UART
//! has no flow control) costs a retry, never a corrupt run. A reader skips (and
//! logs) lines it cannot parse, so one bad message never ends a session and
//! a newer peer's new message types are ignored by an older one.
//!
//! Guests talk only to their node agent, never to the management network:
//! the node agent relays results and task polls to the controller.
//!
//! [`LineFramer`] is the shared, I/O-free splitter with a length bound, so
//! both sides treat an oversized or garbled line the same way.

use std::collections::BTreeMap;

// The line framing lives in `crate::lines` so `crate::exec` can use it
// without importing this module (which imports `crate::exec`).
pub use crate::lines::{encode_line, FramingError, LineFramer};

use serde::{Deserialize, Serialize};

use crate::http::Resources;

/// Longest line a node agent accepts from a guest (a result document with
/// many receivers fits easily; a runaway guest cannot grow our memory).
pub const MAX_GUEST_LINE_BYTES: usize = 4 * 1024 * 1024;

/// Longest line a guest accepts from its node agent: a program chunk
/// ([`PROGRAM_CHUNK_BYTES`], base64) with room to spare. A legacy single-line
/// `run` larger than this is dropped by the guest; the node agent sends those
/// only to guests that do not announce [`FEATURE_PROGRAM_CHUNKS`].
pub const MAX_AGENT_LINE_BYTES: usize = 1024 * 1024;

/// Most program bytes in one [`AgentMessage::ProgramChunk`] (before base64).
pub const PROGRAM_CHUNK_BYTES: usize = 256 * 1024;

/// Largest program a guest accepts ([`AgentMessage::ProgramBegin`]`.size`).
pub const MAX_PROGRAM_BYTES: u64 = 64 * 1024 * 1024;

/// Hello feature: the guest understands `program_begin`/`program_chunk`.
pub const FEATURE_PROGRAM_CHUNKS: &str = "program_chunks";

/// Bound of the `stdout_tail` / `stderr_tail` a guest reports, in bytes.
pub const OUTPUT_TAIL_BYTES: usize = 8 * 1024;

/// Guest -> node agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GuestMessage {
    /// First message of every connection (and the answer to
    /// [`AgentMessage::HelloRequest`]). The node agent checks `vm_id` against
    /// the VM the channel belongs to.
    Hello {
        /// The VM id (UUID, hyphenated) as the guest learned it from
        /// `MEASURELAB_VM_ID` or `measurelab.vm_id=` on the kernel cmdline.
        vm_id: String,
        /// Version of the guest agent.
        agent_version: String,
        /// What the guest understands beyond the first protocol version,
        /// e.g. [`FEATURE_PROGRAM_CHUNKS`]. Absent from older guests.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        features: Vec<String>,
    },
    /// Sent every heartbeat interval.
    Heartbeat {
        /// Resource use inside the guest.
        usage: Resources,
    },
    /// The guest agent's own log lines since the last `log` message.
    Log {
        /// Formatted lines, oldest first.
        lines: Vec<String>,
    },
    /// State of a distributed program (on start, on exit, and while running
    /// when its output changed).
    ProgramStatus {
        /// The deployment the program belongs to.
        deployment_id: String,
        /// Where the run is.
        status: ProgramRunState,
        /// Exit code once it exited normally; `None` while running, when it
        /// never started, or when a signal ended it.
        #[serde(default)]
        exit_code: Option<i32>,
        /// Last [`OUTPUT_TAIL_BYTES`] of standard output.
        #[serde(default)]
        stdout_tail: String,
        /// Last [`OUTPUT_TAIL_BYTES`] of standard error. For `failed`, the
        /// reason the program could not be started.
        #[serde(default)]
        stderr_tail: String,
    },
    /// A chunked program transfer did not add up (a chunk out of order, the
    /// size or the SHA-256 of what arrived is wrong, or it stalled): nothing
    /// was written or run, and the guest forgot the deployment, so the node
    /// agent can send it again.
    ProgramTransferFailed {
        /// The deployment whose program did not arrive intact.
        deployment_id: String,
        /// What was wrong.
        reason: String,
    },
    /// A measurement result document posted by a program to the local
    /// platform API (`POST /results`).
    Result {
        /// Task the document answers.
        task_id: String,
        /// The document (schema `measurelab.mcast.result/v1`).
        document: serde_json::Value,
        /// The guest's id for this post; the node agent answers it with
        /// [`AgentMessage::ResultAck`] once the document is durable (spooled
        /// to disk or committed by the controller), or refused. Absent
        /// (older guests): no answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    /// A program asked the local platform API for its tasks (`GET /tasks`);
    /// the node agent answers with [`AgentMessage::Tasks`].
    PollTasks,
    /// The MSCS's point list, posted to the local platform API
    /// (`POST /points`), checked with [`check_points`]. Each one replaces
    /// the previous list whole.
    Points {
        /// The points in the MSCS's rotation order.
        points: Vec<GuestPoint>,
    },
    /// A frame of an exec or copy session the node agent opened (guests
    /// that announce [`crate::exec::FEATURE_EXEC`]).
    Exec {
        /// The session id the node agent chose.
        session: String,
        /// The frame.
        frame: crate::exec::ExecFrame,
    },
}

/// Most points in one list ([`GuestMessage::Points`]); the MSCS keeps at most
/// 256.
pub const MAX_POINTS: usize = 256;
/// Longest point name, characters (the MSCS's own limit).
pub const MAX_POINT_NAME_CHARS: usize = 64;

/// One measurement point as the MSCS lists it: the shape of an element of
/// the MSCS's `GET /points`, so it posts its own list unchanged.
// Unknown fields are ignored, so a newer MSCS can add some.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestPoint {
    /// Point name (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// Control listener, `IP:port`.
    pub control_addr: String,
    /// Data-plane IPv4; `None` for a static point that never registered.
    #[serde(default)]
    pub data_addr: Option<String>,
    /// `static` or `registered`.
    pub origin: String,
    /// `active` or `missing`.
    pub state: String,
    /// Last registration or heartbeat, ms since the Unix epoch.
    #[serde(default)]
    pub last_heartbeat_unix_ms: Option<u64>,
    /// Control protocol version it registered with.
    #[serde(default)]
    pub protocol_version: Option<u32>,
}

/// A point list field that is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct PointListError {
    /// The field at fault, e.g. `points[2].control_addr`.
    pub field: String,
    /// Why.
    pub reason: String,
}

/// Checks a point list field by field. The list comes from a guest, which
/// may send anything; the guest agent and the controller both check it.
pub fn check_points(points: &[GuestPoint]) -> Result<(), PointListError> {
    let bad = |field: String, reason: String| Err(PointListError { field, reason });
    if points.len() > MAX_POINTS {
        return bad(
            "points".into(),
            format!("has {} entries; at most {MAX_POINTS}", points.len()),
        );
    }
    for (i, point) in points.iter().enumerate() {
        let field = |name: &str| format!("points[{i}].{name}");
        let chars = point.name.chars().count();
        if chars == 0 || chars > MAX_POINT_NAME_CHARS {
            return bad(
                field("name"),
                format!("must be 1 to {MAX_POINT_NAME_CHARS} characters, not {chars}"),
            );
        }
        if let Some(c) = point
            .name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return bad(
                field("name"),
                format!("contains {c:?}; use letters, digits, '-', '_' and '.'"),
            );
        }
        if points[..i].iter().any(|p| p.name == point.name) {
            return bad(field("name"), format!("{:?} is listed twice", point.name));
        }
        if point.control_addr.parse::<std::net::SocketAddr>().is_err() {
            return bad(
                field("control_addr"),
                format!("{:?} is not IP:port", truncated(&point.control_addr)),
            );
        }
        if let Some(data) = &point.data_addr {
            if data.parse::<std::net::Ipv4Addr>().is_err() {
                return bad(
                    field("data_addr"),
                    format!("{:?} is not an IPv4 address", truncated(data)),
                );
            }
        }
        if !matches!(point.state.as_str(), "active" | "missing") {
            return bad(
                field("state"),
                format!(
                    "{:?} is not one of active, missing",
                    truncated(&point.state)
                ),
            );
        }
        if !matches!(point.origin.as_str(), "static" | "registered") {
            return bad(
                field("origin"),
                format!(
                    "{:?} is not one of static, registered",
                    truncated(&point.origin)
                ),
            );
        }
        // Stored as a signed 64-bit number and shown as an RFC 3339 time.
        if let Some(ms) = point.last_heartbeat_unix_ms {
            if ms > MAX_UNIX_MS {
                return bad(
                    field("last_heartbeat_unix_ms"),
                    format!("{ms} is after the year 9999"),
                );
            }
        }
    }
    Ok(())
}

/// 9999-12-31T23:59:59.999Z in ms since the Unix epoch.
const MAX_UNIX_MS: u64 = 253_402_300_799_999;

/// Start of a guest-supplied value, for an error message.
fn truncated(value: &str) -> String {
    value.chars().take(64).collect()
}

/// Node agent -> guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// Run a distributed program. Idempotent per `deployment_id`: a repeated
    /// `run` for a known deployment only re-reports its status.
    Run {
        /// Deployment id; also the program's working directory name.
        deployment_id: String,
        /// File name the program is written under.
        program_name: String,
        /// Lowercase hex SHA-256 of the decoded content; checked before it runs.
        sha256: String,
        /// The program (any executable: script with `#!` or binary), base64.
        content_base64: String,
        /// Arguments.
        #[serde(default)]
        args: Vec<String>,
        /// Extra environment variables.
        #[serde(default)]
        env: BTreeMap<String, String>,
    },
    /// Start of a chunked program transfer, for guests that announce
    /// [`FEATURE_PROGRAM_CHUNKS`]. The content follows in
    /// [`AgentMessage::ProgramChunk`]s; once `size` bytes arrived and their
    /// SHA-256 is `sha256`, the guest runs the program as for `run`. A
    /// `program_begin` for a deployment the guest already knows only
    /// re-reports its status (its chunks are ignored); one for a deployment
    /// whose transfer is under way starts that transfer over.
    ProgramBegin {
        /// Deployment id; also the program's working directory name.
        deployment_id: String,
        /// File name the program is written under.
        program_name: String,
        /// Lowercase hex SHA-256 of the whole content.
        sha256: String,
        /// Content length in bytes, at most [`MAX_PROGRAM_BYTES`].
        size: u64,
        /// Arguments.
        #[serde(default)]
        args: Vec<String>,
        /// Extra environment variables.
        #[serde(default)]
        env: BTreeMap<String, String>,
    },
    /// A piece of the program announced by [`AgentMessage::ProgramBegin`]:
    /// pieces come in order, each at most [`PROGRAM_CHUNK_BYTES`].
    ProgramChunk {
        /// Deployment id of the transfer.
        deployment_id: String,
        /// Where `data_base64` starts in the content; must equal the bytes
        /// received so far.
        offset: u64,
        /// The bytes, base64.
        data_base64: String,
    },
    /// Kill the program of a deployment (its whole process group).
    Stop {
        /// Deployment id.
        deployment_id: String,
    },
    /// Answer to [`GuestMessage::PollTasks`]: the task specs, as JSON.
    Tasks {
        /// Task specs.
        tasks: Vec<serde_json::Value>,
    },
    /// Asks the guest to send [`GuestMessage::Hello`] again. Sent by the node
    /// agent when it (re)connects to a serial channel, because a serial line
    /// has no connect event the guest could see. (Added after the first
    /// guest channel release; older guests ignore it.)
    HelloRequest,
    /// Answer to a [`GuestMessage::Result`] with a `request_id`: `stored`
    /// means the document is durable (spooled to the node agent's disk, to
    /// be re-posted until the controller commits it); otherwise `reason`
    /// says why it was not taken (spool full, rate limited), and the
    /// program should retry later.
    ResultAck {
        /// The `request_id` of the result.
        request_id: String,
        /// Durable, or refused.
        stored: bool,
        /// Why it was refused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// The controller refused the document for good (its task is not
        /// the VM's platform's, or the document is invalid): posting it
        /// again cannot succeed. False when the refusal is the node's
        /// (spool or queue full), which a later post may get past. Absent
        /// from older agents, whose refusals were all of the second kind.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        rejected: bool,
    },
    /// Answer to a [`GuestMessage::PollTasks`] the node agent would not relay
    /// (the guest polls faster than its budget, or the node's relay queue is
    /// full). Polls waiting in the guest fail with `reason`.
    PollRefused {
        /// Why.
        reason: String,
    },
    /// A frame of an exec or copy session (see [`crate::exec`]); the first
    /// frame of a session is [`crate::exec::ExecFrame::Open`].
    Exec {
        /// Session id, unique on this channel.
        session: String,
        /// The frame.
        frame: crate::exec::ExecFrame,
    },
}

/// Where a program run is, as the guest reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgramRunState {
    /// Started and not yet exited.
    Running,
    /// Exited (by itself, or killed by `stop`).
    Exited,
    /// Could not be started: bad checksum, bad name, exec failure.
    Failed,
}

/// Checks that `name` can be used as one path component (deployment ids and
/// program names become directory and file names in the guest).
pub fn check_path_component(field: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 {
        return Err(format!(
            "{field}: must be 1 to 128 bytes, got {}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{field}: {name:?} is reserved"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "{field}: character {bad:?} is not allowed (use A-Z a-z 0-9 - _ .)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    type Spoil = Box<dyn Fn(&mut GuestPoint)>;

    fn point(name: &str) -> GuestPoint {
        GuestPoint {
            name: name.into(),
            control_addr: "10.0.0.2:7001".into(),
            data_addr: Some("10.0.0.2".into()),
            origin: "registered".into(),
            state: "active".into(),
            last_heartbeat_unix_ms: Some(1_764_000_000_000),
            protocol_version: Some(2),
        }
    }

    #[test]
    fn point_lists_read_the_mscs_shape_and_are_checked_field_by_field() {
        let line = r#"{"type":"points","points":[{"name":"p1","control_addr":"10.0.0.2:7001",
            "data_addr":null,"origin":"static","state":"missing",
            "last_heartbeat_unix_ms":null,"protocol_version":null}]}"#;
        let GuestMessage::Points { points } = serde_json::from_str(line).unwrap() else {
            panic!("not a points message");
        };
        assert_eq!(points[0].data_addr, None);
        check_points(&points).unwrap();
        check_points(&[point("a"), point("b")]).unwrap();

        let cases: Vec<(Spoil, &str)> = vec![
            (Box::new(|p| p.name = String::new()), "points[1].name"),
            (Box::new(|p| p.name = "a b".into()), "points[1].name"),
            (Box::new(|p| p.name = "x".repeat(65)), "points[1].name"),
            (Box::new(|p| p.name = "a".into()), "points[1].name"),
            (
                Box::new(|p| p.control_addr = "10.0.0.2".into()),
                "points[1].control_addr",
            ),
            (
                Box::new(|p| p.data_addr = Some("::1".into())),
                "points[1].data_addr",
            ),
            (Box::new(|p| p.state = "gone".into()), "points[1].state"),
            (Box::new(|p| p.origin = "magic".into()), "points[1].origin"),
            (
                Box::new(|p| p.last_heartbeat_unix_ms = Some(u64::MAX)),
                "points[1].last_heartbeat_unix_ms",
            ),
        ];
        for (spoil, field) in cases {
            let mut list = vec![point("a"), point("b")];
            spoil(&mut list[1]);
            let err = check_points(&list).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
        let many: Vec<_> = (0..=MAX_POINTS).map(|i| point(&format!("p{i}"))).collect();
        assert_eq!(check_points(&many).unwrap_err().field, "points");
    }

    #[test]
    fn wire_form_matches_the_contract() {
        let hello = GuestMessage::Hello {
            vm_id: "6f1c2a3b-4d5e-4f60-8172-8394a5b6c7d8".into(),
            agent_version: "0.1.0".into(),
            features: vec![],
        };
        assert_eq!(
            serde_json::to_value(&hello).unwrap(),
            serde_json::json!({"type":"hello","vm_id":"6f1c2a3b-4d5e-4f60-8172-8394a5b6c7d8","agent_version":"0.1.0"})
        );
        // A newer guest's hello with features; an older guest's without.
        let hello: GuestMessage = serde_json::from_str(
            r#"{"type":"hello","vm_id":"v","agent_version":"0.2.0","features":["program_chunks"]}"#,
        )
        .unwrap();
        assert!(
            matches!(hello, GuestMessage::Hello { ref features, .. } if features == &[FEATURE_PROGRAM_CHUNKS])
        );
        let chunk: AgentMessage = serde_json::from_str(
            r#"{"type":"program_chunk","deployment_id":"d1","offset":262144,"data_base64":"eA=="}"#,
        )
        .unwrap();
        assert!(matches!(
            chunk,
            AgentMessage::ProgramChunk { offset: 262144, .. }
        ));
        assert_eq!(
            serde_json::to_value(GuestMessage::ProgramTransferFailed {
                deployment_id: "d1".into(),
                reason: "r".into()
            })
            .unwrap(),
            serde_json::json!({"type":"program_transfer_failed","deployment_id":"d1","reason":"r"})
        );
        assert_eq!(
            serde_json::to_value(GuestMessage::PollTasks).unwrap(),
            serde_json::json!({"type":"poll_tasks"})
        );
        let status: GuestMessage = serde_json::from_str(
            r#"{"type":"program_status","deployment_id":"d1","status":"exited","exit_code":3,"stdout_tail":"x","stderr_tail":""}"#,
        )
        .unwrap();
        assert_eq!(
            status,
            GuestMessage::ProgramStatus {
                deployment_id: "d1".into(),
                status: ProgramRunState::Exited,
                exit_code: Some(3),
                stdout_tail: "x".into(),
                stderr_tail: String::new(),
            }
        );
        let run: AgentMessage = serde_json::from_str(
            r#"{"type":"run","deployment_id":"d1","program_name":"p","sha256":"ab","content_base64":"eA=="}"#,
        )
        .unwrap();
        assert!(
            matches!(run, AgentMessage::Run { ref args, ref env, .. } if args.is_empty() && env.is_empty())
        );
        assert_eq!(
            serde_json::to_value(AgentMessage::HelloRequest).unwrap(),
            serde_json::json!({"type":"hello_request"})
        );
    }

    #[test]
    fn unknown_types_are_errors_not_panics() {
        assert!(serde_json::from_str::<AgentMessage>(r#"{"type":"reboot"}"#).is_err());
        assert!(serde_json::from_str::<GuestMessage>(r#"{"vm_id":"x"}"#).is_err());
    }

    #[test]
    fn framer_splits_across_reads_and_strips_cr() {
        let mut framer = LineFramer::new(64);
        assert!(framer.push(b"{\"a\":").is_empty());
        let lines = framer.push(b"1}\r\n\n{\"b\":2}\n{\"c\"");
        assert_eq!(
            lines,
            vec![Ok(b"{\"a\":1}".to_vec()), Ok(b"{\"b\":2}".to_vec())]
        );
        assert_eq!(framer.push(b":3}\n"), vec![Ok(b"{\"c\":3}".to_vec())]);
    }

    #[test]
    fn framer_discards_oversized_lines_and_recovers() {
        let mut framer = LineFramer::new(8);
        let first = framer.push(b"0123456789abc");
        assert_eq!(first, vec![Err(FramingError::TooLong { max_bytes: 8 })]);
        // The rest of the long line is dropped, the next line survives.
        assert_eq!(framer.push(b"def\nok\n"), vec![Ok(b"ok".to_vec())]);
        // An oversized line that arrives whole is reported once too.
        assert_eq!(
            framer.push(b"0123456789\nfine\n"),
            vec![
                Err(FramingError::TooLong { max_bytes: 8 }),
                Ok(b"fine".to_vec())
            ]
        );
    }

    #[test]
    fn path_components_are_checked() {
        assert!(check_path_component("program_name", "probe.sh").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "x\n"] {
            let err = check_path_component("program_name", bad).unwrap_err();
            assert!(err.starts_with("program_name:"), "{err}");
        }
    }
}
