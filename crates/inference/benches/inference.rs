//! Cost of tree inference for 100,000 probes x 16 receivers on a 3-level tree (source
//! -> lab switch -> 4 node uplinks -> 4 receivers each), against the size of the run's
//! stored result. Prints figures; asserts nothing about speed. Memory is the rise of the
//! process's peak resident set during the step.
//!
//! `cargo bench -p measurelab-inference --bench inference`

use std::time::Instant;

use measurelab_inference::delay::delay_covariances;
use measurelab_inference::simulate::{self, LinkModel};
use measurelab_inference::tree::{distribution_tree, Placement};
use measurelab_inference::{infer, InferenceConfig};

/// Peak resident set (VmHWM) in bytes, reset first when `reset`: Linux resets the
/// high-water mark on writing 5 to `/proc/self/clear_refs`. The same figure a
/// controller's process would see grow.
fn peak_rss(reset: bool) -> Option<u64> {
    if reset {
        std::fs::write("/proc/self/clear_refs", "5").ok()?;
    }
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Runs `work`, returning its result, wall time in ms and how far the peak resident set
/// rose above the resident set before it, in bytes.
fn measure<T>(work: impl FnOnce() -> T) -> (T, f64, u64) {
    let base = peak_rss(true).unwrap_or(0);
    let start = Instant::now();
    let out = work();
    let elapsed = start.elapsed().as_secs_f64() * 1_000.0;
    (
        out,
        elapsed,
        peak_rss(false).unwrap_or(0).saturating_sub(base),
    )
}

const PROBES: u64 = 100_000;

fn main() {
    let names: Vec<String> = (0..16).map(|i| format!("r{i:02}")).collect();
    let nodes: Vec<String> = (0..16).map(|i| format!("n{}", 2 + i / 4)).collect();
    let placements: Vec<Placement<'_>> = names
        .iter()
        .zip(&nodes)
        .map(|(point, node)| Placement { point, node })
        .collect();
    let tree = distribution_tree(
        &Placement {
            point: "src",
            node: "n1",
        },
        &placements,
    );
    println!("tree inference bench: {PROBES} probes x 16 receivers, 3-level tree");
    for (label, model) in [
        ("clean", LinkModel::default()),
        (
            "lossy (2 links 3-8 %, the rest 0.5 %)",
            LinkModel {
                loss: tree
                    .nodes
                    .iter()
                    .filter_map(|n| n.link.clone())
                    .map(|link| {
                        let loss = match link.as_str() {
                            "uplink:n3" => 0.08,
                            "port:r13" => 0.03,
                            _ => 0.005,
                        };
                        (link, loss)
                    })
                    .collect(),
                delay_stddev_us: [("uplink:n4".to_string(), 500.0)].into_iter().collect(),
            },
        ),
    ] {
        let run = simulate::run(&tree, &model, PROBES, 42);
        let (covariances, covariance_ms, covariance_bytes) =
            measure(|| delay_covariances(&run.delays));
        let mut document = simulate::document(&tree, &run);
        document.delay_covariances = covariances;
        let config = InferenceConfig::default();
        let ((inference, bottlenecks), infer_ms, infer_bytes) =
            measure(|| infer(&document, &tree, &config).expect("inference"));
        let receipts_bytes: usize = document
            .receivers
            .iter()
            .map(|r| serde_json::to_string(&r.receipts).map_or(0, |s| s.len()))
            .sum();
        let covariance_json =
            serde_json::to_string(&document.delay_covariances).map_or(0, |s| s.len());
        document.inference = Some(inference);
        document.bottlenecks = bottlenecks;
        let stored = serde_json::to_string(&document).map_or(0, |s| s.len());
        println!("\n{label}:");
        println!(
            "  infer (1000 bootstrap replicates): {infer_ms:.1} ms, peak RSS rise {:.2} MiB",
            infer_bytes as f64 / (1 << 20) as f64
        );
        println!(
            "  delay covariances at the MSCS: {covariance_ms:.1} ms, peak RSS rise {:.1} KiB",
            covariance_bytes as f64 / 1024.0
        );
        println!(
            "  stored result: {stored} bytes (receipts {receipts_bytes}, covariances {covariance_json}, \
             inference+tree+bottlenecks the rest); per-probe delays would be >= {} bytes",
            PROBES * 16 * 4
        );
        println!(
            "  bottlenecks: {:?}",
            document
                .bottlenecks
                .iter()
                .map(|b| b.link.as_str())
                .collect::<Vec<_>>()
        );
    }
}
