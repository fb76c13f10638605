//! A receiver's per-probe record (which probes arrived, and each one's one-way delay)
//! and its form on the control connection: what tree inference needs from every
//! receiver, which its summary statistics cannot give.
//!
//! The receiver keeps one `i64` per sequence number up to a limit
//! ([`DEFAULT_PROBE_LOG_CAPACITY`], 8 MiB: 100 s at 10 kpps); a longer run reports no
//! record rather than a truncated one, so inference never mistakes the cut for loss.
//! On the wire the receipts travel as the result document's [`ReceiptBitmap`] and the
//! delays of the received probes as differences from the previous one, in ns: small
//! numbers whatever the clock offset between sender and receiver.
//!
//! The MSCS turns the records into each receiver's `receipts` and the run's
//! `delay_covariances`; the per-probe delays themselves are not stored.

use measurelab_api::result::ReceiptBitmap;
use measurelab_inference::delay::{ProbeDelays, NOT_RECEIVED};
use measurelab_inference::receipts::{ReceiptBits, ReceiptError};
use serde::{Deserialize, Serialize};

/// Probes a receiver records by default.
pub const DEFAULT_PROBE_LOG_CAPACITY: u64 = 1 << 20;

/// The per-probe record while receiving.
#[derive(Debug, Clone)]
pub struct ProbeLog {
    delays_ns: Vec<i64>,
    capacity: u64,
    overflowed: bool,
}

impl ProbeLog {
    /// An empty record of at most `capacity` probes.
    pub fn new(capacity: u64) -> Self {
        Self {
            delays_ns: Vec::new(),
            capacity,
            overflowed: false,
        }
    }

    /// Records the first copy of probe `sequence`.
    pub fn record(&mut self, sequence: u64, delay_ns: i64) {
        if sequence >= self.capacity {
            self.overflowed = true;
            return;
        }
        let index = sequence as usize;
        if index >= self.delays_ns.len() {
            self.delays_ns.resize(index + 1, NOT_RECEIVED);
        }
        // A delay of exactly i64::MIN is not a delay a clock produces; keep the marker
        // unambiguous anyway.
        self.delays_ns[index] = delay_ns.max(NOT_RECEIVED + 1);
    }

    /// The record over the window `0..probes`, or `None` when the window exceeds what
    /// was recorded.
    pub fn report(&self, probes: u64) -> Option<ProbeLogReport> {
        if self.overflowed || probes > self.capacity {
            return None;
        }
        let delay = |seq: u64| {
            self.delays_ns
                .get(seq as usize)
                .copied()
                .unwrap_or(NOT_RECEIVED)
        };
        let bits = ReceiptBits::from_flags((0..probes).map(|seq| delay(seq) != NOT_RECEIVED));
        let mut previous = 0i64;
        let delay_steps_ns = (0..probes)
            .map(delay)
            .filter(|d| *d != NOT_RECEIVED)
            .map(|d| {
                let step = d.wrapping_sub(previous);
                previous = d;
                step
            })
            .collect();
        Some(ProbeLogReport {
            receipts: bits.encode(),
            delay_steps_ns,
        })
    }
}

/// A receiver's per-probe record as it travels to the MSCS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeLogReport {
    /// Which probes of the window arrived.
    pub receipts: ReceiptBitmap,
    /// One-way delay of every received probe, in sequence order, each as the
    /// difference from the previous one (the first from 0), ns.
    pub delay_steps_ns: Vec<i64>,
}

/// Why a reported record cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ProbeLogError {
    /// The receipts do not decode.
    #[error(transparent)]
    Receipts(#[from] ReceiptError),
    /// The delays do not match the receipts.
    #[error("{delays} delays for {received} received probes")]
    DelayCount {
        /// Delays sent.
        delays: usize,
        /// Probes the receipts mark received.
        received: u64,
    },
}

impl ProbeLogReport {
    /// The per-probe delays of `point`, [`NOT_RECEIVED`] where a probe was lost.
    pub fn probe_delays(&self, point: &str) -> Result<ProbeDelays, ProbeLogError> {
        let bits = ReceiptBits::decode(&self.receipts)?;
        if bits.count() != self.delay_steps_ns.len() as u64 {
            return Err(ProbeLogError::DelayCount {
                delays: self.delay_steps_ns.len(),
                received: bits.count(),
            });
        }
        let mut steps = self.delay_steps_ns.iter();
        let mut current = 0i64;
        let delays_ns = (0..bits.len())
            .map(|seq| match bits.get(seq).then(|| steps.next()).flatten() {
                Some(step) => {
                    current = current.wrapping_add(*step);
                    current
                }
                None => NOT_RECEIVED,
            })
            .collect();
        Ok(ProbeDelays {
            point: point.to_string(),
            delays_ns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_with_losses_reordering_and_clock_offsets() {
        let mut log = ProbeLog::new(100);
        let offset = 5_000_000_000i64;
        for (seq, delay) in [(0, 120), (2, 90), (1, 300), (4, -50)] {
            log.record(seq, offset + delay);
        }
        let report = log.report(6).unwrap();
        let wire: ProbeLogReport =
            serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        let delays = wire.probe_delays("r").unwrap();
        assert_eq!(
            delays.delays_ns,
            vec![
                offset + 120,
                offset + 300,
                offset + 90,
                NOT_RECEIVED,
                offset - 50,
                NOT_RECEIVED
            ]
        );
    }

    #[test]
    fn a_run_longer_than_the_record_reports_none() {
        let mut log = ProbeLog::new(4);
        log.record(2, 10);
        assert!(log.report(4).is_some());
        assert!(log.report(5).is_none());
        log.record(7, 10);
        assert!(log.report(4).is_none());
    }

    #[test]
    fn delays_that_disagree_with_the_receipts_are_refused() {
        let mut report = ProbeLog::new(10).report(3).unwrap();
        report.delay_steps_ns.push(1);
        assert!(matches!(
            report.probe_delays("r"),
            Err(ProbeLogError::DelayCount {
                delays: 1,
                received: 0
            })
        ));
    }
}
