//! Drives one measurement run across the points and aggregates their reports.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use futures::future::join_all;
use measurelab_api::result::ReceiptBitmap;
use measurelab_inference::delay::{delay_covariances, ProbeDelays};
use thiserror::Error;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::auth::ControlKey;
use crate::protocol::{
    ControlRequest, ControlResponse, LineRead, PointInfo, ReceiveRequest, ReceiverReport,
    SendRequest, MAX_RESPONSE_LINE_BYTES, PROTOCOL_VERSION, READY_TIMEOUT,
};
use crate::result::{
    ClockSync, ReceiverResult, ReceiverStatus, ResultDocument, ResultSchema, RunConfig, RunKind,
    RunStatus, SourceResult,
};
use crate::sender::SenderReport;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Slack on top of the run duration before the MSCS gives up on the sender.
const SENDER_SLACK: Duration = Duration::from_secs(10);
/// Receivers stop themselves this long after the run would have ended.
const RECEIVER_SAFETY_MARGIN_SECONDS: f64 = 60.0;

/// Errors of one control conversation.
#[derive(Debug, Error)]
pub enum RunnerError {
    /// Could not connect in time.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// Control address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// Socket error during the conversation.
    #[error("control connection: {0}")]
    Io(#[from] std::io::Error),
    /// The point closed the connection (typically: it died).
    #[error("point closed the control connection before answering")]
    Closed,
    /// The point did not answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The point answered with an error.
    #[error("point reported: {0}")]
    Point(String),
    /// The point answered something unexpected.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
    /// A line was not valid JSON of the protocol.
    #[error("bad answer: {0}")]
    Decode(#[from] serde_json::Error),
    /// The point's answer line grew past [`MAX_RESPONSE_LINE_BYTES`].
    #[error("answer line longer than {limit} bytes: connection closed")]
    LineTooLong {
        /// The bound.
        limit: usize,
    },
    /// The point speaks another control protocol version.
    #[error("point speaks control protocol version {point}, this MSCS speaks {ours}")]
    ProtocolVersion {
        /// The point's version.
        point: u32,
        /// [`PROTOCOL_VERSION`].
        ours: u32,
    },
}

/// A point the MSCS drives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointEndpoint {
    /// Name used in results and tasks.
    pub name: String,
    /// Address of its `mcast-point serve` listener.
    pub control: SocketAddr,
}

/// What to measure in one run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Periodic or task.
    pub kind: RunKind,
    /// Task id, for task runs.
    pub task_id: Option<String>,
    /// The source.
    pub source: PointEndpoint,
    /// The receivers.
    pub receivers: Vec<PointEndpoint>,
    /// Group.
    pub group: Ipv4Addr,
    /// Port.
    pub port: u16,
    /// Probe parameters.
    pub config: RunConfig,
    /// Operator-supplied clock synchronisation bound (µs) for points on different hosts;
    /// `None` means the points share one host clock.
    pub clock_sync_bound_us: Option<f64>,
    /// How long receivers keep reading after the sender finished.
    pub receiver_drain_seconds: f64,
    /// Signs `send` and `receive` for points that require per-task keys.
    pub control_key: Option<ControlKey>,
    /// Points the controller says run an agent older than control protocol version 2
    /// (`ServicePeer.control_protocol_version` = 1): such a point may answer `info`
    /// with version 1 and then gets unsigned version-1 orders. Every other point must
    /// speak [`PROTOCOL_VERSION`], whatever it answers. An MSCS never fills this.
    pub v1_points: BTreeSet<String>,
}

/// One open control connection.
struct Conversation {
    reader: BufReader<OwnedReadHalf>,
    line: Vec<u8>,
    writer: OwnedWriteHalf,
}

/// The async twin of [`crate::protocol::read_bounded_line`]: one `\n`-terminated line
/// into `line`, holding at most `max_bytes` of it, so a point that never ends its line
/// cannot grow the MSCS's memory.
async fn read_bounded_line(
    reader: &mut (impl AsyncBufRead + Unpin),
    line: &mut Vec<u8>,
    max_bytes: usize,
) -> std::io::Result<LineRead> {
    line.clear();
    loop {
        let available = reader.fill_buf().await?;
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

impl Conversation {
    async fn open(addr: SocketAddr) -> Result<Self, RunnerError> {
        let stream = match timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => {
                return Err(RunnerError::Connect {
                    addr,
                    reason: err.to_string(),
                })
            }
            Err(_) => {
                return Err(RunnerError::Connect {
                    addr,
                    reason: format!("timed out after {CONNECT_TIMEOUT:?}"),
                })
            }
        };
        stream.set_nodelay(true)?;
        let (read, writer) = stream.into_split();
        Ok(Self {
            reader: BufReader::new(read),
            line: Vec::new(),
            writer,
        })
    }

    /// Sends `request`, wrapped in its key proof when there is a key: the proof's
    /// timestamp and nonce are fresh for every line.
    async fn send(
        &mut self,
        request: &ControlRequest,
        key: Option<&ControlKey>,
    ) -> Result<(), RunnerError> {
        let mut line = match key {
            Some(key) => serde_json::to_vec(&key.sign(request)?)?,
            None => serde_json::to_vec(request)?,
        };
        line.push(b'\n');
        self.writer.write_all(&line).await?;
        Ok(())
    }

    async fn receive(&mut self, within: Duration) -> Result<ControlResponse, RunnerError> {
        let read = read_bounded_line(&mut self.reader, &mut self.line, MAX_RESPONSE_LINE_BYTES);
        match timeout(within, read).await {
            Err(_) => Err(RunnerError::Timeout(within)),
            Ok(Err(err)) => Err(err.into()),
            Ok(Ok(LineRead::Eof)) => Err(RunnerError::Closed),
            // The conversation is dropped with the error, which closes the connection.
            Ok(Ok(LineRead::TooLong)) => Err(RunnerError::LineTooLong {
                limit: MAX_RESPONSE_LINE_BYTES,
            }),
            Ok(Ok(LineRead::Line)) => match serde_json::from_slice(self.line.trim_ascii())? {
                ControlResponse::Error { message } => Err(RunnerError::Point(message)),
                response => Ok(response),
            },
        }
    }
}

/// The version before per-task keys (release 0.1.0): the same requests, unsigned.
const UNSIGNED_PROTOCOL_VERSION: u32 = 1;

/// Asks `point` who it is. It must speak [`PROTOCOL_VERSION`], or version 1 when
/// `allow_v1` (the controller said its agent is that old).
async fn point_info(point: &PointEndpoint, allow_v1: bool) -> Result<PointInfo, RunnerError> {
    let mut conversation = Conversation::open(point.control).await?;
    conversation.send(&ControlRequest::Info, None).await?;
    match conversation.receive(READY_TIMEOUT).await? {
        ControlResponse::Info(info)
            if allow_v1 && info.protocol_version == UNSIGNED_PROTOCOL_VERSION =>
        {
            Ok(info)
        }
        // Checked before the run: a point of another version may read the requests
        // differently, and the run would measure that instead of the network.
        ControlResponse::Info(info) if info.protocol_version != PROTOCOL_VERSION => {
            Err(RunnerError::ProtocolVersion {
                point: info.protocol_version,
                ours: PROTOCOL_VERSION,
            })
        }
        ControlResponse::Info(info) => Ok(info),
        other => Err(RunnerError::Unexpected(format!("{other:?}"))),
    }
}

/// The key that signs the orders of `point`, which answered `info` with `version`: the
/// run's, except for a point the controller listed in `spec.v1_points` that answers
/// version 1, whose orders go unsigned as version 1 has them. A point's answer alone
/// never drops the proof: one not listed gets signed orders (and a version-1 point
/// refuses them, failing only its part).
fn signing_key<'a>(
    spec: &'a RunSpec,
    point: &PointEndpoint,
    version: u32,
) -> Option<&'a ControlKey> {
    let unsigned = version == UNSIGNED_PROTOCOL_VERSION && spec.v1_points.contains(&point.name);
    spec.control_key.as_ref().filter(|_| !unsigned)
}

async fn start_receiver(
    spec: &RunSpec,
    point: &PointEndpoint,
    request: ReceiveRequest,
) -> Result<Conversation, RunnerError> {
    // Only a listed point is asked first: the others must speak this version anyway.
    let version = if spec.control_key.is_some() && spec.v1_points.contains(&point.name) {
        point_info(point, true).await?.protocol_version
    } else {
        PROTOCOL_VERSION
    };
    let key = signing_key(spec, point, version);
    let mut conversation = Conversation::open(point.control).await?;
    conversation
        .send(&ControlRequest::Receive(request), key)
        .await?;
    match conversation.receive(READY_TIMEOUT).await? {
        ControlResponse::Ready { .. } => Ok(conversation),
        other => Err(RunnerError::Unexpected(format!("{other:?}"))),
    }
}

async fn run_source(
    point: &PointEndpoint,
    request: SendRequest,
    key: Option<&ControlKey>,
) -> Result<SenderReport, RunnerError> {
    let within = Duration::from_secs_f64(request.duration_seconds) + SENDER_SLACK;
    let mut conversation = Conversation::open(point.control).await?;
    conversation
        .send(&ControlRequest::Send(request), key)
        .await?;
    match conversation.receive(within).await? {
        ControlResponse::SenderReport(report) => Ok(report),
        other => Err(RunnerError::Unexpected(format!("{other:?}"))),
    }
}

async fn stop_receiver(
    mut conversation: Conversation,
    packets_sent: Option<u64>,
    drain_seconds: f64,
) -> Result<ReceiverReport, RunnerError> {
    conversation
        .send(
            &ControlRequest::Stop {
                packets_sent,
                drain_seconds: Some(drain_seconds),
            },
            // The receive that opened this connection was authenticated.
            None,
        )
        .await?;
    let within = REPORT_TIMEOUT + Duration::from_secs_f64(drain_seconds);
    match conversation.receive(within).await? {
        ControlResponse::ReceiverReport(report) => Ok(*report),
        other => Err(RunnerError::Unexpected(format!("{other:?}"))),
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Runs one measurement. Never fails as a whole: every failure is recorded in the
/// document, so the schedule can always move on.
pub async fn run_measurement(spec: &RunSpec) -> ResultDocument {
    let started_at = now_rfc3339();
    let session_id: u64 = rand::random();
    let run_id = uuid::Uuid::new_v4().to_string();

    let mut source = SourceResult {
        point: spec.source.name.clone(),
        data_addr: None,
        report: None,
        error: None,
    };
    let finish = |source: SourceResult, receivers: Vec<ReceiverResult>, status| ResultDocument {
        schema: ResultSchema::V1,
        task_id: spec.task_id.clone(),
        run_id: run_id.clone(),
        kind: spec.kind,
        source_point: spec.source.name.clone(),
        group: spec.group,
        port: spec.port,
        session_id,
        started_at: started_at.clone(),
        finished_at: now_rfc3339(),
        status,
        config: spec.config.clone(),
        source,
        receivers,
        delay_covariances: Vec::new(),
        tree: None,
        inference: None,
        bottlenecks: Vec::new(),
        comparison: None,
    };
    let missing_all = |reason: &str| {
        spec.receivers
            .iter()
            .map(|r| {
                ReceiverResult::without_report(&r.name, ReceiverStatus::Missing, reason.into())
            })
            .collect::<Vec<_>>()
    };

    // The source's data address is the SSM source the receivers must join.
    let source_info =
        match point_info(&spec.source, spec.v1_points.contains(&spec.source.name)).await {
            Ok(info) => {
                source.data_addr = Some(info.data_addr);
                info
            }
            Err(err) => {
                source.error = Some(format!("source unreachable: {err}"));
                return finish(
                    source,
                    missing_all("run aborted: source unreachable"),
                    RunStatus::Failed,
                );
            }
        };
    let ssm_source = if spec.config.ssm {
        source.data_addr
    } else {
        None
    };

    let receive_request = ReceiveRequest {
        session_id,
        group: spec.group,
        port: spec.port,
        ssm_source,
        max_duration_seconds: spec.config.duration_seconds + RECEIVER_SAFETY_MARGIN_SECONDS,
    };
    let joins = spec
        .receivers
        .iter()
        .map(|point| start_receiver(spec, point, receive_request.clone()));
    let joined = join_all(joins).await;

    if joined.iter().all(Result::is_err) {
        source.error = Some("not sent: no receiver joined".into());
        let receivers = spec
            .receivers
            .iter()
            .zip(joined)
            .map(|(point, outcome)| {
                let reason = outcome.err().map(|e| e.to_string()).unwrap_or_default();
                ReceiverResult::without_report(&point.name, ReceiverStatus::Missing, reason)
            })
            .collect();
        return finish(source, receivers, RunStatus::Failed);
    }

    let send_request = SendRequest {
        session_id,
        group: spec.group,
        port: spec.port,
        rate_pps: spec.config.rate_pps,
        packet_size_bytes: spec.config.packet_size_bytes,
        duration_seconds: spec.config.duration_seconds,
        ttl: spec.config.ttl,
    };
    let source_key = signing_key(spec, &spec.source, source_info.protocol_version);
    let packets_sent = match run_source(&spec.source, send_request, source_key).await {
        Ok(report) => {
            let sent = report.packets_sent;
            source.report = Some(report);
            Some(sent)
        }
        Err(err) => {
            source.error = Some(err.to_string());
            None
        }
    };

    let stops = spec.receivers.iter().zip(joined).map(|(point, joined)| {
        let name = point.name.clone();
        async move {
            match joined {
                Err(err) => Err((ReceiverStatus::Missing, err.to_string(), name)),
                Ok(conversation) => {
                    stop_receiver(conversation, packets_sent, spec.receiver_drain_seconds)
                        .await
                        .map_err(|err| (ReceiverStatus::Failed, err.to_string(), name))
                }
            }
        }
    });
    let reports = join_all(stops).await;

    let clock = match spec.clock_sync_bound_us {
        Some(bound) => (ClockSync::ExternalBound, Some(bound)),
        None => (ClockSync::SameHostClock, None),
    };
    let mut probe_delays = Vec::new();
    let receivers: Vec<ReceiverResult> = reports
        .into_iter()
        .map(|outcome| match outcome {
            Ok(report) => ReceiverResult {
                receipts: receipts_of(&report, &mut probe_delays),
                point: report.point.clone(),
                status: ReceiverStatus::Ok,
                error: None,
                timestamp_source: Some(report.timestamp_source),
                clock_sync: Some(clock.0),
                clock_error_bound_us: Some(
                    clock
                        .1
                        .unwrap_or(2.0 * report.clock_resolution_ns as f64 / 1_000.0),
                ),
                foreign_session_packets: Some(report.foreign_session_packets),
                malformed_packets: Some(report.malformed_packets),
                metrics: Some(report.metrics),
            },
            Err((status, error, name)) => ReceiverResult::without_report(&name, status, error),
        })
        .collect();

    let status = if source.report.is_none() {
        RunStatus::Failed
    } else if receivers.iter().all(|r| r.status == ReceiverStatus::Ok) {
        RunStatus::Ok
    } else {
        RunStatus::Partial
    };
    let mut document = finish(source, receivers, status);
    document.delay_covariances = delay_covariances(&probe_delays);
    document
}

/// A receiver's receipts for the document, its per-probe delays added to `delays` for
/// the run's covariances. A record that does not decode is left out (and logged): the
/// receiver's summary statistics stand without it.
fn receipts_of(report: &ReceiverReport, delays: &mut Vec<ProbeDelays>) -> Option<ReceiptBitmap> {
    let log = report.probe_log.as_ref()?;
    match log.probe_delays(&report.point) {
        Ok(probe_delays) => {
            delays.push(probe_delays);
            Some(log.receipts.clone())
        }
        Err(err) => {
            tracing::warn!(point = %report.point, "per-probe record refused: {err}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answer_lines_are_bounded() {
        let input = [b"short\n".to_vec(), vec![b'x'; 100], b"\n".to_vec()].concat();
        let mut reader = tokio::io::BufReader::with_capacity(7, input.as_slice());
        let mut line = Vec::new();
        let read = read_bounded_line(&mut reader, &mut line, 64).await.unwrap();
        assert_eq!(
            (read, line.as_slice()),
            (LineRead::Line, b"short".as_slice())
        );
        let read = read_bounded_line(&mut reader, &mut line, 64).await.unwrap();
        assert_eq!(read, LineRead::TooLong);
        assert!(line.len() <= 64);
    }

    /// A one-shot point that answers `info` with `answer`.
    async fn fake_point(answer: ControlResponse) -> PointEndpoint {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let control = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            let _ = lines.next_line().await;
            let mut line = serde_json::to_vec(&answer).unwrap();
            line.push(b'\n');
            let _ = write.write_all(&line).await;
        });
        PointEndpoint {
            name: "p".into(),
            control,
        }
    }

    #[tokio::test]
    async fn a_point_of_another_protocol_version_is_refused_clearly() {
        let info = |protocol_version| {
            ControlResponse::Info(PointInfo {
                name: "p".into(),
                data_addr: Ipv4Addr::LOCALHOST,
                protocol_version,
            })
        };
        let point = fake_point(info(PROTOCOL_VERSION + 1)).await;
        let err = point_info(&point, false).await.unwrap_err();
        assert!(
            matches!(err, RunnerError::ProtocolVersion { point, ours }
                if point == PROTOCOL_VERSION + 1 && ours == PROTOCOL_VERSION),
            "{err}"
        );
        assert!(err.to_string().contains("protocol version"), "{err}");
        let point = fake_point(info(PROTOCOL_VERSION)).await;
        point_info(&point, false).await.unwrap();
    }
}
