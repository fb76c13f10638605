//! `mcast-point serve`: a measurement point driven by the MSCS over the control protocol
//! ([`crate::protocol`]).
//!
//! One thread per control connection. Sending and receiving are blocking loops with tight
//! timing, so they run on plain threads rather than an async runtime.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use thiserror::Error;
use tracing::{info, warn};

use crate::metrics::StatsLimits;
use crate::protocol::{
    ControlRequest, ControlResponse, PointInfo, ReceiveRequest, ReceiverReport, SendRequest,
    PROTOCOL_VERSION,
};
use crate::receiver::{Receiver, ReceiverConfig};
use crate::sender::{run_sender, SendLimit, SenderConfig};

/// How long a receiver keeps reading after `stop`, for probes still in flight.
pub const DRAIN_AFTER_STOP: Duration = Duration::from_millis(100);
/// Upper bound on a requested drain.
pub const MAX_DRAIN_SECONDS: f64 = 10.0;

/// Errors of the point server.
#[derive(Debug, Error)]
pub enum PointError {
    /// The control connection failed.
    #[error("control connection: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent something that is not a request.
    #[error("bad request line: {0}")]
    BadRequest(#[from] serde_json::Error),
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
}

/// Serves control connections until `shutdown` is set (checked between accepts).
pub fn serve(
    listener: TcpListener,
    config: PointConfig,
    shutdown: Arc<AtomicBool>,
) -> Result<(), PointError> {
    listener.set_nonblocking(true)?;
    let config = Arc::new(config);
    info!(name = %config.name, addr = ?listener.local_addr()?, "point serving");
    while !shutdown.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                stream.set_nonblocking(false)?;
                let config = Arc::clone(&config);
                thread::spawn(move || {
                    if let Err(err) = handle_connection(stream, &config) {
                        warn!(%peer, cause = %err, "control connection ended with an error");
                    }
                });
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

fn handle_connection(stream: TcpStream, config: &PointConfig) -> Result<(), PointError> {
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let request: ControlRequest = match serde_json::from_str(line.trim()) {
            Ok(request) => request,
            Err(err) => {
                write_response(&mut writer, &error_response(format!("bad request: {err}")))?;
                continue;
            }
        };
        match request {
            ControlRequest::Info => write_response(
                &mut writer,
                &ControlResponse::Info(PointInfo {
                    name: config.name.clone(),
                    data_addr: config.data_addr,
                    protocol_version: PROTOCOL_VERSION,
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
        }
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

fn handle_send(
    request: &SendRequest,
    config: &PointConfig,
    control: &TcpStream,
) -> ControlResponse {
    let sender = SenderConfig {
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
    };
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
    let receiver_config = ReceiverConfig {
        group: request.group,
        port: request.port,
        interface_addr: config.data_addr,
        ssm_source: request.ssm_source,
        session_id: Some(request.session_id),
        limits: config.limits,
    };
    if !(request.max_duration_seconds.is_finite() && request.max_duration_seconds > 0.0) {
        return write_response(
            writer,
            &error_response("max_duration_seconds must be a positive number"),
        );
    }
    let receiver = match Receiver::open(receiver_config) {
        Ok(receiver) => receiver,
        Err(err) => return write_response(writer, &error_response(err)),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs_f64(request.max_duration_seconds);
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

    let mut line = String::new();
    let stop_request = loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break None,
            Ok(_) => match serde_json::from_str::<ControlRequest>(line.trim()) {
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
        // Bounded so a bad request cannot park the receiver; NaN and negatives mean 0.
        let drain = drain_seconds
            .map(|s| Duration::from_secs_f64(s.clamp(0.0, MAX_DRAIN_SECONDS)))
            .unwrap_or(DRAIN_AFTER_STOP);
        thread::sleep(drain);
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

/// Resolution of CLOCK_REALTIME in ns (1 on any modern Linux with a TSC or HPET).
pub fn realtime_clock_resolution_ns() -> u64 {
    nix::time::clock_getres(nix::time::ClockId::CLOCK_REALTIME)
        .map(|ts| ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64)
        .unwrap_or(1)
}
