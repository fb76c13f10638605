//! Crash behaviour of the MSCS and the points with real processes and real packets:
//! SIGKILL the MSCS mid-schedule and restart it; SIGKILL a point mid-run; restart the
//! MSCS and every point with a rotated control key mid-run, as node agents do.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use common::{in_netns, receiver, Lab, CONTROL_PORT};
use measurelab_mcast::auth::ControlKey;
use measurelab_mcast::protocol::{ControlRequest, ControlResponse, ReceiveRequest};
use serde_json::Value;

const POINTS: [&str; 3] = ["p1", "p2", "p3"];

fn wait_for_results(lab: &Lab, at_least: usize, timeout: Duration) -> Result<Vec<Value>> {
    let deadline = Instant::now() + timeout;
    loop {
        let results = lab.results()?;
        if results.len() >= at_least {
            return Ok(results);
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {at_least} results after {timeout:?}; MSCS log:\n{}",
                results.len(),
                lab.mscs_log()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Datagrams the points' sockets have read, by their namespaces' kernel counters.
fn probes_at_points(lab: &Lab) -> Result<u64> {
    lab.points
        .iter()
        .map(|point| Ok(common::udp_counters(&point.ns)?.in_datagrams))
        .sum()
}

/// Waits until a run with `source` is in flight and the points have received `probes`
/// datagrams since it started: the run is really sending, not just scheduled.
fn wait_mid_run(lab: &Lab, source: Option<&str>, probes: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let (_, schedule) = lab.api("GET", "/schedule", None)?;
        let current = &schedule["current_run"];
        if !current.is_null() && source.is_none_or(|s| current["source"] == s) {
            let before = probes_at_points(lab)?;
            while probes_at_points(lab)? < before + probes {
                if Instant::now() > deadline {
                    bail!("the run with source {source:?} sent fewer than {probes} probes");
                }
                thread::sleep(Duration::from_millis(20));
            }
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!("no run with source {source:?} started")
}

fn assert_round_robin(results: &[Value]) {
    for (index, result) in results.iter().enumerate() {
        assert_eq!(
            result["seq"].as_u64(),
            Some(index as u64 + 1),
            "gap in seqs"
        );
        assert_eq!(
            result["document"]["source_point"],
            POINTS[index % POINTS.len()],
            "result {} breaks the round robin: {:#}",
            index + 1,
            result["document"]
        );
    }
}

/// MSCS arguments for a run every 3 s of `duration` seconds at 200 pps to
/// `group`.
fn every_three_seconds<'a>(duration: &'a str, group: &'a str) -> [&'a str; 8] {
    [
        "--interval-seconds",
        "3",
        "--duration-seconds",
        duration,
        "--rate-pps",
        "200",
        "--group",
        group,
    ]
}

#[test]
fn sigkilled_mscs_resumes_the_schedule_and_keeps_every_result() -> Result<()> {
    let mut lab = Lab::new("rs", 17, 3)?;
    let args = every_three_seconds("1", "239.200.17.1");
    lab.start_mscs(&args)?;
    wait_for_results(&lab, 2, Duration::from_secs(30))?;
    // Kill while the third run is sending, so an interrupted run is part of the test.
    // 200 pps to two receivers: about a quarter second into the 1 s run.
    wait_mid_run(&lab, None, 100)?;
    let listed_before_kill = lab.results()?;
    lab.sigkill_mscs();

    // What survived on disk is at least everything the API had acknowledged.
    let state: Value = serde_json::from_slice(&std::fs::read(lab.state_file())?)?;
    let durable = state["results"].as_array().cloned().unwrap_or_default();
    assert!(durable.len() >= listed_before_kill.len());
    let position_at_kill = state["next_source_index"].as_u64().unwrap();
    assert_eq!(position_at_kill as usize, durable.len() % 3);

    lab.start_mscs(&args)?;
    let after = wait_for_results(&lab, durable.len() + 3, Duration::from_secs(40))?;
    for (before, now) in durable.iter().zip(&after) {
        assert_eq!(before, now, "a completed result changed or vanished");
    }
    // The interrupted run was not recorded, and the restarted schedule re-ran that
    // source: the sources continue p1, p2, p3, p1, ... without a gap or a repeat.
    assert_round_robin(&after);
    for result in &after {
        assert_eq!(
            result["document"]["status"], "ok",
            "{:#}",
            result["document"]
        );
        assert_eq!(result["document"]["kind"], "periodic");
    }
    Ok(())
}

#[test]
fn sigkilled_point_is_recorded_as_failed_and_the_schedule_goes_on() -> Result<()> {
    let mut lab = Lab::new("pk", 18, 3)?;
    lab.start_mscs(&every_three_seconds("1.5", "239.200.18.1"))?;
    // 200 pps to two receivers: about a quarter second into the 1.5 s run.
    wait_mid_run(&lab, Some("p1"), 100)?;
    lab.kill_point(2);
    let results = wait_for_results(&lab, 4, Duration::from_secs(40))?;
    assert_round_robin(&results);

    // The run in flight: p2 measured, p3 died before reporting.
    let killed_run = &results[0]["document"];
    assert_eq!(killed_run["status"], "partial", "{killed_run:#}");
    assert_eq!(receiver(killed_run, "p2")["status"], "ok");
    let p3 = receiver(killed_run, "p3");
    assert_eq!(p3["status"], "failed", "{p3:#}");
    assert!(p3["error"].as_str().unwrap().contains("closed"), "{p3:#}");
    assert!(p3["metrics"].is_null());

    // Next run (source p2): p3 cannot be reached at all.
    let next = &results[1]["document"];
    assert_eq!(next["status"], "partial");
    assert_eq!(receiver(next, "p1")["status"], "ok");
    assert_eq!(receiver(next, "p3")["status"], "missing");

    // p3's turn as the source fails as a whole but is recorded, and p1 follows.
    let p3_turn = &results[2]["document"];
    assert_eq!(p3_turn["status"], "failed");
    assert!(p3_turn["source"]["error"]
        .as_str()
        .unwrap()
        .contains("unreachable"));
    assert_eq!(results[3]["document"]["source_point"], "p1");
    Ok(())
}

#[test]
fn a_source_stops_sending_when_its_mscs_dies() -> Result<()> {
    let mut lab = Lab::new("sd", 19, 3)?;
    lab.start_mscs(&["--no-periodic"])?;
    let (status, _) = lab.api(
        "POST",
        "/tasks",
        Some(&serde_json::json!({"source": "p1", "group": "239.200.19.1", "duration_seconds": 20, "rate_pps": 200})),
    )?;
    assert_eq!(status, 201);
    // 200 pps to two receivers: about a second into the 20 s run.
    wait_mid_run(&lab, Some("p1"), 400)?;
    lab.sigkill_mscs();
    // The source's sender has returned once its point logs "send done"; then listen on
    // the group ourselves: the source had 18 s left to send but must be silent.
    lab.wait_for_point_log(0, "send done", Duration::from_secs(10))?;
    let listener = &lab.points[1];
    let output = listener.ns.run(&[
        common::POINT_BIN,
        "recv",
        "--group",
        "239.200.19.1",
        "--port",
        &common::PROBE_PORT.to_string(),
        "--interface",
        &listener.addr,
        "--duration-seconds",
        "2",
    ])?;
    let report: Value = serde_json::from_str(&output)?;
    assert_eq!(report["metrics"]["packets_received"], 0, "{report:#}");
    assert_eq!(report["foreign_session_packets"], 0);
    Ok(())
}

/// A platform's control key rotated mid-schedule (issue 10 §5): node agents restart the
/// platform's MSCS and points with the new key in their env (here: killed and started
/// again with it; the guest agent stops the old process before it starts the new one).
/// A restarted point refuses an order signed with the old key and obeys one signed with
/// the new; the run the restart interrupted is run again, and the periodic schedule goes
/// on without a gap, every result `ok`.
#[test]
fn a_rotated_key_refuses_the_old_key_and_keeps_the_schedule() -> Result<()> {
    let key_id = "platform-rk".to_string();
    let old = (key_id.clone(), ControlKey::generate_hex());
    let mut lab = Lab::keyed("rk", 19, 3, old.clone())?;
    let args = every_three_seconds("1", "239.200.19.1");
    lab.start_mscs(&args)?;
    wait_for_results(&lab, 2, Duration::from_secs(30))?;
    wait_mid_run(&lab, None, 100)?;

    // The rotation reaches the node agents: every program restarts with the new key.
    lab.sigkill_mscs();
    for index in 0..POINTS.len() {
        lab.kill_point(index);
    }
    let new = (key_id.clone(), ControlKey::generate_hex());
    lab.key = Some(new.clone());
    for index in 0..POINTS.len() {
        lab.start_point(index)?;
    }

    let receive = ControlRequest::Receive(ReceiveRequest {
        session_id: 99,
        group: "239.200.19.99".parse()?,
        port: 50099,
        ssm_source: None,
        max_duration_seconds: 2.0,
    });
    let orders = [
        ControlKey::from_hex(&old.0, &old.1)?.sign(&receive)?,
        ControlKey::from_hex(&new.0, &new.1)?.sign(&receive)?,
    ];
    let addr = format!("{}:{CONTROL_PORT}", lab.points[0].addr);
    let answers = in_netns(&lab.mscs_ns, move || {
        use std::io::{BufRead, BufReader, Write};
        let mut answers = Vec::new();
        for order in orders {
            let mut stream = std::net::TcpStream::connect(&addr)?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream.write_all(format!("{}\n", serde_json::to_string(&order)?).as_bytes())?;
            let mut line = String::new();
            BufReader::new(stream).read_line(&mut line)?;
            answers.push(serde_json::from_str::<ControlResponse>(&line)?);
        }
        Ok(answers)
    })?;
    match &answers[0] {
        ControlResponse::Error { message } => assert!(
            message.contains("unauthenticated") && message.contains("does not match"),
            "{message}"
        ),
        other => panic!("an order signed with the old key was not refused: {other:?}"),
    }
    assert!(
        matches!(answers[1], ControlResponse::Ready { .. }),
        "an order signed with the new key was refused: {:?}",
        answers[1]
    );

    let state: Value = serde_json::from_slice(&std::fs::read(lab.state_file())?)?;
    let durable = state["results"].as_array().cloned().unwrap_or_default();
    lab.start_mscs(&args)?;
    let after = wait_for_results(&lab, durable.len() + 3, Duration::from_secs(40))?;
    for (before, now) in durable.iter().zip(&after) {
        assert_eq!(before, now, "a completed result changed or vanished");
    }
    // The interrupted run is run again under the new key: no source skipped.
    assert_round_robin(&after);
    for result in &after {
        assert_eq!(
            result["document"]["status"], "ok",
            "{:#}",
            result["document"]
        );
    }
    Ok(())
}
