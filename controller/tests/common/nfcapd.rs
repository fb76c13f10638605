//! nfcapd files for flow tests, made by the real tools: a real nfcapd
//! collects NetFlow v5 datagrams, and `nfdump -w` splits what it stored into
//! files of the names a test wants.

use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One flow of a NetFlow v5 record.
#[derive(Debug, Clone, Copy)]
pub struct V5Flow {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// Source port: what tells a test's records apart.
    pub src_port: u16,
    pub dst_port: u16,
    pub packets: u32,
    /// Unix seconds of the exporter's clock when it sent the record; the
    /// flow's packets are 2 s and 1 s before.
    pub exported_at: u32,
}

/// One NetFlow v5 datagram holding one UDP flow record (nfdump places a v5
/// record by the header's clock and uptime).
pub fn netflow_v5(flow: &V5Flow) -> Vec<u8> {
    const UPTIME_MS: u32 = 100_000;
    let mut d = Vec::with_capacity(24 + 48);
    // Header: version, count, sysuptime, unix secs, nsecs, sequence,
    // engine type and id, sampling.
    d.extend_from_slice(&5u16.to_be_bytes());
    d.extend_from_slice(&1u16.to_be_bytes());
    d.extend_from_slice(&UPTIME_MS.to_be_bytes());
    d.extend_from_slice(&flow.exported_at.to_be_bytes());
    d.extend_from_slice(&[0; 4]);
    d.extend_from_slice(&1u32.to_be_bytes());
    d.extend_from_slice(&[0; 4]);
    // Record: addresses, next hop, interfaces, packets, bytes, first and
    // last (uptime ms), ports, pad, TCP flags, protocol, ToS, AS numbers,
    // masks, pad.
    d.extend_from_slice(&flow.src.octets());
    d.extend_from_slice(&flow.dst.octets());
    d.extend_from_slice(&[0; 4 + 2 + 2]);
    d.extend_from_slice(&flow.packets.to_be_bytes());
    d.extend_from_slice(&(flow.packets * 100).to_be_bytes());
    d.extend_from_slice(&(UPTIME_MS - 2000).to_be_bytes());
    d.extend_from_slice(&(UPTIME_MS - 1000).to_be_bytes());
    d.extend_from_slice(&flow.src_port.to_be_bytes());
    d.extend_from_slice(&flow.dst_port.to_be_bytes());
    d.extend_from_slice(&[0, 0, 17, 0]);
    d.extend_from_slice(&[0; 2 + 2 + 1 + 1 + 2]);
    assert_eq!(d.len(), 24 + 48);
    d
}

/// Unix seconds now.
pub fn unix_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32
}

/// The `/proc/net/udp` line of the socket bound to 127.0.0.1:`port` (local
/// addresses are little-endian hex there).
fn udp_socket_line(port: u16) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/udp").unwrap();
    let wanted = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .find(|line| line.split_whitespace().nth(1) == Some(wanted.as_str()))
        .map(str::to_string)
}

/// Whether a UDP socket is bound to 127.0.0.1:`port`, i.e. nfcapd queues
/// what is sent.
pub fn udp_bound(port: u16) -> bool {
    udp_socket_line(port).is_some()
}

/// Bytes queued unread on the socket bound to 127.0.0.1:`port`.
fn udp_unread(port: u16) -> Option<u64> {
    let line = udp_socket_line(port)?;
    let queues = line.split_whitespace().nth(4)?;
    let (_, rx) = queues.split_once(':')?;
    u64::from_str_radix(rx, 16).ok()
}

/// The `name` nfcapd gives the file of the interval starting at `at`
/// (unix seconds, UTC, to the minute).
pub fn nfcapd_name(at: u32) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp(at.into()).unwrap();
    format!(
        "nfcapd.{:04}{:02}{:02}{:02}{:02}",
        at.year(),
        at.month() as u8,
        at.day(),
        at.hour(),
        at.minute()
    )
}

/// Write each `(file, flows)` as a closed nfcapd file holding exactly
/// those flows, as exported from 127.0.0.1. Source ports must tell every
/// flow apart. `scratch` is where nfcapd runs.
pub fn write_nfcapd_files(scratch: &Path, files: &[(PathBuf, Vec<V5Flow>)]) {
    let mut ports: Vec<u16> = files
        .iter()
        .flat_map(|(_, flows)| flows.iter().map(|f| f.src_port))
        .collect();
    ports.sort_unstable();
    let count = ports.len();
    ports.dedup();
    assert_eq!(ports.len(), count, "source ports must differ: {ports:?}");

    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let collected = scratch.join("collected");
    std::fs::create_dir_all(&collected).unwrap();
    let mut nfcapd = Command::new("nfcapd")
        .args(["-b", "127.0.0.1", "-p", &port.to_string(), "-w"])
        .arg(&collected)
        .args(["-t", "3600"])
        .env("TZ", "UTC")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !udp_bound(port) {
        assert!(Instant::now() < deadline, "nfcapd never bound {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let exporter = UdpSocket::bind("127.0.0.1:0").unwrap();
    for flow in files.iter().flat_map(|(_, flows)| flows) {
        exporter
            .send_to(&netflow_v5(flow), ("127.0.0.1", port))
            .unwrap();
    }
    // Everything sent is read once the socket's queue is empty; nfcapd
    // then writes it out when it stops.
    while udp_unread(port) != Some(0) {
        assert!(Instant::now() < deadline, "nfcapd never read its datagrams");
        std::thread::sleep(Duration::from_millis(20));
    }
    let stopped = Command::new("kill")
        .args(["-TERM", &nfcapd.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    nfcapd.wait().unwrap();
    for (file, flows) in files {
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let filter = flows
            .iter()
            .map(|f| format!("src port {}", f.src_port))
            .collect::<Vec<_>>()
            .join(" or ");
        // -R: every file nfcapd closed (two, if the sending straddled
        // the top of an hour).
        let split = Command::new("nfdump")
            .arg("-R")
            .arg(&collected)
            .arg("-w")
            .arg(file)
            .arg(&filter)
            .output()
            .unwrap();
        assert!(
            split.status.success(),
            "nfdump -w {}: {}",
            file.display(),
            String::from_utf8_lossy(&split.stderr)
        );
    }
}
