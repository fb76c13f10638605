//! Latency of the platform, VM, task and result paths on a real controller (in process,
//! loopback, fresh data directory): VM creation over HTTP (one durable
//! SQLite transaction each), GetDesiredState and ReportStatus of a node
//! hosting all of them, and the result history query.
//!
//! With `--tenants N` (N > 1) it runs twice on fresh controllers, as a
//! member of one tenant while `--objects` QoS policies fill the database:
//! once all in that one tenant, once spread over N tenants, and prints the
//! ratio of each figure (scope checks cost what they cost in both).
//!
//! `cargo run --release -p measurelab-controller --bin resource-bench -- --vms 500`
//! `cargo run --release -p measurelab-controller --bin resource-bench -- --tenants 100`

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use measurelab_api::client::Client;
use measurelab_api::http::{
    ApiTokenCreate, PlatformCreate, QosPolicyCreate, Role, TaskCreate, TenantCreate, VmCreate,
    VmPowerState,
};
use measurelab_api::node_v1::node_service_client::NodeServiceClient;
use measurelab_api::node_v1::{
    Capabilities, Condition, DesiredStateRequest, RegisterRequest, ResourceUsage, StatusReport,
    VmStatus,
};
use measurelab_api::result::{
    ReceiverMetrics, ReceiverResult, ReceiverStatus, ResultDocument, ResultSchema, RunConfig,
    RunKind, RunStatus, SentSource, SourceResult,
};
use measurelab_controller::{run, ControllerConfig};

#[derive(Parser)]
struct Args {
    /// VMs to create on the one node (one platform: at most 253, its /24).
    #[arg(long, default_value_t = 250)]
    vms: usize,
    /// Result documents to store for the history query.
    #[arg(long, default_value_t = 2000)]
    results: usize,
    /// Parent of the data directory (its filesystem decides what an fsync costs).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: std::path::PathBuf,
    /// Repetitions of the desired-state and status-report calls.
    #[arg(long, default_value_t = 50)]
    rounds: usize,
    /// Spread the background objects over this many tenants and compare
    /// with the same run in one tenant (1: one run, as the operator).
    #[arg(long, default_value_t = 1)]
    tenants: usize,
    /// Background objects (QoS policies) created before measuring, with --tenants.
    #[arg(long, default_value_t = 10_000)]
    objects: usize,
}

/// One measured call: name, p50 and p99 in milliseconds.
type Figure = (String, f64, f64);

fn summary(figures: &mut Vec<Figure>, name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "{name:<44} n={:<5} p50={:>8.2} ms  p99={:>8.2} ms  max={:>8.2} ms",
        samples.len(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3
    );
    figures.push((
        name.to_string(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
    ));
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.tenants <= 1 {
        bench(&args, None).await?;
        return Ok(());
    }
    println!(
        "== {} objects in 1 tenant (measured as a member of it)",
        args.objects
    );
    let one = bench(&args, Some(1)).await?;
    println!(
        "== {} objects over {} tenants (measured as a member of one)",
        args.objects, args.tenants
    );
    let many = bench(&args, Some(args.tenants)).await?;
    println!(
        "\n{:<44} {:>10} {:>10} {:>8} {:>10} {:>10} {:>8}",
        "call", "p50 1t", "p50 Nt", "ratio", "p99 1t", "p99 Nt", "ratio"
    );
    for ((name, p50_one, p99_one), (_, p50_many, p99_many)) in one.iter().zip(&many) {
        println!(
            "{name:<44} {p50_one:>10.2} {p50_many:>10.2} {:>8.2} {p99_one:>10.2} {p99_many:>10.2} {:>8.2}",
            p50_many / p50_one,
            p99_many / p99_one
        );
    }
    Ok(())
}

/// Tenants `t0..tN`, a member token of each, and `objects` QoS policies
/// spread over them round robin. Returns t0's member client.
async fn populate(
    admin: &Client,
    endpoint: &str,
    tenants: usize,
    objects: usize,
) -> anyhow::Result<Client> {
    let mut clients = Vec::with_capacity(tenants);
    for t in 0..tenants {
        let name = format!("t{t}");
        admin
            .create_tenant(&TenantCreate {
                name: name.clone(),
                description: None,
                quota: None,
                request_id: None,
            })
            .await?;
        let token = admin
            .create_token(&ApiTokenCreate {
                name: format!("bench-{t}"),
                role: Role::Member,
                tenant: Some(name),
                expires_at: None,
                ttl_seconds: None,
                request_id: None,
            })
            .await?;
        clients.push(Client::new(endpoint, &token.secret, None)?);
    }
    let started = Instant::now();
    let creates = futures::stream::iter(0..objects).map(|i| {
        let client = clients[i % tenants].clone();
        async move {
            client
                .create_qos_policy(&QosPolicyCreate {
                    tenant: None,
                    name: format!("q-{i}"),
                    ingress_max_kbps: 1000,
                    ingress_min_kbps: None,
                    ingress_burst_kbytes: None,
                    egress_max_kbps: None,
                    egress_min_kbps: None,
                    egress_burst_kbytes: None,
                    request_id: None,
                })
                .await
        }
    });
    let mut results = creates.buffer_unordered(8);
    while let Some(result) = results.next().await {
        result.context("creating a background QoS policy")?;
    }
    println!(
        "populated {objects} QoS policies over {tenants} tenant(s) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop(results);
    Ok(clients.swap_remove(0))
}

/// One run on a fresh controller: as the operator (`tenants` None) or as a
/// member of the first of `tenants` tenants holding the background objects.
async fn bench(args: &Args, tenants: Option<usize>) -> anyhow::Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let dir = args.dir.join(format!(
        "measurelab-resource-bench-{}-{}",
        std::process::id(),
        tenants.unwrap_or(0)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let http = std::net::TcpListener::bind("127.0.0.1:0")?;
    let grpc = std::net::TcpListener::bind("127.0.0.1:0")?;
    let (http_addr, grpc_addr) = (http.local_addr()?, grpc.local_addr()?);
    let mut config = ControllerConfig::new(&dir, http, grpc);
    config.heartbeat_interval = Duration::from_secs(60);
    config.offline_after = Duration::from_secs(600);
    // The bench measures the store under load; the API's rate limits would
    // measure themselves instead.
    config.rate_limits = measurelab_controller::RateLimits {
        per_token: None,
        per_source: None,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(run(config, async move {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let admin = std::fs::read_to_string(dir.join("admin.token"))?
        .trim()
        .to_string();
    let join = std::fs::read_to_string(dir.join("join.token"))?
        .trim()
        .to_string();
    let endpoint = format!("http://{http_addr}");
    let admin_client = Client::new(&endpoint, &admin, None)?;
    let client = match tenants {
        Some(n) => populate(&admin_client, &endpoint, n, args.objects).await?,
        None => admin_client,
    };
    let mut node = NodeServiceClient::connect(format!("http://{grpc_addr}")).await?;
    let registered = node
        .register(RegisterRequest {
            join_token: join,
            name: "bench-node".into(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            capabilities: Some(Capabilities {
                namespace_backend: true,
                ..Default::default()
            }),
            usage: Some(ResourceUsage {
                cpu_count: 64,
                memory_total_bytes: 1 << 50,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    client
        .create_platform(&PlatformCreate {
            tenant: None,
            name: "bench".into(),
            nodes: vec!["bench-node".into()],
            admins: vec![],
            description: None,
            request_id: None,
            flow_monitoring: None,
            gateway: None,
        })
        .await?;

    let mut create = Vec::with_capacity(args.vms);
    let mut ids = Vec::with_capacity(args.vms);
    for i in 0..args.vms {
        let started = Instant::now();
        let vm = client
            .create_vm(&VmCreate {
                tenant: None,
                name: format!("vm-{i}"),
                platform: "bench".into(),
                node: "bench-node".into(),
                vcpus: 1,
                memory_mib: 64,
                disk_mib: None,
                swap_mib: None,
                max_vcpus: None,
                max_memory_mib: None,
                appliance: "namespace".into(),
                qos_policy: None,
                power_state: VmPowerState::Running,
                backend: None,
                request_id: Some(format!("create-{i}")),
            })
            .await
            .with_context(|| format!("creating vm-{i}"))?;
        create.push(started.elapsed());
        ids.push(vm.id);
    }
    summary(
        &mut figures,
        "POST /v1/vms (durable, with request_id)",
        create,
    );
    let mut lookups = Vec::with_capacity(args.rounds);
    let mut whoami = Vec::with_capacity(args.rounds);
    for round in 0..args.rounds {
        let started = Instant::now();
        client
            .get_vm(&format!("bench/vm-{}", round % args.vms))
            .await?;
        lookups.push(started.elapsed());
        let started = Instant::now();
        client.whoami().await?;
        whoami.push(started.elapsed());
    }
    summary(&mut figures, "GET /v1/vms/{platform/name}", lookups);
    if tenants.is_some() {
        // A background object of the measuring tenant, by name.
        let mut qos = Vec::with_capacity(args.rounds);
        for _ in 0..args.rounds {
            let started = Instant::now();
            client.get_qos_policy("q-0").await?;
            qos.push(started.elapsed());
        }
        summary(&mut figures, "GET /v1/qos_policies/{name}", qos);
    }
    summary(&mut figures, "GET /v1/whoami (token check only)", whoami);
    let mut listing = Vec::with_capacity(args.rounds);
    for _ in 0..args.rounds {
        let started = Instant::now();
        let vms = client.list_vms("").await?;
        listing.push(started.elapsed());
        anyhow::ensure!(vms.len() == args.vms, "the VM list has {} VMs", vms.len());
    }
    summary(
        &mut figures,
        &format!("GET /v1/vms ({} VMs)", args.vms),
        listing,
    );

    let mut desired = Vec::new();
    let mut report = Vec::new();
    for round in 0..args.rounds {
        let started = Instant::now();
        let state = node
            .get_desired_state(DesiredStateRequest {
                node_id: registered.node_id.clone(),
                node_secret: registered.node_secret.clone(),
            })
            .await?
            .into_inner();
        desired.push(started.elapsed());
        anyhow::ensure!(
            state.vms.len() == args.vms,
            "desired state lists {} VMs",
            state.vms.len()
        );
        let statuses = ids
            .iter()
            .map(|id| VmStatus {
                vm_id: id.clone(),
                actual_state: "running".into(),
                conditions: vec![Condition {
                    r#type: "Ready".into(),
                    status: if round % 2 == 0 { "True" } else { "False" }.into(),
                    reason: "Bench".into(),
                    message: String::new(),
                }],
                observed_generation: 1,
                ..Default::default()
            })
            .collect();
        let started = Instant::now();
        node.report_status(StatusReport {
            node_id: registered.node_id.clone(),
            node_secret: registered.node_secret.clone(),
            observed_generation: state.generation,
            vms: statuses,
            ..Default::default()
        })
        .await?;
        report.push(started.elapsed());
    }
    summary(
        &mut figures,
        &format!("GetDesiredState ({} VMs)", args.vms),
        desired,
    );
    summary(
        &mut figures,
        &format!("ReportStatus ({} VM statuses)", args.vms),
        report,
    );

    let task = client
        .create_task(&TaskCreate {
            tenant: None,
            name: "bench".into(),
            mode: "platform".into(),
            platform: Some("bench".into()),
            nodes: None,
            schedule: "periodic".into(),
            interval_seconds: Some(300),
            duration_seconds: Some(30),
            rate_pps: 100,
            packet_size_bytes: 200,
            group: "239.9.9.9".into(),
            port: 5000,
            ttl: 2,
            ssm: false,
            source: None,
            receivers: None,
            bottleneck_loss_threshold: None,
            bottleneck_delay_stddev_us: None,
            compare_with_service_host: false,
            request_id: None,
        })
        .await?;
    let mut post = Vec::with_capacity(args.results);
    for i in 0..args.results {
        let started_at = format!(
            "2026-01-{:02}T{:02}:{:02}:00Z",
            1 + i / 1440,
            (i / 60) % 24,
            i % 60
        );
        let document = serde_json::to_value(bench_result(&task.id, i, started_at))?;
        let started = Instant::now();
        client.post_result(&document).await?;
        post.push(started.elapsed());
    }
    summary(&mut figures, "POST /v1/results (durable)", post);
    let mut history = Vec::new();
    for _ in 0..args.rounds {
        let started = Instant::now();
        let results = client.list_results("task=bench&limit=100000").await?;
        history.push(started.elapsed());
        anyhow::ensure!(results.len() == args.results);
    }
    summary(
        &mut figures,
        &format!("GET /v1/results ({} runs)", args.results),
        history,
    );

    let _ = stop.send(());
    controller.await??;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(figures)
}

/// Run `i` of the bench task: one receiver, a realistic document size.
fn bench_result(task_id: &str, i: usize, started_at: String) -> ResultDocument {
    let metrics = ReceiverMetrics {
        packets_sent: 1000,
        sent_source: SentSource::SenderReport,
        packets_received: 990,
        packets_lost: 10,
        packets_duplicated: 0,
        packets_reordered: 0,
        packets_beyond_duplicate_window: 0,
        packets_unexpected: 0,
        loss_ratio: Some(0.01),
        duplicate_fraction: Some(0.0),
        replicated_packet_rate: Some(0.0),
        reordered_ratio: Some(0.0),
        one_way_delay_us: None,
        ipdv_us: None,
        pdv_us: None,
        jitter_us: Some(12.0),
        quantiles_exact: true,
    };
    let receiver = ReceiverResult {
        point: "r1".into(),
        status: ReceiverStatus::Ok,
        error: None,
        timestamp_source: None,
        clock_sync: None,
        clock_error_bound_us: None,
        foreign_session_packets: None,
        malformed_packets: None,
        metrics: Some(metrics),
        receipts: None,
    };
    ResultDocument {
        schema: ResultSchema::V1,
        task_id: Some(task_id.to_string()),
        run_id: format!("bench-{i}"),
        kind: RunKind::Task,
        source_point: "s".into(),
        group: Ipv4Addr::new(239, 9, 9, 9),
        port: 5000,
        session_id: i as u64,
        finished_at: started_at.clone(),
        started_at,
        status: RunStatus::Ok,
        config: RunConfig {
            rate_pps: 100.0,
            packet_size_bytes: 100,
            duration_seconds: 10.0,
            ttl: 2,
            ssm: false,
        },
        source: SourceResult {
            point: "s".into(),
            data_addr: None,
            report: None,
            error: None,
        },
        receivers: vec![receiver],
        delay_covariances: Vec::new(),
        tree: None,
        inference: None,
        bottlenecks: Vec::new(),
        comparison: None,
    }
}
