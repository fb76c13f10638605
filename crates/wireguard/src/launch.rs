//! Starting and stopping a device process from another program (the node
//! agent, `measurelab tunnel`): detached, so it outlives its starter.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::device::RunOptions;

/// How long a device gets to come up or to stop.
pub const TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// A device process that could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("starting {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("device {name} did not come up within {timeout:?}; its log says: {log}")]
    NotReady {
        name: String,
        timeout: Duration,
        log: String,
    },
    #[error("pid {pid} did not stop within {timeout:?}")]
    Stuck { pid: u32, timeout: Duration },
}

/// Starts `binary` (`measurelab-wg`) for `options` in a session of its own
/// (`setsid -f`: forked off and re-parented, so it never becomes a zombie
/// of ours and survives our exit), stderr appended to `log`. Waits until
/// it wrote `options.ready_file` (required) and returns its pid. With
/// `run_in` the process runs in that named namespace (its UDP socket is
/// bound there).
pub fn start(
    binary: &Path,
    options: &RunOptions,
    log: &Path,
    run_in: Option<&str>,
) -> Result<u32, LaunchError> {
    let spawn_err = |source| LaunchError::Spawn {
        binary: binary.to_path_buf(),
        source,
    };
    let ready = options
        .ready_file
        .clone()
        .ok_or_else(|| spawn_err(std::io::Error::other("a ready file is required")))?;
    let _ = std::fs::remove_file(&ready);
    let stderr = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(spawn_err)?;
    let mut cmd = match run_in {
        Some(netns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", netns, "setsid"]);
            cmd
        }
        None => Command::new("setsid"),
    };
    cmd.arg("-f").arg(binary).arg(&options.name);
    if let Some(netns) = &options.netns {
        cmd.args(["--netns", netns]);
    }
    cmd.arg("--ready-file").arg(&ready);
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .status()
        .map_err(spawn_err)?;
    if !status.success() {
        return Err(spawn_err(std::io::Error::other(format!(
            "setsid exited with {status}"
        ))));
    }
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(pid) = std::fs::read_to_string(&ready)
            .ok()
            .and_then(|text| text.trim().parse().ok())
        {
            return Ok(pid);
        }
        if Instant::now() >= deadline {
            return Err(LaunchError::NotReady {
                name: options.name.clone(),
                timeout: TIMEOUT,
                log: log_tail(log),
            });
        }
        std::thread::sleep(POLL);
    }
}

/// The last lines of a device's log, for an error message.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    if tail.is_empty() {
        "(nothing)".into()
    } else {
        tail
    }
}

/// Stops the device process `pid` whose start time (`/proc/PID/stat` field
/// 22) is `start_time`: SIGTERM (it removes its socket and TUN), SIGKILL
/// if it is still there after [`TIMEOUT`]. A pid that is gone or now names
/// another process is left alone.
pub fn stop(pid: u32, start_time: u64) -> Result<(), LaunchError> {
    let alive = || process_start_time(pid) == Some(start_time);
    for signal in ["TERM", "KILL"] {
        if !alive() {
            return Ok(());
        }
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + TIMEOUT;
        while alive() && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
    }
    if alive() {
        return Err(LaunchError::Stuck {
            pid,
            timeout: TIMEOUT,
        });
    }
    Ok(())
}

pub use measurelab_hostnet::process_start_time;
