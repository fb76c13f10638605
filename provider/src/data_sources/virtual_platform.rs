//! `measurelab_virtual_platform`: one virtual platform, by name or id.

use std::collections::HashMap;

use async_trait::async_trait;
use measurelab_api::client::{Client, ClientError};
use measurelab_api::http::Platform;
use tf_provider::schema::{Attribute, AttributeConstraint};

use super::lookup::{configured, found, Lookup, LookupDataSource};
use super::views::{lookup_attributes, platform_fields, PlatformView};

/// The data source implementation.
pub type VirtualPlatformDataSource = LookupDataSource<PlatformLookup>;

/// How `measurelab_virtual_platform` finds and shows its platform.
pub struct PlatformLookup;

#[async_trait]
impl Lookup for PlatformLookup {
    type State = PlatformView;
    type Object = Platform;

    const KIND: &'static str = "virtual platform";
    const DESCRIPTION: &'static str =
        "Reads one virtual platform (slice) by name or id: its member nodes, VLAN tag and \
         subnet. Fails if there is no such platform.";

    fn attributes() -> HashMap<String, Attribute> {
        lookup_attributes(
            &platform_fields(),
            &[(
                "name",
                AttributeConstraint::Required,
                "Name (or id) of the platform. Read back as the platform's name.",
            )],
        )
    }

    async fn find(client: &Client, config: &PlatformView) -> Result<Option<Platform>, ClientError> {
        found(client.get_platform(&configured(&config.name)).await)
    }

    fn view(platform: &Platform) -> PlatformView {
        PlatformView::from(platform)
    }

    fn not_found(config: &PlatformView) -> String {
        let name = configured(&config.name);
        format!(
            "The controller has no virtual platform named (or with id) {name:?}.\n\nWhat to \
             do: check the name against the `measurelab_virtual_platforms` data source or \
             `GET /v1/platforms`."
        )
    }
}
