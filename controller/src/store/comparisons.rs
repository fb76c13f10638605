//! Platform vs nodes (`compare_with_service_host`): after a platform run is
//! stored, the same probe pattern runs between the service hosts of the nodes
//! that host its source and receivers, and the platform result document gets a
//! `comparison` section setting the two side by side.
//!
//! # How
//! - The service-host run is an ordinary once service task on the wire: its
//!   id is a comparison id, its spec a [`Task`] of mode `service_host` whose
//!   first node (the orchestrator and source) is the source VM's node. It goes
//!   into the nodes' desired state beside the real service_host tasks, so any
//!   agent that runs those runs it, and it posts its document with
//!   `PostResult` under the comparison id.
//! - The comparison lives in the `comparisons` table while open; the platform
//!   document carries `comparison.status = pending` meanwhile. Its result
//!   closes it and rewrites the platform document's `comparison`.
//! - One open comparison per task: the next platform run of a periodic task,
//!   or deleting the task, closes the open one as failed. That bounds what a
//!   node that never answers can leave behind.
//! - Each platform receiver is compared with the service host of its VM's
//!   node. A receiver on the source's node has no counterpart (that service
//!   host is the sender); receivers sharing a node share one counterpart.

use std::collections::BTreeMap;

use crate::store::sql::{params, Connection, OptionalExtension};
use measurelab_api::http::Task;
use measurelab_api::result::{
    ComparedFigures, Comparison, ComparisonStatus, ReceiverComparison, ReceiverResult,
    ResultDocument, RunStatus,
};
use serde_json::{Map, Value};

use super::codec::{from_json, new_id, to_json};
use super::error::StoreError;
use super::resources::TxContext;
use super::{control_keys, run_tree};

/// `z` of the two-proportion loss bound: about 99.7 % two-sided, so a clean
/// comparison is called inconsistent by chance about once in 370 receivers.
pub(crate) const LOSS_Z: f64 = 3.0;

/// Median one-way delays that differ by at most this much agree (the issue's
/// 0.2 ms); each side's clock error bound is added on top.
pub(crate) const DELAY_TOLERANCE_US: f64 = 200.0;

/// The largest loss-ratio difference between two runs of the same path that
/// chance explains: `z * sqrt(p (1 - p) (1/n1 + 1/n2))` with `p` the pooled
/// ratio. `None` when a side sent nothing. With no loss on either side it is
/// 0, and a difference of 0 is within it.
pub(crate) fn loss_bound(
    lost_a: u64,
    sent_a: u64,
    lost_b: u64,
    sent_b: u64,
    z: f64,
) -> Option<f64> {
    if sent_a == 0 || sent_b == 0 {
        return None;
    }
    let (na, nb) = (sent_a as f64, sent_b as f64);
    let p = (lost_a.min(sent_a) + lost_b.min(sent_b)) as f64 / (na + nb);
    Some(z * (p * (1.0 - p) * (1.0 / na + 1.0 / nb)).sqrt())
}

fn loss_ratio(f: &ComparedFigures) -> Option<f64> {
    (f.packets_sent > 0).then(|| f.packets_lost.min(f.packets_sent) as f64 / f.packets_sent as f64)
}

/// The figures of a receiver that reported.
fn figures(r: &ReceiverResult) -> Option<ComparedFigures> {
    let m = r.metrics.as_ref()?;
    Some(ComparedFigures {
        point: r.point.clone(),
        packets_sent: m.packets_sent,
        packets_lost: m.packets_lost,
        loss_ratio: m.loss_ratio,
        delay_median_us: m.one_way_delay_us.map(|d| d.median),
        jitter_us: m.jitter_us,
        clock_error_bound_us: r.clock_error_bound_us,
    })
}

/// Sets one platform receiver against its counterpart: differences and verdicts.
pub(crate) fn judge(entry: &mut ReceiverComparison, service: Option<ComparedFigures>) {
    entry.service_host = service;
    let (Some(p), Some(s)) = (&entry.platform, &entry.service_host) else {
        return;
    };
    if let (Some(lp), Some(ls)) = (loss_ratio(p), loss_ratio(s)) {
        let bound = loss_bound(
            p.packets_lost,
            p.packets_sent,
            s.packets_lost,
            s.packets_sent,
            LOSS_Z,
        );
        entry.loss_difference = Some(lp - ls);
        entry.loss_bound = bound;
        entry.loss_within_bound = bound.map(|b| (lp - ls).abs() <= b);
    }
    if let (Some(dp), Some(ds)) = (p.delay_median_us, s.delay_median_us) {
        let bound = DELAY_TOLERANCE_US
            + p.clock_error_bound_us.unwrap_or(0.0)
            + s.clock_error_bound_us.unwrap_or(0.0);
        entry.delay_median_difference_us = Some(dp - ds);
        entry.delay_bound_us = Some(bound);
        entry.delay_within_bound = Some((dp - ds).abs() <= bound);
    }
    if let (Some(jp), Some(js)) = (p.jitter_us, s.jitter_us) {
        entry.jitter_difference_us = Some(jp - js);
    }
}

fn section(status: ComparisonStatus, reason: Option<String>) -> Comparison {
    Comparison {
        status,
        reason,
        service_host_task_id: None,
        source_node: None,
        service_host_run_id: None,
        service_host_started_at: None,
        loss_z: LOSS_Z,
        delay_tolerance_us: DELAY_TOLERANCE_US,
        consistent: None,
        receivers: Vec::new(),
    }
}

/// What a platform run leads to: a service-host run over `nodes` (source
/// first), or nothing (`nodes` empty, `comparison.status` skipped).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    pub comparison: Comparison,
    pub nodes: Vec<String>,
}

/// Plans the comparison of `platform` (a stored platform run). `node_of`
/// places a point (VM) on its node; `serves` tells whether a node runs a
/// service host.
pub(crate) fn plan(
    platform: &ResultDocument,
    node_of: &BTreeMap<String, String>,
    serves: impl Fn(&str) -> bool,
) -> Plan {
    let skip = |reason: String| Plan {
        comparison: section(ComparisonStatus::Skipped, Some(reason)),
        nodes: Vec::new(),
    };
    if platform.status == RunStatus::Failed {
        return skip("the platform run failed, so there is nothing to compare".into());
    }
    let Some(source_node) = node_of.get(&platform.source_point) else {
        return skip(format!(
            "the source point {:?} is not a VM of the platform, so its node is unknown",
            platform.source_point
        ));
    };
    if !serves(source_node) {
        return skip(format!(
            "node {source_node:?} of the source runs no service host"
        ));
    }
    let mut nodes = vec![source_node.clone()];
    let mut comparison = section(ComparisonStatus::Pending, None);
    comparison.source_node = Some(source_node.clone());
    for r in &platform.receivers {
        let node = node_of.get(&r.point).cloned();
        let note = match &node {
            None => Some("not a VM of the platform: its node is unknown".to_string()),
            Some(n) if n == source_node => Some(
                "on the source's node, whose service host is the sender: no counterpart".into(),
            ),
            Some(n) if !serves(n) => Some(format!("node {n:?} runs no service host")),
            Some(n) => {
                if !nodes.contains(n) {
                    nodes.push(n.clone());
                }
                None
            }
        };
        comparison.receivers.push(ReceiverComparison {
            point: r.point.clone(),
            node,
            note,
            platform: figures(r),
            service_host: None,
            loss_difference: None,
            loss_bound: None,
            loss_within_bound: None,
            delay_median_difference_us: None,
            delay_bound_us: None,
            delay_within_bound: None,
            jitter_difference_us: None,
        });
    }
    if nodes.len() < 2 {
        return skip(format!(
            "no receiver runs on another node with a service host than the source's ({source_node})"
        ));
    }
    Plan { comparison, nodes }
}

/// Completes a pending comparison with the service-host run's document.
pub(crate) fn merge(mut comparison: Comparison, service: &ResultDocument) -> Comparison {
    comparison.service_host_run_id = Some(service.run_id.clone());
    comparison.service_host_started_at = Some(service.started_at.clone());
    if service.status == RunStatus::Failed {
        comparison.status = ComparisonStatus::Failed;
        comparison.reason = Some(format!(
            "the service-host run failed: {}",
            service.source.error.as_deref().unwrap_or("no reason given")
        ));
        return comparison;
    }
    comparison.status = ComparisonStatus::Completed;
    let source = comparison.source_node.clone();
    let mut verdicts = Vec::new();
    for entry in &mut comparison.receivers {
        let counterpart = match (&entry.note, &entry.node) {
            (None, Some(node)) if Some(node) != source.as_ref() => node.clone(),
            _ => continue,
        };
        let service_receiver = service.receivers.iter().find(|r| r.point == counterpart);
        judge(entry, service_receiver.and_then(figures));
        if entry.service_host.is_none() {
            entry.note = Some(match service_receiver {
                Some(r) => format!(
                    "the service host of {counterpart} reported nothing ({})",
                    r.status.as_str()
                ),
                None => format!("the service host of {counterpart} was not in the run"),
            });
        }
        verdicts.extend(entry.loss_within_bound);
        verdicts.extend(entry.delay_within_bound);
    }
    comparison.consistent = (!verdicts.is_empty()).then(|| verdicts.iter().all(|v| *v));
    comparison
}

fn to_value(value: &impl serde::Serialize) -> Result<Value, StoreError> {
    serde_json::to_value(value).map_err(|e| StoreError::Corrupt(format!("result comparison: {e}")))
}

/// The service-host run of a comparison, as the nodes get it.
fn service_task(cx: &TxContext<'_>, id: &str, task: &Task, nodes: &[String]) -> Task {
    Task {
        id: id.to_string(),
        name: format!("{}/service-host", task.name),
        mode: "service_host".into(),
        platform: None,
        nodes: nodes.to_vec(),
        schedule: "once".into(),
        source: nodes.first().cloned(),
        receivers: nodes.get(1..).unwrap_or_default().to_vec(),
        status: "pending".into(),
        last_result_id: None,
        created_at: cx.now_text(),
        compare_with_service_host: false,
        ..task.clone()
    }
}

fn touch(cx: &mut TxContext<'_>, nodes: &[String]) -> Result<(), StoreError> {
    let ids: Vec<String> = nodes
        .iter()
        .filter_map(|n| cx.registry.by_id_or_name(n).map(|e| e.id.clone()))
        .collect();
    for id in ids {
        cx.touch_node(&id)?;
    }
    Ok(())
}

/// Called while a platform run of a comparing task is being stored (before
/// its insert): closes the task's open comparison, plans the new one and
/// writes its `comparison` section into `object`.
pub(crate) fn schedule(
    cx: &mut TxContext<'_>,
    task: &Task,
    platform_id: &str,
    typed: &ResultDocument,
    object: &mut Map<String, Value>,
) -> Result<(), StoreError> {
    close_open(
        cx,
        &task.id,
        &format!(
            "run {} of the task started before the service-host run's result arrived",
            typed.run_id
        ),
    )?;
    let mut points: Vec<&str> = vec![typed.source_point.as_str()];
    points.extend(typed.receivers.iter().map(|r| r.point.as_str()));
    let node_of = run_tree::node_of_points(
        cx,
        &run_tree::PointPlacement::Platform(platform_id),
        &points,
    )?;
    let registry = cx.registry;
    let serves = |node: &str| {
        registry
            .by_id_or_name(node)
            .is_some_and(|n| !n.capabilities.service_endpoint.is_empty())
    };
    let Plan {
        mut comparison,
        nodes,
    } = plan(typed, &node_of, serves);
    if !nodes.is_empty() {
        let id = new_id();
        let spec = service_task(cx, &id, task, &nodes);
        comparison.service_host_task_id = Some(id.clone());
        cx.tx.execute(
            "INSERT INTO comparisons (id, task_id, run_id, tenant_id, status, spec, created_at)
             VALUES (?1, ?2, ?3, ?4, 'open', ?5, ?6)",
            params![
                id,
                task.id,
                typed.run_id,
                task.tenant_id,
                to_json(&spec),
                cx.now_text()
            ],
        )?;
        control_keys::create(cx, &id)?;
        touch(cx, &nodes)?;
        cx.event(
            Some(&task.tenant_id),
            "ComparisonScheduled",
            "task",
            &task.id,
            format!(
                "run {} of task {} is compared with a service-host run over {}",
                typed.run_id,
                task.name,
                nodes.join(", ")
            ),
        )?;
    }
    object.insert("comparison".into(), to_value(&comparison)?);
    Ok(())
}

/// An open or closed comparison.
struct Row {
    id: String,
    task_id: String,
    run_id: String,
    open: bool,
    tenant_id: String,
    spec: Task,
    service_run_id: Option<String>,
}

fn read(
    conn: &Connection,
    filter: &str,
    args: &[&dyn crate::store::sql::ToValue],
) -> Result<Vec<Row>, StoreError> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT id, task_id, run_id, status, spec, service_run_id, tenant_id FROM comparisons {filter}"
    ))?;
    let mut rows = statement.query(args)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let spec: String = r.get(4)?;
        out.push(Row {
            id: r.get(0)?,
            task_id: r.get(1)?,
            run_id: r.get(2)?,
            open: r.get::<String>(3)? == "open",
            spec: from_json("comparisons.spec", &spec)?,
            service_run_id: r.get(5)?,
            tenant_id: r.get(6)?,
        });
    }
    Ok(out)
}

/// Open service-host runs of comparisons that list the node, as tasks.
pub(crate) fn of_service_host(conn: &Connection, node_name: &str) -> Result<Vec<Task>, StoreError> {
    Ok(
        read(conn, "WHERE status = 'open' ORDER BY created_at", &[])?
            .into_iter()
            .map(|r| r.spec)
            .filter(|t| t.nodes.iter().any(|n| n == node_name))
            .collect(),
    )
}

/// Rewrites the `comparison` section of the platform run `run_id` of `task_id`.
fn update_document(
    cx: &TxContext<'_>,
    task_id: &str,
    run_id: &str,
    change: impl FnOnce(Comparison) -> Comparison,
) -> Result<Option<String>, StoreError> {
    let found: Option<(String, String)> = cx
        .tx
        .query_row(
            "SELECT id, document FROM results WHERE task_id = ?1 AND run_id = ?2",
            params![task_id, run_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((result_id, text)) = found else {
        return Ok(None);
    };
    let mut document: Value = from_json("results.document", &text)?;
    let current: Comparison = match document.get("comparison") {
        Some(c) => serde_json::from_value(c.clone())
            .map_err(|e| StoreError::Corrupt(format!("result {result_id}: comparison: {e}")))?,
        None => section(ComparisonStatus::Pending, None),
    };
    if let Some(object) = document.as_object_mut() {
        object.insert("comparison".into(), to_value(&change(current))?);
    }
    cx.tx.execute(
        "UPDATE results SET document = ?2 WHERE id = ?1",
        params![result_id, document.to_string()],
    )?;
    Ok(Some(result_id))
}

/// Closes the task's open comparisons as failed with `reason` (a newer run,
/// or the task deleted).
pub(crate) fn close_open(
    cx: &mut TxContext<'_>,
    task_id: &str,
    reason: &str,
) -> Result<(), StoreError> {
    for row in read(cx.tx, "WHERE task_id = ?1 AND status = 'open'", &[&task_id])? {
        cx.tx.execute(
            "UPDATE comparisons SET status = 'closed' WHERE id = ?1",
            [&row.id],
        )?;
        control_keys::delete(cx, &row.id)?;
        update_document(cx, &row.task_id, &row.run_id, |mut c| {
            c.status = ComparisonStatus::Failed;
            c.reason = Some(format!("no service-host result: {reason}"));
            c
        })?;
        touch(cx, &row.spec.nodes)?;
    }
    Ok(())
}

/// Whether `id` names a comparison (the task id a service host posts under).
pub(crate) fn exists(conn: &Connection, id: &str) -> Result<bool, StoreError> {
    Ok(conn
        .query_row("SELECT 1 FROM comparisons WHERE id = ?1", [id], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Stores the service-host run of comparison `id`, posted by node
/// `node_name` (`typed` is `document` read by `tasks::typed_document`), into
/// the platform document; returns that result's id. A
/// repeated post of the stored run is answered the same; another run of a
/// closed comparison is refused (on `task_id`), so the agent drops it.
pub(crate) fn complete(
    cx: &mut TxContext<'_>,
    id: &str,
    node_name: &str,
    document: Value,
    typed: ResultDocument,
) -> Result<String, StoreError> {
    let row = read(cx.tx, "WHERE id = ?1", &[&id])?
        .pop()
        .ok_or_else(|| StoreError::invalid("task_id", format!("no comparison {id:?} exists")))?;
    if row.spec.nodes.first().map(String::as_str) != Some(node_name) {
        return Err(StoreError::invalid(
            "task_id",
            format!(
                "comparison {id} is run by the service host of {}, not {node_name}",
                row.spec
                    .nodes
                    .first()
                    .map(String::as_str)
                    .unwrap_or("no node")
            ),
        ));
    }
    let platform_result = || -> Result<String, StoreError> {
        cx.tx
            .query_row(
                "SELECT id FROM results WHERE task_id = ?1 AND run_id = ?2",
                params![row.task_id, row.run_id],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| {
                StoreError::invalid(
                    "task_id",
                    format!("the platform run of comparison {id} is gone"),
                )
            })
    };
    if !row.open {
        if row.service_run_id.as_deref() == Some(typed.run_id.as_str()) {
            return platform_result();
        }
        return Err(StoreError::invalid(
            "task_id",
            format!("comparison {id} is closed and takes no more runs"),
        ));
    }
    cx.tx.execute(
        "UPDATE comparisons SET status = 'closed', service_run_id = ?2, service_document = ?3
         WHERE id = ?1",
        params![id, typed.run_id, document.to_string()],
    )?;
    control_keys::delete(cx, id)?;
    let result_id = update_document(cx, &row.task_id, &row.run_id, |c| merge(c, &typed))?;
    touch(cx, &row.spec.nodes)?;
    cx.event(
        Some(&row.tenant_id),
        "ComparisonStored",
        "task",
        &row.task_id,
        format!(
            "service-host run {} compared with platform run {} ({})",
            typed.run_id,
            row.run_id,
            typed.status.as_str()
        ),
    )?;
    result_id.ok_or_else(|| {
        StoreError::invalid(
            "task_id",
            format!("the platform run of comparison {id} is gone"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use measurelab_api::result::{
        ClockSync, DelaySummaryUs, ReceiverMetrics, ReceiverStatus, SentSource,
    };

    #[test]
    fn loss_bound_is_the_two_proportion_bound() {
        // p = 30 / 2000 = 0.015; sqrt(0.015 * 0.985 * (2 / 1000)) = 0.005436.
        let bound = loss_bound(10, 1000, 20, 1000, 3.0).unwrap();
        assert!((bound - 3.0 * 0.005_435_7).abs() < 1e-6, "{bound}");
        // Unequal sample sizes: p = 10 / 1500.
        let p: f64 = 10.0 / 1500.0;
        let expected = 3.0 * (p * (1.0 - p) * (1.0 / 1000.0 + 1.0 / 500.0)).sqrt();
        assert!((loss_bound(5, 1000, 5, 500, 3.0).unwrap() - expected).abs() < 1e-12);
        // No loss anywhere: the bound is 0 and a zero difference lies within it.
        assert_eq!(loss_bound(0, 1000, 0, 1000, 3.0), Some(0.0));
        // A side that sent nothing gives no bound.
        assert_eq!(loss_bound(0, 0, 0, 1000, 3.0), None);
        // The bound grows with z and shrinks with the sample.
        assert!(loss_bound(10, 1000, 20, 1000, 2.0).unwrap() < bound);
        assert!(loss_bound(100, 10_000, 200, 10_000, 3.0).unwrap() < bound);
    }

    fn figures(point: &str, sent: u64, lost: u64, median: f64, jitter: f64) -> ComparedFigures {
        ComparedFigures {
            point: point.into(),
            packets_sent: sent,
            packets_lost: lost,
            loss_ratio: Some(lost as f64 / sent as f64),
            delay_median_us: Some(median),
            jitter_us: Some(jitter),
            clock_error_bound_us: Some(0.002),
        }
    }

    fn entry(platform: ComparedFigures) -> ReceiverComparison {
        ReceiverComparison {
            point: platform.point.clone(),
            node: Some("n2".into()),
            note: None,
            platform: Some(platform),
            service_host: None,
            loss_difference: None,
            loss_bound: None,
            loss_within_bound: None,
            delay_median_difference_us: None,
            delay_bound_us: None,
            delay_within_bound: None,
            jitter_difference_us: None,
        }
    }

    #[test]
    fn verdicts_follow_the_bounds() {
        // 1 % vs 2 % of 1000: difference 0.01, bound 0.0163: within.
        let mut e = entry(figures("b", 1000, 10, 300.0, 20.0));
        judge(&mut e, Some(figures("n2", 1000, 20, 150.0, 15.0)));
        assert!((e.loss_difference.unwrap() + 0.01).abs() < 1e-12);
        assert_eq!(e.loss_within_bound, Some(true));
        assert_eq!(e.delay_median_difference_us, Some(150.0));
        assert!((e.delay_bound_us.unwrap() - 200.004).abs() < 1e-9);
        assert_eq!(e.delay_within_bound, Some(true));
        assert_eq!(e.jitter_difference_us, Some(5.0));
        // 1 % vs 5 % of 1000: bound 0.0268 < 0.04: outside. Delay 250 us apart: outside.
        let mut e = entry(figures("b", 1000, 10, 400.0, 20.0));
        judge(&mut e, Some(figures("n2", 1000, 50, 150.0, 15.0)));
        assert_eq!(e.loss_within_bound, Some(false));
        assert_eq!(e.delay_within_bound, Some(false));
        // No counterpart figures: no verdict.
        let mut e = entry(figures("b", 1000, 10, 400.0, 20.0));
        judge(&mut e, None);
        assert_eq!((e.loss_within_bound, e.delay_within_bound), (None, None));
    }

    fn receiver(point: &str, sent: u64, lost: u64, median: f64) -> ReceiverResult {
        ReceiverResult {
            point: point.into(),
            status: ReceiverStatus::Ok,
            error: None,
            timestamp_source: None,
            clock_sync: Some(ClockSync::SameHostClock),
            clock_error_bound_us: Some(0.002),
            foreign_session_packets: Some(0),
            malformed_packets: Some(0),
            metrics: Some(ReceiverMetrics {
                packets_sent: sent,
                sent_source: SentSource::SenderReport,
                packets_received: sent - lost,
                packets_lost: lost,
                packets_duplicated: 0,
                packets_reordered: 0,
                packets_beyond_duplicate_window: 0,
                packets_unexpected: 0,
                loss_ratio: Some(lost as f64 / sent as f64),
                duplicate_fraction: Some(0.0),
                replicated_packet_rate: Some(0.0),
                reordered_ratio: Some(0.0),
                one_way_delay_us: Some(DelaySummaryUs {
                    min: median / 2.0,
                    median,
                    mean: median,
                    p95: median * 2.0,
                    p99: median * 2.0,
                    max: median * 3.0,
                }),
                ipdv_us: None,
                pdv_us: Some(median),
                jitter_us: Some(10.0),
                quantiles_exact: true,
            }),
            receipts: None,
        }
    }

    fn document(source: &str, receivers: Vec<ReceiverResult>) -> ResultDocument {
        let value = serde_json::json!({
            "schema": "measurelab.mcast.result/v1", "task_id": null,
            "run_id": format!("run-{source}"), "kind": "task", "source_point": source,
            "group": "239.1.2.3", "port": 5000, "session_id": 42,
            "started_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:05Z",
            "status": "ok",
            "config": {"rate_pps": 200.0, "packet_size_bytes": 64, "duration_seconds": 5.0,
                       "ttl": 1, "ssm": false},
            "source": {"point": source, "data_addr": null, "error": null, "report": {
                "session_id": 42, "packets_sent": 1000, "send_errors": 0,
                "first_send_error": null, "requested_rate_pps": 200.0,
                "achieved_rate_pps": 200.0, "schedule_slips": 0, "max_lateness_us": 1.0,
                "packet_size_bytes": 64, "first_send_ns": 1, "last_send_ns": 2}},
            "receivers": []
        });
        let mut d: ResultDocument = serde_json::from_value(value).expect("a v1 document");
        d.receivers = receivers;
        d
    }

    #[test]
    fn plan_maps_receivers_to_their_nodes_service_hosts() {
        let platform = document(
            "a",
            vec![
                receiver("same", 1000, 0, 100.0),
                receiver("b", 1000, 0, 300.0),
                receiver("c", 1000, 0, 310.0),
                receiver("d", 1000, 0, 320.0),
                receiver("ghost", 1000, 0, 320.0),
            ],
        );
        let node_of: BTreeMap<String, String> = [
            ("a", "n1"),
            ("same", "n1"),
            ("b", "n2"),
            ("c", "n2"),
            ("d", "n3"),
        ]
        .into_iter()
        .map(|(p, n)| (p.to_string(), n.to_string()))
        .collect();
        let plan = plan(&platform, &node_of, |n| n != "n3");
        assert_eq!(plan.nodes, ["n1", "n2"]);
        assert_eq!(plan.comparison.status, ComparisonStatus::Pending);
        let notes: Vec<(&str, bool)> = plan
            .comparison
            .receivers
            .iter()
            .map(|r| (r.point.as_str(), r.note.is_some()))
            .collect();
        assert_eq!(
            notes,
            [
                ("same", true),
                ("b", false),
                ("c", false),
                ("d", true),
                ("ghost", true)
            ]
        );

        // The service-host run: n2 lost 0.5 % (the z = 3 bound against 0 of 1000 is
        // 0.67 %), 150 us faster. b and c share it.
        let service = document("n1", vec![receiver("n2", 1000, 5, 150.0)]);
        let merged = merge(plan.comparison, &service);
        assert_eq!(merged.status, ComparisonStatus::Completed);
        assert_eq!(
            merged.service_host_run_id.as_deref(),
            Some(service.run_id.as_str())
        );
        let b = &merged.receivers[1];
        assert_eq!(
            b.service_host.as_ref().map(|s| s.point.as_str()),
            Some("n2")
        );
        assert_eq!(b.loss_within_bound, Some(true));
        assert_eq!(b.delay_median_difference_us, Some(150.0));
        assert_eq!(b.delay_within_bound, Some(true));
        // c is 160 us slower than n2's service host: still within 200 us.
        assert_eq!(merged.receivers[2].delay_within_bound, Some(true));
        assert!(merged.receivers[0].service_host.is_none());
        assert_eq!(merged.consistent, Some(true));
    }

    #[test]
    fn nothing_to_compare_is_skipped_with_a_reason() {
        let node_of: BTreeMap<String, String> = [("a", "n1"), ("b", "n1")]
            .into_iter()
            .map(|(p, n)| (p.to_string(), n.to_string()))
            .collect();
        let platform = document("a", vec![receiver("b", 1000, 0, 100.0)]);
        let plan = plan(&platform, &node_of, |_| true);
        assert!(plan.nodes.is_empty());
        assert_eq!(plan.comparison.status, ComparisonStatus::Skipped);
        assert!(plan
            .comparison
            .reason
            .unwrap()
            .contains("no receiver runs on another node"));
        let mut failed = document("a", vec![receiver("b", 1000, 0, 100.0)]);
        failed.status = RunStatus::Failed;
        let node_of: BTreeMap<String, String> = [
            ("a".to_string(), "n1".to_string()),
            ("b".to_string(), "n2".to_string()),
        ]
        .into();
        assert_eq!(
            super::plan(&failed, &node_of, |_| true).comparison.status,
            ComparisonStatus::Skipped
        );
        let other = document("a", vec![receiver("b", 1000, 0, 100.0)]);
        let skipped = super::plan(&other, &node_of, |n| n != "n1").comparison;
        assert!(skipped.reason.unwrap().contains("runs no service host"));
    }

    #[test]
    fn a_failed_service_run_fails_the_comparison_and_a_gap_is_inconsistent() {
        let node_of: BTreeMap<String, String> = [
            ("a".to_string(), "n1".to_string()),
            ("b".to_string(), "n2".to_string()),
        ]
        .into();
        let platform = document("a", vec![receiver("b", 1000, 60, 900.0)]);
        let pending = plan(&platform, &node_of, |_| true).comparison;
        let mut failed = document("n1", vec![]);
        failed.status = RunStatus::Failed;
        failed.source.error = Some("cannot reach n2".into());
        let merged = merge(pending.clone(), &failed);
        assert_eq!(merged.status, ComparisonStatus::Failed);
        assert!(merged.reason.unwrap().contains("cannot reach n2"));
        // 6 % vs 0 % loss and 900 vs 150 us: both outside, so inconsistent.
        let clean = document("n1", vec![receiver("n2", 1000, 0, 150.0)]);
        let merged = merge(pending, &clean);
        assert_eq!(merged.receivers[0].loss_within_bound, Some(false));
        assert_eq!(merged.receivers[0].delay_within_bound, Some(false));
        assert_eq!(merged.consistent, Some(false));
    }
}
