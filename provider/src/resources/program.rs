//! `measurelab_program`: a user program uploaded for program distribution (the
//! paper's "upload a measurement program, the platform delivers it to the
//! VMs"). The provider reads the local file named by `source`; its SHA-256 is
//! known at plan time, so a changed file plans a replacement.

use std::collections::HashMap;
use std::path::Path;

use async_trait::async_trait;
use measurelab_api::client::{Client, ClientError, ProgramUpload};
use measurelab_api::http::Program;
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

/// The file's size and hex SHA-256, read a block at a time: the provider
/// never holds a program in memory.
pub fn hash_source(path: &str) -> Result<(u64, String), ProgramError> {
    let unreadable = |source| ProgramError::Unreadable {
        path: path.to_string(),
        source,
    };
    check_source(path)?;
    let mut file = std::fs::File::open(Path::new(path)).map_err(unreadable)?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut file, &mut hasher).map_err(unreadable)?;
    // The file may have changed since check_source looked at it.
    if size > MAX_PROGRAM_BYTES {
        return Err(ProgramError::TooLarge {
            path: path.to_string(),
            size,
        });
    }
    if size == 0 {
        return Err(ProgramError::Empty(path.to_string()));
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// Whether the controller refused an upload because its content's SHA-256
/// is not the one sent with it: the file changed after it was hashed.
fn is_checksum_refusal(err: &ClientError) -> bool {
    matches!(err, ClientError::Api { status, field: Some(field), .. }
        if (400..500).contains(status) && field == "sha256")
}

fn changed_diag(diags: &mut Diagnostics, path: &str, planned_sha256: &str, detail: &str) {
    diagnostics::invalid_value(
        diags,
        AttributePath::new("source"),
        "The program file changed between plan and apply",
        format!("{path:?} had SHA-256 {planned_sha256} when planned, and what the provider read from it while uploading has another ({detail}). Nothing was uploaded.\n\nWhat to do: leave the file alone until the apply is done, then run `terraform apply` again (it plans the new content)."),
    );
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
            Value::Value(path) => match hash_source(path) {
                Ok((size, sha)) => {
                    self.sha256 = Value::Value(sha);
                    self.size_bytes = Value::Value(Number::from(size));
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
                         The file is hashed at plan time: when its content changes the program is replaced \
                         (and so are the deployments that use it). The apply streams it from disk to the \
                         controller, which stores nothing if its SHA-256 is no longer the planned one.",
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
        // The digest planned; when `source` was unknown at plan time, the
        // file's now. The controller hashes what it receives and refuses
        // other content, which catches a file changed since it was hashed.
        let sha256 = match &planned.sha256 {
            Value::Value(sha256) => match check_source(&path) {
                Ok(()) => sha256.clone(),
                Err(err) => {
                    source_diag(diags, &err);
                    return None;
                }
            },
            _ => match hash_source(&path) {
                Ok((_, sha256)) => sha256,
                Err(err) => {
                    source_diag(diags, &err);
                    return None;
                }
            },
        };
        let name = known(&planned.name);
        let request_id = request.request_id();
        let upload = ProgramUpload {
            name: &name,
            path: Path::new(&path),
            sha256: Some(&sha256),
            request_id: request_id.as_deref(),
            tenant: None,
        };
        // A checksum refusal is answered as a success of `send`, so it is
        // neither sent again nor reported as a generic refusal.
        let answer = request
            .send(diags, || async {
                match client.upload_program(&upload).await {
                    Err(err) if is_checksum_refusal(&err) => Ok(Err(err)),
                    other => other.map(Ok),
                }
            })
            .await?;
        let program = match answer {
            Ok(program) => program,
            Err(err) => {
                let detail = match &err {
                    ClientError::Api { message, .. } => message.clone(),
                    other => other.to_string(),
                };
                changed_diag(diags, &path, &sha256, &detail);
                return None;
            }
        };
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
    use crate::resources::adapter::Adapter;
    use axum::body::Bytes;
    use axum::extract::{Query, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use std::sync::{Arc, Mutex};
    use tf_provider::value::ValueEmpty;
    use tf_provider::Resource;
    use tokio_util::sync::CancellationToken;

    /// Content type and body of each upload the stand-in received.
    type Uploads = Arc<Mutex<Vec<(String, Bytes)>>>;

    /// `POST /v1/programs` as the controller answers it: the content's
    /// digest must be the `?sha256=` sent with it (field `sha256` otherwise).
    async fn upload(
        State(uploads): State<Uploads>,
        Query(query): Query<HashMap<String, String>>,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let actual = hex::encode(Sha256::digest(&body));
        let size = body.len();
        uploads.lock().unwrap().push((content_type, body));
        let expected = query.get("sha256").cloned().unwrap_or_default();
        if actual != expected {
            let error = serde_json::json!({"error": {"code": "invalid_field", "field": "sha256",
                "message": format!("the content's SHA-256 is {actual}, not {expected}; the upload is damaged or the checksum is wrong")}});
            return (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(error)).into_response();
        }
        let program = serde_json::json!({"id": "prg-1", "name": query["name"], "sha256": actual,
            "size_bytes": size, "tenant_id": "t-1", "created_at": "2026-12-07T00:00:00Z"});
        (StatusCode::CREATED, axum::Json(program)).into_response()
    }

    async fn start() -> (Adapter<Programs>, Uploads) {
        let uploads = Uploads::default();
        let app = axum::Router::new()
            .route("/v1/programs", axum::routing::post(upload))
            .with_state(uploads.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let shared = Shared::new(CancellationToken::new());
        shared.set_client(Client::new(&url, "token", None).unwrap());
        (Adapter::new(shared), uploads)
    }

    async fn plan(resource: &Adapter<Programs>, source: &std::path::Path) -> ProgramState {
        let config = ProgramState {
            name: Value::Value("probe".into()),
            source: Value::Value(source.to_str().unwrap().into()),
            ..Default::default()
        };
        let mut diags = Diagnostics::default();
        let (planned, _) = resource
            .plan_create(&mut diags, config.clone(), config, ValueEmpty::default())
            .await
            .unwrap();
        assert!(diags.errors.is_empty(), "{:?}", diags.errors);
        planned
    }

    async fn apply(
        resource: &Adapter<Programs>,
        planned: ProgramState,
    ) -> (Option<ProgramState>, Diagnostics) {
        let mut diags = Diagnostics::default();
        let created = resource
            .create(
                &mut diags,
                planned.clone(),
                planned,
                ValueEmpty::default(),
                ValueEmpty::default(),
            )
            .await
            .map(|(state, _)| state);
        (created, diags)
    }

    #[tokio::test]
    async fn the_file_is_uploaded_as_it_is_on_disk() {
        let dir = tempfile_dir("sent");
        let source = dir.join("probe.sh");
        let content = b"#!/bin/sh\necho measuring\n".repeat(4000);
        std::fs::write(&source, &content).unwrap();
        let (resource, uploads) = start().await;
        let planned = plan(&resource, &source).await;
        let (created, diags) = apply(&resource, planned.clone()).await;
        assert!(diags.errors.is_empty(), "{:?}", diags.errors);
        let created = created.unwrap();
        assert_eq!(created.id, Value::Value("prg-1".into()));
        assert_eq!(created.sha256, planned.sha256);
        let uploads = uploads.lock().unwrap();
        assert_eq!(uploads.len(), 1);
        assert_eq!(uploads[0].0, "application/octet-stream");
        assert!(uploads[0].1[..] == content[..], "the body is not the file");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn a_file_changed_after_planning_is_refused_with_a_diagnostic_on_source() {
        let dir = tempfile_dir("changed");
        let source = dir.join("probe.sh");
        std::fs::write(&source, b"#!/bin/sh\necho planned\n").unwrap();
        let (resource, uploads) = start().await;
        let planned = plan(&resource, &source).await;
        std::fs::write(&source, b"#!/bin/sh\necho edited during the apply\n").unwrap();
        let (created, diags) = apply(&resource, planned.clone()).await;
        assert!(created.is_none());
        assert_eq!(diags.errors.len(), 1, "{:?}", diags.errors);
        let error = &diags.errors[0];
        assert_eq!(
            error.summary,
            "The program file changed between plan and apply"
        );
        assert_eq!(error.attribute, AttributePath::new("source"));
        let planned_sha256 = known(&planned.sha256);
        assert!(error.detail.contains(&planned_sha256), "{}", error.detail);
        assert!(
            error.detail.contains("Nothing was uploaded"),
            "{}",
            error.detail
        );
        // Refused content is not sent again.
        assert_eq!(uploads.lock().unwrap().len(), 1);
        std::fs::remove_dir_all(&dir).ok();
    }

    /// A fresh directory under the system temp dir for one test.
    fn tempfile_dir(test: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ml-program-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn digest_of_a_file_is_its_sha256() {
        let path = std::env::temp_dir().join(format!("ml-program-{}", std::process::id()));
        std::fs::write(&path, b"abc").expect("write");
        let (size, sha) = hash_source(path.to_str().expect("utf8")).expect("read");
        std::fs::remove_file(&path).ok();
        assert_eq!(size, 3);
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
