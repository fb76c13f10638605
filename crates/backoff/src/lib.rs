//! The one retry delay of the workspace: a delay that grows from `initial`
//! to `cap` after each failure and starts over after a success.
//!
//! Used by the node agent (controller session, guest channel, service host),
//! the guest agent (channel reconnects), `mcast` (platform API) and the
//! provider (waiting for an object to converge). It has no dependencies so
//! every crate can use it without pulling in another's.
//!
//! By default the delay doubles and up to a fifth is taken off at random, so a
//! fleet of agents that lost the controller together does not come back in
//! lockstep. [`Backoff::without_jitter`] gives exact delays where only one
//! client retries (or a test pins them).
#![warn(missing_docs)]

use std::time::Duration;

/// How much the delay grows after each attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Growth {
    /// Twice as long each time.
    Double,
    /// Half as long again each time (x1.5): for polling where the awaited
    /// event often comes soon and a doubling would overshoot it.
    HalfAgain,
}

impl Growth {
    fn apply(self, delay: Duration) -> Duration {
        match self {
            Growth::Double => delay.saturating_mul(2),
            Growth::HalfAgain => delay.saturating_add(delay / 2),
        }
    }
}

/// Largest fraction of a delay that jitter takes off.
const JITTER_MAX_FRACTION: f64 = 0.2;

/// A growing delay between retries, from `initial` up to `cap`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    cap: Duration,
    next: Duration,
    growth: Growth,
    jitter: bool,
}

impl Backoff {
    /// A backoff starting at `initial` (at most `cap`), doubling up to `cap`,
    /// with jitter.
    pub fn new(initial: Duration, cap: Duration) -> Self {
        let initial = initial.min(cap);
        Backoff {
            initial,
            cap,
            next: initial,
            growth: Growth::Double,
            jitter: true,
        }
    }

    /// The same backoff with exact delays (no random reduction).
    pub fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// The same backoff growing by `growth` instead of doubling.
    pub fn with_growth(mut self, growth: Growth) -> Self {
        self.growth = growth;
        self
    }

    /// Change the cap (the controller can change the heartbeat interval); a
    /// lower cap applies to the very next delay.
    pub fn set_cap(&mut self, cap: Duration) {
        self.cap = cap;
        self.initial = self.initial.min(cap);
        self.next = self.next.min(cap);
    }

    /// The delay before the next attempt, without jitter.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// Delay to wait now; the following one grows.
    pub fn next_delay(&mut self) -> Duration {
        let current = self.next;
        self.next = self.growth.apply(self.next).min(self.cap);
        if self.jitter {
            current.mul_f64(1.0 - rand_fraction() * JITTER_MAX_FRACTION)
        } else {
            current
        }
    }

    /// Start over after a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// A cheap value in [0, 1) for jitter; no need for a cryptographic source.
fn rand_fraction() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(nanos % 1000) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut peeks = Vec::new();
        for _ in 0..6 {
            peeks.push(b.peek().as_millis());
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(1), "{d:?} exceeds the cap");
        }
        assert_eq!(peeks, vec![100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.peek(), Duration::from_millis(100));
    }

    #[test]
    fn jitter_only_shortens_and_by_at_most_a_fifth() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        for _ in 0..50 {
            let d = b.next_delay();
            assert!(
                d <= Duration::from_secs(1) && d >= Duration::from_millis(800),
                "{d:?}"
            );
        }
    }

    #[test]
    fn without_jitter_the_delays_are_exact() {
        let mut b =
            Backoff::new(Duration::from_millis(100), Duration::from_secs(5)).without_jitter();
        let delays: Vec<u128> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    }

    #[test]
    fn half_again_grows_by_half_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1))
            .without_jitter()
            .with_growth(Growth::HalfAgain);
        let delays: Vec<Duration> = (0..7).map(|_| b.next_delay()).collect();
        let expected_micros = [
            100_000, 150_000, 225_000, 337_500, 506_250, 759_375, 1_000_000,
        ];
        assert_eq!(delays, expected_micros.map(Duration::from_micros).to_vec());
    }

    #[test]
    fn lowering_the_cap_applies_at_once() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        for _ in 0..10 {
            b.next_delay();
        }
        assert_eq!(b.peek(), Duration::from_secs(30));
        b.set_cap(Duration::from_secs(2));
        assert_eq!(b.peek(), Duration::from_secs(2));
        let initial_above_cap = Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(initial_above_cap.peek(), Duration::from_secs(1));
    }
}
