//! The distribution tree of a stored run, from placement, and the per-link inference
//! over it (`tree`, `inference`, `bottlenecks` of the result document).
//!
//! Done here, when the controller accepts a result, because only the controller knows
//! where every VM runs; the MSCS inside a platform sees point names and addresses. The
//! tree is the placement at acceptance, a few seconds after the run: a VM cannot move
//! between nodes without being recreated, which ends its point's runs.

use std::collections::BTreeMap;

use measurelab_api::result::ResultDocument;
use measurelab_inference::tree::{distribution_tree, Placement};
use measurelab_inference::{infer, InferenceConfig, InferenceError};
use serde_json::{Map, Value};

use super::error::StoreError;
use super::platforms;
use super::resources::TxContext;

/// Where the task's points run.
pub(crate) enum PointPlacement<'a> {
    /// Points are VMs of this platform (id), named like their VM.
    Platform(&'a str),
    /// Points are the nodes' service hosts, named like their node.
    ServiceHosts,
}

pub(crate) fn node_of_points(
    cx: &TxContext<'_>,
    placement: &PointPlacement<'_>,
    points: &[&str],
) -> Result<BTreeMap<String, String>, StoreError> {
    match placement {
        PointPlacement::ServiceHosts => Ok(points
            .iter()
            .map(|p| (p.to_string(), p.to_string()))
            .collect()),
        PointPlacement::Platform(platform_id) => {
            let mut statement = cx
                .tx
                .prepare_cached("SELECT name, node_id FROM vms WHERE platform_id = ?1")?;
            let rows = statement.query_map([platform_id], |r| {
                Ok((r.get::<String>(0)?, r.get::<String>(1)?))
            })?;
            let mut nodes = BTreeMap::new();
            for row in rows {
                let (vm, node_id) = row?;
                nodes.insert(vm, platforms::node_name(cx.registry, &node_id));
            }
            Ok(nodes)
        }
    }
}

/// Adds `tree` (unless the poster sent one), and for runs with at least two receivers
/// that recorded receipts, `inference` and `bottlenecks` (under `config`, which carries
/// the task's thresholds), to `object`, the document
/// being stored. Points the controller cannot place (not a VM of the platform) leave the
/// run without a tree. Receipts that do not decode refuse the document, naming the
/// receiver; an inference that cannot run otherwise stores the result without it.
pub(crate) fn annotate(
    cx: &TxContext<'_>,
    placement: &PointPlacement<'_>,
    typed: &ResultDocument,
    config: &InferenceConfig,
    object: &mut Map<String, Value>,
) -> Result<(), StoreError> {
    let tree = match &typed.tree {
        Some(tree) => tree.clone(),
        None => {
            let mut points: Vec<&str> = vec![typed.source_point.as_str()];
            points.extend(typed.receivers.iter().map(|r| r.point.as_str()));
            let nodes = node_of_points(cx, placement, &points)?;
            let Some(source_node) = nodes.get(&typed.source_point) else {
                return Ok(());
            };
            let receivers: Option<Vec<Placement<'_>>> = typed
                .receivers
                .iter()
                .map(|r| {
                    nodes.get(&r.point).map(|node| Placement {
                        point: &r.point,
                        node,
                    })
                })
                .collect();
            let Some(receivers) = receivers else {
                return Ok(());
            };
            let source = Placement {
                point: &typed.source_point,
                node: source_node,
            };
            let tree = distribution_tree(&source, &receivers);
            object.insert("tree".into(), to_value(&tree)?);
            tree
        }
    };
    let with_receipts = typed
        .receivers
        .iter()
        .filter(|r| r.receipts.is_some())
        .count();
    if with_receipts < 2 {
        return Ok(());
    }
    match infer(typed, &tree, config) {
        Ok((inference, bottlenecks)) => {
            object.insert("inference".into(), to_value(&inference)?);
            object.insert("bottlenecks".into(), to_value(&bottlenecks)?);
        }
        Err(InferenceError::Receipts { index, source }) => {
            return Err(StoreError::invalid(
                format!("receivers[{index}].receipts"),
                source.to_string(),
            ))
        }
        Err(err) => {
            tracing::warn!(run = %typed.run_id, "result stored without inference: {err}");
        }
    }
    Ok(())
}

fn to_value(value: &impl serde::Serialize) -> Result<Value, StoreError> {
    serde_json::to_value(value).map_err(|e| StoreError::Corrupt(format!("result annotation: {e}")))
}
