//! `mcast-point`: a multicast measurement point.
//!
//! - `send`: be the source for one run and print the sender report as JSON.
//! - `recv`: receive one run and print the receiver report as JSON.
//! - `serve`: wait for the MSCS to drive sends and receives over the control protocol.

use measurelab_mcast::auth::{ControlKey, KeyRing};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use measurelab_mcast::metrics::StatsLimits;
use measurelab_mcast::point::{realtime_clock_resolution_ns, serve, PointConfig};
use measurelab_mcast::protocol::{ReceiverReport, Registration, PROTOCOL_VERSION};
use measurelab_mcast::receiver::{Receiver, ReceiverConfig};
use measurelab_mcast::registration::run_heartbeats;
use measurelab_mcast::sender::{run_sender, SendLimit, SenderConfig};

#[derive(Parser)]
#[command(version, about = "Multicast measurement point")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send probes to a group.
    Send(SendArgs),
    /// Receive probes from a group and print the metrics.
    Recv(RecvArgs),
    /// Serve the MSCS control protocol.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct SendArgs {
    /// Multicast group (239/8 for ASM, 232/8 for SSM).
    #[arg(long)]
    group: Ipv4Addr,
    /// UDP port.
    #[arg(long, default_value_t = 50_001)]
    port: u16,
    /// Probes per second.
    #[arg(long, default_value_t = 100.0)]
    rate_pps: f64,
    /// UDP payload bytes per probe (>= 32).
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// IP TTL.
    #[arg(long, default_value_t = 8)]
    ttl: u32,
    /// Local address to send from (selects the interface).
    #[arg(long)]
    source: Option<Ipv4Addr>,
    /// Seconds to send (ignored with --count).
    #[arg(long, default_value_t = 10.0)]
    duration_seconds: f64,
    /// Number of probes to send instead of a duration.
    #[arg(long)]
    count: Option<u64>,
    /// Session id (random if omitted).
    #[arg(long)]
    session_id: Option<u64>,
    /// Slow mode only (interval above the pacing granularity): microseconds before each
    /// deadline at which the sender spins instead of sleeping.
    #[arg(long, default_value_t = 20)]
    spin_us: u64,
    /// Intervals up to this many microseconds are paced in small bursts (every probe due
    /// at a wakeup); longer ones get a precise wakeup per probe. 0: always per probe.
    #[arg(long, default_value_t = measurelab_mcast::sender::DEFAULT_PACING_GRANULARITY.as_micros() as u64)]
    pacing_granularity_us: u64,
    /// Intervals (beyond the pacing granularity) the sender may fall behind and catch up
    /// by bursting; beyond this it drops schedule slots (counted as slips) instead.
    #[arg(long, default_value_t = 4)]
    max_catch_up_packets: u32,
}

#[derive(clap::Args)]
struct RecvArgs {
    /// Multicast group.
    #[arg(long)]
    group: Ipv4Addr,
    /// UDP port.
    #[arg(long, default_value_t = 50_001)]
    port: u16,
    /// Local interface address to join on.
    #[arg(long, default_value = "0.0.0.0")]
    interface: Ipv4Addr,
    /// Join (S,G) with this source (SSM; needs a 232/8 group).
    #[arg(long)]
    ssm_source: Option<Ipv4Addr>,
    /// Accept only this session (default: the first session seen).
    #[arg(long)]
    session_id: Option<u64>,
    /// Seconds to receive.
    #[arg(long, default_value_t = 12.0)]
    duration_seconds: f64,
    /// Stop early this long after the last probe (0: never).
    #[arg(long, default_value_t = 0.0)]
    idle_stop_seconds: f64,
    /// Packets the sender reported, if known (else highest sequence + 1 is used).
    #[arg(long)]
    packets_sent: Option<u64>,
    /// Name to put in the report.
    #[arg(long, default_value = "cli")]
    name: String,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Control listen address, e.g. 10.200.0.2:7400.
    #[arg(long)]
    listen: String,
    /// Point name (as the MSCS knows it).
    #[arg(long)]
    name: String,
    /// Data-plane address: multicast interface and SSM source address.
    #[arg(long)]
    data_addr: Ipv4Addr,
    /// Register with the MSCS at HOST:PORT (its HTTP API) and heartbeat, so that it
    /// adds this point to its rotation; the point exits if the MSCS refuses it for good
    /// (e.g. another protocol version).
    #[arg(long)]
    mscs: Option<String>,
    /// Control address to register (default: --listen, or --data-addr with the listen
    /// port when listening on 0.0.0.0).
    #[arg(long)]
    control_addr: Option<SocketAddr>,
    /// Highest probe rate a `send` from the MSCS may order; higher ones are refused.
    #[arg(long, default_value_t = measurelab_mcast::protocol::DEFAULT_MAX_RATE_PPS)]
    max_rate_pps: f64,
    /// Simultaneous control connections served; more are refused.
    #[arg(long, default_value_t = measurelab_mcast::point::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// The control key (64 hex digits) an MSCS must prove on `send` and `receive`, and
    /// this point's bearer token towards --mscs. Without it the point obeys anyone who
    /// reaches --listen.
    #[arg(long, env = "MEASURELAB_CONTROL_KEY", hide_env_values = true)]
    control_key: Option<String>,
    /// The id (task) the key belongs to; the MSCS signs with the same.
    #[arg(long, env = "MEASURELAB_CONTROL_KEY_ID", default_value = "platform")]
    control_key_id: String,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Send(args) => send(args),
        Command::Recv(args) => recv(args),
        Command::Serve(args) => serve_point(args),
    }
}

fn serve_point(args: ServeArgs) -> Result<()> {
    if !(args.max_rate_pps.is_finite()
        && args.max_rate_pps > 0.0
        && args.max_rate_pps <= measurelab_mcast::sender::MAX_RATE_PPS)
    {
        bail!(
            "--max-rate-pps {} is not in (0, {}]",
            args.max_rate_pps,
            measurelab_mcast::sender::MAX_RATE_PPS
        );
    }
    if args.max_connections == 0 {
        bail!("--max-connections must be at least 1");
    }
    let key = args
        .control_key
        .as_deref()
        .map(|secret| ControlKey::from_hex(&args.control_key_id, secret))
        .transpose()
        .map_err(|err| anyhow::anyhow!("--{}", err.to_string().replace('_', "-")))?;
    if key.is_none() {
        eprintln!("mcast-point: no --control-key: any host that reaches --listen can order sends");
    }
    let listener = TcpListener::bind(&args.listen)
        .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
    let shutdown = Arc::new(AtomicBool::new(false));
    let heartbeats = match args.mscs {
        None => None,
        Some(mscs) => {
            let listening = listener.local_addr()?;
            let control_addr = args.control_addr.unwrap_or_else(|| {
                if listening.ip().is_unspecified() {
                    SocketAddr::from((args.data_addr, listening.port()))
                } else {
                    listening
                }
            });
            let registration = Registration {
                name: args.name.clone(),
                data_addr: args.data_addr,
                control_addr,
                protocol_version: PROTOCOL_VERSION,
            };
            let shutdown = Arc::clone(&shutdown);
            let key = key.clone();
            Some(thread::spawn(move || {
                let outcome = run_heartbeats(&mscs, registration, key, Arc::clone(&shutdown));
                // A point its MSCS refuses for good would never be measured: stop serving.
                shutdown.store(true, Ordering::Relaxed);
                outcome
            }))
        }
    };
    let served = serve(
        listener,
        PointConfig {
            max_rate_pps: args.max_rate_pps,
            max_connections: args.max_connections,
            keys: key.map(|key| Arc::new(KeyRing::with_keys([key]))),
            ..PointConfig::new(args.name, args.data_addr)
        },
        Arc::clone(&shutdown),
    );
    shutdown.store(true, Ordering::Relaxed);
    if let Some(heartbeats) = heartbeats {
        match heartbeats.join() {
            Ok(outcome) => outcome?,
            Err(_) => bail!("the registration thread panicked"),
        }
    }
    served?;
    Ok(())
}

fn send(args: SendArgs) -> Result<()> {
    let limit = match args.count {
        Some(count) => SendLimit::Count(count),
        None => SendLimit::DurationSeconds(args.duration_seconds),
    };
    let mut config = SenderConfig::new(args.group, args.port, args.rate_pps, limit);
    config.packet_size = args.size;
    config.ttl = args.ttl;
    config.source_addr = args.source;
    config.spin_threshold = Duration::from_micros(args.spin_us);
    config.max_catch_up_packets = args.max_catch_up_packets;
    config.pacing_granularity = Duration::from_micros(args.pacing_granularity_us);
    if let Some(id) = args.session_id {
        config.session_id = id;
    }
    let report = run_sender(&config, &AtomicBool::new(false))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn recv(args: RecvArgs) -> Result<()> {
    if !(args.duration_seconds.is_finite() && args.duration_seconds > 0.0) {
        bail!("--duration-seconds must be positive");
    }
    let config = ReceiverConfig {
        group: args.group,
        port: args.port,
        interface_addr: args.interface,
        ssm_source: args.ssm_source,
        session_id: args.session_id,
        limits: StatsLimits::default(),
    };
    let receiver = Receiver::open(config)?;
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration_seconds);
    let stop = AtomicBool::new(false);
    let outcome = if args.idle_stop_seconds > 0.0 {
        // Receive in short slices so that an idle stream can end the run early.
        let idle = Duration::from_secs_f64(args.idle_stop_seconds);
        let mut carried = None;
        let mut last_count = 0;
        let mut last_progress = Instant::now();
        loop {
            let slice_end = (Instant::now() + Duration::from_millis(100)).min(deadline);
            let part = receiver.run_continuing(carried.take(), &stop, Some(slice_end))?;
            let count = part.stats.packets_received() + part.foreign_session_packets;
            if count != last_count {
                last_count = count;
                last_progress = Instant::now();
            }
            if Instant::now() >= deadline || (last_count > 0 && last_progress.elapsed() >= idle) {
                break part;
            }
            carried = Some(part);
        }
    } else {
        receiver.run(&stop, Some(deadline))?
    };
    stop.store(true, Ordering::Relaxed);
    let report = ReceiverReport {
        point: args.name,
        session_id: outcome.session_id.unwrap_or(0),
        timestamp_source: outcome.timestamp_source,
        clock_resolution_ns: realtime_clock_resolution_ns(),
        foreign_session_packets: outcome.foreign_session_packets,
        malformed_packets: outcome.malformed_packets,
        metrics: outcome.stats.finish(args.packets_sent),
        // Printed for a person: the per-probe record is for the MSCS's tree inference.
        probe_log: None,
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
