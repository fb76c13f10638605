//! The measurement statistics control server (MSCS).
//!
//! It knows its points, runs the periodic round-robin schedule (each run takes the next
//! point as the source and all others as receivers) and submitted tasks, one run at a
//! time, aggregates every run into a [`ResultDocument`], persists schedule position and
//! results atomically ([`state`]), serves them over HTTP ([`api`]) and optionally POSTs
//! each result to a configured URL.
//!
//! Runs are serialised because they share the probe group and port: two concurrent
//! sources on one group would each see the other as foreign sessions and load the same
//! links, which is what is being measured.

pub mod api;
pub mod runner;
pub mod state;

use std::collections::HashSet;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;
use tokio::sync::{watch, Notify};
use tracing::{error, info, warn};

use crate::result::{ResultDocument, RunConfig, RunKind, RunStatus};
use crate::sender::MAX_RATE_PPS;
use crate::wire::{HEADER_LEN, MAX_PROBE_LEN};
pub use runner::PointEndpoint;
use runner::{run_measurement, RunSpec};
use state::{MscsState, StateError, TaskRecord, TaskSpec, TaskStatus};

/// Errors of the MSCS.
#[derive(Debug, Error)]
pub enum MscsError {
    /// The configuration is unusable.
    #[error("invalid MSCS config: {field}: {reason}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// Loading or saving state failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Http(#[from] std::io::Error),
}

/// A rejected task submission.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct TaskError {
    /// JSON field at fault.
    pub field: String,
    /// Why.
    pub reason: String,
}

/// Probe parameters used when a task does not say otherwise (and by periodic runs).
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeDefaults {
    /// Group: 239/8 for ASM, 232/8 for SSM.
    pub group: Ipv4Addr,
    /// UDP port.
    pub port: u16,
    /// Probes per second.
    pub rate_pps: f64,
    /// UDP payload bytes.
    pub packet_size_bytes: usize,
    /// IP TTL.
    pub ttl: u32,
    /// SSM joins.
    pub ssm: bool,
}

impl Default for ProbeDefaults {
    fn default() -> Self {
        Self {
            group: Ipv4Addr::new(239, 192, 0, 1),
            port: 50_001,
            rate_pps: 100.0,
            packet_size_bytes: 200,
            ttl: 8,
            ssm: false,
        }
    }
}

/// The periodic round-robin schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeriodicSchedule {
    /// Time between run starts (paper: 5 min).
    pub interval: Duration,
    /// Sending time of each run (paper: 30 s).
    pub duration_seconds: f64,
}

impl Default for PeriodicSchedule {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(300),
            duration_seconds: 30.0,
        }
    }
}

/// Everything the MSCS needs.
#[derive(Debug, Clone)]
pub struct MscsConfig {
    /// The points, in round-robin order.
    pub points: Vec<PointEndpoint>,
    /// Where state and results persist.
    pub state_file: PathBuf,
    /// The periodic schedule; `None` runs tasks only.
    pub periodic: Option<PeriodicSchedule>,
    /// Default probe parameters.
    pub defaults: ProbeDefaults,
    /// Clock synchronisation bound (µs) when points are on different hosts; `None` when
    /// they share one host clock.
    pub clock_sync_bound_us: Option<f64>,
    /// If set, every result is POSTed here as JSON.
    pub result_url: Option<String>,
    /// How many results the state keeps.
    pub retain_results: usize,
    /// How long receivers keep reading after the sender finished (probes in flight).
    pub receiver_drain_seconds: f64,
}

impl MscsConfig {
    /// A config with defaults for everything but points and state file.
    pub fn new(points: Vec<PointEndpoint>, state_file: PathBuf) -> Self {
        Self {
            points,
            state_file,
            periodic: Some(PeriodicSchedule::default()),
            defaults: ProbeDefaults::default(),
            clock_sync_bound_us: None,
            result_url: None,
            retain_results: 10_000,
            receiver_drain_seconds: 0.1,
        }
    }

    /// Checks the config; the error names the first bad field.
    pub fn validate(&self) -> Result<(), MscsError> {
        let invalid = |field, reason: String| Err(MscsError::InvalidConfig { field, reason });
        if self.points.len() < 2 {
            return invalid(
                "points",
                format!(
                    "need at least 2 (a source and a receiver), got {}",
                    self.points.len()
                ),
            );
        }
        let mut names = HashSet::new();
        for point in &self.points {
            if point.name.is_empty() {
                return invalid("points", "a point has an empty name".into());
            }
            if !names.insert(point.name.as_str()) {
                return invalid("points", format!("duplicate point name {:?}", point.name));
            }
        }
        if let Some(periodic) = self.periodic {
            if periodic.interval.is_zero() {
                return invalid("interval_seconds", "must be positive".into());
            }
            if !(periodic.duration_seconds > 0.0
                && periodic.duration_seconds < periodic.interval.as_secs_f64())
            {
                return invalid(
                    "duration_seconds",
                    format!(
                        "{} must be positive and shorter than the interval ({} s)",
                        periodic.duration_seconds,
                        periodic.interval.as_secs_f64()
                    ),
                );
            }
        }
        if let Some(bound) = self.clock_sync_bound_us {
            if !(bound.is_finite() && bound >= 0.0) {
                return invalid("clock_sync_bound_us", format!("{bound} is not >= 0"));
            }
        }
        if !(0.0..=crate::point::MAX_DRAIN_SECONDS).contains(&self.receiver_drain_seconds) {
            return invalid(
                "receiver_drain_seconds",
                format!(
                    "{} is not in [0, {}]",
                    self.receiver_drain_seconds,
                    crate::point::MAX_DRAIN_SECONDS
                ),
            );
        }
        if self.retain_results == 0 {
            return invalid("retain_results", "must be at least 1".into());
        }
        let probe = TaskSpec {
            source: self.points[0].name.clone(),
            ..TaskSpec::default()
        };
        self.resolve_task(&probe, None)
            .map_err(|err| MscsError::InvalidConfig {
                field: "defaults",
                reason: err.to_string(),
            })?;
        Ok(())
    }

    fn point(&self, name: &str, field: &str) -> Result<PointEndpoint, TaskError> {
        self.points
            .iter()
            .find(|p| p.name == name)
            .cloned()
            .ok_or_else(|| TaskError {
                field: field.into(),
                reason: format!("unknown point {name:?}"),
            })
    }

    /// Turns a task into a run spec, applying defaults and validating every field.
    pub fn resolve_task(
        &self,
        spec: &TaskSpec,
        task_id: Option<String>,
    ) -> Result<RunSpec, TaskError> {
        let bad = |field: &str, reason: String| TaskError {
            field: field.into(),
            reason,
        };
        let source = self.point(&spec.source, "source")?;
        let receivers = match &spec.receivers {
            None => self
                .points
                .iter()
                .filter(|p| p.name != source.name)
                .cloned()
                .collect::<Vec<_>>(),
            Some(names) => {
                let mut seen = HashSet::new();
                let mut receivers = Vec::new();
                for name in names {
                    if *name == source.name {
                        return Err(bad("receivers", format!("{name:?} is the source")));
                    }
                    if !seen.insert(name) {
                        return Err(bad("receivers", format!("{name:?} listed twice")));
                    }
                    receivers.push(self.point(name, "receivers")?);
                }
                receivers
            }
        };
        if receivers.is_empty() {
            return Err(bad("receivers", "at least one receiver is needed".into()));
        }
        let defaults = &self.defaults;
        let ssm = spec.ssm.unwrap_or(defaults.ssm);
        let group = spec.group.unwrap_or(defaults.group);
        if !group.is_multicast() {
            return Err(bad(
                "group",
                format!("{group} is not an IPv4 multicast address"),
            ));
        }
        if ssm && group.octets()[0] != 232 {
            return Err(bad(
                "group",
                format!("SSM needs a group in 232.0.0.0/8, got {group}"),
            ));
        }
        let port = spec.port.unwrap_or(defaults.port);
        if port == 0 {
            return Err(bad("port", "must be 1..=65535".into()));
        }
        let rate_pps = spec.rate_pps.unwrap_or(defaults.rate_pps);
        if !(rate_pps.is_finite() && rate_pps > 0.0 && rate_pps <= MAX_RATE_PPS) {
            return Err(bad(
                "rate_pps",
                format!("{rate_pps} is not in (0, {MAX_RATE_PPS}]"),
            ));
        }
        let packet_size_bytes = spec.packet_size_bytes.unwrap_or(defaults.packet_size_bytes);
        if !(HEADER_LEN..=MAX_PROBE_LEN).contains(&packet_size_bytes) {
            return Err(bad(
                "packet_size_bytes",
                format!("{packet_size_bytes} is not in {HEADER_LEN}..={MAX_PROBE_LEN}"),
            ));
        }
        let default_duration = self.periodic.map_or(30.0, |p| p.duration_seconds);
        let duration_seconds = spec.duration_seconds.unwrap_or(default_duration);
        if !(duration_seconds.is_finite() && duration_seconds > 0.0 && duration_seconds <= 3_600.0)
        {
            return Err(bad(
                "duration_seconds",
                format!("{duration_seconds} is not in (0, 3600]"),
            ));
        }
        let ttl = spec.ttl.unwrap_or(defaults.ttl);
        if !(1..=255).contains(&ttl) {
            return Err(bad("ttl", format!("{ttl} is not in 1..=255")));
        }
        Ok(RunSpec {
            kind: if task_id.is_some() {
                RunKind::Task
            } else {
                RunKind::Periodic
            },
            task_id,
            source,
            receivers,
            group,
            port,
            config: RunConfig {
                rate_pps,
                packet_size_bytes,
                duration_seconds,
                ttl,
                ssm,
            },
            clock_sync_bound_us: self.clock_sync_bound_us,
            receiver_drain_seconds: self.receiver_drain_seconds,
        })
    }
}

/// Shared handle to the MSCS's state, used by the scheduler and the HTTP API.
#[derive(Clone)]
pub struct Mscs {
    inner: Arc<Inner>,
}

struct Inner {
    config: MscsConfig,
    /// A std mutex: it is never held across an `.await`, and every critical section is a
    /// few field updates plus (for commits) one small file write.
    state: Mutex<MscsState>,
    /// The run in flight, for `GET /schedule`; not persisted (an interrupted run is simply
    /// run again).
    current_run: Mutex<Option<CurrentRun>>,
    wake_scheduler: Notify,
}

/// The run in flight.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CurrentRun {
    /// Periodic or task.
    pub kind: RunKind,
    /// Task id for task runs.
    pub task_id: Option<String>,
    /// Source point.
    pub source: String,
    /// RFC 3339 start time.
    pub started_at: String,
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

enum Work {
    Task(Box<TaskRecord>),
    Periodic { source_index: usize, due_ms: u64 },
}

impl Mscs {
    /// Loads (or creates) the state and validates the config.
    pub fn open(config: MscsConfig) -> Result<Self, MscsError> {
        config.validate()?;
        let mut state = MscsState::load(&config.state_file)?;
        // A task that was running when the MSCS died was not completed: run it again.
        for task in state.tasks.iter_mut() {
            if task.status == TaskStatus::Running {
                task.status = TaskStatus::Queued;
            }
        }
        state.save(&config.state_file)?;
        info!(
            next_source_index = state.next_source_index,
            results = state.results.len(),
            "MSCS state loaded"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(state),
                current_run: Mutex::new(None),
                wake_scheduler: Notify::new(),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MscsConfig {
        &self.inner.config
    }

    fn lock(&self) -> MutexGuard<'_, MscsState> {
        // A poisoned lock means a panic mid-update; the state on disk is still consistent,
        // and the in-memory copy is only ever replaced whole-field, so keep going.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The run in flight, if any.
    pub fn current_run(&self) -> Option<CurrentRun> {
        self.inner
            .current_run
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn set_current_run(&self, run: Option<CurrentRun>) {
        *self
            .inner
            .current_run
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = run;
    }

    /// A snapshot of the state.
    pub fn snapshot(&self) -> MscsState {
        self.lock().clone()
    }

    /// Validates and queues a task; persisted before this returns.
    pub fn submit_task(&self, spec: TaskSpec) -> Result<TaskRecord, TaskError> {
        self.inner.config.resolve_task(&spec, Some(String::new()))?;
        let record = TaskRecord {
            id: uuid::Uuid::new_v4().to_string(),
            status: TaskStatus::Queued,
            spec,
            submitted_at: now_rfc3339(),
            run_id: None,
            result_seq: None,
            error: None,
        };
        {
            let mut state = self.lock();
            state.tasks.push(record.clone());
            if let Err(err) = state.save(&self.inner.config.state_file) {
                state.tasks.pop();
                return Err(TaskError {
                    field: "".into(),
                    reason: format!("cannot persist the task: {err}"),
                });
            }
        }
        self.inner.wake_scheduler.notify_one();
        Ok(record)
    }

    /// Picks the next piece of work, or how long to wait for it.
    fn next_work(&self) -> Result<Work, Duration> {
        let mut state = self.lock();
        if let Some(task) = state
            .tasks
            .iter_mut()
            .find(|t| t.status == TaskStatus::Queued)
        {
            task.status = TaskStatus::Running;
            let task = task.clone();
            if let Err(err) = state.save(&self.inner.config.state_file) {
                warn!(cause = %err, "cannot persist task start; continuing");
            }
            return Ok(Work::Task(Box::new(task)));
        }
        let Some(_) = self.inner.config.periodic else {
            return Err(Duration::from_secs(3600));
        };
        let now = unix_ms_now();
        let due_ms = *state.next_periodic_due_unix_ms.get_or_insert(now);
        if due_ms <= now {
            let source_index = state.next_source_index % self.inner.config.points.len();
            return Ok(Work::Periodic {
                source_index,
                due_ms,
            });
        }
        Err(Duration::from_millis(due_ms - now))
    }

    fn periodic_spec(&self, source_index: usize) -> Option<RunSpec> {
        let config = &self.inner.config;
        let periodic = config.periodic?;
        let spec = TaskSpec {
            source: config.points[source_index].name.clone(),
            duration_seconds: Some(periodic.duration_seconds),
            ..TaskSpec::default()
        };
        // Validated at startup, so this cannot fail for a configured point.
        config.resolve_task(&spec, None).ok()
    }

    /// Records a completed run and the schedule's advance in one durable write.
    fn commit(&self, work: &Work, document: ResultDocument) -> u64 {
        let config = &self.inner.config;
        let mut state = self.lock();
        let seq = state.push_result(document.clone(), config.retain_results);
        match work {
            Work::Periodic { due_ms, .. } => {
                state.next_source_index = (state.next_source_index + 1) % config.points.len();
                state.periodic_runs_completed += 1;
                let interval_ms = config.periodic.map_or(0, |p| p.interval.as_millis() as u64);
                // Keep the grid (due + interval) unless the run overran a whole interval;
                // then start from now instead of firing a burst of catch-up runs.
                let now = unix_ms_now();
                let next = due_ms + interval_ms;
                state.next_periodic_due_unix_ms =
                    Some(if next + interval_ms < now { now } else { next });
            }
            Work::Task(task) => {
                if let Some(record) = state.tasks.iter_mut().find(|t| t.id == task.id) {
                    record.run_id = Some(document.run_id.clone());
                    record.result_seq = Some(seq);
                    if document.status == RunStatus::Failed {
                        record.status = TaskStatus::Failed;
                        record.error = document.source.error.clone();
                    } else {
                        record.status = TaskStatus::Succeeded;
                    }
                }
            }
        }
        if let Err(err) = state.save(&config.state_file) {
            error!(cause = %err, "cannot persist a completed run; it is kept in memory only");
        }
        seq
    }

    /// The scheduler loop: runs until `shutdown` flips to true.
    pub async fn run_scheduler(&self, mut shutdown: watch::Receiver<bool>) {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .ok();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let work = match self.next_work() {
                Ok(work) => work,
                Err(wait) => {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.inner.wake_scheduler.notified() => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
            };
            let spec = match &work {
                Work::Task(task) => self
                    .inner
                    .config
                    .resolve_task(&task.spec, Some(task.id.clone())),
                Work::Periodic { source_index, .. } => {
                    self.periodic_spec(*source_index).ok_or_else(|| TaskError {
                        field: "periodic".into(),
                        reason: "periodic schedule disabled".into(),
                    })
                }
            };
            let spec = match spec {
                Ok(spec) => spec,
                Err(err) => {
                    // Only possible if the point list changed since submission.
                    warn!(cause = %err, "dropping unrunnable work");
                    if let Work::Task(task) = &work {
                        let mut state = self.lock();
                        if let Some(record) = state.tasks.iter_mut().find(|t| t.id == task.id) {
                            record.status = TaskStatus::Failed;
                            record.error = Some(err.to_string());
                        }
                        let _ = state.save(&self.inner.config.state_file);
                    }
                    continue;
                }
            };
            info!(source = %spec.source.name, kind = ?spec.kind, "run starting");
            self.set_current_run(Some(CurrentRun {
                kind: spec.kind,
                task_id: spec.task_id.clone(),
                source: spec.source.name.clone(),
                started_at: now_rfc3339(),
            }));
            let document = tokio::select! {
                document = run_measurement(&spec) => document,
                // An interrupted run is not a completed one: it is re-run after restart.
                _ = shutdown.changed() => return,
            };
            let seq = self.commit(&work, document.clone());
            self.set_current_run(None);
            info!(seq, run_id = %document.run_id, status = ?document.status, "run recorded");
            if let (Some(url), Some(http)) = (&self.inner.config.result_url, &http) {
                let (url, http) = (url.clone(), http.clone());
                tokio::spawn(async move {
                    match http.post(&url).json(&document).send().await {
                        Ok(response) if response.status().is_success() => {}
                        Ok(response) => {
                            warn!(%url, status = %response.status(), "result POST rejected")
                        }
                        Err(err) => warn!(%url, cause = %err, "result POST failed"),
                    }
                });
            }
        }
    }
}

/// Runs the MSCS (scheduler + HTTP API on `listener`) until `shutdown` completes.
pub async fn run(
    config: MscsConfig,
    listener: std::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MscsError> {
    let mscs = Mscs::open(config)?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let scheduler = {
        let mscs = mscs.clone();
        let stop_rx = stop_rx.clone();
        tokio::spawn(async move { mscs.run_scheduler(stop_rx).await })
    };
    let mut http_stop = stop_rx.clone();
    let server = axum::serve(listener, api::router(mscs)).with_graceful_shutdown(async move {
        let _ = http_stop.wait_for(|stop| *stop).await;
    });
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let served = server.await;
    let _ = scheduler.await;
    served.map_err(MscsError::Http)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> MscsConfig {
        let points = ["p1", "p2", "p3"]
            .iter()
            .enumerate()
            .map(|(i, name)| PointEndpoint {
                name: name.to_string(),
                control: format!("127.0.0.1:{}", 7000 + i).parse().unwrap(),
            })
            .collect();
        MscsConfig::new(points, PathBuf::from("/nonexistent/state.json"))
    }

    #[test]
    fn default_task_uses_every_other_point() {
        let spec = config()
            .resolve_task(
                &TaskSpec {
                    source: "p2".into(),
                    ..TaskSpec::default()
                },
                Some("t".into()),
            )
            .unwrap();
        let names: Vec<_> = spec.receivers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, vec!["p1", "p3"]);
        assert_eq!(spec.kind, RunKind::Task);
        assert_eq!(spec.config.duration_seconds, 30.0);
    }

    #[test]
    fn task_errors_name_the_field() {
        let config = config();
        let cases = [
            (
                TaskSpec {
                    source: "nope".into(),
                    ..TaskSpec::default()
                },
                "source",
            ),
            (
                TaskSpec {
                    source: "p1".into(),
                    receivers: Some(vec!["p1".into()]),
                    ..TaskSpec::default()
                },
                "receivers",
            ),
            (
                TaskSpec {
                    source: "p1".into(),
                    receivers: Some(vec![]),
                    ..TaskSpec::default()
                },
                "receivers",
            ),
            (
                TaskSpec {
                    source: "p1".into(),
                    receivers: Some(vec!["p2".into(), "p2".into()]),
                    ..TaskSpec::default()
                },
                "receivers",
            ),
            (
                TaskSpec {
                    source: "p1".into(),
                    group: Some(Ipv4Addr::new(10, 0, 0, 1)),
                    ..TaskSpec::default()
                },
                "group",
            ),
            (
                TaskSpec {
                    source: "p1".into(),
                    ssm: Some(true),
                    ..TaskSpec::default()
                },
                "group",
            ),
            (
                TaskSpec {
                    source: "p1".into(),
                    port: Some(0),
                    ..TaskSpec::default()
                },
                "port",
            ),
            (
                TaskSpec {
                    source: "p1".into(),
                    rate_pps: Some(-1.0),
                    ..TaskSpec::default()
                },
                "rate_pps",
            ),
            (
                TaskSpec {
                    source: "p1".into(),
                    packet_size_bytes: Some(8),
                    ..TaskSpec::default()
                },
                "packet_size_bytes",
            ),
            (
                TaskSpec {
                    source: "p1".into(),
                    duration_seconds: Some(0.0),
                    ..TaskSpec::default()
                },
                "duration_seconds",
            ),
            (
                TaskSpec {
                    source: "p1".into(),
                    ttl: Some(300),
                    ..TaskSpec::default()
                },
                "ttl",
            ),
        ];
        for (spec, field) in cases {
            let err = config.resolve_task(&spec, None).unwrap_err();
            assert_eq!(err.field, field, "{spec:?}");
        }
    }

    #[test]
    fn config_validation() {
        let mut bad = config();
        bad.points.truncate(1);
        assert!(matches!(
            bad.validate(),
            Err(MscsError::InvalidConfig {
                field: "points",
                ..
            })
        ));
        let mut bad = config();
        bad.points[1].name = "p1".into();
        assert!(matches!(
            bad.validate(),
            Err(MscsError::InvalidConfig {
                field: "points",
                ..
            })
        ));
        let mut bad = config();
        bad.periodic = Some(PeriodicSchedule {
            interval: Duration::from_secs(3),
            duration_seconds: 5.0,
        });
        assert!(matches!(
            bad.validate(),
            Err(MscsError::InvalidConfig {
                field: "duration_seconds",
                ..
            })
        ));
        config().validate().unwrap();
    }
}
