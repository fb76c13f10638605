//! Where in the distribution tree a multicast run's loss and delay variation arise.
//!
//! Multicast tomography from receipts and delays measured at the receivers only: every
//! probe is one experiment on the whole tree, and which receivers got it (and how late)
//! pins loss and delay variance on individual links.
//! - [`receipts`]: per-probe receipt bits and their compressed form in the result.
//! - [`tree`]: the run's tree from placement, reduced to the logical tree.
//! - [`loss`]: MINC maximum-likelihood loss per link with bootstrap intervals.
//! - [`delay`]: per-link delay variance from delay covariances.
//! - [`simulate`]: runs over a tree with known per-link loss and delay, for tests and
//!   benchmarks.
//!
//! [`infer`] puts them together over a [`ResultDocument`]. Pure computation: no I/O, no
//! clock, seeded randomness, so a stored run infers the same way every time.

use measurelab_api::result::{
    Bottleneck, BottleneckCause, DistributionTree, Inference, LinkInference, ReceiverStatus,
    ResultDocument, DEFAULT_BOTTLENECK_DELAY_STDDEV_US, DEFAULT_BOTTLENECK_LOSS_THRESHOLD,
};

pub mod delay;
pub mod loss;
pub mod receipts;
mod rng;
pub mod simulate;
pub mod tree;

pub use rng::SplitMix64;

use loss::{BootstrapConfig, LossError, Patterns};
use receipts::{ReceiptBits, ReceiptError};
use tree::{LogicalTree, TreeError};

/// Settings of one inference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InferenceConfig {
    /// Coverage of the loss intervals.
    pub confidence: f64,
    /// Bootstrap replicates.
    pub replicates: u32,
    /// Bootstrap seed.
    pub seed: u64,
    /// Loss above which a link is a bottleneck (its interval must also exclude 0, so
    /// sampling noise on a clean link never is one).
    pub loss_threshold: f64,
    /// Delay standard deviation above which a link is a bottleneck, µs.
    pub delay_stddev_threshold_us: f64,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            confidence: 0.99,
            // The 0.5 % tails of a 99 % interval rest on 5 replicates each.
            replicates: 1000,
            seed: 0x6d69_6e63,
            loss_threshold: DEFAULT_BOTTLENECK_LOSS_THRESHOLD,
            delay_stddev_threshold_us: DEFAULT_BOTTLENECK_DELAY_STDDEV_US,
        }
    }
}

/// Why a run cannot be inferred.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InferenceError {
    /// The document has no tree.
    #[error("the result has no distribution tree")]
    NoTree,
    /// The tree does not fit the receivers.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// A receipt bitmap cannot be read.
    #[error("receivers[{index}].receipts: {source}")]
    Receipts {
        /// Position of the receiver in the document.
        index: usize,
        /// What is wrong with it.
        source: ReceiptError,
    },
    /// The receipts cannot be combined.
    #[error(transparent)]
    Loss(#[from] LossError),
}

/// Infers per-link loss (and delay variance, when the run carries covariances) over
/// `tree` from the receipts of `document`'s receivers that reported them, and lists the
/// links above the thresholds.
pub fn infer(
    document: &ResultDocument,
    tree: &DistributionTree,
    config: &InferenceConfig,
) -> Result<(Inference, Vec<Bottleneck>), InferenceError> {
    let mut names = Vec::new();
    let mut bits = Vec::new();
    for (index, receiver) in document.receivers.iter().enumerate() {
        let Some(receipts) = receiver.receipts.as_ref() else {
            continue;
        };
        if receiver.status != ReceiverStatus::Ok {
            continue;
        }
        bits.push(
            ReceiptBits::decode(receipts)
                .map_err(|source| InferenceError::Receipts { index, source })?,
        );
        names.push(receiver.point.clone());
    }
    let logical = LogicalTree::new(tree, &names)?;
    let patterns = Patterns::tally(&bits)?;
    let losses = loss::estimate_loss(
        &logical,
        &patterns,
        &BootstrapConfig {
            confidence: config.confidence,
            replicates: config.replicates,
            seed: config.seed,
        },
    );
    let variances = delay::link_delay_variances(&logical, &names, &document.delay_covariances);
    let links: Vec<LinkInference> = logical
        .links
        .iter()
        .zip(&losses)
        .enumerate()
        .map(|(k, (link, estimate))| LinkInference {
            link: link.name(),
            links: link.links.clone(),
            child: link.child.clone(),
            loss: estimate.loss,
            loss_ci_low: estimate.low,
            loss_ci_high: estimate.high,
            delay_variance_us2: variances.as_ref().map(|v| v[k]),
        })
        .collect();
    let bottlenecks = bottlenecks(&links, config);
    Ok((
        Inference {
            probes: patterns.probes(),
            receivers: names,
            confidence: config.confidence,
            bootstrap_replicates: config.replicates,
            loss_threshold: config.loss_threshold,
            delay_stddev_threshold_us: config.delay_stddev_threshold_us,
            links,
        },
        bottlenecks,
    ))
}

/// The links above a threshold, in tree order.
pub fn bottlenecks(links: &[LinkInference], config: &InferenceConfig) -> Vec<Bottleneck> {
    links
        .iter()
        .filter_map(|link| {
            let stddev = link.delay_variance_us2.map(f64::sqrt);
            let mut causes = Vec::new();
            if link.loss > config.loss_threshold && link.loss_ci_low > 0.0 {
                causes.push(BottleneckCause::Loss);
            }
            if stddev.is_some_and(|s| s > config.delay_stddev_threshold_us) {
                causes.push(BottleneckCause::DelayVariance);
            }
            (!causes.is_empty()).then(|| Bottleneck {
                link: link.link.clone(),
                loss: link.loss,
                loss_ci_low: link.loss_ci_low,
                loss_ci_high: link.loss_ci_high,
                delay_stddev_us: stddev,
                causes,
            })
        })
        .collect()
}
