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
use measurelab_api::client::{Client, ClientError};
use measurelab_api::http::{Node, NodePatch, NodeStatus};
use serde::{Deserialize, Serialize};
use tf_provider::schema::{
    Attribute, AttributeConstraint, AttributeType, Block, Description, NestedBlock, Schema,
};
use tf_provider::value::{self, Value};
use tf_provider::{AttributePath, Diagnostics};
use tokio::time::Instant;

use super::adapter::{holds_shared, id_or_name, known, CreateRequest, ManagedResource};
use super::flow_export::{self, FlowExportBlock};
use crate::access::Role;
use crate::diagnostics::{self, Operation};
use crate::labels;
use crate::node_model::{self, CapabilitiesValue, ResourcesValue};
use crate::number::Number;
use crate::shared::Shared;
use crate::timeouts::{self, Timeouts};

/// Largest overcommit ratio the controller accepts.
const MAX_OVERCOMMIT: f64 = 64.0;
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
    /// Labels the agent reported (never used for selection).
    pub reported_labels: Value<BTreeMap<String, String>>,
    /// Capabilities.
    pub capabilities: Value<CapabilitiesValue>,
    /// Resource use.
    pub resources: Value<ResourcesValue>,
    /// vCPU overcommit ratio (absent from states written before it existed).
    #[serde(default)]
    pub cpu_overcommit: Value<Number>,
    /// Memory overcommit ratio.
    #[serde(default)]
    pub memory_overcommit: Value<Number>,
    /// The `flow_export` block; null: the operator's setting is not managed.
    #[serde(default, with = "value::serde_as_vec")]
    pub flow_export: Value<FlowExportBlock>,
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
        self.reported_labels = Value::Value(node.reported_labels.clone());
        self.capabilities = Value::Value((&node.capabilities).into());
        self.resources = Value::Value((&node.resources).into());
        self.cpu_overcommit = Value::Value(node.cpu_overcommit.into());
        self.memory_overcommit = Value::Value(node.memory_overcommit.into());
        // Like labels: followed once managed, left null while the
        // configuration has no block (so another setting is not a diff).
        if self.flow_export.is_value() {
            self.flow_export = node.flow_export.as_ref().map_or(Value::Null, |export| {
                Value::Value(FlowExportBlock::from_api(export))
            });
        }
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
        self.reported_labels = Value::Unknown;
        self.capabilities = Value::Unknown;
        self.resources = Value::Unknown;
        // Ratios the configuration leaves out come from the controller.
        for ratio in [&mut self.cpu_overcommit, &mut self.memory_overcommit] {
            if !ratio.is_value() {
                *ratio = Value::Unknown;
            }
        }
    }

    /// Planned values of the `flow_export` block's unset attributes.
    fn fill_flow_export_defaults(&mut self) {
        if let Value::Value(block) = &self.flow_export {
            self.flow_export = Value::Value(block.clone().with_defaults());
        }
    }

    /// The PATCH body for this state: its labels, the ratios it sets and its
    /// flow export. A block removed since `prior` removes the operator's
    /// setting; a block never configured leaves it alone.
    fn patch(&self, prior: Option<&NodeState>) -> NodePatch {
        let flow_export = match &self.flow_export {
            Value::Value(block) => block.to_api().map(Some),
            _ if prior.is_some_and(|p| p.flow_export.is_value()) => Some(None),
            _ => None,
        };
        NodePatch {
            labels: labels::known(&self.labels),
            flow_export,
            cpu_overcommit: ratio(&self.cpu_overcommit),
            memory_overcommit: ratio(&self.memory_overcommit),
        }
    }

    /// Timeouts of this state, with the null group read as "all defaults".
    fn timeouts(&self) -> Timeouts {
        self.timeouts.as_ref_option().cloned().unwrap_or_default()
    }
}

/// The controller's registered nodes, adopted as a Terraform resource.
pub struct Nodes {
    shared: Shared,
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
    if let Value::Value(block) = &state.flow_export {
        block.validate(diags);
    }
    for (name, value) in [
        ("cpu_overcommit", &state.cpu_overcommit),
        ("memory_overcommit", &state.memory_overcommit),
    ] {
        if let Value::Value(number) = value {
            let valid = number
                .as_f64()
                .is_some_and(|r| r.is_finite() && (1.0..=MAX_OVERCOMMIT).contains(&r));
            if !valid {
                diagnostics::invalid_value(
                    diags,
                    AttributePath::new(name),
                    "Invalid overcommit ratio",
                    format!(
                        "`{name}` is {number:?}; it must be between 1.0 (no overcommit) and \
                         {MAX_OVERCOMMIT:.1}.\n\nWhat to do: set a ratio in that range or leave \
                         `{name}` out to keep the node's current one."
                    ),
                );
            }
        }
    }
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

impl Nodes {
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
impl ManagedResource for Nodes {
    type State = NodeState;
    type Object = Node;

    const KIND: &'static str = "node";
    // Adopting or releasing a node writes its placement labels: operator only.
    const ROLE: Role = Role::Operator;
    const READ: Operation = Operation::ReadNode;
    const DELETE: Operation = Operation::ReleaseNode;

    holds_shared!();

    fn schema(&self) -> Schema {
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
        for (name, what, default) in [
            ("cpu_overcommit", "vCPUs", "16.0"),
            ("memory_overcommit", "memory", "1.0"),
        ] {
            attributes.insert(
                name.to_string(),
                Attribute {
                    attr_type: AttributeType::Number,
                    description: Description::markdown(format!(
                        "Overcommit ratio of {what}: the VMs placed on the node may together have up \
                         to the node's reported capacity times this ratio. 1.0 (no overcommit) to \
                         {MAX_OVERCOMMIT:.1}; controller default {default}. Unset: the node keeps its \
                         current ratio. Changed in place; destroying the resource leaves the ratio as it is."
                    )),
                    constraint: AttributeConstraint::OptionalComputed,
                    ..Default::default()
                },
            );
        }
        let (timeouts_name, timeouts_block) =
            timeouts::block("the node to register and report `online`");
        Schema {
            version: 1,
            block: Block {
                description: Description::markdown(
                    "Adopts a measurement node that registered itself with the controller and manages \
                     its labels. Create waits until the node is online; destroy releases the node \
                     (clears its labels) and leaves the physical node running and registered.",
                ),
                attributes,
                blocks: [
                    (timeouts_name, timeouts_block),
                    (
                        "flow_export".to_string(),
                        NestedBlock::Optional(flow_export::block()),
                    ),
                ]
                .into_iter()
                .collect(),
                ..Default::default()
            },
        }
    }

    fn validate(&self, diags: &mut Diagnostics, state: &NodeState) {
        validate_state(diags, state);
    }

    async fn plan_create(&self, diags: &mut Diagnostics, proposed: NodeState) -> NodeState {
        validate_state(diags, &proposed);
        let mut state = proposed;
        state.mark_computed_unknown();
        state.fill_flow_export_defaults();
        state
    }

    async fn plan_update(
        &self,
        diags: &mut Diagnostics,
        prior: &NodeState,
        proposed: NodeState,
    ) -> (NodeState, Vec<AttributePath>) {
        validate_state(diags, &proposed);
        let mut replace = Vec::new();
        let mut state = proposed;
        state.fill_flow_export_defaults();
        if state.name != prior.name {
            replace.push(AttributePath::new("name"));
            state.mark_computed_unknown();
        }
        // A label change keeps the refreshed computed values as planned: update
        // returns them unchanged, so volatile values such as `last_heartbeat`
        // never show in a diff and never make the apply inconsistent.
        (state, replace)
    }

    /// Adoption: wait until the node is registered and online, then write
    /// its labels. Nothing is POSTed, so `_request` goes unused.
    async fn create(
        &self,
        diags: &mut Diagnostics,
        client: &Client,
        planned: NodeState,
        _request: &CreateRequest,
    ) -> Option<NodeState> {
        validate_state(diags, &planned);
        if !diags.errors.is_empty() {
            return None;
        }
        let name = known(&planned.name);
        let timeout = planned
            .timeouts()
            .create()
            .unwrap_or(timeouts::DEFAULT_CREATE);
        let node = self.wait_online(diags, client, &name, timeout).await?;
        let wanted = labels::known(&planned.labels);
        let node = match client.patch_node(&node.id, &planned.patch(None)).await {
            Ok(node) => node,
            Err(err) => {
                diagnostics::client_error(diags, &err, Operation::PatchNode);
                return None;
            }
        };
        let mut state = planned;
        state.refresh_from(&node);
        // Keep exactly what was planned for labels (null stays null).
        state.labels = planned_state_labels(&state, &wanted);
        Some(state)
    }

    async fn update(
        &self,
        diags: &mut Diagnostics,
        prior: &NodeState,
        planned: NodeState,
    ) -> Option<NodeState> {
        if planned.labels == prior.labels
            && planned.cpu_overcommit == prior.cpu_overcommit
            && planned.memory_overcommit == prior.memory_overcommit
            && planned.flow_export == prior.flow_export
        {
            return Some(planned);
        }
        let client = self.shared.client(diags)?;
        match client
            .patch_node(&known(&prior.id), &planned.patch(Some(prior)))
            .await
        {
            Ok(node) => {
                let mut state = planned;
                state.cpu_overcommit = Value::Value(node.cpu_overcommit.into());
                state.memory_overcommit = Value::Value(node.memory_overcommit.into());
                if state.flow_export.is_value() {
                    state.flow_export = node.flow_export.as_ref().map_or(Value::Null, |export| {
                        Value::Value(FlowExportBlock::from_api(export))
                    });
                }
                Some(state)
            }
            Err(err) => {
                diagnostics::client_error(diags, &err, Operation::PatchNode);
                None
            }
        }
    }

    fn id(state: &NodeState) -> &Value<String> {
        &state.id
    }

    fn read_key(state: &NodeState) -> String {
        id_or_name(&state.id, &state.name)
    }

    async fn get(client: &Client, key: &str) -> Result<Node, ClientError> {
        client.get_node(key).await
    }

    /// Release the node: clear its labels. The node keeps running and stays
    /// registered; a node already gone has nothing left to release.
    async fn delete(client: &Client, id: &str) -> Result<(), ClientError> {
        client.set_node_labels(id, BTreeMap::new()).await.map(drop)
    }

    async fn refresh(&self, _client: &Client, state: &mut NodeState, node: &Node) {
        state.refresh_from(node);
    }

    fn on_read(diags: &mut Diagnostics, node: &Node) {
        if node.status == NodeStatus::Offline {
            diagnostics::node_offline(diags, &node.name, node.last_heartbeat.as_deref());
        }
    }

    /// An imported node manages the flow export it has, so a configuration
    /// with the same block plans no change.
    fn import_base(node: &Node) -> NodeState {
        NodeState {
            flow_export: node.flow_export.as_ref().map_or(Value::Null, |export| {
                Value::Value(FlowExportBlock::from_api(export))
            }),
            timeouts: Value::Value(Timeouts::default()),
            ..Default::default()
        }
    }

    fn import_not_found(id: &str) -> String {
        format!(
            "The controller has no node named (or with id) {id:?}.\n\nWhat to do: import by \
             the node's name as listed by `GET /v1/nodes` or the `measurelab_nodes` data source."
        )
    }
    // `upgrade` keeps tf-provider's default (an error): schema version 1 is the
    // first release, so there is no older state to upgrade. (tf-provider 0.2.2
    // does not export the `RawValue` type that overriding it would need.)
}

/// A configured ratio; unset (null or unknown) keeps the node's.
fn ratio(value: &Value<Number>) -> Option<f64> {
    value.as_ref_option().and_then(Number::as_f64)
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
    use measurelab_api::http::{Capabilities, FlowExport, FlowProtocol, Resources};

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
            flow_export: None,
            cpu_overcommit: 16.0,
            memory_overcommit: 1.0,
            reported_labels: Default::default(),
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
    fn ratios_are_refreshed_and_sent_only_when_configured() {
        let mut state = NodeState::default();
        state.refresh_from(&node(&[]));
        assert_eq!(state.cpu_overcommit, Value::Value(Number::Unsigned(16)));
        let unset = NodeState {
            cpu_overcommit: Value::Value(Number::Float(2.5)),
            memory_overcommit: Value::Unknown,
            ..Default::default()
        };
        let patch = unset.patch(None);
        assert_eq!(patch.cpu_overcommit, Some(2.5));
        assert_eq!(patch.memory_overcommit, None);
    }

    #[test]
    fn flow_export_is_sent_when_configured_removed_when_dropped_and_else_left_alone() {
        let managed = NodeState {
            flow_export: Value::Value(FlowExportBlock {
                protocol: Value::Value("ipfix".into()),
                sampling: Value::Value(Number::Unsigned(64)),
                ..Default::default()
            }),
            ..Default::default()
        };
        let sent = managed.patch(None).flow_export.unwrap().unwrap();
        assert_eq!(sent.sampling, 64);
        assert_eq!(sent.active_timeout_seconds, 10);
        assert!(sent.enabled);
        let dropped = NodeState::default();
        assert_eq!(dropped.patch(Some(&managed)).flow_export, Some(None));
        assert_eq!(dropped.patch(Some(&dropped)).flow_export, None);
        assert_eq!(dropped.patch(None).flow_export, None);
    }

    #[test]
    fn an_unmanaged_flow_export_stays_null_and_a_managed_one_follows_the_node() {
        let mut exporting = node(&[]);
        exporting.flow_export = Some(FlowExport {
            enabled: false,
            protocol: FlowProtocol::Sflow,
            sampling: 32,
            active_timeout_seconds: 5,
            collector: Some("10.254.0.1:6343".into()),
        });
        let mut unmanaged = NodeState::default();
        unmanaged.refresh_from(&exporting);
        assert_eq!(unmanaged.flow_export, Value::Null);
        let mut managed = NodeState {
            flow_export: Value::Value(FlowExportBlock::default()),
            ..Default::default()
        };
        managed.refresh_from(&exporting);
        let block = managed.flow_export.as_ref_option().unwrap();
        assert_eq!(block.enabled, Value::Value(false));
        assert_eq!(block.protocol, Value::Value("sflow".to_string()));
        managed.refresh_from(&node(&[]));
        assert_eq!(managed.flow_export, Value::Null);
    }

    #[test]
    fn import_manages_the_flow_export_the_node_has() {
        let mut exporting = node(&[]);
        exporting.flow_export = Some(FlowExport {
            enabled: true,
            protocol: FlowProtocol::Ipfix,
            sampling: 64,
            active_timeout_seconds: 30,
            collector: None,
        });
        let block = Nodes::import_base(&exporting).flow_export;
        assert_eq!(
            block.as_ref_option().and_then(FlowExportBlock::to_api),
            exporting.flow_export
        );
        assert_eq!(Nodes::import_base(&node(&[])).flow_export, Value::Null);
    }

    #[test]
    fn a_ratio_below_one_points_at_its_attribute() {
        for (value, errors) in [
            (Number::Float(0.5), 1),
            (Number::Unsigned(65), 1),
            (Number::Decimal("1.25".into()), 0),
        ] {
            let mut diags = Diagnostics::default();
            let state = NodeState {
                name: Value::Value("n".into()),
                memory_overcommit: Value::Value(value.clone()),
                ..Default::default()
            };
            validate_state(&mut diags, &state);
            assert_eq!(diags.errors.len(), errors, "{value:?}");
            if errors == 1 {
                assert_eq!(
                    diags.errors[0].attribute,
                    AttributePath::new("memory_overcommit")
                );
            }
        }
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
