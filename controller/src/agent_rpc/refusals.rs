//! Refused registrations, counted instead of stored one row each.
//!
//! Register is the one call anyone who reaches the gRPC port may make. An
//! event per refusal let a stranger grow the events table (an fsynced write
//! each) as fast as they could send. The operator still needs to see that a
//! node is being refused, and why: the first refusal of each period is an
//! event as before, and the rest of the period is one summary event with
//! counts per reason and a few of the names and sources.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::{NewEvent, Store};

/// Default period over which refusals after the first are summed up.
pub(crate) const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(60);
/// How many names (with their source) a summary quotes.
const SAMPLES: usize = 5;

#[derive(Default)]
struct Period {
    /// An event was written for this period's first refusal.
    reported_first: bool,
    /// Refusals after the first, by reason.
    counts: BTreeMap<String, u64>,
    /// `name from source`, the first few.
    samples: Vec<String>,
}

/// Shared by every Register call of one controller.
#[derive(Default)]
pub(crate) struct RefusalLog {
    period: Mutex<Period>,
}

impl RefusalLog {
    /// Count a refusal; returns the event to write when it is the period's
    /// first.
    pub fn note(&self, name: &str, source: &str, reason: &str) -> Option<NewEvent> {
        let mut period = self.period.lock().unwrap_or_else(|e| e.into_inner());
        if !period.reported_first {
            period.reported_first = true;
            return Some(NewEvent {
                reason: "RegistrationRefused",
                object_kind: "node",
                object_id: name.to_string(),
                message: format!("registration of node {name:?} from {source} refused: {reason}"),
            });
        }
        *period.counts.entry(reason.to_string()).or_default() += 1;
        if period.samples.len() < SAMPLES {
            period.samples.push(format!("{name:?} from {source}"));
        }
        None
    }

    /// Close the period: the summary of what `note` counted, if anything.
    pub fn close_period(&self) -> Option<NewEvent> {
        let period = std::mem::take(&mut *self.period.lock().unwrap_or_else(|e| e.into_inner()));
        let total: u64 = period.counts.values().sum();
        if total == 0 {
            return None;
        }
        let by_reason = period
            .counts
            .iter()
            .map(|(reason, count)| format!("{reason}: {count}"))
            .collect::<Vec<_>>()
            .join(", ");
        let more = if total > period.samples.len() as u64 {
            ", …"
        } else {
            ""
        };
        Some(NewEvent {
            reason: "RegistrationsRefused",
            object_kind: "node",
            object_id: String::new(),
            message: format!(
                "{total} more registrations refused ({by_reason}); e.g. {}{more}",
                period.samples.join(", ")
            ),
        })
    }

    /// Write a summary every `interval` until `cancel`, and a last one then.
    pub async fn report_forever(
        &self,
        store: Store,
        interval: Duration,
        cancel: CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            let stopping = tokio::select! {
                _ = ticker.tick() => false,
                () = cancel.cancelled() => true,
            };
            if let Some(summary) = self.close_period() {
                if let Err(e) = store.record_event(summary).await {
                    tracing::warn!(error = %e, "cannot record the refused-registrations summary");
                }
            }
            if stopping {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_per_period_then_a_summary_with_counts_per_reason() {
        let log = RefusalLog::default();
        let first = log.note("n1", "10.0.0.9:5000", "wrong join token").unwrap();
        assert_eq!(first.object_id, "n1");
        for i in 0..7 {
            let reason = if i % 2 == 0 {
                "wrong join token"
            } else {
                "no join token"
            };
            assert!(log
                .note(&format!("x{i}"), "10.0.0.9:5001", reason)
                .is_none());
        }
        let summary = log.close_period().unwrap();
        assert_eq!(summary.reason, "RegistrationsRefused");
        assert!(
            summary
                .message
                .starts_with("7 more registrations refused (no join token: 3, wrong join token: 4); e.g. \"x0\" from 10.0.0.9:5001"),
            "{}",
            summary.message
        );
        assert_eq!(summary.message.matches(" from ").count(), SAMPLES);
        // A new period starts with an event again, and an idle one says nothing.
        assert!(log.close_period().is_none());
        assert!(log.note("n2", "s", "no join token").is_some());
        assert!(log.close_period().is_none());
    }
}
