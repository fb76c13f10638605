//! Per-receiver statistics, computed in one streaming pass with bounded memory.
//!
//! Definitions (all counts are per receiver and per run):
//! - **Loss** (RFC 7680): a sent sequence number that never arrived.
//!   `packets_lost = packets_sent - packets_received` where `packets_received` counts each
//!   sequence number once; `loss_ratio = packets_lost / packets_sent`.
//! - **Duplicates** (RFC 5560): every extra copy of a sequence number already received is one
//!   duplicate. `duplicate_fraction` is the share of sent packets that arrived more than once
//!   (RFC 5560 §5.2.1); `replicated_packet_rate` is extra copies per received packet (§5.2.2).
//! - **Reordering** (RFC 4737 §3.3): `NextExp` starts as the first sequence number + 1 and is
//!   set to `seq + 1` by every in-order arrival; an arrival with `seq < NextExp` is reordered.
//!   Duplicates are excluded (RFC 4737 considers only the first copy).
//! - **One-way delay** (RFC 7679): kernel receive time minus the sender's timestamp. Only as
//!   good as the clock synchronisation, hence the `clock_error_bound_us` next to it.
//! - **IPDV** (RFC 3393), selection function "consecutive sequence numbers": for each received
//!   packet whose predecessor (seq - 1) was the previous unique arrival,
//!   `ipdv = delay(seq) - delay(seq - 1)`. Reported as statistics of |ipdv|.
//! - **PDV** (RFC 5481 §4.2): `p99(delay) - min(delay)`.
//! - **Interarrival jitter** (RFC 3550 §6.4.1): over consecutive unique arrivals,
//!   `D = (R_j - R_i) - (S_j - S_i)` and `J += (|D| - J) / 16`.
//!
//! Quantiles use the nearest-rank method (the `ceil(p * n)`-th smallest value), so every
//! reported quantile is a delay that was actually observed.
//!
//! Memory is bounded two ways. Duplicates are found with a bitmap over the most recent
//! `duplicate_window` sequence numbers; a packet older than that cannot be checked and is
//! counted in `packets_beyond_duplicate_window` (and treated as a first copy). Quantiles come
//! from a uniform reservoir sample of at most `quantile_sample_capacity` values, exact while
//! the run has fewer packets than that (`quantiles_exact` says which).

// The metrics are part of the result document, whose types live in crates/api.
pub use measurelab_api::result::{DelaySummaryUs, IpdvSummaryUs, ReceiverMetrics, SentSource};

use crate::probe_log::{ProbeLog, DEFAULT_PROBE_LOG_CAPACITY};

/// Default size of the duplicate-detection window in sequence numbers (128 KiB of bits
/// each for the seen and duplicated maps): at 100 kpps, ten seconds of history.
pub const DEFAULT_DUPLICATE_WINDOW: u64 = 1 << 20;
/// Default capacity of each quantile reservoir: a 30 s run at 2 kpps stays exact.
pub const DEFAULT_QUANTILE_SAMPLE_CAPACITY: usize = 1 << 16;

/// Limits on the memory one receiver's statistics may use.
#[derive(Debug, Clone, Copy)]
pub struct StatsLimits {
    /// Sequence numbers of history kept for duplicate detection (rounded up to 64).
    pub duplicate_window: u64,
    /// Values kept per quantile reservoir.
    pub quantile_sample_capacity: usize,
    /// Probes whose receipt and delay are kept one by one for tree inference.
    pub probe_log_capacity: u64,
}

impl Default for StatsLimits {
    fn default() -> Self {
        Self {
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            quantile_sample_capacity: DEFAULT_QUANTILE_SAMPLE_CAPACITY,
            probe_log_capacity: DEFAULT_PROBE_LOG_CAPACITY,
        }
    }
}

/// A sliding bitmap over the most recent `bits` sequence numbers.
#[derive(Debug, Clone)]
struct SeqWindow {
    words: Vec<u64>,
    bits: u64,
}

impl SeqWindow {
    fn new(bits: u64) -> Self {
        let words = bits.div_ceil(64).max(1);
        Self {
            words: vec![0; words as usize],
            bits: words * 64,
        }
    }

    fn slot(&self, seq: u64) -> (usize, u64) {
        let index = seq % self.bits;
        ((index / 64) as usize, 1u64 << (index % 64))
    }

    fn get(&self, seq: u64) -> bool {
        let (word, mask) = self.slot(seq);
        self.words[word] & mask != 0
    }

    fn set(&mut self, seq: u64) {
        let (word, mask) = self.slot(seq);
        self.words[word] |= mask;
    }

    /// Forgets sequence numbers `from..to` (the slots they will reuse).
    fn clear_range(&mut self, from: u64, to: u64) {
        if to.saturating_sub(from) >= self.bits {
            self.words.iter_mut().for_each(|w| *w = 0);
            return;
        }
        for seq in from..to {
            let (word, mask) = self.slot(seq);
            self.words[word] &= !mask;
        }
    }
}

/// A uniform reservoir sample (Algorithm R) with a fixed-seed generator, so a run's
/// quantiles are reproducible from its packet trace.
#[derive(Debug, Clone)]
struct Reservoir {
    values: Vec<i64>,
    capacity: usize,
    seen: u64,
    rng_state: u64,
}

impl Reservoir {
    fn new(capacity: usize) -> Self {
        Self {
            values: Vec::new(),
            capacity: capacity.max(1),
            seen: 0,
            rng_state: 0x9E37_79B9_7F4A_7C15,
        }
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: plenty for choosing reservoir slots.
        let mut x = self.rng_state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng_state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn push(&mut self, value: i64) {
        self.seen += 1;
        if self.values.len() < self.capacity {
            self.values.push(value);
            return;
        }
        let slot = self.next_random() % self.seen;
        if (slot as usize) < self.capacity {
            self.values[slot as usize] = value;
        }
    }

    fn exact(&self) -> bool {
        self.seen as usize <= self.capacity
    }

    fn sorted(&self) -> Vec<i64> {
        let mut sorted = self.values.clone();
        sorted.sort_unstable();
        sorted
    }
}

/// Nearest-rank quantile of an ascending slice: the `ceil(p * n)`-th smallest value.
pub fn nearest_rank(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn ns_to_us(ns: f64) -> f64 {
    ns / 1_000.0
}

/// The streaming accumulator fed with every probe a receiver accepts.
#[derive(Debug, Clone)]
pub struct ReceiverStats {
    seen: SeqWindow,
    duplicated_once: SeqWindow,
    /// One past the highest sequence number received (0 before the first packet).
    window_top: u64,
    any_received: bool,
    next_expected: u64,
    received_unique: u64,
    duplicates: u64,
    seqs_duplicated: u64,
    reordered: u64,
    beyond_window: u64,
    highest_seq: u64,
    delay_min_ns: i64,
    delay_max_ns: i64,
    delay_sum_ns: i128,
    delays: Reservoir,
    previous_arrival: Option<(u64, i64)>,
    ipdv_pairs: u64,
    ipdv_abs_sum_ns: i128,
    ipdv_sum_ns: i128,
    ipdv_abs_max_ns: i64,
    ipdv_abs: Reservoir,
    jitter_ns: f64,
    jitter_samples: u64,
    probe_log: ProbeLog,
}

impl ReceiverStats {
    /// An empty accumulator with the given memory limits.
    pub fn new(limits: StatsLimits) -> Self {
        Self {
            seen: SeqWindow::new(limits.duplicate_window),
            duplicated_once: SeqWindow::new(limits.duplicate_window),
            window_top: 0,
            any_received: false,
            next_expected: 0,
            received_unique: 0,
            duplicates: 0,
            seqs_duplicated: 0,
            reordered: 0,
            beyond_window: 0,
            highest_seq: 0,
            delay_min_ns: i64::MAX,
            delay_max_ns: i64::MIN,
            delay_sum_ns: 0,
            delays: Reservoir::new(limits.quantile_sample_capacity),
            previous_arrival: None,
            ipdv_pairs: 0,
            ipdv_abs_sum_ns: 0,
            ipdv_sum_ns: 0,
            ipdv_abs_max_ns: 0,
            ipdv_abs: Reservoir::new(limits.quantile_sample_capacity),
            jitter_ns: 0.0,
            jitter_samples: 0,
            probe_log: ProbeLog::new(limits.probe_log_capacity),
        }
    }

    /// Records one arrival: its sequence number, the sender's timestamp and the receive
    /// timestamp (both ns since the Unix epoch). Every argument comes off the wire, so
    /// any value is accepted without overflow; a sequence number above
    /// [`crate::wire::MAX_SEQUENCE`] (which [`crate::wire::Probe::decode`] refuses) is
    /// ignored, since the statistics keep "one past the highest sequence number".
    pub fn record(&mut self, sequence: u64, send_time_ns: u64, receive_time_ns: u64) {
        if sequence > crate::wire::MAX_SEQUENCE {
            return;
        }
        if !self.is_first_copy(sequence) {
            self.duplicates += 1;
            if !self.duplicated_once.get(sequence) {
                self.duplicated_once.set(sequence);
                self.seqs_duplicated += 1;
            }
            return;
        }
        self.received_unique += 1;

        // RFC 4737 §3.3.
        if self.received_unique == 1 {
            self.next_expected = sequence.saturating_add(1);
        } else if sequence < self.next_expected {
            self.reordered += 1;
        } else {
            self.next_expected = sequence.saturating_add(1);
        }

        let delay_ns = clamp_i64(receive_time_ns as i128 - send_time_ns as i128);
        self.delay_min_ns = self.delay_min_ns.min(delay_ns);
        self.delay_max_ns = self.delay_max_ns.max(delay_ns);
        self.delay_sum_ns += delay_ns as i128;
        self.delays.push(delay_ns);
        self.probe_log.record(sequence, delay_ns);

        if let Some((previous_seq, previous_delay_ns)) = self.previous_arrival {
            // RFC 3550: consecutive arrivals, whatever their sequence numbers.
            let transit_difference = (delay_ns as i128 - previous_delay_ns as i128) as f64;
            self.jitter_ns += (transit_difference.abs() - self.jitter_ns) / 16.0;
            self.jitter_samples += 1;
            // RFC 3393 with the "consecutive sequence numbers" selection function.
            if sequence == previous_seq.wrapping_add(1) {
                let ipdv = clamp_i64(delay_ns as i128 - previous_delay_ns as i128);
                self.ipdv_pairs += 1;
                self.ipdv_sum_ns += ipdv as i128;
                self.ipdv_abs_sum_ns += ipdv.unsigned_abs() as i128;
                self.ipdv_abs_max_ns = self.ipdv_abs_max_ns.max(clamp_abs(ipdv));
                self.ipdv_abs.push(clamp_abs(ipdv));
            }
        }
        self.previous_arrival = Some((sequence, delay_ns));
    }

    /// Decides whether `sequence` is a first copy and marks it seen.
    fn is_first_copy(&mut self, sequence: u64) -> bool {
        if !self.any_received {
            self.any_received = true;
            self.window_top = sequence.saturating_add(1);
            self.highest_seq = sequence;
            self.seen.set(sequence);
            return true;
        }
        if sequence >= self.window_top {
            // Slide the window up: the slots of the newly covered numbers held numbers that
            // are now too old, so forget them before use.
            let top = sequence.saturating_add(1);
            self.seen.clear_range(self.window_top, top);
            self.duplicated_once.clear_range(self.window_top, top);
            self.window_top = top;
            self.highest_seq = sequence;
            self.seen.set(sequence);
            return true;
        }
        if self.window_top - sequence > self.seen.bits {
            self.beyond_window += 1;
            return true;
        }
        if self.seen.get(sequence) {
            return false;
        }
        self.seen.set(sequence);
        true
    }

    /// The per-probe record for tree inference.
    pub fn probe_log(&self) -> &ProbeLog {
        &self.probe_log
    }

    /// Distinct sequence numbers received so far.
    pub fn packets_received(&self) -> u64 {
        self.received_unique
    }

    /// The highest sequence number received, if any.
    pub fn highest_sequence(&self) -> Option<u64> {
        self.any_received.then_some(self.highest_seq)
    }

    /// Computes the metrics. `sender_count` is the sender's report of packets sent, when
    /// known; otherwise the highest sequence number seen plus one is used.
    pub fn finish(&self, sender_count: Option<u64>) -> ReceiverMetrics {
        let (packets_sent, sent_source) = match sender_count {
            Some(sent) => (sent, SentSource::SenderReport),
            None => (
                self.highest_sequence()
                    .map_or(0, |seq| seq.saturating_add(1)),
                SentSource::HighestSequencePlusOne,
            ),
        };
        let packets_unexpected = match sender_count {
            Some(sent) if self.any_received && self.highest_seq >= sent => {
                // Only numbers still inside the duplicate window can be looked up; a sender
                // report far below the highest number is a broken run anyway.
                let lowest_checkable = self.window_top.saturating_sub(self.seen.bits);
                (sent.max(lowest_checkable)..self.window_top)
                    .filter(|seq| self.seen.get(*seq))
                    .count() as u64
            }
            _ => 0,
        };
        let in_range_received = self.received_unique.saturating_sub(packets_unexpected);
        let packets_lost = packets_sent.saturating_sub(in_range_received);
        let ratio = |num: u64, den: u64| (den > 0).then(|| num as f64 / den as f64);

        let delays_sorted = self.delays.sorted();
        let one_way_delay_us = (self.received_unique > 0).then(|| DelaySummaryUs {
            min: ns_to_us(self.delay_min_ns as f64),
            median: ns_to_us(nearest_rank(&delays_sorted, 0.5).unwrap_or(0) as f64),
            mean: ns_to_us(self.delay_sum_ns as f64 / self.received_unique as f64),
            p95: ns_to_us(nearest_rank(&delays_sorted, 0.95).unwrap_or(0) as f64),
            p99: ns_to_us(nearest_rank(&delays_sorted, 0.99).unwrap_or(0) as f64),
            max: ns_to_us(self.delay_max_ns as f64),
        });
        let pdv_us = one_way_delay_us.map(|d| d.p99 - d.min);

        let ipdv_sorted = self.ipdv_abs.sorted();
        let ipdv_us = (self.ipdv_pairs > 0).then(|| IpdvSummaryUs {
            pairs: self.ipdv_pairs,
            mean_abs: ns_to_us(self.ipdv_abs_sum_ns as f64 / self.ipdv_pairs as f64),
            p95_abs: ns_to_us(nearest_rank(&ipdv_sorted, 0.95).unwrap_or(0) as f64),
            max_abs: ns_to_us(self.ipdv_abs_max_ns as f64),
            mean: ns_to_us(self.ipdv_sum_ns as f64 / self.ipdv_pairs as f64),
        });

        ReceiverMetrics {
            packets_sent,
            sent_source,
            packets_received: self.received_unique,
            packets_lost,
            packets_duplicated: self.duplicates,
            packets_reordered: self.reordered,
            packets_beyond_duplicate_window: self.beyond_window,
            packets_unexpected,
            loss_ratio: ratio(packets_lost, packets_sent),
            duplicate_fraction: ratio(self.seqs_duplicated, packets_sent),
            replicated_packet_rate: ratio(self.duplicates, self.received_unique),
            reordered_ratio: ratio(self.reordered, self.received_unique),
            one_way_delay_us,
            ipdv_us,
            pdv_us,
            jitter_us: (self.jitter_samples > 0).then(|| ns_to_us(self.jitter_ns)),
            quantiles_exact: self.delays.exact() && self.ipdv_abs.exact(),
        }
    }
}

fn clamp_i64(value: i128) -> i64 {
    value.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

fn clamp_abs(value: i64) -> i64 {
    value.checked_abs().unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000_000_000;
    const MS: u64 = 1_000_000;

    /// Feeds `(seq, delay_us)` arrivals, sent 1 ms apart, received at send + delay.
    fn feed(arrivals: &[(u64, u64)]) -> ReceiverStats {
        feed_with(StatsLimits::default(), arrivals)
    }

    fn feed_with(limits: StatsLimits, arrivals: &[(u64, u64)]) -> ReceiverStats {
        let mut stats = ReceiverStats::new(limits);
        for (seq, delay_us) in arrivals {
            let send = T0 + seq * MS;
            stats.record(*seq, send, send + delay_us * 1_000);
        }
        stats
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn no_packets_gives_full_loss_and_null_statistics() {
        let metrics = ReceiverStats::new(StatsLimits::default()).finish(Some(10));
        assert_eq!(metrics.packets_received, 0);
        assert_eq!(metrics.packets_lost, 10);
        assert_eq!(metrics.loss_ratio, Some(1.0));
        assert_eq!(metrics.one_way_delay_us, None);
        assert_eq!(metrics.jitter_us, None);
        assert_eq!(metrics.ipdv_us, None);
        assert_eq!(metrics.pdv_us, None);
        assert_eq!(metrics.replicated_packet_rate, None);
    }

    #[test]
    fn nothing_sent_and_nothing_received_has_no_ratios() {
        let metrics = ReceiverStats::new(StatsLimits::default()).finish(None);
        assert_eq!(metrics.packets_sent, 0);
        assert_eq!(metrics.sent_source, SentSource::HighestSequencePlusOne);
        assert_eq!(metrics.loss_ratio, None);
        assert_eq!(metrics.duplicate_fraction, None);
    }

    #[test]
    fn loss_counts_missing_sequence_numbers() {
        // 10 sent, 2 and 7 missing.
        let arrivals: Vec<_> = [0, 1, 3, 4, 5, 6, 8, 9].iter().map(|s| (*s, 100)).collect();
        let metrics = feed(&arrivals).finish(Some(10));
        assert_eq!(metrics.packets_received, 8);
        assert_eq!(metrics.packets_lost, 2);
        assert!(close(metrics.loss_ratio.unwrap(), 0.2));
        assert_eq!(metrics.packets_reordered, 0);
        assert_eq!(metrics.packets_duplicated, 0);
    }

    #[test]
    fn without_sender_report_trailing_loss_is_invisible() {
        // Sender sent 0..=9, the last three were lost: only 0..=6 arrive.
        let arrivals: Vec<_> = (0..7).map(|s| (s, 100)).collect();
        let metrics = feed(&arrivals).finish(None);
        assert_eq!(metrics.sent_source, SentSource::HighestSequencePlusOne);
        assert_eq!(metrics.packets_sent, 7);
        assert_eq!(metrics.packets_lost, 0);
        let reported = feed(&arrivals).finish(Some(10));
        assert_eq!(reported.packets_lost, 3);
    }

    #[test]
    fn duplicates_are_extra_copies_and_do_not_hide_loss() {
        // 6 sent; 1 arrives three times, 4 twice, 5 is lost.
        let arrivals = [
            (0, 100),
            (1, 100),
            (1, 100),
            (2, 100),
            (1, 100),
            (3, 100),
            (4, 100),
            (4, 100),
        ];
        let metrics = feed(&arrivals).finish(Some(6));
        assert_eq!(metrics.packets_received, 5);
        assert_eq!(metrics.packets_duplicated, 3);
        assert_eq!(metrics.packets_lost, 1);
        // Two of six sent numbers arrived more than once.
        assert!(close(metrics.duplicate_fraction.unwrap(), 2.0 / 6.0));
        assert!(close(metrics.replicated_packet_rate.unwrap(), 3.0 / 5.0));
        // A duplicate of an older number is not a reordering (RFC 4737 ignores copies).
        assert_eq!(metrics.packets_reordered, 0);
    }

    #[test]
    fn all_duplicates_of_a_single_packet() {
        let arrivals = [(0, 100); 5];
        let metrics = feed(&arrivals).finish(Some(1));
        assert_eq!(metrics.packets_received, 1);
        assert_eq!(metrics.packets_duplicated, 4);
        assert_eq!(metrics.packets_lost, 0);
        assert!(close(metrics.duplicate_fraction.unwrap(), 1.0));
        assert!(close(metrics.replicated_packet_rate.unwrap(), 4.0));
        // Duplicates are not arrivals for jitter either.
        assert_eq!(metrics.jitter_us, None);
    }

    #[test]
    fn reordering_follows_rfc4737_next_expected() {
        // Arrival order 0 1 3 2 4 7 5 6 8: NextExp after 3 is 4, so 2 is reordered; after 7
        // it is 8, so 5 and 6 are both reordered.
        let order = [0, 1, 3, 2, 4, 7, 5, 6, 8];
        let arrivals: Vec<_> = order.iter().map(|s| (*s, 100)).collect();
        let metrics = feed(&arrivals).finish(Some(9));
        assert_eq!(metrics.packets_reordered, 3);
        assert_eq!(metrics.packets_lost, 0);
        assert!(close(metrics.reordered_ratio.unwrap(), 3.0 / 9.0));
    }

    #[test]
    fn first_arrival_sets_next_expected() {
        // 5 arrives first, then 3: 3 < NextExp = 6, reordered.
        let metrics = feed(&[(5, 100), (3, 100), (6, 100)]).finish(Some(7));
        assert_eq!(metrics.packets_reordered, 1);
        assert_eq!(metrics.packets_lost, 4);
    }

    #[test]
    fn one_way_delay_statistics_use_nearest_rank() {
        // Delays 100..=1000 us in steps of 100 (10 values), arriving in order.
        let arrivals: Vec<_> = (0..10).map(|s| (s, 100 * (s + 1))).collect();
        let delay = feed(&arrivals).finish(Some(10)).one_way_delay_us.unwrap();
        assert!(close(delay.min, 100.0));
        assert!(close(delay.max, 1000.0));
        assert!(close(delay.mean, 550.0));
        // ceil(0.5 * 10) = 5th smallest; ceil(0.95 * 10) = 10th.
        assert!(close(delay.median, 500.0));
        assert!(close(delay.p95, 1000.0));
        assert!(close(delay.p99, 1000.0));
    }

    #[test]
    fn pdv_is_p99_minus_min() {
        // 100 packets: 99 with 200 us, one with 5000 us. p99 = 99th smallest = 200.
        let mut arrivals: Vec<_> = (0..99).map(|s| (s, 200)).collect();
        arrivals.push((99, 5000));
        let metrics = feed(&arrivals).finish(Some(100));
        assert!(close(metrics.pdv_us.unwrap(), 0.0));
        // Two slow packets push p99 (the 99th smallest of 100) up to 5000.
        let mut arrivals: Vec<_> = (0..98).map(|s| (s, 200)).collect();
        arrivals.push((98, 5000));
        arrivals.push((99, 5000));
        let metrics = feed(&arrivals).finish(Some(100));
        assert!(close(metrics.pdv_us.unwrap(), 4800.0));
    }

    #[test]
    fn rfc3550_jitter_by_hand() {
        // Delays 100, 300, 200, 200 us: |D| = 200, 100, 0.
        // J1 = 200/16 = 12.5; J2 = 12.5 + (100 - 12.5)/16 = 17.96875;
        // J3 = 17.96875 + (0 - 17.96875)/16 = 16.845703125.
        let metrics = feed(&[(0, 100), (1, 300), (2, 200), (3, 200)]).finish(Some(4));
        assert!(close(metrics.jitter_us.unwrap(), 16.845_703_125));
    }

    #[test]
    fn ipdv_pairs_only_consecutive_sequence_numbers() {
        // Delays: 0->100, 1->300, (2 lost), 3->250, 4->150.
        // Pairs (0,1): +200; (3,4): -100. (1,3) is not consecutive.
        let metrics = feed(&[(0, 100), (1, 300), (3, 250), (4, 150)]).finish(Some(5));
        let ipdv = metrics.ipdv_us.unwrap();
        assert_eq!(ipdv.pairs, 2);
        assert!(close(ipdv.mean_abs, 150.0));
        assert!(close(ipdv.max_abs, 200.0));
        assert!(close(ipdv.p95_abs, 200.0));
        assert!(close(ipdv.mean, 50.0));
        // Jitter still uses every consecutive arrival: |D| = 200, 50, 100.
        let j1 = 200.0 / 16.0;
        let j2 = j1 + (50.0 - j1) / 16.0;
        let j3 = j2 + (100.0 - j2) / 16.0;
        assert!(close(metrics.jitter_us.unwrap(), j3));
    }

    #[test]
    fn ipdv_ignores_reordered_pairs_out_of_arrival_order() {
        // Arrival order 1, 0: 0 follows 1 in arrival but is its predecessor, not successor.
        let metrics = feed(&[(1, 100), (0, 100)]).finish(Some(2));
        assert_eq!(metrics.ipdv_us, None);
        assert_eq!(metrics.packets_reordered, 1);
    }

    #[test]
    fn negative_delays_from_clock_offset_are_kept() {
        let mut stats = ReceiverStats::new(StatsLimits::default());
        stats.record(0, T0 + 500_000, T0);
        let delay = stats.finish(Some(1)).one_way_delay_us.unwrap();
        assert!(close(delay.min, -500.0));
    }

    #[test]
    fn large_sequence_numbers_do_not_wrap() {
        let base = u64::MAX - 10;
        let mut stats = ReceiverStats::new(StatsLimits::default());
        for seq in [base, base + 1, base + 3, base + 2, base + 3] {
            stats.record(seq, T0, T0 + 1_000);
        }
        let metrics = stats.finish(None);
        assert_eq!(metrics.packets_received, 4);
        assert_eq!(metrics.packets_duplicated, 1);
        assert_eq!(metrics.packets_reordered, 1);
        assert_eq!(stats.highest_sequence(), Some(base + 3));
    }

    #[test]
    fn hostile_sequence_numbers_and_timestamps_do_not_overflow() {
        let mut stats = ReceiverStats::new(StatsLimits::default());
        stats.record(u64::MAX, 0, u64::MAX);
        assert_eq!(
            stats.packets_received(),
            0,
            "u64::MAX is not a sequence number"
        );
        let top = crate::wire::MAX_SEQUENCE;
        for (seq, send, receive) in [
            (top, 0, u64::MAX),
            (top, u64::MAX, 0),
            (0, u64::MAX, 0),
            (top - 1, 0, 0),
            (u64::MAX, 0, 0),
        ] {
            stats.record(seq, send, receive);
        }
        assert_eq!(stats.highest_sequence(), Some(top));
        let metrics = stats.finish(None);
        assert_eq!(metrics.packets_sent, u64::MAX);
        assert_eq!(metrics.packets_received, 3);
        assert_eq!(metrics.packets_duplicated, 1);
        // The sender's count comes off the wire too.
        let metrics = stats.finish(Some(u64::MAX));
        assert_eq!(metrics.packets_received, 3);
        assert_eq!(metrics.packets_lost, u64::MAX - 3);
        let metrics = stats.finish(Some(0));
        assert_eq!(metrics.packets_lost, 0);
    }

    #[test]
    fn window_bounds_memory_and_reports_what_it_cannot_check() {
        let limits = StatsLimits {
            duplicate_window: 64,
            quantile_sample_capacity: 8,
            probe_log_capacity: 1 << 10,
        };
        let mut arrivals: Vec<_> = (0..200).map(|s| (s, 100)).collect();
        // 150 is inside the window (top is 200, window 64): a detectable duplicate.
        arrivals.push((150, 100));
        // 10 is far outside: cannot be checked.
        arrivals.push((10, 100));
        let stats = feed_with(limits, &arrivals);
        assert_eq!(stats.seen.words.len(), 1);
        assert!(stats.delays.values.len() <= 8);
        let metrics = stats.finish(Some(200));
        assert_eq!(metrics.packets_duplicated, 1);
        assert_eq!(metrics.packets_beyond_duplicate_window, 1);
        assert!(!metrics.quantiles_exact);
        // The reservoir still yields plausible values.
        assert!(close(metrics.one_way_delay_us.unwrap().median, 100.0));
    }

    #[test]
    fn window_slides_across_a_large_gap() {
        let limits = StatsLimits {
            duplicate_window: 64,
            quantile_sample_capacity: 8,
            probe_log_capacity: 1 << 10,
        };
        let stats = feed_with(
            limits,
            &[(0, 1), (1_000_000, 1), (1_000_000, 1), (999_999, 1)],
        );
        let metrics = stats.finish(Some(1_000_001));
        assert_eq!(metrics.packets_duplicated, 1);
        assert_eq!(metrics.packets_received, 3);
        assert_eq!(metrics.packets_reordered, 1);
    }

    #[test]
    fn arrivals_beyond_the_sender_report_are_flagged() {
        let metrics = feed(&[(0, 1), (1, 1), (5, 1)]).finish(Some(2));
        assert_eq!(metrics.packets_unexpected, 1);
        assert_eq!(metrics.packets_lost, 0);
    }

    #[test]
    fn nearest_rank_edges() {
        assert_eq!(nearest_rank(&[], 0.5), None);
        assert_eq!(nearest_rank(&[7], 0.0), Some(7));
        assert_eq!(nearest_rank(&[1, 2, 3, 4], 0.5), Some(2));
        assert_eq!(nearest_rank(&[1, 2, 3, 4], 1.0), Some(4));
    }
}
