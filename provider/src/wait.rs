//! Polling the controller until an object converges, bounded by a timeout and
//! stopped by Ctrl-C (see `cancel.rs`). Waiting writes nothing.

use std::future::Future;
use std::time::Duration;

use measurelab_api::client::ClientError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often to ask the controller again.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

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

/// Call `look` every [`POLL_INTERVAL`] until it returns [`Poll::Done`].
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
            _ = tokio::time::sleep_until((Instant::now() + POLL_INTERVAL).min(deadline)) => {}
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
