//! Runs over a tree whose per-link loss and delay are known: Bernoulli loss and
//! exponential extra delay on every link, independent across links and probes (the
//! model the estimators assume). For the tests and the benchmark.

use std::collections::BTreeMap;

use measurelab_api::result::{
    DistributionTree, ReceiverResult, ReceiverStatus, ResultDocument, ResultSchema, RunConfig,
    RunKind, RunStatus, SourceResult, TreeNodeKind,
};

use crate::delay::{delay_covariances, ProbeDelays, NOT_RECEIVED};
use crate::receipts::ReceiptBits;
use crate::rng::SplitMix64;

/// What every link does to a probe.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkModel {
    /// Loss probability per link name; absent links lose nothing.
    pub loss: BTreeMap<String, f64>,
    /// Standard deviation (= mean) of the exponential extra delay per link name, µs;
    /// absent links add a fixed 10 µs.
    pub delay_stddev_us: BTreeMap<String, f64>,
}

/// A simulated run: per receiver, its receipts and per-probe delays.
#[derive(Debug, Clone)]
pub struct SimulatedRun {
    /// Receiver point names, in tree order.
    pub receivers: Vec<String>,
    /// Their receipts.
    pub receipts: Vec<ReceiptBits>,
    /// Their delays.
    pub delays: Vec<ProbeDelays>,
}

/// Sends `probes` probes down `tree` under `model`.
pub fn run(tree: &DistributionTree, model: &LinkModel, probes: u64, seed: u64) -> SimulatedRun {
    let mut rng = SplitMix64::new(seed);
    let parent: Vec<Option<usize>> = tree
        .nodes
        .iter()
        .map(|n| {
            n.parent
                .as_ref()
                .and_then(|p| tree.nodes.iter().position(|m| &m.id == p))
        })
        .collect();
    let link = |i: usize| tree.nodes[i].link.clone().unwrap_or_default();
    let loss: Vec<f64> = (0..tree.nodes.len())
        .map(|i| model.loss.get(&link(i)).copied().unwrap_or(0.0))
        .collect();
    let delay: Vec<Option<f64>> = (0..tree.nodes.len())
        .map(|i| model.delay_stddev_us.get(&link(i)).copied())
        .collect();
    let leaves: Vec<usize> = (0..tree.nodes.len())
        .filter(|i| tree.nodes[*i].kind == TreeNodeKind::Receiver)
        .collect();
    let mut flags = vec![Vec::with_capacity(probes as usize); leaves.len()];
    let mut delays = vec![Vec::with_capacity(probes as usize); leaves.len()];
    let mut reached = vec![false; tree.nodes.len()];
    let mut at_ns = vec![0f64; tree.nodes.len()];
    for _ in 0..probes {
        for i in 0..tree.nodes.len() {
            match parent[i] {
                None => {
                    reached[i] = true;
                    at_ns[i] = 0.0;
                }
                Some(p) => {
                    reached[i] = reached[p] && !rng.bernoulli(loss[i]);
                    let extra_us = match delay[i] {
                        Some(mean) => -mean * (1.0 - rng.next_f64()).ln(),
                        None => 10.0,
                    };
                    at_ns[i] = at_ns[p] + extra_us * 1_000.0;
                }
            }
        }
        for (r, leaf) in leaves.iter().enumerate() {
            flags[r].push(reached[*leaf]);
            delays[r].push(if reached[*leaf] {
                at_ns[*leaf] as i64
            } else {
                NOT_RECEIVED
            });
        }
    }
    let receivers: Vec<String> = leaves
        .iter()
        .map(|i| tree.nodes[*i].point.clone().unwrap_or_default())
        .collect();
    SimulatedRun {
        receipts: flags.into_iter().map(ReceiptBits::from_flags).collect(),
        delays: receivers
            .iter()
            .zip(delays)
            .map(|(point, delays_ns)| ProbeDelays {
                point: point.clone(),
                delays_ns,
            })
            .collect(),
        receivers,
    }
}

/// The result document of a simulated run, as the MSCS would post it (receipts and
/// delay covariances, no metrics), with `tree` filled in.
pub fn document(tree: &DistributionTree, run: &SimulatedRun) -> ResultDocument {
    let source = tree
        .nodes
        .first()
        .and_then(|n| n.point.clone())
        .unwrap_or_default();
    ResultDocument {
        schema: ResultSchema::V1,
        task_id: None,
        run_id: "simulated".into(),
        kind: RunKind::Task,
        source_point: source.clone(),
        group: std::net::Ipv4Addr::new(239, 1, 1, 1),
        port: 5000,
        session_id: 1,
        started_at: "2026-01-01T00:00:00Z".into(),
        finished_at: "2026-01-01T00:00:10Z".into(),
        status: RunStatus::Ok,
        config: RunConfig {
            rate_pps: 1000.0,
            packet_size_bytes: 64,
            duration_seconds: 10.0,
            ttl: 4,
            ssm: false,
        },
        source: SourceResult {
            point: source,
            data_addr: None,
            report: None,
            error: None,
        },
        receivers: run
            .receivers
            .iter()
            .zip(&run.receipts)
            .map(|(point, receipts)| ReceiverResult {
                receipts: Some(receipts.encode()),
                error: None,
                ..ReceiverResult::without_report(point, ReceiverStatus::Ok, String::new())
            })
            .collect(),
        delay_covariances: delay_covariances(&run.delays),
        tree: Some(tree.clone()),
        inference: None,
        bottlenecks: Vec::new(),
        comparison: None,
    }
}
