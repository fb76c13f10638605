//! Which flow export the node's switch runs: the operator's setting from the
//! desired state wins over the agent's own configuration, and nothing is
//! exported unless a platform on this node asked for flow monitoring.
//!
//! Why the operator wins: the controller's setting is the one an operator
//! sees and changes from Terraform (`measurelab_measurement_node`) without
//! logging into the node; the agent's flags are what a node does before any
//! operator said anything (a fresh or standalone node). `enabled = false`
//! from the operator therefore switches export off even where the agent's
//! configuration turns it on.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use measurelab_api::http::FlowProtocol;
use measurelab_api::node_v1::DesiredState;

use crate::ovs::{FlowExportSpec, IpfixSpec, NetflowSpec, SflowSpec};

/// A node's flow export, from the agent's configuration or the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowExportSettings {
    /// sFlow, NetFlow (v5: what Open vSwitch speaks) or IPFIX.
    pub protocol: FlowProtocol,
    /// Sample one packet in N (sFlow, IPFIX; NetFlow v5 cannot sample).
    pub sampling: u32,
    /// Seconds after which a long flow is exported anyway (NetFlow, IPFIX);
    /// the counter polling interval for sFlow.
    pub active_timeout_seconds: u32,
    /// Collector `IP:PORT`; `None`: the controller's collector.
    pub collector: Option<String>,
}

impl FlowExportSettings {
    /// Check the settings; the error is `(field, reason)`, the field named
    /// under `prefix`.
    pub fn validate(&self, prefix: &str) -> Result<(), (String, String)> {
        let field = |name: &str| format!("{prefix}{name}");
        if self.sampling == 0 {
            return Err((field("sampling"), "must be >= 1".into()));
        }
        if self.protocol == FlowProtocol::Netflow && self.sampling != 1 {
            return Err((
                field("sampling"),
                format!(
                    "{} is not possible with netflow: Open vSwitch exports NetFlow v5, which \
                     does not sample; use 1, or ipfix or sflow to sample",
                    self.sampling
                ),
            ));
        }
        if self.active_timeout_seconds == 0 {
            return Err((field("active_timeout_seconds"), "must be >= 1".into()));
        }
        if let Some(collector) = &self.collector {
            if collector.parse::<SocketAddr>().is_err() {
                return Err((
                    field("collector"),
                    format!("{collector:?} is not IP:PORT, e.g. 10.254.0.1:2055"),
                ));
            }
        }
        Ok(())
    }
}

/// What the switch exports now, as capabilities report it (empty: nothing).
/// Shared between the reconcile loop, which sets it, and the heartbeat,
/// which reports it.
#[derive(Debug, Clone, Default)]
pub struct FlowExportStatus(Arc<Mutex<String>>);

impl FlowExportStatus {
    /// The current description.
    pub fn get(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set(&self, text: String) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = text;
    }
}

/// The export spec for the switch plus its one-line description.
pub(crate) fn plan(
    desired: &DesiredState,
    configured: Option<&FlowExportSettings>,
) -> (FlowExportSpec, String) {
    let chosen = match &desired.flow_export {
        Some(operator) if !operator.enabled => None,
        Some(operator) => match FlowProtocol::parse(&operator.protocol) {
            Some(protocol) => Some(FlowExportSettings {
                protocol,
                sampling: operator.sampling,
                active_timeout_seconds: operator.active_timeout_seconds,
                collector: Some(operator.collector.clone()).filter(|c| !c.is_empty()),
            }),
            None => {
                return (
                    FlowExportSpec::default(),
                    format!("off: unknown protocol {:?}", operator.protocol),
                )
            }
        },
        None => configured.cloned(),
    };
    let Some(settings) = chosen else {
        return (FlowExportSpec::default(), String::new());
    };
    if let Err((field, reason)) = settings.validate("flow_export.") {
        return (FlowExportSpec::default(), format!("off: {field}: {reason}"));
    }
    if !desired.platforms.iter().any(|p| p.flow_monitoring) {
        // Exporting costs the datapath; no platform here wants it.
        return (FlowExportSpec::default(), String::new());
    }
    let target = settings
        .collector
        .clone()
        .or_else(|| Some(desired.flow_collector.clone()).filter(|c| !c.is_empty()));
    let Some(target) = target else {
        return (
            FlowExportSpec::default(),
            "off: no collector (the controller runs none and none is configured)".into(),
        );
    };
    let mut spec = FlowExportSpec::default();
    let targets = vec![target.clone()];
    match settings.protocol {
        FlowProtocol::Sflow => {
            spec.sflow = Some(SflowSpec {
                targets,
                sampling: settings.sampling,
                polling_seconds: settings.active_timeout_seconds,
                header_bytes: None,
                agent: None,
            })
        }
        FlowProtocol::Netflow => {
            spec.netflow = Some(NetflowSpec {
                targets,
                active_timeout_seconds: i64::from(settings.active_timeout_seconds),
            })
        }
        FlowProtocol::Ipfix => {
            spec.ipfix = Some(IpfixSpec {
                targets,
                sampling: settings.sampling,
                cache_active_timeout_seconds: settings.active_timeout_seconds,
                obs_domain_id: None,
            })
        }
    }
    let protocol = match settings.protocol {
        FlowProtocol::Netflow => "netflow-v5",
        other => other.as_str(),
    };
    let text = format!(
        "{protocol} sampling=1/{} active_timeout={}s -> {target}",
        settings.sampling, settings.active_timeout_seconds
    );
    (spec, text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use measurelab_api::node_v1::{DesiredFlowExport, DesiredPlatform};

    fn desired(monitoring: bool, operator: Option<DesiredFlowExport>) -> DesiredState {
        DesiredState {
            platforms: vec![DesiredPlatform {
                id: "p".into(),
                flow_monitoring: monitoring,
                ..Default::default()
            }],
            flow_export: operator,
            flow_collector: "10.254.0.1:2055".into(),
            ..Default::default()
        }
    }

    fn configured() -> FlowExportSettings {
        FlowExportSettings {
            protocol: FlowProtocol::Sflow,
            sampling: 64,
            active_timeout_seconds: 5,
            collector: Some("127.0.0.1:6343".into()),
        }
    }

    #[test]
    fn agent_configuration_applies_when_the_operator_set_nothing() {
        let (spec, text) = plan(&desired(true, None), Some(&configured()));
        let sflow = spec.sflow.expect("sflow");
        assert_eq!(sflow.targets, vec!["127.0.0.1:6343".to_string()]);
        assert_eq!(sflow.sampling, 64);
        assert_eq!(
            text,
            "sflow sampling=1/64 active_timeout=5s -> 127.0.0.1:6343"
        );
    }

    #[test]
    fn the_operator_wins_and_defaults_to_the_controller_collector() {
        let operator = DesiredFlowExport {
            enabled: true,
            protocol: "ipfix".into(),
            sampling: 1,
            active_timeout_seconds: 2,
            collector: String::new(),
        };
        let (spec, _) = plan(&desired(true, Some(operator)), Some(&configured()));
        assert_eq!(spec.sflow, None);
        let ipfix = spec.ipfix.expect("ipfix");
        assert_eq!(ipfix.targets, vec!["10.254.0.1:2055".to_string()]);
        assert_eq!(ipfix.cache_active_timeout_seconds, 2);
    }

    #[test]
    fn operator_off_beats_agent_on() {
        let operator = DesiredFlowExport {
            enabled: false,
            protocol: "ipfix".into(),
            sampling: 1,
            active_timeout_seconds: 2,
            collector: String::new(),
        };
        let (spec, text) = plan(&desired(true, Some(operator)), Some(&configured()));
        assert_eq!(spec, FlowExportSpec::default());
        assert_eq!(text, "");
    }

    #[test]
    fn nothing_is_exported_without_a_monitored_platform() {
        let (spec, text) = plan(&desired(false, None), Some(&configured()));
        assert_eq!(spec, FlowExportSpec::default());
        assert_eq!(text, "");
    }

    #[test]
    fn netflow_is_v5_and_cannot_sample() {
        let mut settings = configured();
        settings.protocol = FlowProtocol::Netflow;
        let (field, reason) = settings.validate("flow_export_").unwrap_err();
        assert_eq!(field, "flow_export_sampling");
        assert!(reason.contains("NetFlow v5"), "{reason}");
        settings.sampling = 1;
        let (spec, text) = plan(&desired(true, None), Some(&settings));
        assert_eq!(spec.netflow.expect("netflow").active_timeout_seconds, 5);
        assert!(text.starts_with("netflow-v5 "), "{text}");
    }
}
