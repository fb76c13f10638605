//! The NodeService calls about what a node runs: GetDesiredState,
//! ReportStatus, FetchProgram, PostResult and PollTasks. `agent_rpc` owns the
//! service and forwards these here; every call is authenticated with the
//! node id + secret. WatchDesiredState's stream lives in `agent_rpc`; its
//! source (the node's generation, announced after each commit) is here.

use crate::access::Scope;
use futures::TryStreamExt;
use measurelab_api::node_v1::{
    ApplianceChunk, DesiredState, DesiredStateRequest, FetchApplianceRequest, FetchProgramRequest,
    PollTasksRequest, PostResultAck, PostResultRequest, ProgramBlob, StatusAck, StatusReport,
    TaskList,
};

use super::error::RpcError;
use crate::appliance_files::{check_digest, ApplianceFileError};
use crate::store::{
    appliances, comparisons, desired, programs, tasks, to_json, vms, Registry, Store, StoreError,
};

/// Most VM statuses (and guest reports, program runs) in one report.
const MAX_REPORT_ITEMS: usize = 10_000;

pub(super) fn authenticate(
    store: &Store,
    node_id: &str,
    node_secret: &str,
) -> Result<(), RpcError> {
    if node_id.is_empty() {
        return Err(RpcError::InvalidArgument {
            field: "node_id".into(),
            reason: "must not be empty; register first".into(),
        });
    }
    if node_secret.is_empty() {
        return Err(RpcError::InvalidArgument {
            field: "node_secret".into(),
            reason: "must not be empty".into(),
        });
    }
    Ok(store.authenticate(node_id, node_secret)?)
}

/// Generation of the node's desired state, from the in-memory mirror.
pub(crate) fn desired_generation(store: &Store, node_id: &str) -> u64 {
    store.resources().node_generation(node_id)
}

/// Follow the node's desired-state generation (WatchDesiredState), after
/// checking its credentials.
pub(crate) fn watch_desired_generation(
    store: &Store,
    node_id: &str,
    node_secret: &str,
) -> Result<tokio::sync::watch::Receiver<u64>, RpcError> {
    authenticate(store, node_id, node_secret)?;
    Ok(store.resources().watch_node_generation(node_id))
}

/// Whether the node's credentials still hold (a forgotten node's stream ends).
pub(crate) fn still_authenticated(store: &Store, node_id: &str, node_secret: &str) -> bool {
    authenticate(store, node_id, node_secret).is_ok()
}

pub(crate) async fn desired_state(
    store: &Store,
    request: DesiredStateRequest,
) -> Result<DesiredState, RpcError> {
    authenticate(store, &request.node_id, &request.node_secret)?;
    let node_id = request.node_id;
    // Generation and state come from one read on the resource connection,
    // which no transaction can interleave with, so they match.
    Ok(store
        .resources()
        .read(move |conn, registry| {
            let generation = desired::generation(conn, &node_id)?;
            desired::desired_state(conn, registry, &node_id, generation)
        })
        .await?)
}

pub(crate) async fn report_status(
    store: &Store,
    report: StatusReport,
) -> Result<StatusAck, RpcError> {
    authenticate(store, &report.node_id, &report.node_secret)?;
    for (field, len) in [
        ("vms", report.vms.len()),
        ("guests", report.guests.len()),
        ("program_runs", report.program_runs.len()),
        ("gateways", report.gateways.len()),
    ] {
        if len > MAX_REPORT_ITEMS {
            return Err(RpcError::InvalidArgument {
                field: field.into(),
                reason: format!("has {len} entries; at most {MAX_REPORT_ITEMS} per report"),
            });
        }
    }
    let node_id = report.node_id.clone();
    let outcome = store
        .resources()
        .transact(move |cx| desired::apply_report(cx, &report.node_id, &report))
        .await?;
    if let Some(first) = outcome.refused.first() {
        // One line per report, not per item: a hostile guest can make many.
        tracing::warn!(
            node = %node_id,
            refused = outcome.refused.len(),
            first = %first.reason,
            "status report items refused; the rest were applied"
        );
    }
    Ok(StatusAck {
        desired_generation: desired_generation(store, &node_id),
        refused: outcome.refused,
    })
}

pub(crate) async fn fetch_program(
    store: &Store,
    request: FetchProgramRequest,
) -> Result<ProgramBlob, RpcError> {
    authenticate(store, &request.node_id, &request.node_secret)?;
    let node_id = request.node_id;
    let program_id = request.program_id;
    store
        .resources()
        .read(move |conn, _| {
            let found = programs::deployed_content(conn, &program_id, &node_id)?;
            let (program, content) = found.ok_or_else(|| StoreError::NotFound {
                kind: "program deployed to this node",
                id: program_id.clone(),
            })?;
            Ok(ProgramBlob {
                sha256: program.sha256,
                content,
                name: program.name,
            })
        })
        .await
        .map_err(RpcError::from)
}

/// Server-side stream of FetchAppliance.
pub(crate) type ApplianceStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<ApplianceChunk, tonic::Status>> + Send + 'static>,
>;

/// A stored appliance file, for a node with a VM that boots it.
pub(crate) async fn fetch_appliance(
    store: &Store,
    request: FetchApplianceRequest,
) -> Result<ApplianceStream, RpcError> {
    authenticate(store, &request.node_id, &request.node_secret)?;
    let sha256 = request.sha256;
    check_digest(&sha256).map_err(|e| RpcError::InvalidArgument {
        field: "sha256".into(),
        reason: e.to_string(),
    })?;
    let node_id = request.node_id;
    let (key, node) = (sha256.clone(), node_id.clone());
    let used = store
        .resources()
        .read(move |conn, _| appliances::node_uses_file(conn, &node, &key))
        .await?;
    let not_found = || {
        RpcError::NotFound(format!(
            "sha256: no appliance of a VM on node {node_id} has the file {sha256}"
        ))
    };
    if !used {
        return Err(not_found());
    }
    let unavailable = |e: ApplianceFileError| RpcError::Unavailable(e.to_string());
    let (total_bytes, chunks) = store
        .appliance_files()
        .read(&sha256)
        .await
        .map_err(unavailable)?
        .ok_or_else(not_found)?;
    let mut first = true;
    Ok(Box::pin(
        chunks
            .map_ok(move |data| ApplianceChunk {
                data,
                total_bytes: if std::mem::take(&mut first) {
                    total_bytes
                } else {
                    0
                },
            })
            .map_err(|e| RpcError::Unavailable(e.to_string()).into()),
    ))
}

pub(crate) async fn post_result(
    store: &Store,
    request: PostResultRequest,
) -> Result<PostResultAck, RpcError> {
    authenticate(store, &request.node_id, &request.node_secret)?;
    if request.document_json.len() > tasks::MAX_DOCUMENT_BYTES {
        return Err(RpcError::InvalidArgument {
            field: "document_json".into(),
            reason: format!("is larger than {} bytes", tasks::MAX_DOCUMENT_BYTES),
        });
    }
    let document: serde_json::Value =
        serde_json::from_str(&request.document_json).map_err(|e| RpcError::InvalidArgument {
            field: "document_json".into(),
            reason: format!("is not JSON: {e}"),
        })?;
    let result_id = store
        .resources()
        .transact(move |cx| {
            let Some(task) = tasks::find(cx.tx, &Scope::All, &request.task_id)? else {
                // A service host posting the run of a comparison: the id is
                // the comparison's, and the document lands in the platform
                // result it is compared with.
                if request.vm_id.is_empty() && comparisons::exists(cx.tx, &request.task_id)? {
                    let node = cx
                        .registry
                        .by_id(&request.node_id)
                        .map(|n| n.name.clone())
                        .unwrap_or_default();
                    let typed = tasks::typed_document(&document)?;
                    return comparisons::complete(cx, &request.task_id, &node, document, typed);
                }
                return Err(StoreError::invalid(
                    "task_id",
                    format!("no task {:?} exists", request.task_id),
                ));
            };
            check_task_scope(cx.tx, cx.registry, &request.node_id, &request.vm_id, &task)?;
            Ok(
                tasks::insert_result(cx, &Scope::All, &task.task.id, document)?
                    .0
                    .id,
            )
        })
        .await?;
    Ok(PostResultAck { result_id })
}

/// A guest may post only for its platform's tasks, a service host only for
/// tasks that list its node.
fn check_task_scope(
    conn: &crate::store::sql::Connection,
    registry: &Registry,
    node_id: &str,
    vm_id: &str,
    task: &tasks::TaskRow,
) -> Result<(), StoreError> {
    if vm_id.is_empty() {
        let name = registry
            .by_id(node_id)
            .map(|n| n.name.clone())
            .unwrap_or_default();
        if task.task.mode != "service_host" || !task.task.nodes.contains(&name) {
            return Err(StoreError::invalid(
                "task_id",
                format!(
                    "task {} is not a service-host task of node {name}",
                    task.task.name
                ),
            ));
        }
        return Ok(());
    }
    let vm = vms::get_by_id(conn, vm_id)?
        .filter(|vm| vm.node_id == node_id)
        .ok_or_else(|| StoreError::invalid("vm_id", format!("this node hosts no VM {vm_id:?}")))?;
    if task.platform_id.as_deref() != Some(vm.platform_id.as_str()) {
        return Err(StoreError::invalid(
            "task_id",
            format!(
                "task {} does not belong to platform {} of VM {}",
                task.task.name, vm.platform_name, vm.name
            ),
        ));
    }
    Ok(())
}

/// Tasks a poll found still `pending`, marked `running` off the poll's path:
/// PollTasks itself only reads, so a guest polling in a loop costs no write
/// transaction. Each task is queued at most once while its write is under
/// way, and once it is `running` later polls queue nothing: a task costs at
/// most a write or two over its life, however often it is polled.
#[derive(Default)]
pub(crate) struct RunningMarks {
    queued: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl RunningMarks {
    fn schedule(self: &std::sync::Arc<Self>, store: &Store, ids: Vec<String>) {
        let fresh: Vec<String> = {
            let mut queued = self.queued.lock().unwrap_or_else(|e| e.into_inner());
            ids.into_iter()
                .filter(|id| queued.insert(id.clone()))
                .collect()
        };
        if fresh.is_empty() {
            return;
        }
        let (this, store) = (self.clone(), store.clone());
        tokio::spawn(async move {
            let ids = fresh.clone();
            if let Err(err) = store
                .resources()
                .transact(move |cx| tasks::mark_running(cx, &ids))
                .await
            {
                // The next poll still sees them pending and queues them again.
                tracing::warn!(error = %err, "cannot mark polled tasks running");
            }
            let mut queued = this.queued.lock().unwrap_or_else(|e| e.into_inner());
            for id in &fresh {
                queued.remove(id);
            }
        });
    }
}

pub(crate) async fn poll_tasks(
    store: &Store,
    marks: &std::sync::Arc<RunningMarks>,
    request: PollTasksRequest,
) -> Result<TaskList, RpcError> {
    authenticate(store, &request.node_id, &request.node_secret)?;
    let open = store
        .resources()
        .read(move |conn, registry| {
            if request.vm_id.is_empty() {
                let name = registry
                    .by_id(&request.node_id)
                    .map(|n| n.name.clone())
                    .unwrap_or_default();
                tasks::of_service_host(conn, &name)
            } else {
                let vm = vms::get_by_id(conn, &request.vm_id)?
                    .filter(|vm| vm.node_id == request.node_id)
                    .ok_or_else(|| {
                        StoreError::invalid(
                            "vm_id",
                            format!("this node hosts no VM {:?}", request.vm_id),
                        )
                    })?;
                tasks::of_platform(conn, &vm.platform_id)
            }
        })
        .await?;
    let pending: Vec<String> = open
        .iter()
        .filter(|t| t.status == "pending")
        .map(|t| t.id.clone())
        .collect();
    if !pending.is_empty() {
        marks.schedule(store, pending);
    }
    let list = open
        .into_iter()
        .map(|mut t| {
            // What the guest sees is what the store is about to say.
            if t.status == "pending" {
                t.status = "running".into();
            }
            to_json(&t)
        })
        .collect();
    Ok(TaskList { tasks_json: list })
}
