//! Polling the controller until an object converges, bounded by a timeout and
//! stopped by Ctrl-C (see `cancel.rs`). Waiting writes nothing.

use std::future::Future;
use std::time::Duration;

use measurelab_api::client::ClientError;
use measurelab_backoff::{Backoff, Growth};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// First delay before asking the controller again: a namespace VM is often
/// ready a few hundred milliseconds after it was requested, and a flat 1 s
/// poll added up to a second to every create.
pub const POLL_INTERVAL_FIRST: Duration = Duration::from_millis(100);
/// Longest delay between two looks: slow waits (QEMU guests boot in about
/// 10 s) cost the controller one request a second.
pub const POLL_INTERVAL_MAX: Duration = Duration::from_secs(1);

/// One look at the object.
pub enum Poll<T> {
    /// Converged; stop waiting.
    Done(T),
    /// Not yet; the text says what was seen (for the timeout message).
    Pending(String),
}

/// Why a wait ended without converging.
#[derive(Debug)]
pub enum WaitEnd {
    /// The timeout expired; the last thing seen.
    TimedOut(String),
    /// Terraform was interrupted.
    Cancelled,
    /// The controller answered with an error (or not at all).
    Client(ClientError),
}

/// Call `look` until it returns [`Poll::Done`]: at once, then after
/// [`POLL_INTERVAL_FIRST`], growing to [`POLL_INTERVAL_MAX`].
pub async fn until<T, F, Fut>(
    stop: &CancellationToken,
    timeout: Duration,
    mut look: F,
) -> Result<T, WaitEnd>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Poll<T>, ClientError>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_seen = "nothing yet".to_string();
    // Half as long again each time: a doubling would overshoot the few
    // hundred milliseconds a namespace VM takes. One client, so no jitter.
    let mut interval = Backoff::new(POLL_INTERVAL_FIRST, POLL_INTERVAL_MAX)
        .without_jitter()
        .with_growth(Growth::HalfAgain);
    loop {
        let looked = tokio::select! {
            result = tokio::time::timeout_at(deadline, look()) => result,
            _ = stop.cancelled() => return Err(WaitEnd::Cancelled),
        };
        match looked {
            Ok(Ok(Poll::Done(value))) => return Ok(value),
            Ok(Ok(Poll::Pending(seen))) => last_seen = seen,
            Ok(Err(err)) => return Err(WaitEnd::Client(err)),
            Err(_elapsed) => {}
        }
        if Instant::now() >= deadline {
            return Err(WaitEnd::TimedOut(last_seen));
        }
        tokio::select! {
            _ = tokio::time::sleep_until((Instant::now() + interval.next_delay()).min(deadline)) => {}
            _ = stop.cancelled() => return Err(WaitEnd::Cancelled),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn returns_once_done() {
        let calls = AtomicU32::new(0);
        let result = until(
            &CancellationToken::new(),
            Duration::from_secs(30),
            || async {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                Ok(if n >= 2 {
                    Poll::Done(n)
                } else {
                    Poll::Pending(format!("call {n}"))
                })
            },
        )
        .await;
        assert_eq!(result.ok(), Some(2));
    }

    #[tokio::test(start_paused = true)]
    async fn polls_soon_then_backs_off_to_the_maximum() {
        let start = Instant::now();
        let looks = std::sync::Mutex::new(Vec::new());
        let result = until(
            &CancellationToken::new(),
            Duration::from_secs(30),
            || async {
                let mut looks = looks.lock().unwrap();
                looks.push(start.elapsed());
                Ok(if looks.len() == 12 {
                    Poll::Done(())
                } else {
                    Poll::Pending("not yet".into())
                })
            },
        )
        .await;
        assert!(result.is_ok());
        let looks = looks.into_inner().unwrap();
        let gaps: Vec<Duration> = looks.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(looks[0], Duration::ZERO, "the first look is immediate");
        assert_eq!(gaps[0], POLL_INTERVAL_FIRST);
        assert!(
            gaps.windows(2).all(|w| w[1] >= w[0]),
            "delays never shrink: {gaps:?}"
        );
        assert_eq!(*gaps.last().unwrap(), POLL_INTERVAL_MAX);
        assert!(gaps.iter().all(|g| *g <= POLL_INTERVAL_MAX));
        // A VM ready 300 ms after the request is seen within half a second.
        assert!(looks
            .iter()
            .any(|t| *t >= Duration::from_millis(300) && *t <= Duration::from_millis(500)));
    }

    #[tokio::test(start_paused = true)]
    async fn times_out_with_the_last_thing_seen() {
        let result: Result<(), _> = until(
            &CancellationToken::new(),
            Duration::from_secs(3),
            || async { Ok(Poll::Pending("still pending".into())) },
        )
        .await;
        assert!(matches!(result, Err(WaitEnd::TimedOut(seen)) if seen == "still pending"));
    }

    #[tokio::test(start_paused = true)]
    async fn stops_when_cancelled() {
        let stop = CancellationToken::new();
        stop.cancel();
        let result: Result<(), _> = until(&stop, Duration::from_secs(300), || async {
            Ok(Poll::Pending("x".into()))
        })
        .await;
        assert!(matches!(result, Err(WaitEnd::Cancelled)));
    }
}
