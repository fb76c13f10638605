//! The node's service host (the paper's "service host"): built-in multicast
//! measurement on the node itself, for quick tasks that need no virtual
//! platform.
//!
//! # How a `service_host` task runs
//! - Every node started with a service address serves one measurement point
//!   (`mcast::service::spawn_point`, in process) named after the node, with
//!   its TCP control listener on `ADDRESS:PORT` (default port
//!   [`DEFAULT_PORT`]) and its multicast on `ADDRESS`. It reports
//!   `ADDRESS:PORT` as `Capabilities.service_endpoint` (and `mcast` in
//!   `service_tools`), which is how the controller refuses service_host tasks
//!   on nodes without one.
//! - `ADDRESS` sits on the node's *service network*: an OVS internal port
//!   ([`DEFAULT_INTERFACE`]) on the integration bridge, access port of a
//!   reserved VLAN ([`DEFAULT_VLAN`], outside the platforms' pool), so the
//!   uplink trunk carries it between nodes like a slice. A multicast route
//!   (224.0.0.0/4) points at it. Without an OVSDB the interface must already
//!   exist (an operator-managed NIC) and only the address is set.
//! - The controller puts each open service_host task into the desired state
//!   of every listed node, with the listed nodes' endpoints (`peers`, in the
//!   task's node order). The FIRST listed node orchestrates: it runs
//!   `mcast::service::run_task_with` over all peers' points and posts the
//!   result document with `PostResult` (empty vm_id). The others only serve
//!   their point.
//! - Level-triggered: the orchestrator re-reads the desired state (on every
//!   generation change and every [`RESYNC`]), so a task that is still open is
//!   run again after an agent restart. A finished document is written to
//!   `STATE_DIR/service-host/tasks/<task id>.json` before it is posted and
//!   re-posted until the controller acknowledges it; the controller
//!   deduplicates on the document's `run_id`, so a result is stored once.
//!   A periodic task runs again `interval_seconds` after the start of its
//!   last stored run, the source rotating round robin unless the task fixes
//!   it.

use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Duration;

use measurelab_api::node_v1::Capabilities;
use tokio::sync::watch;

use crate::reconcile::ControlPlane;

mod config;
mod network;
mod runner;

pub use config::{
    ServiceHostConfig, ServiceHostError, DEFAULT_INTERFACE, DEFAULT_PORT, DEFAULT_VLAN, RESYNC,
    SERVICE_ROLE,
};
pub use network::ensure_service_network;
pub use runner::{run_tasks, TaskRunnerConfig};

/// What the service host currently offers; `None` until its point serves.
pub type ServiceStatus = Option<SocketAddrV4>;

/// Adds the service host to probed capabilities: its endpoint and the
/// `mcast` tool, which it has built in.
pub fn annotate(caps: &mut Capabilities, status: &ServiceStatus) {
    match status {
        Some(endpoint) => {
            caps.service_endpoint = endpoint.to_string();
            if !caps.service_tools.iter().any(|t| t == "mcast") {
                caps.service_tools.push("mcast".to_string());
            }
        }
        None => caps.service_endpoint.clear(),
    }
}

/// Everything [`run`] needs besides the settings.
pub struct ServiceHostContext {
    /// Node name: the point's name and how the node finds itself in `peers`.
    pub node_name: String,
    /// The node's OVSDB; `None`: the interface is operator-managed.
    pub ovsdb: Option<String>,
    /// The integration bridge.
    pub bridge: String,
    /// `external_ids:measurelab-owner` of the service port.
    pub owner: String,
    /// The agent's state dir (task state under `service-host/`).
    pub state_dir: std::path::PathBuf,
    /// The controller.
    pub control: Arc<dyn ControlPlane>,
    /// The desired generation the heartbeat last saw.
    pub desired_generation: watch::Receiver<u64>,
    /// Becomes true on shutdown.
    pub shutdown: watch::Receiver<bool>,
    /// Where the service host announces its endpoint.
    pub status: watch::Sender<ServiceStatus>,
}

/// Runs the service host until shutdown: keeps the service network and the
/// point up (retrying with backoff while the bridge or OVS is missing), then
/// runs the tasks this node orchestrates.
pub async fn run(config: ServiceHostConfig, cx: ServiceHostContext) {
    let mut shutdown = cx.shutdown.clone();
    let mut backoff = measurelab_backoff::Backoff::new(Duration::from_millis(250), RESYNC);
    // The point obeys only holders of its open tasks' keys; the task runner keeps the
    // ring current from the desired state.
    let keys = Arc::new(measurelab_mcast::auth::KeyRing::default());
    // The point must outlive the task runner; it stops when dropped.
    let point = loop {
        let attempt = async {
            ensure_service_network(&config, cx.ovsdb.as_deref(), &cx.bridge, &cx.owner).await?;
            let listen = std::net::SocketAddr::V4(config.endpoint());
            let name = cx.node_name.clone();
            let address = config.address;
            let keys = Arc::clone(&keys);
            // Binding is quick; the point's threads live in this process's
            // network namespace, which is the node's.
            Ok::<_, ServiceHostError>(measurelab_mcast::service::spawn_point(
                listen,
                &name,
                address,
                Some(keys),
            )?)
        };
        match attempt.await {
            Ok(point) => break point,
            Err(err) => {
                let delay = backoff.next_delay();
                match err {
                    ServiceHostError::BridgeMissing { .. } => {
                        tracing::debug!(error = %err, "service host waits for the bridge")
                    }
                    _ => {
                        tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "service host not up yet")
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
            }
        }
    };
    crate::metrics::metrics().watch_point(point.counters());
    tracing::info!(endpoint = %config.endpoint(), vlan = config.vlan, interface = %config.interface,
        "service host point serving");
    let _ = cx.status.send(Some(config.endpoint()));

    // Level-triggered upkeep of the network (an OVS restart removes the port).
    let keeper = {
        let config = config.clone();
        let ovsdb = cx.ovsdb.clone();
        let bridge = cx.bridge.clone();
        let owner = cx.owner.clone();
        let mut shutdown = cx.shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(RESYNC) => {}
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
                if let Err(err) =
                    ensure_service_network(&config, ovsdb.as_deref(), &bridge, &owner).await
                {
                    tracing::warn!(error = %err, "cannot repair the service network");
                }
            }
        })
    };
    let runner = TaskRunnerConfig {
        node_name: cx.node_name.clone(),
        state_dir: cx.state_dir.join("service-host").join("tasks"),
        clock_sync_bound_us: config.clock_sync_bound_us,
        keys,
    };
    run_tasks(runner, cx.control, cx.desired_generation, cx.shutdown).await;
    keeper.abort();
    let _ = cx.status.send(None);
    if let Err(err) = tokio::task::spawn_blocking(move || point.stop()).await {
        tracing::warn!(error = %err, "service host point did not stop cleanly");
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn parses_and_validates_naming_the_field() {
        let (address, prefix) = ServiceHostConfig::parse_address("10.253.0.11/24").unwrap();
        let config = ServiceHostConfig::new(address, prefix);
        config.validate().unwrap();
        assert_eq!(config.endpoint().to_string(), "10.253.0.11:7090");
        for bad in ["10.253.0.11", "10.253.0.x/24", "10.253.0.1/x"] {
            match ServiceHostConfig::parse_address(bad) {
                Err(ServiceHostError::InvalidConfig { field, .. }) => {
                    assert_eq!(field, "service_address", "{bad}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        type Mutation = Box<dyn Fn(&mut ServiceHostConfig)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "service_address",
                Box::new(|c| c.address = Ipv4Addr::new(239, 1, 1, 1)),
            ),
            ("service_address", Box::new(|c| c.prefix_len = 31)),
            ("service_vlan", Box::new(|c| c.vlan = 4095)),
            ("service_port", Box::new(|c| c.port = 0)),
            (
                "service_interface",
                Box::new(|c| c.interface = "much-too-long-name".into()),
            ),
            (
                "service_clock_sync_bound_us",
                Box::new(|c| c.clock_sync_bound_us = Some(-1.0)),
            ),
        ];
        for (field, mutate) in cases {
            let mut c = config.clone();
            mutate(&mut c);
            match c.validate() {
                Err(ServiceHostError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn annotation_adds_the_endpoint_and_the_tool_once() {
        let mut caps = Capabilities {
            service_tools: vec!["mcast".into()],
            ..Default::default()
        };
        annotate(&mut caps, &Some("10.253.0.11:7090".parse().unwrap()));
        assert_eq!(caps.service_endpoint, "10.253.0.11:7090");
        assert_eq!(caps.service_tools, ["mcast"]);
        let mut bare = Capabilities::default();
        annotate(&mut bare, &Some("10.253.0.12:7090".parse().unwrap()));
        assert_eq!(bare.service_tools, ["mcast"]);
        annotate(&mut bare, &None);
        assert!(bare.service_endpoint.is_empty());
    }
}
