//! The multicast source: sends probes at a precise rate.
//!
//! Pacing follows a deadline schedule on the monotonic clock: slot `k` is due at
//! `start + k * T` with `T = 1 / rate`, and no probe leaves before its deadline. How soon
//! after it the probe leaves depends on `T` against the pacing granularity `G`
//! ([`SenderConfig::pacing_granularity`], default [`DEFAULT_PACING_GRANULARITY`]):
//!
//! - `T > G` (slow rates): one wakeup per probe. The sender sleeps with 1 ns of timer slack
//!   until shortly before the deadline and spins the rest of the way, because a plain sleep
//!   overshoots by tens of microseconds. Each probe leaves within microseconds of its
//!   deadline; at these rates the wakeups cost little.
//! - `T <= G` (fast rates): the sender sleeps until the next deadline with
//!   `G_eff = min(G, 2 T)` of timer slack (the kernel may wake it anywhere in
//!   `[deadline, deadline + G_eff]`) and then sends, back to back, every probe that is due
//!   by then. Each probe is still stamped immediately before its own send system call, so
//!   the send timestamps stay true; what changes is the departure pattern, from evenly
//!   spaced to bursts of about three. On a slow path a probe can then queue behind its
//!   predecessor (userspace OVS at 10 kpps: median one-way delay 46-56 us against
//!   37-45 us with a wakeup per probe). On this VM a wakeup costs more CPU than a send;
//!   one wakeup per probe made the sender use about 1.7x iperf2's CPU per probe and still
//!   fall behind at 10 kpps. `G = 0` restores a wakeup per probe at every rate.
//!
//!   The burst goes out as one `send` per probe, not one `sendmmsg`: a batched call would
//!   carry one timestamp for the whole batch while its later probes leave microseconds
//!   after it (the kernel pushes each through the whole local path before the next), which
//!   would bias their one-way delay; the system calls saved are a small part of the cost
//!   next to the wakeups.
//!
//! Why the burst bound keeps the rate honest: a probe is sent only while its lateness
//! (send time minus deadline) is at most `max_lag = G_eff + max_catch_up_packets * T`
//! (`G_eff` is 0 in the slow mode). A sender that falls further behind (descheduled, slow
//! send) rebases the schedule to "now" and counts a slip instead of bursting to catch up:
//! a longer burst would measure the sender, not the network. Hence every departure lies in
//! `[deadline, deadline + max_lag]`, so one wakeup sends at most `max_lag / T + 1` probes
//! (7 with the defaults at any fast rate), any window of `n` intervals holds `n`
//! departures give or take that bound, and without slips the long-run rate is exactly the
//! requested one. The report carries the measured lateness, inter-departure error and
//! slips so a run shows how evenly it was paced.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use thiserror::Error;

// Part of the result document, whose types live in crates/api.
pub use measurelab_api::result::SenderReport;

use crate::wire::{Probe, WireError, HEADER_LEN, MAX_PROBE_LEN};

/// Highest accepted rate: beyond this the deadline arithmetic is below a microsecond.
pub const MAX_RATE_PPS: f64 = 1_000_000.0;

/// Default pacing granularity: intervals up to this long are paced in small bursts (see the
/// module docs). 200 us keeps the typical burst at 10 kpps to about three probes (a
/// 600-byte blip at 200-byte probes) while cutting the wakeups per probe to about a third.
pub const DEFAULT_PACING_GRANULARITY: Duration = Duration::from_micros(200);

/// The effective granularity never exceeds this many intervals, so a wakeup sends about
/// three probes by design at any rate. Without it the bursts would grow with the rate (14
/// probes in 200 us at 70 kpps), and the benchmark showed userspace OVS forwarding such
/// bursts far more cheaply than evenly spaced probes: the pattern, not the path, would set
/// the measured capacity.
pub const MAX_GRANULARITY_INTERVALS: u32 = 2;

/// Largest accepted pacing granularity: beyond this a "burst" would be a visible pause.
pub const MAX_PACING_GRANULARITY: Duration = Duration::from_millis(10);

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
    /// Slow mode only: how long before a deadline the sender stops sleeping and spins.
    pub spin_threshold: Duration,
    /// How many intervals beyond the pacing granularity the sender may fall behind before
    /// rebasing its schedule.
    pub max_catch_up_packets: u32,
    /// Intervals up to this long are paced in bursts of the probes due per wakeup; longer
    /// ones get a precise wakeup per probe. Zero always wakes per probe.
    pub pacing_granularity: Duration,
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
            pacing_granularity: DEFAULT_PACING_GRANULARITY,
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
        if self.pacing_granularity > MAX_PACING_GRANULARITY {
            return invalid(
                "pacing_granularity",
                format!(
                    "{} us is above the limit of {} us",
                    self.pacing_granularity.as_micros(),
                    MAX_PACING_GRANULARITY.as_micros()
                ),
            );
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

/// CLOCK_REALTIME in ns since the Unix epoch.
pub fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// What the sender should do next, per [`PacingSchedule::step`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PacingStep {
    /// Nothing is due: sleep until this time (ns since the schedule's origin).
    WaitUntil(u64),
    /// The next slot is due: send one probe now, then call [`PacingSchedule::advance`].
    Send {
        /// Deadline of the slot, ns since the origin.
        due_ns: u64,
    },
    /// The duration limit is reached.
    Finished,
}

/// The deadline schedule without a clock: times are ns since an origin chosen by the
/// caller, so the arithmetic can be checked with simulated time. The rules and the bound
/// they guarantee are in the module docs.
#[derive(Debug, Clone)]
pub struct PacingSchedule {
    interval_ns: f64,
    /// Where slot 0 falls; moved forward by a slip.
    base_ns: f64,
    slot: u64,
    max_lag_ns: f64,
    granularity_ns: u64,
    end_ns: Option<f64>,
    slips: u64,
    /// How far the slips moved slot 0, in total.
    slipped_ns: f64,
}

impl PacingSchedule {
    /// A schedule at `rate_pps` starting at 0. `granularity` takes effect only when the
    /// interval is not longer (see the module docs); `duration` ends it.
    pub fn new(
        rate_pps: f64,
        granularity: Duration,
        max_catch_up_packets: u32,
        duration: Option<Duration>,
    ) -> Self {
        let interval_ns = 1e9 / rate_pps;
        let granularity_ns = granularity.as_nanos() as u64;
        let granularity_ns = if interval_ns <= granularity_ns as f64 {
            granularity_ns.min((MAX_GRANULARITY_INTERVALS as f64 * interval_ns) as u64)
        } else {
            0
        };
        Self {
            interval_ns,
            base_ns: 0.0,
            slot: 0,
            max_lag_ns: granularity_ns as f64 + max_catch_up_packets as f64 * interval_ns,
            granularity_ns,
            end_ns: duration.map(|d| d.as_nanos() as f64),
            slips: 0,
            slipped_ns: 0.0,
        }
    }

    /// Granularity in effect: 0 means one precise wakeup per probe.
    pub fn effective_granularity(&self) -> Duration {
        Duration::from_nanos(self.granularity_ns)
    }

    /// Largest lateness a sent probe may have before the schedule slips.
    pub fn max_lag(&self) -> Duration {
        Duration::from_nanos(self.max_lag_ns as u64)
    }

    /// Most probes one wakeup can send: the bound of the module docs.
    pub fn burst_bound(&self) -> u64 {
        (self.max_lag_ns / self.interval_ns).floor() as u64 + 1
    }

    /// Times the schedule was rebased because the sender fell behind.
    pub fn slips(&self) -> u64 {
        self.slips
    }

    /// Slots the slips skipped: each slip moves slot 0 forward by its
    /// lateness, so the run's end is reached that many slots sooner. Under a
    /// duration, slots used (sent or failed) plus these is the nominal count.
    pub fn skipped_slots(&self) -> u64 {
        (self.slipped_ns / self.interval_ns).floor() as u64
    }

    fn slot_due_ns(&self, slot: u64) -> f64 {
        self.base_ns + slot as f64 * self.interval_ns
    }

    /// Decides what to do at `now_ns`. Rebases (a slip) when the next slot is more than
    /// the maximum lag overdue, so the probe then sent is due "now".
    pub fn step(&mut self, now_ns: u64) -> PacingStep {
        let now = now_ns as f64;
        let mut due = self.slot_due_ns(self.slot);
        if now - due > self.max_lag_ns {
            self.slips += 1;
            // Only the part before the end skips slots of this run: a
            // slip past it ends the run rather than skipping anything.
            let skipped_until = self.end_ns.map_or(now, |end| now.min(end));
            self.slipped_ns += (skipped_until - due).max(0.0);
            self.base_ns = now - self.slot as f64 * self.interval_ns;
            due = now;
        }
        if self.end_ns.is_some_and(|end| due >= end) {
            return PacingStep::Finished;
        }
        if now < due {
            return PacingStep::WaitUntil(due.ceil() as u64);
        }
        PacingStep::Send { due_ns: due as u64 }
    }

    /// Consumes the slot that [`PacingStep::Send`] announced.
    pub fn advance(&mut self) {
        self.slot += 1;
    }
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

/// Sets the calling thread's timer slack and puts the previous value back on drop: the
/// sender runs on threads (the point's connection handler) that outlive it.
struct TimerSlackGuard {
    previous_ns: Option<u64>,
}

impl TimerSlackGuard {
    fn set(slack_ns: u64) -> Self {
        let previous_ns = nix::sys::prctl::get_timerslack()
            .ok()
            .and_then(|ns| u64::try_from(ns).ok());
        // Failure only costs pacing precision or CPU, so it is not an error.
        let _ = nix::sys::prctl::set_timerslack(slack_ns.max(1));
        Self { previous_ns }
    }
}

impl Drop for TimerSlackGuard {
    fn drop(&mut self) {
        if let Some(ns) = self.previous_ns {
            let _ = nix::sys::prctl::set_timerslack(ns.max(1));
        }
    }
}

/// Streaming pacing statistics over the sends.
#[derive(Default)]
struct PacingStats {
    lateness_sum_ns: u128,
    lateness_max_ns: u64,
    lateness_samples: u64,
    departure_error_sum_ns: u128,
    departure_error_max_ns: u64,
    departure_error_samples: u64,
    /// (send time, deadline) of the previous successful send, ns since the origin.
    previous: Option<(u64, u64)>,
}

impl PacingStats {
    fn record(&mut self, sent_ns: u64, due_ns: u64) {
        let lateness = sent_ns.saturating_sub(due_ns);
        self.lateness_sum_ns += lateness as u128;
        self.lateness_max_ns = self.lateness_max_ns.max(lateness);
        self.lateness_samples += 1;
        if let Some((previous_sent, previous_due)) = self.previous {
            let actual_gap = sent_ns as i128 - previous_sent as i128;
            let scheduled_gap = due_ns as i128 - previous_due as i128;
            let error = (actual_gap - scheduled_gap).unsigned_abs() as u64;
            self.departure_error_sum_ns += error as u128;
            self.departure_error_max_ns = self.departure_error_max_ns.max(error);
            self.departure_error_samples += 1;
        }
        self.previous = Some((sent_ns, due_ns));
    }

    fn mean_us(sum_ns: u128, samples: u64) -> f64 {
        if samples == 0 {
            0.0
        } else {
            sum_ns as f64 / samples as f64 / 1e3
        }
    }
}

/// Sends probes until the limit is reached or `stop` becomes true.
pub fn run_sender(config: &SenderConfig, stop: &AtomicBool) -> Result<SenderReport, SenderError> {
    config.validate()?;
    let socket = open_socket(config)?;

    let duration = match config.limit {
        SendLimit::DurationSeconds(s) => Some(Duration::from_secs_f64(s)),
        SendLimit::Count(_) => None,
    };
    let count_limit = match config.limit {
        SendLimit::Count(n) => n,
        SendLimit::DurationSeconds(_) => u64::MAX,
    };
    let mut schedule = PacingSchedule::new(
        config.rate_pps,
        config.pacing_granularity,
        config.max_catch_up_packets,
        duration,
    );
    let granularity = schedule.effective_granularity();
    let burst_mode = !granularity.is_zero();
    // Burst mode: the slack is the lateness the schedule tolerates anyway, and lets the
    // kernel batch the wakeup. Precise mode: the default 50 us slack would be most of an
    // interval at a few kpps, so 1 ns keeps the sleep tight and the spin short.
    let _slack = TimerSlackGuard::set(granularity.as_nanos() as u64);

    let mut buffer = vec![0u8; config.packet_size];
    let origin = Instant::now();
    let since_origin_ns = |at: Instant| at.saturating_duration_since(origin).as_nanos() as u64;

    let mut sequence: u64 = 0;
    let mut send_errors: u64 = 0;
    let mut first_send_error = None;
    let mut wakeups: u64 = 0;
    let mut pacing = PacingStats::default();
    let mut first_send_ns = 0;
    let mut last_send_ns = 0;
    let mut first_send_at = None;
    let mut last_send_at = origin;

    while sequence < count_limit && !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let due_ns = match schedule.step(since_origin_ns(now)) {
            PacingStep::Finished => break,
            PacingStep::WaitUntil(due_ns) => {
                let due = origin + Duration::from_nanos(due_ns);
                wakeups += 1;
                if burst_mode {
                    std::thread::sleep(due.saturating_duration_since(now));
                } else {
                    wait_until(due, config.spin_threshold);
                }
                continue;
            }
            PacingStep::Send { due_ns } => due_ns,
        };
        let send_ns = realtime_ns();
        Probe {
            session_id: config.session_id,
            sequence,
            send_time_ns: send_ns,
        }
        .encode_into(&mut buffer)?;
        let sent_at = Instant::now();
        match socket.send(&buffer) {
            Ok(_) => {
                pacing.record(since_origin_ns(sent_at), due_ns);
                if first_send_at.is_none() {
                    first_send_at = Some(sent_at);
                    first_send_ns = send_ns;
                }
                last_send_at = sent_at;
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
        schedule.advance();
    }

    if sequence == 0 && send_errors > 0 {
        return Err(SenderError::AllSendsFailed {
            attempts: send_errors,
            first_error: first_send_error.unwrap_or_default(),
        });
    }
    let span = first_send_at
        .map(|first| last_send_at - first)
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
        schedule_slips: schedule.slips(),
        slots_skipped: Some(schedule.skipped_slots()),
        max_lateness_us: pacing.lateness_max_ns as f64 / 1e3,
        mean_lateness_us: PacingStats::mean_us(pacing.lateness_sum_ns, pacing.lateness_samples),
        mean_abs_departure_error_us: PacingStats::mean_us(
            pacing.departure_error_sum_ns,
            pacing.departure_error_samples,
        ),
        max_abs_departure_error_us: pacing.departure_error_max_ns as f64 / 1e3,
        pacing_granularity_us: granularity.as_secs_f64() * 1e6,
        wakeups,
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

    /// Drives a schedule with a simulated clock: each wakeup lands `wake_delay(i)` ns after
    /// the requested time and each send takes `send_ns`. Returns the sends per wakeup and
    /// every send's lateness.
    fn simulate(
        schedule: &mut PacingSchedule,
        mut wake_delay: impl FnMut(u64) -> u64,
        send_ns: u64,
        mut stall_after: Option<(u64, u64)>,
    ) -> (Vec<u64>, Vec<u64>) {
        let mut now = 0;
        let mut bursts = vec![0u64];
        let mut lateness = Vec::new();
        let mut wakeups = 0;
        loop {
            match schedule.step(now) {
                PacingStep::Finished => break,
                PacingStep::WaitUntil(at) => {
                    assert!(at > now, "waits only for the future");
                    now = at + wake_delay(wakeups);
                    wakeups += 1;
                    bursts.push(0);
                }
                PacingStep::Send { due_ns } => {
                    assert!(now >= due_ns, "sent before its deadline");
                    lateness.push(now - due_ns);
                    *bursts.last_mut().unwrap() += 1;
                    schedule.advance();
                    now += send_ns;
                    if let Some((after, stall)) = stall_after {
                        if lateness.len() as u64 == after {
                            now += stall;
                            stall_after = None;
                        }
                    }
                }
            }
        }
        bursts.retain(|b| *b > 0);
        (bursts, lateness)
    }

    /// Deterministic pseudo-random wake delays in `0..bound`.
    fn delays(bound: u64) -> impl FnMut(u64) -> u64 {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        move |_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound
        }
    }

    #[test]
    fn fast_rates_send_bounded_bursts_and_keep_the_exact_rate() {
        let granularity = Duration::from_micros(200);
        let mut schedule =
            PacingSchedule::new(10_000.0, granularity, 4, Some(Duration::from_secs(1)));
        assert_eq!(schedule.effective_granularity(), granularity);
        // 200 us + 4 intervals of 100 us.
        assert_eq!(schedule.max_lag(), Duration::from_micros(600));
        assert_eq!(schedule.burst_bound(), 7);
        // The kernel may wake anywhere in the slack, plus up to 100 us of latency.
        let (bursts, lateness) = simulate(&mut schedule, delays(300_000), 5_000, None);
        assert_eq!(schedule.slips(), 0);
        assert_eq!(lateness.len(), 10_000, "one probe per 100 us slot in 1 s");
        assert!(lateness.iter().all(|l| *l <= 600_000));
        assert!(bursts.iter().all(|b| *b <= schedule.burst_bound()));
        let mean_burst = lateness.len() as f64 / bursts.len() as f64;
        assert!(
            mean_burst > 1.5,
            "wakeups are shared: {mean_burst} probes each"
        );
    }

    #[test]
    fn the_granularity_shrinks_to_two_intervals_at_high_rates() {
        let schedule = PacingSchedule::new(100_000.0, Duration::from_micros(200), 4, None);
        assert_eq!(schedule.effective_granularity(), Duration::from_micros(20));
        assert_eq!(schedule.burst_bound(), 7);
    }

    #[test]
    fn slow_rates_get_one_wakeup_per_probe() {
        let mut schedule = PacingSchedule::new(
            1_000.0,
            Duration::from_micros(200),
            4,
            Some(Duration::from_secs(1)),
        );
        assert_eq!(schedule.effective_granularity(), Duration::ZERO);
        let (bursts, lateness) = simulate(&mut schedule, delays(20_000), 5_000, None);
        assert_eq!(lateness.len(), 1_000);
        assert!(bursts.iter().all(|b| *b == 1));
        assert_eq!(schedule.slips(), 0);
    }

    #[test]
    fn zero_granularity_never_bursts_on_time() {
        let mut schedule =
            PacingSchedule::new(10_000.0, Duration::ZERO, 4, Some(Duration::from_secs(1)));
        assert_eq!(schedule.max_lag(), Duration::from_micros(400));
        let (bursts, lateness) = simulate(&mut schedule, |_| 0, 5_000, None);
        assert_eq!(lateness.len(), 10_000);
        assert!(bursts.iter().all(|b| *b == 1));
    }

    #[test]
    fn a_stall_slips_the_schedule_instead_of_bursting() {
        let mut schedule = PacingSchedule::new(
            10_000.0,
            Duration::from_micros(200),
            4,
            Some(Duration::from_secs(1)),
        );
        // 10 ms stuck after the 100th probe: 100 slots would be overdue.
        let (bursts, lateness) = simulate(&mut schedule, |_| 0, 0, Some((100, 10_000_000)));
        assert_eq!(schedule.slips(), 1);
        assert!(bursts.iter().all(|b| *b <= schedule.burst_bound()));
        assert!(lateness.iter().all(|l| *l <= 600_000));
        // Slot 100 is rebased onto 19.9 ms, so 1 s holds 100 + ceil(980.1 ms / 100 us).
        assert_eq!(lateness.len(), 100 + 9_801);
        // The 9.9 ms the rebase moved slot 0 by: the 99 slots never sent,
        // which with those sent make the nominal 10,000.
        assert_eq!(schedule.skipped_slots(), 99);
    }

    #[test]
    fn sent_and_skipped_slots_make_the_nominal_count_however_the_sender_stalls() {
        // 10,000 slots of 100 us; slow sends and wakeups, and one stall of
        // any length anywhere, several slips among them.
        for (after, stall_ns) in [
            (1, 5_000_000),
            (100, 10_000_000),
            (5_000, 333_333),
            (7_777, 123_456_789),
            (9_990, 50_000_000),
        ] {
            for (send_ns, wake_ns) in [(0, 0), (30_000, 20_000), (150_000, 450_000)] {
                let mut schedule = PacingSchedule::new(
                    10_000.0,
                    Duration::from_micros(200),
                    4,
                    Some(Duration::from_secs(1)),
                );
                let (_, lateness) =
                    simulate(&mut schedule, |_| wake_ns, send_ns, Some((after, stall_ns)));
                let accounted = lateness.len() as u64 + schedule.skipped_slots();
                assert!(
                    accounted.abs_diff(10_000) <= 1,
                    "stall {stall_ns} ns after {after}, sends {send_ns} ns, wakeups +{wake_ns} ns: \
                     {} sent + {} skipped ({} slips)",
                    lateness.len(),
                    schedule.skipped_slots(),
                    schedule.slips()
                );
            }
        }
    }

    #[test]
    fn a_duration_ends_the_schedule_at_the_last_slot_before_it() {
        let mut schedule = PacingSchedule::new(
            3.0,
            Duration::from_micros(200),
            4,
            Some(Duration::from_secs(1)),
        );
        let (_, lateness) = simulate(&mut schedule, |_| 0, 0, None);
        assert_eq!(lateness.len(), 3, "slots at 0, 333 ms and 667 ms");
    }

    #[test]
    fn granularity_above_the_limit_is_rejected() {
        let mut bad = config();
        bad.pacing_granularity = MAX_PACING_GRANULARITY + Duration::from_micros(1);
        assert!(matches!(
            bad.validate(),
            Err(SenderError::InvalidConfig {
                field: "pacing_granularity",
                ..
            })
        ));
    }
}
