//! `measurelab_vm`: one VM, by name (within a platform) or id.

use std::collections::HashMap;

use async_trait::async_trait;
use measurelab_api::client::{Client, ClientError};
use measurelab_api::http::Vm;
use tf_provider::schema::{Attribute, AttributeConstraint};

use super::lookup::{configured, found, Lookup, LookupDataSource};
use super::views::{lookup_attributes, vm_fields, VmView};
use super::vms::list_query;

/// The data source implementation.
pub type VmDataSource = LookupDataSource<VmLookup>;

/// How `measurelab_vm` finds and shows its VM.
pub struct VmLookup;

#[async_trait]
impl Lookup for VmLookup {
    type State = VmView;
    type Object = Vm;

    const KIND: &'static str = "VM";
    const DESCRIPTION: &'static str =
        "Reads one VM of a virtual platform: its node, address, MAC, state and conditions. \
         Fails if there is no such VM.";

    fn attributes() -> HashMap<String, Attribute> {
        lookup_attributes(
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
        )
    }

    /// The VM named `name` in `platform`, or (no platform) the VM whose id or
    /// cross-platform unique name is `name`.
    async fn find(client: &Client, config: &VmView) -> Result<Option<Vm>, ClientError> {
        let name = configured(&config.name);
        match config.platform.as_ref_option() {
            Some(platform) => Ok(client
                .list_vms(&list_query(Some(platform), None))
                .await?
                .into_iter()
                .find(|vm| vm.name == name)),
            None => found(client.get_vm(&name).await),
        }
    }

    fn view(vm: &Vm) -> VmView {
        VmView::from(vm)
    }

    fn not_found(config: &VmView) -> String {
        let name = configured(&config.name);
        let place = config.platform.as_ref_option().map_or_else(
            || "(by id or unique name)".to_string(),
            |p| format!("in platform {p:?}"),
        );
        format!(
            "The controller has no VM {name:?} {place}.\n\nWhat to do: check the name \
             against the `measurelab_vms` data source or `GET /v1/vms`; a name that exists \
             in several platforms needs `platform`."
        )
    }
}
