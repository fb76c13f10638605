//! `measurelab controller`.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// File in the data dir holding the bound HTTP address, so port 0 works.
pub const HTTP_ADDR_FILE: &str = "http.addr";

#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// Directory for controller.db, admin.token, join.token and http.addr.
    #[arg(long)]
    data_dir: PathBuf,
    /// Where the tables live: `sqlite` (DATA_DIR/controller.db, the default)
    /// or the `postgres://user@host:port/db` URL of a PostgreSQL database
    /// that controller replicas share (docs/postgresql.md). Taken from
    /// MEASURELAB_STORE when not given, which keeps a password out of the
    /// process list.
    #[arg(
        long,
        env = "MEASURELAB_STORE",
        hide_env_values = true,
        default_value = "sqlite"
    )]
    store: String,
    /// Directory of the appliance files (default DATA_DIR/appliances).
    /// Controller replicas of one database give it one shared file system,
    /// so every replica serves a file uploaded through any of them.
    #[arg(long, env = "MEASURELAB_APPLIANCE_DIR")]
    appliance_dir: Option<PathBuf>,
    /// Root of the flow archive (default DATA_DIR/flows). Controller
    /// replicas of one database give it one shared file system: each
    /// replica's collector writes into a sub-directory named after its host
    /// and --flow-collector address, and every replica reads the whole tree, so
    /// GET /v1/platforms/{id}/flows answers the same through any of them.
    #[arg(long, env = "MEASURELAB_FLOW_DIR")]
    flow_dir: Option<PathBuf>,
    /// With --store postgres://: the https://HOST:PORT (http:// without
    /// --tls) the other controller replicas reach this one's HTTP API by.
    /// A `vm exec` or `vm cp` that lands on another replica is forwarded
    /// here when the node's agent streams to this one; without it, such a
    /// session is refused (503). Its host must be in the server
    /// certificate (--tls-san); the replicas share the CA through the
    /// database (docs/postgresql.md).
    #[arg(long, env = "MEASURELAB_ADVERTISE_URL", value_name = "URL", value_parser = advertise_url)]
    advertise_url: Option<String>,
    /// Public HTTP/JSON API address (port 0 picks a free port; see DATA_DIR/http.addr).
    #[arg(long, default_value = "127.0.0.1:7070")]
    http_listen: SocketAddr,
    /// gRPC node API address.
    #[arg(long, default_value = "127.0.0.1:7071")]
    grpc_listen: SocketAddr,
    /// Bind the gRPC listener inside this network namespace (/run/netns/NAME).
    #[arg(long)]
    grpc_netns: Option<String>,
    /// Heartbeat interval told to agents.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    heartbeat_interval_seconds: u64,
    /// A node silent for this long is offline (default: 3 heartbeat intervals).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86400))]
    offline_after_seconds: Option<u64>,
    /// Read the node join token from this file instead of DATA_DIR/join.token.
    #[arg(long)]
    join_token_file: Option<PathBuf>,
    /// Run a flow collector (nfdump's nfcapd: NetFlow v5 and IPFIX) on this
    /// UDP IP:PORT, storing into DATA_DIR/flows (or under --flow-dir); nodes export to it, and
    /// GET /v1/platforms/{id}/flows reads it. In --grpc-netns when given.
    #[arg(long)]
    flow_collector: Option<SocketAddr>,
    /// Seconds between the collector's file rotations: a flow is queryable
    /// once its file is closed.
    #[arg(
        long,
        default_value_t = 60,
        value_parser = clap::value_parser!(u32)
            .range(2..=i64::from(measurelab_controller::MAX_FLOW_ROTATE_SECONDS))
    )]
    flow_rotate_seconds: u32,
    /// Hours the flow archive's closed nfcapd files are kept, counted from
    /// the time in their names; older ones are deleted (under --flow-dir, in
    /// every replica's sub-directory) by the replica that prunes records,
    /// and so is a stopped collector's current file an hour after that.
    #[arg(
        long,
        env = "MEASURELAB_FLOW_RETENTION_HOURS",
        default_value_t = measurelab_controller::DEFAULT_FLOW_RETENTION.as_secs() / 3600,
        value_parser = clap::value_parser!(u64).range(1..=876_000)
    )]
    flow_retention_hours: u64,
    /// Days events are kept.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=36500))]
    retain_events_days: u64,
    /// Days node agent log lines are kept.
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u64).range(1..=36500))]
    retain_logs_days: u64,
    /// Days measurement results are kept.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u64).range(1..=36500))]
    retain_results_days: u64,
    /// Hours guest usage samples (GET /v1/vms/{id}/usage) are kept.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..=8760))]
    usage_retention_hours: u64,
    /// Serve HTTPS and gRPC over TLS with the controller's own CA (created in
    /// DATA_DIR/ca.pem, key ca.key), nodes authenticated by certificates it
    /// signs at registration. Without it both APIs are plaintext, fit only
    /// for loopback.
    #[arg(long)]
    tls: bool,
    /// Allow plaintext (no --tls) on a listen address that is not loopback.
    /// Tokens, join tokens and node secrets then cross the network in
    /// clear: fit for an isolated lab network only.
    #[arg(long)]
    insecure: bool,
    /// A host name or IP address clients reach the controller by, added to
    /// the generated server certificate besides the bind addresses (repeat
    /// for several). Implies --tls.
    #[arg(long = "tls-san", value_name = "NAME_OR_IP")]
    tls_sans: Vec<String>,
    /// PEM certificate chain of an operator-issued server certificate
    /// (instead of a generated one; needs --tls-key). Implies --tls.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Days a node certificate is valid; agents renew at two thirds of it.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3650))]
    node_cert_days: u64,
    /// Seconds a node certificate is valid, instead of --node-cert-days:
    /// for tests of renewal and expiry. At least 6 heartbeat intervals.
    #[arg(
        long,
        value_name = "SECONDS",
        conflicts_with = "node_cert_days",
        value_parser = clap::value_parser!(u64).range(6..=3650 * 86_400)
    )]
    node_cert_seconds: Option<u64>,
    /// Hours the idempotency records of mutating API requests are kept.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..=8760))]
    retain_idempotency_hours: u64,
    /// HTTP API connections served at once; further ones are closed at accept.
    #[arg(long, default_value_t = DEFAULT_HTTP.max_connections as u64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    http_max_connections: u64,
    /// HTTP API connections served at once from one source address.
    #[arg(long, default_value_t = DEFAULT_HTTP.max_connections_per_source as u64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    http_max_connections_per_source: u64,
    /// Seconds from the first byte of an HTTP request to the end of its headers.
    #[arg(long, default_value_t = DEFAULT_HTTP.header_read_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    http_header_read_timeout_seconds: u64,
    /// Seconds an HTTP connection may stay silent between requests (or a
    /// response, or an upload, may make no progress) before it is closed.
    #[arg(long, default_value_t = DEFAULT_HTTP.idle_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..=86400))]
    http_idle_timeout_seconds: u64,
    /// Seconds an HTTP request may take before it is answered 408 (uploads
    /// are bounded by progress instead).
    #[arg(long, default_value_t = DEFAULT_HTTP.request_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..=86400))]
    http_request_timeout_seconds: u64,
    /// gRPC connections served at once; further ones are closed at accept.
    #[arg(long, default_value_t = DEFAULT_GRPC.max_connections as u64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    grpc_max_connections: u64,
    /// gRPC connections served at once from one source address.
    #[arg(long, default_value_t = DEFAULT_GRPC.max_connections_per_source as u64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    grpc_max_connections_per_source: u64,
    /// Seconds a new gRPC connection has to send its first byte (under
    /// --tls: to complete its TLS handshake).
    #[arg(long, default_value_t = DEFAULT_GRPC.handshake_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    grpc_handshake_timeout_seconds: u64,
    /// Seconds a gRPC call may take to answer (streams live on after their start).
    #[arg(long, default_value_t = DEFAULT_GRPC.request_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    grpc_request_timeout_seconds: u64,
    /// Seconds between HTTP/2 pings to a silent gRPC peer.
    #[arg(long, default_value_t = DEFAULT_GRPC.keepalive_interval.as_secs(), value_parser = clap::value_parser!(u64).range(1..=86400))]
    grpc_keepalive_interval_seconds: u64,
    /// Seconds a gRPC peer has to answer a ping before it is dropped.
    #[arg(long, default_value_t = DEFAULT_GRPC.keepalive_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    grpc_keepalive_timeout_seconds: u64,
    /// gRPC streams (calls) one connection may have open at once.
    #[arg(long, default_value_t = DEFAULT_GRPC.max_concurrent_streams, value_parser = clap::value_parser!(u32).range(1..))]
    grpc_max_concurrent_streams: u32,
    /// gRPC calls one connection may have in the handlers at once; more wait.
    #[arg(long, default_value_t = DEFAULT_GRPC.concurrency_per_connection as u64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    grpc_concurrency_per_connection: u64,
    /// Largest gRPC request message, bytes.
    #[arg(long, default_value_t = DEFAULT_GRPC.max_request_message_bytes as u64, value_parser = clap::value_parser!(u64).range(1024..=1 << 30))]
    grpc_max_request_message_bytes: u64,
    /// Largest gRPC response message, bytes (FetchProgram carries a whole program).
    #[arg(long, default_value_t = DEFAULT_GRPC.max_response_message_bytes as u64, value_parser = clap::value_parser!(u64).range(1024..=1 << 30))]
    grpc_max_response_message_bytes: u64,
    /// HTTP API requests per second one bearer token sustains (0: no per-token limit).
    #[arg(long, default_value_t = DEFAULT_RATE.per_token.map_or(0, |b| b.per_second))]
    rate_limit_per_token: u32,
    /// Requests one bearer token may make at once after a quiet period.
    #[arg(long, default_value_t = DEFAULT_RATE.per_token.map_or(1, |b| b.burst), value_parser = clap::value_parser!(u32).range(1..))]
    rate_limit_per_token_burst: u32,
    /// HTTP API requests per second one source address sustains (0: no per-source limit).
    #[arg(long, default_value_t = DEFAULT_RATE.per_source.map_or(0, |b| b.per_second))]
    rate_limit_per_source: u32,
    /// Requests one source address may make at once after a quiet period.
    #[arg(long, default_value_t = DEFAULT_RATE.per_source.map_or(1, |b| b.burst), value_parser = clap::value_parser!(u32).range(1..))]
    rate_limit_per_source_burst: u32,
    /// Most bytes one GET /v1/results/export sends; it then stops with a
    /// trailer saying so.
    #[arg(long, default_value_t = measurelab_controller::DEFAULT_EXPORT_MAX_BYTES, value_parser = clap::value_parser!(u64).range(1024..))]
    export_max_bytes: u64,
    /// Program uploads received at once; one more is answered 503 with
    /// Retry-After. Each holds up to 64 MiB on disk and, while it is
    /// recorded, in memory.
    #[arg(
        long,
        env = "MEASURELAB_MAX_CONCURRENT_UPLOADS",
        default_value_t = measurelab_controller::DEFAULT_MAX_CONCURRENT_UPLOADS as u64,
        value_parser = clap::value_parser!(u64).range(1..=1024)
    )]
    max_concurrent_uploads: u64,
    /// Most bytes of result documents one GET /v1/results page holds; a
    /// page that reaches it ends early, and its next_cursor reads on.
    #[arg(long, default_value_t = measurelab_controller::DEFAULT_RESULTS_PAGE_MAX_BYTES, value_parser = clap::value_parser!(u64).range(1024..))]
    results_page_max_bytes: u64,
    /// Most bytes of nfdump output one GET /v1/platforms/{id}/flows page
    /// keeps; a page that reaches it ends early, and its next_cursor reads on.
    #[arg(long, default_value_t = measurelab_controller::DEFAULT_FLOWS_PAGE_MAX_BYTES, value_parser = clap::value_parser!(u64).range(1024..))]
    flows_page_max_bytes: u64,
    /// Most nfcapd files one GET /v1/platforms/{id}/flows page reads (one
    /// nfdump run each); a page that reaches it ends early, and its
    /// next_cursor reads on.
    #[arg(long, default_value_t = measurelab_controller::DEFAULT_FLOWS_PAGE_MAX_FILES, value_parser = clap::value_parser!(u32).range(1..))]
    flows_page_max_files: u32,
    /// VLAN tags the controller gives platforms, FIRST-LAST within 1-4094
    /// (default 100-3999). Leave out the tags a site's trunks already carry.
    #[arg(long, value_name = "FIRST-LAST", value_parser = vlan_pool)]
    vlan_pool: Option<std::ops::RangeInclusive<u16>>,
    /// Network the platforms' /24 subnets come from, ADDRESS/PREFIX with a
    /// prefix of 8 to 24 (default 10.201.0.0/16). Pick one no site routes.
    #[arg(long, value_name = "ADDRESS/PREFIX", value_parser = subnet_pool)]
    subnet_pool: Option<(std::net::Ipv4Addr, u8)>,
    /// Network the platform gateways' /24 tunnel networks come from (default
    /// 100.96.0.0/12); must not overlap --subnet-pool.
    #[arg(long, value_name = "ADDRESS/PREFIX", value_parser = tunnel_pool)]
    tunnel_pool: Option<(std::net::Ipv4Addr, u8)>,
}

fn advertise_url(text: &str) -> Result<String, String> {
    measurelab_controller::parse_advertise_url(text).map_err(|e| e.to_string())
}

fn vlan_pool(text: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    measurelab_controller::parse_vlan_pool(text).map_err(|e| e.to_string())
}

fn subnet_pool(text: &str) -> Result<(std::net::Ipv4Addr, u8), String> {
    measurelab_controller::parse_subnet_pool(text).map_err(|e| e.to_string())
}

fn tunnel_pool(text: &str) -> Result<(std::net::Ipv4Addr, u8), String> {
    measurelab_controller::parse_tunnel_pool(text).map_err(|e| e.to_string())
}

const DEFAULT_RATE: measurelab_controller::RateLimits = measurelab_controller::DEFAULT_RATE_LIMITS;

const DEFAULT_GRPC: measurelab_controller::GrpcLimits = measurelab_controller::DEFAULT_GRPC_LIMITS;

const DEFAULT_HTTP: measurelab_controller::HttpLimits = measurelab_controller::DEFAULT_HTTP_LIMITS;

/// Refuses to serve plaintext on `address` unless it is loopback: what
/// crosses the network there (bearer tokens, join tokens, node secrets)
/// would be readable on the way.
fn check_plaintext_listen(address: SocketAddr, flag: &str) -> anyhow::Result<()> {
    if address.ip().is_loopback() {
        return Ok(());
    }
    bail!(
        "{flag} {address}: plaintext on an address that is not loopback: tokens and node secrets \
         would cross the network unencrypted. Serve TLS (--tls), or give --insecure to accept that"
    )
}

pub fn main(args: ControllerArgs) -> anyhow::Result<()> {
    tracing_subscriber::registry()
        .with(crate::daemon::console_layer())
        .init();
    let join_token = args
        .join_token_file
        .as_ref()
        .map(|path| read_token_file(path, "--join-token-file"))
        .transpose()?;

    let tls = args.tls || !args.tls_sans.is_empty() || args.tls_cert.is_some();
    if !tls && !args.insecure {
        check_plaintext_listen(args.http_listen, "--http-listen")?;
        check_plaintext_listen(args.grpc_listen, "--grpc-listen")?;
    }
    let http_listener = TcpListener::bind(args.http_listen)
        .with_context(|| format!("--http-listen: cannot bind {}", args.http_listen))?;
    let grpc_listener = match &args.grpc_netns {
        Some(netns) => bind_in_netns(netns, args.grpc_listen)?,
        None => TcpListener::bind(args.grpc_listen)
            .with_context(|| format!("--grpc-listen: cannot bind {}", args.grpc_listen))?,
    };
    let http_addr = http_listener.local_addr()?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("--data-dir: cannot create {}", args.data_dir.display()))?;
    // Before http.addr is written: a second controller must not point
    // clients at itself while the first one owns the directory.
    let data_dir_lock =
        measurelab_controller::DataDirLock::acquire(&args.data_dir).context("--data-dir")?;
    write_atomically(&args.data_dir.join(HTTP_ADDR_FILE), &http_addr.to_string())?;

    let heartbeat_interval = Duration::from_secs(args.heartbeat_interval_seconds);
    let mut config = measurelab_controller::ControllerConfig::new(
        args.data_dir.clone(),
        http_listener,
        grpc_listener,
    );
    config.heartbeat_interval = heartbeat_interval;
    config.offline_after = args
        .offline_after_seconds
        .map(Duration::from_secs)
        .unwrap_or(heartbeat_interval * 3);
    config.join_token = join_token;
    config.data_dir_lock = Some(data_dir_lock);
    config.store_url = store_url(&args.store)?;
    config.appliance_dir = args.appliance_dir;
    config.flow_dir = args.flow_dir;
    config.advertise_url = args.advertise_url.clone();
    const DAY: Duration = Duration::from_secs(86_400);
    config.retention = measurelab_controller::Retention {
        events: DAY * args.retain_events_days as u32,
        node_logs: DAY * args.retain_logs_days as u32,
        results: DAY * args.retain_results_days as u32,
        idempotency: Duration::from_secs(3600 * args.retain_idempotency_hours),
        vm_usage: Duration::from_secs(3600 * args.usage_retention_hours),
    };
    config.flow_retention = Duration::from_secs(3600 * args.flow_retention_hours);
    config.http_limits = measurelab_controller::HttpLimits {
        // Clap's range keeps both within usize on every target we build for.
        max_connections: usize::try_from(args.http_max_connections)
            .context("--http-max-connections")?,
        max_connections_per_source: usize::try_from(args.http_max_connections_per_source)
            .context("--http-max-connections-per-source")?,
        header_read_timeout: Duration::from_secs(args.http_header_read_timeout_seconds),
        idle_timeout: Duration::from_secs(args.http_idle_timeout_seconds),
        request_timeout: Duration::from_secs(args.http_request_timeout_seconds),
    };
    let size = |value: u64, flag: &'static str| usize::try_from(value).context(flag);
    config.grpc_limits = measurelab_controller::GrpcLimits {
        max_connections: size(args.grpc_max_connections, "--grpc-max-connections")?,
        max_connections_per_source: size(
            args.grpc_max_connections_per_source,
            "--grpc-max-connections-per-source",
        )?,
        handshake_timeout: Duration::from_secs(args.grpc_handshake_timeout_seconds),
        request_timeout: Duration::from_secs(args.grpc_request_timeout_seconds),
        keepalive_interval: Duration::from_secs(args.grpc_keepalive_interval_seconds),
        keepalive_timeout: Duration::from_secs(args.grpc_keepalive_timeout_seconds),
        max_concurrent_streams: args.grpc_max_concurrent_streams,
        concurrency_per_connection: size(
            args.grpc_concurrency_per_connection,
            "--grpc-concurrency-per-connection",
        )?,
        max_request_message_bytes: size(
            args.grpc_max_request_message_bytes,
            "--grpc-max-request-message-bytes",
        )?,
        max_response_message_bytes: size(
            args.grpc_max_response_message_bytes,
            "--grpc-max-response-message-bytes",
        )?,
    };
    let bucket = |per_second, burst| {
        (per_second > 0).then_some(measurelab_controller::TokenBucket { per_second, burst })
    };
    config.rate_limits = measurelab_controller::RateLimits {
        per_token: bucket(args.rate_limit_per_token, args.rate_limit_per_token_burst),
        per_source: bucket(args.rate_limit_per_source, args.rate_limit_per_source_burst),
    };
    config.export_max_bytes = args.export_max_bytes;
    config.max_concurrent_uploads = size(args.max_concurrent_uploads, "--max-concurrent-uploads")?;
    config.results_page_max_bytes = args.results_page_max_bytes;
    config.flows_page_max_bytes = args.flows_page_max_bytes;
    config.flows_page_max_files = args.flows_page_max_files;
    if let Some(pool) = args.vlan_pool.clone() {
        config.vlan_pool = pool;
    }
    if let Some(pool) = args.subnet_pool {
        config.subnet_pool = pool;
    }
    if let Some(pool) = args.tunnel_pool {
        config.tunnel_pool = pool;
    }
    if tls {
        let mut tls = measurelab_controller::TlsConfig::generated(args.tls_sans.clone());
        tls.cert_files = args.tls_cert.clone().zip(args.tls_key.clone());
        tls.node_cert_lifetime = match args.node_cert_seconds {
            Some(seconds) => Duration::from_secs(seconds),
            None => DAY * args.node_cert_days as u32,
        };
        config.tls = Some(tls);
    }
    config.flow_collector = args.flow_collector.map(|listen| {
        let mut collector = measurelab_controller::FlowCollectorConfig::new(listen);
        collector.netns = args.grpc_netns.clone();
        collector.rotate_seconds = args.flow_rotate_seconds;
        collector
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(measurelab_controller::run(
        config,
        crate::daemon::shutdown_signal(),
    ))?;
    Ok(())
}

#[derive(Debug, Args)]
pub struct JoinBundleArgs {
    /// The controller's data directory (reads ca.pem and join.token).
    #[arg(long)]
    data_dir: PathBuf,
    /// gRPC endpoint agents reach the controller at, https://HOST:PORT
    /// (HOST must be in the server certificate: a bind IP or a --tls-san).
    /// Several controllers: separate them with commas or repeat the flag;
    /// agents use the first and go on to the next when it stops answering.
    #[arg(long, required = true)]
    endpoint: Vec<String>,
    /// A join token instead of DATA_DIR/join.token, e.g. a per-node token
    /// from `measurelab join-token create`.
    #[arg(long)]
    join_token_file: Option<PathBuf>,
    /// The CA to pin instead of DATA_DIR/ca.pem: the one that issued an
    /// operator's --tls-cert (it must be in the chain the controller serves).
    #[arg(long)]
    ca_cert: Option<PathBuf>,
}

/// `measurelab join-bundle`: one string for `measurelab agent --join-bundle`.
pub fn join_bundle_main(args: JoinBundleArgs) -> anyhow::Result<()> {
    let ca_path = args
        .ca_cert
        .clone()
        .unwrap_or_else(|| args.data_dir.join(measurelab_controller::tls::CA_CERT_FILE));
    let ca_pem = std::fs::read_to_string(&ca_path).with_context(|| {
        format!(
            "cannot read the CA {} (does the controller run with --tls?)",
            ca_path.display()
        )
    })?;
    let ca_der =
        measurelab_controller::tls::first_cert_der(&ca_pem, &ca_path.display().to_string())?;
    let join_token = match &args.join_token_file {
        Some(path) => read_token_file(path, "--join-token-file")?,
        None => read_token_file(&args.data_dir.join("join.token"), "--data-dir")?,
    };
    let bundle = measurelab_api::join_bundle::JoinBundle::new(
        &args.endpoint.join(","),
        measurelab_controller::tls::fingerprint(&ca_der),
        join_token,
    )
    .context("--endpoint")?;
    println!("{}", bundle.encode());
    Ok(())
}

/// Bind `addr` inside network namespace `netns` (on a thread of its own):
/// only the gRPC socket lives in the lab's management network, the process
/// itself stays where it was started.
fn bind_in_netns(netns: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let bound =
        measurelab_hostnet::in_netns(netns, || TcpListener::bind(addr)).context("--grpc-netns")?;
    bound.with_context(|| format!("--grpc-listen: cannot bind {addr} in namespace {netns}"))
}

pub(crate) fn read_token_file(path: &std::path::Path, flag: &str) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("{flag}: cannot read {}", path.display()))?;
    let token = token.trim().to_string();
    if token.is_empty() {
        bail!("{flag}: {} is empty", path.display());
    }
    Ok(token)
}

pub(crate) fn write_atomically(path: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// `--store`: `None` for the embedded SQLite, the URL for PostgreSQL. The
/// URL itself is checked when the controller connects, with an error that
/// never repeats a password.
fn store_url(store: &str) -> anyhow::Result<Option<String>> {
    match store {
        "sqlite" => Ok(None),
        url if measurelab_controller::is_postgres_url(url) => Ok(Some(url.to_string())),
        _ => bail!("--store: expected `sqlite` or a postgres:// URL"),
    }
}
