//! Program distribution: uploaded programs and their deployments onto VMs.

use std::collections::BTreeMap;

use crate::store::sql::{params, Connection, OptionalExtension};
use measurelab_api::http::{Deployment, DeploymentCreate, Program, ProgramRunState, TenantUsage};
use sha2::{Digest, Sha256};

use super::codec::{from_json, new_id, to_json};
use super::error::StoreError;
use super::resources::TxContext;
use super::{quotas, tenants, vms};
use crate::access::{Scope, TenantRef};
use crate::validation;

/// Largest program accepted (the mcast binaries are a few MiB).
pub(crate) const MAX_PROGRAM_BYTES: usize = 64 * 1024 * 1024;
const MAX_TAIL_BYTES: usize = 64 * 1024;
pub(crate) const RUN_STATUSES: &[&str] = &["pending", "running", "exited", "failed", "lost"];

fn program_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty() || name.len() > 128 {
        return Err(StoreError::invalid(
            "name",
            "must be 1 to 128 characters long",
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(StoreError::invalid(
            "name",
            format!("contains {c:?}; allowed are letters, digits, '.', '_', '-'"),
        ));
    }
    Ok(())
}

fn program_row(r: &crate::store::sql::Row<'_>) -> crate::store::sql::Result<Program> {
    Ok(Program {
        id: r.get(0)?,
        name: r.get(1)?,
        sha256: r.get(2)?,
        size_bytes: r.get::<i64>(3)? as u64,
        created_at: r.get(4)?,
        tenant_id: r.get(5)?,
    })
}

pub(crate) fn find(
    conn: &Connection,
    scope: &Scope,
    key: &str,
) -> Result<Option<Program>, StoreError> {
    let matches = conn
        .prepare_cached(
            "SELECT id, name, sha256, size_bytes, created_at, tenant_id FROM programs
             WHERE (id = ?1 OR name = ?1) AND (tenant_id = ?2 OR ?2 IS NULL)",
        )?
        .query_map(params![key, scope.tenant_id()], program_row)?
        .collect::<Result<Vec<_>, _>>()?;
    tenants::pick_one(conn, "program", key, matches, |p| {
        (p.id.as_str(), p.tenant_id.as_str())
    })
}

pub(crate) fn get(conn: &Connection, scope: &Scope, key: &str) -> Result<Program, StoreError> {
    find(conn, scope, key)?.ok_or_else(|| StoreError::NotFound {
        kind: "program",
        id: key.to_string(),
    })
}

pub(crate) fn list(conn: &Connection, scope: &Scope) -> Result<Vec<Program>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT id, name, sha256, size_bytes, created_at, tenant_id FROM programs
             WHERE tenant_id = ?1 OR ?1 IS NULL ORDER BY name, tenant_id",
        )?
        .query_map([scope.tenant_id()], program_row)?
        .collect::<Result<Vec<_>, _>>()?)
}

/// The content and checksum of a program.
pub(crate) fn content(
    conn: &Connection,
    id: &str,
) -> Result<Option<(Program, Vec<u8>)>, StoreError> {
    let Some(program) = find(conn, &Scope::All, id)? else {
        return Ok(None);
    };
    let content: Vec<u8> = conn.query_row(
        "SELECT content FROM programs WHERE id = ?1",
        [&program.id],
        |r| r.get(0),
    )?;
    Ok(Some((program, content)))
}

/// A program and its content, if it is deployed onto a VM of `node_id`: a
/// node gets only programs deployed onto its own VMs.
pub(crate) fn deployed_content(
    conn: &Connection,
    id: &str,
    node_id: &str,
) -> Result<Option<(Program, Vec<u8>)>, StoreError> {
    let deployed: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM program_runs r JOIN deployments d ON d.id = r.deployment_id
             WHERE d.program_id = ?1 AND r.node_id = ?2 LIMIT 1",
            [id, node_id],
            |r| r.get(0),
        )
        .optional()?;
    match deployed {
        Some(_) => content(conn, id),
        None => Ok(None),
    }
}

pub(crate) fn sha256_hex(content: &[u8]) -> String {
    hex::encode(Sha256::digest(content))
}

/// Checks a received program before its (short) write transaction: its size
/// and, when the uploader gave one, its SHA-256 (`actual`, hashed while it
/// arrived).
pub(crate) fn check_upload(
    size: usize,
    actual: &str,
    expected: Option<&str>,
) -> Result<(), StoreError> {
    if size > MAX_PROGRAM_BYTES {
        return Err(StoreError::invalid(
            "content_base64",
            format!("{size} bytes is more than {MAX_PROGRAM_BYTES} bytes"),
        ));
    }
    if let Some(expected) = expected {
        if !expected.eq_ignore_ascii_case(actual) {
            return Err(StoreError::invalid(
                "sha256",
                format!("the content's SHA-256 is {actual}, not {expected}; the upload is damaged or the checksum is wrong"),
            ));
        }
    }
    Ok(())
}

/// Upload. The same name with the same content returns the existing program
/// (so re-running an apply is harmless); the same name with other content is
/// a conflict.
pub(crate) fn create(
    cx: &mut TxContext<'_>,
    tenant: &TenantRef,
    name: String,
    content: Vec<u8>,
    sha256: String,
) -> Result<(Program, bool), StoreError> {
    program_name(&name)?;
    if let Some(existing) = find(cx.tx, &Scope::Tenant(tenant.id.clone()), &name)? {
        if existing.sha256 == sha256 {
            return Ok((existing, false));
        }
        return Err(StoreError::conflict(
            Some("name"),
            format!(
                "name: a program named {name:?} already exists with other content (sha256 {}); upload under a new name",
                existing.sha256
            ),
        ));
    }
    quotas::admit(
        cx,
        &tenant.id,
        &TenantUsage {
            program_bytes: content.len() as u64,
            ..TenantUsage::default()
        },
        quotas::Fields::VM,
    )?;
    let program = Program {
        id: new_id(),
        name,
        sha256,
        size_bytes: content.len() as u64,
        created_at: cx.now_text(),
        tenant_id: tenant.id.clone(),
    };
    cx.tx.execute(
        "INSERT INTO programs (id, name, sha256, size_bytes, content, created_at, tenant_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            program.id,
            program.name,
            program.sha256,
            program.size_bytes as i64,
            content,
            program.created_at,
            program.tenant_id
        ],
    )?;
    cx.event(
        Some(&program.tenant_id),
        "ProgramUploaded",
        "program",
        &program.id,
        format!(
            "program {} uploaded ({} bytes, sha256 {})",
            program.name, program.size_bytes, program.sha256
        ),
    )?;
    Ok((program, true))
}

pub(crate) fn delete(
    cx: &mut TxContext<'_>,
    scope: &Scope,
    key: &str,
) -> Result<Program, StoreError> {
    let program = get(cx.tx, scope, key)?;
    let active: Option<String> = cx
        .tx
        .query_row(
            "SELECT id FROM deployments WHERE program_id = ?1 AND stopped = 0 LIMIT 1",
            [&program.id],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(deployment) = active {
        return Err(StoreError::conflict(
            None,
            format!(
                "program {} is used by deployment {deployment}; delete the deployment first",
                program.name
            ),
        ));
    }
    cx.tx
        .execute("DELETE FROM program_runs WHERE deployment_id IN (SELECT id FROM deployments WHERE program_id = ?1)", [&program.id])?;
    cx.tx.execute(
        "DELETE FROM deployments WHERE program_id = ?1",
        [&program.id],
    )?;
    cx.tx
        .execute("DELETE FROM programs WHERE id = ?1", [&program.id])?;
    cx.event(
        Some(&program.tenant_id),
        "ProgramDeleted",
        "program",
        &program.id,
        format!("program {} deleted", program.name),
    )?;
    Ok(program)
}

/// A deployment row.
#[derive(Debug, Clone)]
pub(crate) struct DeploymentRow {
    pub id: String,
    /// The program's tenant.
    pub tenant_id: String,
    pub program_id: String,
    pub program_name: String,
    pub program_sha256: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub outputs: Vec<String>,
    pub stopped: bool,
    pub created_at: String,
}

/// A run row.
#[derive(Debug, Clone)]
pub(crate) struct RunRow {
    pub node_id: String,
    pub state: ProgramRunState,
}

fn deployment_row(r: &crate::store::sql::Row<'_>) -> Result<DeploymentRow, StoreError> {
    let args: String = r.get(4)?;
    let env: String = r.get(5)?;
    Ok(DeploymentRow {
        id: r.get(0)?,
        program_id: r.get(1)?,
        program_name: r.get(2)?,
        program_sha256: r.get(3)?,
        args: from_json("deployments.args", &args)?,
        env: from_json("deployments.env", &env)?,
        stopped: r.get::<i64>(6)? != 0,
        created_at: r.get(7)?,
        tenant_id: r.get(8)?,
        outputs: from_json("deployments.outputs", &r.get::<String>(9)?)?,
    })
}

const SELECT_DEPLOYMENT: &str =
    "SELECT d.id, d.program_id, p.name, p.sha256, d.args, d.env, d.stopped, d.created_at,
            p.tenant_id, d.outputs
     FROM deployments d JOIN programs p ON p.id = d.program_id";

pub(crate) fn find_deployment(
    conn: &Connection,
    scope: &Scope,
    id: &str,
) -> Result<Option<DeploymentRow>, StoreError> {
    let mut statement = conn.prepare_cached(&format!(
        "{SELECT_DEPLOYMENT} WHERE d.id = ?1 AND (p.tenant_id = ?2 OR ?2 IS NULL)"
    ))?;
    let mut rows = statement.query(params![id, scope.tenant_id()])?;
    match rows.next()? {
        Some(row) => Ok(Some(deployment_row(&row)?)),
        None => Ok(None),
    }
}

pub(crate) fn runs(conn: &Connection, deployment_id: &str) -> Result<Vec<RunRow>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT vm_id, vm_name, node_id, status, exit_code, stdout_tail, stderr_tail,
                    started_at, finished_at
             FROM program_runs WHERE deployment_id = ?1 ORDER BY vm_name",
        )?
        .query_map([deployment_id], |r| {
            Ok(RunRow {
                node_id: r.get(2)?,
                state: ProgramRunState {
                    vm_id: r.get(0)?,
                    vm: r.get(1)?,
                    status: r.get(3)?,
                    exit_code: r.get(4)?,
                    stdout_tail: r.get(5)?,
                    stderr_tail: r.get(6)?,
                    started_at: r.get(7)?,
                    finished_at: r.get(8)?,
                },
            })
        })?
        .collect::<Result<Vec<_>, _>>()?)
}

pub(crate) fn deployment_to_api(
    conn: &Connection,
    d: &DeploymentRow,
) -> Result<Deployment, StoreError> {
    Ok(Deployment {
        id: d.id.clone(),
        program: d.program_name.clone(),
        args: d.args.clone(),
        env: d.env.clone(),
        runs: runs(conn, &d.id)?.into_iter().map(|r| r.state).collect(),
        outputs: d.outputs.clone(),
        tenant_id: d.tenant_id.clone(),
        created_at: d.created_at.clone(),
    })
}

pub(crate) fn get_deployment(
    conn: &Connection,
    scope: &Scope,
    id: &str,
) -> Result<Deployment, StoreError> {
    let d = find_deployment(conn, scope, id)?.ok_or_else(|| StoreError::NotFound {
        kind: "deployment",
        id: id.to_string(),
    })?;
    deployment_to_api(conn, &d)
}

pub(crate) fn list_deployments(
    conn: &Connection,
    scope: &Scope,
) -> Result<Vec<Deployment>, StoreError> {
    let mut statement = conn.prepare_cached(&format!(
        "{SELECT_DEPLOYMENT} WHERE p.tenant_id = ?1 OR ?1 IS NULL ORDER BY d.created_at DESC"
    ))?;
    let mut rows = statement.query([scope.tenant_id()])?;
    let mut rows_out = Vec::new();
    while let Some(row) = rows.next()? {
        rows_out.push(deployment_row(&row)?);
    }
    rows_out
        .iter()
        .map(|d| deployment_to_api(conn, d))
        .collect()
}

/// Deploy a program `scope` sees onto VMs of the program's own tenant; a VM
/// of another tenant is "no VM", exactly like a missing one.
pub(crate) fn create_deployment(
    cx: &mut TxContext<'_>,
    scope: &Scope,
    input: DeploymentCreate,
) -> Result<Deployment, StoreError> {
    let program = find(cx.tx, scope, &input.program)?.ok_or_else(|| {
        StoreError::invalid(
            "program",
            format!("no program named {:?} was uploaded", input.program),
        )
    })?;
    if input.vms.is_empty() {
        return Err(StoreError::invalid("vms", "must list at least one VM"));
    }
    if input.args.len() > 256 {
        return Err(StoreError::invalid(
            "args",
            "at most 256 arguments are allowed",
        ));
    }
    for (i, arg) in input.args.iter().enumerate() {
        if arg.len() > 4096 || arg.contains('\0') {
            return Err(StoreError::invalid(
                format!("args[{i}]"),
                "must be at most 4096 bytes without NUL characters",
            ));
        }
    }
    for (key, value) in &input.env {
        let field = format!("env.{key}");
        if key.is_empty()
            || key.starts_with(|c: char| c.is_ascii_digit())
            || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(StoreError::invalid(
                field,
                "an environment variable name has letters, digits and '_' and does not start with a digit",
            ));
        }
        validation::short_text(&field, value, 4096)?;
    }
    check_outputs(&input.outputs)?;
    let program_scope = Scope::Tenant(program.tenant_id.clone());
    let mut targets: Vec<vms::VmRow> = Vec::new();
    for (i, key) in input.vms.iter().enumerate() {
        let field = format!("vms[{i}]");
        let vm = vms::find(cx.tx, &program_scope, key)
            .map_err(|e| StoreError::invalid(&field, e.to_string()))?
            .ok_or_else(|| StoreError::invalid(&field, format!("no VM {key:?} exists")))?;
        if vm.deleting {
            return Err(StoreError::invalid(
                &field,
                format!("VM {key:?} is being deleted"),
            ));
        }
        if targets.iter().any(|t| t.id == vm.id) {
            return Err(StoreError::invalid(
                &field,
                format!("VM {key:?} is listed twice"),
            ));
        }
        targets.push(vm);
    }
    let id = new_id();
    cx.tx.execute(
        "INSERT INTO deployments (id, program_id, args, env, stopped, created_at, outputs)
         VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6)",
        params![
            id,
            program.id,
            to_json(&input.args),
            to_json(&input.env),
            cx.now_text(),
            to_json(&input.outputs)
        ],
    )?;
    for vm in &targets {
        cx.tx.execute(
            "INSERT INTO program_runs (deployment_id, vm_id, vm_name, node_id, status)
             VALUES (?1, ?2, ?3, ?4, 'pending')",
            params![
                id,
                vm.id,
                format!("{}/{}", vm.platform_name, vm.name),
                vm.node_id
            ],
        )?;
        cx.touch_node(&vm.node_id)?;
    }
    cx.event(
        Some(&program.tenant_id),
        "DeploymentCreated",
        "deployment",
        &id,
        format!(
            "program {} deployed to {} VM(s)",
            program.name,
            targets.len()
        ),
    )?;
    get_deployment(cx.tx, &program_scope, &id)
}

/// Where one VM of a deployment runs now, for reading its output files.
#[derive(Debug, Clone)]
pub(crate) struct OutputTarget {
    /// `platform/name` as the run recorded it.
    pub vm: String,
    pub vm_id: String,
    /// `None` once the VM is gone.
    pub node_id: Option<String>,
}

/// The deployment `scope` sees (or `NotFound`) and its VMs' current nodes.
pub(crate) fn output_targets(
    conn: &Connection,
    scope: &Scope,
    id: &str,
) -> Result<(DeploymentRow, Vec<OutputTarget>), StoreError> {
    let d = find_deployment(conn, scope, id)?.ok_or_else(|| StoreError::NotFound {
        kind: "deployment",
        id: id.to_string(),
    })?;
    let program_scope = Scope::Tenant(d.tenant_id.clone());
    let mut targets = Vec::new();
    for run in runs(conn, &d.id)? {
        let node_id = vms::find(conn, &program_scope, &run.state.vm_id)?.map(|vm| vm.node_id);
        targets.push(OutputTarget {
            vm: run.state.vm,
            vm_id: run.state.vm_id,
            node_id,
        });
    }
    Ok((d, targets))
}

fn check_outputs(outputs: &[String]) -> Result<(), StoreError> {
    measurelab_api::http::check_outputs(outputs)
        .map_err(|(field, reason)| StoreError::invalid(field, reason))
}

/// Replaces a deployment's output list. The runs are untouched (outputs
/// are read only when asked for), so no node is touched either.
pub(crate) fn set_outputs(
    cx: &mut TxContext<'_>,
    scope: &Scope,
    id: &str,
    outputs: Vec<String>,
) -> Result<Deployment, StoreError> {
    check_outputs(&outputs)?;
    let d = find_deployment(cx.tx, scope, id)?.ok_or_else(|| StoreError::NotFound {
        kind: "deployment",
        id: id.to_string(),
    })?;
    cx.tx.execute(
        "UPDATE deployments SET outputs = ?2 WHERE id = ?1",
        params![d.id, to_json(&outputs)],
    )?;
    get_deployment(cx.tx, scope, &d.id)
}

/// Stop: the runs leave the nodes' desired state, so the agents stop them;
/// unfinished runs become `stopped` and later reports about them are ignored.
pub(crate) fn stop_deployment(
    cx: &mut TxContext<'_>,
    scope: &Scope,
    id: &str,
) -> Result<Deployment, StoreError> {
    let d = find_deployment(cx.tx, scope, id)?.ok_or_else(|| StoreError::NotFound {
        kind: "deployment",
        id: id.to_string(),
    })?;
    if !d.stopped {
        cx.tx
            .execute("UPDATE deployments SET stopped = 1 WHERE id = ?1", [&d.id])?;
        // Unfinished runs end here; finished ones keep their exit status.
        cx.tx.execute(
            "UPDATE program_runs SET status = 'stopped', finished_at = COALESCE(finished_at, ?2)
             WHERE deployment_id = ?1 AND status IN ('pending', 'running')",
            params![d.id, cx.now_text()],
        )?;
        for run in runs(cx.tx, &d.id)? {
            cx.touch_node(&run.node_id)?;
        }
        cx.event(
            Some(&d.tenant_id),
            "DeploymentStopped",
            "deployment",
            &d.id,
            format!("deployment of program {} stopped", d.program_name),
        )?;
    }
    get_deployment(cx.tx, scope, &d.id)
}

/// Runs the node should be running: not stopped, not finished.
pub(crate) fn active_runs_of_node(
    conn: &Connection,
    node_id: &str,
) -> Result<Vec<(DeploymentRow, String)>, StoreError> {
    let pairs: Vec<(String, String)> = conn
        .prepare_cached(
            "SELECT r.deployment_id, r.vm_id FROM program_runs r
             JOIN deployments d ON d.id = r.deployment_id
             WHERE r.node_id = ?1 AND d.stopped = 0 AND r.status IN ('pending', 'running')
             ORDER BY d.created_at",
        )?
        .query_map([node_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::new();
    for (deployment, vm) in pairs {
        if let Some(d) = find_deployment(conn, &Scope::All, &deployment)? {
            out.push((d, vm));
        }
    }
    Ok(out)
}

fn tail(text: &str) -> &str {
    if text.len() <= MAX_TAIL_BYTES {
        return text;
    }
    let mut start = text.len() - MAX_TAIL_BYTES;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Whether node `node_id` runs deployment `deployment_id` on VM `vm_id`
/// (in any status: a late report of a stopped run is not an error).
pub(crate) fn run_exists(
    conn: &crate::store::sql::Connection,
    node_id: &str,
    deployment_id: &str,
    vm_id: &str,
) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM program_runs WHERE deployment_id = ?1 AND vm_id = ?2 AND node_id = ?3",
        )?
        .exists(params![deployment_id, vm_id, node_id])?)
}

/// A run status from the node agent (only for runs on that node).
pub(crate) fn save_run_status(
    cx: &TxContext<'_>,
    node_id: &str,
    run: &measurelab_api::node_v1::ProgramRunStatus,
) -> Result<bool, StoreError> {
    let status = run.status.as_str();
    if !RUN_STATUSES.contains(&status) {
        return Err(StoreError::invalid(
            "program_runs.status",
            format!("{status:?} is not one of {}", RUN_STATUSES.join(", ")),
        ));
    }
    let now = cx.now_text();
    let finished = matches!(status, "exited" | "failed" | "lost");
    let changed = cx.tx.execute(
        "UPDATE program_runs SET status = ?4, exit_code = ?5, stdout_tail = ?6, stderr_tail = ?7,
                started_at = COALESCE(started_at, CASE WHEN ?4 != 'pending' THEN ?8 END),
                finished_at = CASE WHEN ?9 THEN COALESCE(finished_at, ?8) ELSE NULL END
         WHERE deployment_id = ?1 AND vm_id = ?2 AND node_id = ?3 AND status != 'stopped'",
        params![
            run.deployment_id,
            run.vm_id,
            node_id,
            status,
            run.exit_code,
            tail(&run.stdout_tail),
            tail(&run.stderr_tail),
            now,
            finished
        ],
    )?;
    Ok(changed > 0)
}
