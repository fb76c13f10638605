//! The wire reference of the `wire` bench section: tcpdump captures the probes at the
//! sender's and the receiver's interface with the kernel's capture timestamps
//! (nanosecond pcap), the probes are matched by sequence number, and one-way delay and
//! RFC 3550 jitter are computed from those times alone.
//!
//! Both namespaces share the host's CLOCK_REALTIME, so a receive capture time minus the
//! send capture time is a true one-way delay with no clock offset. The sender-side
//! capture is stamped where the frame leaves the sender's stack (`dev_queue_xmit`), the
//! receiver-side one where the frame enters the receiver's (`netif_rx`): everything in
//! between is the path, everything outside it is the measuring program.
//!
//! The jitter here is computed independently of `metrics.rs` on purpose: a reference that
//! reused the code under test would share its mistakes.

mod pcap;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use measurelab_testbed::Netns;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Bytes kept per frame: Ethernet, IPv4 and UDP headers plus our 32-byte probe header
/// (iperf2's needs 16).
const SNAP_LENGTH: &str = "128";
/// How long tcpdump may take to open its capture.
const CAPTURE_START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running tcpdump writing one interface's probes to a pcap file.
pub struct Capture {
    child: Option<Child>,
    pcap: PathBuf,
    log: PathBuf,
}

impl Capture {
    /// Captures UDP datagrams to `port` on `interface` of `ns` in one direction (`in` or
    /// `out`), and returns once tcpdump reports that it is listening.
    pub fn start(
        ns: &Netns,
        interface: &str,
        direction: &str,
        port: u16,
        directory: &Path,
        name: &str,
    ) -> Result<Self> {
        let pcap = directory.join(format!("{name}.pcap"));
        let log = directory.join(format!("{name}.log"));
        let child = ns
            .command("tcpdump")
            .args(["-i", interface, "-n", "-Q", direction, "-s", SNAP_LENGTH])
            // Host timestamps (veths have no adapter clock) at nanosecond precision; a
            // 16 MiB ring so a stalled tcpdump cannot drop frames at these rates; stay
            // root so the file can be written where the bench keeps it.
            .args(["-j", "host", "--time-stamp-precision=nano", "-B", "16384"])
            .args(["-Z", "root", "-w"])
            .arg(&pcap)
            .args(["udp", "dst", "port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .spawn()
            .context("starting tcpdump (is it installed? scripts/packages.txt)")?;
        let mut capture = Self {
            child: Some(child),
            pcap,
            log,
        };
        let deadline = Instant::now() + CAPTURE_START_TIMEOUT;
        loop {
            let said = fs::read_to_string(&capture.log).unwrap_or_default();
            if said.contains("listening on") {
                return Ok(capture);
            }
            if let Some(child) = capture.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("tcpdump on {interface} exited ({status}): {said}");
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "tcpdump on {interface} did not start within {CAPTURE_START_TIMEOUT:?}: {said}"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops tcpdump (SIGINT flushes the file) and returns the captured frames, and
    /// how many frames tcpdump says the kernel dropped.
    pub fn finish(mut self) -> Result<(Vec<pcap::UdpFrame>, u64)> {
        let Some(child) = self.child.take() else {
            bail!("capture already finished");
        };
        kill(Pid::from_raw(child.id() as i32), Signal::SIGINT)?;
        child.wait_with_output()?;
        let said = fs::read_to_string(&self.log).unwrap_or_default();
        let dropped = said
            .lines()
            .find(|l| l.contains("dropped by kernel"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let frames = pcap::udp_frames(&fs::read(&self.pcap)?)
            .with_context(|| format!("reading {}", self.pcap.display()))?;
        Ok((frames, dropped))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sequence number and the sender's own send timestamp (ns) from a probe payload.
pub type Decoder = fn(&[u8]) -> Option<(u64, u64)>;

/// Our probe header (mcast/src/wire.rs): magic, sequence at 16, send time at 24. Read by
/// hand because the snap length cuts the padding that `Probe::decode` checks.
pub fn decode_ours(payload: &[u8]) -> Option<(u64, u64)> {
    use measurelab_mcast::wire::{HEADER_LEN, MAGIC};
    let header = payload.get(..HEADER_LEN)?;
    if header[..4] != MAGIC {
        return None;
    }
    let field = |at: usize| Some(u64::from_be_bytes(header.get(at..at + 8)?.try_into().ok()?));
    Some((field(16)?, field(24)?))
}

/// iperf2's UDP header: `int32 id, u32 tv_sec, u32 tv_usec, int32 id2` (network order;
/// id2 holds the upper sequence bits). A negative id marks the client's closing
/// datagrams, which are not probes.
pub fn decode_iperf2(payload: &[u8]) -> Option<(u64, u64)> {
    let field = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(
            payload.get(at..at + 4)?.try_into().ok()?,
        ))
    };
    let id = field(0)? as i32;
    if id < 0 {
        return None;
    }
    let sequence = (u64::from(field(12)?) << 32) | u64::from(id as u32);
    let send_ns = u64::from(field(4)?) * 1_000_000_000 + u64::from(field(8)?) * 1_000;
    Some((sequence, send_ns))
}

/// Figures of one run computed from the captures.
#[derive(Debug, Clone, Copy)]
pub struct WireFigures {
    /// Probes seen at both interfaces.
    pub matched: usize,
    /// Probes captured at the receiver with no sender-side capture.
    pub unmatched: usize,
    /// Median of receive capture minus send capture.
    pub delay_median_us: f64,
    /// RFC 3550 jitter over the wire transit times, in receive-capture order: the
    /// running estimate after the last probe, which is what both tools report.
    pub jitter_us: f64,
    /// The running estimate averaged over every arrival of the run. The final value
    /// weighs the last ~16 arrivals most (a 1/16 moving average), so one stall near the
    /// end of a run moves it several-fold; the mean shows the run as a whole.
    pub jitter_run_mean_us: f64,
    /// Median of send capture minus the program's send timestamp: the sender's own
    /// stack time, part of what the program calls one-way delay.
    pub stack_median_us: f64,
    /// 99th percentile of the same.
    pub stack_p99_us: f64,
    /// RFC 3550 jitter of receive capture minus the program's send timestamp: what the
    /// program's jitter would be if its receive stamps were the capture's.
    pub jitter_from_send_stamps_us: f64,
}

/// Matches the receiver's frames to the sender's by sequence number and computes the
/// reference figures.
pub fn analyse(
    sent: &[pcap::UdpFrame],
    received: &[pcap::UdpFrame],
    decode: Decoder,
) -> Result<WireFigures> {
    let mut sent_at = std::collections::HashMap::new();
    for frame in sent {
        if let Some((sequence, stamp_ns)) = decode(&frame.payload) {
            // The first copy: a probe leaves the sender once.
            sent_at
                .entry(sequence)
                .or_insert((frame.captured_ns, stamp_ns));
        }
    }
    let mut wire_transits = Vec::new();
    let mut stamp_transits = Vec::new();
    let mut stack_ns = Vec::new();
    let mut unmatched = 0;
    let mut seen = std::collections::HashSet::new();
    for frame in received {
        let Some((sequence, _)) = decode(&frame.payload) else {
            continue;
        };
        if !seen.insert(sequence) {
            continue;
        }
        let Some(&(sent_ns, stamp_ns)) = sent_at.get(&sequence) else {
            unmatched += 1;
            continue;
        };
        wire_transits.push(frame.captured_ns as i64 - sent_ns as i64);
        stamp_transits.push(frame.captured_ns as i64 - stamp_ns as i64);
        stack_ns.push(sent_ns as i64 - stamp_ns as i64);
    }
    if wire_transits.is_empty() {
        bail!(
            "no probe seen at both interfaces ({} sent, {} received frames)",
            sent.len(),
            received.len()
        );
    }
    Ok(WireFigures {
        matched: wire_transits.len(),
        unmatched,
        delay_median_us: quantile_us(&wire_transits, 0.5),
        jitter_us: rfc3550_jitter_us(&wire_transits),
        jitter_run_mean_us: rfc3550_jitter_run_mean_us(&wire_transits),
        stack_median_us: quantile_us(&stack_ns, 0.5),
        stack_p99_us: quantile_us(&stack_ns, 0.99),
        jitter_from_send_stamps_us: rfc3550_jitter_us(&stamp_transits),
    })
}

/// RFC 3550 §6.4.1 over transit times in arrival order: `J += (|D| - J) / 16` with `D`
/// the difference of consecutive transits.
fn rfc3550_jitter_us(transits_ns: &[i64]) -> f64 {
    let jitter_ns = transits_ns.windows(2).fold(0.0, |jitter, pair| {
        let difference = (pair[1] - pair[0]).unsigned_abs() as f64;
        jitter + (difference - jitter) / 16.0
    });
    jitter_ns / 1_000.0
}

/// The mean of the RFC 3550 running estimate over the arrivals, in us.
fn rfc3550_jitter_run_mean_us(transits_ns: &[i64]) -> f64 {
    let mut jitter_ns = 0.0;
    let mut sum_ns = 0.0;
    for pair in transits_ns.windows(2) {
        let difference = (pair[1] - pair[0]).unsigned_abs() as f64;
        jitter_ns += (difference - jitter_ns) / 16.0;
        sum_ns += jitter_ns;
    }
    sum_ns / transits_ns.len().saturating_sub(1).max(1) as f64 / 1_000.0
}

/// Nearest-rank quantile, in us.
fn quantile_us(values_ns: &[i64], p: f64) -> f64 {
    let mut sorted = values_ns.to_vec();
    sorted.sort_unstable();
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1_000.0
}
