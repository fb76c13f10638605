//! `measurelab_virtual_platforms`: the virtual platforms, optionally only
//! those that span a given node.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tf_provider::map;
use tf_provider::schema::{
    Attribute, AttributeConstraint, AttributeType, Block, Description, Schema,
};
use tf_provider::value::{Value, ValueEmpty};
use tf_provider::{DataSource, Diagnostics};

use super::views::{object_type, platform_fields, PlatformView};
use crate::diagnostics::{self, Operation};
use crate::node_model::computed;
use crate::shared::Shared;

/// Configuration and result of the data source.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VirtualPlatformsState {
    /// Only platforms that have this node as a member.
    pub node: Value<String>,
    /// Matching platforms, ordered by name.
    pub platforms: Value<Vec<PlatformView>>,
    /// Their names.
    pub names: Value<Vec<String>>,
}

/// The data source implementation.
pub struct VirtualPlatformsDataSource {
    shared: Shared,
}

impl VirtualPlatformsDataSource {
    /// A data source that uses the provider's client.
    pub fn new(shared: Shared) -> Self {
        VirtualPlatformsDataSource { shared }
    }
}

/// Whether `platform` passes the `node` filter.
fn spans(platform: &PlatformView, node: Option<&String>) -> bool {
    node.is_none_or(|wanted| {
        platform
            .nodes
            .as_ref_option()
            .is_some_and(|nodes| nodes.contains(wanted))
    })
}

#[async_trait]
impl DataSource for VirtualPlatformsDataSource {
    type State<'a> = VirtualPlatformsState;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        Some(Schema {
            version: 1,
            block: Block {
                description: Description::markdown(
                    "Lists the virtual platforms (slices), optionally only those that span a given node.",
                ),
                attributes: map! {
                    "node" => Attribute {
                        attr_type: AttributeType::String,
                        description: Description::markdown(
                            "Only platforms that have this node (by name) as a member. Default: every platform.",
                        ),
                        constraint: AttributeConstraint::Optional,
                        ..Default::default()
                    },
                    "platforms" => computed(
                        AttributeType::List(Box::new(object_type(&platform_fields()))),
                        "The matching platforms, ordered by name. Each has the attributes of the \
                         `measurelab_virtual_platform` data source.",
                    ),
                    "names" => computed(
                        AttributeType::List(Box::new(AttributeType::String)),
                        "Names of the matching platforms, ordered.",
                    ),
                },
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
        let platforms = match client.list_platforms().await {
            Ok(platforms) => platforms,
            Err(err) => {
                diagnostics::client_error(diags, &err, Operation::Read("virtual platforms"));
                return None;
            }
        };
        let node = config.node.as_ref_option();
        let mut selected: Vec<PlatformView> = platforms
            .iter()
            .map(PlatformView::from)
            .filter(|p| spans(p, node))
            .collect();
        selected.sort_by(|a, b| a.name.as_ref_option().cmp(&b.name.as_ref_option()));
        let mut state = config;
        state.names = Value::Value(
            selected
                .iter()
                .filter_map(|p| p.name.as_ref_option().cloned())
                .collect(),
        );
        state.platforms = Value::Value(selected);
        Some(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_filter_keeps_only_member_platforms() {
        let platform = PlatformView {
            nodes: Value::Value(vec!["n1".into(), "n2".into()]),
            ..Default::default()
        };
        assert!(spans(&platform, None));
        assert!(spans(&platform, Some(&"n2".to_string())));
        assert!(!spans(&platform, Some(&"n3".to_string())));
    }
}
