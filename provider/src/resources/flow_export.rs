//! The `flow_export` block of `measurelab_measurement_node`: the operator's
//! flow export setting of one node, as Terraform shows it and as the
//! controller takes it.

use std::net::SocketAddr;

use measurelab_api::http::{FlowExport, FlowProtocol};
use serde::{Deserialize, Serialize};
use tf_provider::schema::{Attribute, AttributeConstraint, AttributeType, Block, Description};
use tf_provider::value::Value;
use tf_provider::{map, AttributePath, Diagnostics};

use crate::diagnostics;
use crate::number::Number;

/// What an unset `sampling` means: every packet.
const DEFAULT_SAMPLING: u64 = 1;
/// What an unset `active_timeout` means, in seconds (the agent's default).
const DEFAULT_ACTIVE_TIMEOUT: u64 = 10;
/// Largest sampling divisor the controller accepts.
const MAX_SAMPLING: u64 = 1 << 24;
/// Longest active timeout the controller accepts, one day.
const MAX_ACTIVE_TIMEOUT: u64 = 86_400;

/// The block's attributes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowExportBlock {
    /// `sflow`, `netflow` or `ipfix`.
    pub protocol: Value<String>,
    /// Sample one packet in N.
    pub sampling: Value<Number>,
    /// Seconds after which a long flow is exported anyway.
    pub active_timeout: Value<Number>,
    /// `IP:PORT`; null: the controller's collector.
    pub collector: Value<String>,
    /// Off: the node exports nothing.
    pub enabled: Value<bool>,
}

/// The block's schema.
pub fn block() -> Block {
    let attribute = |attr_type, constraint, doc: &str| Attribute {
        attr_type,
        description: Description::markdown(doc),
        constraint,
        ..Default::default()
    };
    Block {
        description: Description::markdown(
            "The node's flow export, which overrides the agent's `--flow-export*` flags. Records \
             are exported only for platforms with `flow_monitoring = true`. Removing the block \
             removes the operator's setting (the agent's flags apply again); destroying the \
             resource leaves it.",
        ),
        attributes: map! {
            "protocol" => attribute(
                AttributeType::String,
                AttributeConstraint::Required,
                "`sflow` (sFlow v5), `netflow` (NetFlow v5, the only NetFlow Open vSwitch \
                 exports; no sampling) or `ipfix`.",
            ),
            "sampling" => attribute(
                AttributeType::Number,
                AttributeConstraint::OptionalComputed,
                "Sample one packet in N, 1 to 16777216 (sflow, ipfix; netflow takes only 1). \
                 Default 1.",
            ),
            "active_timeout" => attribute(
                AttributeType::Number,
                AttributeConstraint::OptionalComputed,
                "Seconds after which a long flow is exported anyway, 1 to 86400 (netflow, \
                 ipfix). Default 10.",
            ),
            "collector" => attribute(
                AttributeType::String,
                AttributeConstraint::Optional,
                "Collector `IP:PORT`. Unset: the controller's own collector, whose flows the \
                 `measurelab_flows` data source reads.",
            ),
            "enabled" => attribute(
                AttributeType::Bool,
                AttributeConstraint::OptionalComputed,
                "`false`: the node exports nothing, whatever its agent's flags say. Default \
                 `true`.",
            ),
        },
        ..Default::default()
    }
}

impl FlowExportBlock {
    /// Unset attributes as the controller will hold them, so the plan
    /// shows the values that apply.
    pub fn with_defaults(mut self) -> Self {
        if self.sampling.is_null() {
            self.sampling = Value::Value(Number::from(DEFAULT_SAMPLING));
        }
        if self.active_timeout.is_null() {
            self.active_timeout = Value::Value(Number::from(DEFAULT_ACTIVE_TIMEOUT));
        }
        if self.enabled.is_null() {
            self.enabled = Value::Value(true);
        }
        self
    }

    /// Check every known attribute; each error points at its attribute.
    pub fn validate(&self, diags: &mut Diagnostics) {
        let at = |name: &'static str| AttributePath::new("flow_export").attribute(name);
        let protocol = match self.protocol.as_ref_option() {
            Some(text) => match parse_protocol(text) {
                Some(protocol) => Some(protocol),
                None => {
                    diagnostics::invalid_value(
                        diags,
                        at("protocol"),
                        "Invalid flow export protocol",
                        format!("{text:?} is not one of \"sflow\", \"netflow\", \"ipfix\"."),
                    );
                    None
                }
            },
            None => None,
        };
        for (name, value, max) in [
            ("sampling", &self.sampling, MAX_SAMPLING),
            ("active_timeout", &self.active_timeout, MAX_ACTIVE_TIMEOUT),
        ] {
            if let Value::Value(number) = value {
                if !number.as_whole().is_some_and(|n| (1..=max).contains(&n)) {
                    diagnostics::invalid_value(
                        diags,
                        at(name),
                        "Invalid flow export setting",
                        format!("`flow_export.{name}` is {number:?}; it must be a whole number from 1 to {max}."),
                    );
                }
            }
        }
        if protocol == Some(FlowProtocol::Netflow) {
            if let Some(sampling) = self.sampling.as_ref_option().and_then(Number::as_whole) {
                if sampling != 1 {
                    diagnostics::invalid_value(
                        diags,
                        at("sampling"),
                        "Invalid flow export setting",
                        format!(
                            "`flow_export.sampling` is {sampling}, but Open vSwitch exports NetFlow \
                             v5, which does not sample.\n\nWhat to do: set `sampling = 1`, or use \
                             `protocol = \"ipfix\"` or `\"sflow\"` to sample."
                        ),
                    );
                }
            }
        }
        if let Value::Value(collector) = &self.collector {
            if collector.parse::<SocketAddr>().is_err() {
                diagnostics::invalid_value(
                    diags,
                    at("collector"),
                    "Invalid flow collector",
                    format!("{collector:?} is not IP:PORT, e.g. \"10.254.0.1:2055\"."),
                );
            }
        }
    }

    /// The controller's form; `None` while an attribute is unknown or invalid
    /// (validation has said why).
    pub fn to_api(&self) -> Option<FlowExport> {
        let defaults = self.clone().with_defaults();
        let whole = |value: &Value<Number>| {
            value
                .as_ref_option()
                .and_then(Number::as_whole)
                .and_then(|n| u32::try_from(n).ok())
        };
        Some(FlowExport {
            enabled: *defaults.enabled.as_ref_option()?,
            protocol: parse_protocol(self.protocol.as_ref_option()?)?,
            sampling: whole(&defaults.sampling)?,
            active_timeout_seconds: whole(&defaults.active_timeout)?,
            collector: self.collector.as_ref_option().cloned(),
        })
    }

    /// Terraform's form of the controller's setting.
    pub fn from_api(export: &FlowExport) -> Self {
        FlowExportBlock {
            protocol: Value::Value(protocol_name(export.protocol).to_string()),
            sampling: Value::Value(Number::from(export.sampling)),
            active_timeout: Value::Value(Number::from(export.active_timeout_seconds)),
            collector: export.collector.clone().map_or(Value::Null, Value::Value),
            enabled: Value::Value(export.enabled),
        }
    }
}

fn parse_protocol(text: &str) -> Option<FlowProtocol> {
    match text {
        "sflow" => Some(FlowProtocol::Sflow),
        "netflow" => Some(FlowProtocol::Netflow),
        "ipfix" => Some(FlowProtocol::Ipfix),
        _ => None,
    }
}

fn protocol_name(protocol: FlowProtocol) -> &'static str {
    match protocol {
        FlowProtocol::Sflow => "sflow",
        FlowProtocol::Netflow => "netflow",
        FlowProtocol::Ipfix => "ipfix",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configured(protocol: &str, sampling: Option<u64>) -> FlowExportBlock {
        FlowExportBlock {
            protocol: Value::Value(protocol.into()),
            sampling: sampling.map_or(Value::Null, |n| Value::Value(Number::from(n))),
            ..Default::default()
        }
    }

    #[test]
    fn unset_attributes_take_the_controllers_defaults() {
        let export = configured("ipfix", Some(64)).to_api().unwrap();
        assert_eq!(
            export,
            FlowExport {
                enabled: true,
                protocol: FlowProtocol::Ipfix,
                sampling: 64,
                active_timeout_seconds: 10,
                collector: None,
            }
        );
    }

    #[test]
    fn the_controllers_setting_reads_back_as_configured_with_defaults() {
        let block = configured("sflow", Some(128)).with_defaults();
        let api = block.to_api().unwrap();
        assert_eq!(FlowExportBlock::from_api(&api), block);
    }

    #[test]
    fn errors_point_at_the_attribute_and_say_why() {
        let mut diags = Diagnostics::default();
        configured("netflow9", None).validate(&mut diags);
        assert_eq!(diags.errors.len(), 1);
        assert_eq!(
            diags.errors[0].attribute,
            AttributePath::new("flow_export").attribute("protocol")
        );

        let mut diags = Diagnostics::default();
        configured("netflow", Some(8)).validate(&mut diags);
        assert_eq!(diags.errors.len(), 1);
        assert!(diags.errors[0].detail.contains("does not sample"));

        let mut diags = Diagnostics::default();
        let mut block = configured("ipfix", Some(0));
        block.collector = Value::Value("collector:2055".into());
        block.validate(&mut diags);
        let paths: Vec<_> = diags.errors.iter().map(|e| e.attribute.clone()).collect();
        assert_eq!(
            paths,
            vec![
                AttributePath::new("flow_export").attribute("sampling"),
                AttributePath::new("flow_export").attribute("collector"),
            ]
        );
    }
}
