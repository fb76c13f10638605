//! The MSCS inside the platform: tasks from the platform API, results back to it, with a
//! real `mcast-mscs` process and real `mcast-point serve` processes in network namespaces
//! on a private userspace OVS bridge.
//!
//! `FakePlatform` stands in for the guest agent's local API (`127.0.0.1:7079` inside the
//! guest, crate guest/), which relays to the node agent and the controller: it serves
//! `GET /tasks` and `POST /results` in the MSCS's namespace on that namespace's loopback,
//! exactly where the MSCS would find the guest agent, and can be switched to answer 503.
//! The platform behind it (channel, node agent, controller) is out of scope here.
//!
//! Also: the node agent's service-host path (`service::run_task`, `service::spawn_point`)
//! over the same real points.

mod common;

use std::fs::File;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use common::{in_netns, Lab, CONTROL_PORT};
use measurelab_mcast::platform::ControllerTask;
use measurelab_mcast::result::{ReceiverStatus, ResultDocument, ResultSchema, RunStatus};
use measurelab_mcast::service;
use nix::sched::{setns, CloneFlags};
use serde_json::{json, Value};

const PLATFORM_API: &str = "http://127.0.0.1:7079";

#[derive(Default)]
struct FakeState {
    /// What `GET /tasks` lists.
    tasks: Mutex<Vec<Value>>,
    /// Answer `{"tasks":[...]}` like the guest agent (true) or a bare list.
    wrapped: Mutex<bool>,
    /// When set, `GET /tasks` answers 503.
    tasks_down: Mutex<bool>,
    /// When set, `POST /results` answers 503.
    results_down: Mutex<bool>,
    /// Documents answered with 202, in arrival order.
    accepted: Mutex<Vec<Value>>,
    /// `POST /results` answered with 503.
    refused_posts: AtomicUsize,
    /// `GET /tasks` answered with 200.
    polls: AtomicUsize,
}

/// Stand-in for the guest agent's local platform API (see the module comment).
struct FakePlatform {
    state: Arc<FakeState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<Result<()>>>,
}

async fn get_tasks(State(state): State<Arc<FakeState>>) -> Response {
    if *state.tasks_down.lock().unwrap() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error":{"code":"channel_down","message":"fake outage"}})),
        )
            .into_response();
    }
    state.polls.fetch_add(1, Ordering::SeqCst);
    let tasks = state.tasks.lock().unwrap().clone();
    if *state.wrapped.lock().unwrap() {
        Json(json!({ "tasks": tasks })).into_response()
    } else {
        Json(Value::Array(tasks)).into_response()
    }
}

async fn post_result(State(state): State<Arc<FakeState>>, Json(document): Json<Value>) -> Response {
    if *state.results_down.lock().unwrap() {
        state.refused_posts.fetch_add(1, Ordering::SeqCst);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error":{"code":"channel_down","message":"fake outage"}})),
        )
            .into_response();
    }
    state.accepted.lock().unwrap().push(document);
    (StatusCode::ACCEPTED, Json(json!({"accepted": true}))).into_response()
}

impl FakePlatform {
    /// Serves on 127.0.0.1:7079 inside `lab`'s MSCS namespace.
    fn start(lab: &Lab) -> Result<Self> {
        let state = Arc::new(FakeState {
            wrapped: Mutex::new(true),
            ..FakeState::default()
        });
        let netns_path = format!("/run/netns/{}", lab.mscs_ns.name());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let app = Router::new()
            .route("/tasks", get(get_tasks))
            .route("/results", axum::routing::post(post_result))
            .with_state(Arc::clone(&state));
        let thread = thread::spawn(move || -> Result<()> {
            let bound = (|| -> Result<(tokio::runtime::Runtime, std::net::TcpListener)> {
                let file = File::open(&netns_path).with_context(|| format!("open {netns_path}"))?;
                setns(&file, CloneFlags::CLONE_NEWNET).context("setns")?;
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let listener = std::net::TcpListener::bind("127.0.0.1:7079")?;
                listener.set_nonblocking(true)?;
                Ok((runtime, listener))
            })();
            let (runtime, listener) = match bound {
                Ok(bound) => {
                    let _ = ready_tx.send(Ok(()));
                    bound
                }
                Err(err) => {
                    let _ = ready_tx.send(Err(anyhow!("{err:#}")));
                    return Err(err);
                }
            };
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await?;
                Ok(())
            })
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow!("fake platform API did not start"))??;
        Ok(Self {
            state,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn set_tasks(&self, tasks: Vec<Value>) {
        *self.state.tasks.lock().unwrap() = tasks;
    }

    fn accepted(&self) -> Vec<Value> {
        self.state.accepted.lock().unwrap().clone()
    }

    fn polls(&self) -> usize {
        self.state.polls.load(Ordering::SeqCst)
    }

    fn wait_for_accepted(
        &self,
        at_least: usize,
        timeout: Duration,
        lab: &Lab,
    ) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let accepted = self.accepted();
            if accepted.len() >= at_least {
                return Ok(accepted);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} of {at_least} results accepted after {timeout:?}; MSCS log:\n{}",
                    accepted.len(),
                    lab.mscs_log()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_for_polls(&self, more_than: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.polls() <= more_than {
            if Instant::now() > deadline {
                bail!("no more than {more_than} task polls after {timeout:?}");
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for FakePlatform {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn state_file(lab: &Lab) -> Result<Value> {
    Ok(serde_json::from_slice(&std::fs::read(lab.state_file())?)?)
}

fn started_at_unix(document: &Value) -> f64 {
    let text = document["started_at"].as_str().unwrap();
    let at =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap();
    at.unix_timestamp_nanos() as f64 / 1e9
}

/// A measured run: the source sent, every listed receiver got every probe. Read as the
/// typed document, so a field the document lacks or mistypes fails here too.
fn assert_clean_run(document: &Value, source: &str, receivers: &[&str]) {
    let typed: ResultDocument = serde_json::from_value(document.clone())
        .unwrap_or_else(|e| panic!("not a result document ({e}): {document:#}"));
    assert_eq!(typed.schema, ResultSchema::V1);
    assert_eq!(typed.status, RunStatus::Ok, "{document:#}");
    assert_eq!(typed.source_point, source);
    assert!(!typed.run_id.is_empty());
    let sent = typed.source.report.as_ref().map_or(0, |r| r.packets_sent);
    assert!(sent > 0, "{document:#}");
    for point in receivers {
        let r = typed
            .receivers
            .iter()
            .find(|r| r.point == *point)
            .unwrap_or_else(|| panic!("no receiver {point}: {document:#}"));
        assert_eq!(r.status, ReceiverStatus::Ok, "{r:#?}");
        assert_eq!(
            r.metrics.as_ref().map(|m| m.packets_received),
            Some(sent),
            "{r:#?}"
        );
    }
}

/// The MSCS holds at most one record of the platform task `id`, and it is not waiting
/// to run or running: a once task taken in again would be queued as a new record.
fn assert_not_queued_again(lab: &Lab, id: &str) -> Result<()> {
    let (_, listing) = lab.api("GET", "/tasks", None)?;
    let records: Vec<&Value> = listing["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|task| task["id"] == id)
        .collect();
    assert!(
        records.len() <= 1
            && records
                .iter()
                .all(|task| task["status"] == "succeeded" || task["status"] == "failed"),
        "the once task {id} was taken in again: {records:#?}"
    );
    Ok(())
}

#[test]
fn once_task_from_the_platform_yields_exactly_one_result_across_restarts() -> Result<()> {
    let mut lab = Lab::new("po", 21, 3)?;
    let platform = FakePlatform::start(&lab)?;
    platform.set_tasks(vec![json!({
        "id": "task-once-21", "name": "quick", "mode": "platform", "platform": "pf1",
        "schedule": "once", "duration_seconds": 1, "rate_pps": 200, "packet_size_bytes": 120,
        "group": "239.200.21.1", "port": common::PROBE_PORT, "ttl": 4, "ssm": false,
        "source": "p2", "receivers": null, "status": "pending",
        "created_at": "2026-11-25T00:00:00Z"
    })]);
    let args = [
        "--platform-api",
        PLATFORM_API,
        "--platform-poll-seconds",
        "0.3",
    ];
    lab.start_mscs_with(&args, true)?;

    let accepted = platform.wait_for_accepted(1, Duration::from_secs(30), &lab)?;
    let document = &accepted[0];
    assert_eq!(document["task_id"], "task-once-21");
    assert_eq!(document["kind"], "task");
    assert_eq!(document["config"]["packet_size_bytes"], 120);
    assert_eq!(document["config"]["ttl"], 4);
    assert_clean_run(document, "p2", &["p1", "p3"]);

    // The task stays listed: later polls, a SIGKILL and a restart must not run it again.
    let polls = platform.polls();
    platform.wait_for_polls(polls + 3, Duration::from_secs(10))?;
    lab.sigkill_mscs();
    let handled = state_file(&lab)?["platform_tasks_handled"].clone();
    assert_eq!(handled, json!(["task-once-21"]));
    lab.start_mscs_with(&args, true)?;
    // A poll's answer is taken in (a re-run would be queued as a task record) before
    // the next poll goes out: after five polls the task list shows any re-run.
    let polls = platform.polls();
    platform.wait_for_polls(polls + 5, Duration::from_secs(10))?;
    assert_not_queued_again(&lab, "task-once-21")?;
    assert_eq!(platform.accepted().len(), 1, "the once task ran again");
    let (_, schedule) = lab.api("GET", "/schedule", None)?;
    assert!(schedule["current_run"].is_null(), "{schedule:#}");
    assert_eq!(lab.results()?.len(), 1);
    assert_eq!(schedule["outbox_pending"], 0);
    assert_eq!(schedule["results_delivered"], 1);
    Ok(())
}

#[test]
fn periodic_task_from_the_platform_runs_round_robin_at_its_interval() -> Result<()> {
    let mut lab = Lab::new("pp", 22, 3)?;
    let platform = FakePlatform::start(&lab)?;
    *platform.state.wrapped.lock().unwrap() = false;
    let interval = 4.0;
    platform.set_tasks(vec![json!({
        "id": "task-periodic-22", "schedule": "periodic", "interval_seconds": interval,
        "duration_seconds": 1, "rate_pps": 200, "group": "239.200.22.1",
        "port": common::PROBE_PORT
    })]);
    lab.start_mscs(&[
        "--platform-api",
        PLATFORM_API,
        "--platform-poll-seconds",
        "0.5",
    ])?;

    let accepted = platform.wait_for_accepted(3, Duration::from_secs(40), &lab)?;
    let sources = ["p1", "p2", "p3"];
    for (index, document) in accepted.iter().take(3).enumerate() {
        assert_eq!(document["task_id"], "task-periodic-22");
        assert_eq!(document["kind"], "periodic");
        let source = sources[index];
        let receivers: Vec<&str> = sources.iter().copied().filter(|p| *p != source).collect();
        assert_clean_run(document, source, &receivers);
    }
    // Runs start on the interval's grid; the slack absorbs a loaded machine.
    for pair in accepted.windows(2).take(2) {
        let gap = started_at_unix(&pair[1]) - started_at_unix(&pair[0]);
        eprintln!("figure: periodic run start gap {gap:.3} s (interval {interval} s)");
        assert!(
            (interval - 0.5..interval + 2.0).contains(&gap),
            "runs {gap:.2} s apart, interval {interval} s"
        );
    }
    let run_ids: std::collections::HashSet<_> =
        accepted.iter().map(|d| d["run_id"].clone()).collect();
    assert_eq!(
        run_ids.len(),
        accepted.len(),
        "a result was delivered twice"
    );

    // The controller deletes the task: the schedule stops (a run in flight may finish).
    platform.set_tasks(vec![]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, schedule) = lab.api("GET", "/schedule", None)?;
        if schedule["platform_periodic"] == json!({}) && schedule["current_run"].is_null() {
            break;
        }
        if Instant::now() > deadline {
            bail!("periodic task not stopped: {schedule:#}");
        }
        thread::sleep(Duration::from_millis(100));
    }
    // The last run's result delivered, then one whole interval (plus a second) in
    // which a schedule that still ran would start another: the interval is what is
    // tested here, not a wait for something to happen.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, schedule) = lab.api("GET", "/schedule", None)?;
        if schedule["outbox_pending"] == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the last result was never delivered: {schedule:#}");
        }
        thread::sleep(Duration::from_millis(100));
    }
    let settled = platform.accepted().len();
    thread::sleep(Duration::from_secs_f64(interval + 1.0));
    assert_eq!(
        platform.accepted().len(),
        settled,
        "runs went on after the task was deleted"
    );
    Ok(())
}

#[test]
fn result_made_while_the_relay_is_down_survives_sigkill_and_arrives_once() -> Result<()> {
    let mut lab = Lab::new("ro", 23, 3)?;
    let platform = FakePlatform::start(&lab)?;
    *platform.state.results_down.lock().unwrap() = true;
    platform.set_tasks(vec![json!({
        "id": "task-outage-23", "schedule": "once", "duration_seconds": 1, "rate_pps": 200,
        "group": "239.200.23.1", "port": common::PROBE_PORT
    })]);
    let args = [
        "--platform-api",
        PLATFORM_API,
        "--platform-poll-seconds",
        "0.3",
    ];
    lab.start_mscs(&args)?;

    // Wait until the result is recorded and its delivery has been refused at least once.
    let deadline = Instant::now() + Duration::from_secs(30);
    let run_id = loop {
        let state = state_file(&lab)?;
        let outbox = state["outbox"].as_array().cloned().unwrap_or_default();
        if outbox.len() == 1 && platform.state.refused_posts.load(Ordering::SeqCst) >= 1 {
            assert_eq!(outbox[0]["document"]["task_id"], "task-outage-23");
            break outbox[0]["document"]["run_id"]
                .as_str()
                .unwrap()
                .to_string();
        }
        if Instant::now() > deadline {
            bail!("no refused delivery: {state:#}\n{}", lab.mscs_log());
        }
        thread::sleep(Duration::from_millis(100));
    };
    // The whole relay goes down, and the MSCS is killed.
    *platform.state.tasks_down.lock().unwrap() = true;
    lab.sigkill_mscs();
    let refused_before_restart = platform.state.refused_posts.load(Ordering::SeqCst);

    lab.start_mscs(&args)?;
    // After the restart the outbox is retried (and refused) while the relay is down.
    let deadline = Instant::now() + Duration::from_secs(15);
    while platform.state.refused_posts.load(Ordering::SeqCst) <= refused_before_restart {
        if Instant::now() > deadline {
            bail!("the restarted MSCS never retried; log:\n{}", lab.mscs_log());
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert!(platform.accepted().is_empty());

    *platform.state.tasks_down.lock().unwrap() = false;
    *platform.state.results_down.lock().unwrap() = false;
    let recovered = Instant::now();
    let accepted = platform.wait_for_accepted(1, Duration::from_secs(40), &lab)?;
    // Bounded by the delivery backoff (at most 30 s); informational only.
    eprintln!(
        "figure: result delivered {:.2} s after the relay recovered",
        recovered.elapsed().as_secs_f64()
    );
    assert_eq!(accepted[0]["run_id"], run_id.as_str());
    assert_clean_run(&accepted[0], "p1", &["p2", "p3"]);
    // Polls resume, the task is not re-run and nothing is delivered twice.
    let polls = platform.polls();
    platform.wait_for_polls(polls + 5, Duration::from_secs(15))?;
    assert_not_queued_again(&lab, "task-outage-23")?;
    assert_eq!(platform.accepted().len(), 1);
    assert_eq!(lab.results()?.len(), 1);
    let state = state_file(&lab)?;
    assert_eq!(state["outbox"], json!([]));
    assert_eq!(state["results_delivered"], 1);
    Ok(())
}

#[test]
fn service_run_task_measures_over_serving_points() -> Result<()> {
    let lab = Lab::new("sv", 24, 3)?;
    // One more point served in-process by the library, in p1's namespace on another port:
    // the node agent's way of starting a point on its service address.
    let p1_addr: std::net::Ipv4Addr = lab.points[0].addr.parse()?;
    let in_process_control = SocketAddr::from((p1_addr, CONTROL_PORT + 1));
    let in_process = in_netns(&lab.points[0].ns, move || {
        Ok(service::spawn_point(
            in_process_control,
            "svc",
            p1_addr,
            None,
        )?)
    })?;
    assert_eq!(in_process.local_addr(), in_process_control);

    let mut points: Vec<(String, SocketAddr)> = lab.points[1..]
        .iter()
        .map(|p| {
            Ok((
                p.name.clone(),
                format!("{}:{CONTROL_PORT}", p.addr).parse()?,
            ))
        })
        .collect::<Result<_>>()?;
    points.push(("svc".to_string(), in_process_control));
    let task = ControllerTask::from_json(&json!({
        "id": "svc-task-24", "mode": "service_host", "nodes": ["n1"], "schedule": "once",
        "duration_seconds": 1, "rate_pps": 200, "group": "239.200.24.1",
        "port": common::PROBE_PORT, "source": "svc"
    }))
    .map_err(|e| anyhow!(e))?;
    // The runner only opens control connections, so it can run from any namespace that
    // reaches the points; the MSCS's is the natural one.
    let document = in_netns(&lab.mscs_ns, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(runtime.block_on(service::run_task(&task, &points))?)
    })?;
    let document = serde_json::to_value(&document)?;
    assert_eq!(document["task_id"], "svc-task-24");
    assert_eq!(document["kind"], "task");
    assert_eq!(document["source"]["data_addr"], lab.points[0].addr.as_str());
    assert_clean_run(&document, "svc", &["p2", "p3"]);
    in_process.stop()?;
    Ok(())
}
