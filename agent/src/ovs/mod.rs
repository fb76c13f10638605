//! The node's Open vSwitch, driven through OVSDB transactions only.
//!
//! # Layout
//! - [`spec`]: the desired switch ([`SwitchSpec`]) and its validation.
//! - [`Switch`] (`switch.rs`): what reconcile needs from a switch (observe, apply a
//!   list of [`SwitchAction`]s, report capabilities), so the logic can be tested
//!   against a fake.
//! - [`reconcile`](mod@reconcile): pure planning (desired + observed -> actions) and
//!   the [`reconcile()`] loop with optimistic-concurrency retries.
//! - [`OvsdbSwitch`] (`ovsdb_switch.rs`): the real driver; each apply is one
//!   atomic OVSDB transaction, so nothing is ever half-applied.
//! - `probe.rs`: kernel features behind QoS and policing.
//! - [`datapath`]: kernel or userspace datapath for the bridge.
//! - [`uplink_status`]: the datapath and uplink (bond members, links, active
//!   member) as the switch runs them, for capabilities.
//! - `error.rs`, `ownership.rs`: [`OvsError`] and the `external_ids` keys,
//!   leaves every other file imports (no file imports this one).
//!
//! # Ownership
//! Every row we create carries `external_ids:measurelab-owner=<owner>`. Rows
//! without our tag are never modified or deleted; a desired name that is taken
//! by a foreign row is a [`OvsError::Conflict`], not a takeover.

pub mod datapath;
mod error;
mod ovsdb_switch;
mod ownership;
mod probe;
pub mod reconcile;
pub mod spec;
mod switch;
pub mod uplink_status;

pub use datapath::DatapathChoice;
pub use error::OvsError;
pub use ovsdb_switch::OvsdbSwitch;
pub use ownership::{OWNER_KEY, ROLE_KEY};
pub use probe::KernelFeature;
pub use reconcile::{plan, reconcile, teardown, ReconcileReport};
pub use spec::{
    BondMode, BondSpec, Datapath, FlowExportSpec, IpfixSpec, NetflowSpec, PolicingSpec, QosSpec,
    SflowSpec, SwitchSpec, TunnelPortSpec, UplinkSpec, VmPortSpec,
};
pub use switch::{
    ObservedBridge, ObservedExport, ObservedPort, ObservedQos, ObservedSwitch, ObservedTunnel,
    PortRole, Switch, SwitchAction, SwitchCapabilities,
};

/// Probe the switch behind `target` (`unix:/path/db.sock`): datapath types from
/// the Open_vSwitch row plus kernel support for linux-htb and ingress policing.
/// Feed [`SwitchCapabilities::qos_features`] into the heartbeat.
pub async fn probe_capabilities(target: &str) -> Result<SwitchCapabilities, OvsError> {
    OvsdbSwitch::connect(target).await?.capabilities().await
}

/// The bridge's datapath and `owner`'s uplink on it, as the switch behind
/// `target` runs them now.
pub async fn read_switch_status(
    target: &str,
    owner: &str,
    bridge: &str,
) -> Result<uplink_status::SwitchStatus, OvsError> {
    let switch = OvsdbSwitch::connect(target).await?;
    uplink_status::read(switch.client(), owner, bridge).await
}
