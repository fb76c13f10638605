//! The one implementation of tf-provider's `DataSource` trait for the data
//! sources that list one kind of controller object, optionally filtered
//! (`measurelab_vms`, `measurelab_virtual_platforms`, ...).
//!
//! What differs between them (the filters, how the controller is asked, which
//! objects are kept and in what order) is written in the data source's file as
//! a [`Listing`]. What they share is written here, once: bad filter values
//! stop the read before the controller is asked, a failed list is the
//! client's diagnostic, and the schema has the same layout (optional string
//! filters, the objects as a computed list, their keys as a computed list).

use std::collections::HashMap;
use std::marker::PhantomData;

use async_trait::async_trait;
use measurelab_api::client::{Client, ClientError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tf_provider::schema::{Attribute, AttributeConstraint, AttributeType, Description, Schema};
use tf_provider::value::ValueEmpty;
use tf_provider::{DataSource, Diagnostics};

use super::views::{data_source_schema, object_type, Field};
use crate::diagnostics::{self, Operation};
use crate::node_model::computed;
use crate::shared::Shared;

/// A data source that lists controller objects of one kind.
#[async_trait]
pub trait Listing: Send + Sync + 'static {
    /// Configuration (the filters) and result; field names are attribute names.
    type State: Serialize + DeserializeOwned + Send + Sync;
    /// The controller's view of one object.
    type Object: Send + Sync;

    /// What diagnostics call the objects ("VMs", "measurement tasks").
    const KINDS: &'static str;
    /// Markdown description of the data source.
    const DESCRIPTION: &'static str;

    /// The schema's attributes, usually [`list_attributes`].
    fn attributes() -> HashMap<String, Attribute>;
    /// Report filter values no object can have on their attributes.
    fn validate(_diags: &mut Diagnostics, _config: &Self::State) {}
    /// Ask the controller for the objects (filtered there, where it can).
    async fn list(client: &Client, config: &Self::State) -> Result<Vec<Self::Object>, ClientError>;
    /// The configuration with the matching objects (and their keys) filled in.
    fn fill(config: Self::State, objects: &[Self::Object]) -> Self::State;
}

/// The attributes of a list data source: `filters` (name, description) as
/// optional strings, `list` (name, element fields, description) and `keys`
/// (name, description) as computed lists.
pub fn list_attributes(
    filters: &[(&str, &str)],
    list: (&str, &[Field], &str),
    keys: (&str, &str),
) -> HashMap<String, Attribute> {
    let mut attributes: HashMap<String, Attribute> = filters
        .iter()
        .map(|(name, doc)| {
            let filter = Attribute {
                attr_type: AttributeType::String,
                description: Description::markdown(*doc),
                constraint: AttributeConstraint::Optional,
                ..Default::default()
            };
            (name.to_string(), filter)
        })
        .collect();
    let (list_name, fields, list_doc) = list;
    attributes.insert(
        list_name.to_string(),
        computed(AttributeType::List(Box::new(object_type(fields))), list_doc),
    );
    let (keys_name, keys_doc) = keys;
    attributes.insert(
        keys_name.to_string(),
        computed(
            AttributeType::List(Box::new(AttributeType::String)),
            keys_doc,
        ),
    );
    attributes
}

/// A [`Listing`] as a Terraform data source.
pub struct ListingDataSource<L>(Shared, PhantomData<L>);

impl<L: Listing> ListingDataSource<L> {
    /// A data source that uses the provider's client.
    pub fn new(shared: Shared) -> Self {
        ListingDataSource(shared, PhantomData)
    }
}

#[async_trait]
impl<L: Listing> DataSource for ListingDataSource<L> {
    type State<'a> = L::State;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        Some(data_source_schema(L::DESCRIPTION, L::attributes()))
    }

    async fn validate<'a>(&self, diags: &mut Diagnostics, config: Self::State<'a>) -> Option<()> {
        L::validate(diags, &config);
        Some(())
    }

    async fn read<'a>(
        &self,
        diags: &mut Diagnostics,
        config: Self::State<'a>,
        _provider_meta_state: Self::ProviderMetaState<'a>,
    ) -> Option<Self::State<'a>> {
        L::validate(diags, &config);
        if !diags.errors.is_empty() {
            return None;
        }
        let client = self.0.client(diags)?;
        match L::list(&client, &config).await {
            Ok(objects) => Some(L::fill(config, &objects)),
            Err(err) => {
                diagnostics::client_error(diags, &err, Operation::Read(L::KINDS));
                None
            }
        }
    }
}
