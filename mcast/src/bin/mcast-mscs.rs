//! `mcast-mscs`: the measurement statistics control server.
//!
//! Example:
//! ```text
//! mcast-mscs --listen 127.0.0.1:7300 --state-file /var/lib/mscs/state.json \
//!   --point p1=10.200.0.11:7400 --point p2=10.200.0.12:7400 --point p3=10.200.0.13:7400
//! ```
//!
//! Inside a measurelab VM (tasks from the controller via the guest agent, results back):
//! ```text
//! mcast-mscs --state-file /var/lib/mscs/state.json --platform-api http://127.0.0.1:7079 \
//!   --points-from-env      # MEASURELAB_POINTS="p1=10.201.0.11:7400,p2=10.201.0.12:7400"
//! ```
//!
//! With points that register themselves (`mcast-point serve --mscs 10.200.0.2:7300`):
//! ```text
//! mcast-mscs --listen 10.200.0.2:7300 --state-file /var/lib/mscs/state.json \
//!   --point-deadline-seconds 15
//! ```

use measurelab_mcast::auth::ControlKey;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use measurelab_mcast::mscs::{
    run, MscsConfig, PeriodicSchedule, PlatformConfig, PointEndpoint, ProbeDefaults,
    RegistrationConfig,
};

/// Environment variable read by `--points-from-env`.
const POINTS_ENV: &str = "MEASURELAB_POINTS";

#[derive(Parser)]
#[command(version, about = "Multicast measurement statistics control server")]
struct Args {
    /// HTTP API listen address.
    #[arg(long, default_value = "127.0.0.1:7300")]
    listen: String,
    /// State file (schedule position, tasks, results); written atomically.
    #[arg(long)]
    state_file: PathBuf,
    /// A point as NAME=HOST:PORT of its `mcast-point serve` listener; repeat, in
    /// round-robin order.
    #[arg(long = "point", required_unless_present_any = ["points_from_env", "point_deadline_seconds"])]
    points: Vec<String>,
    /// Accept point registrations (`mcast-point serve --mscs`) on the HTTP API; a
    /// registered point not heard from for this many seconds leaves the rotation until it
    /// is heard again. Points heartbeat three times per deadline.
    #[arg(long)]
    point_deadline_seconds: Option<f64>,
    /// Also read points from MEASURELAB_POINTS: NAME=HOST:PORT entries separated by
    /// commas or whitespace, appended after the --point ones.
    #[arg(long)]
    points_from_env: bool,
    /// Take tasks from this measurelab platform API (the guest agent's local API, e.g.
    /// http://127.0.0.1:7079) and deliver their results to it. Disables the built-in
    /// periodic schedule: the controller's periodic tasks drive it instead.
    #[arg(long)]
    platform_api: Option<String>,
    /// Seconds between polls of the platform API's task list.
    #[arg(long, default_value_t = 5.0)]
    platform_poll_seconds: f64,
    /// Seconds between periodic runs (paper: 300).
    #[arg(long, default_value_t = 300.0)]
    interval_seconds: f64,
    /// Sending time of each periodic run (paper: 30).
    #[arg(long, default_value_t = 30.0)]
    duration_seconds: f64,
    /// Run submitted tasks only.
    #[arg(long)]
    no_periodic: bool,
    /// Default multicast group.
    #[arg(long, default_value = "239.192.0.1")]
    group: Ipv4Addr,
    /// Default UDP port.
    #[arg(long, default_value_t = 50_001)]
    port: u16,
    /// Default probe rate.
    #[arg(long, default_value_t = 100.0)]
    rate_pps: f64,
    /// Default probe size (UDP payload bytes).
    #[arg(long, default_value_t = 200)]
    packet_size_bytes: usize,
    /// Default TTL.
    #[arg(long, default_value_t = 8)]
    ttl: u32,
    /// SSM by default (needs a 232/8 --group).
    #[arg(long)]
    ssm: bool,
    /// Clock synchronisation bound in µs when points are on different hosts; omit when
    /// all points share one host clock.
    #[arg(long)]
    clock_sync_bound_us: Option<f64>,
    /// POST every result as JSON to this URL.
    #[arg(long, env = "MCAST_RESULT_URL")]
    result_url: Option<String>,
    /// Seconds receivers keep reading after the sender finished; raise it above the
    /// path's one-way delay.
    #[arg(long, default_value_t = 0.1)]
    receiver_drain_seconds: f64,
    /// Results kept in the state file.
    #[arg(long, default_value_t = 10_000)]
    retain_results: usize,
    /// The control key (64 hex digits): signs every send and receive ordered from the
    /// points, and is required as `Authorization: Bearer` on the HTTP API (but
    /// /healthz). Without it the API and the points' orders are open.
    #[arg(long, env = "MEASURELAB_CONTROL_KEY", hide_env_values = true)]
    control_key: Option<String>,
    /// The id (task) the key belongs to, as the points know it.
    #[arg(long, env = "MEASURELAB_CONTROL_KEY_ID", default_value = "platform")]
    control_key_id: String,
}

fn parse_point(text: &str) -> Result<PointEndpoint> {
    let Some((name, addr)) = text.split_once('=') else {
        bail!("--point {text:?}: expected NAME=HOST:PORT");
    };
    let control: SocketAddr = addr
        .parse()
        .with_context(|| format!("--point {text:?}: {addr:?} is not HOST:PORT"))?;
    Ok(PointEndpoint {
        name: name.to_string(),
        control,
    })
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut points = args
        .points
        .iter()
        .map(|p| parse_point(p))
        .collect::<Result<Vec<_>>>()?;
    if args.points_from_env {
        let listed = std::env::var(POINTS_ENV)
            .with_context(|| format!("--points-from-env: {POINTS_ENV} is not set"))?;
        for entry in listed
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|e| !e.is_empty())
        {
            points
                .push(parse_point(entry).with_context(|| format!("{POINTS_ENV} entry {entry:?}"))?);
        }
    }
    if !(args.platform_poll_seconds.is_finite() && args.platform_poll_seconds > 0.0) {
        bail!("--platform-poll-seconds must be positive");
    }
    if !(args.interval_seconds.is_finite() && args.interval_seconds > 0.0) {
        bail!("--interval-seconds must be positive");
    }
    let mut config = MscsConfig::new(points, args.state_file);
    if let Some(deadline) = args.point_deadline_seconds {
        if !(deadline.is_finite() && deadline > 0.0 && deadline <= 3_600.0) {
            bail!("--point-deadline-seconds must be in (0, 3600]");
        }
        config.registration = Some(RegistrationConfig {
            deadline: Duration::from_secs_f64(deadline),
        });
    }
    config.periodic =
        (!args.no_periodic && args.platform_api.is_none()).then(|| PeriodicSchedule {
            interval: Duration::from_secs_f64(args.interval_seconds),
            duration_seconds: args.duration_seconds,
        });
    config.defaults = ProbeDefaults {
        group: args.group,
        port: args.port,
        rate_pps: args.rate_pps,
        packet_size_bytes: args.packet_size_bytes,
        ttl: args.ttl,
        ssm: args.ssm,
    };
    config.clock_sync_bound_us = args.clock_sync_bound_us;
    config.result_url = args.result_url;
    config.retain_results = args.retain_results;
    config.receiver_drain_seconds = args.receiver_drain_seconds;
    config.control_key = args
        .control_key
        .as_deref()
        .map(|secret| ControlKey::from_hex(&args.control_key_id, secret))
        .transpose()
        .map_err(|err| anyhow::anyhow!("--{}", err.to_string().replace('_', "-")))?;
    config.platform = args.platform_api.map(|api_url| PlatformConfig {
        api_url,
        poll_interval: Duration::from_secs_f64(args.platform_poll_seconds),
    });
    if let Err(err) = config.validate() {
        bail!("{err}");
    }
    let listener = TcpListener::bind(&args.listen)
        .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
    tracing::info!(addr = ?listener.local_addr()?, "MSCS listening");

    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(term) => term,
                    Err(_) => return std::future::pending().await,
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        run(config, listener, shutdown).await
    })?;
    Ok(())
}
