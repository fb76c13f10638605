//! The pass's gateway step: make this node's platform gateways match
//! [`DesiredState::gateways`] and tell the switch step which ports they need.
//!
//! A desired gateway that fails its checks is logged and left exactly as it
//! runs now (not applied, not removed): a bad update must not cut off the
//! peers of a working gateway. A failure on the host is logged and retried
//! with backoff; the gateway's port stays on the switch meanwhile.

use std::collections::{BTreeMap, BTreeSet};

use measurelab_api::http::GatewayState;
use measurelab_api::node_v1::{DesiredState, GatewayStatus};

use crate::gateway::{GatewayHost, GatewaySpec};
use crate::ovs::VmPortSpec;

/// What a pass did to a gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayChange {
    /// Its device process was (re)started.
    Started,
    /// Its key, port or peer set was changed on the running device.
    Reconfigured,
    /// It was torn down (no longer desired).
    Removed,
}

/// What the step did and what the switch must carry.
#[derive(Debug, Default)]
pub(crate) struct GatewaysAfter {
    /// Every gateway's OVS port.
    pub ports: Vec<VmPortSpec>,
    /// Ports whose veth was re-created: the switch must re-add them.
    pub rebuilt: Vec<String>,
    /// (platform id, what changed), in order.
    pub changes: Vec<(String, GatewayChange)>,
    /// Some gateway failed on the host: retry.
    pub failed: bool,
    /// How each desired gateway stands after the step, by platform id: what
    /// the controller shows as the gateway's state.
    pub statuses: BTreeMap<String, GatewayStatus>,
}

fn status(platform_id: &str, state: GatewayState, message: String) -> GatewayStatus {
    GatewayStatus {
        platform_id: platform_id.to_string(),
        state: state.as_str().to_string(),
        message,
    }
}

fn port(name: &str, vlan: u16) -> VmPortSpec {
    VmPortSpec {
        name: name.to_string(),
        vlan,
        qos: None,
        ingress_policing: None,
    }
}

/// Runs the step (blocking: call it on a blocking thread).
pub(crate) fn run(host: &GatewayHost, owner: &str, desired: &DesiredState) -> GatewaysAfter {
    let mut after = GatewaysAfter::default();
    let mut specs: BTreeMap<String, GatewaySpec> = BTreeMap::new();
    let mut refused = BTreeSet::new();
    for want in &desired.gateways {
        match GatewaySpec::from_desired(owner, want) {
            Ok(spec) => {
                specs.entry(spec.platform_id.clone()).or_insert(spec);
            }
            Err(err) => {
                tracing::warn!(error = %err, "gateway refused; the running one (if any) is kept as it is");
                refused.insert(want.platform_id.clone());
                after.statuses.insert(
                    want.platform_id.clone(),
                    status(&want.platform_id, GatewayState::Failed, err.to_string()),
                );
            }
        }
    }
    let owned = match host.list_owned() {
        Ok(owned) => owned,
        Err(err) => {
            tracing::warn!(error = %err, "cannot list this node's gateways");
            after.failed = true;
            Vec::new()
        }
    };
    for spec in specs.values() {
        match host.ensure(spec) {
            Ok(outcome) => {
                if outcome.started {
                    tracing::info!(platform = %spec.platform_name, listen_port = spec.listen_port, "gateway started");
                    after
                        .changes
                        .push((spec.platform_id.clone(), GatewayChange::Started));
                }
                if outcome.reconfigured {
                    tracing::info!(platform = %spec.platform_name, peers = spec.peers.len(), "gateway configured");
                    after
                        .changes
                        .push((spec.platform_id.clone(), GatewayChange::Reconfigured));
                }
                if outcome.port_rebuilt {
                    after.rebuilt.push(spec.names.port.clone());
                }
                after.statuses.insert(
                    spec.platform_id.clone(),
                    status(&spec.platform_id, GatewayState::Ready, String::new()),
                );
            }
            Err(err) => {
                tracing::warn!(error = %err, "gateway not ready");
                after.failed |= err.is_transient();
                after.statuses.insert(
                    spec.platform_id.clone(),
                    status(&spec.platform_id, GatewayState::Failed, err.to_string()),
                );
            }
        }
        after.ports.push(port(&spec.names.port, spec.vlan));
    }
    for record in owned {
        if specs.contains_key(&record.platform_id) {
            continue;
        }
        if refused.contains(&record.platform_id) {
            after.ports.push(port(&record.port, record.vlan));
            continue;
        }
        match host.remove(&record) {
            Ok(()) => {
                tracing::info!(platform = %record.platform_id, "gateway removed");
                after
                    .changes
                    .push((record.platform_id.clone(), GatewayChange::Removed));
            }
            Err(err) => {
                tracing::warn!(error = %err, "gateway removal failed");
                after.failed = true;
                after.ports.push(port(&record.port, record.vlan));
            }
        }
    }
    after
}
