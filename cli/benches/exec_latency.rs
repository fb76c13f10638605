//! `vm exec` round-trip latency (issue 11's benchmark): the time for
//! `true` to run in a VM and its exit to come back, median and p95 over
//! `--runs` runs (default 100), three ways in the same run, interleaved so
//! the machine's noise falls on each alike:
//!
//! - `cli`: the whole `measurelab vm exec P/VM -- true` process, as a user
//!   sees it (process start, TLS handshake, upgrade, the path CLI →
//!   controller → node agent → guest agent, exit);
//! - `api`: the same session from one long-lived API client in this
//!   process (no process start, but a new connection per session, since
//!   the upgrade takes the connection over);
//! - `peer`: `ip netns exec <the VM's namespace> true`, the same command
//!   in the same namespace without measurelab.
//!
//! Starts its own lab (one node, one namespace VM) and tears it down. Needs
//! root and the lab's packages; run it by hand, not beside other lab tests:
//!
//! ```text
//! cargo build --release -p measurelab-guest --bin measurelab-guest-agent
//! cargo bench -p measurelab --bench exec_latency -- --runs 100
//! ```
//!
//! Figures go into docs/BENCHMARKS.md; there are no thresholds here.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ensure_guest_agent, LabGuard, BIN};
use measurelab_api::exec::{drive_session, ExecOpen};
use measurelab_api::http::PlatformCreate;

const WAIT: Duration = Duration::from_secs(180);
const WARMUP: usize = 3;

fn main() {
    let mut runs = 100usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => {
                runs = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n > 0)
                    .expect("--runs: a positive number of runs")
            }
            // `cargo bench` passes --bench; nothing else is ours.
            "--bench" => {}
            other => panic!("unknown argument {other:?}; use --runs N"),
        }
    }
    ensure_guest_agent();
    let load_before = loadavg();
    let lab = LabGuard::new('b');
    lab.up(1, 2);
    let (endpoint, token) = lab.env();
    let ca_path = lab.dir().join("bench-ca.pem");
    let ca = lab.ca_pem().map(|pem| {
        std::fs::write(&ca_path, pem).expect("write the lab CA");
        ca_path.display().to_string()
    });
    let (client, runtime) = lab.client();
    runtime
        .block_on(client.create_platform(&PlatformCreate {
            tenant: None,
            name: "bp".into(),
            nodes: vec!["n1".into()],
            admins: vec![],
            description: None,
            request_id: None,
            flow_monitoring: None,
            gateway: None,
        }))
        .expect("create platform");
    let vm = runtime
        .block_on(client.create_vm(&common::namespace_vm("box", "bp", "n1")))
        .expect("create VM");
    common::wait_for("the VM's guest to register", WAIT, || {
        let vm = runtime.block_on(client.get_vm("bp/box")).ok()?;
        (vm.actual_state == "running"
            && vm
                .conditions
                .iter()
                .any(|c| c.condition_type == "GuestRegistered" && c.status == "True"))
        .then_some(())
    });
    let id = uuid::Uuid::parse_str(&vm.id).expect("VM id");
    let netns = measurelab_agent::hypervisor::NamespaceHypervisor::netns_name(id);

    let cli = || {
        let mut cmd = Command::new(BIN);
        cmd.args(["vm", "exec", "bp/box", "--", "true"])
            .env("MEASURELAB_ENDPOINT", &endpoint)
            .env("MEASURELAB_TOKEN", &token)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        match &ca {
            Some(ca) => cmd.env("MEASURELAB_CA_CERT", ca),
            None => cmd.env_remove("MEASURELAB_CA_CERT"),
        };
        let started = Instant::now();
        let status = cmd.status().expect("run measurelab vm exec");
        let took = started.elapsed();
        assert!(status.success(), "measurelab vm exec -- true: {status}");
        took
    };
    let api = || {
        let open = ExecOpen::Command {
            argv: vec!["true".into()],
            tty: false,
            size: None,
        };
        let started = Instant::now();
        let exit = runtime.block_on(async {
            let stream = client.exec_open("bp/box", &open).await.expect("exec open");
            drive_session(
                stream,
                None::<tokio::io::Empty>,
                tokio::io::sink(),
                tokio::io::sink(),
            )
            .await
            .expect("exec session")
        });
        let took = started.elapsed();
        assert_eq!(exit.status(), 0, "API exec of true: {exit:?}");
        took
    };
    let peer = || {
        let started = Instant::now();
        let status = Command::new("ip")
            .args(["netns", "exec", &netns, "true"])
            .status()
            .expect("run ip netns exec");
        let took = started.elapsed();
        assert!(status.success(), "ip netns exec {netns} true: {status}");
        took
    };

    // Warm-up (not counted): first connections, page cache, the guest's
    // first fork.
    for _ in 0..WARMUP {
        cli();
        api();
        peer();
    }
    let mut samples: [(&str, Vec<Duration>); 3] = [
        ("cli: measurelab vm exec -- true", Vec::new()),
        ("api: one client, exec_open + drive_session", Vec::new()),
        ("peer: ip netns exec <vm ns> true", Vec::new()),
    ];
    for _ in 0..runs {
        samples[0].1.push(cli());
        samples[1].1.push(api());
        samples[2].1.push(peer());
    }
    let load_after = loadavg();

    println!(
        "exec round-trip latency, {runs} runs each after {WARMUP} warm-up, interleaved; load average before {load_before}, after {load_after}"
    );
    println!("| path | runs | min ms | median ms | p95 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    let mut medians = Vec::new();
    for (name, durations) in &mut samples {
        durations.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let (median, p95) = (percentile(durations, 0.50), percentile(durations, 0.95));
        medians.push((median, p95));
        println!(
            "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            durations.len(),
            ms(durations[0]),
            ms(median),
            ms(p95),
            ms(durations[durations.len() - 1])
        );
    }
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!(
        "ratio to peer: cli median {:.1}x p95 {:.1}x; api median {:.1}x p95 {:.1}x",
        ratio(medians[0].0, medians[2].0),
        ratio(medians[0].1, medians[2].1),
        ratio(medians[1].0, medians[2].0),
        ratio(medians[1].1, medians[2].1),
    );
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
