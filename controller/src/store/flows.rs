//! The operator's per-node flow export setting (`node_flow_export`), its
//! validation, and its form in a node's desired state.

use std::net::SocketAddr;

use crate::store::sql::{params, Connection, OptionalExtension};
use measurelab_api::http::{FlowExport, FlowProtocol};
use measurelab_api::node_v1::DesiredFlowExport;

use super::codec::{from_json, to_json};
use super::error::StoreError;
use super::resources::TxContext;
use crate::validation::FieldError;

/// Largest sampling divisor accepted (OVS takes a 32-bit value; beyond this a
/// lab node would report next to nothing).
const MAX_SAMPLING: u32 = 1 << 24;
/// Longest active timeout accepted, one day.
const MAX_ACTIVE_TIMEOUT_SECONDS: u32 = 86_400;

/// Check a setting before anything is stored; the error names the field
/// under `field` (e.g. `flow_export.sampling`).
pub(crate) fn validate(field: &str, export: &FlowExport) -> Result<(), FieldError> {
    let at = |name: &str| format!("{field}.{name}");
    if export.sampling == 0 || export.sampling > MAX_SAMPLING {
        return Err(FieldError::new(
            at("sampling"),
            format!("{} must be in 1..={MAX_SAMPLING}", export.sampling),
        ));
    }
    // OVS's NetFlow is version 5 without sampling: it reports every flow of
    // the datapath, so a divisor would silently be ignored.
    if export.protocol == FlowProtocol::Netflow && export.sampling != 1 {
        return Err(FieldError::new(
            at("sampling"),
            format!(
                "{} is not possible with netflow: Open vSwitch exports NetFlow v5, which does \
                 not sample; use 1, or ipfix or sflow to sample",
                export.sampling
            ),
        ));
    }
    if export.active_timeout_seconds == 0
        || export.active_timeout_seconds > MAX_ACTIVE_TIMEOUT_SECONDS
    {
        return Err(FieldError::new(
            at("active_timeout_seconds"),
            format!(
                "{} must be in 1..={MAX_ACTIVE_TIMEOUT_SECONDS}",
                export.active_timeout_seconds
            ),
        ));
    }
    if let Some(collector) = &export.collector {
        if collector.parse::<SocketAddr>().is_err() {
            return Err(FieldError::new(
                at("collector"),
                format!("{collector:?} is not IP:PORT, e.g. 10.254.0.1:2055"),
            ));
        }
    }
    Ok(())
}

/// The operator's setting for a node, if any.
pub(crate) fn node_export(
    conn: &Connection,
    node_id: &str,
) -> Result<Option<FlowExport>, StoreError> {
    let spec: Option<String> = conn
        .prepare_cached("SELECT spec FROM node_flow_export WHERE node_id = ?1")?
        .query_row([node_id], |r| r.get(0))
        .optional()?;
    spec.map(|text| from_json("node_flow_export.spec", &text))
        .transpose()
}

/// Replace (`Some`) or remove (`None`) a node's setting; bumps the node's
/// desired state only when it changed. The caller validated `export`.
pub(crate) fn set_node_export(
    cx: &mut TxContext<'_>,
    node_id: &str,
    export: Option<FlowExport>,
) -> Result<(), StoreError> {
    if node_export(cx.tx, node_id)? == export {
        return Ok(());
    }
    match &export {
        Some(export) => {
            cx.tx
                .prepare_cached(
                    "INSERT INTO node_flow_export (node_id, spec) VALUES (?1, ?2)
                     ON CONFLICT (node_id) DO UPDATE SET spec = excluded.spec",
                )?
                .execute(params![node_id, to_json(export)])?;
        }
        None => {
            cx.tx
                .prepare_cached("DELETE FROM node_flow_export WHERE node_id = ?1")?
                .execute([node_id])?;
        }
    }
    cx.touch_node(node_id)?;
    let message = match &export {
        Some(e) if e.enabled => format!(
            "flow export set to {} sampling 1/{} active timeout {} s",
            e.protocol.as_str(),
            e.sampling,
            e.active_timeout_seconds
        ),
        Some(_) => "flow export turned off by the operator".to_string(),
        None => "flow export setting removed; the agent's configuration applies".to_string(),
    };
    cx.event(None, "NodeFlowExportChanged", "node", node_id, message)
}

/// The setting as the node's desired state carries it.
pub(crate) fn desired_export(export: &FlowExport) -> DesiredFlowExport {
    DesiredFlowExport {
        enabled: export.enabled,
        protocol: export.protocol.as_str().to_string(),
        sampling: export.sampling,
        active_timeout_seconds: export.active_timeout_seconds,
        collector: export.collector.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export() -> FlowExport {
        FlowExport {
            enabled: true,
            protocol: FlowProtocol::Ipfix,
            sampling: 1,
            active_timeout_seconds: 10,
            collector: None,
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(validate("flow_export", &export()), Ok(()));
        let cases: Vec<(&str, FlowExport)> = vec![
            (
                "flow_export.sampling",
                FlowExport {
                    sampling: 0,
                    ..export()
                },
            ),
            (
                "flow_export.sampling",
                FlowExport {
                    protocol: FlowProtocol::Netflow,
                    sampling: 10,
                    ..export()
                },
            ),
            (
                "flow_export.active_timeout_seconds",
                FlowExport {
                    active_timeout_seconds: 0,
                    ..export()
                },
            ),
            (
                "flow_export.collector",
                FlowExport {
                    collector: Some("collector:2055".into()),
                    ..export()
                },
            ),
        ];
        for (field, bad) in cases {
            assert_eq!(
                validate("flow_export", &bad).map_err(|e| e.field),
                Err(field.to_string())
            );
        }
    }

    #[test]
    fn netflow_error_says_it_is_v5() {
        let bad = FlowExport {
            protocol: FlowProtocol::Netflow,
            sampling: 4,
            ..export()
        };
        let reason = validate("flow_export", &bad).unwrap_err().reason;
        assert!(reason.contains("NetFlow v5"), "{reason}");
    }
}
