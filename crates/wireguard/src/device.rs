//! Running one boringtun device in this process until it is told to stop
//! (SIGTERM/SIGINT, or its UAPI socket removed).
//!
//! The UDP sockets are bound in the network namespace the process runs in,
//! and the TUN is created there too; with `netns` the TUN is then moved into
//! that namespace. The already-open TUN file descriptor keeps working after
//! the move (the queue belongs to the device, not to a namespace), so the
//! encrypted side stays where the public address is while the cleartext side
//! lives in the namespace that routes it. That is how kernel WireGuard
//! behaves when its interface is moved, and it needs no veth or NAT.

use std::path::PathBuf;
use std::process::Command;

use boringtun::device::{DeviceConfig, DeviceHandle};

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// TUN name, at most 15 bytes, unique host-wide (it also names the UAPI
    /// socket, see [`crate::socket_path`]).
    pub name: String,
    /// Move the TUN into this named namespace once it exists.
    pub netns: Option<String>,
    /// Written (atomically) with this process's pid once the device is up
    /// and the TUN is where it belongs: the caller's readiness signal.
    pub ready_file: Option<PathBuf>,
}

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("device {name}: {reason}")]
    Start { name: String, reason: String },
    #[error("moving {name} into namespace {netns}: {reason}")]
    Move {
        name: String,
        netns: String,
        reason: String,
    },
    #[error("writing ready file {path}: {source}")]
    Ready {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Runs the device; returns when it stops.
pub fn run(options: &RunOptions) -> Result<(), DeviceError> {
    let name = &options.name;
    let config = DeviceConfig {
        // Two event threads: a gateway forwards for a handful of peers, and
        // the agent's host runs guests on the remaining cores.
        n_threads: 2,
        use_connected_socket: true,
        // Extra queues are opened by name from the worker threads, which
        // after a move would find (or create) a TUN in the wrong namespace.
        use_multi_queue: false,
        uapi_fd: -1,
    };
    let mut handle = DeviceHandle::new(name, config).map_err(|e| DeviceError::Start {
        name: name.clone(),
        reason: e.to_string(),
    })?;
    let started = (|| {
        if let Some(netns) = &options.netns {
            move_link(name, netns)?;
        }
        if let Some(path) = &options.ready_file {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, format!("{}\n", std::process::id()))
                .and_then(|_| std::fs::rename(&tmp, path))
                .map_err(|source| DeviceError::Ready {
                    path: path.clone(),
                    source,
                })?;
        }
        Ok(())
    })();
    if let Err(err) = started {
        handle.clean();
        return Err(err);
    }
    handle.wait();
    handle.clean();
    Ok(())
}

fn move_link(name: &str, netns: &str) -> Result<(), DeviceError> {
    let out = Command::new("ip")
        .args(["link", "set", "dev", name, "netns", netns])
        .output()
        .map_err(|e| DeviceError::Move {
            name: name.into(),
            netns: netns.into(),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(DeviceError::Move {
            name: name.into(),
            netns: netns.into(),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}
