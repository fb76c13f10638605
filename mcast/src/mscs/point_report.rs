//! Reports the MSCS's point list to the platform (`POST /points` of the guest agent's
//! local API, relayed to the controller), so the list is readable at the controller:
//! at once when a point joins, leaves, moves or changes state, and every
//! [`REFRESH`] otherwise, so the controller's copy of the last-seen times stays
//! recent and a restarted controller or a lost relay gets the list again.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::engine::Mscs;
use super::registry::PointStatus;
use crate::platform::PlatformClient;

/// How often the list is looked at: a point turns missing when its deadline passes,
/// with no event, so only looking finds it.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// Least time between two posts, whatever changes: the controller stores every one.
pub const MIN_GAP: Duration = Duration::from_secs(2);
/// Longest time between two posts while nothing changes.
pub const REFRESH: Duration = Duration::from_secs(30);

/// What makes a list different for the controller: everything but the heartbeat
/// times, which move on every heartbeat and are sent with the refresh.
fn shape(points: &[PointStatus]) -> Vec<PointStatus> {
    points
        .iter()
        .map(|p| PointStatus {
            last_heartbeat_unix_ms: None,
            ..p.clone()
        })
        .collect()
}

/// The last post that the platform took.
#[derive(Debug, Clone)]
pub struct Sent {
    shape: Vec<PointStatus>,
    at: Instant,
}

/// Whether `points` should be posted at `now`, given the last post taken and the
/// last attempt (taken or not).
pub fn due(
    points: &[PointStatus],
    sent: Option<&Sent>,
    last_attempt: Option<Instant>,
    now: Instant,
) -> bool {
    if last_attempt.is_some_and(|at| now.duration_since(at) < MIN_GAP) {
        return false;
    }
    match sent {
        None => true,
        Some(sent) => sent.shape != shape(points) || now.duration_since(sent.at) >= REFRESH,
    }
}

/// Posts the list as [`due`] says until `shutdown` flips to true.
pub async fn run(mscs: Mscs, client: PlatformClient, mut shutdown: watch::Receiver<bool>) {
    let mut sent: Option<Sent> = None;
    let mut last_attempt: Option<Instant> = None;
    let mut failing = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let points = mscs.points();
        let now = Instant::now();
        if due(&points, sent.as_ref(), last_attempt, now) {
            last_attempt = Some(now);
            let outcome = tokio::select! {
                outcome = client.post_points(&points) => outcome,
                _ = shutdown.changed() => return,
            };
            match outcome {
                Ok(()) => {
                    if failing {
                        info!(
                            api = client.base(),
                            "the platform takes the point list again"
                        );
                    }
                    failing = false;
                    debug!(points = points.len(), "point list reported to the platform");
                    sent = Some(Sent {
                        shape: shape(&points),
                        at: now,
                    });
                }
                // Retried after MIN_GAP; said once per failing stretch, since an old
                // guest agent without /points answers 404 every time.
                Err(err) if !failing => {
                    failing = true;
                    warn!(cause = %err, "cannot report the point list to the platform; will retry");
                }
                Err(err) => debug!(cause = %err, "point list report failed again"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(LOOK_EVERY) => {}
            _ = shutdown.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mscs::registry::{PointOrigin, PointState};

    fn point(state: PointState, heartbeat: u64) -> PointStatus {
        PointStatus {
            name: "p1".into(),
            control_addr: "10.0.0.2:7001".parse().unwrap(),
            data_addr: Some("10.0.0.2".parse().unwrap()),
            origin: PointOrigin::Registered,
            state,
            last_heartbeat_unix_ms: Some(heartbeat),
            protocol_version: Some(1),
        }
    }

    #[test]
    fn a_change_is_posted_at_once_a_heartbeat_only_with_the_refresh() {
        let t0 = Instant::now();
        let active = [point(PointState::Active, 1_000)];
        assert!(due(&active, None, None, t0), "the first list goes out");
        let sent = Sent {
            shape: shape(&active),
            at: t0,
        };
        let later = t0 + MIN_GAP;
        let heartbeat = [point(PointState::Active, 5_000)];
        assert!(!due(&heartbeat, Some(&sent), Some(t0), later));
        assert!(due(&heartbeat, Some(&sent), Some(t0), t0 + REFRESH));
        let missing = [point(PointState::Missing, 1_000)];
        assert!(due(&missing, Some(&sent), Some(t0), later));
        assert!(
            !due(&missing, Some(&sent), Some(t0), t0 + MIN_GAP / 2),
            "never twice within MIN_GAP"
        );
        assert!(due(&[], Some(&sent), Some(t0), later), "a point left");
    }

    #[test]
    fn a_failed_post_is_retried_after_the_gap() {
        let t0 = Instant::now();
        let list = [point(PointState::Active, 1_000)];
        assert!(!due(&list, None, Some(t0), t0 + MIN_GAP / 2));
        assert!(due(&list, None, Some(t0), t0 + MIN_GAP));
    }
}
