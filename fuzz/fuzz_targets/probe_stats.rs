//! Probe decoding and a receiver's statistics: anyone on the platform VLAN can send a
//! receiver datagrams, so sequence numbers and timestamps are attacker-chosen.
//!
//! Invariants: a probe that decodes re-encodes to the same header; the statistics never
//! overflow (the fuzz build has overflow checks on) whatever the numbers, and within the
//! duplicate window every sent sequence number is either received or lost:
//! `packets_lost + packets_received == packets_sent`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use measurelab_mcast::metrics::{ReceiverStats, StatsLimits};
use measurelab_mcast::wire::{Probe, HEADER_LEN};

/// Small limits keep each run fast and make the window's edges reachable.
const WINDOW: u64 = 4096;
const LIMITS: StatsLimits = StatsLimits {
    duplicate_window: WINDOW,
    quantile_sample_capacity: 64,
    probe_log_capacity: 256,
};

fuzz_target!(|data: &[u8]| {
    decode_reencode(data);
    let Some((&mode, records)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        stats_within_window(mode, records);
    } else {
        stats_with_any_numbers(records);
    }
});

fn decode_reencode(datagram: &[u8]) {
    let Ok(probe) = Probe::decode(datagram) else {
        return;
    };
    let encoded = probe
        .encode(datagram.len())
        .expect("a decoded size encodes");
    // Byte 5 holds flags a receiver ignores and a sender writes as 0.
    assert_eq!(&encoded[..5], &datagram[..5]);
    assert_eq!(&encoded[6..HEADER_LEN], &datagram[6..HEADER_LEN]);
    assert_eq!(Probe::decode(&encoded).expect("re-decodes"), probe);
}

/// Sequence numbers below `sent`, which is below the window: nothing can escape the count.
fn stats_within_window(mode: u8, records: &[u8]) {
    let sent = u64::from(mode) * 16; // 0..=4080 < WINDOW
    let mut stats = ReceiverStats::new(LIMITS);
    for record in records.chunks_exact(4) {
        let sequence = u64::from(u16::from_le_bytes([record[0], record[1]]));
        if sent == 0 || sequence >= sent {
            continue;
        }
        let send_time_ns = 1_000_000 + sequence * 1_000;
        let delay_ns = u64::from(u16::from_le_bytes([record[2], record[3]]));
        stats.record(sequence, send_time_ns, send_time_ns + delay_ns);
    }
    let metrics = stats.finish(Some(sent));
    assert_eq!(metrics.packets_sent, sent);
    assert_eq!(
        metrics.packets_lost + metrics.packets_received,
        sent,
        "{metrics:?}"
    );
    assert_eq!(metrics.packets_unexpected, 0);
    assert_eq!(metrics.packets_beyond_duplicate_window, 0);
    if let Some(ratio) = metrics.loss_ratio {
        assert!((0.0..=1.0).contains(&ratio), "loss ratio {ratio}");
    }
}

/// Any numbers at all, u64::MAX and clocks running backwards included: no panic, loss
/// never above what was sent, and the delay summary ordered.
fn stats_with_any_numbers(records: &[u8]) {
    let mut stats = ReceiverStats::new(LIMITS);
    let mut words = records
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")));
    let sender_report = words.next();
    while let (Some(sequence), Some(send), Some(receive)) =
        (words.next(), words.next(), words.next())
    {
        stats.record(sequence, send, receive);
    }
    for sent in [None, sender_report] {
        let metrics = stats.finish(sent);
        assert!(metrics.packets_lost <= metrics.packets_sent, "{metrics:?}");
        if let Some(ratio) = metrics.loss_ratio {
            assert!((0.0..=1.0).contains(&ratio), "loss ratio {ratio}");
        }
        if let Some(delay) = metrics.one_way_delay_us {
            assert!(
                delay.min <= delay.median && delay.median <= delay.p95,
                "{delay:?}"
            );
            assert!(
                delay.p95 <= delay.p99 && delay.p99 <= delay.max,
                "{delay:?}"
            );
        }
    }
}
