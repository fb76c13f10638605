//! The MSCS's service: its config, the task queue, the periodic schedule, the platform
//! poll and the result outbox, all behind one shared [`Mscs`] handle.
//!
//! The HTTP API (`super::api`) and the wiring in `super::run` use this handle; nothing
//! here knows about HTTP, so the dependency runs one way.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use measurelab_backoff::Backoff;
use thiserror::Error;
use tokio::sync::{watch, Notify};
use tracing::{error, info, warn};

use super::registry::{self, PointState, PointStatus, RegistrationChange, RegistrationError};
use super::runner::{run_measurement, PointEndpoint, RunSpec};
use super::state::{
    MscsState, OutboxEntry, PlatformPeriodic, StateError, TaskRecord, TaskSpec, TaskStatus,
};
use crate::platform::{BadTask, ControllerTask, PlatformClient, TaskSchedule};
use crate::protocol::{Registration, RegistrationAck, PROTOCOL_VERSION};
use crate::result::{
    ReceiverResult, ReceiverStatus, ResultDocument, RunConfig, RunKind, RunStatus,
};
use crate::sender::MAX_RATE_PPS;
use crate::wire::{HEADER_LEN, MAX_PROBE_LEN};

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
    /// Take tasks from, and deliver results to, the measurelab platform API.
    pub platform: Option<PlatformConfig>,
    /// Accept point registrations (`POST /points`); `None` keeps the static list only.
    pub registration: Option<RegistrationConfig>,
    /// Connection cap and timeouts of the HTTP API.
    pub api_limits: ApiLimits,
    /// The key this MSCS signs its control requests with and that its HTTP API requires
    /// as `Authorization: Bearer`; `None`: an open MSCS, as before per-task keys.
    pub control_key: Option<crate::auth::ControlKey>,
}

/// Bounds on what the MSCS API's peers can hold.
#[derive(Debug, Clone, Copy)]
pub struct ApiLimits {
    /// Connections served at once; further ones are closed at accept.
    pub max_connections: usize,
    /// Time a connection has to send a request's headers, idle keep-alive included.
    pub header_read_timeout: Duration,
    /// Time one request may take from its headers to the end of its answer.
    pub request_timeout: Duration,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            // Points heartbeat over one keep-alive connection each: room for the
            // registry's point limit and the operator's clients.
            max_connections: 512,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// How the MSCS treats points that register themselves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegistrationConfig {
    /// A registered point not heard from for this long leaves the rotation.
    pub deadline: Duration,
}

impl RegistrationConfig {
    /// Heartbeats asked of the points: three per deadline, so one lost heartbeat (or a
    /// slow one) does not make a live point missing.
    pub fn heartbeat(&self) -> Duration {
        self.deadline / 3
    }
}

/// Where the MSCS finds the platform (the guest agent's local API inside a VM).
#[derive(Debug, Clone, PartialEq)]
pub struct PlatformConfig {
    /// Base URL, e.g. `http://127.0.0.1:7079`.
    pub api_url: String,
    /// Time between `GET /tasks` polls while the API answers.
    pub poll_interval: Duration,
}

/// Longest wait between polls, and between delivery attempts, while the API fails.
const PLATFORM_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A failing task poll waits at most 2^this poll intervals.
const PLATFORM_POLL_MAX_DOUBLINGS: u32 = 6;
/// First wait before retrying a failed delivery.
const DELIVERY_FIRST_BACKOFF: Duration = Duration::from_millis(500);

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
            platform: None,
            registration: None,
            api_limits: ApiLimits::default(),
            control_key: None,
        }
    }

    /// Checks the config; the error names the first bad field.
    pub fn validate(&self) -> Result<(), MscsError> {
        let invalid = |field, reason: String| Err(MscsError::InvalidConfig { field, reason });
        if self.api_limits.max_connections == 0 {
            return invalid("api_limits.max_connections", "must be at least 1".into());
        }
        if self.api_limits.header_read_timeout.is_zero()
            || self.api_limits.request_timeout.is_zero()
        {
            return invalid("api_limits", "timeouts must be positive".into());
        }
        // With registration the points may all come later.
        if self.points.len() < 2 && self.registration.is_none() {
            return invalid(
                "points",
                format!(
                    "need at least 2 (a source and a receiver), got {}",
                    self.points.len()
                ),
            );
        }
        if self.points.len() > registry::MAX_POINTS {
            return invalid(
                "points",
                format!(
                    "at most {} points, got {}",
                    registry::MAX_POINTS,
                    self.points.len()
                ),
            );
        }
        if let Some(registration) = self.registration {
            if registration.deadline < Duration::from_millis(300) {
                return invalid(
                    "point_deadline_seconds",
                    format!("{:?} is shorter than 0.3 s", registration.deadline),
                );
            }
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
        if let Some(platform) = &self.platform {
            if let Err(err) = PlatformClient::new(&platform.api_url) {
                return invalid("platform_api", err.to_string());
            }
            if platform.poll_interval.is_zero() {
                return invalid("platform_poll_seconds", "must be positive".into());
            }
        }
        // Checked against two stand-in points: the defaults must be usable whoever
        // registers.
        let stand_ins: Vec<PointEndpoint> = ["a", "b"]
            .iter()
            .map(|name| PointEndpoint {
                name: name.to_string(),
                control: std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
            })
            .collect();
        let probe = TaskSpec {
            source: "a".into(),
            ..TaskSpec::default()
        };
        self.resolve_task_in(&stand_ins, &probe, None)
            .map_err(|err| MscsError::InvalidConfig {
                field: "defaults",
                reason: err.to_string(),
            })?;
        Ok(())
    }

    fn point(
        points: &[PointEndpoint],
        name: &str,
        field: &str,
    ) -> Result<PointEndpoint, TaskError> {
        points
            .iter()
            .find(|p| p.name == name)
            .cloned()
            .ok_or_else(|| TaskError {
                field: field.into(),
                reason: format!("unknown point {name:?}"),
            })
    }

    /// Turns a task into a run spec over the static points, applying defaults and
    /// validating every field.
    pub fn resolve_task(
        &self,
        spec: &TaskSpec,
        task_id: Option<String>,
    ) -> Result<RunSpec, TaskError> {
        self.resolve_task_in(&self.points, spec, task_id)
    }

    /// Like [`MscsConfig::resolve_task`] over `points` (the whole point list, missing
    /// points included: the engine takes those out of the run afterwards).
    pub fn resolve_task_in(
        &self,
        points: &[PointEndpoint],
        spec: &TaskSpec,
        task_id: Option<String>,
    ) -> Result<RunSpec, TaskError> {
        let bad = |field: &str, reason: String| TaskError {
            field: field.into(),
            reason,
        };
        let source = Self::point(points, &spec.source, "source")?;
        let receivers = match &spec.receivers {
            None => points
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
                    receivers.push(Self::point(points, name, "receivers")?);
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
            control_key: self.control_key.clone(),
            // An MSCS has no controller to vouch for a point's age.
            v1_points: Default::default(),
        })
    }
}

impl MscsConfig {
    /// The MSCS task spec for a controller task measured with `source` as the source.
    /// Without a fixed source, the source is dropped from the task's receiver list (the
    /// list names who listens while the others take their turn sending).
    pub fn controller_task_spec(&self, task: &ControllerTask, source: &str) -> TaskSpec {
        let receivers = task.receivers.as_ref().map(|names| {
            if task.source.is_some() {
                names.clone()
            } else {
                names
                    .iter()
                    .filter(|name| *name != source)
                    .cloned()
                    .collect()
            }
        });
        TaskSpec {
            source: source.to_string(),
            receivers,
            group: task.group,
            port: task.port,
            rate_pps: task.rate_pps,
            packet_size_bytes: task.packet_size_bytes,
            duration_seconds: Some(task.duration_seconds()),
            ttl: task.ttl,
            ssm: task.ssm,
        }
    }

    /// Resolves a controller task with the first usable source at or after
    /// `start_index` (round robin), or its fixed source. Returns the run and the index of
    /// the source used.
    pub fn resolve_controller_task(
        &self,
        task: &ControllerTask,
        start_index: usize,
    ) -> Result<(RunSpec, usize), TaskError> {
        self.resolve_controller_task_in(&self.points, &|_| true, task, start_index)
    }

    /// Like [`MscsConfig::resolve_controller_task`] over `points`, skipping sources
    /// for which `may_send` is false (missing points) in the round robin.
    pub fn resolve_controller_task_in(
        &self,
        points: &[PointEndpoint],
        may_send: &dyn Fn(&str) -> bool,
        task: &ControllerTask,
        start_index: usize,
    ) -> Result<(RunSpec, usize), TaskError> {
        if let Some(source) = &task.source {
            let index = points
                .iter()
                .position(|p| &p.name == source)
                .unwrap_or(start_index);
            let spec = self.controller_task_spec(task, source);
            return Ok((
                self.resolve_task_in(points, &spec, Some(task.id.clone()))?,
                index,
            ));
        }
        let count = points.len();
        let mut first_error = None;
        for offset in 0..count {
            let index = (start_index + offset) % count;
            if !may_send(&points[index].name) {
                continue;
            }
            let spec = self.controller_task_spec(task, &points[index].name);
            match self.resolve_task_in(points, &spec, Some(task.id.clone())) {
                Ok(run) => return Ok((run, index)),
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| TaskError {
            field: "source".into(),
            reason: "no point can be the source".into(),
        }))
    }

    /// Checks a controller periodic task: every probe field, and a sending time shorter
    /// than the interval.
    pub fn validate_periodic_task(&self, task: &ControllerTask) -> Result<(), TaskError> {
        self.validate_periodic_task_in(&self.points, task)
    }

    /// Like [`MscsConfig::validate_periodic_task`] over `points`.
    pub fn validate_periodic_task_in(
        &self,
        points: &[PointEndpoint],
        task: &ControllerTask,
    ) -> Result<(), TaskError> {
        let interval = task.interval().as_secs_f64();
        if task.duration_seconds() >= interval {
            return Err(TaskError {
                field: "duration_seconds".into(),
                reason: format!(
                    "{} must be shorter than interval_seconds ({interval})",
                    task.duration_seconds()
                ),
            });
        }
        self.resolve_controller_task_in(points, &|_| true, task, 0)
            .map(|_| ())
    }
}

/// Which periodic schedule a periodic run belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PeriodicKey {
    /// The MSCS's own schedule (`--interval-seconds`).
    Builtin,
    /// A controller periodic task, by id.
    Platform(String),
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
    wake_outbox: Notify,
    /// Last complaint logged per controller task id, so a bad task is logged once per
    /// change rather than on every poll.
    platform_complaints: Mutex<HashMap<String, String>>,
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

/// The runner's addresses of a point list.
fn endpoints(roster: &[PointStatus]) -> Vec<PointEndpoint> {
    roster.iter().map(PointStatus::endpoint).collect()
}

fn is_active(roster: &[PointStatus], name: &str) -> bool {
    roster
        .iter()
        .any(|p| p.name == name && p.state == PointState::Active)
}

enum Work {
    Task(Box<TaskRecord>),
    Periodic { key: PeriodicKey, due_ms: u64 },
}

impl Mscs {
    /// Loads (or creates) the state and validates the config.
    pub fn open(config: MscsConfig) -> Result<Self, MscsError> {
        config.validate()?;
        // The file's modification time is when its contents were last true.
        let saved_at_ms = std::fs::metadata(&config.state_file)
            .and_then(|meta| meta.modified())
            .ok()
            .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
            .map(|since| since.as_millis() as u64);
        let mut state = MscsState::load(&config.state_file)?;
        if let (Some(saved_at_ms), Some(registration)) = (saved_at_ms, config.registration) {
            registry::resume_after_restart(
                &mut state.registered_points,
                saved_at_ms,
                unix_ms_now(),
                registration.deadline.as_millis() as u64,
            );
        }
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
                wake_outbox: Notify::new(),
                platform_complaints: Mutex::new(HashMap::new()),
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

    fn deadline_ms(&self) -> u64 {
        self.inner
            .config
            .registration
            .map_or(u64::MAX, |r| r.deadline.as_millis() as u64)
    }

    fn roster_of(&self, state: &MscsState) -> Vec<PointStatus> {
        registry::roster(
            &self.inner.config.points,
            &state.registered_points,
            unix_ms_now(),
            self.deadline_ms(),
        )
    }

    /// The point list in rotation order, with each point's liveness now.
    pub fn points(&self) -> Vec<PointStatus> {
        let state = self.lock();
        self.roster_of(&state)
    }

    /// Takes in a point's registration or heartbeat. A new point (or one at a new
    /// address) is persisted before this returns; a plain heartbeat is kept in memory,
    /// and a restart gives live points a fresh deadline instead.
    pub fn register_point(
        &self,
        registration: &Registration,
    ) -> Result<RegistrationAck, RegistrationError> {
        let Some(config) = self.inner.config.registration else {
            return Err(RegistrationError::Disabled);
        };
        let mut state = self.lock();
        let before = state.registered_points.clone();
        let change = registry::register(
            &mut state.registered_points,
            &self.inner.config.points,
            registration,
            unix_ms_now(),
            &now_rfc3339(),
            self.deadline_ms(),
        )?;
        if change != RegistrationChange::Heartbeat {
            if let Err(err) = state.save(&self.inner.config.state_file) {
                state.registered_points = before;
                return Err(RegistrationError::Persist(err.to_string()));
            }
            info!(point = %registration.name, control = %registration.control_addr, ?change, "point registered");
            drop(state);
            // A point list that just became runnable may unblock due work.
            self.inner.wake_scheduler.notify_one();
        }
        Ok(RegistrationAck {
            heartbeat_seconds: config.heartbeat().as_secs_f64(),
            deadline_seconds: config.deadline.as_secs_f64(),
            protocol_version: PROTOCOL_VERSION,
        })
    }

    /// Validates and queues a task; persisted before this returns.
    pub fn submit_task(&self, spec: TaskSpec) -> Result<TaskRecord, TaskError> {
        let points = endpoints(&self.points());
        self.inner
            .config
            .resolve_task_in(&points, &spec, Some(String::new()))?;
        let record = TaskRecord {
            id: uuid::Uuid::new_v4().to_string(),
            status: TaskStatus::Queued,
            spec,
            submitted_at: now_rfc3339(),
            run_id: None,
            result_seq: None,
            error: None,
            from_platform: false,
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
        let now = unix_ms_now();
        let mut earliest: Option<(u64, PeriodicKey)> = None;
        if self.inner.config.periodic.is_some() {
            let due = *state.next_periodic_due_unix_ms.get_or_insert(now);
            earliest = Some((due, PeriodicKey::Builtin));
        }
        for (id, entry) in state.platform_periodic.iter_mut() {
            let due = *entry.next_due_unix_ms.get_or_insert(now);
            if earliest.as_ref().is_none_or(|(best, _)| due < *best) {
                earliest = Some((due, PeriodicKey::Platform(id.clone())));
            }
        }
        match earliest {
            None => Err(Duration::from_secs(3600)),
            Some((due_ms, key)) if due_ms <= now => Ok(Work::Periodic { key, due_ms }),
            Some((due_ms, _)) => Err(Duration::from_millis(due_ms - now)),
        }
    }

    /// The run of a due periodic schedule and the index of its source.
    fn plan_periodic(&self, key: &PeriodicKey) -> Result<(RunSpec, usize), TaskError> {
        let config = &self.inner.config;
        match key {
            PeriodicKey::Builtin => {
                let periodic = config.periodic.ok_or_else(|| TaskError {
                    field: "periodic".into(),
                    reason: "periodic schedule disabled".into(),
                })?;
                let (roster, next) = {
                    let state = self.lock();
                    (self.roster_of(&state), state.next_source_index)
                };
                // The next active point at or after the schedule's position: a missing
                // point's turn passes on.
                let count = roster.len().max(1);
                let source_index = (0..roster.len())
                    .map(|offset| (next + offset) % count)
                    .find(|&index| roster[index].state == PointState::Active)
                    .ok_or_else(|| TaskError {
                        field: "source".into(),
                        reason: "no active point".into(),
                    })?;
                let spec = TaskSpec {
                    source: roster[source_index].name.clone(),
                    duration_seconds: Some(periodic.duration_seconds),
                    ..TaskSpec::default()
                };
                Ok((
                    config.resolve_task_in(&endpoints(&roster), &spec, None)?,
                    source_index,
                ))
            }
            PeriodicKey::Platform(id) => {
                let entry = self
                    .lock()
                    .platform_periodic
                    .get(id)
                    .cloned()
                    .ok_or_else(|| TaskError {
                        field: "id".into(),
                        reason: format!("periodic task {id:?} is no longer scheduled"),
                    })?;
                let roster = self.points();
                let (mut run, index) = config.resolve_controller_task_in(
                    &endpoints(&roster),
                    &|name| is_active(&roster, name),
                    &entry.task,
                    entry.next_source_index,
                )?;
                run.kind = RunKind::Periodic;
                Ok((run, index))
            }
        }
    }

    /// Moves a periodic schedule past the run due at `due_ms` whose source was
    /// `source_index`.
    fn advance_periodic(
        &self,
        state: &mut MscsState,
        key: &PeriodicKey,
        due_ms: u64,
        source_index: usize,
    ) {
        let config = &self.inner.config;
        let count = self.roster_of(state).len().max(1);
        // Keep the grid (due + interval) unless the run overran a whole interval; then
        // start from now instead of firing a burst of catch-up runs.
        let next_due = |interval_ms: u64| {
            let now = unix_ms_now();
            let next = due_ms + interval_ms;
            if next + interval_ms < now {
                now
            } else {
                next
            }
        };
        match key {
            PeriodicKey::Builtin => {
                state.next_source_index = (source_index + 1) % count;
                state.periodic_runs_completed += 1;
                let interval_ms = config.periodic.map_or(0, |p| p.interval.as_millis() as u64);
                state.next_periodic_due_unix_ms = Some(next_due(interval_ms));
            }
            PeriodicKey::Platform(id) => {
                if let Some(entry) = state.platform_periodic.get_mut(id) {
                    entry.next_source_index = (source_index + 1) % count;
                    entry.runs_completed += 1;
                    entry.next_due_unix_ms =
                        Some(next_due(entry.task.interval().as_millis() as u64));
                }
            }
        }
    }

    /// Takes in the controller's task list: queues new once tasks (each id once, ever),
    /// starts, updates and stops periodic tasks. Persisted before it returns.
    pub fn apply_platform_tasks(&self, tasks: &[ControllerTask], bad: &[BadTask]) {
        let config = &self.inner.config;
        let mut complaints: Vec<(String, String)> = bad
            .iter()
            .map(|b| {
                (
                    b.id.clone().unwrap_or_else(|| "<no id>".into()),
                    b.reason.clone(),
                )
            })
            .collect();
        let mut changed = false;
        let mut refused_once = false;
        let mut listed_periodic = HashSet::new();
        let mut state = self.lock();
        let roster = self.roster_of(&state);
        let points = endpoints(&roster);
        let count = points.len().max(1);
        let active = roster
            .iter()
            .filter(|p| p.state == PointState::Active)
            .count();
        let may_send = |name: &str| is_active(&roster, name);
        for task in tasks {
            match task.schedule {
                TaskSchedule::Once => {
                    if state.platform_tasks_handled.contains(&task.id) || task.is_finished() {
                        continue;
                    }
                    let resolved = config.resolve_controller_task_in(
                        &points,
                        &may_send,
                        task,
                        state.next_task_source_index % count,
                    );
                    if resolved.is_err() && config.registration.is_some() && active < 2 {
                        // The points have not registered (yet, or again): the task waits
                        // for them instead of failing at once.
                        continue;
                    }
                    let (spec, outcome) = match resolved {
                        Ok((run, index)) => {
                            if task.source.is_none() {
                                state.next_task_source_index = (index + 1) % count;
                            }
                            (config.controller_task_spec(task, &run.source.name), Ok(()))
                        }
                        Err(err) => {
                            let source = task.source.clone().unwrap_or_default();
                            (config.controller_task_spec(task, &source), Err(err))
                        }
                    };
                    let mut record = TaskRecord {
                        id: task.id.clone(),
                        status: TaskStatus::Queued,
                        spec,
                        submitted_at: now_rfc3339(),
                        run_id: None,
                        result_seq: None,
                        error: None,
                        from_platform: true,
                    };
                    match outcome {
                        Ok(()) => {
                            info!(task_id = %task.id, source = %record.spec.source, "controller once task queued");
                        }
                        Err(err) => {
                            // The controller learns why through a failed result document,
                            // delivered like any other.
                            complaints.push((task.id.clone(), err.to_string()));
                            let document = self.refused_document(task, &record.spec, &err);
                            let seq = state.push_result(document.clone(), config.retain_results);
                            record.status = TaskStatus::Failed;
                            record.error = Some(err.to_string());
                            record.run_id = Some(document.run_id.clone());
                            record.result_seq = Some(seq);
                            state.outbox.push(OutboxEntry {
                                seq,
                                queued_at: now_rfc3339(),
                                document,
                            });
                            refused_once = true;
                        }
                    }
                    state.tasks.push(record);
                    state.platform_tasks_handled.insert(task.id.clone());
                    changed = true;
                }
                TaskSchedule::Periodic => {
                    // A periodic task runs while the controller lists it, whatever its
                    // status says about the last run.
                    if let Err(err) = config.validate_periodic_task_in(&points, task) {
                        complaints.push((task.id.clone(), err.to_string()));
                        continue;
                    }
                    listed_periodic.insert(task.id.clone());
                    match state.platform_periodic.get_mut(&task.id) {
                        Some(entry) if entry.task.same_measurement(task) => {}
                        Some(entry) => {
                            // A shorter interval takes effect now, not after the old one.
                            let soonest = unix_ms_now() + task.interval().as_millis() as u64;
                            entry.next_due_unix_ms =
                                entry.next_due_unix_ms.map(|due| due.min(soonest));
                            entry.task = task.clone();
                            changed = true;
                            info!(task_id = %task.id, "controller periodic task updated");
                        }
                        None => {
                            state.platform_periodic.insert(
                                task.id.clone(),
                                PlatformPeriodic {
                                    task: task.clone(),
                                    next_source_index: 0,
                                    next_due_unix_ms: None,
                                    runs_completed: 0,
                                },
                            );
                            changed = true;
                            info!(task_id = %task.id, interval = ?task.interval(), "controller periodic task scheduled");
                        }
                    }
                }
            }
        }
        let stale: Vec<String> = state
            .platform_periodic
            .keys()
            .filter(|id| !listed_periodic.contains(*id))
            .cloned()
            .collect();
        for id in stale {
            state.platform_periodic.remove(&id);
            changed = true;
            info!(task_id = %id, "controller periodic task no longer listed; stopped");
        }
        if changed {
            if let Err(err) = state.save(&config.state_file) {
                error!(cause = %err, "cannot persist the controller's tasks");
            }
        }
        drop(state);
        let mut logged = self
            .inner
            .platform_complaints
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (id, reason) in complaints {
            if logged.get(&id) != Some(&reason) {
                warn!(task_id = %id, %reason, "controller task refused");
                logged.insert(id, reason);
            }
        }
        drop(logged);
        if changed {
            self.inner.wake_scheduler.notify_one();
        }
        if refused_once {
            self.inner.wake_outbox.notify_one();
        }
    }

    /// The result document of a controller task that cannot be measured as given: status
    /// `failed`, no receivers, `source.error` naming the field and the reason.
    fn refused_document(
        &self,
        task: &ControllerTask,
        spec: &TaskSpec,
        err: &TaskError,
    ) -> ResultDocument {
        let defaults = &self.inner.config.defaults;
        let now = now_rfc3339();
        ResultDocument {
            schema: crate::result::ResultSchema::V1,
            task_id: Some(task.id.clone()),
            run_id: uuid::Uuid::new_v4().to_string(),
            kind: RunKind::Task,
            source_point: spec.source.clone(),
            group: spec.group.unwrap_or(defaults.group),
            port: spec.port.unwrap_or(defaults.port),
            session_id: 0,
            started_at: now.clone(),
            finished_at: now,
            status: RunStatus::Failed,
            config: RunConfig {
                rate_pps: spec.rate_pps.unwrap_or(defaults.rate_pps),
                packet_size_bytes: spec.packet_size_bytes.unwrap_or(defaults.packet_size_bytes),
                duration_seconds: task.duration_seconds(),
                ttl: spec.ttl.unwrap_or(defaults.ttl),
                ssm: spec.ssm.unwrap_or(defaults.ssm),
            },
            source: crate::result::SourceResult {
                point: spec.source.clone(),
                data_addr: None,
                report: None,
                error: Some(format!("task refused by the MSCS: {err}")),
            },
            receivers: Vec::new(),
            delay_covariances: Vec::new(),
            tree: None,
            inference: None,
            bottlenecks: Vec::new(),
            comparison: None,
        }
    }

    /// Polls the platform API's task list until `shutdown` flips to true, backing off
    /// (up to 30 s) while it fails.
    pub async fn run_platform_poll(
        &self,
        client: PlatformClient,
        poll_interval: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        // After n failures in a row the wait is 2^n polls (n at most 6),
        // within [poll_interval, PLATFORM_MAX_BACKOFF].
        let cap = poll_interval
            .saturating_mul(1 << PLATFORM_POLL_MAX_DOUBLINGS)
            .min(PLATFORM_MAX_BACKOFF)
            .max(poll_interval);
        let mut backoff = Backoff::new(poll_interval.saturating_mul(2), cap).without_jitter();
        let mut failing = false;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let outcome = tokio::select! {
                outcome = client.fetch_tasks() => outcome,
                _ = shutdown.changed() => return,
            };
            let wait = match outcome {
                Ok((tasks, bad)) => {
                    if failing {
                        info!(api = client.base(), "platform API answers again");
                    }
                    failing = false;
                    backoff.reset();
                    self.apply_platform_tasks(&tasks, &bad);
                    poll_interval
                }
                Err(err) => {
                    failing = true;
                    let wait = backoff.next_delay();
                    warn!(cause = %err, retry_in = ?wait, "cannot fetch the platform's tasks");
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Delivers the outbox to the platform API, oldest first, until `shutdown` flips to
    /// true. An entry leaves the (durable) outbox only after a 2xx, so a result is
    /// delivered at least once across crashes; the controller deduplicates by `run_id`.
    pub async fn run_outbox(&self, client: PlatformClient, mut shutdown: watch::Receiver<bool>) {
        let mut backoff =
            Backoff::new(DELIVERY_FIRST_BACKOFF, PLATFORM_MAX_BACKOFF).without_jitter();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let head = self.lock().outbox.first().cloned();
            let Some(entry) = head else {
                tokio::select! {
                    _ = self.inner.wake_outbox.notified() => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            };
            let outcome = tokio::select! {
                outcome = client.post_result(&entry.document) => outcome,
                _ = shutdown.changed() => return,
            };
            let run_id = &entry.document.run_id;
            let task_id = entry.document.task_id.as_deref().unwrap_or("");
            match outcome {
                Ok(()) => {
                    info!(%run_id, %task_id, "result delivered to the platform");
                    self.finish_delivery(&entry, true);
                    backoff.reset();
                }
                Err(err) if !err.is_transient() => {
                    error!(%run_id, %task_id, cause = %err, "the platform refused the result for good; dropped from the outbox");
                    self.finish_delivery(&entry, false);
                }
                Err(err) => {
                    let retry_in = backoff.next_delay();
                    warn!(%run_id, %task_id, cause = %err, ?retry_in, "result delivery failed; will retry");
                    tokio::select! {
                        _ = tokio::time::sleep(retry_in) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
        }
    }

    fn finish_delivery(&self, entry: &OutboxEntry, delivered: bool) {
        let mut state = self.lock();
        let before = state.outbox.len();
        state
            .outbox
            .retain(|queued| queued.document.run_id != entry.document.run_id);
        if state.outbox.len() == before {
            return;
        }
        if delivered {
            state.results_delivered += 1;
        } else {
            state.results_refused += 1;
        }
        if let Err(err) = state.save(&self.inner.config.state_file) {
            // Kept in memory as delivered; after a crash it would be sent again, which the
            // controller's dedup by run_id absorbs.
            error!(cause = %err, "cannot persist the outbox");
        }
    }

    /// Records a completed run, the schedule's advance and (for controller tasks) the
    /// outbox entry in one durable write.
    fn commit(&self, work: &Work, source_index: usize, document: ResultDocument) -> u64 {
        let config = &self.inner.config;
        let mut state = self.lock();
        let seq = state.push_result(document.clone(), config.retain_results);
        let for_platform = match work {
            Work::Periodic { key, .. } => matches!(key, PeriodicKey::Platform(_)),
            Work::Task(task) => task.from_platform,
        };
        if for_platform && config.platform.is_some() {
            state.outbox.push(OutboxEntry {
                seq,
                queued_at: now_rfc3339(),
                document: document.clone(),
            });
            if state.outbox.len() > config.retain_results {
                let excess = state.outbox.len() - config.retain_results;
                error!(
                    dropped = excess,
                    "outbox over the retention limit; dropping the oldest undelivered results"
                );
                state.outbox.drain(..excess);
            }
        }
        match work {
            Work::Periodic { key, due_ms } => {
                self.advance_periodic(&mut state, key, *due_ms, source_index);
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
        drop(state);
        if for_platform {
            self.inner.wake_outbox.notify_one();
        }
        seq
    }

    /// Takes the missing points out of a planned run: a missing source makes the run
    /// unrunnable, missing receivers are left out and named in the result
    /// ([`Mscs::with_missing`]).
    fn without_missing(&self, mut spec: RunSpec) -> Result<(RunSpec, Vec<String>), TaskError> {
        let roster = self.points();
        let missing_now = |name: &str| {
            roster
                .iter()
                .any(|p| p.name == name && p.state == PointState::Missing)
        };
        if missing_now(&spec.source.name) {
            return Err(TaskError {
                field: "source".into(),
                reason: format!(
                    "point {:?} is missing: no heartbeat within {:.1} s",
                    spec.source.name,
                    self.deadline_ms() as f64 / 1000.0
                ),
            });
        }
        let (missing, active): (Vec<_>, Vec<_>) = spec
            .receivers
            .into_iter()
            .partition(|p| missing_now(&p.name));
        if active.is_empty() {
            return Err(TaskError {
                field: "receivers".into(),
                reason: "every receiver is missing".into(),
            });
        }
        spec.receivers = active;
        Ok((spec, missing.into_iter().map(|p| p.name).collect()))
    }

    /// Names the receivers left out of a run as missing, in point-list order; a run that
    /// measured everyone else is still partial, because it did not cover them.
    fn with_missing(&self, mut document: ResultDocument, missing: &[String]) -> ResultDocument {
        if missing.is_empty() {
            return document;
        }
        let deadline = self.deadline_ms() as f64 / 1000.0;
        document.receivers.extend(missing.iter().map(|name| {
            ReceiverResult::without_report(
                name,
                ReceiverStatus::Missing,
                format!("not in the rotation: no heartbeat within {deadline:.1} s"),
            )
        }));
        let order: Vec<String> = self.points().into_iter().map(|p| p.name).collect();
        document
            .receivers
            .sort_by_key(|r| order.iter().position(|name| *name == r.point));
        if document.status == RunStatus::Ok {
            document.status = RunStatus::Partial;
        }
        document
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
            let planned = match &work {
                Work::Task(task) => self
                    .inner
                    .config
                    .resolve_task_in(
                        &endpoints(&self.points()),
                        &task.spec,
                        Some(task.id.clone()),
                    )
                    .map(|spec| (spec, 0)),
                Work::Periodic { key, .. } => self.plan_periodic(key),
            }
            .and_then(|(spec, index)| {
                let (spec, missing) = self.without_missing(spec)?;
                Ok((spec, index, missing))
            });
            let (spec, source_index, missing) = match planned {
                Ok(planned) => planned,
                Err(err) => {
                    // Only possible if the point list changed since submission, or a
                    // controller periodic task vanished between planning and running.
                    warn!(cause = %err, "dropping unrunnable work");
                    let mut state = self.lock();
                    match &work {
                        Work::Task(task) => {
                            if let Some(record) = state.tasks.iter_mut().find(|t| t.id == task.id) {
                                record.status = TaskStatus::Failed;
                                record.error = Some(err.to_string());
                            }
                        }
                        Work::Periodic { key, due_ms } => {
                            // Skip this slot rather than retrying it in a tight loop.
                            let index = state.next_source_index;
                            self.advance_periodic(&mut state, key, *due_ms, index);
                        }
                    }
                    let _ = state.save(&self.inner.config.state_file);
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
                document = run_measurement(&spec) => self.with_missing(document, &missing),
                // An interrupted run is not a completed one: it is re-run after restart.
                _ = shutdown.changed() => return,
            };
            let seq = self.commit(&work, source_index, document.clone());
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

    fn controller_task(value: serde_json::Value) -> ControllerTask {
        ControllerTask::from_json(&value).unwrap()
    }

    #[test]
    fn controller_tasks_are_taken_in_once_and_bad_ones_answered_with_a_failed_result() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config();
        config.state_file = dir.path().join("state.json");
        config.periodic = None;
        config.platform = Some(PlatformConfig {
            api_url: "http://127.0.0.1:9".into(),
            poll_interval: Duration::from_secs(1),
        });
        let mscs = Mscs::open(config.clone()).unwrap();
        let tasks = [
            controller_task(serde_json::json!({"id": "good", "schedule": "once"})),
            controller_task(
                serde_json::json!({"id": "bad", "schedule": "once", "group": "10.0.0.1"}),
            ),
            controller_task(serde_json::json!({"id": "done", "schedule": "once",
                "status": "completed"})),
            controller_task(serde_json::json!({"id": "slow", "schedule": "periodic",
                "interval_seconds": 10, "duration_seconds": 10})),
            controller_task(serde_json::json!({"id": "rr", "schedule": "periodic",
                "interval_seconds": 10, "duration_seconds": 1, "receivers": ["p3"]})),
        ];
        mscs.apply_platform_tasks(&tasks, &[]);
        mscs.apply_platform_tasks(&tasks, &[]);
        // What the API sees is what a restarted MSCS sees.
        let state = MscsState::load(&config.state_file).unwrap();
        let ids: Vec<_> = state.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, vec!["good", "bad"], "each once task exactly once");
        assert_eq!(state.tasks[0].status, TaskStatus::Queued);
        assert_eq!(state.tasks[0].spec.source, "p1", "round robin starts at p1");
        assert_eq!(state.tasks[1].status, TaskStatus::Failed);
        assert_eq!(state.outbox.len(), 1);
        let refused = &state.outbox[0].document;
        assert_eq!(refused.task_id.as_deref(), Some("bad"));
        assert_eq!(refused.status, RunStatus::Failed);
        assert!(refused.source.error.as_ref().unwrap().contains("group"));
        let periodic: Vec<_> = state.platform_periodic.keys().collect();
        assert_eq!(periodic, vec!["rr"], "duration >= interval is refused");

        // Round robin starting at p3 (index 2): p3 is the task's only receiver, so it
        // cannot be the source and the turn passes to p1.
        let (run, index) = config
            .resolve_controller_task(&state.platform_periodic["rr"].task, 2)
            .unwrap();
        assert_eq!((run.source.name.as_str(), index), ("p1", 0));
        assert_eq!(run.receivers[0].name, "p3");
        assert_eq!(run.task_id.as_deref(), Some("rr"));

        // Dropped from the list: the periodic task stops; once tasks stay handled.
        mscs.apply_platform_tasks(&[], &[]);
        let state = MscsState::load(&config.state_file).unwrap();
        assert!(state.platform_periodic.is_empty());
        assert_eq!(state.platform_tasks_handled.len(), 2);
    }

    #[test]
    fn a_missing_point_loses_its_turn_and_is_named_in_the_result() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = MscsConfig::new(Vec::new(), dir.path().join("state.json"));
        config.registration = Some(RegistrationConfig {
            deadline: Duration::from_secs(5),
        });
        let mscs = Mscs::open(config).unwrap();
        for (index, name) in ["p1", "p2", "p3"].iter().enumerate() {
            mscs.register_point(&Registration {
                name: name.to_string(),
                data_addr: Ipv4Addr::new(10, 0, 0, 1 + index as u8),
                control_addr: format!("10.0.0.{}:7400", 1 + index).parse().unwrap(),
                protocol_version: PROTOCOL_VERSION,
            })
            .unwrap();
        }
        {
            let mut state = mscs.lock();
            // p3 was last heard long ago, and it is p3's turn.
            state.registered_points[2].last_heartbeat_unix_ms = 0;
            state.next_source_index = 2;
        }
        let (run, index) = mscs.plan_periodic(&PeriodicKey::Builtin).unwrap();
        assert_eq!(
            (run.source.name.as_str(), index),
            ("p1", 0),
            "p3's turn passes on"
        );
        let (run, missing) = mscs.without_missing(run).unwrap();
        let receivers: Vec<_> = run.receivers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(receivers, vec!["p2"]);
        assert_eq!(missing, vec!["p3".to_string()]);

        let mut document = mscs.refused_document(
            &controller_task(serde_json::json!({"id": "t", "schedule": "once"})),
            &TaskSpec {
                source: "p1".into(),
                ..TaskSpec::default()
            },
            &TaskError {
                field: String::new(),
                reason: String::new(),
            },
        );
        document.status = RunStatus::Ok;
        document.receivers = vec![ReceiverResult::without_report(
            "p2",
            ReceiverStatus::Ok,
            String::new(),
        )];
        let document = mscs.with_missing(document, &missing);
        let named: Vec<_> = document
            .receivers
            .iter()
            .map(|r| (r.point.as_str(), r.status))
            .collect();
        assert_eq!(
            named,
            vec![("p2", ReceiverStatus::Ok), ("p3", ReceiverStatus::Missing)]
        );
        assert_eq!(document.status, RunStatus::Partial);

        // A task naming the missing point as its source is refused at run time.
        let spec = TaskSpec {
            source: "p3".into(),
            ..TaskSpec::default()
        };
        let run = mscs
            .inner
            .config
            .resolve_task_in(&endpoints(&mscs.points()), &spec, None)
            .unwrap();
        let err = mscs.without_missing(run).unwrap_err();
        assert_eq!(err.field, "source");
        assert!(err.reason.contains("missing"), "{err}");
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
