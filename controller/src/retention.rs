//! The periodic prune of aged records (see `store::retention`).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::leader::LeaderGate;

pub use crate::store::retention::Retention;
use crate::store::Store;

/// Between two prunes. Records outlive their retention by at most this.
pub(crate) const PRUNE_PERIOD: Duration = Duration::from_secs(600);

/// Prune at start (a controller that was down a week catches up at once),
/// then every `period`, until `cancel`.
pub(crate) async fn prune_forever(
    store: Store,
    retention: Retention,
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
    }
}
