//! `measurelab_vms`: the VMs, optionally of one platform and/or on one node
//! (filtered by the controller).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tf_provider::map;
use tf_provider::schema::{
    Attribute, AttributeConstraint, AttributeType, Block, Description, Schema,
};
use tf_provider::value::{Value, ValueEmpty};
use tf_provider::{DataSource, Diagnostics};

use super::views::{object_type, vm_fields, VmView};
use crate::diagnostics::{self, Operation};
use crate::node_model::computed;
use crate::shared::Shared;

/// Configuration and result of the data source.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VmsState {
    /// Only VMs of this platform.
    pub platform: Value<String>,
    /// Only VMs on this node.
    pub node: Value<String>,
    /// Matching VMs, ordered by platform, then name.
    pub vms: Value<Vec<VmView>>,
    /// Their ids, in the same order.
    pub ids: Value<Vec<String>>,
}

/// The data source implementation.
pub struct VmsDataSource {
    shared: Shared,
}

impl VmsDataSource {
    /// A data source that uses the provider's client.
    pub fn new(shared: Shared) -> Self {
        VmsDataSource { shared }
    }
}

/// The query string of `GET /v1/vms` for the given filters (form-encoded, no `?`).
pub fn list_query(platform: Option<&str>, node: Option<&str>) -> String {
    // The base is never sent; `Url` only lends its form encoder.
    let Ok(mut url) = reqwest::Url::parse("http://filters.invalid/") else {
        return String::new();
    };
    let pairs = [("platform", platform), ("node", node)];
    url.query_pairs_mut().extend_pairs(
        pairs
            .iter()
            .filter_map(|(key, value)| value.map(|value| (*key, value))),
    );
    url.query().unwrap_or_default().to_string()
}

#[async_trait]
impl DataSource for VmsDataSource {
    type State<'a> = VmsState;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        let filter = |doc: &str| Attribute {
            attr_type: AttributeType::String,
            description: Description::markdown(doc),
            constraint: AttributeConstraint::Optional,
            ..Default::default()
        };
        Some(Schema {
            version: 1,
            block: Block {
                description: Description::markdown(
                    "Lists the VMs of the virtual platforms, optionally only those of one platform \
                     and/or on one node.",
                ),
                attributes: map! {
                    "platform" => filter("Only VMs of this platform (by name). Default: every platform."),
                    "node" => filter("Only VMs on this node (by name). Default: every node."),
                    "vms" => computed(
                        AttributeType::List(Box::new(object_type(&vm_fields()))),
                        "The matching VMs, ordered by platform, then name. Each has the attributes of \
                         the `measurelab_vm` data source.",
                    ),
                    "ids" => computed(
                        AttributeType::List(Box::new(AttributeType::String)),
                        "Ids of the matching VMs, in the same order.",
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
        let query = list_query(
            config.platform.as_ref_option().map(String::as_str),
            config.node.as_ref_option().map(String::as_str),
        );
        let vms = match client.list_vms(&query).await {
            Ok(vms) => vms,
            Err(err) => {
                diagnostics::client_error(diags, &err, Operation::Read("VMs"));
                return None;
            }
        };
        let mut selected: Vec<VmView> = vms.iter().map(VmView::from).collect();
        selected.sort_by(|a, b| {
            (a.platform.as_ref_option(), a.name.as_ref_option())
                .cmp(&(b.platform.as_ref_option(), b.name.as_ref_option()))
        });
        let mut state = config;
        state.ids = Value::Value(
            selected
                .iter()
                .filter_map(|vm| vm.id.as_ref_option().cloned())
                .collect(),
        );
        state.vms = Value::Value(selected);
        Some(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names_only_the_given_filters_and_encodes_them() {
        assert_eq!(list_query(None, None), "");
        assert_eq!(list_query(Some("slice"), None), "platform=slice");
        assert_eq!(list_query(None, Some("n1")), "node=n1");
        assert_eq!(
            list_query(Some("a b"), Some("n&1")),
            "platform=a+b&node=n%261"
        );
    }
}
