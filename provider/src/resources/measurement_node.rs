//! `measurelab_measurement_node`: adopt a node that registered itself with the
//! controller, and manage its labels.
//!
//! A node cannot be created by Terraform (its agent registers it), so "create"
//! means: wait until a node of that name is registered and online, then write
//! the labels. "Destroy" releases the node by clearing its labels; the node
//! keeps running and stays registered.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use measurelab_api::client::Client;
use measurelab_api::http::{Node, NodeStatus};
use serde::{Deserialize, Serialize};
use tf_provider::schema::{
    Attribute, AttributeConstraint, AttributeType, Block, Description, Schema,
};
use tf_provider::value::{Value, ValueEmpty};
use tf_provider::{AttributePath, Diagnostics, Resource};
use tokio::time::Instant;

use crate::diagnostics::{self, Operation};
use crate::labels;
use crate::node_model::{self, CapabilitiesValue, ResourcesValue};
use crate::provider::Shared;
use crate::timeouts::{self, Timeouts};

/// How often create polls the controller while waiting for the node.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Terraform state of one adopted node. Field names are the attribute names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    /// Node name (the adoption key).
    pub name: Value<String>,
    /// Managed labels.
    pub labels: Value<BTreeMap<String, Value<String>>>,
    /// Controller id.
    pub id: Value<String>,
    /// `online` / `offline`.
    pub status: Value<String>,
    /// Last heartbeat time.
    pub last_heartbeat: Value<String>,
    /// First registration time.
    pub registered_at: Value<String>,
    /// Agent version.
    pub agent_version: Value<String>,
    /// Management address.
    pub management_address: Value<String>,
    /// Capabilities.
    pub capabilities: Value<CapabilitiesValue>,
    /// Resource use.
    pub resources: Value<ResourcesValue>,
    /// The `timeouts` block.
    pub timeouts: Value<Timeouts>,
}

impl NodeState {
    /// Copy everything the controller knows about `node` into the computed
    /// attributes. `labels` follow the controller, except that "no labels" stays
    /// null when the configuration left `labels` out, so that is not a diff.
    fn refresh_from(&mut self, node: &Node) {
        self.name = Value::Value(node.name.clone());
        self.id = Value::Value(node.id.clone());
        self.status = Value::Value(node_model::status_text(node.status).to_string());
        self.last_heartbeat = Value::Value(node.last_heartbeat.clone().unwrap_or_default());
        self.registered_at = Value::Value(node.registered_at.clone());
        self.agent_version = Value::Value(node.agent_version.clone());
        self.management_address = Value::Value(node.management_address.clone());
        self.capabilities = Value::Value((&node.capabilities).into());
        self.resources = Value::Value((&node.resources).into());
        self.labels = if node.labels.is_empty() && !self.labels.is_value() {
            Value::Null
        } else {
            Value::Value(
                node.labels
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::Value(v.clone())))
                    .collect(),
            )
        };
    }

    fn mark_computed_unknown(&mut self) {
        self.id = Value::Unknown;
        self.status = Value::Unknown;
        self.last_heartbeat = Value::Unknown;
        self.registered_at = Value::Unknown;
        self.agent_version = Value::Unknown;
        self.management_address = Value::Unknown;
        self.capabilities = Value::Unknown;
        self.resources = Value::Unknown;
    }

    /// Timeouts of this state, with the null group read as "all defaults".
    fn timeouts(&self) -> Timeouts {
        self.timeouts.as_ref_option().cloned().unwrap_or_default()
    }
}

/// The resource implementation.
pub struct MeasurementNodeResource {
    shared: Shared,
}

impl MeasurementNodeResource {
    /// A resource that uses the provider's client and stop signal.
    pub fn new(shared: Shared) -> Self {
        MeasurementNodeResource { shared }
    }
}

fn validate_state(diags: &mut Diagnostics, state: &NodeState) {
    if let Value::Value(name) = &state.name {
        if name.trim().is_empty() {
            diagnostics::invalid_value(
                diags,
                AttributePath::new("name"),
                "Invalid node name",
                "`name` is empty.\n\nWhat to do: set it to the name the node's agent registers with \
                 (see `GET /v1/nodes` or the `measurelab_nodes` data source)."
                    .to_string(),
            );
        }
    }
    labels::validate(diags, "labels", &state.labels);
    if let Value::Value(timeouts) = &state.timeouts {
        if let Value::Value(text) = &timeouts.create {
            if let Err(err) = timeouts::parse_duration(text) {
                diagnostics::invalid_value(
                    diags,
                    AttributePath::new("timeouts").attribute("create"),
                    "Invalid timeout",
                    format!("{err}."),
                );
            }
        }
    }
}

impl MeasurementNodeResource {
    /// Poll the controller until `name` is registered and online, the timeout
    /// expires, or Terraform is interrupted (then `None`, with a diagnostic).
    /// Writes nothing.
    async fn wait_online(
        &self,
        diags: &mut Diagnostics,
        client: &Client,
        name: &str,
        timeout: Duration,
    ) -> Option<Node> {
        let deadline = Instant::now() + timeout;
        let mut last_seen = "the node is not registered".to_string();
        loop {
            let lookup = tokio::select! {
                result = tokio::time::timeout_at(deadline, client.get_node(name)) => result,
                _ = self.shared.stop.cancelled() => {
                    diagnostics::cancelled(diags, name);
                    return None;
                }
            };
            match lookup {
                Ok(Ok(node)) if node.status == NodeStatus::Online => return Some(node),
                Ok(Ok(node)) => {
                    last_seen = format!(
                        "status {} (last heartbeat {})",
                        node_model::status_text(node.status),
                        node.last_heartbeat.as_deref().unwrap_or("never")
                    );
                }
                Ok(Err(err)) if err.is_not_found() => {
                    last_seen = "the node is not registered".to_string();
                }
                Ok(Err(err)) => {
                    diagnostics::client_error(diags, &err, Operation::WaitNode);
                    return None;
                }
                Err(_elapsed) => {}
            }
            if Instant::now() >= deadline {
                diagnostics::wait_timeout(diags, name, timeout, &last_seen);
                return None;
            }
            tokio::select! {
                _ = tokio::time::sleep_until((Instant::now() + POLL_INTERVAL).min(deadline)) => {}
                _ = self.shared.stop.cancelled() => {
                    diagnostics::cancelled(diags, name);
                    return None;
                }
            }
        }
    }
}

#[async_trait]
impl Resource for MeasurementNodeResource {
    type State<'a> = NodeState;
    type PrivateState<'a> = ValueEmpty;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        let mut attributes = node_model::computed_node_attributes();
        attributes.insert(
            "name".to_string(),
            Attribute {
                attr_type: AttributeType::String,
                description: Description::markdown(
                    "Name the node's agent registered with. The node must already be registered (or \
                     register within `timeouts.create`). Changing it adopts a different node: the old \
                     one is released and the new one adopted (replace).",
                ),
                constraint: AttributeConstraint::Required,
                ..Default::default()
            },
        );
        attributes.insert(
            "labels".to_string(),
            Attribute {
                attr_type: AttributeType::Map(Box::new(AttributeType::String)),
                description: Description::markdown(
                    "Labels of the node, managed authoritatively: labels set on the node by anyone \
                     else are removed on the next apply. Keys: 1-63 characters of letters, digits, \
                     `.`, `_`, `-`, `/`. Values: up to 256 bytes without control characters. At most 64 \
                     labels. Changed in place. Destroying the \
                     resource clears all labels.",
                ),
                constraint: AttributeConstraint::Optional,
                ..Default::default()
            },
        );
        let (timeouts_name, timeouts_block) =
            timeouts::block("the node to register and report `online`");
        Some(Schema {
            version: 1,
            block: Block {
                description: Description::markdown(
                    "Adopts a measurement node that registered itself with the controller and manages \
                     its labels. Create waits until the node is online; destroy releases the node \
                     (clears its labels) and leaves the physical node running and registered.",
                ),
                attributes,
                blocks: [(timeouts_name, timeouts_block)].into_iter().collect(),
                ..Default::default()
            },
        })
    }

    async fn validate<'a>(&self, diags: &mut Diagnostics, config: Self::State<'a>) -> Option<()> {
        validate_state(diags, &config);
        Some(())
    }

    async fn read<'a>(
        &self,
        diags: &mut Diagnostics,
        state: Self::State<'a>,
        private_state: Self::PrivateState<'a>,
        _provider_meta_state: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        let Some(client) = self.shared.client(diags) else {
            return Some((state, private_state));
        };
        let key = state
            .id
            .as_ref_option()
            .or(state.name.as_ref_option())
            .cloned()
            .unwrap_or_default();
        match client.get_node(&key).await {
            Ok(node) => {
                if node.status == NodeStatus::Offline {
                    diagnostics::node_offline(diags, &node.name, node.last_heartbeat.as_deref());
                }
                let mut state = state;
                state.refresh_from(&node);
                Some((state, private_state))
            }
            // Gone from the controller: drop from state so the next plan adopts again.
            Err(err) if err.is_not_found() => None,
            Err(err) => {
                diagnostics::client_error(diags, &err, Operation::ReadNode);
                Some((state, private_state))
            }
        }
    }

    async fn plan_create<'a>(
        &self,
        diags: &mut Diagnostics,
        proposed_state: Self::State<'a>,
        _config_state: Self::State<'a>,
        _provider_meta_state: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        validate_state(diags, &proposed_state);
        let mut state = proposed_state;
        state.mark_computed_unknown();
        Some((state, ValueEmpty::default()))
    }

    async fn plan_update<'a>(
        &self,
        diags: &mut Diagnostics,
        prior_state: Self::State<'a>,
        proposed_state: Self::State<'a>,
        _config_state: Self::State<'a>,
        prior_private_state: Self::PrivateState<'a>,
        _provider_meta_state: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>, Vec<AttributePath>)> {
        validate_state(diags, &proposed_state);
        let mut replace = Vec::new();
        let mut state = proposed_state;
        if state.name != prior_state.name {
            replace.push(AttributePath::new("name"));
            state.mark_computed_unknown();
        }
        // A label change keeps the refreshed computed values as planned: update
        // returns them unchanged, so volatile values such as `last_heartbeat`
        // never show in a diff and never make the apply inconsistent.
        Some((state, prior_private_state, replace))
    }

    async fn plan_destroy<'a>(
        &self,
        _diags: &mut Diagnostics,
        _prior_state: Self::State<'a>,
        prior_private_state: Self::PrivateState<'a>,
        _provider_meta_state: Self::ProviderMetaState<'a>,
    ) -> Option<Self::PrivateState<'a>> {
        Some(prior_private_state)
    }

    async fn create<'a>(
        &self,
        diags: &mut Diagnostics,
        planned_state: Self::State<'a>,
        _config_state: Self::State<'a>,
        planned_private_state: Self::PrivateState<'a>,
        _provider_meta_state: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        validate_state(diags, &planned_state);
        if !diags.errors.is_empty() {
            return None;
        }
        let client = self.shared.client(diags)?;
        let name = planned_state
            .name
            .as_ref_option()
            .cloned()
            .unwrap_or_default();
        let timeout = planned_state
            .timeouts()
            .create()
            .unwrap_or(timeouts::DEFAULT_CREATE);
        let node = self.wait_online(diags, &client, &name, timeout).await?;
        let wanted = labels::known(&planned_state.labels);
        let node = match client.set_node_labels(&node.id, wanted.clone()).await {
            Ok(node) => node,
            Err(err) => {
                diagnostics::client_error(diags, &err, Operation::PatchNode);
                return None;
            }
        };
        let mut state = planned_state;
        state.refresh_from(&node);
        // Keep exactly what was planned for labels (null stays null).
        state.labels = planned_state_labels(&state, &wanted);
        Some((state, planned_private_state))
    }

    async fn update<'a>(
        &self,
        diags: &mut Diagnostics,
        prior_state: Self::State<'a>,
        planned_state: Self::State<'a>,
        _config_state: Self::State<'a>,
        planned_private_state: Self::PrivateState<'a>,
        _provider_meta_state: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        if planned_state.labels == prior_state.labels {
            return Some((planned_state, planned_private_state));
        }
        let client = self.shared.client(diags)?;
        let id = prior_state.id.as_ref_option().cloned().unwrap_or_default();
        let wanted = labels::known(&planned_state.labels);
        match client.set_node_labels(&id, wanted).await {
            Ok(_) => Some((planned_state, planned_private_state)),
            Err(err) => {
                diagnostics::client_error(diags, &err, Operation::PatchNode);
                None
            }
        }
    }

    async fn destroy<'a>(
        &self,
        diags: &mut Diagnostics,
        prior_state: Self::State<'a>,
        _planned_private_state: Self::PrivateState<'a>,
        _provider_meta_state: Self::ProviderMetaState<'a>,
    ) -> Option<()> {
        let client = self.shared.client(diags)?;
        let id = prior_state.id.as_ref_option().cloned().unwrap_or_default();
        // A node already gone has nothing left to release.
        diagnostics::released(
            diags,
            client.set_node_labels(&id, BTreeMap::new()).await,
            Operation::ReleaseNode,
        )
    }

    async fn import<'a>(
        &self,
        diags: &mut Diagnostics,
        id: String,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        let client = self.shared.client(diags)?;
        match client.get_node(&id).await {
            Ok(node) => {
                let mut state = NodeState {
                    timeouts: Value::Value(Timeouts::default()),
                    ..Default::default()
                };
                state.refresh_from(&node);
                Some((state, ValueEmpty::default()))
            }
            Err(err) if err.is_not_found() => {
                diagnostics::invalid_value(
                    diags,
                    AttributePath::root(),
                    "Cannot import: no such node",
                    format!(
                        "The controller has no node named (or with id) {id:?}.\n\nWhat to do: import by \
                         the node's name as listed by `GET /v1/nodes` or the `measurelab_nodes` data source."
                    ),
                );
                None
            }
            Err(err) => {
                diagnostics::client_error(diags, &err, Operation::ReadNode);
                None
            }
        }
    }
    // `upgrade` keeps tf-provider's default (an error): schema version 1 is the
    // first release, so there is no older state to upgrade. (tf-provider 0.2.2
    // does not export the `RawValue` type that overriding it would need.)
}

/// Labels as planned: null when the configuration had none and none were set.
fn planned_state_labels(
    state: &NodeState,
    wanted: &BTreeMap<String, String>,
) -> Value<BTreeMap<String, Value<String>>> {
    if wanted.is_empty() && !state.labels.is_value() {
        Value::Null
    } else {
        Value::Value(
            wanted
                .iter()
                .map(|(k, v)| (k.clone(), Value::Value(v.clone())))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use measurelab_api::http::{Capabilities, Resources};

    fn node(labels: &[(&str, &str)]) -> Node {
        Node {
            id: "n-1".into(),
            name: "lab-n1".into(),
            status: NodeStatus::Online,
            last_heartbeat: Some("2026-01-01T00:00:00Z".into()),
            registered_at: "2026-01-01T00:00:00Z".into(),
            agent_version: "0.1.0".into(),
            management_address: "10.254.0.11".into(),
            capabilities: Capabilities::default(),
            resources: Resources::default(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn refresh_keeps_null_labels_null_when_node_has_none() {
        let mut state = NodeState::default();
        state.refresh_from(&node(&[]));
        assert_eq!(state.labels, Value::Null);
        assert_eq!(state.id, Value::Value("n-1".to_string()));
    }

    #[test]
    fn refresh_reports_labels_set_outside_terraform() {
        let mut state = NodeState::default();
        state.refresh_from(&node(&[("rack", "r9")]));
        let labels = state.labels.as_ref_option().cloned().unwrap_or_default();
        assert_eq!(labels.get("rack"), Some(&Value::Value("r9".to_string())));
    }

    #[test]
    fn bad_timeout_points_at_timeouts_create() {
        let mut diags = Diagnostics::default();
        let state = NodeState {
            name: Value::Value("n".into()),
            timeouts: Value::Value(Timeouts {
                create: Value::Value("5 minutes".into()),
            }),
            ..Default::default()
        };
        validate_state(&mut diags, &state);
        assert_eq!(diags.errors.len(), 1);
        assert_eq!(
            diags.errors[0].attribute,
            AttributePath::new("timeouts").attribute("create")
        );
    }
}
