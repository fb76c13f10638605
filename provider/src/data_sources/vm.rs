//! `measurelab_vm`: one VM, by name (within a platform) or id.

use async_trait::async_trait;
use measurelab_api::client::{Client, ClientError};
use measurelab_api::http::Vm;
use tf_provider::schema::{AttributeConstraint, Block, Description, Schema};
use tf_provider::value::ValueEmpty;
use tf_provider::{AttributePath, DataSource, Diagnostics};

use super::views::{lookup_attributes, vm_fields, VmView};
use super::vms::list_query;
use crate::diagnostics::{self, Operation};
use crate::shared::Shared;

/// The data source implementation.
pub struct VmDataSource {
    shared: Shared,
}

impl VmDataSource {
    /// A data source that uses the provider's client.
    pub fn new(shared: Shared) -> Self {
        VmDataSource { shared }
    }
}

/// The VM named `name` in `platform`, or (no platform) the VM whose id or
/// cross-platform unique name is `name`. `Ok(None)`: no such VM.
async fn find_vm(
    client: &Client,
    name: &str,
    platform: Option<&str>,
) -> Result<Option<Vm>, ClientError> {
    match platform {
        Some(platform) => Ok(client
            .list_vms(&list_query(Some(platform), None))
            .await?
            .into_iter()
            .find(|vm| vm.name == name)),
        None => match client.get_vm(name).await {
            Ok(vm) => Ok(Some(vm)),
            Err(err) if err.is_not_found() => Ok(None),
            Err(err) => Err(err),
        },
    }
}

#[async_trait]
impl DataSource for VmDataSource {
    type State<'a> = VmView;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        Some(Schema {
            version: 1,
            block: Block {
                description: Description::markdown(
                    "Reads one VM of a virtual platform: its node, address, MAC, state and conditions. \
                     Fails if there is no such VM.",
                ),
                attributes: lookup_attributes(
                    &vm_fields(),
                    &[
                        (
                            "name",
                            AttributeConstraint::Required,
                            "Name of the VM within `platform`; without `platform`, the VM's id or a name \
                             that is unique across platforms.",
                        ),
                        (
                            "platform",
                            AttributeConstraint::OptionalComputed,
                            "Name of the VM's virtual platform. Give it when VM names repeat across \
                             platforms; otherwise it is read back.",
                        ),
                    ],
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
        let platform = config.platform.as_ref_option().map(String::as_str);
        match find_vm(&client, &name, platform).await {
            Ok(Some(vm)) => Some(VmView::from(&vm)),
            Ok(None) => {
                let place = platform.map_or_else(
                    || "(by id or unique name)".to_string(),
                    |p| format!("in platform {p:?}"),
                );
                diagnostics::invalid_value(
                    diags,
                    AttributePath::new("name"),
                    "No such VM",
                    format!(
                        "The controller has no VM {name:?} {place}.\n\nWhat to do: check the name \
                         against the `measurelab_vms` data source or `GET /v1/vms`; a name that exists \
                         in several platforms needs `platform`."
                    ),
                );
                None
            }
            Err(err) => {
                diagnostics::client_error(diags, &err, Operation::Read("VM"));
                None
            }
        }
    }
}
