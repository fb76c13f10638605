//! Reads the classic pcap file format that `tcpdump -w` writes: just enough to get each
//! captured frame's kernel timestamp and its UDP payload. About forty lines of format, so
//! no pcap crate (nor libpcap bindings) for a bench that only reads its own captures.

use anyhow::{bail, Context, Result};

/// Microsecond-resolution magic; tcpdump writes this unless asked for nanoseconds.
const MAGIC_MICROS: u32 = 0xa1b2_c3d4;
/// Nanosecond-resolution magic (`--time-stamp-precision=nano`).
const MAGIC_NANOS: u32 = 0xa1b2_3c4d;
const GLOBAL_HEADER_LEN: usize = 24;
const RECORD_HEADER_LEN: usize = 16;
const LINKTYPE_ETHERNET: u32 = 1;
const ETHERTYPE_IPV4: u16 = 0x0800;
const IP_PROTOCOL_UDP: u8 = 17;

/// One captured UDP datagram.
#[derive(Debug, Clone)]
pub struct UdpFrame {
    /// The kernel's capture timestamp, ns since the Unix epoch (CLOCK_REALTIME).
    pub captured_ns: u64,
    /// The UDP payload as far as the snap length kept it.
    pub payload: Vec<u8>,
}

/// The UDP/IPv4 frames of an Ethernet pcap file, in capture order.
pub fn udp_frames(file: &[u8]) -> Result<Vec<UdpFrame>> {
    if file.len() < GLOBAL_HEADER_LEN {
        bail!("pcap file of {} bytes has no global header", file.len());
    }
    let magic_le = u32::from_le_bytes(file[0..4].try_into()?);
    let magic_be = u32::from_be_bytes(file[0..4].try_into()?);
    let (little_endian, magic) = if [MAGIC_MICROS, MAGIC_NANOS].contains(&magic_le) {
        (true, magic_le)
    } else if [MAGIC_MICROS, MAGIC_NANOS].contains(&magic_be) {
        (false, magic_be)
    } else {
        bail!("not a pcap file (magic {:02x?})", &file[0..4]);
    };
    let word = |at: usize| -> Result<u32> {
        let bytes: [u8; 4] = file
            .get(at..at + 4)
            .context("pcap record cut short")?
            .try_into()?;
        Ok(if little_endian {
            u32::from_le_bytes(bytes)
        } else {
            u32::from_be_bytes(bytes)
        })
    };
    let linktype = word(20)?;
    if linktype != LINKTYPE_ETHERNET {
        bail!("pcap link type {linktype}, expected Ethernet ({LINKTYPE_ETHERNET})");
    }
    let fraction_ns = if magic == MAGIC_NANOS { 1 } else { 1_000 };
    let mut frames = Vec::new();
    let mut at = GLOBAL_HEADER_LEN;
    while at + RECORD_HEADER_LEN <= file.len() {
        let seconds = word(at)? as u64;
        let fraction = word(at + 4)? as u64;
        let included = word(at + 8)? as usize;
        let data = file
            .get(at + RECORD_HEADER_LEN..at + RECORD_HEADER_LEN + included)
            .context("pcap frame cut short")?;
        at += RECORD_HEADER_LEN + included;
        // tcpdump's filter already chose the port.
        if let Some(payload) = udp_payload(data) {
            frames.push(UdpFrame {
                captured_ns: seconds * 1_000_000_000 + fraction * fraction_ns,
                payload: payload.to_vec(),
            });
        }
    }
    Ok(frames)
}

/// The payload of an Ethernet/IPv4/UDP frame; `None` for anything else.
fn udp_payload(frame: &[u8]) -> Option<&[u8]> {
    let ethertype = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
    if ethertype != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = frame.get(14..)?;
    let header_len = usize::from(ip.first()? & 0x0f) * 4;
    if *ip.get(9)? != IP_PROTOCOL_UDP || header_len < 20 {
        return None;
    }
    ip.get(header_len + 8..)
}
