//! The fast paths of the probe tools with real packets through a real userspace OVS
//! bridge: the sender's burst pacing (intervals below the pacing granularity) and the
//! receiver's batched `recvmmsg` with a kernel timestamp per datagram. Needs root, iproute2
//! and openvswitch-switch (not started: the test runs a private switch); tears everything
//! down. Asserts accounting and timestamp provenance only, never timing: the machine may
//! be loaded, so the path may drop probes and the sender may slip.
//!
//! The receiver is not told how many probes were sent: its counts are checked against the
//! sender's own report and against the kernel's UDP counters of both namespaces.

mod common;

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use common::{udp_counters, wait_for_membership, Lab, POINT_BIN, PROBE_PORT};
use serde_json::Value;

#[test]
fn burst_paced_probes_are_counted_exactly_and_all_kernel_stamped() -> Result<()> {
    const GROUP: &str = "239.200.26.1";
    const COUNT: u64 = 20_000;
    let lab = Lab::new("fb", 26, 2)?;
    let (tx, rx) = (&lab.points[0], &lab.points[1]);
    let (tx_before, rx_before) = (udp_counters(&tx.ns)?, udp_counters(&rx.ns)?);
    let receiver = rx
        .ns
        .command(POINT_BIN)
        .args(["recv", "--group", GROUP, "--port", &PROBE_PORT.to_string()])
        .args(["--interface", &rx.addr, "--name", "fast"])
        .args(["--duration-seconds", "60", "--idle-stop-seconds", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    wait_for_membership(&rx.ns, GROUP, Duration::from_secs(10))?;
    // 20 kpps: a 50 us interval, far below the 200 us default granularity, so the sender
    // paces in bursts. 1400-byte probes exercise the receiver's slots beyond one page.
    let sent = tx.ns.run(&[
        POINT_BIN,
        "send",
        "--group",
        GROUP,
        "--port",
        &PROBE_PORT.to_string(),
        "--source",
        &tx.addr,
        "--rate-pps",
        "20000",
        "--count",
        &COUNT.to_string(),
        "--size",
        "1400",
    ])?;
    let sent: Value = serde_json::from_str(&sent).context("sender report")?;
    let output = receiver.wait_with_output()?;
    let report: Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "receiver said {:?}",
            String::from_utf8_lossy(&output.stdout)
        )
    })?;

    assert_eq!(sent["packets_sent"], COUNT, "{sent:#}");
    assert_eq!(sent["send_errors"], 0, "{sent:#}");
    // min(200 us, 2 intervals of 50 us).
    assert_eq!(sent["pacing_granularity_us"], 100.0, "{sent:#}");

    let (tx_after, rx_after) = (udp_counters(&tx.ns)?, udp_counters(&rx.ns)?);
    let counters = format!("kernel UDP counters: sender {tx_before:?} -> {tx_after:?}, receiver {rx_before:?} -> {rx_after:?}");

    // The sender's report against its kernel: one datagram per probe, nothing else in
    // the sender's namespace sends UDP.
    assert_eq!(
        tx_after.out_datagrams - tx_before.out_datagrams,
        COUNT,
        "{counters}"
    );

    let metrics = &report["metrics"];
    assert_eq!(report["timestamp_source"], "kernel", "{report:#}");
    assert_eq!(report["malformed_packets"], 0, "{report:#}");
    assert_eq!(report["foreign_session_packets"], 0, "{report:#}");
    assert_eq!(report["session_id"], sent["session_id"], "{report:#}");
    // Not told the count, the receiver infers it from the highest sequence number.
    assert_eq!(
        metrics["sent_source"], "highest_sequence_plus_one",
        "{report:#}"
    );
    let received = metrics["packets_received"].as_u64().context("received")?;
    let duplicated = metrics["packets_duplicated"]
        .as_u64()
        .context("duplicated")?;
    assert_eq!(duplicated, 0, "{report:#}");
    // The receiver's count against its kernel: every datagram the kernel delivered to the
    // receiver's socket (the only UDP socket on that port in its namespace) is counted
    // exactly once, in a batch of recvmmsg or not.
    assert_eq!(
        rx_after.in_datagrams - rx_before.in_datagrams,
        received,
        "{counters}\n{report:#}"
    );
    let inferred = metrics["packets_sent"].as_u64().context("packets_sent")?;
    assert!(
        received <= inferred && inferred <= COUNT,
        "received {received}, inferred sent {inferred}, sender sent {COUNT}: {report:#}"
    );
    // A loaded switch may drop some, but a receive path that lost its way would lose most.
    assert!(
        received > COUNT / 2,
        "only {received} of {COUNT} arrived: {report:#}\n{counters}"
    );
    Ok(())
}
