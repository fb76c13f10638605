//! Probe wire format, version 1.
//!
//! Every probe is one UDP datagram. All integers are big-endian (network order).
//!
//! ```text
//!  offset  size  field
//!  0       4     magic            b"MLMP" (measurelab multicast probe)
//!  4       1     version          1
//!  5       1     flags            0 (reserved; receivers ignore unknown bits)
//!  6       2     total_length     length of the whole datagram in bytes, header included
//!  8       8     session_id       random per run; receivers drop probes of other sessions
//!  16      8     sequence         0, 1, 2, ... per session; 64 bits, so it never wraps
//!  24      8     send_time_ns     CLOCK_REALTIME at the sender, ns since the Unix epoch,
//!                                 taken immediately before the send system call
//!  32      n     padding          zero bytes up to total_length
//! ```
//!
//! `total_length` lets a receiver detect a datagram truncated by a too-small buffer or
//! padded by something on the path, which a bare length check on the header could not.
//! A new incompatible layout gets a new `version`; a receiver rejects versions it does not
//! know rather than guessing.

use thiserror::Error;

/// The four magic bytes that start every probe.
pub const MAGIC: [u8; 4] = *b"MLMP";
/// The layout version this module writes and accepts.
pub const VERSION: u8 = 1;
/// Size of the fixed header; also the smallest valid probe.
pub const HEADER_LEN: usize = 32;
/// Largest probe: a UDP payload must fit in an IPv4 datagram (65535 - 20 - 8).
pub const MAX_PROBE_LEN: usize = 65_507;
/// Highest valid sequence number. A sender starting at 0 never gets near it (585 years
/// at 1 Gpps); `u64::MAX` is refused so that "one past the highest sequence number",
/// which the receiver's statistics keep, always exists.
pub const MAX_SEQUENCE: u64 = u64::MAX - 1;

/// Why a datagram is not a valid probe.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than the fixed header.
    #[error("datagram of {len} bytes is shorter than the {HEADER_LEN}-byte probe header")]
    TooShort {
        /// Bytes received.
        len: usize,
    },
    /// The first four bytes are not [`MAGIC`].
    #[error("bad magic {found:02x?}: not a measurelab probe")]
    BadMagic {
        /// The bytes found instead.
        found: [u8; 4],
    },
    /// A layout version this code does not know.
    #[error("unsupported probe version {found} (this build speaks version {VERSION})")]
    UnsupportedVersion {
        /// The version found.
        found: u8,
    },
    /// The header's `total_length` disagrees with the datagram's size.
    #[error("probe declares {declared} bytes but the datagram has {actual}")]
    LengthMismatch {
        /// `total_length` from the header.
        declared: usize,
        /// Bytes actually received.
        actual: usize,
    },
    /// A sequence number above [`MAX_SEQUENCE`]: no sender produces one.
    #[error("sequence number {found} is above {MAX_SEQUENCE}")]
    SequenceOutOfRange {
        /// The sequence number found.
        found: u64,
    },
    /// A probe size outside [`HEADER_LEN`]..=[`MAX_PROBE_LEN`] was requested.
    #[error("probe size {size} is outside {HEADER_LEN}..={MAX_PROBE_LEN} bytes")]
    BadSize {
        /// The requested size.
        size: usize,
    },
}

/// The header fields of one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Run-unique session id.
    pub session_id: u64,
    /// Sequence number, starting at 0.
    pub sequence: u64,
    /// Sender's CLOCK_REALTIME in ns since the Unix epoch.
    pub send_time_ns: u64,
}

impl Probe {
    /// Writes this probe into `buf`, whose length is the probe size (header plus padding).
    ///
    /// The padding is left as it is: callers allocate a zeroed buffer once and rewrite only
    /// the header per packet, which keeps the per-packet cost at 32 bytes.
    pub fn encode_into(&self, buf: &mut [u8]) -> Result<(), WireError> {
        let size = buf.len();
        if !(HEADER_LEN..=MAX_PROBE_LEN).contains(&size) {
            return Err(WireError::BadSize { size });
        }
        buf[0..4].copy_from_slice(&MAGIC);
        buf[4] = VERSION;
        buf[5] = 0;
        // size <= MAX_PROBE_LEN < 65536, checked above.
        buf[6..8].copy_from_slice(&(size as u16).to_be_bytes());
        buf[8..16].copy_from_slice(&self.session_id.to_be_bytes());
        buf[16..24].copy_from_slice(&self.sequence.to_be_bytes());
        buf[24..32].copy_from_slice(&self.send_time_ns.to_be_bytes());
        Ok(())
    }

    /// Builds a zero-padded probe of `size` bytes.
    pub fn encode(&self, size: usize) -> Result<Vec<u8>, WireError> {
        if !(HEADER_LEN..=MAX_PROBE_LEN).contains(&size) {
            return Err(WireError::BadSize { size });
        }
        let mut buf = vec![0u8; size];
        self.encode_into(&mut buf)?;
        Ok(buf)
    }

    /// Parses a received datagram.
    pub fn decode(datagram: &[u8]) -> Result<Self, WireError> {
        if datagram.len() < HEADER_LEN {
            return Err(WireError::TooShort {
                len: datagram.len(),
            });
        }
        let magic = [datagram[0], datagram[1], datagram[2], datagram[3]];
        if magic != MAGIC {
            return Err(WireError::BadMagic { found: magic });
        }
        if datagram[4] != VERSION {
            return Err(WireError::UnsupportedVersion { found: datagram[4] });
        }
        let declared = u16::from_be_bytes([datagram[6], datagram[7]]) as usize;
        if declared != datagram.len() {
            return Err(WireError::LengthMismatch {
                declared,
                actual: datagram.len(),
            });
        }
        let sequence = read_u64(&datagram[16..24]);
        if sequence > MAX_SEQUENCE {
            return Err(WireError::SequenceOutOfRange { found: sequence });
        }
        Ok(Self {
            session_id: read_u64(&datagram[8..16]),
            sequence,
            send_time_ns: read_u64(&datagram[24..32]),
        })
    }
}

fn read_u64(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(bytes);
    u64::from_be_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Probe {
        Probe {
            session_id: 0x0102_0304_0506_0708,
            sequence: u64::MAX - 1,
            send_time_ns: 1_700_000_000_123_456_789,
        }
    }

    #[test]
    fn round_trip_keeps_every_field_and_pads_with_zeros() {
        let bytes = sample().encode(100).unwrap();
        assert_eq!(bytes.len(), 100);
        assert_eq!(&bytes[0..4], b"MLMP");
        assert_eq!(bytes[4], 1);
        assert_eq!(&bytes[6..8], &[0, 100]);
        assert!(bytes[32..].iter().all(|b| *b == 0));
        assert_eq!(Probe::decode(&bytes).unwrap(), sample());
    }

    #[test]
    fn header_only_probe_is_valid() {
        let bytes = sample().encode(HEADER_LEN).unwrap();
        assert_eq!(Probe::decode(&bytes).unwrap(), sample());
    }

    #[test]
    fn rejects_the_sequence_number_no_sender_produces() {
        let probe = Probe {
            sequence: u64::MAX,
            ..sample()
        };
        let bytes = probe.encode(64).unwrap();
        assert_eq!(
            Probe::decode(&bytes),
            Err(WireError::SequenceOutOfRange { found: u64::MAX })
        );
    }

    #[test]
    fn rejects_short_datagram() {
        assert_eq!(
            Probe::decode(&[0u8; 31]),
            Err(WireError::TooShort { len: 31 })
        );
    }

    #[test]
    fn rejects_wrong_magic() {
        let mut bytes = sample().encode(64).unwrap();
        bytes[0] = b'X';
        assert!(matches!(
            Probe::decode(&bytes),
            Err(WireError::BadMagic { .. })
        ));
    }

    #[test]
    fn rejects_unknown_version() {
        let mut bytes = sample().encode(64).unwrap();
        bytes[4] = 2;
        assert_eq!(
            Probe::decode(&bytes),
            Err(WireError::UnsupportedVersion { found: 2 })
        );
    }

    #[test]
    fn rejects_truncated_or_padded_datagram() {
        let bytes = sample().encode(64).unwrap();
        assert_eq!(
            Probe::decode(&bytes[..48]),
            Err(WireError::LengthMismatch {
                declared: 64,
                actual: 48
            })
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            Probe::decode(&longer),
            Err(WireError::LengthMismatch {
                declared: 64,
                actual: 65
            })
        );
    }

    #[test]
    fn rejects_sizes_outside_the_valid_range() {
        assert_eq!(sample().encode(31), Err(WireError::BadSize { size: 31 }));
        assert_eq!(
            sample().encode(MAX_PROBE_LEN + 1),
            Err(WireError::BadSize {
                size: MAX_PROBE_LEN + 1
            })
        );
    }
}
