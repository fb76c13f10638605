//! `measurelab_vms`: the VMs, optionally of one platform and/or on one node
//! (filtered by the controller).

use std::collections::HashMap;

use async_trait::async_trait;
use measurelab_api::client::{Client, ClientError};
use measurelab_api::http::Vm;
use serde::{Deserialize, Serialize};
use tf_provider::schema::Attribute;
use tf_provider::value::Value;

use super::listing::{list_attributes, Listing, ListingDataSource};
use super::views::{vm_fields, VmView};

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

/// The data source implementation.
pub type VmsDataSource = ListingDataSource<VmListing>;

/// How `measurelab_vms` asks for and orders its VMs.
pub struct VmListing;

#[async_trait]
impl Listing for VmListing {
    type State = VmsState;
    type Object = Vm;

    const KINDS: &'static str = "VMs";
    const DESCRIPTION: &'static str =
        "Lists the VMs of the virtual platforms, optionally only those of one platform \
         and/or on one node.";

    fn attributes() -> HashMap<String, Attribute> {
        list_attributes(
            &[
                (
                    "platform",
                    "Only VMs of this platform (by name). Default: every platform.",
                ),
                (
                    "node",
                    "Only VMs on this node (by name). Default: every node.",
                ),
            ],
            (
                "vms",
                &vm_fields(),
                "The matching VMs, ordered by platform, then name. Each has the attributes of \
                 the `measurelab_vm` data source.",
            ),
            ("ids", "Ids of the matching VMs, in the same order."),
        )
    }

    /// The controller applies both filters.
    async fn list(client: &Client, config: &VmsState) -> Result<Vec<Vm>, ClientError> {
        let query = list_query(
            config.platform.as_ref_option().map(String::as_str),
            config.node.as_ref_option().map(String::as_str),
        );
        client.list_vms(&query).await
    }

    fn fill(config: VmsState, vms: &[Vm]) -> VmsState {
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
        state
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
