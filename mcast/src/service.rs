//! Built-in multicast measurement for the node agent's service host: quick tasks without
//! a virtual platform, hence without an MSCS process, its state file or HTTP.
//!
//! - [`run_task`] / [`run_task_with`] run ONE measurement of a controller task over
//!   points that are already serving (`mcast-point serve`, or [`spawn_point`]) and return
//!   the same [`ResultDocument`] the MSCS produces (`measurelab.mcast.result/v1`, with
//!   `task_id` = the controller task id and a fresh `run_id`). They reuse the MSCS's
//!   runner and validation, so errors name the same fields. Scheduling (a periodic
//!   task's interval, its round robin) and delivery stay with the caller: pass
//!   [`ServiceOptions::source_start_index`] to rotate the source between calls.
//! - [`spawn_point`] serves a point inside the calling process (threads, not a child
//!   process). The equivalent command line is
//!   `mcast-point serve --listen ADDR:PORT --name NAME --data-addr IPV4`.
//!
//! Network namespaces: the listener is bound on the calling thread, and the point's
//! threads (which open the multicast sockets) inherit the calling thread's network
//! namespace. Call [`spawn_point`] from a thread that is in the namespace of the service
//! address. [`run_task`] only opens TCP control connections, from wherever it runs.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use thiserror::Error;

use crate::auth::{ControlKey, KeyRing};
use crate::mscs::runner::{run_measurement, PointEndpoint};
use crate::mscs::{MscsConfig, MscsError, ProbeDefaults};
use crate::platform::{ControllerTask, TaskSchedule};
use crate::point::{serve, PointConfig, PointCounters, PointError};
use crate::result::{ResultDocument, RunKind};

/// Errors of the service-host entry points.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// The points or options cannot make a run (fewer than two points, duplicate names,
    /// bad drain or clock bound).
    #[error("invalid service run: {field}: {reason}")]
    InvalidConfig {
        /// The offending field (`points`, `receiver_drain_seconds`, ...).
        field: String,
        /// Why.
        reason: String,
    },
    /// The task cannot be measured with these points; names the task field.
    #[error("invalid task {task_id}: {field}: {reason}")]
    InvalidTask {
        /// Controller task id.
        task_id: String,
        /// Task field at fault (`source`, `receivers`, `group`, `rate_pps`, ...).
        field: String,
        /// Why.
        reason: String,
    },
    /// The point's control listener could not be bound.
    #[error("point {name}: cannot listen on {addr}: {source}")]
    Bind {
        /// Point name.
        name: String,
        /// Requested address.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// The point's thread could not be started or ended with an error.
    #[error("point {name}: {reason}")]
    Point {
        /// Point name.
        name: String,
        /// Why.
        reason: String,
    },
}

/// Knobs of a service run; `Default` gives the MSCS's defaults.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// Probe parameters for fields the task leaves out.
    pub defaults: ProbeDefaults,
    /// Clock synchronisation bound (µs) when the points are on different hosts; `None`
    /// when they share one host clock (the usual service-host case: one node).
    pub clock_sync_bound_us: Option<f64>,
    /// How long receivers keep reading after the sender finished.
    pub receiver_drain_seconds: f64,
    /// When the task names no source: index into `points` of the first point to try as
    /// the source (round robin: pass the previous run's index + 1).
    pub source_start_index: usize,
    /// The task's key, which signs every `send` and `receive` of the run; points that
    /// hold keys refuse those requests without it.
    pub control_key: Option<ControlKey>,
    /// Points whose agents the controller says predate control protocol version 2:
    /// see [`crate::mscs::runner::RunSpec::v1_points`].
    pub v1_points: std::collections::BTreeSet<String>,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self {
            defaults: ProbeDefaults::default(),
            clock_sync_bound_us: None,
            receiver_drain_seconds: 0.1,
            source_start_index: 0,
            control_key: None,
            v1_points: Default::default(),
        }
    }
}

/// Runs one measurement of `task` over running points (`(name, control address)` in
/// round-robin order) with default options. See [`run_task_with`].
pub async fn run_task(
    task: &ControllerTask,
    points: &[(String, SocketAddr)],
) -> Result<ResultDocument, ServiceError> {
    run_task_with(task, points, &ServiceOptions::default()).await
}

/// Runs one measurement of `task` over running points and returns its result document.
///
/// Validation happens before any packet: bad points or options give
/// [`ServiceError::InvalidConfig`], a task that does not fit them
/// [`ServiceError::InvalidTask`] naming the field. Once started, point failures do not
/// error: they are recorded in the document (`status` `partial`/`failed`, per-receiver
/// `missing`/`failed`), exactly as the MSCS records them. The document's `kind` is
/// `periodic` for a periodic task and `task` for a once task.
pub async fn run_task_with(
    task: &ControllerTask,
    points: &[(String, SocketAddr)],
    options: &ServiceOptions,
) -> Result<ResultDocument, ServiceError> {
    let endpoints = points
        .iter()
        .map(|(name, control)| PointEndpoint {
            name: name.clone(),
            control: *control,
        })
        .collect();
    // The MSCS config is only a vehicle for the shared validation; nothing is persisted.
    let mut config = MscsConfig::new(endpoints, std::path::PathBuf::new());
    config.periodic = None;
    config.defaults = options.defaults.clone();
    config.clock_sync_bound_us = options.clock_sync_bound_us;
    config.receiver_drain_seconds = options.receiver_drain_seconds;
    config.control_key = options.control_key.clone();
    config.validate().map_err(|err| match err {
        MscsError::InvalidConfig { field, reason } => ServiceError::InvalidConfig {
            field: field.to_string(),
            reason,
        },
        other => ServiceError::InvalidConfig {
            field: "points".into(),
            reason: other.to_string(),
        },
    })?;
    let start = options.source_start_index % points.len();
    let (mut run, _) =
        config
            .resolve_controller_task(task, start)
            .map_err(|err| ServiceError::InvalidTask {
                task_id: task.id.clone(),
                field: err.field,
                reason: err.reason,
            })?;
    if task.schedule == TaskSchedule::Periodic {
        run.kind = RunKind::Periodic;
    }
    run.v1_points = options.v1_points.clone();
    Ok(run_measurement(&run).await)
}

/// A point served in this process; stops (and joins its accept thread) on
/// [`PointHandle::stop`] or drop. Runs in flight on it end when their control
/// connection closes.
#[derive(Debug)]
pub struct PointHandle {
    name: String,
    local_addr: SocketAddr,
    shutdown: Arc<AtomicBool>,
    counters: Arc<PointCounters>,
    thread: Option<JoinHandle<Result<(), PointError>>>,
}

impl PointHandle {
    /// The point's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the point did so far (sends started, requests refused).
    pub fn counters(&self) -> Arc<PointCounters> {
        Arc::clone(&self.counters)
    }

    /// The bound control address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and waits for the accept loop to end.
    pub fn stop(mut self) -> Result<(), ServiceError> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), ServiceError> {
        self.shutdown.store(true, Ordering::Relaxed);
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let point_error = |reason: String| ServiceError::Point {
            name: self.name.clone(),
            reason,
        };
        match thread.join() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(point_error(err.to_string())),
            Err(_) => Err(point_error("the point thread panicked".into())),
        }
    }
}

impl Drop for PointHandle {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

/// Serves a measurement point named `name` on control address `listen`, sending and
/// joining on the interface that has `data_addr`. The listener is bound before this
/// returns, so a bind error is reported here and the point is reachable at once.
///
/// With `keys`, `send` and `receive` must carry a key proof of a task in the ring (the
/// caller keeps the ring current); without, the point obeys anyone who reaches it.
pub fn spawn_point(
    listen: SocketAddr,
    name: &str,
    data_addr: Ipv4Addr,
    keys: Option<Arc<KeyRing>>,
) -> Result<PointHandle, ServiceError> {
    if name.is_empty() {
        return Err(ServiceError::InvalidConfig {
            field: "name".into(),
            reason: "must not be empty".into(),
        });
    }
    let bind_error = |source| ServiceError::Bind {
        name: name.to_string(),
        addr: listen,
        source,
    };
    let listener = TcpListener::bind(listen).map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;
    let shutdown = Arc::new(AtomicBool::new(false));
    // The default limits: a rate ceiling, a connection cap and bounded request lines.
    let config = PointConfig {
        keys,
        ..PointConfig::new(name, data_addr)
    };
    let counters = Arc::clone(&config.counters);
    let thread = std::thread::Builder::new()
        .name(format!("mcast-point-{name}"))
        .spawn({
            let shutdown = Arc::clone(&shutdown);
            move || serve(listener, config, shutdown)
        })
        .map_err(|err| ServiceError::Point {
            name: name.to_string(),
            reason: format!("cannot start its thread: {err}"),
        })?;
    Ok(PointHandle {
        name: name.to_string(),
        local_addr,
        shutdown,
        counters,
        thread: Some(thread),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn task(value: serde_json::Value) -> ControllerTask {
        ControllerTask::from_json(&value).unwrap()
    }

    #[tokio::test]
    async fn bad_points_and_tasks_are_refused_before_any_packet() {
        let once = task(json!({"id": "t1", "schedule": "once"}));
        let one_point = [("p1".to_string(), "127.0.0.1:9".parse().unwrap())];
        match run_task(&once, &one_point).await {
            Err(ServiceError::InvalidConfig { field, .. }) => assert_eq!(field, "points"),
            other => panic!("{other:?}"),
        }
        let points = [
            ("p1".to_string(), "127.0.0.1:9".parse().unwrap()),
            ("p2".to_string(), "127.0.0.1:10".parse().unwrap()),
        ];
        for (bad, field) in [
            (
                json!({"id": "t", "schedule": "once", "source": "p9"}),
                "source",
            ),
            (
                json!({"id": "t", "schedule": "once", "receivers": ["p7"]}),
                "receivers",
            ),
            (
                json!({"id": "t", "schedule": "once", "group": "10.0.0.1"}),
                "group",
            ),
            (
                json!({"id": "t", "schedule": "once", "rate_pps": 0}),
                "rate_pps",
            ),
        ] {
            match run_task(&task(bad.clone()), &points).await {
                Err(ServiceError::InvalidTask { field: got, .. }) => {
                    assert_eq!(got, field, "{bad}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn unreachable_source_is_a_recorded_failure_not_an_error() {
        let closed = || {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let points = [("p1".to_string(), closed()), ("p2".to_string(), closed())];
        let periodic = task(json!({"id": "t9", "schedule": "periodic", "source": "p2"}));
        let document = run_task(&periodic, &points).await.unwrap();
        assert_eq!(document.task_id.as_deref(), Some("t9"));
        assert_eq!(document.kind, RunKind::Periodic);
        assert_eq!(document.source_point, "p2");
        assert_eq!(document.status, crate::result::RunStatus::Failed);
        assert!(document.source.error.unwrap().contains("unreachable"));
    }

    #[test]
    fn run_task_can_be_spawned_on_a_multi_threaded_runtime() {
        // The node agent runs it with tokio::spawn, which needs a Send future.
        fn assert_send<T: Send>(_: &T) {}
        let task = task(json!({"id": "t", "schedule": "once"}));
        let points: Vec<(String, SocketAddr)> = Vec::new();
        let future = run_task(&task, &points);
        assert_send(&future);
    }

    #[test]
    fn spawned_point_binds_at_once_and_stops() {
        let point = spawn_point(
            "127.0.0.1:0".parse().unwrap(),
            "p1",
            Ipv4Addr::LOCALHOST,
            None,
        )
        .unwrap();
        let addr = point.local_addr();
        assert_ne!(addr.port(), 0);
        std::net::TcpStream::connect(addr).unwrap();
        match spawn_point(addr, "p2", Ipv4Addr::LOCALHOST, None) {
            Err(ServiceError::Bind { name, .. }) => assert_eq!(name, "p2"),
            other => panic!("{other:?}"),
        }
        point.stop().unwrap();
        assert!(spawn_point(addr, "", Ipv4Addr::LOCALHOST, None).is_err());
    }
}
