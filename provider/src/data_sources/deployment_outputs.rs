//! `measurelab_deployment_outputs`: the small text output files of a
//! deployment, per VM, as strings (`GET /v1/deployments/{id}/outputs` and
//! one download per file). Large files (captures) are for
//! `measurelab deployment fetch`; here a file over `max_bytes` is an error
//! naming its size rather than a state Terraform would carry around.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use measurelab_api::client::{Client, ClientError};
use measurelab_api::http::{DeploymentOutputs, OUTPUT_SHA256_HEADER};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tf_provider::schema::{Attribute, AttributeConstraint, AttributeType, Description};
use tf_provider::value::Value;

use super::lookup::{configured, found, Lookup, LookupDataSource};
use super::views::{object_type, Field};
use crate::node_model::computed;
use crate::number::Number;

/// The data source implementation.
pub type DeploymentOutputsDataSource = LookupDataSource<DeploymentOutputsLookup>;

/// Default and largest `max_bytes`.
const DEFAULT_MAX_BYTES: u64 = 64 * 1024;
const LARGEST_MAX_BYTES: u64 = 1024 * 1024;

/// One VM's outputs as Terraform shows them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VmOutputsView {
    vm: Value<String>,
    vm_id: Value<String>,
    contents: Value<BTreeMap<String, Value<String>>>,
}

/// Configuration and result of the data source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeploymentOutputsState {
    /// Deployment id.
    pub deployment: Value<String>,
    /// Declared output paths to read; null: all of them.
    pub outputs: Value<Vec<Value<String>>>,
    /// Largest file read; null: 64 KiB.
    pub max_bytes: Value<Number>,
    /// One entry per VM.
    pub vms: Value<Vec<VmOutputsView>>,
}

fn vm_fields() -> Vec<Field> {
    vec![
        ("vm", AttributeType::String, "The VM (`platform/name`)."),
        ("vm_id", AttributeType::String, "The VM's id."),
        (
            "contents",
            AttributeType::Map(Box::new(AttributeType::String)),
            "Path → content of each output the VM has; a file not written yet is left out.",
        ),
    ]
}

/// What was asked and what was read.
pub struct OutputsAnswer {
    config: DeploymentOutputsState,
    vms: Vec<VmOutputsView>,
}

/// How `measurelab_deployment_outputs` reads a deployment's outputs.
pub struct DeploymentOutputsLookup;

/// A refusal of the configuration, on `field`, as the controller would say it.
fn refused(field: &str, message: String) -> ClientError {
    ClientError::Api {
        status: 422,
        code: "invalid_field".into(),
        message,
        field: Some(field.into()),
    }
}

fn optional(name: &str, attr_type: AttributeType, doc: &'static str) -> (String, Attribute) {
    (
        name.to_string(),
        Attribute {
            attr_type,
            description: Description::markdown(doc),
            constraint: AttributeConstraint::Optional,
            ..Default::default()
        },
    )
}

/// The declared paths to read: `wanted` (each must be declared) or all.
fn selected(
    listing: &DeploymentOutputs,
    wanted: Option<Vec<String>>,
) -> Result<Vec<String>, ClientError> {
    let Some(wanted) = wanted else {
        return Ok(listing.outputs.clone());
    };
    for (i, path) in wanted.iter().enumerate() {
        if !listing.outputs.contains(path) {
            return Err(refused(
                &format!("outputs[{i}]"),
                format!(
                    "{path:?} is not an output of deployment {} (it declares {})",
                    listing.deployment_id,
                    listing.outputs.join(", ")
                ),
            ));
        }
    }
    Ok(wanted)
}

/// Downloads one file of at most `max_bytes`, checked against the
/// controller's digest, as text.
async fn read_text(
    client: &Client,
    deployment: &str,
    index: u32,
    vm: &str,
    path: &str,
    max_bytes: u64,
) -> Result<String, ClientError> {
    let mut response = client
        .download_output(deployment, &index.to_string(), Some(vm))
        .await?;
    let announced = response
        .headers()
        .get(OUTPUT_SHA256_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| ClientError::Decode(format!("{vm}:{path}: the download broke off: {e}")))?
    {
        bytes.extend_from_slice(&chunk);
        // The file grew past the limit since it was listed.
        if bytes.len() as u64 > max_bytes {
            return Err(refused(
                "max_bytes",
                format!("{vm}:{path} grew past max_bytes ({max_bytes}) while it was read"),
            ));
        }
    }
    let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
    if sha256 != announced {
        return Err(ClientError::Decode(format!(
            "{vm}:{path} arrived with sha256 {sha256}, the controller announced {announced:?}"
        )));
    }
    String::from_utf8(bytes).map_err(|_| {
        refused(
            "outputs",
            format!(
                "{vm}:{path} is not UTF-8 text; download it with `measurelab deployment fetch`"
            ),
        )
    })
}

#[async_trait]
impl Lookup for DeploymentOutputsLookup {
    type State = DeploymentOutputsState;
    type Object = OutputsAnswer;

    const KIND: &'static str = "deployment";
    const KEY: &'static str = "deployment";
    const DESCRIPTION: &'static str =
        "Reads a deployment's small text output files (its `outputs`) from each VM, as strings: \
         a summary or a result a program wrote. Files are read when the data source is read, \
         during or after the run; one not written yet is left out of `contents`. A file larger \
         than `max_bytes` or not UTF-8 is an error: download captures and other large files \
         with `measurelab deployment fetch`. A tenant token reads its own deployments only.";

    fn attributes() -> HashMap<String, Attribute> {
        HashMap::from([
            (
                "deployment".to_string(),
                Attribute {
                    attr_type: AttributeType::String,
                    description: Description::markdown(
                        "Id of the deployment (`measurelab_deployment.x.id`).",
                    ),
                    constraint: AttributeConstraint::Required,
                    ..Default::default()
                },
            ),
            optional(
                "outputs",
                AttributeType::List(Box::new(AttributeType::String)),
                "Which declared outputs to read, by path. Default: all of them.",
            ),
            optional(
                "max_bytes",
                AttributeType::Number,
                "Largest file read, at most 1048576. Default 65536.",
            ),
            (
                "vms".to_string(),
                computed(
                    AttributeType::List(Box::new(object_type(&vm_fields()))),
                    "One entry per VM of the deployment: `vm`, `vm_id` and `contents` (path → text).",
                ),
            ),
        ])
    }

    async fn find(
        client: &Client,
        config: &DeploymentOutputsState,
    ) -> Result<Option<OutputsAnswer>, ClientError> {
        let max_bytes = match config.max_bytes.as_ref_option() {
            None => DEFAULT_MAX_BYTES,
            Some(n) => n
                .as_whole()
                .filter(|n| (1..=LARGEST_MAX_BYTES).contains(n))
                .ok_or_else(|| {
                    refused(
                        "max_bytes",
                        format!("must be a whole number from 1 to {LARGEST_MAX_BYTES}"),
                    )
                })?,
        };
        let deployment = configured(&config.deployment);
        let Some(listing) = found(client.deployment_outputs(&deployment).await)? else {
            return Ok(None);
        };
        let wanted = config.outputs.as_ref_option().map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_ref_option().cloned())
                .collect()
        });
        let paths = selected(&listing, wanted)?;
        let mut vms = Vec::new();
        for vm in &listing.vms {
            if let Some(error) = &vm.error {
                return Err(ClientError::Api {
                    status: 503,
                    code: "unavailable".into(),
                    message: format!("cannot read the outputs of VM {}: {error}", vm.vm),
                    field: None,
                });
            }
            let mut contents = BTreeMap::new();
            for file in vm.files.iter().filter(|f| paths.contains(&f.path)) {
                if let Some(error) = &file.error {
                    return Err(refused(
                        "outputs",
                        format!("{}:{}: {error}", vm.vm, file.path),
                    ));
                }
                let Some(size) = file.size_bytes.filter(|_| file.present) else {
                    continue;
                };
                if size > max_bytes {
                    return Err(refused(
                        "max_bytes",
                        format!(
                            "{}:{} is {size} bytes, more than max_bytes ({max_bytes}); download it with `measurelab deployment fetch`",
                            vm.vm, file.path
                        ),
                    ));
                }
                let text = read_text(
                    client,
                    &deployment,
                    file.index,
                    &vm.vm_id,
                    &file.path,
                    max_bytes,
                )
                .await?;
                contents.insert(file.path.clone(), Value::Value(text));
            }
            vms.push(VmOutputsView {
                vm: Value::Value(vm.vm.clone()),
                vm_id: Value::Value(vm.vm_id.clone()),
                contents: Value::Value(contents),
            });
        }
        Ok(Some(OutputsAnswer {
            config: config.clone(),
            vms,
        }))
    }

    fn view(answer: &OutputsAnswer) -> DeploymentOutputsState {
        DeploymentOutputsState {
            deployment: answer.config.deployment.clone(),
            outputs: answer.config.outputs.clone(),
            max_bytes: answer.config.max_bytes.clone(),
            vms: Value::Value(answer.vms.clone()),
        }
    }

    fn not_found(config: &DeploymentOutputsState) -> String {
        format!(
            "The controller has no deployment with id {:?} that this token may see.\n\n\
             What to do: pass `measurelab_deployment.x.id`; a tenant token sees only its own \
             tenant's deployments.",
            configured(&config.deployment)
        )
    }
}
