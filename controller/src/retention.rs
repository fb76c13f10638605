//! The periodic prune of aged records (see `store::retention`) and of aged
//! flow files (see `flows::prune`): one loop, on the leader only.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::leader::LeaderGate;

pub use crate::store::retention::Retention;
use crate::store::Store;

/// Between two prunes. Records outlive their retention by at most this.
pub(crate) const PRUNE_PERIOD: Duration = Duration::from_secs(600);

/// How long flow files are kept unless configured: a week, enough to look
/// back over the last days' runs, like the node logs' default.
pub const DEFAULT_FLOW_RETENTION: Duration = Duration::from_secs(7 * 86_400);

/// The flow files to prune: the whole archive root (with a shared
/// `--flow-dir`, every replica's sub-directory, a dead replica's too) and
/// how long they are kept.
#[derive(Debug, Clone)]
pub(crate) struct FlowRetention {
    pub root: PathBuf,
    pub kept_for: Duration,
}

/// Prune at start (a controller that was down a week catches up at once),
/// then every `period`, until `cancel`.
pub(crate) async fn prune_forever(
    store: Store,
    retention: Retention,
    flows: FlowRetention,
    period: Duration,
    leader: Arc<LeaderGate>,
    cancel: CancellationToken,
) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if !leader.is_leader() {
            continue;
        }
        match store.prune_aged(&retention).await {
            Ok(report) => {
                for (table, deleted) in report.into_iter().filter(|(_, n)| *n > 0) {
                    tracing::info!(table, deleted, "pruned records past their retention");
                }
            }
            Err(e) => tracing::warn!(error = %e, "retention prune failed; retrying next period"),
        }
        match crate::flows::prune::prune_aged(flows.root.clone(), flows.kept_for).await {
            Ok(pruned) => {
                if pruned.removed > 0 || pruned.failed > 0 {
                    tracing::info!(
                        dir = %flows.root.display(),
                        removed = pruned.removed,
                        failed = pruned.failed,
                        "pruned flow files past their retention"
                    );
                }
            }
            Err(e) => tracing::warn!(
                dir = %flows.root.display(),
                error = %e,
                "flow file prune failed; retrying next period"
            ),
        }
    }
}
