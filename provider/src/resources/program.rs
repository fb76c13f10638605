//! `measurelab_program`: a user program uploaded for program distribution (the
//! paper's "upload a measurement program, the platform delivers it to the
//! VMs"). The provider reads the local file named by `source`; its SHA-256 is
//! known at plan time, so a changed file plans a replacement.

use std::collections::HashMap;
use std::path::Path;

use async_trait::async_trait;
use base64::Engine;
use measurelab_api::client::{Client, ClientError};
use measurelab_api::http::{Program, ProgramCreate};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tf_provider::schema::{
    Attribute, AttributeConstraint, AttributeType, Block, Description, Schema,
};
use tf_provider::value::Value;
use tf_provider::{AttributePath, Diagnostics};

use super::adapter::{holds_shared, id_or_name, known, CreateRequest, ManagedResource};
use crate::diagnostics;
use crate::node_model::computed;
use crate::number::Number;
use crate::shared::Shared;

const KIND: &str = "program";

/// Largest file the controller accepts (`MAX_PROGRAM_BYTES` on the controller).
const MAX_PROGRAM_BYTES: u64 = 64 * 1024 * 1024;

/// Terraform state of one program.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProgramState {
    /// Unique name.
    pub name: Value<String>,
    /// Local path of the file to upload.
    pub source: Value<String>,
    /// Controller id.
    pub id: Value<String>,
    /// Hex SHA-256 of the content.
    pub sha256: Value<String>,
    /// Content size.
    pub size_bytes: Value<Number>,
    /// Upload time.
    pub created_at: Value<String>,
}

/// Why the local file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    /// The file cannot be read.
    #[error("cannot read {path:?}: {source}")]
    Unreadable {
        /// The configured path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is over the controller's limit.
    #[error("{path:?} is {size} bytes; the controller accepts at most {MAX_PROGRAM_BYTES} bytes (strip the binary or build it in release mode)")]
    TooLarge {
        /// The configured path.
        path: String,
        /// Its size.
        size: u64,
    },
    /// The file is empty.
    #[error("{0:?} is empty")]
    Empty(String),
}

/// Cheap checks (no read) for `validate`: the file exists, is not empty, fits.
pub fn check_source(path: &str) -> Result<(), ProgramError> {
    let meta = std::fs::metadata(path).map_err(|source| ProgramError::Unreadable {
        path: path.to_string(),
        source,
    })?;
    if meta.len() > MAX_PROGRAM_BYTES {
        return Err(ProgramError::TooLarge {
            path: path.to_string(),
            size: meta.len(),
        });
    }
    if meta.len() == 0 {
        return Err(ProgramError::Empty(path.to_string()));
    }
    Ok(())
}

/// The file's content and hex SHA-256.
pub fn read_source(path: &str) -> Result<(Vec<u8>, String), ProgramError> {
    let size = std::fs::metadata(path)
        .map_err(|source| ProgramError::Unreadable {
            path: path.to_string(),
            source,
        })?
        .len();
    if size > MAX_PROGRAM_BYTES {
        return Err(ProgramError::TooLarge {
            path: path.to_string(),
            size,
        });
    }
    let content = std::fs::read(Path::new(path)).map_err(|source| ProgramError::Unreadable {
        path: path.to_string(),
        source,
    })?;
    if content.is_empty() {
        return Err(ProgramError::Empty(path.to_string()));
    }
    let sha256 = hex::encode(Sha256::digest(&content));
    Ok((content, sha256))
}

fn source_diag(diags: &mut Diagnostics, err: &ProgramError) {
    diagnostics::invalid_value(
        diags,
        AttributePath::new("source"),
        "Cannot use the program file",
        format!("{err}.\n\nWhat to do: point `source` at a readable, non-empty file (for example a built binary)."),
    );
}

fn check_name(diags: &mut Diagnostics, name: &Value<String>) {
    if let Value::Value(name) = name {
        let ok = !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            && name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric());
        if !ok {
            diagnostics::invalid_value(
                diags,
                AttributePath::new("name"),
                "Invalid program name",
                format!("{name:?} is not a program name: use 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit."),
            );
        }
    }
}

impl ProgramState {
    fn refresh_from(&mut self, program: &Program) {
        self.name = Value::Value(program.name.clone());
        self.id = Value::Value(program.id.clone());
        self.sha256 = Value::Value(program.sha256.clone());
        self.size_bytes = Value::Value(Number::from(program.size_bytes));
        self.created_at = Value::Value(program.created_at.clone());
    }

    /// Plan the digest and size from the local file (known at plan time).
    fn plan_content(&mut self, diags: &mut Diagnostics) {
        match &self.source {
            Value::Value(path) => match read_source(path) {
                Ok((content, sha)) => {
                    self.sha256 = Value::Value(sha);
                    self.size_bytes = Value::Value(Number::from(content.len() as u64));
                }
                Err(err) => source_diag(diags, &err),
            },
            _ => {
                self.sha256 = Value::Unknown;
                self.size_bytes = Value::Unknown;
            }
        }
    }
}

/// The controller's programs, as a Terraform resource.
pub struct Programs {
    shared: Shared,
}

#[async_trait]
impl ManagedResource for Programs {
    type State = ProgramState;
    type Object = Program;

    const KIND: &'static str = KIND;

    holds_shared!();

    fn schema(&self) -> Schema {
        let attributes: HashMap<String, Attribute> = HashMap::from([
            (
                "name".to_string(),
                Attribute {
                    attr_type: AttributeType::String,
                    description: Description::markdown(
                        "Unique program name; deployments refer to it. Changing it replaces the program.",
                    ),
                    constraint: AttributeConstraint::Required,
                    ..Default::default()
                },
            ),
            (
                "source".to_string(),
                Attribute {
                    attr_type: AttributeType::String,
                    description: Description::markdown(
                        "Path of the local file to upload (at most 64 MiB), for example a built binary. \
                         The file is read at plan time: when its content changes the program is replaced \
                         (and so are the deployments that use it).",
                    ),
                    constraint: AttributeConstraint::Required,
                    ..Default::default()
                },
            ),
            ("id".to_string(), computed(AttributeType::String, "Stable id assigned by the controller.")),
            ("sha256".to_string(), computed(AttributeType::String, "Hex SHA-256 of the uploaded content (computed from `source` at plan time).")),
            ("size_bytes".to_string(), computed(AttributeType::Number, "Size of the uploaded content in bytes.")),
            ("created_at".to_string(), computed(AttributeType::String, "RFC 3339 upload time.")),
        ]);
        Schema {
            version: 1,
            block: Block {
                description: Description::markdown(
                    "A program uploaded to the controller for program distribution. Deploy it onto VMs with \
                     `measurelab_deployment`. The controller checks the SHA-256 of what it received.",
                ),
                attributes,
                ..Default::default()
            },
        }
    }

    fn validate(&self, diags: &mut Diagnostics, state: &ProgramState) {
        check_name(diags, &state.name);
        if let Value::Value(path) = &state.source {
            if let Err(err) = check_source(path) {
                source_diag(diags, &err);
            }
        }
    }

    async fn plan_create(&self, diags: &mut Diagnostics, proposed: ProgramState) -> ProgramState {
        check_name(diags, &proposed.name);
        let mut state = proposed;
        state.plan_content(diags);
        state.id = Value::Unknown;
        state.created_at = Value::Unknown;
        state
    }

    async fn plan_update(
        &self,
        diags: &mut Diagnostics,
        prior: &ProgramState,
        proposed: ProgramState,
    ) -> (ProgramState, Vec<AttributePath>) {
        check_name(diags, &proposed.name);
        let mut state = proposed;
        state.plan_content(diags);
        let mut replace = Vec::new();
        if state.name != prior.name {
            replace.push(AttributePath::new("name"));
        }
        // The controller keeps content immutable under a name: new content is a new program.
        if state.sha256 != prior.sha256 {
            replace.push(AttributePath::new("sha256"));
        }
        if replace.is_empty() {
            state.id = prior.id.clone();
            state.created_at = prior.created_at.clone();
        } else {
            state.id = Value::Unknown;
            state.created_at = Value::Unknown;
        }
        (state, replace)
    }

    async fn create(
        &self,
        diags: &mut Diagnostics,
        client: &Client,
        planned: ProgramState,
        request: &CreateRequest,
    ) -> Option<ProgramState> {
        let path = known(&planned.source);
        let (content, sha256) = match read_source(&path) {
            Ok(read) => read,
            Err(err) => {
                source_diag(diags, &err);
                return None;
            }
        };
        if let Value::Value(planned_sha256) = &planned.sha256 {
            if planned_sha256 != &sha256 {
                diagnostics::invalid_value(
                    diags,
                    AttributePath::new("source"),
                    "The program file changed between plan and apply",
                    format!("{path:?} had SHA-256 {planned_sha256} when planned and {sha256} now. Nothing was uploaded.\n\nWhat to do: run `terraform apply` again."),
                );
                return None;
            }
        }
        let body = ProgramCreate {
            tenant: None,
            name: known(&planned.name),
            content_base64: base64::engine::general_purpose::STANDARD.encode(&content),
            sha256: Some(sha256),
            request_id: request.request_id(),
        };
        let program = request.send(diags, || client.create_program(&body)).await?;
        let mut state = planned;
        state.refresh_from(&program);
        Some(state)
    }

    // `update` sends nothing: only `source` moved to a file with the same content.

    fn id(state: &ProgramState) -> &Value<String> {
        &state.id
    }

    fn read_key(state: &ProgramState) -> String {
        id_or_name(&state.id, &state.name)
    }

    async fn get(client: &Client, key: &str) -> Result<Program, ClientError> {
        client.get_program(key).await
    }

    async fn delete(client: &Client, id: &str) -> Result<(), ClientError> {
        client.delete_program(id).await.map(drop)
    }

    /// `source` is only known to the configuration; on import the next plan
    /// compares the file's digest with the imported one.
    async fn refresh(&self, _client: &Client, state: &mut ProgramState, program: &Program) {
        state.refresh_from(program);
    }

    fn import_not_found(id: &str) -> String {
        format!("The controller has no program named (or with id) {id:?}.\n\nWhat to do: import by name or id (`GET /v1/programs`).")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_a_file_is_its_sha256() {
        let path = std::env::temp_dir().join(format!("ml-program-{}", std::process::id()));
        std::fs::write(&path, b"abc").expect("write");
        let (content, sha) = read_source(path.to_str().expect("utf8")).expect("read");
        std::fs::remove_file(&path).ok();
        assert_eq!(content, b"abc");
        assert_eq!(
            sha,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn missing_file_and_bad_name_point_at_their_attributes() {
        let mut diags = Diagnostics::default();
        let mut state = ProgramState {
            name: Value::Value("bad name!".into()),
            source: Value::Value("/nonexistent/measurelab-program".into()),
            ..Default::default()
        };
        check_name(&mut diags, &state.name);
        state.plan_content(&mut diags);
        let paths: Vec<_> = diags.errors.iter().map(|d| d.attribute.clone()).collect();
        assert_eq!(
            paths,
            vec![AttributePath::new("name"), AttributePath::new("source")]
        );
    }
}
