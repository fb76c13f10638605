//! Per-link delay variance from the covariance of receivers' one-way delays (Duffield
//! and Lo Presti, "Multicast inference of packet delay variance at interior network
//! links", INFOCOM 2000).
//!
//! A probe's delay to a receiver is the sum of independent per-link delays on its
//! path, so for receivers `i`, `j` whose paths part at node `k`,
//! `Cov(D_i, D_j) = Var(delay from the source to k)`, and `Var(D_i)` is the variance of
//! the whole path to `i`. The variance of the path to every logical node follows (the
//! mean over all pairs that part there, weighted by their common probes), and the
//! variance of a link is that of the path to its end minus that of the path to its
//! start. A fixed clock offset between sender and receiver shifts every delay of that
//! receiver alike, so none of this needs synchronised clocks.
//!
//! What a run keeps for this is the covariance of every pair of receivers (and each
//! one's variance) over the probes both received: `R (R + 1) / 2` numbers for `R`
//! receivers, against `probes x R` per-probe delays, and everything this estimator reads.

use measurelab_api::result::DelayCovariance;

use crate::tree::LogicalTree;

/// Marks a probe a receiver did not get in [`ProbeDelays::delays_ns`].
pub const NOT_RECEIVED: i64 = i64::MIN;

/// One receiver's one-way delay of every probe of the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeDelays {
    /// The receiving point.
    pub point: String,
    /// Delay of probe `s` in ns at index `s`, [`NOT_RECEIVED`] when lost.
    pub delays_ns: Vec<i64>,
}

/// Covariances of every pair of receivers (including each with itself) over the probes
/// both received. Pairs with fewer than two common probes are left out.
pub fn delay_covariances(receivers: &[ProbeDelays]) -> Vec<DelayCovariance> {
    // Delays are shifted by each receiver's first delay before summing, so the sums of
    // squares stay small and f64 keeps their precision whatever the clock offset.
    let shifts: Vec<i64> = receivers
        .iter()
        .map(|r| {
            r.delays_ns
                .iter()
                .copied()
                .find(|d| *d != NOT_RECEIVED)
                .unwrap_or(0)
        })
        .collect();
    let mut covariances = Vec::new();
    for a in 0..receivers.len() {
        for b in a..receivers.len() {
            let (mut n, mut sum_a, mut sum_b, mut sum_ab) = (0u64, 0f64, 0f64, 0f64);
            for (da, db) in receivers[a].delays_ns.iter().zip(&receivers[b].delays_ns) {
                if *da == NOT_RECEIVED || *db == NOT_RECEIVED {
                    continue;
                }
                let x = (da - shifts[a]) as f64 / 1_000.0;
                let y = (db - shifts[b]) as f64 / 1_000.0;
                n += 1;
                sum_a += x;
                sum_b += y;
                sum_ab += x * y;
            }
            if n < 2 {
                continue;
            }
            let count = n as f64;
            covariances.push(DelayCovariance {
                a: receivers[a].point.clone(),
                b: receivers[b].point.clone(),
                common_probes: n,
                covariance_us2: (sum_ab - sum_a * sum_b / count) / (count - 1.0),
            });
        }
    }
    covariances
}

/// Delay variance of every logical link in µs², clamped at 0 (a negative estimate is
/// sampling noise around a link that adds no variance). `None` when a covariance the
/// estimate needs is missing.
pub fn link_delay_variances(
    tree: &LogicalTree,
    receivers: &[String],
    covariances: &[DelayCovariance],
) -> Option<Vec<f64>> {
    let lookup = |i: usize, j: usize| {
        let (a, b) = (&receivers[i], &receivers[j]);
        covariances
            .iter()
            .find(|c| (c.a == *a && c.b == *b) || (c.a == *b && c.b == *a))
    };
    let mut path = Vec::with_capacity(tree.links.len());
    for link in &tree.links {
        let variance = if link.is_leaf() {
            let r = *link.receivers.first()?;
            lookup(r, r)?.covariance_us2
        } else {
            let (mut weighted, mut weight) = (0.0, 0.0);
            for (x, first) in link.children.iter().enumerate() {
                for second in &link.children[x + 1..] {
                    for i in &tree.links[*first].receivers {
                        for j in &tree.links[*second].receivers {
                            let c = lookup(*i, *j)?;
                            weighted += c.covariance_us2 * c.common_probes as f64;
                            weight += c.common_probes as f64;
                        }
                    }
                }
            }
            if weight == 0.0 {
                return None;
            }
            weighted / weight
        };
        path.push(variance);
    }
    Some(
        tree.links
            .iter()
            .enumerate()
            .map(|(k, link)| (path[k] - link.parent.map_or(0.0, |p| path[p])).max(0.0))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covariance_ignores_clock_offsets_and_lost_probes() {
        let a = ProbeDelays {
            point: "a".into(),
            delays_ns: vec![1_000, 3_000, NOT_RECEIVED, 2_000],
        };
        // Same variation, 5 s of clock offset, one probe lost elsewhere.
        let b = ProbeDelays {
            point: "b".into(),
            delays_ns: vec![5_000_001_000, 5_000_003_000, 5_000_009_000, NOT_RECEIVED],
        };
        let covs = delay_covariances(&[a, b]);
        let ab = covs.iter().find(|c| c.a == "a" && c.b == "b").unwrap();
        assert_eq!(ab.common_probes, 2);
        // Common probes 0 and 1: delays 1 and 3 us at both, covariance 2 us².
        assert!((ab.covariance_us2 - 2.0).abs() < 1e-9, "{ab:?}");
        let aa = covs.iter().find(|c| c.a == "a" && c.b == "a").unwrap();
        assert_eq!(aa.common_probes, 3);
        assert!((aa.covariance_us2 - 1.0).abs() < 1e-9, "{aa:?}");
    }
}
