//! A measurement point's control connection: before per-task keys, anyone on the
//! service network could send it lines; after, a task's holder still can.
//!
//! Invariants: a line read never exceeds the bound; a `send` the point accepts is one
//! its sender accepts too, at or under the point's rate ceiling, and its schedule never
//! releases more probes in one wakeup than its stated burst bound; a `receive` the point
//! accepts has a duration that fits a deadline; a `stop`'s drain is clamped.
#![no_main]

use std::io::Cursor;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use measurelab_mcast::point::{
    drain_duration, plan_receive, plan_send, PointConfig, MAX_DRAIN_SECONDS,
};
use measurelab_mcast::protocol::{
    read_bounded_line, ControlRequest, LineRead, MAX_RECEIVE_DURATION_SECONDS,
    MAX_REQUEST_LINE_BYTES,
};
use measurelab_mcast::sender::{PacingSchedule, PacingStep, SendLimit};

/// Wakeups simulated per accepted send: enough to cross slips and granularity edges.
const SIMULATED_WAKEUPS: usize = 2_000;

fuzz_target!(|data: &[u8]| {
    let config = PointConfig::new("fuzz", Ipv4Addr::new(10, 253, 0, 10));
    let mut reader = Cursor::new(data);
    let mut line = Vec::new();
    loop {
        match read_bounded_line(&mut reader, &mut line, MAX_REQUEST_LINE_BYTES) {
            Ok(LineRead::Eof) => break,
            Ok(LineRead::TooLong) => {
                assert!(data.len() > MAX_REQUEST_LINE_BYTES);
                break;
            }
            Ok(LineRead::Line) => {
                assert!(line.len() <= MAX_REQUEST_LINE_BYTES);
                if let Ok(request) = serde_json::from_slice(line.trim_ascii()) {
                    check_request(&request, &config);
                }
            }
            Err(err) => panic!("reading from memory failed: {err}"),
        }
    }
});

fn check_request(request: &ControlRequest, config: &PointConfig) {
    match request {
        ControlRequest::Info => {}
        ControlRequest::Send(send) => {
            let Ok(sender) = plan_send(send, config) else {
                return;
            };
            if let Err(err) = sender.validate() {
                panic!("the point accepted a send its sender refuses: {err}");
            }
            assert!(sender.rate_pps <= config.max_rate_pps);
            let SendLimit::DurationSeconds(seconds) = sender.limit else {
                panic!("a point's send is bounded by duration");
            };
            let duration = Duration::from_secs_f64(seconds);
            check_schedule(
                PacingSchedule::new(
                    sender.rate_pps,
                    sender.pacing_granularity,
                    sender.max_catch_up_packets,
                    Some(duration),
                ),
                send.session_id,
            );
        }
        ControlRequest::Receive(receive) => {
            let Ok((receiver, limit)) = plan_receive(receive, config) else {
                return;
            };
            if let Err(err) = receiver.validate() {
                panic!("the point accepted a receive its receiver refuses: {err}");
            }
            assert!(limit.as_secs_f64() <= MAX_RECEIVE_DURATION_SECONDS);
            assert!(Instant::now().checked_add(limit).is_some());
        }
        ControlRequest::Stop { drain_seconds, .. } => {
            assert!(drain_duration(*drain_seconds).as_secs_f64() <= MAX_DRAIN_SECONDS);
        }
    }
}

/// Wakes the schedule at times drawn from `seed` (a sender late by up to a second) and
/// counts the probes each wakeup releases.
fn check_schedule(mut schedule: PacingSchedule, seed: u64) {
    let bound = schedule.burst_bound();
    let mut state = seed | 1;
    let mut now_ns = 0u64;
    for _ in 0..SIMULATED_WAKEUPS {
        // xorshift: cheap, deterministic lateness from the request itself.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut released = 0u64;
        loop {
            match schedule.step(now_ns) {
                PacingStep::Finished => return,
                PacingStep::WaitUntil(due) => {
                    now_ns = due.max(now_ns) + state % 1_000_000_000;
                    break;
                }
                PacingStep::Send { .. } => {
                    schedule.advance();
                    released += 1;
                    assert!(
                        released <= bound,
                        "wakeup released {released} > bound {bound}"
                    );
                }
            }
        }
    }
}
