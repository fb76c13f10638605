//! `measurelab_virtual_platform`: one virtual platform, by name or id.

use async_trait::async_trait;
use tf_provider::schema::{AttributeConstraint, Block, Description, Schema};
use tf_provider::value::ValueEmpty;
use tf_provider::{AttributePath, DataSource, Diagnostics};

use super::views::{lookup_attributes, platform_fields, PlatformView};
use crate::diagnostics::{self, Operation};
use crate::shared::Shared;

/// The data source implementation.
pub struct VirtualPlatformDataSource {
    shared: Shared,
}

impl VirtualPlatformDataSource {
    /// A data source that uses the provider's client.
    pub fn new(shared: Shared) -> Self {
        VirtualPlatformDataSource { shared }
    }
}

#[async_trait]
impl DataSource for VirtualPlatformDataSource {
    type State<'a> = PlatformView;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        Some(Schema {
            version: 1,
            block: Block {
                description: Description::markdown(
                    "Reads one virtual platform (slice) by name or id: its member nodes, VLAN tag and \
                     subnet. Fails if there is no such platform.",
                ),
                attributes: lookup_attributes(
                    &platform_fields(),
                    &[(
                        "name",
                        AttributeConstraint::Required,
                        "Name (or id) of the platform. Read back as the platform's name.",
                    )],
                ),
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
        match client.get_platform(&name).await {
            Ok(platform) => Some(PlatformView::from(&platform)),
            Err(err) if err.is_not_found() => {
                diagnostics::invalid_value(
                    diags,
                    AttributePath::new("name"),
                    "No such virtual platform",
                    format!(
                        "The controller has no virtual platform named (or with id) {name:?}.\n\nWhat to \
                         do: check the name against the `measurelab_virtual_platforms` data source or \
                         `GET /v1/platforms`."
                    ),
                );
                None
            }
            Err(err) => {
                diagnostics::client_error(diags, &err, Operation::Read("virtual platform"));
                None
            }
        }
    }
}
