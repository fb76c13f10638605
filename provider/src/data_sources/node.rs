//! `measurelab_node`: one registered node, by name.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tf_provider::schema::{
    Attribute, AttributeConstraint, AttributeType, Block, Description, Schema,
};
use tf_provider::value::{Value, ValueEmpty};
use tf_provider::{AttributePath, DataSource, Diagnostics};

use crate::diagnostics::{self, Operation};
use crate::node_model::{self, CapabilitiesValue, ResourcesValue};
use crate::shared::Shared;

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
    /// Capabilities.
    pub capabilities: Value<CapabilitiesValue>,
    /// Resource use.
    pub resources: Value<ResourcesValue>,
}

/// The data source implementation.
pub struct NodeDataSource {
    shared: Shared,
}

impl NodeDataSource {
    /// A data source that uses the provider's client.
    pub fn new(shared: Shared) -> Self {
        NodeDataSource { shared }
    }
}

#[async_trait]
impl DataSource for NodeDataSource {
    type State<'a> = NodeDataState;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
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
                "Labels of the node.",
            ),
        );
        Some(Schema {
            version: 1,
            block: Block {
                description: Description::markdown(
                    "Reads one measurement node registered with the controller, by name. Fails if no \
                     node has that name.",
                ),
                attributes,
                ..Default::default()
            },
        })
    }

    async fn read<'a>(
        &self,
        diags: &mut Diagnostics,
        config: Self::State<'a>,
        _provider_meta_state: Self::ProviderMetaState<'a>,
    ) -> Option<Self::State<'a>> {
        let client = self.shared.client(diags)?;
        let name = config.name.as_ref_option().cloned().unwrap_or_default();
        let node = match client.get_node(&name).await {
            Ok(node) => node,
            Err(err) if err.is_not_found() => {
                diagnostics::invalid_value(
                    diags,
                    AttributePath::new("name"),
                    "No such node",
                    format!(
                        "The controller has no node named {name:?}.\n\nWhat to do: check the name against \
                         the `measurelab_nodes` data source or `GET /v1/nodes`; a node appears once its \
                         agent has registered."
                    ),
                );
                return None;
            }
            Err(err) => {
                diagnostics::client_error(diags, &err, Operation::ReadNode);
                return None;
            }
        };
        Some(NodeDataState {
            name: Value::Value(node.name.clone()),
            id: Value::Value(node.id.clone()),
            status: Value::Value(node_model::status_text(node.status).to_string()),
            last_heartbeat: Value::Value(node.last_heartbeat.clone().unwrap_or_default()),
            registered_at: Value::Value(node.registered_at.clone()),
            agent_version: Value::Value(node.agent_version.clone()),
            management_address: Value::Value(node.management_address.clone()),
            labels: Value::Value(node.labels.clone()),
            capabilities: Value::Value((&node.capabilities).into()),
            resources: Value::Value((&node.resources).into()),
        })
    }
}
