//! `measurelab_node`: one registered node, by name.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use measurelab_api::client::{Client, ClientError};
use measurelab_api::http::Node;
use serde::{Deserialize, Serialize};
use tf_provider::schema::{Attribute, AttributeConstraint, AttributeType, Description};
use tf_provider::value::Value;

use super::lookup::{configured, found, Lookup, LookupDataSource};
use crate::diagnostics::Operation;
use crate::node_model::{self, CapabilitiesValue, ResourcesValue};

/// Configuration and result of the data source.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeDataState {
    /// Name (or id) to look up.
    pub name: Value<String>,
    /// Controller id.
    pub id: Value<String>,
    /// `online` / `offline`.
    pub status: Value<String>,
    /// Last heartbeat.
    pub last_heartbeat: Value<String>,
    /// First registration.
    pub registered_at: Value<String>,
    /// Agent version.
    pub agent_version: Value<String>,
    /// Management address.
    pub management_address: Value<String>,
    /// Labels.
    pub labels: Value<BTreeMap<String, String>>,
    /// Labels the agent reported.
    pub reported_labels: Value<BTreeMap<String, String>>,
    /// Capabilities.
    pub capabilities: Value<CapabilitiesValue>,
    /// Resource use.
    pub resources: Value<ResourcesValue>,
}

/// The data source implementation.
pub type NodeDataSource = LookupDataSource<NodeLookup>;

/// How `measurelab_node` finds and shows its node.
pub struct NodeLookup;

#[async_trait]
impl Lookup for NodeLookup {
    type State = NodeDataState;
    type Object = Node;

    const KIND: &'static str = "node";
    const READ: Operation = Operation::ReadNode;
    const DESCRIPTION: &'static str =
        "Reads one measurement node registered with the controller, by name. Fails if no \
         node has that name.";

    fn attributes() -> HashMap<String, Attribute> {
        let mut attributes = node_model::computed_node_attributes();
        attributes.insert(
            "name".to_string(),
            Attribute {
                attr_type: AttributeType::String,
                description: Description::markdown("Name of the node, as its agent registered it."),
                constraint: AttributeConstraint::Required,
                ..Default::default()
            },
        );
        attributes.insert(
            "labels".to_string(),
            node_model::computed(
                AttributeType::Map(Box::new(AttributeType::String)),
                "Operator labels of the node: what node selection uses. Set by the operator \
                 (`measurelab_measurement_node`, PATCH /v1/nodes); a new node's first \
                 registration seeds them with its reported labels.",
            ),
        );
        attributes
    }

    async fn find(client: &Client, config: &NodeDataState) -> Result<Option<Node>, ClientError> {
        found(client.get_node(&configured(&config.name)).await)
    }

    fn view(node: &Node) -> NodeDataState {
        NodeDataState {
            name: Value::Value(node.name.clone()),
            id: Value::Value(node.id.clone()),
            status: Value::Value(node_model::status_text(node.status).to_string()),
            last_heartbeat: Value::Value(node.last_heartbeat.clone().unwrap_or_default()),
            registered_at: Value::Value(node.registered_at.clone()),
            agent_version: Value::Value(node.agent_version.clone()),
            management_address: Value::Value(node.management_address.clone()),
            labels: Value::Value(node.labels.clone()),
            reported_labels: Value::Value(node.reported_labels.clone()),
            capabilities: Value::Value((&node.capabilities).into()),
            resources: Value::Value((&node.resources).into()),
        }
    }

    fn not_found(config: &NodeDataState) -> String {
        let name = configured(&config.name);
        format!(
            "The controller has no node named {name:?}.\n\nWhat to do: check the name against \
             the `measurelab_nodes` data source or `GET /v1/nodes`; a node appears once its \
             agent has registered."
        )
    }
}
