//! The multicast source: sends probes at a precise rate.
//!
//! Pacing follows a deadline schedule on the monotonic clock: probe `k` is due at
//! `start + k / rate`. The sender sleeps until shortly before a deadline and spins the rest
//! of the way, because a plain sleep overshoots by tens of microseconds (timer slack), which
//! at 10 kpps would be most of the interval. If the sender falls more than
//! `max_catch_up_packets` intervals behind (descheduled, slow send), the schedule is rebased
//! to "now" and counted as a slip instead of bursting to catch up: a burst would measure the
//! sender, not the network.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use thiserror::Error;

use crate::wire::{Probe, WireError, HEADER_LEN, MAX_PROBE_LEN};

/// Highest accepted rate: beyond this the deadline arithmetic is below a microsecond.
pub const MAX_RATE_PPS: f64 = 1_000_000.0;

/// Errors of the sender.
#[derive(Debug, Error)]
pub enum SenderError {
    /// A configuration field is out of range.
    #[error("invalid sender config: {field}: {reason}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// Creating or configuring the socket failed.
    #[error("socket setup failed ({step}): {source}")]
    Socket {
        /// Which step failed.
        step: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// Building a probe failed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// Every send failed: nothing reached the network.
    #[error("all {attempts} sends failed; first error: {first_error}")]
    AllSendsFailed {
        /// Sends tried.
        attempts: u64,
        /// The first error seen.
        first_error: String,
    },
}

/// When the sender stops.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SendLimit {
    /// Stop after this many seconds.
    DurationSeconds(f64),
    /// Stop after this many probes.
    Count(u64),
}

/// Everything the sender needs.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// Multicast group.
    pub group: Ipv4Addr,
    /// Destination UDP port.
    pub port: u16,
    /// Local address to send from; also selects the outgoing interface (IP_MULTICAST_IF).
    pub source_addr: Option<Ipv4Addr>,
    /// IP TTL of the probes.
    pub ttl: u32,
    /// Probes per second.
    pub rate_pps: f64,
    /// UDP payload size of each probe, header included.
    pub packet_size: usize,
    /// Duration or count.
    pub limit: SendLimit,
    /// Session id written into every probe.
    pub session_id: u64,
    /// How long before a deadline the sender stops sleeping and starts spinning.
    pub spin_threshold: Duration,
    /// How many intervals the sender may fall behind before rebasing its schedule.
    pub max_catch_up_packets: u32,
}

impl SenderConfig {
    /// A config with the defaults for everything but the destination, rate and limit.
    pub fn new(group: Ipv4Addr, port: u16, rate_pps: f64, limit: SendLimit) -> Self {
        Self {
            group,
            port,
            source_addr: None,
            ttl: 1,
            rate_pps,
            packet_size: 64,
            limit,
            session_id: rand::random(),
            spin_threshold: Duration::from_micros(20),
            max_catch_up_packets: 4,
        }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), SenderError> {
        let invalid = |field, reason: String| Err(SenderError::InvalidConfig { field, reason });
        if !self.group.is_multicast() {
            return invalid(
                "group",
                format!("{} is not an IPv4 multicast address", self.group),
            );
        }
        if self.port == 0 {
            return invalid("port", "must be 1..=65535".into());
        }
        if !(self.rate_pps.is_finite() && self.rate_pps > 0.0 && self.rate_pps <= MAX_RATE_PPS) {
            return invalid(
                "rate_pps",
                format!("{} is not in (0, {MAX_RATE_PPS}]", self.rate_pps),
            );
        }
        if !(HEADER_LEN..=MAX_PROBE_LEN).contains(&self.packet_size) {
            return invalid(
                "packet_size",
                format!(
                    "{} is not in {HEADER_LEN}..={MAX_PROBE_LEN}",
                    self.packet_size
                ),
            );
        }
        if !(1..=255).contains(&self.ttl) {
            return invalid("ttl", format!("{} is not in 1..=255", self.ttl));
        }
        match self.limit {
            SendLimit::DurationSeconds(s) if !(s.is_finite() && s > 0.0 && s <= 86_400.0) => {
                invalid("duration_seconds", format!("{s} is not in (0, 86400]"))
            }
            SendLimit::Count(0) => invalid("count", "must be at least 1".into()),
            _ => Ok(()),
        }
    }
}

/// What the sender did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SenderReport {
    /// Session id of the probes.
    pub session_id: u64,
    /// Probes handed to the kernel successfully (sequence numbers 0..packets_sent).
    pub packets_sent: u64,
    /// Sends the kernel refused (e.g. ENOBUFS); those sequence numbers were reused.
    pub send_errors: u64,
    /// First send error, if any.
    pub first_send_error: Option<String>,
    /// Requested rate.
    pub requested_rate_pps: f64,
    /// `(packets_sent - 1) / (last send - first send)`.
    pub achieved_rate_pps: f64,
    /// Times the sender fell too far behind and rebased its schedule.
    pub schedule_slips: u64,
    /// Largest lateness of a send against its deadline, in microseconds.
    pub max_lateness_us: f64,
    /// Probe size in bytes (UDP payload).
    pub packet_size_bytes: usize,
    /// Wall-clock time of the first send, ns since the Unix epoch.
    pub first_send_ns: u64,
    /// Wall-clock time of the last send, ns since the Unix epoch.
    pub last_send_ns: u64,
}

/// CLOCK_REALTIME in ns since the Unix epoch.
pub fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn open_socket(config: &SenderConfig) -> Result<Socket, SenderError> {
    let step = |step| move |source| SenderError::Socket { step, source };
    let socket =
        Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(step("socket"))?;
    socket
        .set_multicast_ttl_v4(config.ttl)
        .map_err(step("IP_MULTICAST_TTL"))?;
    // The source must not hear itself: on a shared host loopback copies would look like a
    // perfect extra receiver.
    socket
        .set_multicast_loop_v4(false)
        .map_err(step("IP_MULTICAST_LOOP"))?;
    if let Some(source) = config.source_addr {
        socket
            .set_multicast_if_v4(&source)
            .map_err(step("IP_MULTICAST_IF"))?;
        socket
            .bind(&SockAddr::from(SocketAddrV4::new(source, 0)))
            .map_err(step("bind source address"))?;
    }
    // A large buffer absorbs scheduling hiccups instead of failing sends with ENOBUFS.
    let _ = socket.set_send_buffer_size(4 << 20);
    socket
        .connect(&SockAddr::from(SocketAddr::V4(SocketAddrV4::new(
            config.group,
            config.port,
        ))))
        .map_err(step("connect to group"))?;
    Ok(socket)
}

fn wait_until(deadline: Instant, spin_threshold: Duration) {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        let remaining = deadline - now;
        if remaining > spin_threshold {
            std::thread::sleep(remaining - spin_threshold);
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Sends probes until the limit is reached or `stop` becomes true.
pub fn run_sender(config: &SenderConfig, stop: &AtomicBool) -> Result<SenderReport, SenderError> {
    config.validate()?;
    let socket = open_socket(config)?;
    // Default timer slack is 50 us; 1 ns makes the sleep part of the pacing tight, so the
    // spin part stays short. Failure only costs CPU, so it is not an error.
    let _ = nix::sys::prctl::set_timerslack(1);

    let interval_ns = 1e9 / config.rate_pps;
    let max_lag = Duration::from_nanos((interval_ns * config.max_catch_up_packets as f64) as u64);
    let mut buffer = vec![0u8; config.packet_size];
    let mut schedule_start = Instant::now();
    let end = match config.limit {
        SendLimit::DurationSeconds(s) => Some(schedule_start + Duration::from_secs_f64(s)),
        SendLimit::Count(_) => None,
    };
    let count_limit = match config.limit {
        SendLimit::Count(n) => n,
        SendLimit::DurationSeconds(_) => u64::MAX,
    };

    let mut slot: u64 = 0;
    let mut sequence: u64 = 0;
    let mut send_errors: u64 = 0;
    let mut first_send_error = None;
    let mut schedule_slips = 0;
    let mut max_lateness = Duration::ZERO;
    let mut first_send_ns = 0;
    let mut last_send_ns = 0;
    let mut first_send_instant = None;
    let mut last_send_instant = schedule_start;

    while sequence < count_limit && !stop.load(Ordering::Relaxed) {
        let mut due = schedule_start + Duration::from_nanos((slot as f64 * interval_ns) as u64);
        if end.is_some_and(|end| due >= end) {
            break;
        }
        let now = Instant::now();
        if now < due {
            wait_until(due, config.spin_threshold);
        } else if now - due > max_lag {
            schedule_slips += 1;
            schedule_start = now - Duration::from_nanos((slot as f64 * interval_ns) as u64);
            due = now;
            if end.is_some_and(|end| due >= end) {
                break;
            }
        }
        let send_ns = realtime_ns();
        Probe {
            session_id: config.session_id,
            sequence,
            send_time_ns: send_ns,
        }
        .encode_into(&mut buffer)?;
        let sent_at = Instant::now();
        max_lateness = max_lateness.max(sent_at.saturating_duration_since(due));
        match socket.send(&buffer) {
            Ok(_) => {
                if first_send_instant.is_none() {
                    first_send_instant = Some(sent_at);
                    first_send_ns = send_ns;
                }
                last_send_instant = sent_at;
                last_send_ns = send_ns;
                sequence += 1;
            }
            Err(err) => {
                send_errors += 1;
                if first_send_error.is_none() {
                    first_send_error = Some(err.to_string());
                }
            }
        }
        slot += 1;
    }

    if sequence == 0 && send_errors > 0 {
        return Err(SenderError::AllSendsFailed {
            attempts: send_errors,
            first_error: first_send_error.unwrap_or_default(),
        });
    }
    let span = first_send_instant
        .map(|first| last_send_instant - first)
        .unwrap_or_default();
    let achieved_rate_pps = if sequence > 1 && !span.is_zero() {
        (sequence - 1) as f64 / span.as_secs_f64()
    } else {
        0.0
    };
    Ok(SenderReport {
        session_id: config.session_id,
        packets_sent: sequence,
        send_errors,
        first_send_error,
        requested_rate_pps: config.rate_pps,
        achieved_rate_pps,
        schedule_slips,
        max_lateness_us: max_lateness.as_secs_f64() * 1e6,
        packet_size_bytes: config.packet_size,
        first_send_ns,
        last_send_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SenderConfig {
        SenderConfig::new(
            Ipv4Addr::new(239, 1, 2, 3),
            5000,
            100.0,
            SendLimit::Count(3),
        )
    }

    #[test]
    fn validation_names_the_bad_field() {
        type Mutation = Box<dyn Fn(&mut SenderConfig)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("group", Box::new(|c| c.group = Ipv4Addr::new(10, 0, 0, 1))),
            ("port", Box::new(|c| c.port = 0)),
            ("rate_pps", Box::new(|c| c.rate_pps = 0.0)),
            ("rate_pps", Box::new(|c| c.rate_pps = f64::NAN)),
            ("packet_size", Box::new(|c| c.packet_size = 10)),
            ("ttl", Box::new(|c| c.ttl = 0)),
            ("count", Box::new(|c| c.limit = SendLimit::Count(0))),
            (
                "duration_seconds",
                Box::new(|c| c.limit = SendLimit::DurationSeconds(-1.0)),
            ),
        ];
        for (field, mutate) in cases {
            let mut bad = config();
            mutate(&mut bad);
            match bad.validate() {
                Err(SenderError::InvalidConfig { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{field}: expected InvalidConfig, got {other:?}"),
            }
        }
        config().validate().unwrap();
    }
}
