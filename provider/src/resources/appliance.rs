//! `measurelab_appliance`: a VM image (kernel, initrd, optional disk) whose
//! files the provider uploads to the controller, which stores them by
//! SHA-256 and hands them to the nodes; every node verifies the digest before
//! a VM boots the image. The provider hashes the local files at plan time
//! (streaming, never the whole image in memory), so a changed file plans a
//! replacement. Operator only: the appliance catalog is shared by all tenants.

use std::collections::HashMap;
use std::io::Read;

use async_trait::async_trait;
use measurelab_api::client::{Client, ClientError};
use measurelab_api::http::{Appliance, ApplianceCreate};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tf_provider::schema::{
    Attribute, AttributeConstraint, AttributeType, Block, Description, Schema,
};
use tf_provider::value::Value;
use tf_provider::{AttributePath, Diagnostics};

use super::adapter::{holds_shared, id_or_name, known, CreateRequest, ManagedResource};
use crate::access::Role;
use crate::diagnostics;
use crate::node_model::computed;
use crate::number::Number;
use crate::shared::Shared;

const KIND: &str = "appliance";

/// The files of an appliance: attribute of the local path, of its digest.
const FILES: [(&str, &str); 3] = [
    ("kernel", "kernel_sha256"),
    ("initrd", "initrd_sha256"),
    ("disk", "disk_sha256"),
];

/// Terraform state of one appliance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApplianceState {
    /// Unique name.
    pub name: Value<String>,
    /// Local path of the kernel to upload.
    pub kernel: Value<String>,
    /// Local path of the initrd to upload.
    pub initrd: Value<String>,
    /// Local path of the disk image to upload, if any.
    pub disk: Value<String>,
    /// Version text.
    pub version: Value<String>,
    /// Operating system, free text.
    pub os: Value<String>,
    /// `x86_64` or `i686`.
    pub arch: Value<String>,
    /// Smallest memory of a VM.
    pub min_memory_mib: Value<Number>,
    /// Backends it runs on.
    pub backends: Value<Vec<Value<String>>>,
    /// Controller id.
    pub id: Value<String>,
    /// Hex SHA-256 of the kernel.
    pub kernel_sha256: Value<String>,
    /// Hex SHA-256 of the initrd.
    pub initrd_sha256: Value<String>,
    /// Hex SHA-256 of the disk image (null without one).
    pub disk_sha256: Value<String>,
}

/// Why a local file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path:?}: {source}")]
pub struct SourceError {
    path: String,
    source: std::io::Error,
}

/// The hex SHA-256 of the file at `path`, read in chunks.
pub fn file_sha256(path: &str) -> Result<String, SourceError> {
    let error = |source| SourceError {
        path: path.to_string(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(error)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(error)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn text(value: &str) -> Value<String> {
    Value::Value(value.to_string())
}

impl ApplianceState {
    fn source(&self, attribute: &str) -> &Value<String> {
        match attribute {
            "kernel" => &self.kernel,
            "initrd" => &self.initrd,
            _ => &self.disk,
        }
    }

    fn digest_mut(&mut self, attribute: &str) -> &mut Value<String> {
        match attribute {
            "kernel_sha256" => &mut self.kernel_sha256,
            "initrd_sha256" => &mut self.initrd_sha256,
            _ => &mut self.disk_sha256,
        }
    }

    /// Plans the digests from the local files (known at plan time) and the
    /// defaults of the optional attributes.
    fn plan(&mut self, diags: &mut Diagnostics) {
        for (file, digest) in FILES {
            let planned = match self.source(file).clone() {
                Value::Value(path) => match file_sha256(&path) {
                    Ok(sha) => Value::Value(sha),
                    Err(err) => {
                        diagnostics::invalid_value(
                            diags,
                            AttributePath::new(file),
                            "Cannot use the appliance file",
                            format!("{err}.\n\nWhat to do: point `{file}` at a readable file (for example the output of scripts/build-appliance.sh)."),
                        );
                        Value::Unknown
                    }
                },
                Value::Null => Value::Null,
                Value::Unknown => Value::Unknown,
            };
            *self.digest_mut(digest) = planned;
        }
        let default = |value: &mut Value<String>, text_value: &str| {
            if value.is_null() {
                *value = text(text_value);
            }
        };
        default(&mut self.version, "1");
        default(&mut self.os, "linux");
        default(&mut self.arch, "x86_64");
        if self.min_memory_mib.is_null() {
            self.min_memory_mib = Value::Value(Number::from(64u64));
        }
        if self.backends.is_null() {
            self.backends = Value::Value(vec![text("libvirt"), text("namespace")]);
        }
    }

    fn refresh_from(&mut self, appliance: &Appliance) {
        self.name = text(&appliance.name);
        self.id = text(&appliance.id);
        self.version = text(&appliance.version);
        self.os = text(&appliance.os);
        self.arch = text(&appliance.arch);
        self.min_memory_mib = Value::Value(Number::from(appliance.min_memory_mib));
        self.backends = Value::Value(appliance.backends.iter().map(|b| text(b)).collect());
        let digest = |d: &Option<String>| d.as_deref().map_or(Value::Null, text);
        self.kernel_sha256 = digest(&appliance.kernel_sha256);
        self.initrd_sha256 = digest(&appliance.initrd_sha256);
        self.disk_sha256 = digest(&appliance.disk_sha256);
    }
}

/// The controller's appliance catalog, as a Terraform resource.
pub struct Appliances {
    shared: Shared,
}

fn attribute(
    attr_type: AttributeType,
    description: &str,
    constraint: AttributeConstraint,
) -> Attribute {
    Attribute {
        attr_type,
        description: Description::markdown(description),
        constraint,
        ..Default::default()
    }
}

#[async_trait]
impl ManagedResource for Appliances {
    type State = ApplianceState;
    type Object = Appliance;

    const KIND: &'static str = KIND;
    const ROLE: Role = Role::Operator;

    holds_shared!();

    fn schema(&self) -> Schema {
        use AttributeConstraint::{Optional, OptionalComputed, Required};
        let attributes: HashMap<String, Attribute> = HashMap::from([
            ("name".to_string(), attribute(AttributeType::String, "Unique appliance name (a DNS label); VMs name it in `appliance`. Changing it replaces the appliance.", Required)),
            ("kernel".to_string(), attribute(AttributeType::String, "Path of the local kernel file to upload. It is hashed at plan time: when its content changes the appliance is replaced.", Required)),
            ("initrd".to_string(), attribute(AttributeType::String, "Path of the local initrd file to upload; replaced like `kernel`.", Required)),
            ("disk".to_string(), attribute(AttributeType::String, "Path of a local disk image (raw or qcow2) to upload, if the appliance has one; each VM writes to its own copy-on-write overlay.", Optional)),
            ("version".to_string(), attribute(AttributeType::String, "Version text (default `1`).", OptionalComputed)),
            ("os".to_string(), attribute(AttributeType::String, "Operating system, free text (default `linux`).", OptionalComputed)),
            ("arch".to_string(), attribute(AttributeType::String, "`x86_64` (default) or `i686`.", OptionalComputed)),
            ("min_memory_mib".to_string(), attribute(AttributeType::Number, "Smallest memory a VM of the appliance may have (default 64).", OptionalComputed)),
            ("backends".to_string(), attribute(AttributeType::List(Box::new(AttributeType::String)), "Backends it runs on: `libvirt`, `namespace` (default both).", OptionalComputed)),
            ("id".to_string(), computed(AttributeType::String, "Stable id assigned by the controller.")),
            ("kernel_sha256".to_string(), computed(AttributeType::String, "Hex SHA-256 of the kernel (computed from `kernel` at plan time); nodes refuse a kernel with another digest.")),
            ("initrd_sha256".to_string(), computed(AttributeType::String, "Hex SHA-256 of the initrd.")),
            ("disk_sha256".to_string(), computed(AttributeType::String, "Hex SHA-256 of the disk image; null without one.")),
        ]);
        Schema {
            version: 1,
            block: Block {
                description: Description::markdown(
                    "A VM image in the controller's appliance catalog (operator only). The provider uploads \
                     the local files; the controller stores them by SHA-256 and checks what it received, and \
                     each node fetches them, verifies the digest and caches them before a VM boots the \
                     appliance. A VM on a file whose digest does not match is not started: its `Ready` \
                     condition names the file and both digests. Appliances are immutable: a changed file \
                     replaces the appliance, which the controller refuses while VMs use it, so give each \
                     image version its own `name` and move the VMs to it.",
                ),
                attributes,
                ..Default::default()
            },
        }
    }

    fn validate(&self, _diags: &mut Diagnostics, _state: &ApplianceState) {}

    async fn plan_create(
        &self,
        diags: &mut Diagnostics,
        proposed: ApplianceState,
    ) -> ApplianceState {
        let mut state = proposed;
        state.plan(diags);
        state.id = Value::Unknown;
        state
    }

    async fn plan_update(
        &self,
        diags: &mut Diagnostics,
        prior: &ApplianceState,
        proposed: ApplianceState,
    ) -> (ApplianceState, Vec<AttributePath>) {
        let mut state = proposed;
        state.plan(diags);
        // The controller keeps an appliance immutable: any change is a new one.
        let mut replace = Vec::new();
        for (attribute, changed) in [
            ("name", state.name != prior.name),
            ("kernel_sha256", state.kernel_sha256 != prior.kernel_sha256),
            ("initrd_sha256", state.initrd_sha256 != prior.initrd_sha256),
            ("disk_sha256", state.disk_sha256 != prior.disk_sha256),
            ("version", state.version != prior.version),
            ("os", state.os != prior.os),
            ("arch", state.arch != prior.arch),
            (
                "min_memory_mib",
                state.min_memory_mib != prior.min_memory_mib,
            ),
            ("backends", state.backends != prior.backends),
        ] {
            if changed {
                replace.push(AttributePath::new(attribute));
            }
        }
        state.id = if replace.is_empty() {
            prior.id.clone()
        } else {
            Value::Unknown
        };
        (state, replace)
    }

    async fn create(
        &self,
        diags: &mut Diagnostics,
        client: &Client,
        planned: ApplianceState,
        request: &CreateRequest,
    ) -> Option<ApplianceState> {
        let mut digests: HashMap<&str, String> = HashMap::new();
        for (file, digest_attribute) in FILES {
            let Value::Value(path) = planned.source(file).clone() else {
                continue;
            };
            let planned_sha = match digest_attribute {
                "kernel_sha256" => &planned.kernel_sha256,
                "initrd_sha256" => &planned.initrd_sha256,
                _ => &planned.disk_sha256,
            };
            let sha = known(planned_sha);
            let upload = match tokio::fs::File::open(&path).await {
                Ok(content) => client.upload_appliance_file(&sha, content).await,
                Err(err) => {
                    diagnostics::invalid_value(
                        diags,
                        AttributePath::new(file),
                        "Cannot read the appliance file",
                        format!("cannot open {path:?}: {err}. Nothing was created."),
                    );
                    return None;
                }
            };
            if let Err(err) = upload {
                // The controller refuses content whose digest is not the
                // planned one: the file changed after the plan.
                diagnostics::invalid_value(
                    diags,
                    AttributePath::new(file),
                    "The appliance file was not uploaded",
                    format!("uploading {path:?} (planned SHA-256 {sha}) failed: {err}. Nothing was created.\n\nWhat to do: if the file changed since the plan, run `terraform apply` again."),
                );
                return None;
            }
            digests.insert(digest_attribute, sha);
        }
        let body = ApplianceCreate {
            name: known(&planned.name),
            version: known(&planned.version),
            arch: known(&planned.arch),
            os: known(&planned.os),
            kernel: String::new(),
            initrd: String::new(),
            disk: None,
            kernel_sha256: digests.remove("kernel_sha256"),
            initrd_sha256: digests.remove("initrd_sha256"),
            disk_sha256: digests.remove("disk_sha256"),
            min_memory_mib: match &planned.min_memory_mib {
                Value::Value(n) => n.as_whole().unwrap_or(0),
                _ => 0,
            },
            backends: match &planned.backends {
                Value::Value(list) => list.iter().map(known).collect(),
                _ => Vec::new(),
            },
            request_id: request.request_id(),
        };
        let appliance = request
            .send(diags, || client.create_appliance(&body))
            .await?;
        let mut state = planned;
        state.refresh_from(&appliance);
        Some(state)
    }

    fn id(state: &ApplianceState) -> &Value<String> {
        &state.id
    }

    fn read_key(state: &ApplianceState) -> String {
        id_or_name(&state.id, &state.name)
    }

    async fn get(client: &Client, key: &str) -> Result<Appliance, ClientError> {
        client.get_appliance(key).await
    }

    async fn delete(client: &Client, id: &str) -> Result<(), ClientError> {
        client.delete_appliance(id).await.map(drop)
    }

    /// The local paths are only known to the configuration; on import the
    /// next plan compares the files' digests with the imported ones.
    async fn refresh(&self, _client: &Client, state: &mut ApplianceState, appliance: &Appliance) {
        state.refresh_from(appliance);
    }

    fn import_not_found(id: &str) -> String {
        format!("The controller has no appliance named (or with id) {id:?}.\n\nWhat to do: import by name or id (`GET /v1/appliances`).")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_hashes_the_files_and_fills_the_defaults() {
        let kernel = std::env::temp_dir().join(format!("ml-appliance-{}", std::process::id()));
        std::fs::write(&kernel, b"abc").expect("write");
        let mut diags = Diagnostics::default();
        let mut state = ApplianceState {
            name: text("a"),
            kernel: text(kernel.to_str().expect("utf8")),
            initrd: text("/nonexistent/initrd.img"),
            ..Default::default()
        };
        state.plan(&mut diags);
        std::fs::remove_file(&kernel).ok();
        assert_eq!(
            state.kernel_sha256,
            text("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(state.disk_sha256, Value::Null);
        assert_eq!(state.version, text("1"));
        let paths: Vec<_> = diags.errors.iter().map(|d| d.attribute.clone()).collect();
        assert_eq!(paths, vec![AttributePath::new("initrd")]);
    }
}
