//! Public HTTP/JSON bodies. Request bodies reject unknown fields so a typo in a
//! client is an error, never a silently ignored setting.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Liveness of a node as the controller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Heartbeats arrive within the deadline.
    Online,
    /// The last heartbeat is older than the deadline.
    Offline,
}

/// What a node can do, as reported by its agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    /// libvirt URIs the agent could open.
    pub libvirt_uris: Vec<String>,
    /// Whether the OS-level (namespace) backend works on the node.
    pub namespace_backend: bool,
    /// OVS datapath types available.
    pub ovs_datapath_types: Vec<String>,
    /// QoS features that were probed and work.
    pub qos_features: Vec<String>,
    /// Built-in measurement tools of the node's service host.
    pub service_tools: Vec<String>,
}

/// Resource use of a node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// Number of CPUs.
    pub cpu_count: u32,
    /// CPU use over the last heartbeat interval, 0-100.
    pub cpu_used_percent: f64,
    /// Total memory.
    pub memory_total_bytes: u64,
    /// Memory in use.
    pub memory_used_bytes: u64,
    /// Size of the agent's state filesystem.
    pub disk_total_bytes: u64,
    /// Used space on the agent's state filesystem.
    pub disk_used_bytes: u64,
    /// Bytes received on the node's interfaces since boot.
    pub network_rx_bytes: u64,
    /// Bytes sent on the node's interfaces since boot.
    pub network_tx_bytes: u64,
}

/// A measurement node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Stable id assigned at first registration.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Liveness.
    pub status: NodeStatus,
    /// RFC 3339 time of the last heartbeat, if any.
    pub last_heartbeat: Option<String>,
    /// RFC 3339 time of the first registration.
    pub registered_at: String,
    /// Version of the node agent.
    pub agent_version: String,
    /// Management address of the node.
    pub management_address: String,
    /// Capabilities as last reported.
    pub capabilities: Capabilities,
    /// Resource use as last reported.
    pub resources: Resources,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
}

/// `GET /v1/nodes` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeList {
    /// The nodes, ordered by name.
    pub nodes: Vec<Node>,
}

/// One log line shipped by an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// RFC 3339 time the line was written on the node.
    pub time: String,
    /// Level: error, warn, info, debug, trace.
    pub level: String,
    /// Module that wrote it.
    pub target: String,
    /// The message.
    pub message: String,
}

/// `GET /v1/nodes/{id}/logs` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogList {
    /// Lines, oldest first.
    pub lines: Vec<LogLine>,
}

/// Something that happened, recorded by the controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Monotonic id; use it as a cursor (`?after=`).
    pub id: i64,
    /// RFC 3339 time.
    pub time: String,
    /// CamelCase reason, e.g. `NodeRegistered`, `NodeOffline`, `NodeOnline`,
    /// `RegistrationRefused`.
    pub reason: String,
    /// Kind of object the event is about, e.g. `node`.
    pub object_kind: String,
    /// Id or name of that object.
    pub object_id: String,
    /// Human-readable detail.
    pub message: String,
}

/// `GET /v1/events` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventList {
    /// Events, oldest first.
    pub events: Vec<Event>,
}

/// Body of every error response: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong, machine- and human-readable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable snake_case code, e.g. `invalid_field`, `not_found`, `conflict`,
    /// `unauthorized`, `payload_too_large`.
    pub code: String,
    /// Human-readable message naming the field and the reason.
    pub message: String,
    /// JSON path of the offending field, when one field is to blame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// `PATCH /v1/nodes/{id_or_name}` body: replaces the node's labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodePatch {
    /// The complete new label set (keys not listed are removed).
    pub labels: BTreeMap<String, String>,
}
