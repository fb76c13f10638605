//! `measurelab_virtual_platform`: a slice of the physical platform (the
//! paper's virtual platform): member nodes, one VLAN tag and one subnet that
//! the controller allocates, and VMs (`measurelab_vm`) placed on the members.

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use measurelab_api::client::{Client, ClientError};
use measurelab_api::http::{Platform, PlatformCreate, PlatformPatch, PlatformPowerState};
use serde::{Deserialize, Serialize};
use tf_provider::schema::{
    Attribute, AttributeConstraint, AttributeType, Block, Description, Schema,
};
use tf_provider::value::Value;
use tf_provider::{AttributePath, Diagnostics};

use super::adapter::{id_or_name, known, CreateRequest, ManagedResource};
use crate::diagnostics::{self, Operation};
use crate::node_model::computed;
use crate::number::Number;
use crate::shared::Shared;

const KIND: &str = "virtual platform";

/// Terraform state of one platform.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlatformState {
    /// Unique name.
    pub name: Value<String>,
    /// Member node names.
    pub nodes: Value<BTreeSet<String>>,
    /// Administrators.
    pub admins: Value<BTreeSet<String>>,
    /// Free text.
    pub description: Value<String>,
    /// `running` or `paused`.
    pub power_state: Value<String>,
    /// Controller id.
    pub id: Value<String>,
    /// Allocated VLAN tag.
    pub vlan_tag: Value<Number>,
    /// Allocated subnet.
    pub subnet: Value<String>,
    /// Gateway in the subnet, empty if none.
    pub gateway: Value<String>,
    /// Creation time.
    pub created_at: Value<String>,
    /// Export and keep the platform's traffic (absent from states written
    /// before it existed).
    #[serde(default)]
    pub flow_monitoring: Value<bool>,
    /// The key of the platform's MSCS and points (sensitive; absent from
    /// states written before it existed, read on the next refresh).
    #[serde(default)]
    pub control_key: Value<String>,
}

impl PlatformState {
    fn validate(&self, diags: &mut Diagnostics) {
        if let Value::Value(nodes) = &self.nodes {
            if nodes.is_empty() {
                diagnostics::invalid_value(
                    diags,
                    AttributePath::new("nodes"),
                    "A virtual platform needs nodes",
                    "`nodes` is empty; list at least one measurement node (by name).".to_string(),
                );
            }
        }
        if let Value::Value(power) = &self.power_state {
            if PlatformPowerState::parse(power).is_none() {
                diagnostics::invalid_value(
                    diags,
                    AttributePath::new("power_state"),
                    "Invalid power state",
                    format!(
                        "{power:?} is not a platform power state; use \"running\" or \"paused\"."
                    ),
                );
            }
        }
    }

    fn refresh_from(&mut self, platform: &Platform) {
        self.name = Value::Value(platform.name.clone());
        self.nodes = Value::Value(platform.nodes.iter().cloned().collect());
        // Empty lists and text stay null when the configuration left them out.
        self.admins = if platform.admins.is_empty() && !self.admins.is_value() {
            Value::Null
        } else {
            Value::Value(platform.admins.iter().cloned().collect())
        };
        self.description = if platform.description.is_empty() && !self.description.is_value() {
            Value::Null
        } else {
            Value::Value(platform.description.clone())
        };
        self.power_state = Value::Value(platform.power_state.as_str().to_string());
        self.id = Value::Value(platform.id.clone());
        self.vlan_tag = Value::Value(Number::from(u64::from(platform.vlan_tag)));
        self.subnet = Value::Value(platform.subnet.clone());
        self.gateway = Value::Value(platform.gateway.clone().unwrap_or_default());
        self.created_at = Value::Value(platform.created_at.clone());
        self.flow_monitoring = Value::Value(platform.flow_monitoring);
    }

    fn mark_computed_unknown(&mut self) {
        self.id = Value::Unknown;
        self.vlan_tag = Value::Unknown;
        self.subnet = Value::Unknown;
        self.gateway = Value::Unknown;
        self.created_at = Value::Unknown;
        self.control_key = Value::Unknown;
        if self.power_state.is_null() {
            self.power_state = Value::Unknown;
        }
        if self.flow_monitoring.is_null() {
            self.flow_monitoring = Value::Unknown;
        }
    }
}

fn set_of(value: &Value<BTreeSet<String>>) -> Vec<String> {
    value
        .as_ref_option()
        .map(|s| s.iter().cloned().collect())
        .unwrap_or_default()
}

/// The controller's platforms, as a Terraform resource.
pub struct Platforms {
    shared: Shared,
}

#[async_trait]
impl ManagedResource for Platforms {
    type State = PlatformState;
    type Object = Platform;

    const KIND: &'static str = KIND;

    fn new(shared: Shared) -> Self {
        Platforms { shared }
    }

    fn shared(&self) -> &Shared {
        &self.shared
    }

    fn schema(&self) -> Schema {
        let strings = || AttributeType::Set(Box::new(AttributeType::String));
        let attribute = |attr_type, description: &str, constraint| Attribute {
            attr_type,
            description: Description::markdown(description),
            constraint,
            ..Default::default()
        };
        let attributes: HashMap<String, Attribute> = HashMap::from([
            (
                "name".to_string(),
                attribute(
                    AttributeType::String,
                    "Unique name (a DNS label). Changing it replaces the platform.",
                    AttributeConstraint::Required,
                ),
            ),
            (
                "nodes".to_string(),
                attribute(
                    strings(),
                    "Names of the measurement nodes the platform spans. Changed in place; a node that \
                     still hosts a VM of the platform cannot be removed.",
                    AttributeConstraint::Required,
                ),
            ),
            (
                "admins".to_string(),
                attribute(strings(), "Administrators of the platform (free-form principals).", AttributeConstraint::Optional),
            ),
            (
                "description".to_string(),
                attribute(AttributeType::String, "Free text.", AttributeConstraint::Optional),
            ),
            (
                "power_state".to_string(),
                attribute(
                    AttributeType::String,
                    "`running` (VMs follow their own `power_state`) or `paused` (every VM of the platform \
                     is suspended). Default `running`.",
                    AttributeConstraint::OptionalComputed,
                ),
            ),
            ("id".to_string(), computed(AttributeType::String, "Stable id assigned by the controller.")),
            (
                "vlan_tag".to_string(),
                computed(AttributeType::Number, "VLAN tag the controller allocated; every VM port of the platform carries it, which isolates the platform at layer 2."),
            ),
            (
                "subnet".to_string(),
                computed(AttributeType::String, "IPv4 subnet (CIDR) the controller allocated; VM addresses come from it."),
            ),
            (
                "gateway".to_string(),
                computed(AttributeType::String, "Gateway address inside the subnet; empty if none."),
            ),
            ("created_at".to_string(), computed(AttributeType::String, "RFC 3339 creation time.")),
            (
                "flow_monitoring".to_string(),
                attribute(
                    AttributeType::Bool,
                    "Export the platform's traffic from its nodes' switches and keep it in the \
                     controller's collector, readable with the `measurelab_flows` data source. Each \
                     node exports as its `flow_export` (or its agent's configuration) says. Default \
                     `false`; changed in place (a member of the platform's tenant may change it).",
                    AttributeConstraint::OptionalComputed,
                ),
            ),
            (
                "control_key".to_string(),
                Attribute {
                    sensitive: true,
                    ..computed(
                        AttributeType::String,
                        "The platform's control key (64 hex digits). The controller gives it to every \
                         program of the platform as `MEASURELAB_CONTROL_KEY` (unless a deployment's `env` \
                         sets its own), so `mcast-mscs` and `mcast-point` authenticate each other; call \
                         the MSCS's API with `Authorization: Bearer <control_key>`. Read once with an \
                         owner or member token (`GET /v1/platforms/{id}/control-key`, recorded as an \
                         event); null for a viewer. See docs/measurement-control.md.",
                    )
                },
            ),
        ]);
        Schema {
            version: 1,
            block: Block {
                description: Description::markdown(
                    "A virtual platform: a slice of the physical platform spanning chosen nodes, with its own \
                     VLAN and subnet, invisible to other platforms. VMs are added with `measurelab_vm`.",
                ),
                attributes,
                ..Default::default()
            },
        }
    }

    fn validate(&self, diags: &mut Diagnostics, state: &PlatformState) {
        state.validate(diags);
    }

    async fn plan_create(&self, diags: &mut Diagnostics, proposed: PlatformState) -> PlatformState {
        proposed.validate(diags);
        let mut state = proposed;
        state.mark_computed_unknown();
        state
    }

    async fn plan_update(
        &self,
        diags: &mut Diagnostics,
        prior: &PlatformState,
        proposed: PlatformState,
    ) -> (PlatformState, Vec<AttributePath>) {
        proposed.validate(diags);
        let mut state = proposed;
        let mut replace = Vec::new();
        if state.name != prior.name {
            replace.push(AttributePath::new("name"));
            state.mark_computed_unknown();
        }
        (state, replace)
    }

    async fn create(
        &self,
        diags: &mut Diagnostics,
        client: &Client,
        planned: PlatformState,
        request: &CreateRequest,
    ) -> Option<PlatformState> {
        planned.validate(diags);
        if !diags.errors.is_empty() {
            return None;
        }
        let body = PlatformCreate {
            tenant: None,
            name: known(&planned.name),
            nodes: set_of(&planned.nodes),
            admins: set_of(&planned.admins),
            description: planned.description.as_ref_option().cloned(),
            request_id: request.request_id(),
            flow_monitoring: planned.flow_monitoring.as_ref_option().copied(),
        };
        let mut platform = request
            .send(diags, || client.create_platform(&body))
            .await?;
        if let Some(PlatformPowerState::Paused) = planned
            .power_state
            .as_ref_option()
            .and_then(|p| PlatformPowerState::parse(p))
        {
            let patch = PlatformPatch {
                power_state: Some(PlatformPowerState::Paused),
                ..Default::default()
            };
            match client.update_platform(&platform.id, &patch).await {
                Ok(updated) => platform = updated,
                Err(err) => {
                    // The platform exists: keep it in the state (tainted by the
                    // error) so the next apply fixes the power state.
                    diagnostics::client_error(diags, &err, Operation::Update(KIND));
                }
            }
        }
        let mut state = planned;
        state.refresh_from(&platform);
        fill_control_key(client, &mut state).await;
        Some(state)
    }

    async fn update(
        &self,
        diags: &mut Diagnostics,
        prior: &PlatformState,
        planned: PlatformState,
    ) -> Option<PlatformState> {
        let client = self.shared.client(diags)?;
        let patch = PlatformPatch {
            nodes: Some(set_of(&planned.nodes)),
            admins: Some(set_of(&planned.admins)),
            description: Some(known(&planned.description)),
            power_state: planned
                .power_state
                .as_ref_option()
                .and_then(|p| PlatformPowerState::parse(p)),
            request_id: None,
            // Left out of the configuration: the controller keeps its value.
            flow_monitoring: planned.flow_monitoring.as_ref_option().copied(),
        };
        match client.update_platform(&known(&prior.id), &patch).await {
            Ok(platform) => {
                let mut state = planned;
                state.refresh_from(&platform);
                Some(state)
            }
            Err(err) => {
                diagnostics::client_error(diags, &err, Operation::Update(KIND));
                None
            }
        }
    }

    fn id(state: &PlatformState) -> &Value<String> {
        &state.id
    }

    fn read_key(state: &PlatformState) -> String {
        id_or_name(&state.id, &state.name)
    }

    async fn get(client: &Client, key: &str) -> Result<Platform, ClientError> {
        client.get_platform(key).await
    }

    async fn delete(client: &Client, id: &str) -> Result<(), ClientError> {
        client.delete_platform(id).await.map(drop)
    }

    async fn refresh(&self, client: &Client, state: &mut PlatformState, platform: &Platform) {
        state.refresh_from(platform);
        fill_control_key(client, state).await;
    }
}

/// Reads the platform's control key into `state` unless it already holds it.
/// The key never changes for a platform, so it is read once (each read is an
/// event at the controller), not on every refresh. A token that may not read
/// it (a viewer) leaves it null rather than failing the platform.
async fn fill_control_key(client: &Client, state: &mut PlatformState) {
    if state.control_key.is_value() {
        return;
    }
    state.control_key = match client.platform_control_key(&known(&state.id)).await {
        Ok(key) => Value::Value(key.control_key),
        Err(_) => Value::Null,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_nodes_and_bad_power_point_at_their_attributes() {
        let mut diags = Diagnostics::default();
        let state = PlatformState {
            nodes: Value::Value(BTreeSet::new()),
            power_state: Value::Value("off".into()),
            ..Default::default()
        };
        state.validate(&mut diags);
        let paths: Vec<_> = diags.errors.iter().map(|d| d.attribute.clone()).collect();
        assert_eq!(
            paths,
            vec![
                AttributePath::new("nodes"),
                AttributePath::new("power_state")
            ]
        );
    }
}
