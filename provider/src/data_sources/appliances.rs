//! `measurelab_appliances`: the VM images (appliances) the controller knows,
//! optionally only those that run on a given backend.

use std::collections::HashMap;

use async_trait::async_trait;
use measurelab_api::http::Appliance;
use serde::{Deserialize, Serialize};
use tf_provider::schema::{
    Attribute, AttributeConstraint, AttributeType, Block, Description, Schema,
};
use tf_provider::value::{Value, ValueEmpty};
use tf_provider::{AttributePath, DataSource, Diagnostics};

use crate::diagnostics::{self, Operation};
use crate::node_model::computed;
use crate::number::Number;
use crate::shared::Shared;

const KIND: &str = "appliances";

/// One appliance as Terraform shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApplianceValue {
    /// Stable id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Version text.
    pub version: String,
    /// `x86_64` or `i686`.
    pub arch: String,
    /// Operating system.
    pub os: String,
    /// Kernel path on the nodes.
    pub kernel: String,
    /// Initrd path on the nodes.
    pub initrd: String,
    /// Disk image path on the nodes; empty when none.
    pub disk: String,
    /// Smallest memory.
    pub min_memory_mib: Number,
    /// Backends it runs on.
    pub backends: Vec<String>,
    /// Shipped with the controller.
    pub builtin: bool,
    /// SHA-256 of the kernel the controller stores; empty for a node path.
    pub kernel_sha256: String,
    /// SHA-256 of the stored initrd; empty for a node path.
    pub initrd_sha256: String,
    /// SHA-256 of the stored disk image; empty when none or a node path.
    pub disk_sha256: String,
}

impl From<&Appliance> for ApplianceValue {
    fn from(a: &Appliance) -> Self {
        ApplianceValue {
            id: a.id.clone(),
            name: a.name.clone(),
            version: a.version.clone(),
            arch: a.arch.clone(),
            os: a.os.clone(),
            kernel: a.kernel.clone(),
            initrd: a.initrd.clone(),
            disk: a.disk.clone().unwrap_or_default(),
            min_memory_mib: Number::from(a.min_memory_mib),
            backends: a.backends.clone(),
            builtin: a.builtin,
            kernel_sha256: a.kernel_sha256.clone().unwrap_or_default(),
            initrd_sha256: a.initrd_sha256.clone().unwrap_or_default(),
            disk_sha256: a.disk_sha256.clone().unwrap_or_default(),
        }
    }
}

/// Configuration and result of the data source.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppliancesDataState {
    /// Only appliances that run on this backend.
    pub backend: Value<String>,
    /// The appliances, by name.
    pub appliances: Value<Vec<ApplianceValue>>,
    /// Their names.
    pub names: Value<Vec<String>>,
}

/// The data source implementation.
pub struct AppliancesDataSource {
    shared: Shared,
}

impl AppliancesDataSource {
    /// A data source that uses the provider's client.
    pub fn new(shared: Shared) -> Self {
        AppliancesDataSource { shared }
    }
}

fn check_backend(diags: &mut Diagnostics, backend: &Value<String>) -> bool {
    if let Value::Value(b) = backend {
        if b != "namespace" && b != "libvirt" {
            diagnostics::invalid_value(
                diags,
                AttributePath::new("backend"),
                "Invalid backend",
                format!("{b:?} is not a VM backend; use \"namespace\" or \"libvirt\"."),
            );
            return false;
        }
    }
    true
}

#[async_trait]
impl DataSource for AppliancesDataSource {
    type State<'a> = AppliancesDataState;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        let strings = || AttributeType::List(Box::new(AttributeType::String));
        let appliance = AttributeType::Object(HashMap::from([
            ("id".to_string(), AttributeType::String),
            ("name".to_string(), AttributeType::String),
            ("version".to_string(), AttributeType::String),
            ("arch".to_string(), AttributeType::String),
            ("os".to_string(), AttributeType::String),
            ("kernel".to_string(), AttributeType::String),
            ("initrd".to_string(), AttributeType::String),
            ("disk".to_string(), AttributeType::String),
            ("min_memory_mib".to_string(), AttributeType::Number),
            ("backends".to_string(), strings()),
            ("builtin".to_string(), AttributeType::Bool),
            ("kernel_sha256".to_string(), AttributeType::String),
            ("initrd_sha256".to_string(), AttributeType::String),
            ("disk_sha256".to_string(), AttributeType::String),
        ]));
        Some(Schema {
            version: 1,
            block: Block {
                description: Description::markdown(
                    "Lists the appliances (VM images: kernel, initrd, optional disk) that VMs can use, \
                     including the built-in `measurelab-tiny` and the `namespace` pseudo-appliance.",
                ),
                attributes: HashMap::from([
                    (
                        "backend".to_string(),
                        Attribute {
                            attr_type: AttributeType::String,
                            description: Description::markdown(
                                "Only appliances that run on this backend (`namespace` or `libvirt`).",
                            ),
                            constraint: AttributeConstraint::Optional,
                            ..Default::default()
                        },
                    ),
                    (
                        "appliances".to_string(),
                        computed(
                            AttributeType::List(Box::new(appliance)),
                            "The appliances ordered by name: `id`, `name`, `version`, `arch`, `os`, `kernel`, \
                             `initrd`, `disk` (empty when none), `min_memory_mib`, `backends`, `builtin`, and \
                             `kernel_sha256`, `initrd_sha256`, `disk_sha256`: the digests of files the controller \
                             stores and the nodes verify (empty for files that are paths on the nodes).",
                        ),
                    ),
                    ("names".to_string(), computed(strings(), "Names of the listed appliances.")),
                ]),
                ..Default::default()
            },
        })
    }

    async fn validate<'a>(&self, diags: &mut Diagnostics, config: Self::State<'a>) -> Option<()> {
        check_backend(diags, &config.backend);
        Some(())
    }

    async fn read<'a>(
        &self,
        diags: &mut Diagnostics,
        config: Self::State<'a>,
        _provider_meta_state: Self::ProviderMetaState<'a>,
    ) -> Option<Self::State<'a>> {
        if !check_backend(diags, &config.backend) {
            return None;
        }
        let client = self.shared.client(diags)?;
        let appliances = match client.list_appliances().await {
            Ok(list) => list,
            Err(err) => {
                diagnostics::client_error(diags, &err, Operation::Read(KIND));
                return None;
            }
        };
        let wanted = config.backend.as_ref_option().cloned();
        let mut values: Vec<ApplianceValue> = appliances
            .iter()
            .filter(|a| wanted.as_ref().is_none_or(|b| a.backends.contains(b)))
            .map(ApplianceValue::from)
            .collect();
        values.sort_by(|a, b| a.name.cmp(&b.name));
        let mut state = config;
        state.names = Value::Value(values.iter().map(|a| a.name.clone()).collect());
        state.appliances = Value::Value(values);
        Some(state)
    }
}
