//! Node agent: the paper's node management host. It registers the node with
//! the controller, heartbeats with resource use and probed capabilities, and
//! ships its own logs.
//!
//! # Layout
//! - [`run`] / [`AgentConfig`]: the entry point used by the `measurelab agent`
//!   command and by tests.
//! - `config`: [`AgentConfig`] validation and [`AgentError`], shared by `run`
//!   and `session` (a leaf, so `session` never imports this root).
//! - `session`: register + heartbeat loop, with backoff and re-registration.
//! - [`identity`]: node id + secret persisted in the state dir.
//! - [`usage`]: resource use from /proc and statvfs.
//! - [`capabilities`]: what the node can really do (libvirt, namespaces, OVS).
//! - [`logs`]: `tracing` layer + bounded buffer shipped with `ShipLogs`.
//! - [`reconcile`]: makes guests, switch ports and guest channels match the
//!   controller's desired state; relays guest traffic.
//! - [`service_host`]: the node's built-in multicast point on the service
//!   network, and the service_host tasks this node orchestrates.
//! - [`system_libvirtd`]: starts the system libvirtd QEMU guests need (and
//!   undoes exactly that), for the lab and the QEMU tests.
//!
//! The agent never exits because the controller is down or refuses it: it
//! keeps retrying, so a node comes back by itself after any outage.
#![warn(missing_docs)]

use std::future::Future;

pub mod capabilities;
mod config;
pub mod controller_tls;
mod exec_relay;
pub mod gateway;
pub mod guest_channel;
pub mod hypervisor;
pub mod identity;
pub mod logs;
pub mod metrics;
pub mod ovs;
pub mod reconcile;
pub mod service_host;
mod session;
pub mod system_libvirtd;
pub mod underlay;
pub mod usage;

pub use config::{AgentConfig, AgentError, DEFAULT_APPLIANCE_DIR};

/// Run the agent until `shutdown` completes.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    config.validate()?;
    session::run(config, shutdown).await
}
