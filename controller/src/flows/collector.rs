//! nfcapd, started and kept running by the controller: restarted with
//! backoff when it exits, killed when the controller stops.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use measurelab_backoff::Backoff;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::FlowCollectorConfig;

/// A collector that ran this long was healthy: its next crash restarts at
/// once instead of after the grown backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// The nfcapd command line for `config`, storing into `dir`.
pub(crate) fn command(config: &FlowCollectorConfig, dir: &Path) -> Command {
    let mut command = match &config.netns {
        // nsenter execs nfcapd, so the child's pid is nfcapd's and killing
        // it stops the collector.
        Some(netns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{netns}")).arg("nfcapd");
            c
        }
        None => Command::new("nfcapd"),
    };
    command
        .arg("-b")
        .arg(config.listen.ip().to_string())
        .arg("-p")
        .arg(config.listen.port().to_string())
        .arg("-w")
        .arg(dir)
        .arg("-t")
        .arg(config.rotate_seconds.to_string())
        .env("TZ", "UTC")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Run nfcapd until `cancel`, restarting it whenever it exits.
pub(crate) async fn supervise(
    config: FlowCollectorConfig,
    dir: PathBuf,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        if let Err(e) = tokio::fs::create_dir_all(&dir).await {
            tracing::error!(dir = %dir.display(), error = %e, "cannot create the flow directory");
        }
        let started = tokio::time::Instant::now();
        match command(&config, &dir).spawn() {
            Ok(mut child) => {
                tracing::info!(listen = %config.listen, dir = %dir.display(), "flow collector (nfcapd) started");
                tokio::select! {
                    status = wait_with_tail(&mut child) => {
                        tracing::warn!(status = %status, "flow collector (nfcapd) exited; restarting");
                    }
                    _ = cancel.cancelled() => {
                        // kill_on_drop ends it; the file of the running
                        // interval is lost, the closed ones stay.
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start the flow collector (nfcapd)");
            }
        }
        if started.elapsed() >= HEALTHY_RUN {
            backoff.reset();
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// Wait for `child`, keeping the end of what it said on stderr, so the
/// restart log says why it died.
async fn wait_with_tail(child: &mut tokio::process::Child) -> String {
    use tokio::io::AsyncReadExt;
    let mut said = Vec::new();
    if let Some(mut stderr) = child.stderr.take() {
        // Read to EOF (the child's exit closes it); bounded by the tail kept.
        let mut buffer = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buffer).await {
            if n == 0 {
                break;
            }
            said.extend_from_slice(&buffer[..n]);
            if said.len() > 8192 {
                said.drain(..said.len() - 4096);
            }
        }
    }
    let status = match child.wait().await {
        Ok(status) => status.to_string(),
        Err(e) => e.to_string(),
    };
    format!("{status}: {}", String::from_utf8_lossy(&said).trim())
}
