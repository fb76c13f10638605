//! Point registration and liveness with real processes: points started with `--mscs`
//! register and heartbeat, an MSCS without `--point` flags runs its round robin over
//! them, a SIGKILLed point leaves the rotation within its deadline (and results name it
//! missing), and a restarted one rejoins. Plus the refusals that need no namespaces.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use common::{receiver, Lab};
use measurelab_mcast::auth::ControlKey;
use measurelab_mcast::mscs::{run, MscsConfig, RegistrationConfig};
use serde_json::{json, Value};

/// Liveness of every listed point, by name.
fn point_states(lab: &Lab) -> Result<Vec<(String, String)>> {
    let (status, body) = lab.api("GET", "/points", None)?;
    if status != 200 {
        bail!("GET /points: {status} {body}");
    }
    Ok(body["points"]
        .as_array()
        .ok_or_else(|| anyhow!("no points in {body}"))?
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_string(),
                p["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect())
}

/// Polls `GET /points` until `wanted` holds; returns when it first did.
fn wait_for_points(
    lab: &Lab,
    what: &str,
    timeout: Duration,
    wanted: impl Fn(&[(String, String)]) -> bool,
) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let states = point_states(lab)?;
        if wanted(&states) {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!(
                "{what}: not within {timeout:?}; points {states:?}; MSCS log:\n{}",
                lab.mscs_log()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn state_of<'a>(states: &'a [(String, String)], name: &str) -> Option<&'a str> {
    states
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, s)| s.as_str())
}

fn last_seq(lab: &Lab) -> Result<u64> {
    Ok(lab
        .results()?
        .last()
        .and_then(|r| r["seq"].as_u64())
        .unwrap_or(0))
}

/// Waits for `count` results with seq > `after`, returns them.
fn results_after(lab: &Lab, after: u64, count: usize, timeout: Duration) -> Result<Vec<Value>> {
    let deadline = Instant::now() + timeout;
    loop {
        let results: Vec<Value> = lab
            .results()?
            .into_iter()
            .filter(|r| r["seq"].as_u64().unwrap_or(0) > after)
            .collect();
        if results.len() >= count {
            return Ok(results);
        }
        if Instant::now() > deadline {
            bail!(
                "{} of {count} results after seq {after} within {timeout:?}; MSCS log:\n{}",
                results.len(),
                lab.mscs_log()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

const DEADLINE_SECONDS: f64 = 1.5;

#[test]
fn a_killed_point_leaves_the_rotation_within_its_deadline_and_rejoins() -> Result<()> {
    let mut lab = Lab::registering("rg", 21, 3)?;
    lab.start_mscs(&[
        "--point-deadline-seconds",
        &DEADLINE_SECONDS.to_string(),
        "--interval-seconds",
        "1.5",
        "--duration-seconds",
        "0.5",
        "--rate-pps",
        "200",
        "--group",
        "239.200.21.1",
    ])?;
    let all_active = |states: &[(String, String)]| {
        ["p1", "p2", "p3"]
            .iter()
            .all(|name| state_of(states, name) == Some("active"))
    };
    wait_for_points(
        &lab,
        "all three registered",
        Duration::from_secs(20),
        all_active,
    )?;
    // A full rotation over the registered points before the kill.
    let first = results_after(&lab, 0, 3, Duration::from_secs(30))?;
    let sources: Vec<_> = first
        .iter()
        .map(|r| r["document"]["source_point"].clone())
        .collect();
    assert!(sources.contains(&json!("p3")), "{sources:?}");

    // Mid-period: p3 dies without a word.
    lab.kill_point(2);
    let killed_at = Instant::now();
    let missing_at = wait_for_points(&lab, "p3 missing", Duration::from_secs(10), |states| {
        state_of(states, "p3") == Some("missing")
    })?;
    // Its last heartbeat was before the kill, so the deadline ran out at most
    // DEADLINE after the kill; the rest is this poll's granularity.
    let took = missing_at - killed_at;
    assert!(
        took <= Duration::from_secs_f64(DEADLINE_SECONDS + 1.0),
        "p3 left the rotation {took:?} after the kill (deadline {DEADLINE_SECONDS} s)"
    );
    let states = point_states(&lab)?;
    assert!(
        ["p1", "p2"]
            .iter()
            .all(|n| state_of(&states, n) == Some("active")),
        "the live points stay active: {states:?}"
    );

    // Runs planned while p3 is missing: the one in flight at detection may predate it.
    let seen = last_seq(&lab)?;
    let during = results_after(&lab, seen + 1, 3, Duration::from_secs(30))?;
    // Still missing after those runs: they all ran during its absence.
    assert_eq!(state_of(&point_states(&lab)?, "p3"), Some("missing"));
    let mut absent_sources = Vec::new();
    for result in during.iter().take(3) {
        let document = &result["document"];
        let source = document["source_point"].as_str().unwrap_or_default();
        assert_ne!(source, "p3", "a missing point was the source: {document:#}");
        absent_sources.push(source.to_string());
        let p3 = receiver(document, "p3");
        assert_eq!(p3["status"], "missing", "{document:#}");
        assert!(
            p3["error"]
                .as_str()
                .unwrap_or_default()
                .contains("heartbeat"),
            "{p3:#}"
        );
        assert!(p3["metrics"].is_null());
        let other = if source == "p1" { "p2" } else { "p1" };
        assert_eq!(receiver(document, other)["status"], "ok", "{document:#}");
        assert_eq!(document["status"], "partial");
    }
    // The round robin goes on over the active points only.
    absent_sources.dedup();
    assert!(
        absent_sources.len() >= 2,
        "the rotation alternates p1 and p2: {absent_sources:?}"
    );

    // Restarted, p3 registers again and gets its turns back.
    lab.start_point(2)?;
    wait_for_points(&lab, "p3 back", Duration::from_secs(20), all_active)?;
    let back = last_seq(&lab)?;
    let after = results_after(&lab, back + 1, 3, Duration::from_secs(30))?;
    let rejoined: Vec<_> = after.iter().take(3).collect();
    assert!(
        rejoined
            .iter()
            .any(|r| r["document"]["source_point"] == "p3"),
        "p3 is a source again: {:?}",
        rejoined
            .iter()
            .map(|r| r["document"]["source_point"].clone())
            .collect::<Vec<_>>()
    );
    for result in rejoined {
        let document = &result["document"];
        assert_eq!(document["status"], "ok", "{document:#}");
    }
    Ok(())
}

#[test]
fn a_restarted_mscs_keeps_live_points_until_they_miss_a_deadline() -> Result<()> {
    let mut lab = Lab::registering("rr", 22, 3)?;
    let args = [
        "--point-deadline-seconds",
        "6",
        "--no-periodic",
        "--group",
        "239.200.22.1",
    ];
    lab.start_mscs(&args)?;
    wait_for_points(&lab, "all registered", Duration::from_secs(20), |states| {
        states.len() == 3 && states.iter().all(|(_, s)| s == "active")
    })?;
    lab.sigkill_mscs();
    lab.kill_point(1);
    lab.start_mscs(&args)?;
    // Straight after the restart, before any heartbeat could have arrived for p2.
    let states = point_states(&lab)?;
    assert_eq!(
        states,
        vec![
            ("p1".to_string(), "active".to_string()),
            ("p2".to_string(), "active".to_string()),
            ("p3".to_string(), "active".to_string()),
        ],
        "the restarted MSCS forgot live points"
    );
    wait_for_points(&lab, "p2 missing", Duration::from_secs(15), |states| {
        state_of(states, "p2") == Some("missing")
    })?;
    let states = point_states(&lab)?;
    assert_eq!(state_of(&states, "p1"), Some("active"), "{states:?}");
    assert_eq!(state_of(&states, "p3"), Some("active"), "{states:?}");
    // A task naming the missing point as source is refused, naming the field.
    let (status, body) = lab.api(
        "POST",
        "/tasks",
        Some(&json!({"source": "p2", "duration_seconds": 0.2})),
    )?;
    assert_eq!(status, 201, "{body}");
    let document = lab.run_task(
        &json!({"source": "p1", "duration_seconds": 0.3, "rate_pps": 100}),
        Duration::from_secs(20),
    )?;
    assert_eq!(
        receiver(&document, "p2")["status"],
        "missing",
        "{document:#}"
    );
    assert_eq!(receiver(&document, "p3")["status"], "ok", "{document:#}");
    let (_, task) = lab.api(
        "GET",
        &format!("/tasks/{}", body["id"].as_str().unwrap_or_default()),
        None,
    )?;
    assert_eq!(task["status"], "failed", "{task:#}");
    assert!(
        task["error"]
            .as_str()
            .unwrap_or_default()
            .contains("missing"),
        "{task:#}"
    );
    Ok(())
}

async fn start_mscs(state_dir: &std::path::Path) -> (String, tokio::sync::oneshot::Sender<()>) {
    start_mscs_with_key(state_dir, None).await
}

async fn start_mscs_with_key(
    state_dir: &std::path::Path,
    key: Option<ControlKey>,
) -> (String, tokio::sync::oneshot::Sender<()>) {
    let mut config = MscsConfig::new(Vec::new(), state_dir.join("state.json"));
    config.control_key = key;
    config.periodic = None;
    config.registration = Some(RegistrationConfig {
        deadline: Duration::from_secs(30),
    });
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        run(config, listener, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (base, stop)
}

#[tokio::test]
async fn registrations_are_bounded_and_a_version_mismatch_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _stop) = start_mscs(dir.path()).await;
    let http = reqwest::Client::new();
    let good = json!({"name": "p1", "data_addr": "127.0.0.1", "control_addr": "127.0.0.1:7400", "protocol_version": 2});
    let post = |body: String| {
        http.post(format!("{base}/points"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let response = post(good.to_string()).await.unwrap();
    assert_eq!(response.status(), 200);
    let ack: Value = response.json().await.unwrap();
    assert_eq!(ack["deadline_seconds"], 30.0);
    assert_eq!(ack["heartbeat_seconds"], 10.0);

    let mut newer = good.clone();
    newer["name"] = "p2".into();
    newer["protocol_version"] = 3.into();
    let response = post(newer.to_string()).await.unwrap();
    assert_eq!(response.status(), 409);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "protocol_version_mismatch");
    assert_eq!(error["error"]["field"], "protocol_version");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("version 3") && message.contains("version 2"),
        "{message}"
    );

    // A body past the bound is cut off before it is parsed.
    let mut huge = good.clone();
    huge["name"] = "x".repeat(10_000).into();
    let response = post(huge.to_string()).await.unwrap();
    assert_eq!(response.status(), 413);
    let mut long_name = good.clone();
    long_name["name"] = "x".repeat(65).into();
    let response = post(long_name.to_string()).await.unwrap();
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["field"], "name");

    let listed: Value = http
        .get(format!("{base}/points"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<_> = listed["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].clone())
        .collect();
    assert_eq!(
        names,
        vec![json!("p1")],
        "refused registrations left nothing"
    );
}

/// Answers every request with the MSCS's version-mismatch refusal.
fn refusing_mscs() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let body = json!({"error": {"code": "protocol_version_mismatch", "field": "protocol_version",
                "message": "protocol_version: point \"p9\" speaks control protocol version 1, this MSCS speaks version 2"}})
            .to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 409 Conflict\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok(port)
}

#[test]
fn a_point_refused_for_its_protocol_version_exits_saying_why() -> Result<()> {
    let port = refusing_mscs()?;
    let mut point = Command::new(common::POINT_BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--name",
            "p9",
            "--data-addr",
            "127.0.0.1",
            "--mscs",
            &format!("127.0.0.1:{port}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = point.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = point.kill();
            bail!("the refused point kept serving");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    point
        .stderr
        .take()
        .ok_or_else(|| anyhow!("no stderr"))?
        .read_to_string(&mut stderr)?;
    assert!(!status.success());
    assert!(
        stderr.contains("refused the registration") && stderr.contains("version 2"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn the_api_of_a_keyed_mscs_answers_only_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let task_a = ControlKey::from_hex("task-a", &ControlKey::generate_hex()).unwrap();
    let task_b = ControlKey::from_hex("task-b", &ControlKey::generate_hex()).unwrap();
    let (base, _stop) = start_mscs_with_key(dir.path(), Some(task_a.clone())).await;
    let http = reqwest::Client::new();
    let refused = |response: reqwest::Response, reason: &'static str| async move {
        assert_eq!(response.status(), 401);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "unauthenticated");
        let message = error["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains(reason), "{message}");
    };
    let registration = json!({"name": "p1", "data_addr": "127.0.0.1",
        "control_addr": "127.0.0.1:7400", "protocol_version": 2});
    // Without a key, with a malformed header, with task B's key: 401, nothing done.
    refused(
        http.get(format!("{base}/tasks")).send().await.unwrap(),
        "no Authorization header",
    )
    .await;
    refused(
        http.post(format!("{base}/points"))
            .json(&registration)
            .send()
            .await
            .unwrap(),
        "no Authorization header",
    )
    .await;
    refused(
        http.get(format!("{base}/points"))
            .header("authorization", task_a.bearer())
            .send()
            .await
            .unwrap(),
        "not `Bearer KEY`",
    )
    .await;
    refused(
        http.post(format!("{base}/tasks"))
            .bearer_auth(task_b.bearer())
            .json(&json!({"source": "p1"}))
            .send()
            .await
            .unwrap(),
        "not this MSCS's control key",
    )
    .await;
    // Health needs no key; the key opens everything else.
    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let listed: Value = http
        .get(format!("{base}/points"))
        .bearer_auth(task_a.bearer())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["points"],
        json!([]),
        "a refused registration was applied"
    );
    let tasks: Value = http
        .get(format!("{base}/tasks"))
        .bearer_auth(task_a.bearer())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tasks["tasks"], json!([]), "a refused task was queued");
    let registered = http
        .post(format!("{base}/points"))
        .bearer_auth(task_a.bearer())
        .json(&registration)
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 200);
    assert!(measurelab_mcast::mscs::api::refused_unauthenticated() >= 4);
}
