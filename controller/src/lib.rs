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
//! - `api/`: the HTTP/JSON API (axum). `mod.rs` holds the router, bearer
//!   auth, the admin page and the OpenAPI route; `state` the handlers' shared
//!   state; `error` `ApiError`, the one place errors become HTTP responses;
//!   `extract` the body, query and path extractors; `idempotency` the
//!   request_id replay of mutating requests. One file of handlers per
//!   resource: `nodes` (and events), `platforms`, `qos_policies`,
//!   `appliances`, `vms`, `programs` (and deployments), `tasks`, `results`.
//! - `store/`: SQLite and the in-memory node registry. `mod.rs` holds the
//!   `Store` handle; `error` `StoreError`, the one error of the domain;
//!   `database` opening and migrations; `codec` how values sit in columns;
//!   `nodes` the node inputs, secrets, logs and events; `registry` the
//!   in-memory node table; `writer` the group-commit writer of node traffic;
//!   `checkpoint` background WAL checkpoints; `resources` the one-transaction-
//!   per-request store of everything else. One file of SQL per resource:
//!   `platforms`, `qos_policies`, `appliances`, `vms`, `programs` (and
//!   deployments), `tasks` (and results), `desired` (a node's desired state
//!   and its status reports), `idempotency` (recorded responses).
//! - `agent_rpc/`: the gRPC `NodeService` (tonic). `mod.rs` holds Register,
//!   Heartbeat, ShipLogs and WatchDesiredState; `workload` GetDesiredState,
//!   ReportStatus, FetchProgram, PostResult and PollTasks; `error` `RpcError`,
//!   the one place errors become gRPC status codes.
//! - `placement/`: VLAN, subnet, address and MAC allocation, and whether a VM
//!   fits its node (backend, free memory).
//! - `openapi`: the OpenAPI document of the HTTP API; its schemas are
//!   derived from the body types in `measurelab_api::http`, its paths are
//!   declared here next to one another (served at `/v1/openapi.json`,
//!   committed as `controller/openapi.json`).
//! - `validation`: field rules both APIs share.
//! - `version_policy`: which client versions this controller serves
//!   (docs/version-skew.md); the node API refuses older agents, the HTTP
//!   API warns older and newer providers and CLIs.
//! - `exec_hub`: `vm exec` sessions multiplexed over the agents'
//!   `ExecChannel` streams; `exec_forward`: the same session opened on the
//!   replica that holds the agent's stream (replicas on PostgreSQL).
//! - `liveness`: the sweeper that turns silent nodes offline.
//! - `tokens`: the admin and join tokens in the data directory.
//! - `tls`: the controller's CA, the server certificate, node certificates
//!   signed from CSRs, and the HTTPS accept loop.
//! - `ui/`: the embedded admin page served at `/`.
//!
//! Imports point one way: `api` and `agent_rpc` use `store`, `store` uses
//! `placement`, and no two modules import each other, directly or in a
//! circle (`cargo run -p xtask -- modcycles` checks it).
#![warn(missing_docs)]

mod access;
mod agent_rpc;
mod api;
mod appliance_files;
mod data_dir;
mod exec_forward;
mod exec_hub;
mod flows;
mod forward_proof;
mod grpc_listener;
mod guest_agent_skew;
mod leader;
mod liveness;
mod metrics;
pub mod openapi;
mod output_files;
mod placement;
mod retention;
mod store;
pub mod tls;
mod tokens;
mod validation;
pub mod version_policy;
mod wg_keys;

use std::future::Future;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use api::rate_limit::{RateLimits, TokenBucket, DEFAULT_RATE_LIMITS};
pub use api::{
    DEFAULT_EXPORT_MAX_BYTES, DEFAULT_MAX_CONCURRENT_UPLOADS, DEFAULT_RESULTS_PAGE_MAX_BYTES,
};
pub use data_dir::DataDirLock;
pub use data_dir::DataDirLockError;
pub use flows::{
    FlowCollectorConfig, FlowDirError, DEFAULT_FLOWS_PAGE_MAX_BYTES, DEFAULT_FLOWS_PAGE_MAX_FILES,
    MAX_ROTATE_SECONDS as MAX_FLOW_ROTATE_SECONDS,
};
pub use forward_proof::FORWARD_KEY_FILE;
pub use grpc_listener::{GrpcLimits, DEFAULT_GRPC_LIMITS};
/// Connection caps and timeouts of the HTTP API's listener.
pub use measurelab_httpserve::Limits as HttpLimits;
pub use retention::{Retention, DEFAULT_FLOW_RETENTION};
pub use store::StoreError;
pub use tls::{TlsConfig, TlsError};
pub use tokens::{TokenError, ADMIN_TOKEN_FILE, JOIN_TOKEN_FILE};

/// Everything the controller needs to run. Listeners are bound by the caller,
/// so the gRPC side can live in another network namespace and tests can bind
/// port 0.
#[derive(Debug)]
pub struct ControllerConfig {
    /// Holds `controller.db`, `admin.token` and `join.token` (mode 0600).
    pub data_dir: PathBuf,
    /// `postgres://…`: the tables live in this PostgreSQL database instead
    /// of `<data_dir>/controller.db` (controller replicas share one). The
    /// data dir still holds the tokens and the TLS files, and appliance and
    /// flow files unless `appliance_dir` and `flow_dir` put them elsewhere.
    pub store_url: Option<String>,
    /// Where appliance files are kept (content-addressed under
    /// `sha256/`); `None`: `<data_dir>/appliances`. Replicas of one
    /// database point it at one shared file system, so a file uploaded
    /// through one replica is served by every other.
    pub appliance_dir: Option<PathBuf>,
    /// Root of the flow archive (`--flow-dir`); `None`: `<data_dir>/flows`.
    /// Replicas of one database point it at one shared file system: each
    /// one's collector writes into a sub-directory named after its host
    /// and listen address, and every replica reads the whole tree, so
    /// `GET /v1/platforms/{id}/flows` answers the same through any of them.
    pub flow_dir: Option<PathBuf>,
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
    /// VLAN tags given to platforms (`--vlan-pool 100-3999`). Default 100-3999.
    pub vlan_pool: RangeInclusive<u16>,
    /// Network the platform subnets (/24s) come from (`--subnet-pool
    /// 10.201.0.0/16`): address and prefix length (8..=24). Default 10.201.0.0/16.
    pub subnet_pool: (Ipv4Addr, u8),
    /// Network the platform gateways' tunnel networks (/24s) come from
    /// (`--tunnel-pool 100.96.0.0/12`): address and prefix length (8..=24),
    /// apart from `subnet_pool`. Default 100.96.0.0/12.
    pub tunnel_pool: (Ipv4Addr, u8),
    /// The flow collector (nfcapd) the controller runs and nodes export to;
    /// `None`: none, and platform flows are unavailable.
    pub flow_collector: Option<FlowCollectorConfig>,
    /// Refused registrations after the first of this period are summed up in
    /// one event at its end. Default 60 s.
    pub refused_registration_report_interval: Duration,
    /// How long events, node logs, results and idempotency records are kept.
    pub retention: Retention,
    /// How long nfcapd's closed files are kept in the flow archive
    /// (`--flow-retention-hours`), by the interval start in their names.
    /// Default 7 days; at least one hour.
    pub flow_retention: Duration,
    /// Between two retention prunes. Default 10 minutes.
    pub prune_period: Duration,
    /// The data directory's lock, when the caller took it before writing
    /// into the directory itself; `None`: `run` takes it.
    pub data_dir_lock: Option<DataDirLock>,
    /// What the HTTP API's peers can hold. Default [`DEFAULT_HTTP_LIMITS`].
    pub http_limits: HttpLimits,
    /// What the gRPC node API's peers can hold. Default [`DEFAULT_GRPC_LIMITS`].
    pub grpc_limits: GrpcLimits,
    /// Request rates of the HTTP API per token and per source. Default
    /// [`DEFAULT_RATE_LIMITS`].
    pub rate_limits: RateLimits,
    /// Most bytes one `GET /v1/results/export` sends before it stops with a
    /// trailer saying so. Default [`DEFAULT_EXPORT_MAX_BYTES`].
    pub export_max_bytes: u64,
    /// Program uploads received at once; one more is refused (503 with
    /// `Retry-After`). Default [`DEFAULT_MAX_CONCURRENT_UPLOADS`]; at least 1.
    pub max_concurrent_uploads: usize,
    /// Most document bytes one `GET /v1/results` page holds; a page that
    /// reaches it ends early with a `next_cursor`. Default
    /// [`DEFAULT_RESULTS_PAGE_MAX_BYTES`].
    pub results_page_max_bytes: u64,
    /// Most bytes of nfdump output one `GET /v1/platforms/{id}/flows` page
    /// keeps; a page that reaches it ends early with a `next_cursor`.
    /// Default [`DEFAULT_FLOWS_PAGE_MAX_BYTES`].
    pub flows_page_max_bytes: u64,
    /// Most nfcapd files one flows page reads (one nfdump run each); a page
    /// that reaches it ends early with a `next_cursor`. Default
    /// [`DEFAULT_FLOWS_PAGE_MAX_FILES`].
    pub flows_page_max_files: u32,
    /// Serve HTTPS and gRPC over TLS, nodes authenticated with certificates
    /// the controller's CA signs (mTLS). `None` (the default): plaintext,
    /// which is only fit for loopback.
    pub tls: Option<TlsConfig>,
    /// `https://host:port` (`http://` without TLS) the other replicas of
    /// one PostgreSQL database reach this one's HTTP API by, to forward
    /// `vm exec` sessions to the agents streaming to it
    /// (`--advertise-url`, see [`parse_advertise_url`]). `None`: sessions
    /// for those agents that land on another replica are refused (503).
    pub advertise_url: Option<String>,
    /// The version the controller judges its clients' versions against
    /// (docs/version-skew.md). Default: this build's; tests set another to
    /// show what a later controller does with agents of this one.
    pub version: version_policy::Version,
}

/// The HTTP API's default bounds: room for a provider's parallel requests,
/// the CLI and the admin page from one address, while one address cannot
/// hold more than an eighth of the listener.
pub const DEFAULT_HTTP_LIMITS: HttpLimits = HttpLimits {
    max_connections: 1024,
    max_connections_per_source: 128,
    header_read_timeout: Duration::from_secs(10),
    // Longer than the provider's and CLI's pooled keep-alive reuse gaps
    // between Terraform steps, shorter than a socket is worth holding.
    idle_timeout: Duration::from_secs(60),
    request_timeout: Duration::from_secs(60),
};

/// Parse a VLAN pool such as `100-3999` (tags 1..=4094).
pub fn parse_vlan_pool(text: &str) -> Result<RangeInclusive<u16>, ControllerError> {
    let bad = |why: &str| ControllerError::Config(format!("vlan pool {text:?}: {why}"));
    let (first, last) = text
        .split_once('-')
        .ok_or_else(|| bad("expected FIRST-LAST, e.g. 100-3999"))?;
    let first: u16 = first
        .trim()
        .parse()
        .map_err(|_| bad("FIRST is not a number"))?;
    let last: u16 = last
        .trim()
        .parse()
        .map_err(|_| bad("LAST is not a number"))?;
    let pool = first..=last;
    check_vlan_pool(&pool)?;
    Ok(pool)
}

fn check_vlan_pool(pool: &RangeInclusive<u16>) -> Result<(), ControllerError> {
    if *pool.start() < 1 || *pool.end() > 4094 || pool.start() > pool.end() {
        return Err(ControllerError::Config(format!(
            "vlan pool {}-{}: tags must satisfy 1 <= FIRST <= LAST <= 4094",
            pool.start(),
            pool.end()
        )));
    }
    Ok(())
}

/// Parse a subnet pool such as `10.201.0.0/16` (prefix 8..=24; split into /24s).
pub fn parse_subnet_pool(text: &str) -> Result<(Ipv4Addr, u8), ControllerError> {
    parse_ipv4_pool("subnet pool", text)
}

/// Parse a tunnel pool such as `100.96.0.0/12` (prefix 8..=24; split into /24s).
pub fn parse_tunnel_pool(text: &str) -> Result<(Ipv4Addr, u8), ControllerError> {
    parse_ipv4_pool("tunnel pool", text)
}

fn parse_ipv4_pool(pool: &str, text: &str) -> Result<(Ipv4Addr, u8), ControllerError> {
    let bad = |why: &str| ControllerError::Config(format!("{pool} {text:?}: {why}"));
    let (address, prefix) = text
        .split_once('/')
        .ok_or_else(|| bad("expected ADDRESS/PREFIX, e.g. 10.201.0.0/16"))?;
    let address: Ipv4Addr = address.parse().map_err(|_| bad("not an IPv4 address"))?;
    let prefix: u8 = prefix.parse().map_err(|_| bad("prefix is not a number"))?;
    let network = (address, prefix);
    check_ipv4_pool(pool, network)?;
    Ok(network)
}

fn check_ipv4_pool(pool: &str, (address, prefix): (Ipv4Addr, u8)) -> Result<(), ControllerError> {
    if !(8..=24).contains(&prefix) {
        return Err(ControllerError::Config(format!(
            "{pool} {address}/{prefix}: the prefix must be 8 to 24 (the pool is split into /24s)"
        )));
    }
    let host_bits = u32::from(address) & !(u32::MAX << (32 - u32::from(prefix)));
    if host_bits != 0 {
        return Err(ControllerError::Config(format!(
            "{pool} {address}/{prefix}: host bits are set; use the network address"
        )));
    }
    Ok(())
}

/// A gateway routes its peers' tunnel addresses into the platform subnet and
/// masquerades them: an address both a peer and a VM could hold would be
/// sent to the wrong one.
fn check_pools_apart(
    subnets: (Ipv4Addr, u8),
    tunnels: (Ipv4Addr, u8),
) -> Result<(), ControllerError> {
    let network = |(address, prefix): (Ipv4Addr, u8)| {
        let mask = u32::MAX << (32 - u32::from(prefix));
        (u32::from(address) & mask, mask)
    };
    let ((subnet_net, subnet_mask), (tunnel_net, tunnel_mask)) =
        (network(subnets), network(tunnels));
    // Two networks overlap when the shorter prefix holds the other's address.
    let wider = subnet_mask & tunnel_mask;
    if subnet_net & wider == tunnel_net & wider {
        return Err(ControllerError::Config(format!(
            "subnet pool {}/{} and tunnel pool {}/{} overlap: a platform's gateway could not tell a peer from a VM",
            subnets.0, subnets.1, tunnels.0, tunnels.1
        )));
    }
    Ok(())
}

/// Parse `--advertise-url`: an `http://` or `https://` URL with a host and
/// nothing after the port (the replica appends the API paths itself).
/// Returned without a trailing slash.
pub fn parse_advertise_url(text: &str) -> Result<String, ControllerError> {
    let bad = |why: &str| ControllerError::Config(format!("--advertise-url {text:?}: {why}"));
    let uri: axum::http::Uri = text
        .parse()
        .map_err(|_| bad("not a URL; expected https://HOST:PORT"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad("the scheme must be http:// or https://")),
    }
    match uri.authority() {
        Some(authority) if !authority.host().is_empty() && !authority.as_str().contains('@') => {}
        _ => return Err(bad("expected a host (and port), without user info")),
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad(
            "expected no path or query: the replica adds /v1/... itself",
        ));
    }
    Ok(text.trim_end_matches('/').to_string())
}

/// Whether `url` names a PostgreSQL database (the two schemes libpq takes).
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl ControllerConfig {
    /// A configuration with the default intervals and durable heartbeats.
    pub fn new(
        data_dir: impl Into<PathBuf>,
        http_listener: std::net::TcpListener,
        grpc_listener: std::net::TcpListener,
    ) -> Self {
        let heartbeat_interval = Duration::from_secs(5);
        let pools = placement::Pools::default();
        ControllerConfig {
            data_dir: data_dir.into(),
            store_url: None,
            appliance_dir: None,
            flow_dir: None,
            http_listener,
            grpc_listener,
            heartbeat_interval,
            offline_after: heartbeat_interval * 3,
            join_token: None,
            durable_heartbeats: true,
            vlan_pool: pools.vlans,
            subnet_pool: pools.subnets,
            tunnel_pool: pools.tunnels,
            flow_collector: None,
            refused_registration_report_interval: agent_rpc::DEFAULT_REFUSAL_REPORT_INTERVAL,
            retention: Retention::default(),
            flow_retention: DEFAULT_FLOW_RETENTION,
            prune_period: retention::PRUNE_PERIOD,
            data_dir_lock: None,
            http_limits: DEFAULT_HTTP_LIMITS,
            grpc_limits: DEFAULT_GRPC_LIMITS,
            rate_limits: DEFAULT_RATE_LIMITS,
            export_max_bytes: DEFAULT_EXPORT_MAX_BYTES,
            max_concurrent_uploads: DEFAULT_MAX_CONCURRENT_UPLOADS,
            results_page_max_bytes: DEFAULT_RESULTS_PAGE_MAX_BYTES,
            flows_page_max_bytes: DEFAULT_FLOWS_PAGE_MAX_BYTES,
            flows_page_max_files: DEFAULT_FLOWS_PAGE_MAX_FILES,
            tls: None,
            advertise_url: None,
            version: version_policy::Version::this_build(),
        }
    }
}

/// Why the controller could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The configuration is unusable.
    #[error("invalid controller configuration: {0}")]
    Config(String),
    /// The flow root (`--flow-dir`) cannot be used.
    #[error("invalid controller configuration: {0}")]
    FlowDir(#[from] FlowDirError),
    /// The data directory cannot be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// Directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Another controller owns the data directory, or it cannot be locked.
    #[error(transparent)]
    DataDirLock(#[from] data_dir::DataDirLockError),
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
    /// TLS could not be set up (CA, certificates, keys).
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// The data-dir files replicas of one database share could not be shared.
    #[error("{0}")]
    ReplicaFiles(Box<store::replica_files::ReplicaFilesError<ControllerError>>),
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

/// Replicas of one PostgreSQL database serve the same nodes and operators,
/// so they must hold the same tokens and CA: take the ones another replica
/// published, publish this one's otherwise (see `store::replica_files`).
fn share_with_replicas(url: &str, config: &ControllerConfig) -> Result<(), ControllerError> {
    use store::replica_files::{self, ReplicaFilesError, SharedFile};
    let secret = |name| SharedFile { name, mode: 0o600 };
    let mut files = vec![secret(ADMIN_TOKEN_FILE), secret(FORWARD_KEY_FILE)];
    if config.join_token.is_none() {
        files.push(secret(JOIN_TOKEN_FILE));
    }
    if config.tls.is_some() {
        files.push(SharedFile {
            name: tls::CA_CERT_FILE,
            mode: 0o644,
        });
        files.push(secret(tls::CA_KEY_FILE));
    }
    let data_dir = &config.data_dir;
    let shared = replica_files::share(url, data_dir, &files, || {
        for file in &files {
            if [ADMIN_TOKEN_FILE, JOIN_TOKEN_FILE, FORWARD_KEY_FILE].contains(&file.name) {
                tokens::load_or_create(&data_dir.join(file.name))?;
            }
        }
        if config.tls.is_some() {
            tls::Ca::load_or_create(data_dir)?;
        }
        Ok::<(), ControllerError>(())
    })
    .map_err(|err| match err {
        ReplicaFilesError::Create(err) => err,
        err => ControllerError::ReplicaFiles(Box::new(err)),
    })?;
    tracing::info!(adopted = ?shared.adopted, published = ?shared.published, "data-dir files shared with the other replicas of the database");
    Ok(())
}

/// Run the controller until `shutdown` completes, then drain: stop accepting,
/// finish in-flight requests, commit what the store writer has queued.
pub async fn run(
    mut config: ControllerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ControllerError> {
    if config.heartbeat_interval.is_zero()
        || config.offline_after.is_zero()
        || config.refused_registration_report_interval.is_zero()
        || config.prune_period.is_zero()
        || config.export_max_bytes == 0
        || config.max_concurrent_uploads == 0
        || config.results_page_max_bytes == 0
        || config.flows_page_max_bytes == 0
        || config.flows_page_max_files == 0
    {
        return Err(ControllerError::Config(
            "heartbeat_interval, offline_after, refused_registration_report_interval, prune_period, export_max_bytes, max_concurrent_uploads, results_page_max_bytes, flows_page_max_bytes and flows_page_max_files must be greater than zero".into(),
        ));
    }
    if let Some(tls) = &config.tls {
        let shortest = config.heartbeat_interval * tls::MIN_NODE_CERT_HEARTBEATS;
        if tls.node_cert_lifetime < shortest {
            return Err(ControllerError::Config(format!(
                "tls.node_cert_lifetime: {:?} is shorter than {} heartbeat intervals ({:?}); \
                 agents renew at a heartbeat two thirds into it, and the last third must hold \
                 at least two heartbeats",
                tls.node_cert_lifetime,
                tls::MIN_NODE_CERT_HEARTBEATS,
                shortest
            )));
        }
    }
    let retention = &config.retention;
    for (field, kept) in [
        ("retention.events", retention.events),
        ("retention.node_logs", retention.node_logs),
        ("retention.results", retention.results),
        ("retention.idempotency", retention.idempotency),
        ("flow_retention", config.flow_retention),
    ] {
        if kept < Duration::from_secs(3600) {
            return Err(ControllerError::Config(format!(
                "{field}: must be at least one hour, not {kept:?}"
            )));
        }
    }
    check_vlan_pool(&config.vlan_pool)?;
    check_ipv4_pool("subnet pool", config.subnet_pool)?;
    check_ipv4_pool("tunnel pool", config.tunnel_pool)?;
    check_pools_apart(config.subnet_pool, config.tunnel_pool)?;
    config
        .http_limits
        .validate()
        .map_err(|err| ControllerError::Config(format!("http_limits.{err}")))?;
    config
        .grpc_limits
        .validate()
        .map_err(ControllerError::Config)?;
    config
        .rate_limits
        .validate()
        .map_err(ControllerError::Config)?;
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ControllerError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    // Before anything in the directory is read or written: a second
    // controller must not even rewrite a token file.
    let _data_dir_lock = match config.data_dir_lock.take() {
        Some(lock) => lock,
        None => DataDirLock::acquire(&config.data_dir)?,
    };
    if matches!(&config.join_token, Some(token) if token.trim().is_empty()) {
        return Err(ControllerError::Config(
            "join_token must not be empty".into(),
        ));
    }
    // The other replicas speak to this one as its HTTP listener serves:
    // TLS exactly when it is on.
    let advertise_url = match &config.advertise_url {
        Some(text) => {
            let url = parse_advertise_url(text)?;
            if url.starts_with("https://") != config.tls.is_some() {
                return Err(ControllerError::Config(format!(
                    "--advertise-url {text:?}: the HTTP API serves {}, so the URL must start with {}",
                    if config.tls.is_some() { "HTTPS" } else { "plain HTTP (no --tls)" },
                    if config.tls.is_some() { "https://" } else { "http://" },
                )));
            }
            Some(url)
        }
        None => None,
    };
    if let Some(url) = &config.store_url {
        if !is_postgres_url(url) {
            return Err(ControllerError::Config(
                "store_url: expected a postgres:// or postgresql:// URL".into(),
            ));
        }
    }
    // Before the store opens: a flow root that cannot be used stops the
    // start with nothing else begun.
    let flow_dirs = flows::FlowDirs::resolve(
        &config.data_dir,
        config.flow_dir.as_deref(),
        config.flow_collector.as_ref(),
    )?;
    let (store, writer) = store::Store::open_with_pools(
        &config.data_dir,
        config.store_url.as_deref(),
        config.durable_heartbeats,
        placement::Pools {
            vlans: config.vlan_pool.clone(),
            subnets: config.subnet_pool,
            tunnels: config.tunnel_pool,
        },
    )?;
    let store = match &config.appliance_dir {
        Some(dir) => store.with_appliance_dir(dir),
        None => store,
    };
    // After the store (which made the table), before the files are read.
    if let Some(url) = &config.store_url {
        share_with_replicas(url, &config)?;
    }
    let admin_token = tokens::load_or_create(&config.data_dir.join(ADMIN_TOKEN_FILE))?;
    let join_token = match config.join_token {
        Some(token) => token,
        None => tokens::load_or_create(&config.data_dir.join(JOIN_TOKEN_FILE))?,
    };

    let listener = |which, listener: std::net::TcpListener| {
        listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
            .map_err(|source| ControllerError::Listener { which, source })
    };
    let http_listener = listener("http", config.http_listener)?;
    let grpc_listener = listener("grpc", config.grpc_listener)?;
    let server_tls = match &config.tls {
        Some(tls) => {
            let bound: Vec<std::net::IpAddr> = [&http_listener, &grpc_listener]
                .iter()
                .filter_map(|l| l.local_addr().ok())
                .map(|a| a.ip())
                .collect();
            Some(tls::ServerTls::new(tls, &config.data_dir, &bound)?)
        }
        None => None,
    };
    tracing::info!(
        http = ?http_listener.local_addr().ok(),
        grpc = ?grpc_listener.local_addr().ok(),
        data_dir = %config.data_dir.display(),
        durable_heartbeats = config.durable_heartbeats,
        tls = server_tls.is_some(),
        ca_fingerprint = server_tls.as_ref().map(|t| t.ca.fingerprint()),
        "controller listening"
    );

    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
    });

    let collector = config
        .flow_collector
        .clone()
        .zip(flow_dirs.collector.clone())
        .map(|(collector, dir)| {
            tokio::spawn(flows::collector::supervise(collector, dir, cancel.clone()))
        });
    let metrics = metrics::Metrics::new(config.version);
    let leader = Arc::new(
        leader::LeaderGate::for_store(config.store_url.as_deref())
            .map_err(|e| ControllerError::Store(StoreError::Sql(e.into())))?,
    );
    metrics.follow_leadership(leader.clone());
    let exec_hub = exec_hub::ExecHub::default();
    let exec_forwarder =
        exec_forward::ExecForwarder::new(server_tls.as_ref().map(|tls| tls.ca.pem()))?;
    // Only replicas of one database forward to each other.
    let exec_forwarder = match &config.store_url {
        Some(_) => exec_forwarder.with_key(forward_proof::ForwardKey::new(
            &tokens::load_or_create(&config.data_dir.join(FORWARD_KEY_FILE))?,
        )),
        None => exec_forwarder,
    };
    let http = tokio::spawn({
        let app = api::router(
            api::AppState::new(store.clone(), admin_token)
                .with_metrics(metrics.clone())
                .judging_clients_against(config.version)
                .with_exec_hub(exec_hub.clone())
                .with_exec_forwarder(exec_forwarder)
                .with_rate_limits(config.rate_limits)
                .with_export_max_bytes(config.export_max_bytes)
                .with_max_concurrent_uploads(config.max_concurrent_uploads)
                .with_results_page_max_bytes(config.results_page_max_bytes)
                // A replica on a shared root reads its peers' collectors'
                // files even when it runs none itself.
                .with_flows(
                    (config.flow_collector.is_some() || config.flow_dir.is_some()).then(|| {
                        flows::archive::FlowArchive::new(
                            flow_dirs.archive.clone(),
                            flows::archive::PageLimits {
                                max_bytes: config.flows_page_max_bytes,
                                max_files: config.flows_page_max_files as usize,
                                // A page cut short answers with a cursor
                                // well before the request's 408.
                                time_budget: config.http_limits.request_timeout / 2,
                            },
                        )
                    }),
                ),
        );
        let (cancel, limits) = (cancel.clone(), config.http_limits);
        let acceptor = server_tls
            .as_ref()
            .map(tls::ServerTls::https_acceptor)
            .transpose()?;
        async move {
            // The TLS handshake is the accept step, so it runs inside the
            // connection's slot and within the header-read timeout.
            match acceptor {
                Some(acceptor) => {
                    let handshake = move |tcp| {
                        let acceptor = acceptor.clone();
                        async move { acceptor.accept(tcp).await }
                    };
                    measurelab_httpserve::serve(
                        http_listener,
                        handshake,
                        app,
                        limits,
                        cancel.cancelled_owned(),
                    )
                    .await
                }
                None => {
                    measurelab_httpserve::serve(
                        http_listener,
                        measurelab_httpserve::plain,
                        app,
                        limits,
                        cancel.cancelled_owned(),
                    )
                    .await
                }
            }
            Ok::<(), ControllerError>(())
        }
    });
    let service = agent_rpc::NodeRpc::new(store.clone(), join_token, config.heartbeat_interval)
        .judging_agents_against(config.version)
        .ending_streams_on(cancel.clone())
        .with_exec_hub(exec_hub)
        .with_advertise_url(advertise_url)
        .with_max_response_message_bytes(config.grpc_limits.max_response_message_bytes)
        .with_flow_collector(config.flow_collector.as_ref().map(|c| c.listen.to_string()))
        .with_node_certs(server_tls.as_ref().map(|t| agent_rpc::NodeCerts {
            ca: t.ca.clone(),
            lifetime: t.node_cert_lifetime,
        }));
    let grpc_tls = server_tls
        .as_ref()
        .map(tls::ServerTls::grpc_acceptor)
        .transpose()?;
    let refusal_reports = tokio::spawn({
        let (refusals, store, cancel) = (service.refusals(), store.clone(), cancel.clone());
        let interval = config.refused_registration_report_interval;
        async move { refusals.report_forever(store, interval, cancel).await }
    });
    let grpc = tokio::spawn({
        let (cancel, limits) = (cancel.clone(), config.grpc_limits);
        async move {
            let server = service
                .into_server()
                .max_decoding_message_size(limits.max_request_message_bytes)
                .max_encoding_message_size(limits.max_response_message_bytes);
            let router = limits
                .builder()
                .layer(metrics::RpcLayer(metrics))
                .add_service(server);
            let shutdown = cancel.cancelled_owned();
            match grpc_tls {
                Some(acceptor) => {
                    let incoming = grpc_listener::tls_incoming(grpc_listener, limits, acceptor);
                    router
                        .serve_with_incoming_shutdown(incoming, shutdown)
                        .await
                }
                None => {
                    let incoming = grpc_listener::incoming(grpc_listener, limits);
                    router
                        .serve_with_incoming_shutdown(incoming, shutdown)
                        .await
                }
            }
            .map_err(ControllerError::Grpc)
        }
    });
    let sweeper = tokio::spawn(liveness::sweep_forever(
        store.clone(),
        config.offline_after,
        leader.clone(),
        cancel.clone(),
    ));
    let pruner = tokio::spawn(retention::prune_forever(
        store.clone(),
        config.retention.clone(),
        retention::FlowRetention {
            root: flow_dirs.archive.clone(),
            kept_for: config.flow_retention,
        },
        config.prune_period,
        leader.clone(),
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
    let _ = pruner.await;
    // Releasing the leader lock joins its thread: off the async workers.
    let _ = tokio::task::spawn_blocking(move || drop(leader)).await;
    let _ = refusal_reports.await;
    if let Some(collector) = collector {
        let _ = collector.await;
    }
    store.stop_writer().await;
    writer.join().await;
    tracing::info!("controller stopped");
    http.and(grpc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apart(subnets: &str, tunnels: &str) -> bool {
        check_pools_apart(
            parse_subnet_pool(subnets).unwrap(),
            parse_tunnel_pool(tunnels).unwrap(),
        )
        .is_ok()
    }

    #[test]
    fn pools_overlap_when_either_holds_the_other() {
        assert!(apart("10.201.0.0/16", "100.96.0.0/12"));
        // Neighbours share no address.
        assert!(apart("10.0.0.0/16", "10.1.0.0/16"));
        assert!(apart("10.1.0.0/24", "10.1.1.0/24"));
        // A tunnel pool inside the subnet pool, and the reverse.
        assert!(!apart("10.0.0.0/8", "10.99.0.0/16"));
        assert!(!apart("100.100.0.0/16", "100.96.0.0/12"));
        assert!(!apart("10.5.5.0/24", "10.5.5.0/24"));
    }

    fn replica_config(data_dir: &std::path::Path, url: &str) -> ControllerConfig {
        let listener = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut config = ControllerConfig::new(data_dir, listener(), listener());
        config.store_url = Some(url.to_string());
        config.tls = Some(tls::TlsConfig::generated(vec!["localhost".into()]));
        config
    }

    #[test]
    fn replicas_of_one_database_hold_the_same_tokens_and_ca_or_refuse_to_start() {
        let db = measurelab_testbed::pg::database().unwrap();
        let url = db.url().to_string();
        std::thread::spawn({
            let url = url.clone();
            move || store::sql::pg::PgDriver::connect(&url)?.migrate()
        })
        .join()
        .unwrap()
        .unwrap();
        let shared = [
            ADMIN_TOKEN_FILE,
            JOIN_TOKEN_FILE,
            FORWARD_KEY_FILE,
            tls::CA_CERT_FILE,
            tls::CA_KEY_FILE,
        ];
        let read = |dir: &tempfile::TempDir, name: &str| {
            std::fs::read_to_string(dir.path().join(name)).unwrap()
        };

        // The first replica makes its files and publishes them; the second,
        // from an empty data dir, takes them.
        let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        share_with_replicas(&url, &replica_config(first.path(), &url)).unwrap();
        share_with_replicas(&url, &replica_config(second.path(), &url)).unwrap();
        for name in shared {
            assert_eq!(read(&first, name), read(&second, name), "{name}");
        }
        let mode = |dir: &tempfile::TempDir, name: &str| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(&second, tls::CA_KEY_FILE), 0o600);
        assert_eq!(mode(&second, ADMIN_TOKEN_FILE), 0o600);
        assert_eq!(mode(&second, FORWARD_KEY_FILE), 0o600);
        // The CA the second replica took signs what the first one's verifies.
        let ca = tls::Ca::load_or_create(second.path()).unwrap();
        assert_eq!(
            ca.fingerprint(),
            tls::Ca::load_or_create(first.path()).unwrap().fingerprint()
        );

        // A replica with a CA of its own is refused, and keeps it.
        let third = tempfile::tempdir().unwrap();
        tls::Ca::load_or_create(third.path()).unwrap();
        let own_ca = read(&third, tls::CA_CERT_FILE);
        let err = share_with_replicas(&url, &replica_config(third.path(), &url)).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains(&third.path().join(tls::CA_CERT_FILE).display().to_string())
                && message.contains("differs"),
            "{message}"
        );
        assert_eq!(read(&third, tls::CA_CERT_FILE), own_ca);
        // Nothing was taken before the refusal either.
        assert!(!third.path().join(ADMIN_TOKEN_FILE).exists());
    }

    #[test]
    fn an_advertise_url_is_an_http_base_url_and_a_bad_one_names_the_flag() {
        assert_eq!(
            parse_advertise_url("https://ctl-2.example:7070/").unwrap(),
            "https://ctl-2.example:7070"
        );
        assert_eq!(
            parse_advertise_url("http://[::1]:7070").unwrap(),
            "http://[::1]:7070"
        );
        for (bad, why) in [
            ("ctl-2:7070", "scheme"),
            ("ftp://ctl-2:7070", "scheme"),
            ("https://ctl-2:7070/v1", "no path"),
            ("https://ctl-2:7070/?x=1", "no path or query"),
            ("https://user@ctl-2:7070", "user info"),
            ("not a url", "not a URL"),
        ] {
            let err = parse_advertise_url(bad).unwrap_err().to_string();
            assert!(
                err.contains("--advertise-url") && err.contains(why),
                "{bad}: {err}"
            );
        }
    }
}
