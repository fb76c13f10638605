//! `mcast-point serve`: a measurement point driven by the MSCS over the control protocol
//! ([`crate::protocol`]).
//!
//! One thread per control connection. Sending and receiving are blocking loops with tight
//! timing, so they run on plain threads rather than an async runtime.

use std::io::{BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use thiserror::Error;
use tracing::{info, warn};

use crate::auth::{AuthError, KeyRing};
use crate::metrics::StatsLimits;
use crate::protocol::{
    read_bounded_line, ControlRequest, ControlResponse, FieldError, LineRead, PointInfo,
    ReceiveRequest, ReceiverReport, SendRequest, DEFAULT_MAX_RATE_PPS, MAX_REQUEST_LINE_BYTES,
    PROTOCOL_VERSION, READY_TIMEOUT,
};
use crate::receiver::{Receiver, ReceiverConfig};
use crate::sender::{run_sender, SendLimit, SenderConfig};

/// How long a receiver keeps reading after `stop`, for probes still in flight.
pub const DRAIN_AFTER_STOP: Duration = Duration::from_millis(100);
/// Upper bound on a requested drain.
pub const MAX_DRAIN_SECONDS: f64 = 10.0;
/// Default cap on simultaneous control connections: a run needs one per role (source or
/// receiver) per MSCS, so this leaves room for several MSCSs while bounding the threads
/// a flood of connections can cost.
pub const DEFAULT_MAX_CONNECTIONS: usize = 32;
/// Default time a control connection may sit idle (or dribble a line) between requests.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// While receiving, the point waits for `stop` up to the receive's own limit plus this.
const RECEIVE_STOP_SLACK: Duration = Duration::from_secs(30);
/// Bound on writing an answer, so a peer that never reads cannot park a thread.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the point server.
#[derive(Debug, Error)]
pub enum PointError {
    /// The control connection failed.
    #[error("control connection: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent something that is not a request.
    #[error("bad request line: {0}")]
    BadRequest(#[from] serde_json::Error),
    /// The peer sent a line longer than [`MAX_REQUEST_LINE_BYTES`]; the connection was
    /// closed.
    #[error("request line longer than {limit} bytes: connection closed")]
    LineTooLong {
        /// The bound.
        limit: usize,
    },
}

/// Settings of a serving point.
#[derive(Debug, Clone)]
pub struct PointConfig {
    /// Name reported in `info` and in receiver reports.
    pub name: String,
    /// Data-plane address: multicast interface for joins and sends.
    pub data_addr: Ipv4Addr,
    /// Memory limits for receivers.
    pub limits: StatsLimits,
    /// Highest probe rate a `send` may order, pps.
    pub max_rate_pps: f64,
    /// Simultaneous control connections served; more are refused with an error line.
    pub max_connections: usize,
    /// How long a connection may be idle between requests before it is closed.
    pub idle_timeout: Duration,
    /// The per-task keys whose holders may order `send` and `receive`; `None`: an open
    /// point that obeys anyone who reaches its listener (`mcast-point serve` without a
    /// key, for runs outside measurelab). The node agent's service host always has one.
    pub keys: Option<Arc<KeyRing>>,
    /// How long a signed request naming a task without a key waits for the key.
    pub key_wait: Duration,
    /// What the point did, for tests and operators.
    pub counters: Arc<PointCounters>,
}

/// Counts of a point's control work.
#[derive(Debug, Default)]
pub struct PointCounters {
    /// `send` requests that passed authentication and validation and started a sender.
    pub sends_started: AtomicU64,
    /// `receive` requests that passed authentication and validation.
    pub receives_started: AtomicU64,
    /// Requests refused for want of a valid key proof.
    pub refused_unauthenticated: AtomicU64,
    /// Every refusal, by reason (the `reason` label of the agent's
    /// `measurelab_agent_point_refused_total`).
    pub refused: RefusalCounts,
}

/// Why a point refused a connection or a request, beside the key-proof reasons of
/// [`AuthError::reason`] (`missing`, `unknown_task`, `bad_mac`, `stale`, `replayed`,
/// `malformed`, `busy`).
pub mod refusal {
    /// The connection cap was reached; the connection was answered and closed.
    pub const TOO_MANY_CONNECTIONS: &str = "too_many_connections";
    /// A request line over the limit; the connection was closed.
    pub const LINE_TOO_LONG: &str = "line_too_long";
    /// A line that is not a control request.
    pub const BAD_REQUEST: &str = "bad_request";
    /// A `send` whose fields the point refused (rate ceiling, duration, size).
    pub const INVALID_SEND: &str = "invalid_send";
    /// A `receive` whose fields the point refused.
    pub const INVALID_RECEIVE: &str = "invalid_receive";
}

/// Refusals by reason. Reasons are a small fixed set of static labels, so the map
/// stays bounded whatever a peer sends.
#[derive(Debug, Default)]
pub struct RefusalCounts(std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>);

impl RefusalCounts {
    /// Counts one refusal for `reason`.
    pub fn count(&self, reason: &'static str) {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(reason).or_insert(0);
        *n = n.saturating_add(1);
    }

    /// Every reason counted so far with its count.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        counts.iter().map(|(reason, n)| (*reason, *n)).collect()
    }
}

/// Default wait for the key of a task a point has not heard of yet, or for the
/// controller's mark of a version-1 orchestrator: the desired state that lists a task
/// reaches its nodes within a heartbeat or two, and the first miss makes the agent fetch
/// it at once. A second under the orchestrator's [`READY_TIMEOUT`], so a caller still
/// reads the refusal's reason rather than its own timeout.
pub const DEFAULT_KEY_WAIT: Duration = READY_TIMEOUT.saturating_sub(Duration::from_secs(1));

impl PointConfig {
    /// A config with the default limits.
    pub fn new(name: impl Into<String>, data_addr: Ipv4Addr) -> Self {
        Self {
            name: name.into(),
            data_addr,
            limits: StatsLimits::default(),
            max_rate_pps: DEFAULT_MAX_RATE_PPS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            keys: None,
            key_wait: DEFAULT_KEY_WAIT,
            counters: Arc::default(),
        }
    }
}

/// Holds one of the point's connection slots until dropped.
struct ConnectionSlot(Arc<AtomicUsize>);

impl ConnectionSlot {
    fn take(open: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| Self(Arc::clone(open)))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves control connections until `shutdown` is set (checked between accepts).
pub fn serve(
    listener: TcpListener,
    config: PointConfig,
    shutdown: Arc<AtomicBool>,
) -> Result<(), PointError> {
    listener.set_nonblocking(true)?;
    let config = Arc::new(config);
    let open = Arc::new(AtomicUsize::new(0));
    info!(name = %config.name, addr = ?listener.local_addr()?, "point serving");
    while !shutdown.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                // One peer's broken socket must not end the accept loop.
                if let Err(err) = stream
                    .set_nonblocking(false)
                    .and_then(|()| stream.set_write_timeout(Some(WRITE_TIMEOUT)))
                {
                    warn!(%peer, cause = %err, "cannot set up a control connection");
                    continue;
                }
                let Some(slot) = ConnectionSlot::take(&open, config.max_connections) else {
                    config.counters.refused.count(refusal::TOO_MANY_CONNECTIONS);
                    warn!(%peer, max = config.max_connections, "control connection refused: too many open");
                    let _ = write_response(
                        &mut stream,
                        &error_response(format!(
                            "too many control connections (at most {}): try again later",
                            config.max_connections
                        )),
                    );
                    continue;
                };
                let config = Arc::clone(&config);
                let spawned = thread::Builder::new()
                    .name("mcast-point-control".into())
                    .spawn(move || {
                        let _slot = slot;
                        if let Err(err) = handle_connection(stream, &config) {
                            warn!(%peer, cause = %err, "control connection ended with an error");
                        }
                    });
                if let Err(err) = spawned {
                    warn!(%peer, cause = %err, "cannot start a control connection thread");
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(20));
            }
            Err(err) => warn!(cause = %err, "accept failed"),
        }
    }
    Ok(())
}

fn write_response(stream: &mut TcpStream, response: &ControlResponse) -> Result<(), PointError> {
    let mut line = serde_json::to_vec(response)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    stream.flush()?;
    Ok(())
}

fn error_response(message: impl ToString) -> ControlResponse {
    ControlResponse::Error {
        message: message.to_string(),
    }
}

/// Reads the next request line within `timeout`. An over-long line is answered with an
/// error and ends the connection: its unread rest cannot be told from a next request.
fn next_request(
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
    line: &mut Vec<u8>,
    timeout: Duration,
    counters: &PointCounters,
) -> Result<Option<Result<ControlRequest, serde_json::Error>>, PointError> {
    // SO_RCVTIMEO is per socket, shared with the clones a send's watcher changes.
    reader.get_ref().set_read_timeout(Some(timeout))?;
    match read_bounded_line(reader, line, MAX_REQUEST_LINE_BYTES)? {
        LineRead::Eof => Ok(None),
        LineRead::TooLong => {
            counters.refused.count(refusal::LINE_TOO_LONG);
            let err = PointError::LineTooLong {
                limit: MAX_REQUEST_LINE_BYTES,
            };
            let _ = write_response(writer, &error_response(&err));
            let _ = writer.shutdown(std::net::Shutdown::Both);
            Err(err)
        }
        LineRead::Line => {
            let parsed = serde_json::from_slice(line.trim_ascii());
            if parsed.is_err() {
                counters.refused.count(refusal::BAD_REQUEST);
            }
            Ok(Some(parsed))
        }
    }
}

fn handle_connection(stream: TcpStream, config: &PointConfig) -> Result<(), PointError> {
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        let Some(parsed) = next_request(
            &mut reader,
            &mut writer,
            &mut line,
            config.idle_timeout,
            &config.counters,
        )?
        else {
            return Ok(());
        };
        let request: ControlRequest = match parsed {
            Ok(request) => request,
            Err(err) => {
                write_response(&mut writer, &error_response(format!("bad request: {err}")))?;
                continue;
            }
        };
        let peer = writer.peer_addr().ok().map(|addr| addr.ip());
        let request = match authorize_from(request, config, peer) {
            Ok(request) => request,
            Err(err) => {
                warn!(peer = ?writer.peer_addr().ok(), reason = err.reason(), cause = %err,
                    "control request refused: nothing done");
                write_response(&mut writer, &error_response(&err))?;
                continue;
            }
        };
        match request {
            ControlRequest::Info => write_response(
                &mut writer,
                &ControlResponse::Info(PointInfo {
                    name: config.name.clone(),
                    data_addr: config.data_addr,
                    protocol_version: info_version(config, peer),
                }),
            )?,
            ControlRequest::Send(request) => {
                let response = handle_send(&request, config, &writer);
                write_response(&mut writer, &response)?;
            }
            ControlRequest::Receive(request) => {
                handle_receive(&request, config, &mut reader, &mut writer)?;
            }
            ControlRequest::Stop { .. } => write_response(
                &mut writer,
                &error_response("stop without a receive in progress"),
            )?,
            ControlRequest::Signed(_) => unreachable_signed(&mut writer)?,
        }
    }
}

/// [`authorize`] unwraps every `signed`; answering rather than panicking keeps a
/// future mistake there from taking a thread down.
fn unreachable_signed(writer: &mut TcpStream) -> Result<(), PointError> {
    write_response(
        writer,
        &error_response("a signed request cannot carry another"),
    )
}

/// The request to act on, or why none: `send` and `receive` need a valid key proof when
/// the point has keys; `info` and `stop` (which only ends this connection's own receive)
/// do not. A point without keys accepts signed requests too, checking nothing, so one
/// MSCS can drive keyed and open points alike.
pub fn authorize(
    request: ControlRequest,
    config: &PointConfig,
) -> Result<ControlRequest, AuthError> {
    authorize_from(request, config, None)
}

/// [`authorize`] for a request from `peer`: an unsigned `send` or `receive` is also
/// accepted when `peer` is a version-1 orchestrator the controller marked for a task
/// and the order is for that task's group and port ([`crate::auth::LegacyOrchestrator`]).
pub fn authorize_from(
    request: ControlRequest,
    config: &PointConfig,
    peer: Option<IpAddr>,
) -> Result<ControlRequest, AuthError> {
    let outcome = match (request, config.keys.as_deref()) {
        (ControlRequest::Signed(signed), Some(keys)) => keys.verify(&signed, config.key_wait),
        (ControlRequest::Signed(signed), None) => signed.inner(),
        (request @ (ControlRequest::Send(_) | ControlRequest::Receive(_)), Some(keys)) => {
            let target = match &request {
                ControlRequest::Send(send) => Some((send.group, send.port)),
                ControlRequest::Receive(receive) => Some((receive.group, receive.port)),
                _ => None,
            };
            let task = peer.zip(target).and_then(|(peer, (group, port))| {
                keys.legacy_task(peer, group, port, config.key_wait)
            });
            match task {
                Some(task) => {
                    info!(?peer, %task, op = request.op(),
                        "unsigned version-1 order accepted from the task's controller-marked orchestrator");
                    Ok(request)
                }
                None => Err(AuthError::Missing { op: request.op() }),
            }
        }
        (request, _) => Ok(request),
    };
    if let Err(err) = &outcome {
        config
            .counters
            .refused_unauthenticated
            .fetch_add(1, Ordering::Relaxed);
        config.counters.refused.count(err.reason());
        if let Some(keys) = &config.keys {
            keys.count_refusal();
        }
    }
    outcome
}

/// The protocol version `info` answers `peer` with: 1 to a version-1 orchestrator the
/// controller marked (a 0.1.0 orchestrator refuses any other answer), ours to everyone
/// else.
fn info_version(config: &PointConfig, peer: Option<IpAddr>) -> u32 {
    match (config.keys.as_deref(), peer) {
        (Some(keys), Some(peer)) if keys.is_legacy_source(peer) => 1,
        _ => PROTOCOL_VERSION,
    }
}

/// How often a sending point checks whether its MSCS is still connected.
const CONTROL_WATCH_INTERVAL: Duration = Duration::from_millis(50);

/// Sets `stop` when the control connection closes, until `done` is set. A sender whose
/// MSCS died must not keep loading the group: the restarted MSCS starts new runs on it.
fn watch_control_connection(
    control: &TcpStream,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
) -> Option<thread::JoinHandle<()>> {
    let control = control.try_clone().ok()?;
    control
        .set_read_timeout(Some(CONTROL_WATCH_INTERVAL))
        .ok()?;
    Some(thread::spawn(move || {
        let mut byte = [0u8; 1];
        while !done.load(Ordering::Relaxed) {
            match control.peek(&mut byte) {
                Ok(0) => break,
                // The MSCS sends nothing during a send; unread data is left for the
                // connection loop.
                Ok(_) => thread::sleep(CONTROL_WATCH_INTERVAL),
                Err(err)
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        if !done.load(Ordering::Relaxed) {
            warn!("control connection closed during a send: stopping the source");
            stop.store(true, Ordering::Relaxed);
        }
    }))
}

/// The sender a `send` request orders from this point, or why it is refused: the
/// point's own checks (rate ceiling, duration bound) before any use of the numbers.
pub fn plan_send(request: &SendRequest, config: &PointConfig) -> Result<SenderConfig, FieldError> {
    request.validate(config.max_rate_pps)?;
    Ok(SenderConfig {
        group: request.group,
        port: request.port,
        source_addr: Some(config.data_addr),
        ttl: request.ttl,
        rate_pps: request.rate_pps,
        packet_size: request.packet_size_bytes,
        limit: SendLimit::DurationSeconds(request.duration_seconds),
        session_id: request.session_id,
        ..SenderConfig::new(
            request.group,
            request.port,
            request.rate_pps,
            SendLimit::DurationSeconds(request.duration_seconds),
        )
    })
}

/// The receiver a `receive` request opens on this point and the longest it may run, or
/// why it is refused. Validation comes first: `Duration::from_secs_f64` panics on 1e20.
pub fn plan_receive(
    request: &ReceiveRequest,
    config: &PointConfig,
) -> Result<(ReceiverConfig, Duration), FieldError> {
    request.validate()?;
    let receiver = ReceiverConfig {
        group: request.group,
        port: request.port,
        interface_addr: config.data_addr,
        ssm_source: request.ssm_source,
        session_id: Some(request.session_id),
        limits: config.limits,
    };
    Ok((
        receiver,
        Duration::from_secs_f64(request.max_duration_seconds),
    ))
}

fn handle_send(
    request: &SendRequest,
    config: &PointConfig,
    control: &TcpStream,
) -> ControlResponse {
    let sender = match plan_send(request, config) {
        Ok(sender) => sender,
        Err(err) => {
            config.counters.refused.count(refusal::INVALID_SEND);
            warn!(cause = %err, "send refused");
            return error_response(format!("send refused: {err}"));
        }
    };
    config
        .counters
        .sends_started
        .fetch_add(1, Ordering::Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = watch_control_connection(control, Arc::clone(&stop), Arc::clone(&done));
    let outcome = run_sender(&sender, &stop);
    done.store(true, Ordering::Relaxed);
    if let Some(watcher) = watcher {
        let _ = watcher.join();
    }
    match outcome {
        Ok(report) => {
            info!(
                sent = report.packets_sent,
                rate = report.achieved_rate_pps,
                "send done"
            );
            ControlResponse::SenderReport(report)
        }
        Err(err) => error_response(err),
    }
}

/// Runs one receive: join, answer `ready`, receive on a thread until `stop` arrives on
/// the control connection (or it closes, or the safety limit passes), then report.
fn handle_receive(
    request: &ReceiveRequest,
    config: &PointConfig,
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
) -> Result<(), PointError> {
    let (receiver_config, limit) = match plan_receive(request, config) {
        Ok(plan) => plan,
        Err(err) => {
            config.counters.refused.count(refusal::INVALID_RECEIVE);
            warn!(cause = %err, "receive refused");
            return write_response(writer, &error_response(format!("receive refused: {err}")));
        }
    };
    config
        .counters
        .receives_started
        .fetch_add(1, Ordering::Relaxed);
    let receiver = match Receiver::open(receiver_config) {
        Ok(receiver) => receiver,
        Err(err) => return write_response(writer, &error_response(err)),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + limit;
    let receive_thread = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || receiver.run(&stop, Some(deadline)))
    };
    write_response(
        writer,
        &ControlResponse::Ready {
            kernel_timestamps: true,
        },
    )?;

    let mut line = Vec::new();
    let stop_wait = limit + RECEIVE_STOP_SLACK;
    let stop_request = loop {
        // Any read failure (closed, timed out, over-long line) ends the receive: the
        // receiver thread must not outlive its conversation.
        match next_request(reader, writer, &mut line, stop_wait, &config.counters) {
            Ok(None) | Err(_) => break None,
            Ok(Some(parsed)) => match parsed {
                Ok(ControlRequest::Stop {
                    packets_sent,
                    drain_seconds,
                }) => break Some((packets_sent, drain_seconds)),
                Ok(_) => write_response(
                    writer,
                    &error_response("only stop is accepted while receiving"),
                )?,
                Err(err) => write_response(writer, &error_response(format!("bad request: {err}")))?,
            },
        }
    };
    if let Some((_, drain_seconds)) = stop_request {
        thread::sleep(drain_duration(drain_seconds));
    }
    stop.store(true, Ordering::Relaxed);
    let outcome = match receive_thread.join() {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(err)) => return write_response(writer, &error_response(err)),
        Err(_) => return write_response(writer, &error_response("receiver thread panicked")),
    };
    let Some((packets_sent, _)) = stop_request else {
        // The MSCS went away: nobody to report to.
        return Ok(());
    };
    let metrics = outcome.stats.finish(packets_sent);
    let report = ReceiverReport {
        point: config.name.clone(),
        session_id: request.session_id,
        timestamp_source: outcome.timestamp_source,
        clock_resolution_ns: realtime_clock_resolution_ns(),
        foreign_session_packets: outcome.foreign_session_packets,
        malformed_packets: outcome.malformed_packets,
        probe_log: outcome.stats.probe_log().report(metrics.packets_sent),
        metrics,
    };
    write_response(writer, &ControlResponse::ReceiverReport(Box::new(report)))
}

/// The drain a `stop` asks for, clamped so a bad request cannot park the receiver (or
/// panic `Duration::from_secs_f64`): NaN and negatives mean 0, anything above
/// [`MAX_DRAIN_SECONDS`] means that.
pub fn drain_duration(drain_seconds: Option<f64>) -> Duration {
    match drain_seconds {
        None => DRAIN_AFTER_STOP,
        Some(s) if s.is_nan() => Duration::ZERO,
        Some(s) => Duration::from_secs_f64(s.clamp(0.0, MAX_DRAIN_SECONDS)),
    }
}

/// Resolution of CLOCK_REALTIME in ns (1 on any modern Linux with a TSC or HPET).
pub fn realtime_clock_resolution_ns() -> u64 {
    nix::time::clock_getres(nix::time::ClockId::CLOCK_REALTIME)
        .map(|ts| {
            (ts.tv_sec() as u64)
                .saturating_mul(1_000_000_000)
                .saturating_add(ts.tv_nsec() as u64)
        })
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drains_are_clamped_not_trusted() {
        assert_eq!(drain_duration(None), DRAIN_AFTER_STOP);
        assert_eq!(drain_duration(Some(f64::NAN)), Duration::ZERO);
        assert_eq!(drain_duration(Some(-5.0)), Duration::ZERO);
        let max = Duration::from_secs_f64(MAX_DRAIN_SECONDS);
        assert_eq!(drain_duration(Some(1e20)), max);
        assert_eq!(drain_duration(Some(f64::INFINITY)), max);
    }

    #[test]
    fn an_idle_connection_is_closed_after_the_idle_timeout() {
        use std::io::Read;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Arc::new(AtomicBool::new(false));
        let config = PointConfig {
            idle_timeout: Duration::from_millis(300),
            ..PointConfig::new("p", Ipv4Addr::LOCALHOST)
        };
        let server = {
            let shutdown = Arc::clone(&shutdown);
            thread::spawn(move || serve(listener, config, shutdown))
        };
        let mut idle = TcpStream::connect(addr).unwrap();
        // Half a request, then silence: the point must not wait for the rest forever.
        idle.write_all(br#"{"op":"in"#).unwrap();
        // The client's own timeout is only the test's deadline.
        idle.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let started = Instant::now();
        let mut byte = [0u8; 1];
        let read = idle.read(&mut byte);
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        let waited = started.elapsed();
        assert!(waited < Duration::from_secs(5), "closed after {waited:?}");
        shutdown.store(true, Ordering::Relaxed);
        server.join().unwrap().unwrap();
    }

    #[test]
    fn connection_slots_are_capped_and_given_back() {
        let open = Arc::new(AtomicUsize::new(0));
        let first = ConnectionSlot::take(&open, 2).unwrap();
        let second = ConnectionSlot::take(&open, 2).unwrap();
        assert!(ConnectionSlot::take(&open, 2).is_none());
        drop(first);
        let third = ConnectionSlot::take(&open, 2).unwrap();
        drop((second, third));
        assert_eq!(open.load(Ordering::Acquire), 0);
    }
}
