//! `measurelab_nodes`: the registered nodes, filtered by labels and status.

use std::collections::BTreeMap;

use async_trait::async_trait;
use measurelab_api::http::Node;
use serde::{Deserialize, Serialize};
use tf_provider::map;
use tf_provider::schema::{
    Attribute, AttributeConstraint, AttributeType, Block, Description, Schema,
};
use tf_provider::value::{Value, ValueEmpty};
use tf_provider::{AttributePath, DataSource, Diagnostics};

use crate::diagnostics::{self, Operation};
use crate::node_model::{self, NodeValue};
use crate::shared::Shared;

/// Accepted values of the `status` filter.
const STATUSES: [&str; 3] = ["online", "offline", "revoked"];

/// Configuration and result of the data source.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodesState {
    /// Only nodes carrying all these labels.
    pub labels: Value<BTreeMap<String, Value<String>>>,
    /// Only nodes with this status.
    pub status: Value<String>,
    /// Matching nodes, ordered by name.
    pub nodes: Value<Vec<NodeValue>>,
    /// Names of the matching nodes, ordered.
    pub names: Value<Vec<String>>,
}

/// The data source implementation.
pub struct NodesDataSource {
    shared: Shared,
}

impl NodesDataSource {
    /// A data source that uses the provider's client.
    pub fn new(shared: Shared) -> Self {
        NodesDataSource { shared }
    }
}

fn check_status(diags: &mut Diagnostics, status: &Value<String>) {
    if let Value::Value(status) = status {
        if !STATUSES.contains(&status.as_str()) {
            diagnostics::invalid_value(
                diags,
                AttributePath::new("status"),
                "Invalid status filter",
                format!("{status:?} is not a node status; use \"online\", \"offline\" or \"revoked\", or leave `status` out."),
            );
        }
    }
}

/// Whether `node` passes both filters.
pub fn matches(node: &Node, labels: &BTreeMap<String, String>, status: Option<&str>) -> bool {
    let status_ok = status.is_none_or(|wanted| node_model::status_text(node.status) == wanted);
    let labels_ok = labels.iter().all(|(k, v)| node.labels.get(k) == Some(v));
    status_ok && labels_ok
}

#[async_trait]
impl DataSource for NodesDataSource {
    type State<'a> = NodesState;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        Some(Schema {
            version: 1,
            block: Block {
                description: Description::markdown(
                    "Lists the measurement nodes registered with the controller, optionally filtered \
                     by labels and status.",
                ),
                attributes: map! {
                    "labels" => Attribute {
                        attr_type: AttributeType::Map(Box::new(AttributeType::String)),
                        description: Description::markdown(
                            "Only nodes that carry every one of these labels with exactly these values.",
                        ),
                        constraint: AttributeConstraint::Optional,
                        ..Default::default()
                    },
                    "status" => Attribute {
                        attr_type: AttributeType::String,
                        description: Description::markdown(
                            "Only nodes with this status: `online`, `offline` or `revoked`. Default: any status.",
                        ),
                        constraint: AttributeConstraint::Optional,
                        ..Default::default()
                    },
                    "nodes" => node_model::computed(
                        AttributeType::List(Box::new(node_model::node_type())),
                        "The matching nodes, ordered by name. Each has `id`, `name`, `status`, \
                         `last_heartbeat`, `registered_at`, `agent_version`, `management_address`, \
                         `labels`, `reported_labels`, `capabilities` and `resources`, as in the \
                         `measurelab_node` data source. `labels` filters match the operator's \
                         labels only, never what an agent reported.",
                    ),
                    "names" => node_model::computed(
                        AttributeType::List(Box::new(AttributeType::String)),
                        "Names of the matching nodes, ordered.",
                    ),
                },
                ..Default::default()
            },
        })
    }

    async fn validate<'a>(&self, diags: &mut Diagnostics, config: Self::State<'a>) -> Option<()> {
        check_status(diags, &config.status);
        crate::labels::validate(diags, "labels", &config.labels);
        Some(())
    }

    async fn read<'a>(
        &self,
        diags: &mut Diagnostics,
        config: Self::State<'a>,
        _provider_meta_state: Self::ProviderMetaState<'a>,
    ) -> Option<Self::State<'a>> {
        check_status(diags, &config.status);
        if !diags.errors.is_empty() {
            return None;
        }
        let client = self.shared.client(diags)?;
        let nodes = match client.list_nodes().await {
            Ok(nodes) => nodes,
            Err(err) => {
                diagnostics::client_error(diags, &err, Operation::ListNodes);
                return None;
            }
        };
        let wanted_labels = crate::labels::known(&config.labels);
        let wanted_status = config.status.as_ref_option().map(String::as_str);
        let mut selected: Vec<NodeValue> = nodes
            .iter()
            .filter(|node| matches(node, &wanted_labels, wanted_status))
            .map(NodeValue::from)
            .collect();
        selected.sort_by(|a, b| a.name.cmp(&b.name));
        let mut state = config;
        state.names = Value::Value(selected.iter().map(|n| n.name.clone()).collect());
        state.nodes = Value::Value(selected);
        Some(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use measurelab_api::http::{Capabilities, NodeStatus, Resources};

    fn node(status: NodeStatus, labels: &[(&str, &str)]) -> Node {
        Node {
            id: "id".into(),
            name: "n".into(),
            status,
            last_heartbeat: None,
            registered_at: String::new(),
            agent_version: String::new(),
            management_address: String::new(),
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
    fn filters_by_every_label_and_status() {
        let wanted = BTreeMap::from([("role".to_string(), "probe".to_string())]);
        assert!(matches(
            &node(NodeStatus::Online, &[("role", "probe"), ("x", "y")]),
            &wanted,
            Some("online")
        ));
        assert!(!matches(
            &node(NodeStatus::Offline, &[("role", "probe")]),
            &wanted,
            Some("online")
        ));
        assert!(!matches(
            &node(NodeStatus::Online, &[("role", "mscs")]),
            &wanted,
            None
        ));
        assert!(matches(
            &node(NodeStatus::Offline, &[]),
            &BTreeMap::new(),
            None
        ));
    }

    #[test]
    fn reported_labels_never_select_a_node() {
        let wanted = BTreeMap::from([("role".to_string(), "probe".to_string())]);
        let mut claims = node(NodeStatus::Online, &[]);
        claims.reported_labels = wanted.clone();
        assert!(!matches(&claims, &wanted, None));
    }

    #[test]
    fn unknown_status_is_reported_on_the_attribute() {
        let mut diags = Diagnostics::default();
        check_status(&mut diags, &Value::Value("up".to_string()));
        assert_eq!(diags.errors[0].attribute, AttributePath::new("status"));
    }
}
