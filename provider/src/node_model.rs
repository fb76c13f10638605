//! How a controller node looks in Terraform: the computed attributes shared by
//! the `measurelab_measurement_node` resource and the node data sources.

use std::collections::{BTreeMap, HashMap};

use crate::number::Number;
use measurelab_api::http::{Capabilities, Node, NodeStatus, Resources, UplinkStatus};
use serde::{Deserialize, Serialize};
use tf_provider::schema::{Attribute, AttributeConstraint, AttributeType, Description};

/// `capabilities` object, field names identical to the HTTP API.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CapabilitiesValue {
    /// libvirt URIs the agent could open.
    pub libvirt_uris: Vec<String>,
    /// Whether the namespace backend works.
    pub namespace_backend: bool,
    /// OVS datapath types.
    pub ovs_datapath_types: Vec<String>,
    /// Working QoS features.
    pub qos_features: Vec<String>,
    /// Built-in measurement tools.
    pub service_tools: Vec<String>,
    /// The datapath the integration bridge runs on (absent from states
    /// written before it existed, as are the fields below).
    #[serde(default)]
    pub datapath: String,
    /// The uplink as the node's switch runs it (the HTTP API's type: its
    /// fields are strings and bools, which Terraform state holds as they are);
    /// null: none.
    #[serde(default)]
    pub uplink: Option<UplinkStatus>,
    /// The flow export the node's switch applies now; empty: none.
    #[serde(default)]
    pub flow_export: String,
}

impl From<&Capabilities> for CapabilitiesValue {
    fn from(c: &Capabilities) -> Self {
        CapabilitiesValue {
            libvirt_uris: c.libvirt_uris.clone(),
            namespace_backend: c.namespace_backend,
            ovs_datapath_types: c.ovs_datapath_types.clone(),
            qos_features: c.qos_features.clone(),
            service_tools: c.service_tools.clone(),
            datapath: c.datapath.clone(),
            uplink: c.uplink.clone(),
            flow_export: c.flow_export.clone(),
        }
    }
}

/// `resources` object, field names identical to the HTTP API. Numbers keep
/// the encoding Terraform sent (see `number.rs`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourcesValue {
    /// Number of CPUs.
    pub cpu_count: Number,
    /// CPU use in percent.
    pub cpu_used_percent: Number,
    /// Total memory.
    pub memory_total_bytes: Number,
    /// Memory in use.
    pub memory_used_bytes: Number,
    /// Size of the agent's state filesystem.
    pub disk_total_bytes: Number,
    /// Used space on it.
    pub disk_used_bytes: Number,
    /// Bytes received since boot.
    pub network_rx_bytes: Number,
    /// Bytes sent since boot.
    pub network_tx_bytes: Number,
}

impl From<&Resources> for ResourcesValue {
    fn from(r: &Resources) -> Self {
        ResourcesValue {
            cpu_count: r.cpu_count.into(),
            cpu_used_percent: r.cpu_used_percent.into(),
            memory_total_bytes: r.memory_total_bytes.into(),
            memory_used_bytes: r.memory_used_bytes.into(),
            disk_total_bytes: r.disk_total_bytes.into(),
            disk_used_bytes: r.disk_used_bytes.into(),
            network_rx_bytes: r.network_rx_bytes.into(),
            network_tx_bytes: r.network_tx_bytes.into(),
        }
    }
}

/// One node as listed by the `measurelab_nodes` data source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeValue {
    /// Controller id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// `online` or `offline`.
    pub status: String,
    /// Time of the last heartbeat, empty if none yet.
    pub last_heartbeat: String,
    /// Time of first registration.
    pub registered_at: String,
    /// Agent version.
    pub agent_version: String,
    /// Management address.
    pub management_address: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Labels the agent reported.
    pub reported_labels: BTreeMap<String, String>,
    /// Capabilities.
    pub capabilities: CapabilitiesValue,
    /// Resource use.
    pub resources: ResourcesValue,
}

impl From<&Node> for NodeValue {
    fn from(node: &Node) -> Self {
        NodeValue {
            id: node.id.clone(),
            name: node.name.clone(),
            status: status_text(node.status).to_string(),
            last_heartbeat: node.last_heartbeat.clone().unwrap_or_default(),
            registered_at: node.registered_at.clone(),
            agent_version: node.agent_version.clone(),
            management_address: node.management_address.clone(),
            labels: node.labels.clone(),
            reported_labels: node.reported_labels.clone(),
            capabilities: (&node.capabilities).into(),
            resources: (&node.resources).into(),
        }
    }
}

/// The status as Terraform shows it (same spelling as the HTTP API).
pub fn status_text(status: NodeStatus) -> &'static str {
    match status {
        NodeStatus::Online => "online",
        NodeStatus::Offline => "offline",
        NodeStatus::Revoked => "revoked",
    }
}

/// Terraform type of `capabilities`.
pub fn capabilities_type() -> AttributeType {
    let strings = || AttributeType::List(Box::new(AttributeType::String));
    AttributeType::Object(HashMap::from([
        ("libvirt_uris".to_string(), strings()),
        ("namespace_backend".to_string(), AttributeType::Bool),
        ("ovs_datapath_types".to_string(), strings()),
        ("qos_features".to_string(), strings()),
        ("service_tools".to_string(), strings()),
        ("datapath".to_string(), AttributeType::String),
        ("flow_export".to_string(), AttributeType::String),
        (
            "uplink".to_string(),
            AttributeType::Object(HashMap::from([
                ("name".to_string(), AttributeType::String),
                ("mode".to_string(), AttributeType::String),
                (
                    "members".to_string(),
                    AttributeType::List(Box::new(AttributeType::Object(HashMap::from([
                        ("name".to_string(), AttributeType::String),
                        ("link_up".to_string(), AttributeType::Bool),
                    ])))),
                ),
                ("active_member".to_string(), AttributeType::String),
            ])),
        ),
    ]))
}

/// Terraform type of `resources`.
pub fn resources_type() -> AttributeType {
    AttributeType::Object(
        [
            "cpu_count",
            "cpu_used_percent",
            "memory_total_bytes",
            "memory_used_bytes",
            "disk_total_bytes",
            "disk_used_bytes",
            "network_rx_bytes",
            "network_tx_bytes",
        ]
        .into_iter()
        .map(|name| (name.to_string(), AttributeType::Number))
        .collect(),
    )
}

/// Terraform type of one element of `measurelab_nodes.nodes`.
pub fn node_type() -> AttributeType {
    AttributeType::Object(HashMap::from([
        ("id".to_string(), AttributeType::String),
        ("name".to_string(), AttributeType::String),
        ("status".to_string(), AttributeType::String),
        ("last_heartbeat".to_string(), AttributeType::String),
        ("registered_at".to_string(), AttributeType::String),
        ("agent_version".to_string(), AttributeType::String),
        ("management_address".to_string(), AttributeType::String),
        (
            "labels".to_string(),
            AttributeType::Map(Box::new(AttributeType::String)),
        ),
        (
            "reported_labels".to_string(),
            AttributeType::Map(Box::new(AttributeType::String)),
        ),
        ("capabilities".to_string(), capabilities_type()),
        ("resources".to_string(), resources_type()),
    ]))
}

pub(crate) const CAPABILITIES_DOC: &str = "What the node can do, as last reported by its agent: \
`libvirt_uris` (list of libvirt URIs the agent could open), `namespace_backend` (whether the \
OS-level namespace backend works), `ovs_datapath_types` (OVS datapath types available), \
`qos_features` (QoS features that were probed and work), `service_tools` (built-in \
measurement tools of the node's service host), `datapath` (the datapath the node's integration \
bridge runs on: `system`, the kernel's, or `netdev`, userspace; empty before the bridge exists), \
`flow_export` (the flow export the node's switch applies now, e.g. `ipfix sampling=1 \
active_timeout=10s -> 10.254.0.1:2055`; empty: none) and `uplink` (null when the node has no \
uplink; else `name` of the OVS port, `mode`: `single`, `active-backup`, `balance-slb` or `lacp`, \
`members`: each with `name` and `link_up`, and `active_member`, the member a bond sends on now, \
empty for a single interface or while no member is up). `uplink` follows failover within a \
heartbeat.";

pub(crate) const RESOURCES_DOC: &str = "Resource use as last reported by the agent: `cpu_count`, \
`cpu_used_percent` (0-100, over the last heartbeat interval), `memory_total_bytes`, \
`memory_used_bytes`, `disk_total_bytes` and `disk_used_bytes` (the agent's state filesystem), \
`network_rx_bytes` and `network_tx_bytes` (since boot). Refreshed on every read; changes here \
never cause a plan diff.";

/// A computed attribute with a markdown description.
pub fn computed(attr_type: AttributeType, description: &str) -> Attribute {
    Attribute {
        attr_type,
        description: Description::markdown(description),
        constraint: AttributeConstraint::Computed,
        ..Default::default()
    }
}

/// The computed attributes every node view shares, with their docs.
pub fn computed_node_attributes() -> HashMap<String, Attribute> {
    HashMap::from([
        (
            "id".to_string(),
            computed(AttributeType::String, "Stable id the controller assigned when the node first registered."),
        ),
        (
            "status".to_string(),
            computed(
                AttributeType::String,
                "Liveness as the controller sees it: `online`, `offline`, or `revoked` (an operator \
                 revoked the node; nothing it sends is accepted).",
            ),
        ),
        (
            "last_heartbeat".to_string(),
            computed(
                AttributeType::String,
                "RFC 3339 time of the last heartbeat (empty before the first one). Refreshed on every \
                 read; it changes every few seconds but never causes a plan diff.",
            ),
        ),
        (
            "registered_at".to_string(),
            computed(AttributeType::String, "RFC 3339 time of the node's first registration."),
        ),
        (
            "agent_version".to_string(),
            computed(AttributeType::String, "Version of the node agent."),
        ),
        (
            "management_address".to_string(),
            computed(AttributeType::String, "Management address of the node."),
        ),
        (
            "reported_labels".to_string(),
            computed(
                AttributeType::Map(Box::new(AttributeType::String)),
                "Labels the node's agent reported at its last registration (its `--label` flags). \
                 Shown for information only: node selection uses the operator's `labels`, which \
                 an agent cannot change.",
            ),
        ),
        ("capabilities".to_string(), computed(capabilities_type(), CAPABILITIES_DOC)),
        ("resources".to_string(), computed(resources_type(), RESOURCES_DOC)),
    ])
}
