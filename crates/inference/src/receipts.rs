//! Per-probe receipt bits of one receiver, and their compressed form in the result
//! document ([`ReceiptBitmap`]).
//!
//! Why run lengths with a bitmap fallback and not a roaring bitmap: the set is a dense
//! range `0..probes` read once, front to back, and never intersected or queried at
//! random, which is what roaring's containers are for. Loss on a lab path is rare and
//! comes in episodes, so a run-length list costs a few bytes per episode (a clean
//! 100,000-probe run is `[100000]`). Scattered heavy loss is its worst case; then the
//! plain bitmap (`probes / 6` base64 characters) is written instead, whichever is
//! shorter, so a receiver's record never exceeds that bound.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use measurelab_api::result::ReceiptBitmap;

/// Why a stored receipt bitmap cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// The run lengths do not add up to the window.
    #[error("run lengths add up to {sum}, not the {probes} probes of the window")]
    RunsMismatch {
        /// Sum of the runs.
        sum: u64,
        /// The declared window.
        probes: u64,
    },
    /// The bitmap is not base64 or has the wrong length.
    #[error("bitmap: {0}")]
    Bitmap(String),
    /// The window is larger than this build decodes.
    #[error("window of {probes} probes exceeds the limit of {limit}")]
    TooLarge {
        /// The declared window.
        probes: u64,
        /// [`MAX_WINDOW_PROBES`].
        limit: u64,
    },
}

/// Largest window decoded: 2^26 probes (8 MiB of bits), an hour at about 18 kpps.
pub const MAX_WINDOW_PROBES: u64 = 1 << 26;

/// Which probes of `0..len` one receiver got, one bit each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptBits {
    words: Vec<u64>,
    len: u64,
}

impl ReceiptBits {
    /// No probe received, window `0..len`.
    pub fn new(len: u64) -> Self {
        Self {
            words: vec![0; len.div_ceil(64) as usize],
            len,
        }
    }

    /// From one flag per probe.
    pub fn from_flags(flags: impl IntoIterator<Item = bool>) -> Self {
        let mut bits = Self::new(0);
        for flag in flags {
            if bits.len.is_multiple_of(64) {
                bits.words.push(0);
            }
            bits.len += 1;
            if flag {
                bits.set(bits.len - 1);
            }
        }
        bits
    }

    /// Probes in the window.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Marks probe `seq` received; outside the window it is ignored (a probe the sender
    /// did not report sending is not part of the window).
    pub fn set(&mut self, seq: u64) {
        if seq < self.len {
            self.words[(seq / 64) as usize] |= 1 << (seq % 64);
        }
    }

    /// Whether probe `seq` was received.
    pub fn get(&self, seq: u64) -> bool {
        seq < self.len && self.words[(seq / 64) as usize] & (1 << (seq % 64)) != 0
    }

    /// Probes received.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Alternating run lengths, received first.
    fn runs(&self) -> Vec<u64> {
        let mut runs = Vec::new();
        let mut current = true;
        let mut length = 0u64;
        for seq in 0..self.len {
            if self.get(seq) != current {
                runs.push(length);
                current = !current;
                length = 0;
            }
            length += 1;
        }
        runs.push(length);
        runs
    }

    fn bytes(&self) -> Vec<u8> {
        let mut bytes: Vec<u8> = self.words.iter().flat_map(|w| w.to_le_bytes()).collect();
        bytes.truncate(self.len.div_ceil(8) as usize);
        bytes
    }

    /// The smaller of the two encodings.
    pub fn encode(&self) -> ReceiptBitmap {
        let runs = self.runs();
        // Each run is a JSON number and a comma: its decimal digits plus one.
        let runs_chars: u64 = runs.iter().map(|r| decimal_digits(*r) + 1).sum();
        let bitmap_chars = self.len.div_ceil(8).div_ceil(3) * 4;
        if runs_chars <= bitmap_chars {
            ReceiptBitmap::Runs {
                probes: self.len,
                runs,
            }
        } else {
            ReceiptBitmap::Bitmap {
                probes: self.len,
                base64: STANDARD.encode(self.bytes()),
            }
        }
    }

    /// Reads a stored bitmap back.
    pub fn decode(bitmap: &ReceiptBitmap) -> Result<Self, ReceiptError> {
        let probes = bitmap.probes();
        if probes > MAX_WINDOW_PROBES {
            return Err(ReceiptError::TooLarge {
                probes,
                limit: MAX_WINDOW_PROBES,
            });
        }
        match bitmap {
            ReceiptBitmap::Runs { runs, .. } => {
                let sum = runs.iter().try_fold(0u64, |acc, r| acc.checked_add(*r));
                if sum != Some(probes) {
                    return Err(ReceiptError::RunsMismatch {
                        sum: sum.unwrap_or(u64::MAX),
                        probes,
                    });
                }
                let mut bits = Self::new(probes);
                let mut seq = 0u64;
                for (index, run) in runs.iter().enumerate() {
                    if index % 2 == 0 {
                        for s in seq..seq + run {
                            bits.set(s);
                        }
                    }
                    seq += run;
                }
                Ok(bits)
            }
            ReceiptBitmap::Bitmap { base64, .. } => {
                let bytes = STANDARD
                    .decode(base64)
                    .map_err(|e| ReceiptError::Bitmap(e.to_string()))?;
                let expected = probes.div_ceil(8) as usize;
                if bytes.len() != expected {
                    return Err(ReceiptError::Bitmap(format!(
                        "{} bytes for {probes} probes, expected {expected}",
                        bytes.len()
                    )));
                }
                let mut bits = Self::new(probes);
                for (index, byte) in bytes.iter().enumerate() {
                    let word = index / 8;
                    bits.words[word] |= u64::from(*byte) << ((index % 8) * 8);
                }
                // Bits past the window in the last byte are not probes.
                if !probes.is_multiple_of(64) {
                    if let Some(last) = bits.words.last_mut() {
                        *last &= (1u64 << (probes % 64)) - 1;
                    }
                }
                Ok(bits)
            }
        }
    }
}

fn decimal_digits(value: u64) -> u64 {
    u64::from(value.checked_ilog10().unwrap_or(0)) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: u64, lost: impl Fn(u64) -> bool) -> ReceiptBits {
        ReceiptBits::from_flags((0..len).map(|s| !lost(s)))
    }

    #[test]
    fn rare_loss_is_stored_as_runs() {
        let bits = pattern(1000, |s| s == 3 || (500..510).contains(&s));
        let encoded = bits.encode();
        assert_eq!(
            encoded,
            ReceiptBitmap::Runs {
                probes: 1000,
                runs: vec![3, 1, 496, 10, 490]
            }
        );
        assert_eq!(ReceiptBits::decode(&encoded).unwrap(), bits);
    }

    #[test]
    fn a_window_starting_with_loss_has_an_empty_first_run() {
        let bits = pattern(100, |s| s < 2);
        match bits.encode() {
            ReceiptBitmap::Runs { runs, .. } => assert_eq!(runs, vec![0, 2, 98]),
            other => panic!("expected runs, got {other:?}"),
        }
    }

    #[test]
    fn scattered_heavy_loss_is_stored_as_a_bitmap_and_round_trips() {
        let bits = pattern(1001, |s| (s * 7919) % 3 == 0);
        let encoded = bits.encode();
        assert!(
            matches!(encoded, ReceiptBitmap::Bitmap { .. }),
            "{encoded:?}"
        );
        let decoded = ReceiptBits::decode(&encoded).unwrap();
        assert_eq!(decoded, bits);
        assert_eq!(decoded.count(), bits.count());
    }

    #[test]
    fn inconsistent_records_are_refused() {
        let bad_runs = ReceiptBitmap::Runs {
            probes: 10,
            runs: vec![3, 1],
        };
        assert_eq!(
            ReceiptBits::decode(&bad_runs),
            Err(ReceiptError::RunsMismatch { sum: 4, probes: 10 })
        );
        let short = ReceiptBitmap::Bitmap {
            probes: 100,
            base64: STANDARD.encode([0xffu8; 3]),
        };
        assert!(matches!(
            ReceiptBits::decode(&short),
            Err(ReceiptError::Bitmap(_))
        ));
    }

    #[test]
    fn probes_outside_the_window_are_not_recorded() {
        let mut bits = ReceiptBits::new(10);
        bits.set(10);
        bits.set(9);
        assert_eq!(bits.count(), 1);
        assert!(!bits.get(10));
    }
}
