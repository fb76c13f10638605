//! Exponential backoff for reaching the controller.
//!
//! The cap is the heartbeat interval: once the controller is back, the agent
//! notices within one interval, so a restarted controller sees every node
//! online again within two intervals.

use std::time::Duration;

/// Doubling delay from `initial` up to `cap`, with up to 20 % random
/// reduction so a fleet of agents does not reconnect in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff starting at `initial`, never exceeding `cap`.
    pub fn new(initial: Duration, cap: Duration) -> Self {
        let initial = initial.min(cap);
        Backoff {
            initial,
            cap,
            next: initial,
        }
    }

    /// Change the cap (the controller can change the heartbeat interval).
    pub fn set_cap(&mut self, cap: Duration) {
        self.cap = cap;
        self.initial = self.initial.min(cap);
        self.next = self.next.min(cap);
    }

    /// The delay before the next attempt, without jitter.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// Delay to wait now; the following one doubles.
    pub fn next_delay(&mut self) -> Duration {
        let current = self.next;
        self.next = (self.next * 2).min(self.cap);
        let jitter_fraction = f64::from(rand_fraction()) * 0.2;
        current.mul_f64(1.0 - jitter_fraction)
    }

    /// Start over after a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// A cheap value in [0, 1) for jitter; no need for a cryptographic source.
fn rand_fraction() -> f32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos % 1000) as f32 / 1000.0
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
