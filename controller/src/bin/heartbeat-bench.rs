//! Heartbeat throughput/latency benchmark of the controller.
//!
//! `heartbeat-bench run` starts the controller as a child process (this same
//! binary in `serve` mode), so the controller's own CPU time and peak RSS can
//! be read from `/proc/<pid>/stat` and `/proc/<pid>/status` (VmHWM) without
//! counting the load generator. It registers N simulated nodes, then sends
//! each node's heartbeat every 10 s (N/10 heartbeats/s, spread evenly) over a
//! pool of HTTP/2 channels for a fixed duration, for every combination of
//! node count, store mode and transport, and prints the figures.
//!
//! With `--transport mtls` the controller serves gRPC over TLS with its own
//! CA, every simulated node registers with a CSR of its own key and gets its
//! node certificate, as an agent does, and heartbeats go over connections
//! that present node certificates, which the controller checks against the
//! node each heartbeat names. Node count up to `--max-connections`: one
//! connection per node with its own certificate (the production shape).
//! Beyond that one process cannot hold a connection per node (the fd limit),
//! so `--max-connections` connections each present a certificate naming the
//! few nodes whose heartbeats it carries (see controller/BENCHMARKS.md).
//! Plaintext runs use the same connection layout, so the ratio is TLS alone.
//!
//! With `--replicas N` the postgres mode starts N controllers on the one
//! `--postgres` database (each its own data dir, one join token and, over
//! TLS, one CA); simulated node i heartbeats to replica i % N. CPU is the
//! sum of the replicas' and the database server's, RSS the largest
//! replica's and the sum.
//!
//! ```text
//! cargo run --release -p measurelab-controller --bin heartbeat-bench -- run \
//!     --nodes 10000,50000 --duration-seconds 30 --transport plaintext,mtls
//! ```

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use measurelab_api::node_v1::node_service_client::NodeServiceClient;
use measurelab_api::node_v1::{Capabilities, HeartbeatRequest, RegisterRequest, ResourceUsage};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

#[derive(Parser)]
#[command(about = "Measure controller heartbeat throughput, latency, CPU and memory")]
struct Cli {
    #[command(subcommand)]
    command: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Run the benchmark matrix (spawns `serve` children).
    Run {
        /// Node counts to simulate, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "10000,50000")]
        nodes: Vec<usize>,
        /// Length of the heartbeat phase of each run.
        #[arg(long, default_value_t = 30)]
        duration_seconds: u64,
        /// Heartbeat interval of every simulated node (rate = nodes / interval).
        #[arg(long, default_value_t = 10)]
        interval_seconds: u64,
        /// The controllers' offline deadline (default three intervals, as
        /// in production). Nodes beat only once all are registered, so a
        /// registration phase longer than this sends the first nodes
        /// offline before their first heartbeat, which then writes their
        /// comeback too.
        #[arg(long)]
        offline_after_seconds: Option<u64>,
        /// HTTP/2 connections the registrations share.
        #[arg(long, default_value_t = 16)]
        channels: usize,
        /// Heartbeat connections: one per node up to this many nodes, else
        /// this many shared ones. Each costs a file descriptor in both
        /// processes, and the controller accepts at most 16,384.
        #[arg(long, default_value_t = 16_000)]
        max_connections: usize,
        /// Store modes to run: durable (SQLite), memory, postgres (durable,
        /// the tables in the --postgres database).
        #[arg(long, value_delimiter = ',', default_value = "durable,memory")]
        modes: Vec<String>,
        /// An empty PostgreSQL database the postgres mode may wipe
        /// (`DROP SCHEMA public CASCADE`) before each run.
        #[arg(
            long,
            value_name = "URL",
            env = "MEASURELAB_BENCH_POSTGRES",
            hide_env_values = true
        )]
        postgres: Option<String>,
        /// Controller replicas on the --postgres database, comma separated
        /// (1 to 8 each); the postgres mode runs once per count, the other
        /// modes, one controller's own store, once.
        #[arg(long, value_delimiter = ',', default_value = "1")]
        replicas: Vec<usize>,
        /// Transports to run: plaintext, mtls.
        #[arg(long, value_delimiter = ',', default_value = "plaintext")]
        transport: Vec<String>,
        /// Parent directory for the runs' data dirs (default: a temp dir).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Run each controller under heaptrack, writing
        /// DIR/<nodes>-<mode>-<transport>.zst: where the controller's heap
        /// goes (`heaptrack_print --print-peaks`). Slows the controller, so
        /// latency and CPU of such runs are not comparable.
        #[arg(long, value_name = "DIR")]
        heaptrack_dir: Option<PathBuf>,
    },
    /// Child mode: run a controller, print `READY <http> <grpc>`, stop when
    /// stdin closes.
    Serve {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        join_token: String,
        #[arg(long)]
        in_memory: bool,
        #[arg(long, default_value_t = 10)]
        interval_seconds: u64,
        #[arg(long)]
        offline_after_seconds: Option<u64>,
        /// Serve gRPC over TLS with a CA in the data dir; node certificates
        /// are required on every call but Register.
        #[arg(long)]
        tls: bool,
        /// The tables in this PostgreSQL database (`--store`).
        #[arg(long)]
        store: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Mode::Serve {
            data_dir,
            join_token,
            in_memory,
            interval_seconds,
            offline_after_seconds,
            tls,
            store,
        } => serve(
            data_dir,
            join_token,
            in_memory,
            (interval_seconds, offline_after_seconds),
            tls,
            store,
        ),
        Mode::Run {
            nodes,
            duration_seconds,
            interval_seconds,
            offline_after_seconds,
            channels,
            max_connections,
            modes,
            postgres,
            replicas,
            transport,
            work_dir,
            heaptrack_dir,
        } => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(run_matrix(Matrix {
                node_counts: nodes,
                duration: Duration::from_secs(duration_seconds),
                interval: Duration::from_secs(interval_seconds),
                offline_after: Duration::from_secs(
                    offline_after_seconds.unwrap_or(3 * interval_seconds),
                ),
                channels,
                max_connections,
                modes,
                postgres,
                replicas,
                transports: transport,
                work_dir,
                heaptrack_dir,
            }))
        }
    }
}

fn serve(
    data_dir: PathBuf,
    join_token: String,
    in_memory: bool,
    (interval_seconds, offline_after_seconds): (u64, Option<u64>),
    tls: bool,
    store: Option<String>,
) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let http = std::net::TcpListener::bind("127.0.0.1:0")?;
    let grpc = std::net::TcpListener::bind("127.0.0.1:0")?;
    let ready = format!("READY {} {}", http.local_addr()?, grpc.local_addr()?);
    let mut config = measurelab_controller::ControllerConfig::new(data_dir, http, grpc);
    config.heartbeat_interval = Duration::from_secs(interval_seconds);
    config.offline_after =
        offline_after_seconds.map_or(config.heartbeat_interval * 3, Duration::from_secs);
    config.join_token = Some(join_token);
    config.durable_heartbeats = !in_memory;
    config.store_url = store;
    // Every simulated node connects from 127.0.0.1; the per-source cap is
    // for nodes behind one NAT address and would refuse all but 1,024.
    config.grpc_limits.max_connections_per_source = config.grpc_limits.max_connections;
    if tls {
        // Made here, before READY, so the parent can read it; the
        // controller loads the same files.
        measurelab_controller::tls::Ca::load_or_create(&config.data_dir)?;
        // Valid for the bind address 127.0.0.1, which the bench dials.
        config.tls = Some(measurelab_controller::TlsConfig::generated(Vec::new()));
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // The parent closes our stdin to stop us (also when it dies).
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
            let _ = stop.send(());
        });
        let controller = tokio::spawn(measurelab_controller::run(config, async move {
            let _ = stopped.await;
        }));
        println!("{ready}");
        std::io::stdout().flush()?;
        controller.await??;
        anyhow::Ok(())
    })
}

/// The controller process that heaptrack's script (`script`) runs: its
/// child running this binary (the other child is heaptrack's interpreter).
fn controller_under(script: u32) -> anyhow::Result<u32> {
    let exe = std::env::current_exe()?;
    let children = std::fs::read_to_string(format!("/proc/{script}/task/{script}/children"))?;
    children
        .split_whitespace()
        .filter_map(|pid| pid.parse::<u32>().ok())
        .find(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).ok().as_ref() == Some(&exe))
        .context("no controller process under heaptrack")
}

/// CPU seconds (user + system) of a process.
fn cpu_seconds(pid: u32, ticks_per_second: f64) -> anyhow::Result<f64> {
    cpu_seconds_of(&format!("/proc/{pid}/stat"), ticks_per_second)
}

fn cpu_seconds_of(stat_path: &str, ticks_per_second: f64) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(stat_path)?;
    // Fields after the parenthesised command name; utime and stime are
    // fields 14 and 15 of the whole line, i.e. 12 and 13 after it.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/pid/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11).context("no utime")?.parse()?;
    let stime: f64 = fields.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) / ticks_per_second)
}

/// CPU seconds of the process's threads named `name` (e.g. the store writer,
/// which is the one serial stage of the heartbeat path).
fn thread_cpu_seconds(pid: u32, name: &str, ticks_per_second: f64) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?.path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if comm.trim() == name {
            let tid: u32 = task
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse().ok())
                .context("task id")?;
            total += cpu_seconds_of(&format!("/proc/{pid}/task/{tid}/stat"), ticks_per_second)?;
        }
    }
    Ok(total)
}

/// Peak resident set size (VmHWM) in bytes.
fn peak_rss_bytes(pid: u32) -> anyhow::Result<u64> {
    status_bytes(pid, "VmHWM")
}

/// Resident set size now (VmRSS) in bytes.
fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    status_bytes(pid, "VmRSS")
}

/// A `/proc/<pid>/status` field given in kB, in bytes.
fn status_bytes(pid: u32, field: &str) -> anyhow::Result<u64> {
    status_field_bytes(
        &std::fs::read_to_string(format!("/proc/{pid}/status"))?,
        field,
    )
}

fn status_field_bytes(status: &str, field: &str) -> anyhow::Result<u64> {
    let line = status
        .lines()
        .find(|l| l.split(':').next() == Some(field))
        .with_context(|| format!("no {field} in /proc/pid/status"))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("malformed {field}"))?
        .parse()?;
    Ok(kib * 1024)
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

struct ChildController {
    child: Child,
    /// The controller's process: the child, or heaptrack's child.
    pid: u32,
    data_dir: PathBuf,
    grpc: String,
    /// The controller's CA (PEM) when it serves TLS.
    ca_pem: Option<String>,
}

/// What every controller of a run is started with.
#[derive(Clone, Copy)]
struct ServeOptions<'a> {
    join_token: &'a str,
    in_memory: bool,
    interval: Duration,
    offline_after: Duration,
    tls: bool,
    store: Option<&'a str>,
}

impl ChildController {
    fn spawn(
        data_dir: &std::path::Path,
        options: &ServeOptions<'_>,
        heaptrack: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let ServeOptions {
            join_token,
            in_memory,
            interval,
            offline_after,
            tls,
            store,
        } = *options;
        // Under heaptrack the child is heaptrack's script, which runs the
        // controller as its own child with the allocation tracker preloaded.
        let mut command = match heaptrack {
            Some(output) => {
                let mut command = Command::new("heaptrack");
                command.arg("-o").arg(output).arg(std::env::current_exe()?);
                command
            }
            None => Command::new(std::env::current_exe()?),
        };
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--join-token")
            .arg(join_token)
            .arg("--interval-seconds")
            .arg(interval.as_secs().to_string())
            .arg("--offline-after-seconds")
            .arg(offline_after.as_secs().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if in_memory {
            command.arg("--in-memory");
        }
        if tls {
            command.arg("--tls");
        }
        if let Some(url) = store {
            command.arg("--store").arg(url);
        }
        let mut child = command.spawn().context("spawning the controller child")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        // heaptrack prints its own lines first.
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 || line.starts_with("READY") {
                break;
            }
        }
        // Drain whatever else is printed (heaptrack's summary at exit) so
        // the child never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.len() != 3 || parts[0] != "READY" {
            bail!("controller child did not start: {line:?}");
        }
        // `serve` writes the CA before it prints READY.
        let ca_pem = if tls {
            let path = data_dir.join(measurelab_controller::tls::CA_CERT_FILE);
            Some(
                std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?,
            )
        } else {
            None
        };
        let scheme = if tls { "https" } else { "http" };
        let pid = match heaptrack {
            Some(_) => controller_under(child.id())?,
            None => child.id(),
        };
        Ok(ChildController {
            child,
            pid,
            data_dir: data_dir.to_path_buf(),
            grpc: format!("{scheme}://{}", parts[2]),
            ca_pem,
        })
    }

    fn stop(mut self) -> anyhow::Result<()> {
        drop(self.child.stdin.take());
        let status = self.child.wait()?;
        if !status.success() {
            bail!("controller child exited with {status}");
        }
        Ok(())
    }
}

/// The controllers of one run: one, or `--replicas` of them on one
/// PostgreSQL database. Every figure of a run is read through this, so one
/// controller is just the case N = 1.
struct Controllers(Vec<ChildController>);

impl Controllers {
    /// Starts `replicas` controllers one after the other (the first
    /// migrates the schema and takes the leader lock before the others
    /// exist), in `data_dir` for one, else in `data_dir/replica-K`. Over
    /// TLS the others get copies of the first one's CA before they start,
    /// so a node certificate any of them issues is taken by all.
    fn spawn(
        data_dir: &std::path::Path,
        replicas: usize,
        options: &ServeOptions<'_>,
        heaptrack: Option<&std::path::Path>,
    ) -> anyhow::Result<Controllers> {
        let mut children: Vec<ChildController> = Vec::with_capacity(replicas);
        for k in 0..replicas {
            let (dir, heaptrack) = if replicas == 1 {
                (data_dir.to_path_buf(), heaptrack.map(|h| h.to_path_buf()))
            } else {
                let suffixed = |h: &std::path::Path| {
                    let mut name = h.as_os_str().to_owned();
                    name.push(format!("-replica-{k}"));
                    PathBuf::from(name)
                };
                (
                    data_dir.join(format!("replica-{k}")),
                    heaptrack.map(suffixed),
                )
            };
            std::fs::create_dir_all(&dir)?;
            if let (true, Some(first)) = (options.tls, children.first()) {
                for file in [
                    measurelab_controller::tls::CA_CERT_FILE,
                    measurelab_controller::tls::CA_KEY_FILE,
                ] {
                    std::fs::copy(first.data_dir.join(file), dir.join(file))
                        .with_context(|| format!("copying the CA's {file} to replica {k}"))?;
                }
            }
            // A failure drops the children started so far, which closes
            // their stdin: they stop.
            children.push(ChildController::spawn(&dir, options, heaptrack.as_deref())?);
        }
        Ok(Controllers(children))
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    /// The replica that serves connection (or node) `index`.
    fn for_index(&self, index: usize) -> &ChildController {
        &self.0[index % self.0.len()]
    }

    /// The first controller: the leader, and the holder of the CA files
    /// the bench signs shared-connection certificates with.
    fn first(&self) -> &ChildController {
        &self.0[0]
    }

    /// CPU seconds of each replica, in start order (the first leads).
    fn cpu_seconds(&self, ticks: f64) -> anyhow::Result<Vec<f64>> {
        self.0.iter().map(|c| cpu_seconds(c.pid, ticks)).collect()
    }

    fn writer_cpu_seconds(&self, ticks: f64) -> anyhow::Result<f64> {
        self.0.iter().try_fold(0.0, |total, c| {
            Ok(total + thread_cpu_seconds(c.pid, "store-writer", ticks)?)
        })
    }

    /// RSS now, all replicas together.
    fn rss_bytes(&self) -> anyhow::Result<u64> {
        self.0
            .iter()
            .try_fold(0, |total, c| Ok(total + rss_bytes(c.pid)?))
    }

    /// Peak RSS (VmHWM): the largest replica's and the sum of all.
    fn peak_rss_bytes(&self) -> anyhow::Result<(u64, u64)> {
        self.0.iter().try_fold((0, 0), |(largest, sum), c| {
            let peak = peak_rss_bytes(c.pid)?;
            Ok((largest.max(peak), sum + peak))
        })
    }

    /// Stops every replica; the first failure is the error.
    fn stop(self) -> anyhow::Result<()> {
        let mut result = Ok(());
        for child in self.0 {
            let stopped = child.stop();
            if result.is_ok() {
                result = stopped;
            }
        }
        result
    }
}

struct RunResult {
    nodes: usize,
    mode: String,
    transport: Transport,
    connections: usize,
    target_rate: f64,
    sent: u64,
    errors: u64,
    achieved_rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// The controllers' CPU (all replicas).
    cpu_seconds: f64,
    cpu_percent: f64,
    /// Peak RSS of the largest replica, and of all together.
    peak_rss: u64,
    peak_rss_sum: u64,
    /// RSS after registration, before the heartbeat connections open.
    rss_before_connections: u64,
    /// RSS once the heartbeat connections are open, before any heartbeat.
    rss_connected: u64,
    /// RSS at the end of the heartbeat phase, connections still open.
    rss_after_heartbeats: u64,
    register_seconds: f64,
    wal_bytes: u64,
    oversleep_p99_ms: f64,
    writer_cpu_seconds: f64,
    /// CPU of the PostgreSQL server processes serving the controller during
    /// the phase (0 on SQLite, which runs inside the controller).
    database_cpu_seconds: f64,
    /// CPU of this process (the load generator) during the phase: when it
    /// nears the machine's spare capacity, latency is the generator's.
    generator_cpu_percent: f64,
    /// The machine's 1-minute load average when the run's controllers
    /// started and when they stopped (the machine is shared).
    load_before: f64,
    load_after: f64,
}

/// The 1-minute load average.
fn load_average() -> anyhow::Result<f64> {
    let loadavg = std::fs::read_to_string("/proc/loadavg")?;
    Ok(loadavg
        .split_whitespace()
        .next()
        .context("empty /proc/loadavg")?
        .parse()?)
}

/// Measures how late a 1 ms sleep wakes up, as a gauge of CPU contention on
/// this (shared) machine: latency figures above this floor are the
/// controller's, below it they are the machine's.
struct NoiseProbe {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<u64>>,
}

impl NoiseProbe {
    fn start() -> NoiseProbe {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut late = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let before = Instant::now();
                std::thread::sleep(Duration::from_millis(1));
                let overshoot = before.elapsed().saturating_sub(Duration::from_millis(1));
                late.push(overshoot.as_micros() as u64);
            }
            late
        });
        NoiseProbe { stop, thread }
    }

    /// p99 of the oversleep in ms.
    fn finish(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        let mut late = self.thread.join().unwrap_or_default();
        late.sort_unstable();
        percentile(&late, 0.99)
    }
}

fn capabilities() -> Capabilities {
    Capabilities {
        libvirt_uris: vec!["test:///default".into(), "qemu:///system".into()],
        namespace_backend: true,
        ovs_datapath_types: vec!["netdev".into(), "system".into()],
        qos_features: vec!["linux-htb".into()],
        service_tools: vec!["mcast".into()],
        service_endpoint: "10.253.0.11:7090".into(),
        flow_export: String::new(),
        uplink: None,
        datapath: "netdev".into(),
        tunnel_address: String::new(),
        public_address: String::new(),
        control_protocol_version: Some(2),
    }
}

fn usage(i: usize) -> ResourceUsage {
    ResourceUsage {
        cpu_count: 8,
        cpu_used_percent: (i % 100) as f64,
        memory_total_bytes: 16 << 30,
        memory_used_bytes: (i as u64 % 16) << 30,
        disk_total_bytes: 100 << 30,
        disk_used_bytes: 10 << 30,
        network_rx_bytes: i as u64 * 1000,
        network_tx_bytes: i as u64 * 2000,
    }
}

/// How the simulated nodes reach the controller.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Plaintext,
    Mtls,
}

impl Transport {
    fn parse(name: &str) -> anyhow::Result<Transport> {
        match name {
            "plaintext" => Ok(Transport::Plaintext),
            "mtls" => Ok(Transport::Mtls),
            other => bail!("--transport: unknown transport {other:?}; use plaintext or mtls"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Transport::Plaintext => "plaintext",
            Transport::Mtls => "mtls",
        }
    }
}

/// A registered simulated node: its credentials and, over mTLS, the
/// certificate the controller issued for its CSR.
struct SimNode {
    node_id: String,
    node_secret: String,
    cert: Option<(String, String)>,
}

/// A fresh ECDSA P-256 key and a CSR for it (PEM both), as an agent makes
/// them before it registers.
fn key_and_csr(name: &str) -> anyhow::Result<(String, String)> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let csr = params.serialize_request(&key)?.pem()?;
    Ok((key.serialize_pem(), csr))
}

/// Connects to the controller; over TLS trusting only its CA and, when
/// given, presenting `identity` (certificate, key).
async fn connect(
    controller: &ChildController,
    identity: Option<(&str, &str)>,
) -> anyhow::Result<NodeServiceClient<Channel>> {
    let mut endpoint = Endpoint::from_shared(controller.grpc.clone())?
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30));
    if let Some(ca_pem) = &controller.ca_pem {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    Ok(NodeServiceClient::new(endpoint.connect().await?))
}

/// The registration channels, spread over the replicas (channel c to
/// replica c % N): a node may register through any of them.
async fn connect_pool(
    controllers: &Controllers,
    channels: usize,
) -> anyhow::Result<Vec<NodeServiceClient<Channel>>> {
    let mut pool = Vec::with_capacity(channels);
    for channel in 0..channels {
        pool.push(connect(controllers.for_index(channel), None).await?);
    }
    Ok(pool)
}

async fn register_all(
    pool: &[NodeServiceClient<Channel>],
    join_token: &str,
    nodes: usize,
    transport: Transport,
) -> anyhow::Result<Vec<SimNode>> {
    use futures::StreamExt;
    let results: Vec<anyhow::Result<SimNode>> = futures::stream::iter(0..nodes)
        .map(|i| {
            let mut client = pool[i % pool.len()].clone();
            let name = format!("bench-{i:06}");
            async move {
                let key_and_csr = match transport {
                    Transport::Mtls => Some(key_and_csr(&name)?),
                    Transport::Plaintext => None,
                };
                let request = RegisterRequest {
                    join_token: join_token.to_string(),
                    name,
                    agent_version: env!("CARGO_PKG_VERSION").into(),
                    capabilities: Some(capabilities()),
                    usage: Some(usage(i)),
                    management_address: format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
                    csr_pem: key_and_csr
                        .as_ref()
                        .map(|(_, csr)| csr.clone())
                        .unwrap_or_default(),
                    ..Default::default()
                };
                let response = client.register(request).await?.into_inner();
                let cert = match key_and_csr {
                    Some(_) if response.node_cert_pem.is_empty() => {
                        bail!("the controller issued no node certificate for a CSR")
                    }
                    Some((key, _)) => Some((response.node_cert_pem, key)),
                    None => None,
                };
                Ok(SimNode {
                    node_id: response.node_id,
                    node_secret: response.node_secret,
                    cert,
                })
            }
        })
        .buffered(256)
        .collect()
        .await;
    results.into_iter().collect()
}

/// How many heartbeat connections: one per node up to `max_connections`,
/// else `max_connections` rounded down to a multiple of the replicas, so
/// that connection `i % count` of node i is on replica i % N too.
fn heartbeat_connections(
    nodes: usize,
    max_connections: usize,
    replicas: usize,
) -> anyhow::Result<usize> {
    if nodes <= max_connections {
        return Ok(nodes);
    }
    let count = max_connections - max_connections % replicas;
    if count == 0 {
        bail!("--max-connections {max_connections} is fewer than --replicas {replicas}");
    }
    Ok(count)
}

/// The heartbeat connections: node i's heartbeats go over connection
/// `i % len`, which is on replica i % N. With as many connections as
/// nodes, each presents its node's own certificate. With fewer, connection
/// s presents a certificate the bench signs with the controllers' CA key
/// (it owns the data dirs) naming exactly the nodes s, s+len, s+2·len, …:
/// still one identity per connection, checked against each heartbeat's
/// node as always.
async fn heartbeat_pool(
    controllers: &Controllers,
    nodes: &[SimNode],
    max_connections: usize,
) -> anyhow::Result<Vec<NodeServiceClient<Channel>>> {
    use futures::StreamExt;
    let count = heartbeat_connections(nodes.len(), max_connections, controllers.len())?;
    let ca = match controllers.first().ca_pem {
        Some(_) if count < nodes.len() => Some(measurelab_controller::tls::Ca::load_or_create(
            &controllers.first().data_dir,
        )?),
        _ => None,
    };
    let mut identities = Vec::with_capacity(count);
    for slot in 0..count {
        let identity = match (&ca, &nodes[slot].cert) {
            (_, None) => None,
            (None, Some(cert)) => Some(cert.clone()),
            (Some(ca), Some(_)) => {
                let name = format!("bench-connection-{slot}");
                let (key, csr) = key_and_csr(&name)?;
                let ids: Vec<&str> = nodes[slot..]
                    .iter()
                    .step_by(count)
                    .map(|n| n.node_id.as_str())
                    .collect();
                let cert = ca
                    .sign_nodes(
                        &ca.check_csr(&csr)?,
                        &ids,
                        &name,
                        Duration::from_secs(86_400),
                    )?
                    .pem;
                Some((cert, key))
            }
        };
        identities.push(identity);
    }
    let connected: Vec<anyhow::Result<NodeServiceClient<Channel>>> =
        futures::stream::iter(identities.into_iter().enumerate())
            .map(|(slot, identity)| async move {
                connect(
                    controllers.for_index(slot),
                    identity.as_ref().map(|(c, k)| (c.as_str(), k.as_str())),
                )
                .await
            })
            .buffered(64)
            .collect()
            .await;
    connected.into_iter().collect()
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index] as f64 / 1000.0
}

/// The benchmark matrix and what every run shares.
struct Matrix {
    node_counts: Vec<usize>,
    duration: Duration,
    interval: Duration,
    offline_after: Duration,
    channels: usize,
    max_connections: usize,
    modes: Vec<String>,
    postgres: Option<String>,
    replicas: Vec<usize>,
    transports: Vec<String>,
    work_dir: Option<PathBuf>,
    heaptrack_dir: Option<PathBuf>,
}

async fn run_one(
    matrix: &Matrix,
    nodes: usize,
    mode: &str,
    replicas: usize,
    transport: Transport,
    work_dir: &std::path::Path,
    ticks: f64,
) -> anyhow::Result<RunResult> {
    let (duration, interval) = (matrix.duration, matrix.interval);
    let (in_memory, store) = match mode {
        "durable" => (false, None),
        "memory" => (true, None),
        "postgres" => {
            let url = matrix
                .postgres
                .clone()
                .context("--modes postgres needs --postgres URL")?;
            // The controller migrates an empty schema at start.
            let wipe = url.clone();
            tokio::task::spawn_blocking(move || bench_database(&wipe)?.wipe()).await??;
            (false, Some(url))
        }
        other => bail!("--modes: unknown mode {other:?}; use durable, memory or postgres"),
    };
    let label = mode_label(mode, replicas);
    let run_name = format!("{nodes}-{}-{}", label.replace(' ', "-"), transport.name());
    let data_dir = work_dir.join(&run_name);
    let heaptrack = matrix.heaptrack_dir.as_ref().map(|dir| dir.join(&run_name));
    std::fs::create_dir_all(&data_dir)?;
    // One token for all replicas: a node may register through any.
    let join_token = "bench-join-token";
    let load_before = load_average()?;
    let controllers = Controllers::spawn(
        &data_dir,
        replicas,
        &ServeOptions {
            join_token,
            in_memory,
            interval,
            offline_after: matrix.offline_after,
            tls: transport == Transport::Mtls,
            store: store.as_deref(),
        },
        heaptrack.as_deref(),
    )?;
    let registration = connect_pool(&controllers, matrix.channels).await?;

    let started = Instant::now();
    let registered = register_all(&registration, join_token, nodes, transport).await?;
    let register_seconds = started.elapsed().as_secs_f64();
    drop(registration);
    eprintln!("  registered {nodes} nodes in {register_seconds:.1} s");
    let rss_before_connections = controllers.rss_bytes()?;
    let connecting = Instant::now();
    let pool = heartbeat_pool(&controllers, &registered, matrix.max_connections).await?;
    let rss_connected = controllers.rss_bytes()?;
    eprintln!(
        "  opened {} heartbeat connections in {:.1} s; controller RSS {:.0} -> {:.0} MiB",
        pool.len(),
        connecting.elapsed().as_secs_f64(),
        rss_before_connections as f64 / (1 << 20) as f64,
        rss_connected as f64 / (1 << 20) as f64,
    );
    let credentials: Arc<Vec<(String, String)>> = Arc::new(
        registered
            .into_iter()
            .map(|n| (n.node_id, n.node_secret))
            .collect(),
    );
    let rate = nodes as f64 / interval.as_secs_f64();
    let cpu_before = controllers.cpu_seconds(ticks)?;
    let generator_before = cpu_seconds(std::process::id(), ticks)?;
    let writer_cpu_before = controllers.writer_cpu_seconds(ticks)?;
    let database_cpu = DatabaseCpu::start(store.as_deref(), ticks).await?;
    let probe = NoiseProbe::start();
    // (send time since phase start in ms, ack latency in µs)
    let latencies = Arc::new(Mutex::new(Vec::<(u64, u64)>::with_capacity(
        (rate * duration.as_secs_f64() * 1.1) as usize,
    )));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let phase_start = Instant::now();
    let mut sent: u64 = 0;
    let mut ticker = tokio::time::interval(Duration::from_millis(2));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    // Node i beats at i/rate + k*interval: every node once per interval,
    // spread evenly, like N agents with random phases.
    while phase_start.elapsed() < duration {
        ticker.tick().await;
        let due = (phase_start.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            let index = (sent as usize) % nodes;
            let sequence = sent / nodes as u64 + 1;
            let (node_id, node_secret) = credentials[index].clone();
            let mut client = pool[index % pool.len()].clone();
            let latencies = latencies.clone();
            let errors = errors.clone();
            tasks.spawn(async move {
                let request = HeartbeatRequest {
                    node_id,
                    node_secret,
                    sequence,
                    agent_version: env!("CARGO_PKG_VERSION").into(),
                    capabilities: Some(capabilities()),
                    usage: Some(usage(index)),
                    observed_generation: 0,
                };
                let sent_at = Instant::now();
                let offset_ms = sent_at.duration_since(phase_start).as_millis() as u64;
                match client.heartbeat(request).await {
                    Ok(_) => {
                        let micros = sent_at.elapsed().as_micros() as u64;
                        latencies
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((offset_ms, micros));
                    }
                    Err(status) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("  heartbeat failed: {status}");
                        }
                    }
                }
            });
            sent += 1;
        }
        // Reap finished tasks so the set does not grow for the whole run.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = phase_start.elapsed().as_secs_f64();
    let cpu_each: Vec<f64> = controllers
        .cpu_seconds(ticks)?
        .iter()
        .zip(&cpu_before)
        .map(|(after, before)| after - before)
        .collect();
    if cpu_each.len() > 1 {
        let each: Vec<String> = cpu_each.iter().map(|s| format!("{s:.1}")).collect();
        eprintln!("  controller CPU s per replica: {}", each.join(" "));
    }
    let cpu: f64 = cpu_each.iter().sum();
    let generator_cpu = cpu_seconds(std::process::id(), ticks)? - generator_before;
    let writer_cpu = controllers.writer_cpu_seconds(ticks)? - writer_cpu_before;
    let database_cpu_seconds = database_cpu.finish(ticks)?;
    let (peak_rss, peak_rss_sum) = controllers.peak_rss_bytes()?;
    let rss_after_heartbeats = controllers.rss_bytes()?;
    let oversleep_p99_ms = probe.finish();
    // A WAL that keeps growing would mean checkpoints cannot keep up.
    let wal_bytes = std::fs::metadata(data_dir.join("controller.db-wal")).map_or(0, |m| m.len());
    let connections = pool.len();
    drop(pool);
    controllers.stop()?;
    let load_after = load_average()?;

    let samples = std::mem::take(&mut *latencies.lock().unwrap_or_else(|e| e.into_inner()));
    // p99 per 5 s window shows whether the tail is a warm-up, a periodic
    // stall (checkpoints, sweeps) or spread evenly (machine contention).
    let mut windows: std::collections::BTreeMap<u64, Vec<u64>> = Default::default();
    for (offset_ms, micros) in &samples {
        windows.entry(offset_ms / 5000).or_default().push(*micros);
    }
    let per_window: Vec<String> = windows
        .into_values()
        .map(|mut w| {
            w.sort_unstable();
            format!("{:.0}", percentile(&w, 0.99))
        })
        .collect();
    eprintln!("  p99 ms per 5 s window: {}", per_window.join(" "));
    let mut latencies: Vec<u64> = samples.into_iter().map(|(_, micros)| micros).collect();
    latencies.sort_unstable();
    Ok(RunResult {
        nodes,
        mode: label,
        transport,
        connections,
        target_rate: rate,
        sent,
        errors: errors.load(Ordering::Relaxed),
        achieved_rate: latencies.len() as f64 / elapsed,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: latencies.last().map_or(f64::NAN, |m| *m as f64 / 1000.0),
        cpu_seconds: cpu,
        cpu_percent: 100.0 * cpu / elapsed,
        peak_rss,
        peak_rss_sum,
        rss_before_connections,
        rss_connected,
        rss_after_heartbeats,
        register_seconds,
        wal_bytes,
        oversleep_p99_ms,
        writer_cpu_seconds: writer_cpu,
        database_cpu_seconds,
        generator_cpu_percent: 100.0 * generator_cpu / elapsed,
        load_before,
        load_after,
    })
}

/// The mode as the tables name it: `postgres x2` for two replicas.
fn mode_label(mode: &str, replicas: usize) -> String {
    if replicas == 1 {
        mode.to_string()
    } else {
        format!("{mode} x{replicas}")
    }
}

/// `--replicas`: each count 1 to 8, and more than one only for the
/// postgres mode (the other stores are one controller's own files).
fn check_replicas(replicas: &[usize], modes: &[String]) -> anyhow::Result<()> {
    if replicas.is_empty() {
        bail!("--replicas: give at least one count");
    }
    for &count in replicas {
        if !(1..=MAX_REPLICAS).contains(&count) {
            bail!("--replicas {count}: a run takes 1 to {MAX_REPLICAS} replicas");
        }
        if count > 1 && !modes.iter().any(|m| m == "postgres") {
            bail!(
                "--replicas {count} needs --modes postgres: only controllers on one PostgreSQL database can be replicas"
            );
        }
    }
    Ok(())
}

/// The most replicas a run starts: each holds several database sessions and
/// its own copy of every node, on the one machine that also generates the
/// load.
const MAX_REPLICAS: usize = 8;

async fn run_matrix(matrix: Matrix) -> anyhow::Result<()> {
    if matrix.channels == 0 {
        bail!("--channels must be at least 1");
    }
    if matrix.max_connections == 0 {
        bail!("--max-connections must be at least 1");
    }
    check_replicas(&matrix.replicas, &matrix.modes)?;
    let transports = matrix
        .transports
        .iter()
        .map(|t| Transport::parse(t))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (work_dir, remove_after) = match &matrix.work_dir {
        Some(dir) => (dir.clone(), false),
        None => (tempfile_dir()?, true),
    };
    let ticks = clock_ticks_per_second();
    let mut results = Vec::new();
    for &nodes in &matrix.node_counts {
        for mode in &matrix.modes {
            let replica_counts: &[usize] = if mode == "postgres" {
                &matrix.replicas
            } else {
                &[1]
            };
            for &replicas in replica_counts {
                for &transport in &transports {
                    eprintln!(
                        "run: {nodes} nodes, {} heartbeats, {}, {} s",
                        mode_label(mode, replicas),
                        transport.name(),
                        matrix.duration.as_secs()
                    );
                    let result =
                        run_one(&matrix, nodes, mode, replicas, transport, &work_dir, ticks)
                            .await?;
                    print_result(&result);
                    results.push(result);
                }
            }
        }
    }
    println!();
    println!("| nodes | mode | transport | connections | target hb/s | sustained hb/s | errors | p50 ms | p99 ms | max ms | controller CPU s | CPU % of one core | peak RSS MiB (largest controller) | peak RSS MiB (all controllers) | register s | writer thread CPU s | WAL MiB at end | 1 ms sleep overshoot p99 ms | load generator CPU % | database server CPU s | load average before → after |");
    println!(
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in &results {
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.0} | {} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.2} | {:.1} | {:.1} | {:.1} → {:.1} |",
            r.nodes,
            r.mode,
            r.transport.name(),
            r.connections,
            r.target_rate,
            r.achieved_rate,
            r.errors,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.cpu_seconds,
            r.cpu_percent,
            r.peak_rss as f64 / (1 << 20) as f64,
            r.peak_rss_sum as f64 / (1 << 20) as f64,
            r.register_seconds,
            r.writer_cpu_seconds,
            r.wal_bytes as f64 / (1 << 20) as f64,
            r.oversleep_p99_ms,
            r.generator_cpu_percent,
            r.database_cpu_seconds,
            r.load_before,
            r.load_after
        );
    }
    println!();
    // Per-connection cost: the controller's RSS growth from opening the
    // heartbeat connections, idle (before any heartbeat) and after the
    // heartbeat phase (their buffers used), over the number of connections.
    println!("| nodes | mode | transport | connections | RSS before connections MiB | RSS connected MiB | RSS after heartbeats MiB | KiB per idle connection | KiB per connection after heartbeats | 50,000 connections at that cost MiB |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &results {
        let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
        let per = |rss: u64| {
            rss.saturating_sub(r.rss_before_connections) as f64 / 1024.0 / r.connections as f64
        };
        let at_50k =
            mib(r.rss_before_connections) + per(r.rss_after_heartbeats) * 50_000.0 / 1024.0;
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.0} |",
            r.nodes,
            r.mode,
            r.transport.name(),
            r.connections,
            mib(r.rss_before_connections),
            mib(r.rss_connected),
            mib(r.rss_after_heartbeats),
            per(r.rss_connected),
            per(r.rss_after_heartbeats),
            at_50k
        );
    }
    for &nodes in &matrix.node_counts {
        let find = |mode: &str, transport: Transport| {
            results
                .iter()
                .find(|r| r.nodes == nodes && r.mode == mode && r.transport == transport)
        };
        for transport in &transports {
            if let (Some(d), Some(m)) = (find("durable", *transport), find("memory", *transport)) {
                println!(
                    "ratio durable/in-memory at {nodes} nodes, {}: p50 {:.2}x, p99 {:.2}x, CPU {:.2}x, peak RSS {:.2}x",
                    transport.name(),
                    d.p50_ms / m.p50_ms,
                    d.p99_ms / m.p99_ms,
                    d.cpu_seconds / m.cpu_seconds,
                    d.peak_rss as f64 / m.peak_rss as f64
                );
            }
        }
        for (transport, replicas) in transports
            .iter()
            .flat_map(|t| matrix.replicas.iter().map(move |r| (t, *r)))
        {
            let label = mode_label("postgres", replicas);
            if let (Some(pg), Some(lite)) = (find(&label, *transport), find("durable", *transport))
            {
                println!(
                    "ratio {label}/sqlite (durable) at {nodes} nodes, {}: hb/s {:.2}x, p50 {:.2}x, p99 {:.2}x, CPU with the database server {:.2}x, register time {:.2}x",
                    transport.name(),
                    pg.achieved_rate / lite.achieved_rate,
                    pg.p50_ms / lite.p50_ms,
                    pg.p99_ms / lite.p99_ms,
                    (pg.cpu_seconds + pg.database_cpu_seconds) / lite.cpu_seconds,
                    pg.register_seconds / lite.register_seconds
                );
            }
        }
        let mut labels: Vec<&str> = results.iter().map(|r| r.mode.as_str()).collect();
        labels.dedup();
        for mode in labels {
            if let (Some(t), Some(p)) = (
                find(mode, Transport::Mtls),
                find(mode, Transport::Plaintext),
            ) {
                println!(
                    "ratio mtls/plaintext at {nodes} nodes, {mode}: hb/s {:.2}x, p50 {:.2}x, p99 {:.2}x, CPU {:.2}x, peak RSS {:.2}x, register time {:.2}x",
                    t.achieved_rate / p.achieved_rate,
                    t.p50_ms / p.p50_ms,
                    t.p99_ms / p.p99_ms,
                    t.cpu_seconds / p.cpu_seconds,
                    t.peak_rss as f64 / p.peak_rss as f64,
                    t.register_seconds / p.register_seconds
                );
            }
        }
    }
    if remove_after {
        std::fs::remove_dir_all(&work_dir)?;
    }
    Ok(())
}

/// A fresh directory under the system temp dir, removed at the end of the run.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("heartbeat-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The --postgres database, through a session of the bench's own.
struct BenchDatabase(postgres::Client);

fn bench_database(url: &str) -> anyhow::Result<BenchDatabase> {
    let client = postgres::Client::connect(url, postgres::NoTls)
        .context("--postgres: cannot connect (the URL is not repeated here)")?;
    Ok(BenchDatabase(client))
}

impl BenchDatabase {
    /// An empty `public` schema, for the next run's controller to migrate.
    fn wipe(mut self) -> anyhow::Result<()> {
        self.0
            .batch_execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
            .context("--postgres: cannot empty the database")
    }

    /// The server processes of this database's other sessions: the
    /// controller's writer, reader and resource connections.
    fn backend_pids(&mut self) -> anyhow::Result<Vec<u32>> {
        let rows = self.0.query(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )?;
        rows.iter()
            .map(|row| Ok(u32::try_from(row.try_get::<_, i32>(0)?)?))
            .collect()
    }
}

/// The CPU the database server spends for the controller over a phase:
/// the backends present at its start, read again at its end (the
/// controller keeps its sessions open). The server runs on this machine.
struct DatabaseCpu {
    before: Vec<(u32, f64)>,
}

impl DatabaseCpu {
    async fn start(url: Option<&str>, ticks: f64) -> anyhow::Result<DatabaseCpu> {
        let Some(url) = url.map(str::to_string) else {
            return Ok(DatabaseCpu { before: Vec::new() });
        };
        let pids =
            tokio::task::spawn_blocking(move || bench_database(&url)?.backend_pids()).await??;
        let before = pids
            .into_iter()
            .map(|pid| Ok((pid, cpu_seconds(pid, ticks)?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(DatabaseCpu { before })
    }

    fn finish(self, ticks: f64) -> anyhow::Result<f64> {
        self.before
            .into_iter()
            .try_fold(0.0, |total, (pid, before)| {
                Ok(total + cpu_seconds(pid, ticks)? - before)
            })
    }
}

fn print_result(r: &RunResult) {
    println!(
        "{} nodes, {}, {} over {} connections: sent {} ({} errors), sustained {:.0} hb/s (target {:.0}), ack latency p50 {:.2} ms p99 {:.2} ms max {:.1} ms, controller CPU {:.1} s = {:.1}% of one core (all replicas), peak RSS {:.0} MiB (largest controller; all {:.0} MiB), load {:.1} -> {:.1}",
        r.nodes,
        r.mode,
        r.transport.name(),
        r.connections,
        r.sent,
        r.errors,
        r.achieved_rate,
        r.target_rate,
        r.p50_ms,
        r.p99_ms,
        r.max_ms,
        r.cpu_seconds,
        r.cpu_percent,
        r.peak_rss as f64 / (1 << 20) as f64,
        r.peak_rss_sum as f64 / (1 << 20) as f64,
        r.load_before,
        r.load_after
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str =
        "Name:\theartbeat-bench\nVmHWM:\t  274432 kB\nVmRSS:\t  203776 kB\nRssAnon:\t  190000 kB\n";

    #[test]
    fn status_fields_are_read_by_exact_name_in_bytes() {
        assert_eq!(status_field_bytes(STATUS, "VmHWM").unwrap(), 274_432 * 1024);
        assert_eq!(status_field_bytes(STATUS, "VmRSS").unwrap(), 203_776 * 1024);
        // A prefix of another field's name is not that field.
        let err = status_field_bytes(STATUS, "Rss").unwrap_err().to_string();
        assert!(err.contains("no Rss"), "{err}");
    }

    #[test]
    fn replicas_are_one_to_eight_and_only_on_postgres() {
        let modes = |m: &[&str]| m.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        check_replicas(&[1, 2, 8], &modes(&["durable", "postgres"])).unwrap();
        check_replicas(&[1], &modes(&["durable", "memory"])).unwrap();
        for (replicas, mode, expected) in [
            (&[2][..], "durable", "--replicas 2 needs --modes postgres"),
            (&[0], "postgres", "--replicas 0: a run takes 1 to 8"),
            (&[1, 9], "postgres", "--replicas 9: a run takes 1 to 8"),
            (&[], "postgres", "--replicas: give at least one count"),
        ] {
            let err = check_replicas(replicas, &modes(&[mode]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{replicas:?} {mode}: {err}");
        }
    }

    #[test]
    fn a_shared_connection_carries_nodes_of_one_replica() {
        // One connection per node while they fit: node i on connection i.
        assert_eq!(heartbeat_connections(10_000, 16_000, 3).unwrap(), 10_000);
        // Shared: node i on connection i % count must be on replica i % n.
        for replicas in 1..=MAX_REPLICAS {
            let count = heartbeat_connections(50_000, 16_000, replicas).unwrap();
            assert!(count <= 16_000 && count > 16_000 - replicas);
            assert!((0..50_000).all(|i| (i % count) % replicas == i % replicas));
        }
        let err = heartbeat_connections(100, 2, 3).unwrap_err().to_string();
        assert!(err.contains("--max-connections 2"), "{err}");
    }
}
