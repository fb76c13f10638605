//! `GET /v1/deployments/{id}/outputs` and
//! `GET /v1/deployments/{id}/outputs/{output}?vm=`: a deployment's declared
//! output files, listed per VM and downloaded (through `output_files`).
//!
//! Reading outputs is a read like the runs' stdout tails: every role of the
//! deployment's tenant may; another tenant gets 404, as for the deployment
//! itself. Only declared paths can be read, so this never becomes a way to
//! read arbitrary guest files without the member role `vm cp` needs.
//!
//! Replicas on one PostgreSQL database: a VM's files are read through the
//! exec channel of its node's agent, which streams to one replica. A
//! replica without it forwards the HTTP request itself (not exec sessions
//! of its own: those would need the member role) to the replica the
//! database names (`exec_forward`), with the caller's `Authorization`, so
//! that replica authorizes the caller as for any read. A download relays
//! that replica's answer as it streams; a listing asks each other replica
//! once and takes from its answer only the VMs whose channel it holds.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use std::collections::{BTreeMap, HashMap};

use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use measurelab_api::http::{DeploymentOutputs, OutputFile, VmOutputs, OUTPUT_SHA256_HEADER};

use super::error::ApiError;
use super::extract::QueryParams;
use super::state::AppState;
use crate::access::Principal;
use crate::exec_forward::{
    held_elsewhere, refusal_message, FORWARDED_HEADER, MAX_REFUSAL_BYTES, NO_ADVERTISE_URL,
    OPEN_TIMEOUT,
};
use crate::exec_hub::ExecHub;
use crate::output_files::{self, FileStat, OutputError, MAX_OUTPUT_BYTES, STAT_TIMEOUT};
use crate::store::programs::{self, OutputTarget};
use crate::store::ChannelHolder;

/// VMs looked at at once while listing (each takes one session per file).
const LIST_CONCURRENCY: usize = 8;
/// Largest listing read from another replica (a listing of the most VMs
/// and outputs a deployment has is far smaller).
const MAX_FORWARDED_LIST_BYTES: usize = 16 * 1024 * 1024;

pub(crate) async fn list(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
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
    // Which VMs another replica serves: asked once per node.
    let mut holders: HashMap<String, ChannelHolder> = HashMap::new();
    for node_id in targets.iter().filter_map(|t| t.node_id.as_deref()) {
        if holders.contains_key(node_id) {
            continue;
        }
        if let Some(holder) = holder_elsewhere(&state, node_id, &headers).await? {
            holders.insert(node_id.to_string(), holder);
        }
    }
    // One forwarded listing per other replica, all at once. That replica
    // looks at every VM of the deployment (it cannot tell which ones we
    // want), but one whose node it lacks fails at once without a session.
    let replicas: BTreeMap<&str, Option<&str>> = holders
        .values()
        .map(|h| (h.replica.as_str(), h.url.as_deref()))
        .collect();
    let answer_within = list_answer_time(deployment.outputs.len(), targets.len());
    let authorization = headers.get(header::AUTHORIZATION);
    let answers: HashMap<&str, Result<HashMap<String, VmOutputs>, String>> =
        futures::future::join_all(replicas.into_iter().map(|(replica, url)| {
            let state = &state;
            let deployment_id = deployment.id.as_str();
            async move {
                let Some(url) = url else {
                    return (replica, Err(NO_ADVERTISE_URL.to_string()));
                };
                let answer =
                    forwarded_list(state, url, deployment_id, authorization, answer_within)
                        .await
                        .map_err(|why| format!("and forwarding to {url} failed: {why}"));
                (replica, answer)
            }
        }))
        .await
        .into_iter()
        .collect();
    let hub = state.exec_hub().clone();
    let outputs = deployment.outputs.clone();
    let (holders, answers) = (&holders, &answers);
    let vms = futures::stream::iter(targets)
        .map(|target| {
            let hub = &hub;
            let outputs = &outputs;
            async move {
                let holder = target.node_id.as_ref().and_then(|n| holders.get(n));
                match holder {
                    None => list_vm(hub, target, outputs).await,
                    Some(holder) => listed_by(target, holder, answers),
                }
            }
        })
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

/// The other replica that serves reads of VMs on `node_id`; `None`: this
/// one does, because it holds the node's channel, or the request was
/// forwarded here already (never twice), or no replica holds it (the read
/// here then fails as it did before replicas forwarded).
async fn holder_elsewhere(
    state: &AppState,
    node_id: &str,
    headers: &HeaderMap,
) -> Result<Option<ChannelHolder>, ApiError> {
    if headers.contains_key(FORWARDED_HEADER) || state.exec_hub().holds(node_id) {
        return Ok(None);
    }
    Ok(state
        .store()
        .exec_channel_holder(node_id.to_string())
        .await?)
}

/// How long another replica may take to list: its sessions run
/// [`LIST_CONCURRENCY`] VMs at a time, one file after the other, each stat
/// within [`STAT_TIMEOUT`].
fn list_answer_time(outputs: usize, vms: usize) -> std::time::Duration {
    let rounds = vms.div_ceil(LIST_CONCURRENCY).max(1);
    STAT_TIMEOUT * (outputs.max(1) * rounds) as u32 + OPEN_TIMEOUT
}

/// The listing of deployment `deployment_id` by the replica at `url`, by
/// VM id; `Err`: why not.
async fn forwarded_list(
    state: &AppState,
    url: &str,
    deployment_id: &str,
    authorization: Option<&HeaderValue>,
    answer_within: std::time::Duration,
) -> Result<HashMap<String, VmOutputs>, String> {
    let path = format!("/v1/deployments/{}/outputs", encoded(deployment_id));
    let answer = state
        .exec_forwarder()
        .request(url, &path, authorization.cloned(), answer_within)
        .await
        .map_err(|err| err.to_string())?;
    let status = answer.status();
    let body = axum::body::to_bytes(Body::new(answer.into_body()), MAX_FORWARDED_LIST_BYTES)
        .await
        .map_err(|err| format!("its answer could not be read: {err}"))?;
    if !status.is_success() {
        return Err(format!("it answered {status}: {}", refusal_message(&body)));
    }
    let listing: DeploymentOutputs = serde_json::from_slice(&body)
        .map_err(|err| format!("its answer is not a listing of outputs: {err}"))?;
    Ok(listing
        .vms
        .into_iter()
        .map(|vm| (vm.vm_id.clone(), vm))
        .collect())
}

/// `target`'s entry from the listing of the replica holding its node's
/// channel, or an entry with why there is none.
fn listed_by(
    target: OutputTarget,
    holder: &ChannelHolder,
    answers: &HashMap<&str, Result<HashMap<String, VmOutputs>, String>>,
) -> VmOutputs {
    let node_id = target.node_id.as_deref().unwrap_or_default();
    let why = match answers.get(holder.replica.as_str()) {
        Some(Ok(vms)) => match vms.get(&target.vm_id) {
            Some(listed) => return listed.clone(),
            None => "and its listing does not have the VM".to_string(),
        },
        Some(Err(why)) => why.clone(),
        None => "which was not asked".to_string(),
    };
    VmOutputs {
        error: Some(held_elsewhere(node_id, &holder.replica, why)),
        vm: target.vm,
        vm_id: target.vm_id,
        files: Vec::new(),
    }
}

/// A path segment or query value for a forwarded request.
fn encoded(text: &str) -> percent_encoding::PercentEncode<'_> {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC)
}

pub(crate) async fn download(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
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
    if let Some(holder) = holder_elsewhere(&state, node_id, &headers).await? {
        let forward = ForwardedDownload {
            holder: &holder,
            node_id,
            deployment_id: &deployment.id,
            file,
            target,
        };
        return forward
            .relay(&state, headers.get(header::AUTHORIZATION))
            .await;
    }
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

/// A download of a VM whose node's channel another replica holds.
struct ForwardedDownload<'a> {
    holder: &'a ChannelHolder,
    node_id: &'a str,
    deployment_id: &'a str,
    /// The declared path (what the client addressed, resolved).
    file: &'a str,
    target: &'a OutputTarget,
}

impl ForwardedDownload<'_> {
    /// The same download asked of that replica, its answer relayed as it
    /// streams: status, the digest and length headers, the body. Its
    /// refusals for the file (404, 409) are the caller's answer; a failure
    /// to reach it, or its own 5xx, is a 503 naming it.
    async fn relay(
        self,
        state: &AppState,
        authorization: Option<&HeaderValue>,
    ) -> Result<Response, ApiError> {
        let refuse = |why: String| {
            ApiError::Unavailable(format!(
                "VM {}: {}",
                self.target.vm,
                held_elsewhere(self.node_id, &self.holder.replica, why)
            ))
        };
        let Some(url) = &self.holder.url else {
            return Err(refuse(NO_ADVERTISE_URL.into()));
        };
        let failed = |why: String| refuse(format!("and forwarding to {url} failed: {why}"));
        // The path, not the index the client may have used: it names the
        // same file even if the deployment's outputs change meanwhile.
        let path = format!(
            "/v1/deployments/{}/outputs/{}?vm={}",
            encoded(self.deployment_id),
            encoded(self.file),
            encoded(&self.target.vm_id)
        );
        // That replica stats the file before it answers, as we would.
        let answer = state
            .exec_forwarder()
            .request(
                url,
                &path,
                authorization.cloned(),
                STAT_TIMEOUT + OPEN_TIMEOUT,
            )
            .await
            .map_err(|err| failed(err.to_string()))?;
        let (mut parts, body) = answer.into_parts();
        if parts.status.is_server_error() {
            let body = axum::body::to_bytes(Body::new(body), MAX_REFUSAL_BYTES)
                .await
                .unwrap_or_default();
            return Err(failed(format!(
                "it answered {}: {}",
                parts.status,
                refusal_message(&body)
            )));
        }
        // How that connection framed the body is not how ours will.
        for name in [
            header::CONNECTION,
            header::TRANSFER_ENCODING,
            header::TE,
            header::TRAILER,
            header::UPGRADE,
        ] {
            parts.headers.remove(name);
        }
        parts.headers.remove("keep-alive");
        Ok(Response::from_parts(parts, Body::new(body)))
    }
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
