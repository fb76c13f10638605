//! The measurelab platform side of the MSCS: controller task objects and the client of
//! the guest agent's local platform API.
//!
//! Inside a VM the MSCS reaches the platform only through the guest agent
//! (`http://127.0.0.1:7079` in the guest), which relays over the guest channel to the node
//! agent and on to the controller:
//!
//! - `GET {api}/tasks` answers the controller's tasks for this platform, either as a bare
//!   JSON list or as `{"tasks":[...]}` (the guest agent's shape); each element is a
//!   [`ControllerTask`] (`/v1/tasks` of the controller).
//! - `POST {api}/results` takes one result document ([`crate::result::ResultDocument`],
//!   with top-level `task_id` and `run_id`); any 2xx means the relay took it. The
//!   controller deduplicates by `run_id`, so a redelivery after a crash is harmless.
//! - `POST {api}/points` takes the MSCS's point list, `{"points":[...]}` as its own
//!   `GET /points` answers; each post replaces the platform's list at the controller.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::result::ResultDocument;

/// Interval of a periodic task when the controller leaves it out (the paper: 5 min).
pub const DEFAULT_INTERVAL_SECONDS: f64 = 300.0;
/// Sending time of a task when the controller leaves it out (the paper: 30 s).
pub const DEFAULT_DURATION_SECONDS: f64 = 30.0;

/// Errors talking to the platform API or reading its answers.
#[derive(Debug, Error)]
pub enum PlatformError {
    /// The API URL is unusable.
    #[error("platform API URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// Why.
        reason: String,
    },
    /// The request did not get an HTTP answer (connection refused, timeout, ...).
    #[error("platform API {url}: {source}")]
    Transport {
        /// The URL requested.
        url: String,
        /// The client error.
        source: reqwest::Error,
    },
    /// The API answered with a status that may clear up (5xx, 408, 429).
    #[error("platform API {url}: HTTP {status}: {body}")]
    Unavailable {
        /// The URL requested.
        url: String,
        /// HTTP status.
        status: u16,
        /// Start of the answer body.
        body: String,
    },
    /// The API refused the request for good (any other 4xx).
    #[error("platform API {url} rejected the request: HTTP {status}: {body}")]
    Rejected {
        /// The URL requested.
        url: String,
        /// HTTP status.
        status: u16,
        /// Start of the answer body.
        body: String,
    },
    /// The task list is not JSON of the expected shape.
    #[error("platform API {url}: bad task list: {reason}")]
    BadTaskList {
        /// The URL requested.
        url: String,
        /// Why.
        reason: String,
    },
}

impl PlatformError {
    /// Whether retrying the same request later may succeed.
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            PlatformError::Rejected { .. } | PlatformError::InvalidUrl { .. }
        )
    }
}

/// `schedule` of a controller task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskSchedule {
    /// Run once; never again, not even after an MSCS restart.
    Once,
    /// Run every `interval_seconds`, the source taking turns (round robin) unless fixed.
    Periodic,
}

/// A measurement task as the controller publishes it (`/v1/tasks`, CONTRACTS2). Fields
/// the MSCS does not use (`mode`, `platform`, `nodes`, `created_at`, ...) are ignored;
/// omitted probe parameters take the MSCS defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControllerTask {
    /// Controller task id; results carry it as `task_id`.
    pub id: String,
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
    /// Once or periodic.
    pub schedule: TaskSchedule,
    /// Time between run starts of a periodic task (default 300).
    #[serde(default)]
    pub interval_seconds: Option<f64>,
    /// Sending time of each run (default 30).
    #[serde(default)]
    pub duration_seconds: Option<f64>,
    /// Probes per second.
    #[serde(default)]
    pub rate_pps: Option<f64>,
    /// UDP payload bytes per probe.
    #[serde(default)]
    pub packet_size_bytes: Option<usize>,
    /// Multicast group.
    #[serde(default)]
    pub group: Option<Ipv4Addr>,
    /// UDP port.
    #[serde(default)]
    pub port: Option<u16>,
    /// IP TTL.
    #[serde(default)]
    pub ttl: Option<u32>,
    /// SSM joins (needs a 232/8 group).
    #[serde(default)]
    pub ssm: Option<bool>,
    /// Source point name; default: round robin over the points.
    #[serde(default)]
    pub source: Option<String>,
    /// Receiver point names; default: every point but the source.
    #[serde(default)]
    pub receivers: Option<Vec<String>>,
    /// Controller status (`pending`, `running`, `completed`, `failed`); a once task the
    /// controller already calls completed or failed is not run again. A periodic task
    /// runs while it is listed, whatever its status.
    #[serde(default)]
    pub status: Option<String>,
}

impl ControllerTask {
    /// Parses one task object; the error names the field at fault.
    pub fn from_json(value: &Value) -> Result<Self, String> {
        let mut task: Self =
            serde_json::from_value(value.clone()).map_err(|err| err.to_string())?;
        // The controller's Task says "all others" with an empty list and may send an
        // empty source for round robin; both mean "not given" here.
        if task.receivers.as_ref().is_some_and(Vec::is_empty) {
            task.receivers = None;
        }
        if task.source.as_deref().is_some_and(|s| s.trim().is_empty()) {
            task.source = None;
        }
        if task.id.trim().is_empty() {
            return Err("id: must not be empty".into());
        }
        if let Some(interval) = task.interval_seconds {
            if !(interval.is_finite() && interval > 0.0) {
                return Err(format!("interval_seconds: {interval} is not positive"));
            }
        }
        Ok(task)
    }

    /// Interval of a periodic task, with the default applied.
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.interval_seconds.unwrap_or(DEFAULT_INTERVAL_SECONDS))
    }

    /// Sending time, with the default applied.
    pub fn duration_seconds(&self) -> f64 {
        self.duration_seconds.unwrap_or(DEFAULT_DURATION_SECONDS)
    }

    /// Whether `other` measures the same way (everything but the controller's
    /// bookkeeping: `status` and `name`).
    pub fn same_measurement(&self, other: &ControllerTask) -> bool {
        let strip = |task: &ControllerTask| ControllerTask {
            status: None,
            name: None,
            ..task.clone()
        };
        strip(self) == strip(other)
    }

    /// Whether the controller already finished this task.
    pub fn is_finished(&self) -> bool {
        matches!(self.status.as_deref(), Some("completed") | Some("failed"))
    }
}

/// One element of a task list that could not be read.
#[derive(Debug, Clone, PartialEq)]
pub struct BadTask {
    /// Its `id`, if it had a string one.
    pub id: Option<String>,
    /// What is wrong, naming the field.
    pub reason: String,
}

/// Reads a task list answer: a JSON list or `{"tasks":[...]}`. A bad element does not
/// spoil the others; it is returned separately.
pub fn parse_task_list(body: &Value) -> Result<(Vec<ControllerTask>, Vec<BadTask>), String> {
    let items = match body {
        Value::Array(items) => items,
        Value::Object(object) => match object.get("tasks") {
            Some(Value::Array(items)) => items,
            _ => return Err("expected a list or an object with a \"tasks\" list".into()),
        },
        _ => return Err("expected a list or an object with a \"tasks\" list".into()),
    };
    let mut tasks = Vec::new();
    let mut bad = Vec::new();
    for item in items {
        match ControllerTask::from_json(item) {
            Ok(task) => tasks.push(task),
            Err(reason) => bad.push(BadTask {
                id: item.get("id").and_then(Value::as_str).map(str::to_string),
                reason,
            }),
        }
    }
    Ok((tasks, bad))
}

/// Client of the local platform API.
#[derive(Debug, Clone)]
pub struct PlatformClient {
    base: String,
    http: reqwest::Client,
}

/// Per-request limit; above the guest agent's own 10 s relay timeout so that its 504
/// arrives instead of our timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

fn body_excerpt(text: &str) -> String {
    text.chars().take(300).collect()
}

impl PlatformClient {
    /// A client for `base` (e.g. `http://127.0.0.1:7079`).
    pub fn new(base: &str) -> Result<Self, PlatformError> {
        let invalid = |reason: &str| PlatformError::InvalidUrl {
            url: base.to_string(),
            reason: reason.to_string(),
        };
        let parsed = reqwest::Url::parse(base).map_err(|err| invalid(&err.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid("scheme must be http or https"));
        }
        if parsed.host_str().is_none() {
            return Err(invalid("no host"));
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|err| invalid(&err.to_string()))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            http,
        })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn check(url: &str, response: reqwest::Response) -> Result<String, PlatformError> {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if status.is_success() {
            return Ok(text);
        }
        let code = status.as_u16();
        let body = body_excerpt(&text);
        let url = url.to_string();
        if status.is_server_error() || code == 408 || code == 429 {
            Err(PlatformError::Unavailable {
                url,
                status: code,
                body,
            })
        } else {
            Err(PlatformError::Rejected {
                url,
                status: code,
                body,
            })
        }
    }

    /// `GET /tasks`.
    pub async fn fetch_tasks(&self) -> Result<(Vec<ControllerTask>, Vec<BadTask>), PlatformError> {
        let url = format!("{}/tasks", self.base);
        let response =
            self.http
                .get(&url)
                .send()
                .await
                .map_err(|source| PlatformError::Transport {
                    url: url.clone(),
                    source,
                })?;
        let text = Self::check(&url, response).await?;
        let bad_list = |reason: String| PlatformError::BadTaskList {
            url: url.clone(),
            reason,
        };
        let body: Value = serde_json::from_str(&text).map_err(|err| bad_list(err.to_string()))?;
        parse_task_list(&body).map_err(bad_list)
    }

    /// `POST /results` with one document.
    pub async fn post_result(&self, document: &ResultDocument) -> Result<(), PlatformError> {
        let url = format!("{}/results", self.base);
        let response = self
            .http
            .post(&url)
            .json(document)
            .send()
            .await
            .map_err(|source| PlatformError::Transport {
                url: url.clone(),
                source,
            })?;
        Self::check(&url, response).await.map(|_| ())
    }
}

impl PlatformClient {
    /// `POST /points` with the whole point list (the MSCS's `PointStatus` elements;
    /// generic so that this module does not depend on the MSCS's).
    pub async fn post_points<P: Serialize>(&self, points: &[P]) -> Result<(), PlatformError> {
        let url = format!("{}/points", self.base);
        let response = self
            .http
            .post(&url)
            .json(&serde_json::json!({ "points": points }))
            .send()
            .await
            .map_err(|source| PlatformError::Transport {
                url: url.clone(),
                source,
            })?;
        Self::check(&url, response).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn task_lists_in_both_shapes_with_bad_elements_kept_apart() {
        let task = json!({"id": "t1", "name": "n", "mode": "platform", "platform": "pf",
            "schedule": "periodic", "interval_seconds": 60, "duration_seconds": 5,
            "rate_pps": 50, "packet_size_bytes": 100, "group": "239.1.2.3", "port": 5000,
            "ttl": 4, "ssm": false, "source": null, "receivers": null, "status": "pending",
            "created_at": "2026-01-01T00:00:00Z"});
        let bad = json!({"id": "t2", "schedule": "sometimes"});
        let (tasks, bad_tasks) = parse_task_list(&json!([task.clone(), bad.clone()])).unwrap();
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].interval(), Duration::from_secs(60));
        assert_eq!(tasks[0].group, Some(Ipv4Addr::new(239, 1, 2, 3)));
        assert_eq!(bad_tasks[0].id.as_deref(), Some("t2"));
        assert!(bad_tasks[0].reason.contains("sometimes"), "{bad_tasks:?}");
        let (wrapped, _) = parse_task_list(&json!({"tasks": [task]})).unwrap();
        assert_eq!(wrapped, tasks);
        assert!(parse_task_list(&json!({"nope": 1})).is_err());
        assert!(parse_task_list(&json!("x")).is_err());
    }

    #[test]
    fn the_controllers_task_shape_is_understood() {
        // As measurelab_api::http::Task serialises: receivers [] = all others.
        let value = json!({"id": "7f0c", "name": "rr", "mode": "service_host",
            "platform": null, "nodes": ["n1", "n2"], "schedule": "once",
            "interval_seconds": 300, "duration_seconds": 30, "rate_pps": 100,
            "packet_size_bytes": 200, "group": "239.192.0.1", "port": 50001, "ttl": 8,
            "ssm": false, "source": "", "receivers": [], "status": "running",
            "last_result_id": null, "created_at": "2026-11-25T21:00:00Z"});
        let task = ControllerTask::from_json(&value).unwrap();
        assert_eq!(task.receivers, None);
        assert_eq!(task.source, None);
        assert_eq!(task.packet_size_bytes, Some(200));
        assert!(!task.is_finished());
        let renamed = ControllerTask {
            name: Some("other".into()),
            status: Some("completed".into()),
            ..task.clone()
        };
        assert!(task.same_measurement(&renamed));
        let faster = ControllerTask {
            rate_pps: Some(200.0),
            ..task.clone()
        };
        assert!(!task.same_measurement(&faster));
    }

    #[test]
    fn task_fields_are_checked() {
        for (value, needle) in [
            (json!({"schedule": "once"}), "id"),
            (json!({"id": " ", "schedule": "once"}), "id"),
            (json!({"id": "a"}), "schedule"),
            (
                json!({"id": "a", "schedule": "periodic", "interval_seconds": 0}),
                "interval_seconds",
            ),
            (
                json!({"id": "a", "schedule": "once", "group": "not-an-ip"}),
                "invalid",
            ),
        ] {
            let err = ControllerTask::from_json(&value).unwrap_err();
            assert!(err.contains(needle), "{value}: {err}");
        }
        let done = ControllerTask::from_json(
            &json!({"id": "a", "schedule": "once", "status": "completed"}),
        )
        .unwrap();
        assert!(done.is_finished());
        assert_eq!(done.duration_seconds(), DEFAULT_DURATION_SECONDS);
    }

    #[test]
    fn client_rejects_bad_urls() {
        assert!(PlatformClient::new("127.0.0.1:7079").is_err());
        assert!(PlatformClient::new("ftp://x/").is_err());
        let client = PlatformClient::new("http://127.0.0.1:7079/").unwrap();
        assert_eq!(client.base(), "http://127.0.0.1:7079");
    }
}
