//! Measurement tasks and their results (the result history of a periodic task).

use std::net::Ipv4Addr;

use crate::store::sql::{params, Connection, OptionalExtension};
use measurelab_api::http::{ResultRecord, Task, TaskCreate};
use measurelab_api::result::{
    ResultDocument, ResultError, RunStatus, DEFAULT_BOTTLENECK_DELAY_STDDEV_US,
    DEFAULT_BOTTLENECK_LOSS_THRESHOLD,
};
use measurelab_inference::InferenceConfig;
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::codec::{from_json, new_id, to_json};
use super::error::StoreError;
use super::resources::TxContext;
use super::{comparisons, control_keys, platforms, run_tree, tenants};
use crate::access::{Scope, TenantRef};
use crate::validation;

/// Largest result document accepted (a run with hundreds of receivers).
pub(crate) const MAX_DOCUMENT_BYTES: usize = 4 * 1024 * 1024;

fn task_from_row(
    spec: &str,
    status: String,
    last_result_id: Option<String>,
    tenant_id: String,
) -> Result<Task, StoreError> {
    let mut task: Task = from_json("tasks.spec", spec)?;
    task.status = status;
    task.last_result_id = last_result_id;
    task.tenant_id = tenant_id;
    Ok(task)
}

/// A task and the platform it runs on.
#[derive(Debug, Clone)]
pub(crate) struct TaskRow {
    pub task: Task,
    pub platform_id: Option<String>,
}

fn read(
    conn: &Connection,
    filter: &str,
    args: &[&dyn crate::store::sql::ToValue],
) -> Result<Vec<TaskRow>, StoreError> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT spec, status, last_result_id, platform_id, tenant_id FROM tasks {filter}"
    ))?;
    let mut rows = statement.query(args)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let spec: String = row.get(0)?;
        out.push(TaskRow {
            task: task_from_row(&spec, row.get(1)?, row.get(2)?, row.get(4)?)?,
            platform_id: row.get(3)?,
        });
    }
    Ok(out)
}

pub(crate) fn find(
    conn: &Connection,
    scope: &Scope,
    key: &str,
) -> Result<Option<TaskRow>, StoreError> {
    let matches = read(
        conn,
        "WHERE (id = ?1 OR name = ?1) AND (tenant_id = ?2 OR ?2 IS NULL)",
        &[&key, &scope.tenant_id()],
    )?;
    tenants::pick_one(conn, "task", key, matches, |t| {
        (t.task.id.as_str(), t.task.tenant_id.as_str())
    })
}

pub(crate) fn get(conn: &Connection, scope: &Scope, key: &str) -> Result<TaskRow, StoreError> {
    find(conn, scope, key)?.ok_or_else(|| StoreError::NotFound {
        kind: "task",
        id: key.to_string(),
    })
}

pub(crate) fn list(conn: &Connection, scope: &Scope) -> Result<Vec<Task>, StoreError> {
    Ok(read(
        conn,
        "WHERE tenant_id = ?1 OR ?1 IS NULL ORDER BY name, tenant_id",
        &[&scope.tenant_id()],
    )?
    .into_iter()
    .map(|t| t.task)
    .collect())
}

/// Open tasks of a platform's MSCS.
pub(crate) fn of_platform(conn: &Connection, platform_id: &str) -> Result<Vec<Task>, StoreError> {
    Ok(read(
        conn,
        "WHERE platform_id = ?1 AND status IN ('pending', 'running') ORDER BY created_at",
        &[&platform_id],
    )?
    .into_iter()
    .map(|t| t.task)
    .collect())
}

/// Open service-host tasks that list the node.
pub(crate) fn of_service_host(conn: &Connection, node_name: &str) -> Result<Vec<Task>, StoreError> {
    Ok(read(
        conn,
        "WHERE platform_id IS NULL AND status IN ('pending', 'running') ORDER BY created_at",
        &[],
    )?
    .into_iter()
    .map(|t| t.task)
    .filter(|t| t.nodes.iter().any(|n| n == node_name))
    .collect())
}

fn range(field: &str, value: u64, min: u64, max: u64) -> Result<(), StoreError> {
    if !(min..=max).contains(&value) {
        return Err(StoreError::invalid(
            field,
            format!("{value} is out of range {min}..={max}"),
        ));
    }
    Ok(())
}

/// Create a task: a platform task on a platform `scope` sees, in that
/// platform's tenant; a service_host task in `tenant`.
pub(crate) fn create(
    cx: &mut TxContext<'_>,
    scope: &Scope,
    tenant: &TenantRef,
    input: TaskCreate,
) -> Result<TaskRow, StoreError> {
    validation::dns_label("name", &input.name)?;
    let (platform, nodes) = match input.mode.as_str() {
        "platform" => {
            if input.nodes.as_ref().is_some_and(|n| !n.is_empty()) {
                return Err(StoreError::invalid(
                    "nodes",
                    "only for mode service_host; a platform task runs on the platform's MSCS",
                ));
            }
            let key = input.platform.as_deref().ok_or_else(|| {
                StoreError::invalid("platform", "is required when mode is \"platform\"")
            })?;
            let platform = platforms::find(cx.tx, scope, key)?.ok_or_else(|| {
                StoreError::invalid("platform", format!("no platform named {key:?} exists"))
            })?;
            (Some(platform), Vec::new())
        }
        "service_host" => {
            if input.platform.is_some() {
                return Err(StoreError::invalid(
                    "platform",
                    "only for mode platform; a service_host task lists nodes",
                ));
            }
            let keys = input.nodes.clone().unwrap_or_default();
            if keys.len() < 2 {
                return Err(StoreError::invalid(
                    "nodes",
                    "a service_host task needs at least two nodes (one source, one receiver)",
                ));
            }
            let mut names: Vec<String> = Vec::new();
            for (i, key) in keys.iter().enumerate() {
                let node = cx.registry.by_id_or_name(key).ok_or_else(|| {
                    StoreError::invalid(
                        format!("nodes[{i}]"),
                        format!("no node named {key:?} is registered"),
                    )
                })?;
                if names.contains(&node.name) {
                    return Err(StoreError::invalid(
                        format!("nodes[{i}]"),
                        "is listed twice",
                    ));
                }
                if node.capabilities.service_endpoint.is_empty() {
                    return Err(StoreError::invalid(
                        format!("nodes[{i}]"),
                        format!(
                            "node {:?} runs no service host (its agent reports no service \
                             endpoint; start the agent with --service-address)",
                            node.name
                        ),
                    ));
                }
                names.push(node.name.clone());
            }
            (None, names)
        }
        other => {
            return Err(StoreError::invalid(
                "mode",
                format!("{other:?} is not one of platform, service_host"),
            ))
        }
    };
    if !matches!(input.schedule.as_str(), "once" | "periodic") {
        return Err(StoreError::invalid(
            "schedule",
            format!("{:?} is not one of once, periodic", input.schedule),
        ));
    }
    let duration = input.duration_seconds.unwrap_or(30);
    range("duration_seconds", duration, 1, 3600)?;
    let interval = input.interval_seconds.unwrap_or(300);
    if input.schedule == "periodic" {
        range("interval_seconds", interval, 10, 7 * 86400)?;
        if interval <= duration {
            return Err(StoreError::invalid(
                "interval_seconds",
                format!("{interval} s must be longer than duration_seconds ({duration} s)"),
            ));
        }
    } else if input.interval_seconds.is_some() {
        return Err(StoreError::invalid(
            "interval_seconds",
            "only for schedule periodic",
        ));
    }
    range("rate_pps", input.rate_pps, 1, 100_000)?;
    range("packet_size_bytes", input.packet_size_bytes, 64, 8972)?;
    range("ttl", u64::from(input.ttl), 1, 255)?;
    range("port", u64::from(input.port), 1024, 65535)?;
    let group: Ipv4Addr = input.group.parse().map_err(|_| {
        StoreError::invalid("group", format!("{:?} is not an IPv4 address", input.group))
    })?;
    if !group.is_multicast() {
        return Err(StoreError::invalid(
            "group",
            format!("{group} is not a multicast address (224.0.0.0/4)"),
        ));
    }
    if input.ssm && group.octets()[0] != 232 {
        return Err(StoreError::invalid(
            "group",
            format!("{group} is outside 232.0.0.0/8, the SSM range; set ssm = false or pick a 232.x group"),
        ));
    }
    if let Some(source) = &input.source {
        validation::short_text("source", source, 128)?;
    }
    let receivers = input.receivers.clone().unwrap_or_default();
    for (i, r) in receivers.iter().enumerate() {
        if r.is_empty() {
            return Err(StoreError::invalid(
                format!("receivers[{i}]"),
                "must not be empty",
            ));
        }
        validation::short_text(&format!("receivers[{i}]"), r, 128)?;
    }
    let loss_threshold = input
        .bottleneck_loss_threshold
        .unwrap_or(DEFAULT_BOTTLENECK_LOSS_THRESHOLD);
    if !(0.0..1.0).contains(&loss_threshold) {
        return Err(StoreError::invalid(
            "bottleneck_loss_threshold",
            format!("{loss_threshold} is not a loss ratio in [0, 1)"),
        ));
    }
    let delay_threshold = input
        .bottleneck_delay_stddev_us
        .unwrap_or(DEFAULT_BOTTLENECK_DELAY_STDDEV_US);
    if !(delay_threshold.is_finite() && delay_threshold > 0.0) {
        return Err(StoreError::invalid(
            "bottleneck_delay_stddev_us",
            format!("{delay_threshold} is not a positive number of microseconds"),
        ));
    }
    if input.compare_with_service_host {
        check_compare(cx, platform.as_ref())?;
    }
    let tenant = match &platform {
        Some(p) if p.tenant_id != tenant.id => TenantRef {
            name: tenants::names(cx.tx, std::slice::from_ref(&p.tenant_id))?
                .pop()
                .unwrap_or_else(|| p.tenant_id.clone()),
            id: p.tenant_id.clone(),
        },
        _ => tenant.clone(),
    };
    if find(cx.tx, &Scope::Tenant(tenant.id.clone()), &input.name)?.is_some() {
        return Err(StoreError::conflict(
            Some("name"),
            format!(
                "name: tenant {} already has a task named {:?}",
                tenant.name, input.name
            ),
        ));
    }
    let task = Task {
        id: new_id(),
        name: input.name,
        mode: input.mode,
        platform: platform.as_ref().map(|p| p.name.clone()),
        nodes,
        schedule: input.schedule,
        interval_seconds: interval,
        duration_seconds: duration,
        rate_pps: input.rate_pps,
        packet_size_bytes: input.packet_size_bytes,
        group: group.to_string(),
        port: input.port,
        ttl: input.ttl,
        ssm: input.ssm,
        source: input.source,
        receivers,
        bottleneck_loss_threshold: loss_threshold,
        bottleneck_delay_stddev_us: delay_threshold,
        status: "pending".into(),
        last_result_id: None,
        tenant_id: tenant.id.clone(),
        created_at: cx.now_text(),
        compare_with_service_host: input.compare_with_service_host,
    };
    let platform_id = platform.as_ref().map(|p| p.id.clone());
    cx.tx.execute(
        "INSERT INTO tasks (id, name, spec, platform_id, status, last_result_id, created_at,
                            tenant_id)
         VALUES (?1, ?2, ?3, ?4, 'pending', NULL, ?5, ?6)",
        params![
            task.id,
            task.name,
            to_json(&task),
            platform_id,
            task.created_at,
            task.tenant_id
        ],
    )?;
    control_keys::create(cx, &task.id)?;
    touch_task_nodes(cx, &task, platform.as_ref().map(|p| p.node_ids.clone()))?;
    cx.event(
        Some(&task.tenant_id),
        "TaskCreated",
        "task",
        &task.id,
        format!(
            "{} task {} created ({} on {})",
            task.schedule,
            task.name,
            task.mode,
            task.platform
                .clone()
                .unwrap_or_else(|| task.nodes.join(", "))
        ),
    )?;
    Ok(TaskRow { task, platform_id })
}

/// `compare_with_service_host` needs a platform task on nodes that all run a
/// service host (each may end up hosting the source).
fn check_compare(
    cx: &TxContext<'_>,
    platform: Option<&platforms::PlatformRow>,
) -> Result<(), StoreError> {
    const FIELD: &str = "compare_with_service_host";
    let platform = platform.ok_or_else(|| {
        StoreError::invalid(
            FIELD,
            "only for mode platform; a service_host task already runs on the service hosts",
        )
    })?;
    for id in &platform.node_ids {
        let node = platforms::node_name(cx.registry, id);
        if cx
            .registry
            .by_id(id)
            .is_none_or(|n| n.capabilities.service_endpoint.is_empty())
        {
            return Err(StoreError::invalid(
                FIELD,
                format!("node {node:?} of platform {} runs no service host to compare with (its agent reports no service endpoint; start it with --service-address)", platform.name),
            ));
        }
    }
    Ok(())
}

/// Service-host tasks are part of a node's desired state.
fn touch_task_nodes(
    cx: &mut TxContext<'_>,
    task: &Task,
    _platform_nodes: Option<Vec<String>>,
) -> Result<(), StoreError> {
    if task.mode == "service_host" {
        let ids: Vec<String> = task
            .nodes
            .iter()
            .filter_map(|n| cx.registry.by_id_or_name(n).map(|e| e.id.clone()))
            .collect();
        for id in ids {
            cx.touch_node(&id)?;
        }
    }
    Ok(())
}

pub(crate) fn delete(cx: &mut TxContext<'_>, scope: &Scope, key: &str) -> Result<Task, StoreError> {
    let row = get(cx.tx, scope, key)?;
    cx.tx
        .execute("DELETE FROM tasks WHERE id = ?1", [&row.task.id])?;
    control_keys::delete(cx, &row.task.id)?;
    comparisons::close_open(cx, &row.task.id, "the task was deleted")?;
    touch_task_nodes(cx, &row.task, None)?;
    cx.event(
        Some(&row.task.tenant_id),
        "TaskDeleted",
        "task",
        &row.task.id,
        format!("task {} deleted; its results are kept", row.task.name),
    )?;
    Ok(row.task)
}

/// A poll by the MSCS: pending tasks become running.
pub(crate) fn mark_running(cx: &TxContext<'_>, ids: &[String]) -> Result<(), StoreError> {
    for id in ids {
        cx.tx.execute(
            "UPDATE tasks SET status = 'running' WHERE id = ?1 AND status = 'pending'",
            [id],
        )?;
    }
    Ok(())
}

fn parse_rfc3339(field: &str, text: &str) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| StoreError::invalid(field, format!("{text:?} is not an RFC 3339 time: {e}")))
}

pub(crate) fn unix_ms(time: OffsetDateTime) -> i64 {
    (time.unix_timestamp_nanos() / 1_000_000) as i64
}

/// The typed view of a posted document: a field of the wrong type, a missing
/// field or another schema version is refused with its JSON path
/// (`receivers[0].metrics.packets_lost`), for HTTP and gRPC alike. The raw
/// JSON is what gets stored, so fields a newer writer added survive.
pub(crate) fn typed_document(document: &serde_json::Value) -> Result<ResultDocument, StoreError> {
    let typed: ResultDocument = serde_path_to_error::deserialize(document).map_err(|e| {
        let path = e.path().to_string();
        let reason = e.inner().to_string();
        // serde reports a missing field at its parent's path; name the field itself.
        let missing = reason
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next());
        let field = match (path.as_str(), missing) {
            (".", Some(name)) => name.to_string(),
            (".", None) => "(body)".to_string(),
            (parent, Some(name)) => format!("{parent}.{name}"),
            (parent, None) => parent.to_string(),
        };
        StoreError::invalid(field, reason)
    })?;
    typed.validate().map_err(|e| match e {
        ResultError::Invalid { field, reason } => StoreError::invalid(field, reason),
    })?;
    Ok(typed)
}

/// Store one result document of a task. `task_key` is the task id or name.
/// A document whose `run_id` was already stored for the task is the relay
/// repeating itself: the first record is returned and nothing changes
/// (`false`).
pub(crate) fn insert_result(
    cx: &mut TxContext<'_>,
    scope: &Scope,
    task_key: &str,
    mut document: serde_json::Value,
) -> Result<(ResultRecord, bool), StoreError> {
    let row = find(cx.tx, scope, task_key)?
        .ok_or_else(|| StoreError::invalid("task_id", format!("no task {task_key:?} exists")))?;
    let typed = typed_document(&document)?;
    let object = document
        .as_object_mut()
        .ok_or_else(|| StoreError::invalid("(body)", "a result document is a JSON object"))?;
    match &typed.task_id {
        Some(id) if *id != row.task.id && *id != row.task.name => {
            return Err(StoreError::invalid(
                "task_id",
                format!("the document names task {id:?}, not {}", row.task.id),
            ))
        }
        _ => {
            object.insert(
                "task_id".into(),
                serde_json::Value::String(row.task.id.clone()),
            );
        }
    }
    let started_at = typed.started_at.clone();
    let started = parse_rfc3339("started_at", &started_at)?;
    let run_id = typed.run_id.as_str();
    // Scoped: the statement borrows the transaction the writes below need.
    {
        let mut statement = cx.tx.prepare_cached(
            "SELECT id, task_id, task_name, received_at, started_at, document, tenant_id
             FROM results WHERE task_id = ?1 AND run_id = ?2",
        )?;
        let mut rows = statement.query(params![row.task.id, run_id])?;
        if let Some(existing) = rows.next()? {
            return Ok((record(&existing)?, false));
        }
    }
    let placement = match &row.platform_id {
        Some(platform_id) => run_tree::PointPlacement::Platform(platform_id),
        None => run_tree::PointPlacement::ServiceHosts,
    };
    if let Some(object) = document.as_object_mut() {
        let thresholds = InferenceConfig {
            loss_threshold: row.task.bottleneck_loss_threshold,
            delay_stddev_threshold_us: row.task.bottleneck_delay_stddev_us,
            ..InferenceConfig::default()
        };
        run_tree::annotate(cx, &placement, &typed, &thresholds, object)?;
        if let (true, Some(platform_id)) = (
            row.task.compare_with_service_host,
            row.platform_id.as_deref(),
        ) {
            comparisons::schedule(cx, &row.task, platform_id, &typed, object)?;
        }
    }
    let run_status = typed.status.as_str();
    let record = ResultRecord {
        id: new_id(),
        task_id: row.task.id.clone(),
        task: row.task.name.clone(),
        received_at: cx.now_text(),
        started_at,
        document,
        tenant_id: row.task.tenant_id.clone(),
    };
    cx.tx.execute(
        "INSERT INTO results (id, task_id, task_name, received_at, started_at, started_ms, document,
                              run_id, tenant_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            record.id,
            record.task_id,
            record.task,
            record.received_at,
            record.started_at,
            unix_ms(started),
            record.document.to_string(),
            run_id,
            record.tenant_id
        ],
    )?;
    let status = match (row.task.schedule.as_str(), typed.status) {
        ("periodic", _) => "running",
        (_, RunStatus::Failed) => "failed",
        _ => "completed",
    };
    cx.tx.execute(
        "UPDATE tasks SET status = ?2, last_result_id = ?3 WHERE id = ?1",
        params![row.task.id, status, record.id],
    )?;
    if row.task.schedule == "once" {
        let task = row.task.clone();
        touch_task_nodes(cx, &task, None)?;
    }
    cx.event(
        Some(&row.task.tenant_id),
        "ResultStored",
        "task",
        &row.task.id,
        format!(
            "result {} of task {} stored (run {run_status})",
            record.id, row.task.name
        ),
    )?;
    Ok((record, true))
}

/// Filters of `GET /v1/results`.
#[derive(Debug, Clone, Default)]
pub(crate) struct ResultQuery {
    pub task: Option<String>,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    pub limit: u32,
    /// Only results older than this position (`started_ms`, `seq`): the
    /// cursor of the page before.
    pub before: Option<(i64, i64)>,
}

fn record(r: &crate::store::sql::Row<'_>) -> Result<ResultRecord, StoreError> {
    record_with(r, r.get(5)?)
}

/// [`record`] for a row whose `document` column was read already.
fn record_with(
    r: &crate::store::sql::Row<'_>,
    document: String,
) -> Result<ResultRecord, StoreError> {
    Ok(ResultRecord {
        id: r.get(0)?,
        task_id: r.get(1)?,
        task: r.get(2)?,
        received_at: r.get(3)?,
        started_at: r.get(4)?,
        document: from_json("results.document", &document)?,
        tenant_id: r.get(6)?,
    })
}

/// Task ids a `task=` filter (id or name) stands for: the live task, or the
/// history of a deleted one.
fn task_ids(conn: &Connection, scope: &Scope, key: &str) -> Result<String, StoreError> {
    if let Some(row) = find(conn, scope, key)? {
        return Ok(row.task.id);
    }
    let id: Option<String> = conn
        .query_row(
            "SELECT task_id FROM results WHERE (task_id = ?1 OR task_name = ?1)
               AND (tenant_id = ?2 OR ?2 IS NULL)
             ORDER BY seq DESC LIMIT 1",
            params![key, scope.tenant_id()],
            |r| r.get(0),
        )
        .optional()?;
    id.ok_or_else(|| StoreError::NotFound {
        kind: "task",
        id: key.to_string(),
    })
}

/// Results visible in `scope`, oldest first (by run start).
pub(crate) fn results(
    conn: &Connection,
    scope: &Scope,
    q: &ResultQuery,
) -> Result<Vec<ResultRecord>, StoreError> {
    Ok(results_at(conn, scope, q, u64::MAX)?
        .results
        .into_iter()
        .map(|(record, _)| record)
        .collect())
}

/// Where a result sits in the results' order: (`started_ms`, `seq`).
pub(crate) type ResultPosition = (i64, i64);

/// What [`results_at`] read.
#[derive(Debug)]
pub(crate) struct ResultsRead {
    /// Oldest first, each with its position.
    pub results: Vec<(ResultRecord, ResultPosition)>,
    /// The byte cap stopped the read: older results in the range were left
    /// out, not only those past `limit`.
    pub cut_at_bytes: bool,
}

/// [`results`] with each one's position (`started_ms`, `seq`), the key of
/// result pages. Reads from the newest back and stops before the result
/// whose document would take the documents read past `max_bytes` (the
/// newest one always comes, so a page is never empty while results remain).
pub(crate) fn results_at(
    conn: &Connection,
    scope: &Scope,
    q: &ResultQuery,
    max_bytes: u64,
) -> Result<ResultsRead, StoreError> {
    let task_id = q
        .task
        .as_deref()
        .map(|t| task_ids(conn, scope, t))
        .transpose()?;
    let since = q.since.map(unix_ms);
    let until = q.until.map(unix_ms);
    // Newest first, so the cap keeps the newest and the cursor (the oldest
    // kept) leads to exactly what was left out.
    let mut statement = conn.prepare_cached(
        "SELECT id, task_id, task_name, received_at, started_at, document, tenant_id,
                started_ms, seq FROM results
         WHERE (task_id = ?1 OR ?1 IS NULL) AND (started_ms >= ?2 OR ?2 IS NULL)
           AND (started_ms < ?3 OR ?3 IS NULL) AND (tenant_id = ?5 OR ?5 IS NULL)
           AND ((started_ms, seq) < (?6, ?7) OR ?6 IS NULL)
         ORDER BY started_ms DESC, seq DESC LIMIT ?4",
    )?;
    let (before_ms, before_seq) = q.before.unzip();
    let mut rows = statement.query(params![
        task_id,
        since,
        until,
        q.limit,
        scope.tenant_id(),
        before_ms,
        before_seq
    ])?;
    let mut out = Vec::new();
    let mut bytes: u64 = 0;
    let mut cut_at_bytes = false;
    while let Some(row) = rows.next()? {
        // The stored text is what the answer will hold, give or take
        // whitespace: measured before it is parsed.
        let document: String = row.get(5)?;
        let size = document.len() as u64;
        if !out.is_empty() && bytes.saturating_add(size) > max_bytes {
            cut_at_bytes = true;
            break;
        }
        bytes = bytes.saturating_add(size);
        out.push((record_with(&row, document)?, (row.get(7)?, row.get(8)?)));
    }
    out.reverse();
    Ok(ResultsRead {
        results: out,
        cut_at_bytes,
    })
}

/// Where an export of `q` starts and what it filters on; resolved in one
/// short read so an unknown task is a 404 before any byte is streamed.
#[derive(Debug, Clone)]
pub(crate) struct ExportPlan {
    task_id: Option<String>,
    tenant_id: Option<String>,
    since: Option<i64>,
    until: Option<i64>,
    /// Only results after this position: the newest `limit` in the range.
    after: Option<(i64, i64)>,
}

pub(crate) fn export_plan(
    conn: &Connection,
    scope: &Scope,
    q: &ResultQuery,
) -> Result<ExportPlan, StoreError> {
    let task_id = q
        .task
        .as_deref()
        .map(|t| task_ids(conn, scope, t))
        .transpose()?;
    let (since, until) = (q.since.map(unix_ms), q.until.map(unix_ms));
    let tenant_id = scope.tenant_id().map(str::to_string);
    // The oldest of the newest `limit`: the stream starts there.
    let oldest: Option<(i64, i64)> = conn
        .query_row(
            "SELECT started_ms, seq FROM results
             WHERE (task_id = ?1 OR ?1 IS NULL) AND (started_ms >= ?2 OR ?2 IS NULL)
               AND (started_ms < ?3 OR ?3 IS NULL) AND (tenant_id = ?5 OR ?5 IS NULL)
             ORDER BY started_ms DESC, seq DESC LIMIT 1 OFFSET ?4",
            params![task_id, since, until, i64::from(q.limit) - 1, tenant_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(ExportPlan {
        task_id,
        tenant_id,
        since,
        until,
        // seq is an integer: "after (ms, seq - 1)" is "from (ms, seq)".
        after: oldest.map(|(ms, seq)| (ms, seq - 1)),
    })
}

/// The next `batch` results of an export, oldest first, and where the one
/// after them starts; an empty batch is the end.
pub(crate) fn export_batch(
    conn: &Connection,
    plan: &mut ExportPlan,
    batch: u32,
) -> Result<Vec<ResultRecord>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT id, task_id, task_name, received_at, started_at, document, tenant_id,
                started_ms, seq FROM results
         WHERE (task_id = ?1 OR ?1 IS NULL) AND (started_ms >= ?2 OR ?2 IS NULL)
           AND (started_ms < ?3 OR ?3 IS NULL) AND (tenant_id = ?4 OR ?4 IS NULL)
           AND ((started_ms, seq) > (?5, ?6) OR ?5 IS NULL)
         ORDER BY started_ms ASC, seq ASC LIMIT ?7",
    )?;
    let (after_ms, after_seq) = plan.after.unzip();
    let mut rows = statement.query(params![
        plan.task_id,
        plan.since,
        plan.until,
        plan.tenant_id,
        after_ms,
        after_seq,
        batch
    ])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(record(&row)?);
        plan.after = Some((row.get(7)?, row.get(8)?));
    }
    Ok(out)
}

pub(crate) fn latest(
    conn: &Connection,
    scope: &Scope,
    task: Option<&str>,
) -> Result<ResultRecord, StoreError> {
    let mut list = results(
        conn,
        scope,
        &ResultQuery {
            task: task.map(str::to_string),
            limit: 1,
            ..Default::default()
        },
    )?;
    list.pop().ok_or_else(|| StoreError::NotFound {
        kind: "result",
        id: match task {
            Some(t) => format!("latest of task {t}"),
            None => "latest".into(),
        },
    })
}

/// The columns of the CSV export, one row per receiver per run.
pub(crate) const CSV_COLUMNS: &[&str] = &[
    "result_id",
    "task",
    "run_id",
    "started_at",
    "finished_at",
    "run_status",
    "source_point",
    "group",
    "receiver",
    "receiver_status",
    "packets_sent",
    "packets_received",
    "packets_lost",
    "packets_duplicated",
    "packets_reordered",
    "loss_ratio",
    "delay_min_us",
    "delay_median_us",
    "delay_mean_us",
    "delay_p95_us",
    "delay_max_us",
    "ipdv_mean_abs_us",
    "pdv_us",
    "jitter_us",
    "clock_error_bound_us",
];

/// One CSV cell, written as the JSON document writes the value (`20.0`, not
/// `20`), so the export reads the same as the stored document.
enum Cell<'a> {
    Text(&'a str),
    Unsigned(u64),
    Float(f64),
    Empty,
}

impl From<Option<u64>> for Cell<'_> {
    fn from(value: Option<u64>) -> Self {
        value.map_or(Cell::Empty, Cell::Unsigned)
    }
}

impl From<Option<f64>> for Cell<'_> {
    fn from(value: Option<f64>) -> Self {
        value.map_or(Cell::Empty, Cell::Float)
    }
}

fn csv_field(cell: Cell<'_>) -> String {
    let text = match cell {
        Cell::Text(s) => s.to_string(),
        Cell::Unsigned(n) => n.to_string(),
        // serde_json's formatting; a non-finite float cannot be in a document.
        Cell::Float(f) => {
            serde_json::Number::from_f64(f).map_or_else(String::new, |n| n.to_string())
        }
        Cell::Empty => String::new(),
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// The RFC 4180 CSV export's header line.
pub(crate) fn csv_header() -> String {
    let mut out = CSV_COLUMNS.join(",");
    out.push_str("\r\n");
    out
}

/// The CSV export's rows of `records`, without the header. Every stored
/// document passed [`typed_document`] on the way in; one that no longer reads
/// as a v1 document (written before the type was enforced) is left out and
/// logged rather than failing the whole export.
pub(crate) fn csv_rows(records: &[ResultRecord]) -> String {
    let mut out = String::new();
    for r in records {
        let d = match ResultDocument::deserialize(&r.document) {
            Ok(d) => d,
            Err(err) => {
                tracing::warn!(result = %r.id, error = %err, "result left out of the CSV export: not a v1 document");
                continue;
            }
        };
        let group = d.group.to_string();
        for receiver in &d.receivers {
            let m = receiver.metrics.as_ref();
            let delay = m.and_then(|m| m.one_way_delay_us);
            let row: [Cell<'_>; CSV_COLUMNS.len()] = [
                Cell::Text(&r.id),
                Cell::Text(&r.task),
                Cell::Text(&d.run_id),
                Cell::Text(&d.started_at),
                Cell::Text(&d.finished_at),
                Cell::Text(d.status.as_str()),
                Cell::Text(&d.source_point),
                Cell::Text(&group),
                Cell::Text(&receiver.point),
                Cell::Text(receiver.status.as_str()),
                m.map(|m| m.packets_sent).into(),
                m.map(|m| m.packets_received).into(),
                m.map(|m| m.packets_lost).into(),
                m.map(|m| m.packets_duplicated).into(),
                m.map(|m| m.packets_reordered).into(),
                m.and_then(|m| m.loss_ratio).into(),
                delay.map(|d| d.min).into(),
                delay.map(|d| d.median).into(),
                delay.map(|d| d.mean).into(),
                delay.map(|d| d.p95).into(),
                delay.map(|d| d.max).into(),
                m.and_then(|m| m.ipdv_us).map(|i| i.mean_abs).into(),
                m.and_then(|m| m.pdv_us).into(),
                m.and_then(|m| m.jitter_us).into(),
                receiver.clock_error_bound_us.into(),
            ];
            out.push_str(&row.into_iter().map(csv_field).collect::<Vec<_>>().join(","));
            out.push_str("\r\n");
        }
    }
    out
}
