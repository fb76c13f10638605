//! The fast paths of the probe tools with real packets through a real userspace OVS
//! bridge: the sender's burst pacing (intervals below the pacing granularity) and the
//! receiver's batched `recvmmsg` with a kernel timestamp per datagram. Needs root, iproute2
//! and openvswitch-switch (not started: the test runs a private switch); tears everything
//! down. Asserts accounting and timestamp provenance only, never timing: the machine may
//! be loaded, so the path may drop probes and the sender may slip.

mod common;

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use common::{Lab, POINT_BIN, PROBE_PORT};
use serde_json::Value;

#[test]
fn burst_paced_probes_are_counted_exactly_and_all_kernel_stamped() -> Result<()> {
    const GROUP: &str = "239.200.26.1";
    const COUNT: u64 = 20_000;
    let lab = Lab::new("fb", 26, 2)?;
    let (tx, rx) = (&lab.points[0], &lab.points[1]);
    let receiver = rx
        .ns
        .command(POINT_BIN)
        .args(["recv", "--group", GROUP, "--port", &PROBE_PORT.to_string()])
        .args(["--interface", &rx.addr, "--name", "fast"])
        .args(["--duration-seconds", "60", "--idle-stop-seconds", "1"])
        .args(["--packets-sent", &COUNT.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(500));
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

    let metrics = &report["metrics"];
    assert_eq!(report["timestamp_source"], "kernel", "{report:#}");
    assert_eq!(report["malformed_packets"], 0, "{report:#}");
    assert_eq!(report["foreign_session_packets"], 0, "{report:#}");
    assert_eq!(report["session_id"], sent["session_id"], "{report:#}");
    assert_eq!(metrics["packets_sent"], COUNT, "{report:#}");
    let received = metrics["packets_received"].as_u64().context("received")?;
    let lost = metrics["packets_lost"].as_u64().context("lost")?;
    assert_eq!(received + lost, COUNT, "{report:#}");
    assert_eq!(metrics["packets_duplicated"], 0, "{report:#}");
    // A loaded switch may drop some, but a receive path that lost its way would lose most.
    assert!(
        received > COUNT / 2,
        "only {received} of {COUNT} arrived: {report:#}"
    );
    Ok(())
}
