//! Guest agent: the paper's "virtual measurement node". It runs inside each
//! VM (or namespace sliver) and talks only to its node agent, over the guest
//! channel described in [`measurelab_api::guest`]:
//!
//! - says `hello` on every (re)connect and when asked, heartbeats with
//!   resource use from /proc, ships its own log lines;
//! - runs distributed programs (`run`/`stop`) and reports their status with
//!   bounded output tails;
//! - serves the local platform API on `127.0.0.1:7079` for programs
//!   (`GET /tasks`, `POST /results`), relayed over the channel.
//!
//! The channel is a unix socket (namespace guests, `MEASURELAB_CHANNEL`) or a
//! character device (QEMU guests: a virtio-serial port, named on the kernel
//! command line as `/dev/virtio-ports/org.measurelab.guest.0` and found in
//! sysfs without udev; Xen: `/dev/hvc1`; a serial tty, `/dev/ttyS1`, when
//! nothing says otherwise), told apart by file type. Programs arrive whole
//! or in chunks checked by SHA-256 (see [`measurelab_api::guest`]).
//! A dropped channel (node agent restart) is retried with backoff; nothing
//! the node agent sends can crash the guest agent: bad lines are logged and
//! skipped.
//!
//! # Layout
//! - [`config`]: [`GuestConfig`], resolved from flags, env and /proc/cmdline.
//! - `session`: connect, reconnect, read and dispatch channel messages.
//! - `link`: the connection handle the session, programs and local API share.
//! - `programs`: write, verify and run distributed programs.
//! - `exec`: `vm exec` / `vm cp` sessions.
//! - `local_api`: the axum server on 127.0.0.1:7079.
//! - [`usage`]: resource use from /proc.
//! - [`logtee`]: tracing writer that also queues lines for the channel.
#![warn(missing_docs)]

pub mod config;
mod exec;
mod link;
mod local_api;
pub mod logtee;
mod programs;
mod session;
pub mod usage;

use std::future::Future;
use std::sync::Arc;

pub use config::{GuestConfig, GuestConfigError};
pub use exec::{terminal_session, TERMINAL_SESSION_ARG};

/// Errors that stop the guest agent (only at startup: the channel is retried
/// forever).
#[derive(Debug, thiserror::Error)]
pub enum GuestAgentError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] GuestConfigError),
    /// The local platform API cannot listen.
    #[error("cannot listen on {addr} for the local platform API: {source}")]
    LocalApi {
        /// Address.
        addr: String,
        /// OS error.
        source: std::io::Error,
    },
    /// The programs directory cannot be created.
    #[error("cannot create programs dir {path}: {source}")]
    ProgramsDir {
        /// Directory.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
}

/// Runs the guest agent until `shutdown` completes. `logs` is the queue the
/// [`logtee`] writer fills (pass a fresh one when logging elsewhere).
pub async fn run(
    config: GuestConfig,
    logs: logtee::LogQueue,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GuestAgentError> {
    config.validate()?;
    std::fs::create_dir_all(&config.programs_dir).map_err(|source| {
        GuestAgentError::ProgramsDir {
            path: config.programs_dir.display().to_string(),
            source,
        }
    })?;
    let listener = tokio::net::TcpListener::bind(&config.local_api)
        .await
        .map_err(|source| GuestAgentError::LocalApi {
            addr: config.local_api.clone(),
            source,
        })?;
    let local_addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| config.local_api.clone());
    tracing::info!(addr = %local_addr, "local platform API listening");

    let link = Arc::new(link::Link::default());
    let platform_api = format!("http://{local_addr}");
    let programs = Arc::new(programs::Programs::new(
        config.programs_dir.clone(),
        link.clone(),
        config.vm_id.clone(),
        platform_api,
    ));
    let api = tokio::spawn(local_api::serve(listener, link.clone()));
    let heartbeats = tokio::spawn(session::heartbeat_loop(
        link.clone(),
        programs.clone(),
        logs,
        config.heartbeat_interval,
    ));
    let channel = tokio::spawn(session::channel_loop(config, link, programs));
    shutdown.await;
    api.abort();
    heartbeats.abort();
    channel.abort();
    Ok(())
}
