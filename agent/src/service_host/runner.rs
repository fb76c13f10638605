//! Runs the service_host tasks this node orchestrates and delivers their
//! results. See the module docs of `service_host` for the contract.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use measurelab_api::node_v1::ServiceTask;
use measurelab_mcast::auth::{ControlKey, KeyRing, LegacyOrchestrator};
use measurelab_mcast::mscs::ProbeDefaults;
use measurelab_mcast::platform::{ControllerTask, TaskSchedule};
use measurelab_mcast::result::{
    ResultDocument, ResultSchema, RunConfig, RunKind, RunStatus, SourceResult,
};
use measurelab_mcast::service::{run_task_with, ServiceError, ServiceOptions};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};

use super::config::{ServiceHostError, RESYNC};
use crate::reconcile::{ControlPlane, ReconcileError};
use measurelab_backoff::Backoff;

/// How long after the end of its sending time a run may take before it is
/// given up (control round trips, receiver drain, slow points).
const RUN_GRACE: Duration = Duration::from_secs(60);
/// Retry delay of a run that could not start (a peer without endpoint).
const DEFER: Duration = Duration::from_secs(5);

/// Settings of [`run_tasks`].
#[derive(Debug, Clone)]
pub struct TaskRunnerConfig {
    /// This node's name, compared with the tasks' first peer.
    pub node_name: String,
    /// Directory of the per-task state files (created if missing).
    pub state_dir: PathBuf,
    /// Clock-error bound between nodes; `None`: one shared clock.
    pub clock_sync_bound_us: Option<f64>,
    /// The keys this node's point accepts: replaced with the keys of the node's open
    /// service tasks from every desired state.
    pub keys: Arc<KeyRing>,
}

/// What survives a restart, per orchestrated task.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct TaskState {
    task_id: String,
    /// Start (unix ms) of the last run whose document was stored here.
    last_started_ms: Option<i64>,
    /// Round-robin position of the next run's source.
    next_source_index: usize,
    /// A finished run's document the controller has not acknowledged yet.
    unposted: Option<serde_json::Value>,
    /// A once task whose result the controller acknowledged.
    finished: bool,
}

impl TaskState {
    fn path(dir: &Path, task_id: &str) -> PathBuf {
        dir.join(format!("{task_id}.json"))
    }

    fn load(dir: &Path, task_id: &str) -> Result<Option<TaskState>, ServiceHostError> {
        let path = Self::path(dir, task_id);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| ServiceHostError::State {
                        path,
                        reason: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ServiceHostError::State {
                path,
                reason: e.to_string(),
            }),
        }
    }

    /// Write-then-rename with fsync, so a crash leaves the old or the new
    /// state, never a torn file.
    fn store(&self, dir: &Path) -> Result<(), ServiceHostError> {
        use std::io::Write;
        let path = Self::path(dir, &self.task_id);
        let fail = |e: std::io::Error| ServiceHostError::State {
            path: path.clone(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(fail)?;
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| ServiceHostError::State {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut file = std::fs::File::create(&tmp).map_err(fail)?;
        file.write_all(&bytes).map_err(fail)?;
        file.sync_all().map_err(fail)?;
        std::fs::rename(&tmp, &path).map_err(fail)?;
        Ok(())
    }
}

/// Task ids are controller ids; keep them from naming paths elsewhere.
fn safe_task_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// One service task as this node sees it.
struct Assignment {
    task: ControllerTask,
    /// Signs the run's control requests; `None` from a controller older than keys.
    key: Option<ControlKey>,
    /// `(node, control endpoint)` in the task's node order.
    points: Vec<(String, Option<SocketAddr>)>,
    /// Peers the controller says run an agent older than control protocol
    /// version 2: only these may be driven with unsigned version-1 orders.
    v1_points: std::collections::BTreeSet<String>,
}

fn assignment(service: &ServiceTask) -> Result<Assignment, String> {
    let spec: serde_json::Value =
        serde_json::from_str(&service.spec_json).map_err(|e| format!("spec_json: {e}"))?;
    let task = ControllerTask::from_json(&spec)?;
    let key = task_key(service)?;
    let points = service
        .peers
        .iter()
        .map(|peer| (peer.node.clone(), peer.endpoint.parse::<SocketAddr>().ok()))
        .collect();
    let v1_points = service
        .peers
        .iter()
        .filter(|peer| peer.control_protocol_version == Some(1))
        .map(|peer| peer.node.clone())
        .collect();
    Ok(Assignment {
        task,
        key,
        points,
        v1_points,
    })
}

/// The not-yet-upgraded orchestrators this node's point lets order it unsigned: the
/// first peer (the orchestrator) of each task, when the controller marked it version 1
/// (its agent reported no control protocol version), for that task's group and port
/// (0.1.0's defaults when the task sets none), from the address of its service endpoint.
/// Only the controller's word counts: a point never learns one from the wire.
fn legacy_orchestrators(tasks: &[ServiceTask], node: &str) -> Vec<LegacyOrchestrator> {
    let defaults = ProbeDefaults::default();
    tasks
        .iter()
        .filter_map(|service| {
            let first = service.peers.first()?;
            if first.control_protocol_version != Some(1) || first.node == node {
                return None;
            }
            let source = first.endpoint.parse::<SocketAddr>().ok()?.ip();
            let spec: serde_json::Value = serde_json::from_str(&service.spec_json).ok()?;
            let task = ControllerTask::from_json(&spec).ok()?;
            Some(LegacyOrchestrator {
                task: service.task_id.clone(),
                source,
                group: task.group.unwrap_or(defaults.group),
                port: task.port.unwrap_or(defaults.port),
            })
        })
        .collect()
}

/// The key the controller sent with `service`, if any.
fn task_key(service: &ServiceTask) -> Result<Option<ControlKey>, String> {
    service
        .control_key
        .as_deref()
        .map(|secret| ControlKey::from_hex(&service.task_id, secret).map_err(|e| e.to_string()))
        .transpose()
}

fn now_ms() -> i64 {
    crate::logs::now_unix_ms()
}

fn rfc3339_now() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

fn started_ms(document: &serde_json::Value) -> Option<i64> {
    let text = document.get("started_at")?.as_str()?;
    let time = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    Some((time.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// A run that could not start because the task does not fit its points: a
/// `failed` document naming the field, so the user sees why (and a once task
/// ends as failed instead of being retried forever).
fn refused_document(task: &ControllerTask, source: &str, reason: String) -> ResultDocument {
    let now = rfc3339_now();
    ResultDocument {
        schema: ResultSchema::V1,
        task_id: Some(task.id.clone()),
        run_id: uuid::Uuid::new_v4().to_string(),
        kind: match task.schedule {
            TaskSchedule::Periodic => RunKind::Periodic,
            TaskSchedule::Once => RunKind::Task,
        },
        source_point: source.to_string(),
        group: task.group.unwrap_or(Ipv4Addr::UNSPECIFIED),
        port: task.port.unwrap_or(0),
        session_id: 0,
        started_at: now.clone(),
        finished_at: now,
        status: RunStatus::Failed,
        config: RunConfig {
            rate_pps: task.rate_pps.unwrap_or(0.0),
            packet_size_bytes: task.packet_size_bytes.unwrap_or(0),
            duration_seconds: task.duration_seconds(),
            ttl: task.ttl.unwrap_or(0),
            ssm: task.ssm.unwrap_or(false),
        },
        source: SourceResult {
            point: source.to_string(),
            data_addr: None,
            report: None,
            error: Some(reason),
        },
        receivers: Vec::new(),
        delay_covariances: Vec::new(),
        tree: None,
        inference: None,
        bottlenecks: Vec::new(),
        comparison: None,
    }
}

/// Runs one measurement; never fails: a refusal becomes a failed document.
async fn measure(
    task: ControllerTask,
    points: Vec<(String, SocketAddr)>,
    options: ServiceOptions,
) -> ResultDocument {
    let limit = Duration::from_secs_f64(task.duration_seconds().max(0.0)) + RUN_GRACE;
    let first = points.first().map(|p| p.0.clone()).unwrap_or_default();
    let source = task.source.clone().unwrap_or(first);
    match tokio::time::timeout(limit, run_task_with(&task, &points, &options)).await {
        Ok(Ok(document)) => document,
        Ok(Err(ServiceError::InvalidTask { field, reason, .. })) => {
            refused_document(&task, &source, format!("invalid task: {field}: {reason}"))
        }
        Ok(Err(err)) => refused_document(&task, &source, err.to_string()),
        Err(_) => refused_document(
            &task,
            &source,
            format!("the run did not finish within {limit:?}"),
        ),
    }
}

/// The loop: read the desired state, start due runs of the tasks this node
/// orchestrates, store and deliver finished documents. Returns on shutdown.
pub async fn run_tasks(
    config: TaskRunnerConfig,
    control: Arc<dyn ControlPlane>,
    mut desired_generation: watch::Receiver<u64>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut states: HashMap<String, TaskState> = HashMap::new();
    let mut in_flight: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::channel::<(String, ResultDocument)>(16);
    let mut fetch_backoff = Backoff::new(Duration::from_millis(250), RESYNC);
    let mut tasks: Option<BTreeMap<String, Assignment>> = None;
    let mut fetch_at = tokio::time::Instant::now();

    loop {
        if fetch_at <= tokio::time::Instant::now() {
            match control.desired_state().await {
                Ok(state) => {
                    fetch_backoff.reset();
                    fetch_at = tokio::time::Instant::now() + RESYNC;
                    let mut assigned = BTreeMap::new();
                    // Every listed node's point accepts the task's key, orchestrator or
                    // not; a task without one (an older controller) gets no runs on
                    // this point, whose refusals name the task.
                    let keys: Vec<ControlKey> = state
                        .service_tasks
                        .iter()
                        .filter_map(|service| match task_key(service) {
                            Ok(key) => key,
                            Err(reason) => {
                                tracing::warn!(task = %service.task_id, %reason, "unusable service task key");
                                None
                            }
                        })
                        .collect();
                    config.keys.replace(keys);
                    config.keys.replace_legacy(legacy_orchestrators(
                        &state.service_tasks,
                        &config.node_name,
                    ));
                    for service in &state.service_tasks {
                        let orchestrator = service.peers.first().map(|p| p.node.as_str());
                        if orchestrator != Some(config.node_name.as_str()) {
                            continue;
                        }
                        if !safe_task_id(&service.task_id) {
                            tracing::warn!(task = %service.task_id, "service task id is not a plain id; ignored");
                            continue;
                        }
                        match assignment(service) {
                            Ok(a) => {
                                assigned.insert(service.task_id.clone(), a);
                            }
                            Err(reason) => {
                                tracing::warn!(task = %service.task_id, %reason, "unreadable service task")
                            }
                        }
                    }
                    forget_closed(&config, &assigned, &mut states, &mut in_flight);
                    tasks = Some(assigned);
                }
                Err(err) => {
                    if !matches!(err, ReconcileError::NotRegistered) {
                        tracing::warn!(error = %err, "service host cannot fetch the desired state");
                    }
                    fetch_at = tokio::time::Instant::now() + fetch_backoff.next_delay();
                }
            }
        }

        let mut next = tokio::time::Instant::now() + RESYNC;
        if let Some(tasks) = &tasks {
            for (id, assignment) in tasks {
                let state = match states.get(id) {
                    Some(state) => state.clone(),
                    None => match TaskState::load(&config.state_dir, id) {
                        Ok(loaded) => {
                            let state = loaded.unwrap_or_else(|| TaskState {
                                task_id: id.clone(),
                                ..Default::default()
                            });
                            states.insert(id.clone(), state.clone());
                            state
                        }
                        Err(err) => {
                            tracing::error!(error = %err, "service task state unreadable; task skipped");
                            continue;
                        }
                    },
                };
                if let Some(document) = &state.unposted {
                    deliver(
                        &config,
                        control.as_ref(),
                        assignment,
                        &mut states,
                        document.clone(),
                    )
                    .await;
                    if states.get(id).is_some_and(|s| s.unposted.is_some()) {
                        // Not acknowledged: try again soon, run nothing new meanwhile.
                        next = next.min(tokio::time::Instant::now() + DEFER);
                        continue;
                    }
                }
                let state = states.get(id).cloned().unwrap_or(state);
                if in_flight.contains_key(id) || state.finished {
                    continue;
                }
                let due_ms = match (assignment.task.schedule, state.last_started_ms) {
                    (TaskSchedule::Once, Some(_)) => continue,
                    (_, None) => now_ms(),
                    (TaskSchedule::Periodic, Some(last)) => {
                        last + assignment.task.interval().as_millis() as i64
                    }
                };
                let wait_ms = due_ms - now_ms();
                if wait_ms > 0 {
                    next = next
                        .min(tokio::time::Instant::now() + Duration::from_millis(wait_ms as u64));
                    continue;
                }
                let missing: Vec<&str> = assignment
                    .points
                    .iter()
                    .filter(|(_, endpoint)| endpoint.is_none())
                    .map(|(node, _)| node.as_str())
                    .collect();
                if !missing.is_empty() {
                    tracing::warn!(task = %id, nodes = ?missing, "service task waits: nodes report no service endpoint");
                    next = next.min(tokio::time::Instant::now() + DEFER);
                    continue;
                }
                let points: Vec<(String, SocketAddr)> = assignment
                    .points
                    .iter()
                    .filter_map(|(node, endpoint)| endpoint.map(|e| (node.clone(), e)))
                    .collect();
                let options = ServiceOptions {
                    clock_sync_bound_us: config.clock_sync_bound_us,
                    source_start_index: state.next_source_index,
                    control_key: assignment.key.clone(),
                    v1_points: assignment.v1_points.clone(),
                    ..Default::default()
                };
                tracing::info!(task = %id, nodes = points.len(), "service task run starts");
                let task = assignment.task.clone();
                let done = done_tx.clone();
                let key = id.clone();
                in_flight.insert(
                    id.clone(),
                    tokio::spawn(async move {
                        let document = measure(task, points, options).await;
                        let _ = done.send((key, document)).await;
                    }),
                );
            }
        }

        let next = next.min(fetch_at);
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            changed = desired_generation.changed() => {
                if changed.is_err() {
                    return;
                }
                fetch_at = tokio::time::Instant::now();
            }
            // A peer's run reached this node's point before the desired state that
            // lists its task: fetch it now, while the point holds the request.
            () = config.keys.key_missed() => {
                fetch_at = tokio::time::Instant::now();
            }
            finished = done_rx.recv() => {
                let Some((id, document)) = finished else { return };
                in_flight.remove(&id);
                record(&config, &mut states, &id, document);
                // Deliver at once (next iteration), and see whether the task
                // is still open.
                fetch_at = tokio::time::Instant::now();
            }
            _ = shutdown.wait_for(|stop| *stop) => {
                for (_, run) in in_flight.drain() {
                    run.abort();
                }
                return;
            }
        }
    }
}

/// Stores a finished run before anything is posted, so a restart re-posts
/// the same document (same `run_id`) instead of losing or repeating it.
fn record(
    config: &TaskRunnerConfig,
    states: &mut HashMap<String, TaskState>,
    id: &str,
    document: ResultDocument,
) {
    let value = match serde_json::to_value(&document) {
        Ok(value) => value,
        Err(err) => {
            tracing::error!(task = %id, error = %err, "cannot encode a result document");
            return;
        }
    };
    let state = states.entry(id.to_string()).or_insert_with(|| TaskState {
        task_id: id.to_string(),
        ..Default::default()
    });
    state.last_started_ms = started_ms(&value).or(Some(now_ms()));
    state.next_source_index = state.next_source_index.wrapping_add(1);
    state.unposted = Some(value);
    tracing::info!(task = %id, run = %document.run_id, status = ?document.status,
        receivers = document.receivers.len(), "service task run finished");
    if let Err(err) = state.store(&config.state_dir) {
        tracing::error!(error = %err, "cannot persist a finished service run");
    }
}

async fn deliver(
    config: &TaskRunnerConfig,
    control: &dyn ControlPlane,
    assignment: &Assignment,
    states: &mut HashMap<String, TaskState>,
    document: serde_json::Value,
) {
    let id = assignment.task.id.clone();
    let json = document.to_string();
    match control.post_result("", &id, json).await {
        Ok(result_id) => {
            tracing::info!(task = %id, result = %result_id, "service task result delivered");
            if let Some(state) = states.get_mut(&id) {
                state.unposted = None;
                if assignment.task.schedule == TaskSchedule::Once {
                    state.finished = true;
                }
                if let Err(err) = state.store(&config.state_dir) {
                    tracing::error!(error = %err, "cannot persist a delivered service run");
                }
            }
        }
        Err(ReconcileError::Controller { status, .. })
            if status.code() == tonic::Code::InvalidArgument =>
        {
            // The controller will never take it (task gone, scope changed):
            // keeping it would block the task forever.
            tracing::error!(task = %id, error = %status.message(), "controller refused a service result; dropped");
            if let Some(state) = states.get_mut(&id) {
                state.unposted = None;
                let _ = state.store(&config.state_dir);
            }
        }
        Err(err) => {
            tracing::warn!(task = %id, error = %err, "cannot deliver a service result yet");
        }
    }
}

/// Drops local state of tasks the controller no longer lists (deleted, or a
/// once task that completed), unless a result still waits for delivery.
fn forget_closed(
    config: &TaskRunnerConfig,
    open: &BTreeMap<String, Assignment>,
    states: &mut HashMap<String, TaskState>,
    in_flight: &mut HashMap<String, tokio::task::JoinHandle<()>>,
) {
    in_flight.retain(|id, run| {
        let keep = open.contains_key(id);
        if !keep {
            tracing::info!(task = %id, "service task closed; its run is abandoned");
            run.abort();
        }
        keep
    });
    states.retain(|id, _| open.contains_key(id));
    let Ok(entries) = std::fs::read_dir(&config.state_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        if open.contains_key(id) {
            continue;
        }
        // A closed task takes no more results: a once task closed because
        // its result arrived (even if our acknowledgement got lost), and a
        // deleted task is refused by the controller.
        let _ = std::fs::remove_file(&path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_survives_a_torn_write() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(TaskState::load(dir.path(), "t1").unwrap(), None);
        let state = TaskState {
            task_id: "t1".into(),
            last_started_ms: Some(5),
            next_source_index: 2,
            unposted: Some(serde_json::json!({"run_id": "r"})),
            finished: false,
        };
        state.store(dir.path()).unwrap();
        std::fs::write(dir.path().join("t1.json.tmp"), b"{torn").unwrap();
        assert_eq!(TaskState::load(dir.path(), "t1").unwrap(), Some(state));
        std::fs::write(dir.path().join("t2.json"), b"{torn").unwrap();
        assert!(TaskState::load(dir.path(), "t2").is_err());
    }

    #[test]
    fn only_an_orchestrator_the_controller_marks_old_may_order_unsigned() {
        use measurelab_api::node_v1::ServicePeer;
        let peer = |node: &str, endpoint: &str, version: Option<u32>| ServicePeer {
            node: node.into(),
            endpoint: endpoint.into(),
            control_protocol_version: version,
        };
        let task = |id: &str, spec: &str, peers: Vec<ServicePeer>| ServiceTask {
            task_id: id.into(),
            spec_json: spec.into(),
            peers,
            control_key: None,
        };
        let spec = r#"{"id":"t","schedule":"once","group":"239.1.2.3","port":5001}"#;
        let tasks = [
            // Marked first peer: allowed, for its task's group and port only.
            task(
                "old-first",
                spec,
                vec![
                    peer("n0", "10.0.0.1:7400", Some(1)),
                    peer("me", "10.0.0.9:7400", None),
                ],
            ),
            // A marked peer that is not the orchestrator orders nobody.
            task(
                "old-second",
                spec,
                vec![
                    peer("n2", "10.0.0.2:7400", None),
                    peer("n0", "10.0.0.1:7400", Some(1)),
                ],
            ),
            // Unmarked orchestrator: signed orders only.
            task("new-first", spec, vec![peer("n3", "10.0.0.3:7400", None)]),
            // No group or port in the task: 0.1.0's defaults.
            task(
                "defaults",
                r#"{"id":"d","schedule":"once"}"#,
                vec![peer("n4", "10.0.0.4:7400", Some(1))],
            ),
        ];
        let defaults = ProbeDefaults::default();
        assert_eq!(
            legacy_orchestrators(&tasks, "me"),
            [
                LegacyOrchestrator {
                    task: "old-first".into(),
                    source: "10.0.0.1".parse().unwrap(),
                    group: Ipv4Addr::new(239, 1, 2, 3),
                    port: 5001,
                },
                LegacyOrchestrator {
                    task: "defaults".into(),
                    source: "10.0.0.4".parse().unwrap(),
                    group: defaults.group,
                    port: defaults.port,
                },
            ]
        );
        // This node itself is upgraded, whatever the mark says.
        assert!(legacy_orchestrators(&tasks[..1], "n0").is_empty());
    }

    #[test]
    fn only_plain_ids_name_state_files() {
        assert!(safe_task_id("0f3c-ab_1"));
        for bad in ["", "../x", "a/b", "a.json"] {
            assert!(!safe_task_id(bad), "{bad}");
        }
    }

    /// Only the controller's word makes a peer a version-1 point.
    #[test]
    fn only_peers_the_controller_marks_old_may_get_unsigned_orders() {
        let peer = |node: &str, version: Option<u32>| measurelab_api::node_v1::ServicePeer {
            node: node.into(),
            endpoint: "10.253.0.11:7090".into(),
            control_protocol_version: version,
        };
        let service = ServiceTask {
            task_id: "t1".into(),
            spec_json: serde_json::json!({
                "id": "t1", "schedule": "once", "group": "239.1.2.3", "port": 5001
            })
            .to_string(),
            peers: vec![peer("n1", None), peer("n2", Some(1)), peer("n3", Some(2))],
            control_key: Some("ab".repeat(32)),
        };
        let assignment = assignment(&service).unwrap();
        assert_eq!(assignment.v1_points.into_iter().collect::<Vec<_>>(), ["n2"]);
        assert!(assignment.key.is_some());
    }

    #[test]
    fn a_refused_run_is_a_failed_document_naming_the_field() {
        let task = ControllerTask::from_json(&serde_json::json!({
            "id": "t1", "schedule": "once", "group": "239.1.2.3", "port": 5001
        }))
        .unwrap();
        let document = refused_document(&task, "n1", "invalid task: source: no point n9".into());
        assert_eq!(document.status, RunStatus::Failed);
        assert_eq!(document.task_id.as_deref(), Some("t1"));
        assert!(document.source.error.unwrap().contains("source"));
        let value = serde_json::to_value(&document.receivers).unwrap();
        assert!(value.is_array());
    }
}
