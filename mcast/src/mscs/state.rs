//! The MSCS's durable state: schedule position, tasks and completed results.
//!
//! The whole state is one JSON file, rewritten atomically after every change (write a
//! temporary file in the same directory, fsync it, rename it over the old one, fsync the
//! directory). A SIGKILL at any instant therefore leaves either the old or the new file,
//! never a torn one, and a result is acknowledged (listed by the API) only after the file
//! holding it is durable.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::registry::RegisteredPoint;
use crate::platform::ControllerTask;
use crate::result::ResultDocument;

/// Schema id of the state file.
pub const STATE_SCHEMA: &str = "measurelab.mcast.mscs-state/v1";

/// Errors reading or writing the state file.
#[derive(Debug, Error)]
pub enum StateError {
    /// Reading, writing, syncing or renaming failed.
    #[error("state file {path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file exists but is not a state document this build understands.
    #[error("state file {path} is not valid: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Lifecycle of a submitted task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Waiting for its turn.
    Queued,
    /// Being measured.
    Running,
    /// Measured; see `run_id`.
    Succeeded,
    /// Measured, but the run failed; see `run_id` and `error`.
    Failed,
}

/// A task as submitted through `POST /tasks`; omitted fields take the MSCS defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Name of the source point (required).
    pub source: String,
    /// Names of the receivers; default: every other point.
    #[serde(default)]
    pub receivers: Option<Vec<String>>,
    /// Multicast group.
    #[serde(default)]
    pub group: Option<std::net::Ipv4Addr>,
    /// UDP port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Probes per second.
    #[serde(default)]
    pub rate_pps: Option<f64>,
    /// UDP payload bytes per probe.
    #[serde(default)]
    pub packet_size_bytes: Option<usize>,
    /// Sending time.
    #[serde(default)]
    pub duration_seconds: Option<f64>,
    /// IP TTL.
    #[serde(default)]
    pub ttl: Option<u32>,
    /// Join (S,G) instead of (*,G); needs a 232/8 group.
    #[serde(default)]
    pub ssm: Option<bool>,
}

/// A task and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Task id (UUID).
    pub id: String,
    /// Lifecycle state.
    pub status: TaskStatus,
    /// The submission.
    pub spec: TaskSpec,
    /// RFC 3339 submission time.
    pub submitted_at: String,
    /// Run that measured it.
    pub run_id: Option<String>,
    /// Result sequence number of that run (for `GET /results?since=`).
    pub result_seq: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
    /// The task came from the controller (`--platform-api`); its id is the controller's
    /// and its result goes to the outbox.
    #[serde(default)]
    pub from_platform: bool,
}

/// A controller periodic task and its own round-robin position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlatformPeriodic {
    /// The task as last fetched; kept so that the schedule goes on while the platform API
    /// is unreachable.
    pub task: ControllerTask,
    /// Index (into the configured points) of the next run's source when the task does
    /// not fix one.
    pub next_source_index: usize,
    /// When the next run is due, ms since the Unix epoch.
    pub next_due_unix_ms: Option<u64>,
    /// Runs completed for this task.
    pub runs_completed: u64,
}

/// A result waiting to be delivered to the platform API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// The result's sequence number in [`MscsState::results`].
    pub seq: u64,
    /// RFC 3339 time it was queued.
    pub queued_at: String,
    /// The document (carries `task_id` and `run_id`).
    pub document: ResultDocument,
}

/// A completed result with its position in the result log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredResult {
    /// Strictly increasing, starting at 1; `GET /results?since=N` returns seq > N.
    pub seq: u64,
    /// The document.
    pub document: ResultDocument,
}

/// Everything the MSCS must not forget across a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MscsState {
    /// Always [`STATE_SCHEMA`].
    pub schema: String,
    /// Index (into the configured point list) of the next periodic run's source.
    pub next_source_index: usize,
    /// When the next periodic run is due, ms since the Unix epoch.
    pub next_periodic_due_unix_ms: Option<u64>,
    /// Number of periodic runs completed so far.
    pub periodic_runs_completed: u64,
    /// Sequence number the next result gets.
    pub next_result_seq: u64,
    /// Completed results, oldest first (bounded by the retention limit).
    pub results: Vec<StoredResult>,
    /// Submitted tasks, oldest first.
    pub tasks: Vec<TaskRecord>,
    /// Ids of controller once tasks already taken in (queued, run or refused): never
    /// queued again, whatever the platform API lists later.
    #[serde(default)]
    pub platform_tasks_handled: BTreeSet<String>,
    /// Controller periodic tasks by id.
    #[serde(default)]
    pub platform_periodic: BTreeMap<String, PlatformPeriodic>,
    /// Round-robin position for controller once tasks that name no source.
    #[serde(default)]
    pub next_task_source_index: usize,
    /// Results of controller tasks not yet accepted by the platform API, oldest first.
    /// An entry leaves only after a 2xx (or a permanent 4xx refusal).
    #[serde(default)]
    pub outbox: Vec<OutboxEntry>,
    /// Results the platform API accepted.
    #[serde(default)]
    pub results_delivered: u64,
    /// Results the platform API refused for good (4xx) and that were dropped.
    #[serde(default)]
    pub results_refused: u64,
    /// Points that registered (`POST /points`), in order of first registration, with
    /// their last heartbeat; kept so that a restarted MSCS goes on with its live points.
    #[serde(default)]
    pub registered_points: Vec<RegisteredPoint>,
}

impl Default for MscsState {
    fn default() -> Self {
        Self {
            schema: STATE_SCHEMA.to_string(),
            next_source_index: 0,
            next_periodic_due_unix_ms: None,
            periodic_runs_completed: 0,
            next_result_seq: 1,
            results: Vec::new(),
            tasks: Vec::new(),
            platform_tasks_handled: BTreeSet::new(),
            platform_periodic: BTreeMap::new(),
            next_task_source_index: 0,
            outbox: Vec::new(),
            results_delivered: 0,
            results_refused: 0,
            registered_points: Vec::new(),
        }
    }
}

impl MscsState {
    /// Loads the state, or a fresh one if the file does not exist yet.
    pub fn load(path: &Path) -> Result<Self, StateError> {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(StateError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let state: Self = serde_json::from_slice(&bytes).map_err(|err| StateError::Invalid {
            path: path.to_path_buf(),
            reason: err.to_string(),
        })?;
        if state.schema != STATE_SCHEMA {
            return Err(StateError::Invalid {
                path: path.to_path_buf(),
                reason: format!("schema {:?}, expected {STATE_SCHEMA:?}", state.schema),
            });
        }
        Ok(state)
    }

    /// Writes the state atomically and durably.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: path.to_path_buf(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(self).map_err(|err| StateError::Invalid {
            path: path.to_path_buf(),
            reason: err.to_string(),
        })?;
        let directory = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "state".into());
        let temporary = directory.join(format!(".{file_name}.tmp"));
        let mut file = File::create(&temporary).map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        fs::rename(&temporary, path).map_err(io)?;
        // The rename is durable only once the directory entry is.
        File::open(&directory)
            .and_then(|dir| dir.sync_all())
            .map_err(io)?;
        Ok(())
    }

    /// Appends a result, assigning its sequence number, and drops the oldest beyond
    /// `retain`.
    pub fn push_result(&mut self, document: ResultDocument, retain: usize) -> u64 {
        let seq = self.next_result_seq;
        self.next_result_seq += 1;
        self.results.push(StoredResult { seq, document });
        if self.results.len() > retain {
            let excess = self.results.len() - retain;
            self.results.drain(..excess);
        }
        seq
    }

    /// Results with `seq > since`, oldest first, at most `limit`.
    pub fn results_since(&self, since: u64, limit: usize) -> Vec<StoredResult> {
        self.results
            .iter()
            .filter(|r| r.seq > since)
            .take(limit)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::{ResultSchema, RunConfig, RunKind, RunStatus, SourceResult};

    fn document(run_id: &str) -> ResultDocument {
        ResultDocument {
            schema: ResultSchema::V1,
            task_id: None,
            run_id: run_id.into(),
            kind: RunKind::Periodic,
            source_point: "p1".into(),
            group: "239.1.1.1".parse().unwrap(),
            port: 5000,
            session_id: 1,
            started_at: "2026-01-01T00:00:00Z".into(),
            finished_at: "2026-01-01T00:00:01Z".into(),
            status: RunStatus::Ok,
            config: RunConfig {
                rate_pps: 10.0,
                packet_size_bytes: 64,
                duration_seconds: 1.0,
                ttl: 1,
                ssm: false,
            },
            source: SourceResult {
                point: "p1".into(),
                data_addr: None,
                report: None,
                error: None,
            },
            receivers: vec![],
            delay_covariances: Vec::new(),
            tree: None,
            inference: None,
            bottlenecks: Vec::new(),
            comparison: None,
        }
    }

    #[test]
    fn missing_file_gives_fresh_state() {
        let dir = tempfile::tempdir().unwrap();
        let state = MscsState::load(&dir.path().join("state.json")).unwrap();
        assert_eq!(state, MscsState::default());
    }

    #[test]
    fn save_then_load_round_trips_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut state = MscsState {
            next_source_index: 2,
            ..MscsState::default()
        };
        state.push_result(document("a"), 10);
        state.save(&path).unwrap();
        assert_eq!(MscsState::load(&path).unwrap(), state);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn corrupt_or_foreign_file_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            MscsState::load(&path),
            Err(StateError::Invalid { .. })
        ));
        let mut other = serde_json::to_value(MscsState::default()).unwrap();
        other["schema"] = "something/v9".into();
        fs::write(&path, other.to_string()).unwrap();
        assert!(matches!(
            MscsState::load(&path),
            Err(StateError::Invalid { .. })
        ));
    }

    #[test]
    fn results_are_sequenced_and_retention_is_bounded() {
        let mut state = MscsState::default();
        for name in ["a", "b", "c", "d"] {
            state.push_result(document(name), 3);
        }
        let seqs: Vec<_> = state.results.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![2, 3, 4]);
        let since: Vec<_> = state.results_since(2, 10).iter().map(|r| r.seq).collect();
        assert_eq!(since, vec![3, 4]);
        assert_eq!(state.results_since(0, 1).len(), 1);
    }
}
