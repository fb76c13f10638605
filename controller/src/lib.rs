//! The measurelab controller: the paper's physical platform server.
//!
//! It registers measurement nodes and tracks their heartbeats over gRPC,
//! keeps everything in an embedded SQLite store, and serves the public
//! HTTP/JSON API (plus a small admin page) that the Terraform provider and
//! the CLI use.
//!
//! # Layout
//! - [`run`] / [`ControllerConfig`]: the entry point used by `measurelab
//!   controller`, the tests and the heartbeat benchmark.
//! - `store/`: SQLite (WAL, group commit through one writer thread) plus the
//!   in-memory node registry every read is served from.
//! - `agent_rpc/`: the gRPC `NodeService` (Register, Heartbeat, ShipLogs).
//! - `api/`: the axum router under `/v1`, bearer auth, `ApiError`, OpenAPI.
//! - `liveness`: the sweeper that turns silent nodes offline.
//! - `tokens`: the admin and join tokens in the data directory.
//! - `ui/`: the embedded admin page served at `/`.
#![warn(missing_docs)]

mod agent_rpc;
mod api;
mod liveness;
mod store;
mod tokens;
mod validation;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use store::StoreError;
pub use tokens::TokenError;

/// Everything the controller needs to run. Listeners are bound by the caller,
/// so the gRPC side can live in another network namespace and tests can bind
/// port 0.
#[derive(Debug)]
pub struct ControllerConfig {
    /// Holds `controller.db`, `admin.token` and `join.token` (mode 0600).
    pub data_dir: PathBuf,
    /// Public HTTP/JSON API and admin page.
    pub http_listener: std::net::TcpListener,
    /// gRPC node API.
    pub grpc_listener: std::net::TcpListener,
    /// Interval told to agents. Default 5 s.
    pub heartbeat_interval: Duration,
    /// A node silent for longer than this is offline. Default 3 intervals.
    pub offline_after: Duration,
    /// Join token; `None` reads or creates `<data_dir>/join.token`.
    pub join_token: Option<String>,
    /// Persist every heartbeat (the product). `false` keeps heartbeat data in
    /// memory only; registrations and status changes stay durable. Only the
    /// benchmark's in-memory peer uses `false`.
    pub durable_heartbeats: bool,
}

impl ControllerConfig {
    /// A configuration with the default intervals and durable heartbeats.
    pub fn new(
        data_dir: impl Into<PathBuf>,
        http_listener: std::net::TcpListener,
        grpc_listener: std::net::TcpListener,
    ) -> Self {
        let heartbeat_interval = Duration::from_secs(5);
        ControllerConfig {
            data_dir: data_dir.into(),
            http_listener,
            grpc_listener,
            heartbeat_interval,
            offline_after: heartbeat_interval * 3,
            join_token: None,
            durable_heartbeats: true,
        }
    }
}

/// Why the controller could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The configuration is unusable.
    #[error("invalid controller configuration: {0}")]
    Config(String),
    /// The data directory cannot be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// Directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Reading or creating a token failed.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A listener could not be handed to tokio.
    #[error("cannot use the {which} listener: {source}")]
    Listener {
        /// `http` or `grpc`.
        which: &'static str,
        /// Cause.
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// A server task panicked.
    #[error("controller task failed: {0}")]
    Task(String),
}

/// Run the controller until `shutdown` completes, then drain: stop accepting,
/// finish in-flight requests, commit what the store writer has queued.
pub async fn run(
    config: ControllerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ControllerError> {
    if config.heartbeat_interval.is_zero() || config.offline_after.is_zero() {
        return Err(ControllerError::Config(
            "heartbeat_interval and offline_after must be greater than zero".into(),
        ));
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ControllerError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let admin_token = tokens::load_or_create(&config.data_dir.join("admin.token"))?;
    let join_token = match config.join_token {
        Some(token) if token.trim().is_empty() => {
            return Err(ControllerError::Config(
                "join_token must not be empty".into(),
            ))
        }
        Some(token) => token,
        None => tokens::load_or_create(&config.data_dir.join("join.token"))?,
    };
    let (store, writer) = store::Store::open(&config.data_dir, config.durable_heartbeats)?;

    let listener = |which, listener: std::net::TcpListener| {
        listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
            .map_err(|source| ControllerError::Listener { which, source })
    };
    let http_listener = listener("http", config.http_listener)?;
    let grpc_listener = listener("grpc", config.grpc_listener)?;
    tracing::info!(
        http = ?http_listener.local_addr().ok(),
        grpc = ?grpc_listener.local_addr().ok(),
        data_dir = %config.data_dir.display(),
        durable_heartbeats = config.durable_heartbeats,
        "controller listening"
    );

    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
    });

    let http = tokio::spawn({
        let app = api::router(api::AppState::new(store.clone(), admin_token));
        let cancel = cancel.clone();
        async move {
            axum::serve(http_listener, app)
                .with_graceful_shutdown(cancel.cancelled_owned())
                .await
                .map_err(ControllerError::Http)
        }
    });
    let grpc = tokio::spawn({
        let service = agent_rpc::NodeRpc::new(store.clone(), join_token, config.heartbeat_interval);
        let cancel = cancel.clone();
        async move {
            let incoming =
                tonic::transport::server::TcpIncoming::from_listener(grpc_listener, true, None)
                    .map_err(|e| ControllerError::Listener {
                        which: "grpc",
                        source: std::io::Error::other(e.to_string()),
                    })?;
            tonic::transport::Server::builder()
                .add_service(service.into_server())
                .serve_with_incoming_shutdown(incoming, cancel.cancelled_owned())
                .await
                .map_err(ControllerError::Grpc)
        }
    });
    let sweeper = tokio::spawn(liveness::sweep_forever(
        store.clone(),
        config.offline_after,
        cancel.clone(),
    ));

    // If one server dies, stop the other instead of running half a controller.
    let joined = |r: Result<Result<(), ControllerError>, tokio::task::JoinError>| {
        r.map_err(|e| ControllerError::Task(e.to_string()))
            .and_then(|r| r)
    };
    let (http, grpc) = tokio::join!(
        async {
            let r = joined(http.await);
            cancel.cancel();
            r
        },
        async {
            let r = joined(grpc.await);
            cancel.cancel();
            r
        }
    );
    let _ = sweeper.await;
    store.stop_writer().await;
    writer.join().await;
    tracing::info!("controller stopped");
    http.and(grpc)
}
