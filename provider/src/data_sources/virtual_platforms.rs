//! `measurelab_virtual_platforms`: the virtual platforms, optionally only
//! those that span a given node.

use std::collections::HashMap;

use async_trait::async_trait;
use measurelab_api::client::{Client, ClientError};
use measurelab_api::http::Platform;
use serde::{Deserialize, Serialize};
use tf_provider::schema::Attribute;
use tf_provider::value::Value;

use super::listing::{list_attributes, Listing, ListingDataSource};
use super::views::{platform_fields, PlatformView};

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

/// Whether `platform` passes the `node` filter.
fn spans(platform: &PlatformView, node: Option<&String>) -> bool {
    node.is_none_or(|wanted| {
        platform
            .nodes
            .as_ref_option()
            .is_some_and(|nodes| nodes.contains(wanted))
    })
}

/// The data source implementation.
pub type VirtualPlatformsDataSource = ListingDataSource<PlatformListing>;

/// How `measurelab_virtual_platforms` asks for and selects its platforms.
pub struct PlatformListing;

#[async_trait]
impl Listing for PlatformListing {
    type State = VirtualPlatformsState;
    type Object = Platform;

    const KINDS: &'static str = "virtual platforms";
    const DESCRIPTION: &'static str =
        "Lists the virtual platforms (slices), optionally only those that span a given node.";

    fn attributes() -> HashMap<String, Attribute> {
        list_attributes(
            &[(
                "node",
                "Only platforms that have this node (by name) as a member. Default: every platform.",
            )],
            (
                "platforms",
                &platform_fields(),
                "The matching platforms, ordered by name. Each has the attributes of the \
                 `measurelab_virtual_platform` data source.",
            ),
            ("names", "Names of the matching platforms, ordered."),
        )
    }

    /// The controller lists every platform: the filter applies in [`Self::fill`].
    async fn list(
        client: &Client,
        _config: &VirtualPlatformsState,
    ) -> Result<Vec<Platform>, ClientError> {
        client.list_platforms().await
    }

    fn fill(config: VirtualPlatformsState, platforms: &[Platform]) -> VirtualPlatformsState {
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
        state
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
