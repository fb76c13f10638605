//! Prunes guest usage samples older than the retention window
//! (`ControllerConfig::usage_retention`).

use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::store::{vm_usage, Store, StoreError};

/// Prune often enough that rows outlive the window by at most a tenth of
/// it, but not more often than once a second nor less than every 10 min.
fn prune_period(retention: Duration) -> Duration {
    (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(600))
}

/// Remove the samples of steps that started before `now - retention`.
pub(crate) async fn prune_once(
    store: &Store,
    retention: Duration,
    now: OffsetDateTime,
) -> Result<usize, StoreError> {
    let cutoff = (now - retention).unix_timestamp();
    store
        .resources()
        .transact(move |cx| vm_usage::prune(cx.tx, cutoff))
        .await
}

pub(crate) async fn prune_forever(store: Store, retention: Duration, cancel: CancellationToken) {
    let mut ticker = tokio::time::interval(prune_period(retention));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match prune_once(&store, retention, OffsetDateTime::now_utc()).await {
            Ok(0) => {}
            Ok(count) => tracing::debug!(count, "pruned guest usage samples"),
            Err(e) => tracing::error!(error = %e, "usage pruning failed; retrying next period"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_period_is_bounded() {
        assert_eq!(prune_period(Duration::from_secs(5)), Duration::from_secs(1));
        assert_eq!(
            prune_period(Duration::from_secs(3600)),
            Duration::from_secs(360)
        );
        assert_eq!(
            prune_period(Duration::from_secs(86_400)),
            Duration::from_secs(600)
        );
    }
}
