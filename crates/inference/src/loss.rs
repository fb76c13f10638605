//! Per-link loss over a logical tree: the MINC maximum-likelihood estimator (Cáceres,
//! Duffield, Horowitz and Towsley, "Multicast-based inference of network-internal loss
//! characteristics", IEEE Trans. Inf. Theory 1999), with percentile intervals from a
//! Poisson bootstrap over probes.
//!
//! For logical node `k`, `gamma_k` is the share of probes that reached at least one
//! receiver below `k`, and `A_k` the probability that a probe reaches `k` (the product
//! of the pass rates from the source). At a receiver `A_k = gamma_k`; at a branch point
//! `A_k` is the root above `gamma_k` of
//! `1 - gamma_k / A = prod_{j in children(k)} (1 - gamma_j / A)`, and the pass rate of
//! the link into `k` is `A_k / A_parent` (`A` of the source is 1).
//!
//! Why the bootstrap and not the asymptotic variance: the MINC paper's asymptotic
//! covariance needs the Fisher information of the whole tree, which has no closed form
//! beyond the binary two-level case; resampling gives intervals for any shape from the
//! same code. Probes are resampled as receipt *patterns* (which receivers got the
//! probe): a run has far fewer distinct patterns than probes, so one replicate costs a
//! pass over the patterns, and each pattern's count is redrawn from a Poisson law with
//! its observed count as mean (the Poisson bootstrap, asymptotically the same as
//! resampling probes with replacement).

use std::collections::HashMap;

use crate::receipts::ReceiptBits;
use crate::rng::SplitMix64;
use crate::tree::LogicalTree;

/// Most receivers one inference takes: a pattern is a 64-bit mask.
pub const MAX_RECEIVERS: usize = 64;

/// Why loss cannot be inferred.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LossError {
    /// More receivers than a pattern can hold.
    #[error("{0} receivers; inference takes at most {MAX_RECEIVERS}")]
    TooManyReceivers(usize),
    /// Receivers' windows differ.
    #[error("receiver {index} has {found} probes in its window, the others {expected}")]
    WindowMismatch {
        /// Receiver index.
        index: usize,
        /// Its window.
        found: u64,
        /// The first receiver's window.
        expected: u64,
    },
    /// Nothing was sent.
    #[error("no probes in the window")]
    NoProbes,
}

/// The probes of a run reduced to distinct receipt patterns and their counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Patterns {
    masks: Vec<u64>,
    counts: Vec<u64>,
    probes: u64,
}

impl Patterns {
    /// Tallies the patterns of `receivers` (one [`ReceiptBits`] each, same window).
    pub fn tally(receivers: &[ReceiptBits]) -> Result<Self, LossError> {
        if receivers.len() > MAX_RECEIVERS {
            return Err(LossError::TooManyReceivers(receivers.len()));
        }
        let probes = receivers.first().map_or(0, ReceiptBits::len);
        for (index, r) in receivers.iter().enumerate() {
            if r.len() != probes {
                return Err(LossError::WindowMismatch {
                    index,
                    found: r.len(),
                    expected: probes,
                });
            }
        }
        if probes == 0 {
            return Err(LossError::NoProbes);
        }
        let mut tally: HashMap<u64, u64> = HashMap::new();
        for seq in 0..probes {
            let mask = receivers
                .iter()
                .enumerate()
                .filter(|(_, r)| r.get(seq))
                .fold(0u64, |mask, (i, _)| mask | 1 << i);
            *tally.entry(mask).or_default() += 1;
        }
        let mut pairs: Vec<(u64, u64)> = tally.into_iter().collect();
        // Sorted, so the bootstrap draws in the same order every time.
        pairs.sort_unstable();
        Ok(Self {
            masks: pairs.iter().map(|p| p.0).collect(),
            counts: pairs.iter().map(|p| p.1).collect(),
            probes,
        })
    }

    /// Probes tallied.
    pub fn probes(&self) -> u64 {
        self.probes
    }

    /// Distinct patterns.
    pub fn distinct(&self) -> usize {
        self.masks.len()
    }
}

/// Pass rates of every logical link, for pattern counts `counts` (over `patterns.masks`).
/// `None` for a link whose parent no probe reached: nothing can be said about it.
fn pass_rates(tree: &LogicalTree, masks: &[u64], counts: &[u64]) -> Vec<Option<f64>> {
    let total: u64 = counts.iter().sum();
    let gamma: Vec<f64> = tree
        .links
        .iter()
        .map(|link| {
            let below = link.receivers.iter().fold(0u64, |m, r| m | 1 << r);
            let reached: u64 = masks
                .iter()
                .zip(counts)
                .filter(|(mask, _)| **mask & below != 0)
                .map(|(_, count)| count)
                .sum();
            reached as f64 / total.max(1) as f64
        })
        .collect();
    let reach: Vec<f64> = tree
        .links
        .iter()
        .enumerate()
        .map(|(k, link)| {
            if link.is_leaf() {
                gamma[k]
            } else {
                let children: Vec<f64> = link.children.iter().map(|c| gamma[*c]).collect();
                solve_reach(gamma[k], &children)
            }
        })
        .collect();
    tree.links
        .iter()
        .enumerate()
        .map(|(k, link)| {
            let above = link.parent.map_or(1.0, |p| reach[p]);
            (above > 0.0).then(|| reach[k] / above)
        })
        .collect()
}

/// `A_k` from `gamma_k` and its children's gammas: the root of
/// `f(A) = 1 - gamma/A - prod(1 - gamma_j/A)` above `gamma`. `f(gamma) <= 0` and `f`
/// turns positive for large `A` when the children's gammas add up to more than
/// `gamma` (some probe reached two children); otherwise no probe shows the branch
/// point passing something to two children and the estimate is 1 (no loss above it is
/// visible).
fn solve_reach(gamma: f64, children: &[f64]) -> f64 {
    if gamma <= 0.0 {
        return 0.0;
    }
    // A child that got every probe the subtree got: the root is `gamma` itself (its
    // link lost nothing), exactly, where bisection would stop a rounding error above.
    if children.iter().any(|g| *g >= gamma) {
        return gamma;
    }
    let f = |a: f64| 1.0 - gamma / a - children.iter().map(|g| 1.0 - g / a).product::<f64>();
    let mut low = gamma;
    let mut high = 1.0f64.max(gamma);
    while f(high) <= 0.0 {
        high *= 2.0;
        if high > 1e6 {
            return 1.0;
        }
    }
    for _ in 0..100 {
        let mid = 0.5 * (low + high);
        if f(mid) > 0.0 {
            high = mid;
        } else {
            low = mid;
        }
        if high - low < 1e-12 {
            break;
        }
    }
    0.5 * (low + high)
}

/// One link's loss estimate and interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossEstimate {
    /// Maximum-likelihood loss, clamped to 0..=1; 0 when unidentifiable.
    pub loss: f64,
    /// Lower end of the interval.
    pub low: f64,
    /// Upper end of the interval.
    pub high: f64,
}

/// Bootstrap settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BootstrapConfig {
    /// Interval coverage, e.g. 0.99.
    pub confidence: f64,
    /// Replicates.
    pub replicates: u32,
    /// Seed: the same run gives the same intervals every time it is inferred.
    pub seed: u64,
}

fn clamp_loss(pass: f64) -> f64 {
    (1.0 - pass).clamp(0.0, 1.0)
}

/// Nearest-rank quantile of an ascending slice.
fn quantile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Loss per logical link with its percentile-bootstrap interval.
pub fn estimate_loss(
    tree: &LogicalTree,
    patterns: &Patterns,
    config: &BootstrapConfig,
) -> Vec<LossEstimate> {
    let point = pass_rates(tree, &patterns.masks, &patterns.counts);
    let mut replicates: Vec<Vec<f64>> = vec![Vec::new(); tree.links.len()];
    let mut rng = SplitMix64::new(config.seed);
    let mut counts = vec![0u64; patterns.counts.len()];
    for _ in 0..config.replicates {
        for (drawn, observed) in counts.iter_mut().zip(&patterns.counts) {
            *drawn = rng.poisson(*observed as f64);
        }
        for (k, pass) in pass_rates(tree, &patterns.masks, &counts)
            .into_iter()
            .enumerate()
        {
            if let Some(pass) = pass {
                replicates[k].push(clamp_loss(pass));
            }
        }
    }
    let tail = (1.0 - config.confidence) / 2.0;
    point
        .into_iter()
        .zip(replicates)
        .map(|(pass, mut draws)| {
            draws.sort_unstable_by(f64::total_cmp);
            match (pass, quantile(&draws, tail), quantile(&draws, 1.0 - tail)) {
                (Some(pass), Some(low), Some(high)) => LossEstimate {
                    loss: clamp_loss(pass),
                    low,
                    high,
                },
                _ => LossEstimate {
                    loss: 0.0,
                    low: 0.0,
                    high: 1.0,
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_leaf_branch_point_by_hand() {
        // A = 0.8 above a binary branch, leaves pass 0.9 and 0.5: gamma_1 = 0.72,
        // gamma_2 = 0.4, gamma_k = 0.8 * (1 - 0.1 * 0.5) = 0.76.
        let a = solve_reach(0.76, &[0.72, 0.4]);
        assert!((a - 0.8).abs() < 1e-9, "{a}");
    }

    #[test]
    fn disjoint_children_give_no_visible_loss_above() {
        assert_eq!(solve_reach(0.5, &[0.25, 0.25]), 1.0);
        assert_eq!(solve_reach(0.0, &[0.0, 0.0]), 0.0);
    }

    #[test]
    fn quantiles_use_nearest_rank() {
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.5), Some(2.0));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
