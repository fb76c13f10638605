//! `measurelab-guest-agent`: resolves its configuration (flag, then env, then
//! the kernel command line), sets up logging and runs the guest agent until
//! SIGTERM or Ctrl-C.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use measurelab_guest::config::{cmdline_value, DEFAULT_LOCAL_API, DEFAULT_SERIAL_CHANNEL};
use measurelab_guest::logtee::{LogQueue, TeeMakeWriter};
use measurelab_guest::GuestConfig;
use tracing_subscriber::EnvFilter;

/// Guest agent of measurelab: talks to its node agent over the guest channel.
#[derive(Debug, Parser)]
#[command(name = "measurelab-guest-agent", version)]
struct Args {
    /// VM id reported in hello [kernel cmdline: measurelab.vm_id=].
    #[arg(long, env = "MEASURELAB_VM_ID")]
    vm_id: Option<String>,
    /// Unix socket, virtio-serial port or serial device of the guest channel
    /// [kernel cmdline: measurelab.channel=; default /dev/ttyS1].
    #[arg(long, env = "MEASURELAB_CHANNEL")]
    channel: Option<PathBuf>,
    /// Where distributed programs are written [default: `programs` next to a
    /// unix socket channel, else /var/lib/measurelab-guest/<vm_id>/programs].
    #[arg(long, env = "MEASURELAB_PROGRAMS_DIR")]
    programs_dir: Option<PathBuf>,
    /// Listen address of the local platform API.
    #[arg(long, env = "MEASURELAB_LOCAL_API", default_value = DEFAULT_LOCAL_API)]
    local_api: String,
    /// Heartbeat interval [kernel cmdline: measurelab.heartbeat_seconds=; default 5].
    #[arg(long, env = "MEASURELAB_HEARTBEAT_SECONDS")]
    heartbeat_seconds: Option<f64>,
    /// Kernel command line to read defaults from.
    #[arg(long, default_value = "/proc/cmdline")]
    cmdline: PathBuf,
}

fn resolve(args: Args) -> anyhow::Result<GuestConfig> {
    let cmdline = std::fs::read_to_string(&args.cmdline).unwrap_or_default();
    let from_cmdline = |key: &str| cmdline_value(&cmdline, key).filter(|v| !v.is_empty());
    let vm_id = args
        .vm_id
        .filter(|v| !v.is_empty())
        .or_else(|| from_cmdline("measurelab.vm_id"))
        .unwrap_or_default();
    let channel = args
        .channel
        .filter(|c| !c.as_os_str().is_empty())
        .or_else(|| from_cmdline("measurelab.channel").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SERIAL_CHANNEL));
    let programs_dir = args
        .programs_dir
        .unwrap_or_else(|| default_programs_dir(&channel, &vm_id));
    let heartbeat_seconds = match args.heartbeat_seconds {
        Some(s) => s,
        None => match from_cmdline("measurelab.heartbeat_seconds") {
            Some(text) => text.parse().with_context(|| {
                format!("measurelab.heartbeat_seconds={text:?} is not a number")
            })?,
            None => 5.0,
        },
    };
    if !heartbeat_seconds.is_finite() || heartbeat_seconds <= 0.0 {
        anyhow::bail!("--heartbeat-seconds must be a positive number, got {heartbeat_seconds}");
    }
    Ok(GuestConfig {
        vm_id,
        channel,
        programs_dir,
        local_api: args.local_api,
        heartbeat_interval: Duration::from_secs_f64(heartbeat_seconds),
    })
}

/// Inside a VM: `/var/lib/measurelab-guest/<vm_id>/programs`. With a unix
/// socket channel, next to the socket. A namespace guest is told
/// `MEASURELAB_PROGRAMS_DIR` by its node agent: a directory on its own
/// writable layer, so programs count against its disk.
fn default_programs_dir(channel: &Path, vm_id: &str) -> PathBuf {
    match channel.parent() {
        Some(dir) if !channel.starts_with("/dev") => dir.join("programs"),
        _ => PathBuf::from("/var/lib/measurelab-guest")
            .join(vm_id)
            .join("programs"),
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            tracing::error!(%err, "cannot watch SIGTERM; only Ctrl-C stops the agent");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn main() -> anyhow::Result<()> {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv
        .get(1)
        .is_some_and(|a| a == measurelab_guest::TERMINAL_SESSION_ARG)
    {
        // `vm exec -t`: before logging, whose lines would land on the
        // user's terminal. Skips `--`.
        std::process::exit(measurelab_guest::terminal_session(&argv[3.min(argv.len())..]).into());
    }
    let logs = LogQueue::default();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(false)
        .with_writer(TeeMakeWriter::new(logs.clone()))
        .init();
    let config = resolve(Args::parse())?;
    config.validate()?;
    // Two workers are plenty inside a small VM and keep its footprint low.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    tracing::info!(
        vm_id = %config.vm_id,
        channel = %config.channel.display(),
        version = env!("CARGO_PKG_VERSION"),
        "measurelab-guest-agent starting"
    );
    runtime.block_on(measurelab_guest::run(config, logs, shutdown_signal()))?;
    tracing::info!("measurelab-guest-agent stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_dir_follows_the_channel() {
        assert_eq!(
            default_programs_dir(Path::new("/var/lib/a/guests/v1/channel.sock"), "v1"),
            PathBuf::from("/var/lib/a/guests/v1/programs")
        );
        assert_eq!(
            default_programs_dir(Path::new("/dev/ttyS1"), "v1"),
            PathBuf::from("/var/lib/measurelab-guest/v1/programs")
        );
    }
}
