//! A measurement point's control connection: anyone on the service network can send it
//! lines, and a task's key holder can send it any order.
//!
//! Invariants: a line read never exceeds the bound; a keyed point never authorizes an
//! unsigned `send` or `receive`, nor a `signed` one whose proof does not verify (the
//! fuzzer cannot forge a MAC, so an authorized `signed` line is a bug); the request
//! inside a `signed` line is checked as if it were authorized; a `send` the point accepts is one
//! its sender accepts too, at or under the point's rate ceiling, and its schedule never
//! releases more probes in one wakeup than its stated burst bound; a `receive` the point
//! accepts has a duration that fits a deadline; a `stop`'s drain is clamped.
#![no_main]

use std::io::Cursor;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

use measurelab_mcast::auth::{ControlKey, KeyRing};
use measurelab_mcast::point::{
    authorize, drain_duration, plan_receive, plan_send, PointConfig, MAX_DRAIN_SECONDS,
};
use measurelab_mcast::protocol::{
    read_bounded_line, ControlRequest, LineRead, MAX_RECEIVE_DURATION_SECONDS,
    MAX_REQUEST_LINE_BYTES,
};
use measurelab_mcast::sender::{PacingSchedule, PacingStep, SendLimit};

/// Wakeups simulated per accepted send: enough to cross slips and granularity edges.
const SIMULATED_WAKEUPS: usize = 2_000;

/// The one task key of the fuzzed point.
const TASK: &str = "fuzz-task";
const SECRET: &str = "1111111111111111111111111111111111111111111111111111111111111111";

fuzz_target!(|data: &[u8]| {
    let key = ControlKey::from_hex(TASK, SECRET).expect("a valid fixed key");
    let config = PointConfig {
        keys: Some(Arc::new(KeyRing::with_keys([key]))),
        // An unknown task must not make the fuzzer wait for its key.
        key_wait: Duration::ZERO,
        ..PointConfig::new("fuzz", Ipv4Addr::new(10, 253, 0, 10))
    };
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
                    check_authorization(request, &config);
                }
            }
            Err(err) => panic!("reading from memory failed: {err}"),
        }
    }
});

fn check_authorization(request: ControlRequest, config: &PointConfig) {
    let inner = match &request {
        ControlRequest::Signed(signed) => serde_json::from_str(&signed.request).ok(),
        _ => None,
    };
    match (authorize(request.clone(), config), &request) {
        (Ok(_), ControlRequest::Send(_) | ControlRequest::Receive(_)) => {
            panic!("a keyed point authorized an unsigned {}", request.op())
        }
        (Ok(_), ControlRequest::Signed(signed)) => {
            panic!("a forged proof for task {:?} was accepted", signed.task)
        }
        (Ok(authorized), _) => check_request(&authorized, config),
        (Err(_), _) => {}
    }
    // The point's checks behind the proof still hold for whatever a key holder sends.
    if let Some(inner) = inner {
        check_request(&inner, config);
    }
}

fn check_request(request: &ControlRequest, config: &PointConfig) {
    match request {
        ControlRequest::Info => {}
        ControlRequest::Signed(_) => {}
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
