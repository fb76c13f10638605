//! `GET /v1/deployments/{id}/outputs` and
//! `GET /v1/deployments/{id}/outputs/{output}?vm=`: a deployment's declared
//! output files, listed per VM and downloaded (through `output_files`).
//!
//! Reading outputs is a read like the runs' stdout tails: every role of the
//! deployment's tenant may; another tenant gets 404, as for the deployment
//! itself. Only declared paths can be read, so this never becomes a way to
//! read arbitrary guest files without the member role `vm cp` needs.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use measurelab_api::http::{DeploymentOutputs, OutputFile, VmOutputs, OUTPUT_SHA256_HEADER};

use super::error::ApiError;
use super::extract::QueryParams;
use super::state::AppState;
use crate::access::Principal;
use crate::exec_hub::ExecHub;
use crate::output_files::{self, FileStat, OutputError, MAX_OUTPUT_BYTES};
use crate::store::programs::{self, OutputTarget};

/// VMs looked at at once while listing (each takes one session per file).
const LIST_CONCURRENCY: usize = 8;

pub(crate) async fn list(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Json<DeploymentOutputs>, ApiError> {
    query.only(&[])?;
    let key = super::extract::key(path)?;
    let scope = principal.scope();
    let (deployment, targets) = state
        .store()
        .resources()
        .read(move |conn, _| programs::output_targets(conn, &scope, &key))
        .await?;
    let hub = state.exec_hub().clone();
    let outputs = deployment.outputs.clone();
    let vms = futures::stream::iter(targets)
        .map(|target| list_vm(&hub, target, &outputs))
        .buffered(LIST_CONCURRENCY)
        .collect()
        .await;
    Ok(Json(DeploymentOutputs {
        deployment_id: deployment.id,
        outputs: deployment.outputs,
        vms,
    }))
}

async fn list_vm(hub: &ExecHub, target: OutputTarget, outputs: &[String]) -> VmOutputs {
    let mut entry = VmOutputs {
        vm: target.vm,
        vm_id: target.vm_id,
        error: None,
        files: Vec::new(),
    };
    let Some(node_id) = target.node_id else {
        entry.error = Some("the VM no longer exists".into());
        return entry;
    };
    for (index, path) in outputs.iter().enumerate() {
        let mut file = OutputFile {
            index: index as u32,
            path: path.clone(),
            present: false,
            size_bytes: None,
            sha256: None,
            modified_at: None,
            error: None,
        };
        match output_files::stat(hub, &node_id, &entry.vm_id, path).await {
            Ok(FileStat::Absent) => {}
            Ok(FileStat::Present {
                size,
                sha256,
                mtime_unix,
            }) => {
                file.present = true;
                file.size_bytes = Some(size);
                file.sha256 = sha256;
                file.modified_at = mtime_unix
                    .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
                    .map(crate::store::rfc3339);
            }
            // The node is offline: every file would say the same.
            Err(err @ OutputError::Offline(_)) => {
                entry.error = Some(err.to_string());
                entry.files.clear();
                return entry;
            }
            Err(err) => file.error = Some(err.to_string()),
        }
        entry.files.push(file);
    }
    entry
}

pub(crate) async fn download(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<(String, String)>, PathRejection>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    query.only(&["vm"])?;
    let Path((key, output)) = path.map_err(|rejection| ApiError::InvalidField {
        field: "id_or_name".into(),
        reason: rejection.body_text(),
    })?;
    let scope = principal.scope();
    let lookup = key.clone();
    let (deployment, targets) = state
        .store()
        .resources()
        .read(move |conn, _| programs::output_targets(conn, &scope, &lookup))
        .await?;
    let file = pick_output(&deployment.outputs, &output)?;
    let target = pick_vm(&targets, query.0.get("vm").map(String::as_str))?;
    let node_id = target
        .node_id
        .as_deref()
        .ok_or_else(|| ApiError::Conflict {
            field: Some("vm".into()),
            message: format!("VM {} of deployment {key} no longer exists", target.vm),
        })?;
    let hub = state.exec_hub();
    let refused = |err: OutputError| match err {
        OutputError::Offline(_) | OutputError::Timeout => {
            ApiError::Unavailable(format!("VM {}: {err}", target.vm))
        }
        OutputError::Guest(_) => ApiError::Conflict {
            field: None,
            message: format!("VM {}: {file}: {err}", target.vm),
        },
    };
    let (size, sha256) = match output_files::stat(hub, node_id, &target.vm_id, file)
        .await
        .map_err(refused)?
    {
        FileStat::Absent => {
            return Err(ApiError::NotFound {
                kind: "output file",
                id: format!("{}:{file}", target.vm),
            })
        }
        FileStat::Present {
            size,
            sha256: Some(sha256),
            ..
        } => (size, sha256),
        FileStat::Present { size, .. } => {
            return Err(ApiError::Conflict {
                field: None,
                message: format!(
                "VM {}: {file} is {size} bytes, more than the download limit of {MAX_OUTPUT_BYTES}",
                target.vm
            ),
            })
        }
    };
    let chunks = output_files::fetch(hub, node_id, &target.vm_id, file, size, sha256.clone())
        .await
        .map_err(refused)?;
    let body = Body::from_stream(futures::stream::unfold(chunks, |mut chunks| async move {
        chunks.recv().await.map(|chunk| (chunk, chunks))
    }));
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    if let Ok(value) = HeaderValue::from_str(&sha256) {
        headers.insert(OUTPUT_SHA256_HEADER, value);
    }
    // The file name, for a client that addressed the output by index; left
    // out when it would need quoting.
    let name = file.rsplit('/').next().unwrap_or_default();
    if name
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
            headers.insert(header::CONTENT_DISPOSITION, value);
        }
    }
    Ok(response)
}

/// `output` is an index into `outputs`, a declared path, or the file name
/// of exactly one declared path.
fn pick_output<'a>(outputs: &'a [String], output: &str) -> Result<&'a str, ApiError> {
    let invalid = |reason: String| ApiError::InvalidField {
        field: "output".into(),
        reason,
    };
    if let Ok(index) = output.parse::<usize>() {
        return outputs.get(index).map(String::as_str).ok_or_else(|| {
            invalid(format!(
                "index {index} is past the deployment's {} outputs",
                outputs.len()
            ))
        });
    }
    if let Some(path) = outputs.iter().find(|p| *p == output) {
        return Ok(path);
    }
    let named: Vec<&String> = outputs
        .iter()
        .filter(|p| p.rsplit('/').next() == Some(output))
        .collect();
    match named.as_slice() {
        [one] => Ok(one.as_str()),
        [] => Err(invalid(format!(
            "{output:?} is neither an index nor a declared output ({})",
            outputs.join(", ")
        ))),
        _ => Err(invalid(format!(
            "{output:?} names several outputs; use the index or the full path"
        ))),
    }
}

/// `vm` is a VM id or `platform/name`; it may be left out when the
/// deployment has one VM.
fn pick_vm<'a>(
    targets: &'a [OutputTarget],
    vm: Option<&str>,
) -> Result<&'a OutputTarget, ApiError> {
    let invalid = |reason: String| ApiError::InvalidField {
        field: "vm".into(),
        reason,
    };
    let names = || {
        targets
            .iter()
            .map(|t| t.vm.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match vm {
        None if targets.len() == 1 => Ok(&targets[0]),
        None => Err(invalid(format!(
            "the deployment runs on several VMs; choose one with ?vm= ({})",
            names()
        ))),
        Some(vm) => targets
            .iter()
            .find(|t| t.vm_id == vm || t.vm == vm)
            .ok_or_else(|| {
                invalid(format!(
                    "{vm:?} is not a VM of the deployment ({})",
                    names()
                ))
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_picked_by_index_path_or_unique_file_name() {
        let outputs = vec![
            "/var/lib/prog/capture.pcap".to_string(),
            "/tmp/summary.txt".to_string(),
            "/srv/summary.txt".to_string(),
        ];
        assert_eq!(pick_output(&outputs, "1").unwrap(), "/tmp/summary.txt");
        assert_eq!(
            pick_output(&outputs, "capture.pcap").unwrap(),
            "/var/lib/prog/capture.pcap"
        );
        assert_eq!(
            pick_output(&outputs, "/srv/summary.txt").unwrap(),
            "/srv/summary.txt"
        );
        let err = pick_output(&outputs, "summary.txt").unwrap_err();
        assert!(err.to_string().contains("several"), "{err}");
        let err = pick_output(&outputs, "3").unwrap_err();
        assert!(err.to_string().starts_with("output: index 3"), "{err}");
    }
}
