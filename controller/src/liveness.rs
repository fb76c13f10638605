//! Turns nodes whose heartbeats stopped into `offline` nodes.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::leader::LeaderGate;
use crate::store::Store;

/// Sweep often enough that a node is reported offline at most a quarter of
/// the deadline late, but never busy-loop on tiny test deadlines.
fn sweep_period(offline_after: Duration) -> Duration {
    (offline_after / 4).clamp(Duration::from_millis(20), Duration::from_secs(5))
}

pub(crate) async fn sweep_forever(
    store: Store,
    offline_after: Duration,
    leader: Arc<LeaderGate>,
    cancel: CancellationToken,
) {
    let mut ticker = tokio::time::interval(sweep_period(offline_after));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        // One replica sweeps, so a dead node is reported offline once.
        if !leader.is_leader() {
            continue;
        }
        match store.sweep(offline_after).await {
            Ok(0) => {}
            Ok(count) => tracing::debug!(count, "nodes marked offline"),
            Err(e) => tracing::error!(error = %e, "liveness sweep failed; retrying next period"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_period_is_bounded() {
        assert_eq!(
            sweep_period(Duration::from_millis(10)),
            Duration::from_millis(20)
        );
        assert_eq!(
            sweep_period(Duration::from_secs(15)),
            Duration::from_millis(3750)
        );
        assert_eq!(
            sweep_period(Duration::from_secs(600)),
            Duration::from_secs(5)
        );
    }
}
