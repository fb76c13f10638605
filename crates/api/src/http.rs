//! Public HTTP/JSON bodies. Unknown request fields are the controller's
//! call (`?fieldValidation=`, see docs/version-skew.md), not the types':
//! the project's client asks for `Strict`, so a typo is an error there,
//! while an older controller can still warn about and skip an optional
//! field a newer client sends. New request fields must therefore be
//! optional and left out when unset.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One page of a list route: its items and the cursor of the next page.
pub trait Paged {
    /// What the list holds.
    type Item;
    /// The items and, unless this is the last page, the next page's cursor.
    fn into_page(self) -> (Vec<Self::Item>, Option<String>);
}

macro_rules! paged {
    ($list:ident, $field:ident, $item:ty) => {
        impl $crate::http::Paged for $list {
            type Item = $item;
            fn into_page(self) -> (Vec<$item>, Option<String>) {
                (self.$field, self.next_cursor)
            }
        }
    };
}

mod node_identity;
pub use node_identity::*;

/// Liveness of a node as the controller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Heartbeats arrive within the deadline.
    Online,
    /// The last heartbeat is older than the deadline.
    Offline,
    /// An operator revoked the node: its heartbeats and calls are refused
    /// until an operator approves its next registration.
    Revoked,
}

/// What a node can do, as reported by its agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
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
    /// Control endpoint `IPv4:port` of the node's service host on its service
    /// network; empty when the node runs none (it cannot take service_host tasks).
    #[serde(default)]
    #[schema(required = true)]
    pub service_endpoint: String,
    /// The flow export the node's switch applies now, e.g.
    /// `ipfix sampling=1 active_timeout=10s -> 10.254.0.1:2055`; empty: none.
    #[serde(default)]
    #[schema(required = true)]
    pub flow_export: String,
    /// The node's uplink towards the lab switch as its switch runs it (one
    /// interface or a bond, with each member's link and the active member);
    /// null: the node has no uplink.
    #[serde(default)]
    #[schema(required = true)]
    pub uplink: Option<UplinkStatus>,
    /// The datapath the node's integration bridge runs on: `system` (the
    /// kernel's) or `netdev` (userspace); empty: no bridge yet.
    #[serde(default)]
    #[schema(required = true)]
    pub datapath: String,
    /// The node's underlay (VXLAN tunnel endpoint) IPv4 address; empty: the
    /// node shares an L2 segment with its peers and needs no tunnels.
    #[serde(default)]
    #[schema(required = true)]
    pub tunnel_address: String,
    /// The node's public IPv4 address (the agent's `--public-address`), where
    /// researchers' WireGuard peers reach the platform gateways it runs;
    /// empty: the node can run no gateway.
    #[serde(default)]
    #[schema(required = true)]
    pub public_address: String,
    /// Measurement control protocol version of the node's service-host
    /// point (docs/measurement-control.md); null: an agent older than
    /// version 2, whose point speaks version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_protocol_version: Option<u32>,
}

/// A node's uplink port: one interface or a bond of several.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UplinkStatus {
    /// OVS port name, e.g. `bond0` or `uplink0`.
    pub name: String,
    /// `single`, `active-backup`, `balance-slb` or `lacp`.
    pub mode: String,
    /// Member interfaces, by name.
    pub members: Vec<UplinkMember>,
    /// The member the bond sends on now; empty for a single interface or
    /// while no member is up.
    pub active_member: String,
}

/// One member interface of an uplink.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UplinkMember {
    /// Interface name.
    pub name: String,
    /// Its link (carrier) is up.
    pub link_up: bool,
}

/// Resource use of a node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Resources {
    /// Number of CPUs.
    pub cpu_count: u32,
    /// CPU use over the last heartbeat interval, 0-100.
    #[schema(minimum = 0, maximum = 100)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Node {
    /// Stable id assigned at first registration.
    #[schema(format = "uuid")]
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Liveness.
    pub status: NodeStatus,
    /// RFC 3339 time of the last heartbeat, if any.
    #[schema(format = DateTime, required = true)]
    pub last_heartbeat: Option<String>,
    /// RFC 3339 time of the first registration.
    #[schema(format = DateTime)]
    pub registered_at: String,
    /// Version of the node agent.
    pub agent_version: String,
    /// Management address of the node.
    pub management_address: String,
    /// Capabilities as last reported.
    pub capabilities: Capabilities,
    /// Resource use as last reported.
    pub resources: Resources,
    /// Operator labels: what placement and the provider's node selection use.
    /// Set with PATCH; a new node's first registration seeds them with its
    /// reported labels, later registrations never change them.
    #[schema(schema_with = schemas::labels)]
    pub labels: BTreeMap<String, String>,
    /// The operator's flow export setting; null: none, so the agent's own
    /// configuration applies (`capabilities.flow_export` shows what runs).
    #[serde(default)]
    #[schema(required = true)]
    pub flow_export: Option<FlowExport>,
    /// vCPUs the VMs placed on this node may add up to, per reported CPU
    /// (set by the operator; 1.0 = no overcommit).
    #[serde(default = "default_cpu_overcommit")]
    #[schema(minimum = 1.0, maximum = 64.0, required = true)]
    pub cpu_overcommit: f64,
    /// Memory the VMs placed on this node may add up to, per MiB of reported
    /// total memory (set by the operator; 1.0 = no overcommit).
    #[serde(default = "default_memory_overcommit")]
    #[schema(minimum = 1.0, maximum = 64.0, required = true)]
    pub memory_overcommit: f64,
    /// Labels the node's agent reported at its last registration (its
    /// `--label` flags). Informational: nothing selects by them.
    #[serde(default)]
    #[schema(schema_with = schemas::labels)]
    pub reported_labels: BTreeMap<String, String>,
}

/// What a node JSON without ratios (an older controller) means.
fn default_cpu_overcommit() -> f64 {
    16.0
}

fn default_memory_overcommit() -> f64 {
    1.0
}

/// Flow export protocols of Open vSwitch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FlowProtocol {
    /// sFlow v5 packet sampling.
    Sflow,
    /// NetFlow v5, the only NetFlow version OVS exports (no v9); no sampling.
    Netflow,
    /// IPFIX (RFC 7011), bridge-wide sampling.
    Ipfix,
}

/// A node's flow export (sFlow, NetFlow v5 or IPFIX rows on its bridge).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FlowExport {
    /// Off: the node exports nothing, whatever its agent's configuration says.
    pub enabled: bool,
    /// Protocol.
    pub protocol: FlowProtocol,
    /// Sample one packet in N (sflow, ipfix; netflow must be 1).
    #[schema(minimum = 1)]
    pub sampling: u32,
    /// Seconds after which a long flow is exported anyway (netflow, ipfix).
    #[schema(minimum = 1)]
    pub active_timeout_seconds: u32,
    /// Collector `IP:PORT`; null: the controller's own collector.
    #[serde(default)]
    #[schema(required = true)]
    pub collector: Option<String>,
}

/// `GET /v1/nodes` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeList {
    /// The nodes, ordered by name.
    pub nodes: Vec<Node>,
    /// Set when more items follow: pass it as `?after=` for the next page
    /// (docs/pagination.md). Absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

paged!(NodeList, nodes, Node);

/// One log line shipped by an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogLine {
    /// RFC 3339 time the line was written on the node.
    #[schema(format = DateTime)]
    pub time: String,
    /// Level: error, warn, info, debug, trace.
    #[schema(schema_with = schemas::log_level)]
    pub level: String,
    /// Module that wrote it.
    pub target: String,
    /// The message.
    pub message: String,
}

/// `GET /v1/nodes/{id}/logs` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogList {
    /// Lines, oldest first.
    pub lines: Vec<LogLine>,
}

/// Something that happened, recorded by the controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Monotonic id; use it as a cursor (`?after=`).
    pub id: i64,
    /// RFC 3339 time.
    #[schema(format = DateTime)]
    pub time: String,
    /// CamelCase reason, e.g. `NodeRegistered`, `NodeOffline`, `NodeOnline`,
    /// `RegistrationRefused`.
    pub reason: String,
    /// Kind of object the event is about, e.g. `node`.
    #[schema(example = "node")]
    pub object_kind: String,
    /// Id or name of that object.
    pub object_id: String,
    /// Human-readable detail.
    pub message: String,
}

/// `GET /v1/events` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventList {
    /// Events, oldest first.
    pub events: Vec<Event>,
    /// Set when more items follow: pass it as `?after=` for the next page
    /// (docs/pagination.md). Absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// On a `?before=` page that is full: pass it as `?before=` for the
    /// page of events before this one. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub older_cursor: Option<String>,
}

paged!(EventList, events, Event);

/// Body of every error response: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong, machine- and human-readable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case code, e.g. `invalid_field`, `not_found`, `conflict`,
    /// `unauthorized`, `payload_too_large`.
    #[schema(schema_with = schemas::error_code)]
    pub code: String,
    /// Human-readable message naming the field and the reason.
    pub message: String,
    /// JSON path of the offending field, when one field is to blame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// `PATCH /v1/nodes/{id_or_name}` body: replaces the node's labels and
/// sets its overcommit ratios; an absent ratio keeps its current value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodePatch {
    /// The complete new label set (keys not listed are removed).
    #[schema(schema_with = schemas::labels)]
    pub labels: BTreeMap<String, String>,
    /// Flow export: absent leaves it, null removes the operator's setting (the
    /// agent's configuration applies again), an object replaces it.
    #[serde(
        default,
        deserialize_with = "present_or_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<FlowExport>)]
    pub flow_export: Option<Option<FlowExport>>,
    /// New vCPU overcommit ratio, 1.0-64.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1.0, maximum = 64.0)]
    pub cpu_overcommit: Option<f64>,
    /// New memory overcommit ratio, 1.0-64.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1.0, maximum = 64.0)]
    pub memory_overcommit: Option<f64>,
}

// ---- Virtual platforms, QoS policies, appliances, VMs ----

/// Power state of a virtual platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlatformPowerState {
    /// VMs run as their own power_state says.
    Running,
    /// Every VM of the platform is suspended.
    Paused,
}

/// A virtual platform (the paper's slice): VMs on chosen nodes, one VLAN, one subnet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Platform {
    /// Stable id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Names of the member nodes.
    pub nodes: Vec<String>,
    /// Administrators of the platform (free-form principals).
    pub admins: Vec<String>,
    /// Free text.
    pub description: String,
    /// VLAN tag of every VM port of the platform.
    #[schema(minimum = 1, maximum = 4094)]
    pub vlan_tag: u16,
    /// IPv4 subnet (CIDR) the VM addresses come from.
    pub subnet: String,
    /// Gateway address inside the subnet, if any.
    #[serde(default)]
    #[schema(required = true)]
    pub gateway: Option<String>,
    /// Running or paused.
    pub power_state: PlatformPowerState,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Id of the tenant that owns it.
    #[serde(default)]
    #[schema(required = true)]
    pub tenant_id: String,
    /// Bumped on every change.
    pub generation: u64,
    /// The platform's traffic is exported by its nodes and kept by the
    /// controller's collector (`GET /v1/platforms/{id}/flows`).
    #[serde(default)]
    pub flow_monitoring: bool,
    /// Where the platform's WireGuard gateway runs; null: it has none.
    #[serde(default)]
    #[schema(required = true)]
    pub gateway_spec: Option<PlatformGatewaySpec>,
    /// `public_address:listen_port` peers connect to; null without a gateway.
    #[serde(default)]
    #[schema(required = true)]
    pub gateway_endpoint: Option<String>,
    /// The gateway's base64 X25519 public key; null without a gateway.
    #[serde(default)]
    #[schema(required = true)]
    pub gateway_public_key: Option<String>,
    /// The gateway's tunnel network (a /24 of the controller's tunnel pool);
    /// the gateway is its first host, peers get the next free ones.
    #[serde(default)]
    #[schema(required = true)]
    pub tunnel_network: Option<String>,
    /// Whether the gateway serves peers, as its node last reported; null
    /// without a gateway.
    #[serde(default)]
    #[schema(required = true)]
    pub gateway_status: Option<PlatformGatewayStatus>,
}

/// How a platform's WireGuard gateway stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlatformGatewayStatus {
    /// `pending` until its node reports it (after it was added or moved),
    /// then `ready` or `failed` as the node agent found it; `failed` too
    /// when its node was revoked.
    pub state: GatewayState,
    /// Why, for `pending` and `failed` (the node agent's error, e.g. the
    /// listen port already in use); empty when `ready`.
    pub message: String,
}

/// State of a platform's WireGuard gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GatewayState {
    /// Not (yet) reported by its node.
    Pending,
    /// Its device, addresses, rules and listen port are up.
    Ready,
    /// Its node could not bring it up, or no longer serves it.
    Failed,
}

impl GatewayState {
    /// The wire and storage spelling (`StatusReport.gateways[].state`).
    pub fn as_str(self) -> &'static str {
        match self {
            GatewayState::Pending => "pending",
            GatewayState::Ready => "ready",
            GatewayState::Failed => "failed",
        }
    }

    /// The state `text` spells, if any.
    pub fn parse(text: &str) -> Option<Self> {
        [
            GatewayState::Pending,
            GatewayState::Ready,
            GatewayState::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// Where a platform's WireGuard gateway runs: `gateway` of a platform body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlatformGatewaySpec {
    /// Member node (name or id) that runs the endpoint; it must report a
    /// `public_address`.
    pub node: String,
    /// UDP port on the node's public address, unique among the node's gateways.
    #[schema(minimum = 1, maximum = 65535)]
    pub listen_port: u32,
}

/// `POST /v1/platforms` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlatformCreate {
    /// Unique name (DNS label).
    pub name: String,
    /// Member node names.
    pub nodes: Vec<String>,
    /// Administrators.
    #[serde(default)]
    pub admins: Vec<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Export and keep the platform's traffic (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_monitoring: Option<bool>,
    /// A WireGuard gateway into the platform subnet (default none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<PlatformGatewaySpec>,
    /// Tenant (id or name) to create it in. A tenant token may only name its
    /// own tenant; the operator's objects go to `default` when this is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `PATCH /v1/platforms/{id_or_name}` body; absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlatformPatch {
    /// New complete member list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<String>>,
    /// New complete admin list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admins: Option<Vec<String>>,
    /// New description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Running or paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_state: Option<PlatformPowerState>,
    /// Export and keep the platform's traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_monitoring: Option<bool>,
    /// The gateway: absent leaves it, an object adds it or moves it in place
    /// (keys, tunnel network and peers kept), null removes it (refused while
    /// the platform has peers).
    #[serde(
        default,
        deserialize_with = "present_or_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<PlatformGatewaySpec>)]
    pub gateway: Option<Option<PlatformGatewaySpec>>,
    /// Idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// A WireGuard peer of a platform's gateway: a researcher's laptop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlatformPeer {
    /// Stable id.
    pub id: String,
    /// Unique within the platform (DNS label).
    pub name: String,
    /// Id of the platform.
    pub platform_id: String,
    /// The peer's base64 X25519 public key.
    pub public_key: String,
    /// The peer's address in the gateway's tunnel network, `A.B.C.D/32`.
    pub tunnel_address: String,
    /// What the peer may reach through the tunnel: the platform subnet only.
    pub allowed_ips: String,
    /// The gateway's `public_address:listen_port`.
    pub endpoint: String,
    /// The gateway's base64 X25519 public key.
    pub gateway_public_key: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// A `wg-quick` configuration for the peer. Its `[Interface]` carries a
    /// `PrivateKey` only in the answer to the POST that generated the key.
    pub config: String,
    /// The generated base64 private key: only in the answer to the POST that
    /// generated it (no `public_key` given); the controller does not keep it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
}

impl PlatformPeer {
    /// The peer's `wg-quick` configuration, with `private_key` in its
    /// `[Interface]` when known. The controller and the provider both render
    /// it here, so a configuration the provider completes with a key it holds
    /// matches the controller's answer line for line.
    pub fn wg_quick_config(&self, private_key: Option<&str>) -> String {
        let mut config = String::from("[Interface]\n");
        if let Some(key) = private_key {
            config.push_str(&format!("PrivateKey = {key}\n"));
        }
        config.push_str(&format!(
            "Address = {}\n\n[Peer]\nPublicKey = {}\nEndpoint = {}\nAllowedIPs = {}\nPersistentKeepalive = 25\n",
            self.tunnel_address, self.gateway_public_key, self.endpoint, self.allowed_ips
        ));
        config
    }
}

/// `POST /v1/platforms/{id_or_name}/peers` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlatformPeerCreate {
    /// Unique within the platform (DNS label).
    pub name: String,
    /// The peer's base64 X25519 public key (32 bytes). Absent: the controller
    /// generates a key pair and returns the private key once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `GET /v1/platforms/{id_or_name}/peers` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlatformPeerList {
    /// Ordered by name.
    pub peers: Vec<PlatformPeer>,
    /// Set when more items follow: pass it as `?after=` for the next page
    /// (docs/pagination.md). Absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

paged!(PlatformPeerList, peers, PlatformPeer);

/// Body of POST .../start, .../pause and DELETE requests that carry an idempotency key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RequestOptions {
    /// Idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `GET /v1/platforms` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlatformList {
    /// Ordered by name.
    pub platforms: Vec<Platform>,
    /// Set when more items follow: pass it as `?after=` for the next page
    /// (docs/pagination.md). Absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

paged!(PlatformList, platforms, Platform);

/// A bandwidth policy for VM ports. Ingress = into the VM, egress = out of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QosPolicy {
    /// Stable id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Ceiling into the VM, kbit/s.
    pub ingress_max_kbps: u64,
    /// Guaranteed rate into the VM, kbit/s.
    #[serde(default)]
    #[schema(required = true)]
    pub ingress_min_kbps: Option<u64>,
    /// Burst into the VM, kbytes.
    #[serde(default)]
    #[schema(required = true)]
    pub ingress_burst_kbytes: Option<u64>,
    /// Ceiling out of the VM, kbit/s.
    #[serde(default)]
    #[schema(required = true)]
    pub egress_max_kbps: Option<u64>,
    /// Guaranteed rate out of the VM, kbit/s.
    #[serde(default)]
    #[schema(required = true)]
    pub egress_min_kbps: Option<u64>,
    /// Burst out of the VM, kbytes.
    #[serde(default)]
    #[schema(required = true)]
    pub egress_burst_kbytes: Option<u64>,
    /// Id of the tenant that owns it.
    #[serde(default)]
    #[schema(required = true)]
    pub tenant_id: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
}

/// `POST /v1/qos_policies` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QosPolicyCreate {
    /// Unique name (DNS label).
    pub name: String,
    /// Ceiling into the VM, kbit/s.
    pub ingress_max_kbps: u64,
    /// Guaranteed rate into the VM, kbit/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_min_kbps: Option<u64>,
    /// Burst into the VM, kbytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_burst_kbytes: Option<u64>,
    /// Ceiling out of the VM, kbit/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_max_kbps: Option<u64>,
    /// Guaranteed rate out of the VM, kbit/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_min_kbps: Option<u64>,
    /// Burst out of the VM, kbytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_burst_kbytes: Option<u64>,
    /// Tenant (id or name) to create it in. A tenant token may only name its
    /// own tenant; the operator's objects go to `default` when this is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `PATCH /v1/qos_policies/{id_or_name}` body. A field set to `null` is
/// cleared (except `ingress_max_kbps`), an absent field stays.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QosPolicyPatch {
    /// Ceiling into the VM, kbit/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_max_kbps: Option<u64>,
    /// Guaranteed rate into the VM, kbit/s.
    #[serde(
        default,
        deserialize_with = "present_or_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub ingress_min_kbps: Option<Option<u64>>,
    /// Burst into the VM, kbytes.
    #[serde(
        default,
        deserialize_with = "present_or_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub ingress_burst_kbytes: Option<Option<u64>>,
    /// Ceiling out of the VM, kbit/s.
    #[serde(
        default,
        deserialize_with = "present_or_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub egress_max_kbps: Option<Option<u64>>,
    /// Guaranteed rate out of the VM, kbit/s.
    #[serde(
        default,
        deserialize_with = "present_or_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub egress_min_kbps: Option<Option<u64>>,
    /// Burst out of the VM, kbytes.
    #[serde(
        default,
        deserialize_with = "present_or_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub egress_burst_kbytes: Option<Option<u64>>,
    /// Idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `GET /v1/qos_policies` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QosPolicyList {
    /// Ordered by name.
    pub qos_policies: Vec<QosPolicy>,
    /// Set when more items follow: pass it as `?after=` for the next page
    /// (docs/pagination.md). Absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

paged!(QosPolicyList, qos_policies, QosPolicy);

/// A VM image (kernel + initrd [+ disk]) present on the nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Appliance {
    /// Stable id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Version text.
    pub version: String,
    /// `x86_64` or `i686`.
    #[schema(schema_with = schemas::arch)]
    pub arch: String,
    /// Operating system, free text.
    pub os: String,
    /// Kernel path on the nodes (empty for the namespace pseudo-appliance).
    pub kernel: String,
    /// Initrd path on the nodes.
    pub initrd: String,
    /// Disk image path on the nodes, if any.
    #[serde(default)]
    #[schema(required = true)]
    pub disk: Option<String>,
    /// Smallest memory a VM of this appliance may have.
    pub min_memory_mib: u64,
    /// Backends it runs on: `namespace`, `libvirt`.
    #[schema(schema_with = schemas::backends)]
    pub backends: Vec<String>,
    /// Shipped with the controller; cannot be replaced.
    pub builtin: bool,
    /// SHA-256 of the kernel the controller stores and the nodes fetch;
    /// null when `kernel` is a path on the nodes.
    #[serde(default)]
    #[schema(required = true)]
    pub kernel_sha256: Option<String>,
    /// SHA-256 of the stored initrd; null when `initrd` is a node path.
    #[serde(default)]
    #[schema(required = true)]
    pub initrd_sha256: Option<String>,
    /// SHA-256 of the stored disk image; null when there is none or `disk`
    /// is a node path.
    #[serde(default)]
    #[schema(required = true)]
    pub disk_sha256: Option<String>,
}

/// `PUT /v1/appliance_files/{sha256}` response: a file the controller now
/// stores under its SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApplianceFile {
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
    /// Size in bytes.
    pub size_bytes: u64,
}

/// `POST /v1/appliances` body (operator-provided files).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApplianceCreate {
    /// Unique name (DNS label).
    pub name: String,
    /// Version text.
    pub version: String,
    /// `x86_64` or `i686`.
    #[schema(schema_with = schemas::arch)]
    pub arch: String,
    /// Operating system, free text.
    pub os: String,
    /// Absolute kernel path on the nodes; empty with `kernel_sha256`.
    #[serde(default)]
    pub kernel: String,
    /// Absolute initrd path on the nodes; empty with `initrd_sha256`.
    #[serde(default)]
    pub initrd: String,
    /// Absolute disk image path on the nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    /// SHA-256 of a kernel uploaded to `PUT /v1/appliance_files/{sha256}`
    /// (instead of `kernel`): the nodes fetch and verify it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_sha256: Option<String>,
    /// SHA-256 of an uploaded initrd (instead of `initrd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_sha256: Option<String>,
    /// SHA-256 of an uploaded disk image (instead of `disk`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_sha256: Option<String>,
    /// Smallest memory a VM of this appliance may have.
    #[schema(minimum = 16)]
    pub min_memory_mib: u64,
    /// `namespace` and/or `libvirt`.
    #[schema(schema_with = schemas::backends)]
    pub backends: Vec<String>,
    /// Idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `GET /v1/appliances` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApplianceList {
    /// Ordered by name.
    pub appliances: Vec<Appliance>,
    /// Set when more items follow: pass it as `?after=` for the next page
    /// (docs/pagination.md). Absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

paged!(ApplianceList, appliances, Appliance);

/// Desired power state of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VmPowerState {
    /// Running.
    Running,
    /// Suspended (memory kept).
    Paused,
    /// Defined but not running.
    Stopped,
}

/// VM backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VmBackend {
    /// Network namespace + cgroups (OS-level virtualization).
    Namespace,
    /// A libvirt domain (Xen, QEMU, test driver).
    Libvirt,
}

/// A condition reported by the node agent (Ready, PortAttached, GuestRegistered).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Condition {
    /// Condition type.
    #[serde(rename = "type")]
    pub condition_type: String,
    /// `True`, `False` or `Unknown`.
    #[schema(schema_with = schemas::condition_status)]
    pub status: String,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable detail.
    pub message: String,
}

/// A VM of a virtual platform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Vm {
    /// Stable id.
    pub id: String,
    /// Name, unique within the platform.
    pub name: String,
    /// Platform name.
    pub platform: String,
    /// Node name.
    pub node: String,
    /// Virtual CPUs.
    #[schema(minimum = 1)]
    pub vcpus: u32,
    /// Memory.
    pub memory_mib: u64,
    /// Disk size (0: the appliance's own).
    pub disk_mib: u64,
    /// Swap size.
    pub swap_mib: u64,
    /// Appliance name.
    pub appliance: String,
    /// QoS policy name, if any.
    #[serde(default)]
    #[schema(required = true)]
    pub qos_policy: Option<String>,
    /// Desired power state.
    pub power_state: VmPowerState,
    /// Backend.
    pub backend: VmBackend,
    /// IPv4 address (no prefix) from the platform subnet.
    #[schema(format = Ipv4)]
    pub address: String,
    /// MAC address.
    pub mac: String,
    /// What the node reports: pending, running, paused, stopped, failed, deleting.
    pub actual_state: String,
    /// Same as `pending_restart` (its older name).
    pub restart_required: bool,
    /// The VM runs an older spec than it was given: a change that cannot
    /// apply live (e.g. `vcpus` beyond the `max_vcpus` it booted with)
    /// waits for its next restart.
    #[serde(default)]
    pub pending_restart: bool,
    /// Most vCPUs the VM can get without a restart (libvirt hot-plug room);
    /// `null`: `vcpus`. Namespace VMs resize freely.
    #[serde(default)]
    #[schema(required = true)]
    pub max_vcpus: Option<u32>,
    /// Most memory the VM can get without a restart; `null`: `memory_mib`.
    #[serde(default)]
    #[schema(required = true)]
    pub max_memory_mib: Option<u64>,
    /// RFC 3339 time of the guest agent's last heartbeat.
    #[serde(default)]
    #[schema(format = DateTime, required = true)]
    pub guest_last_heartbeat: Option<String>,
    /// Version the VM's guest agent gave in its last hello, as the node
    /// agent reports it; `null` until one has said hello (or under a node
    /// agent too old to report it). Read-only.
    #[serde(default)]
    #[schema(required = true)]
    pub guest_agent_version: Option<String>,
    /// Conditions from the node agent, and `GuestAgentSupported` (False)
    /// from the controller when the policy does not support the guest
    /// agent's version (docs/version-skew.md).
    pub conditions: Vec<Condition>,
    /// Bumped on every spec change.
    pub generation: u64,
    /// Generation the node agent last reported for this VM.
    pub observed_generation: u64,
    /// Id of the tenant that owns it.
    #[serde(default)]
    #[schema(required = true)]
    pub tenant_id: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
}

/// `POST /v1/vms` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmCreate {
    /// Name (DNS label), unique within the platform.
    pub name: String,
    /// Platform id or name.
    pub platform: String,
    /// Node name or id; must be a member of the platform.
    pub node: String,
    /// Virtual CPUs (1-64).
    #[schema(minimum = 1, maximum = 64)]
    pub vcpus: u32,
    /// Memory.
    #[schema(minimum = 1)]
    pub memory_mib: u64,
    /// Disk size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mib: Option<u64>,
    /// Swap size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_mib: Option<u64>,
    /// Room for live vCPU growth (at least `vcpus`, at most 64); default `vcpus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 64)]
    pub max_vcpus: Option<u32>,
    /// Room for live memory growth (at least `memory_mib`); default `memory_mib`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub max_memory_mib: Option<u64>,
    /// Appliance name.
    pub appliance: String,
    /// QoS policy name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos_policy: Option<String>,
    /// Desired power state.
    pub power_state: VmPowerState,
    /// Backend; default: the appliance's first backend the node has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<VmBackend>,
    /// Tenant (id or name) to create it in. A tenant token may only name its
    /// own tenant; the operator's objects go to `default` when this is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `PATCH /v1/vms/{id_or_name}` body. The immutable fields are accepted only
/// when they equal the current value (so a client may send the whole object).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmPatch {
    /// Virtual CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 64)]
    pub vcpus: Option<u32>,
    /// Memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub memory_mib: Option<u64>,
    /// Room for live vCPU growth; a new maximum applies at the next restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 64)]
    pub max_vcpus: Option<u32>,
    /// Room for live memory growth; a new maximum applies at the next restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub max_memory_mib: Option<u64>,
    /// QoS policy name; `null` removes the policy.
    #[serde(
        default,
        deserialize_with = "present_or_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub qos_policy: Option<Option<String>>,
    /// Desired power state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_state: Option<VmPowerState>,
    /// Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appliance: Option<String>,
    /// Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<VmBackend>,
    /// Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mib: Option<u64>,
    /// Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_mib: Option<u64>,
    /// Idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `GET /v1/vms` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmList {
    /// Ordered by platform, then name.
    pub vms: Vec<Vm>,
    /// Set when more items follow: pass it as `?after=` for the next page
    /// (docs/pagination.md). Absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

paged!(VmList, vms, Vm);

// ---- Programs, deployments, tasks, results ----

/// An uploaded program.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Program {
    /// Stable id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Hex SHA-256 of the content.
    pub sha256: String,
    /// Content size.
    pub size_bytes: u64,
    /// Id of the tenant that owns it.
    #[serde(default)]
    #[schema(required = true)]
    pub tenant_id: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
}

/// `POST /v1/programs` JSON body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProgramCreate {
    /// Unique name.
    pub name: String,
    /// Content, standard base64.
    #[schema(format = Byte)]
    pub content_base64: String,
    /// Expected hex SHA-256; the upload is refused when it differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Tenant (id or name) to create it in. A tenant token may only name its
    /// own tenant; the operator's objects go to `default` when this is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `GET /v1/programs` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProgramList {
    /// Ordered by name.
    pub programs: Vec<Program>,
    /// Set when more items follow: pass it as `?after=` for the next page
    /// (docs/pagination.md). Absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

paged!(ProgramList, programs, Program);

/// One VM's run of a deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProgramRunState {
    /// VM name.
    pub vm: String,
    /// VM id.
    pub vm_id: String,
    /// pending, running, exited, failed, lost, stopped.
    #[schema(schema_with = schemas::run_status)]
    pub status: String,
    /// Exit code once exited.
    #[serde(default)]
    #[schema(required = true)]
    pub exit_code: Option<i32>,
    /// Last lines of stdout.
    pub stdout_tail: String,
    /// Last lines of stderr.
    pub stderr_tail: String,
    /// RFC 3339.
    #[serde(default)]
    #[schema(format = DateTime, required = true)]
    pub started_at: Option<String>,
    /// RFC 3339.
    #[serde(default)]
    #[schema(format = DateTime, required = true)]
    pub finished_at: Option<String>,
}

/// A program deployed onto VMs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Deployment {
    /// Stable id.
    pub id: String,
    /// Program name.
    pub program: String,
    /// Program arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// One run per VM.
    pub runs: Vec<ProgramRunState>,
    /// Files the program writes that can be listed and downloaded
    /// (`GET /v1/deployments/{id}/outputs`): absolute paths in each VM.
    #[serde(default)]
    #[schema(required = true)]
    pub outputs: Vec<String>,
    /// Id of the tenant that owns it.
    #[serde(default)]
    #[schema(required = true)]
    pub tenant_id: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
}

/// `POST /v1/deployments` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeploymentCreate {
    /// Program name or id.
    pub program: String,
    /// VM ids, or VM names (unique across platforms, else use ids or `platform/name`).
    pub vms: Vec<String>,
    /// Arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Output files: absolute paths in each VM (no `..`), at most
    /// [`MAX_DEPLOYMENT_OUTPUTS`] of at most [`MAX_OUTPUT_PATH_BYTES`] bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
    /// Tenant (id or name) to create it in. A tenant token may only name its
    /// own tenant; the operator's objects go to `default` when this is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `PATCH /v1/deployments/{id}` body: what can change without restarting
/// the runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeploymentPatch {
    /// New output files (replaces the list). The program keeps running:
    /// outputs are only read when they are listed or downloaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<String>>,
    /// Idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Most output files a deployment declares.
pub const MAX_DEPLOYMENT_OUTPUTS: usize = 32;
/// Longest output path.
pub const MAX_OUTPUT_PATH_BYTES: usize = 1024;

/// Checks a deployment's `outputs`; `Err` is (field, reason), the field
/// as `outputs[i]` or `outputs`.
pub fn check_outputs(outputs: &[String]) -> Result<(), (String, String)> {
    if outputs.len() > MAX_DEPLOYMENT_OUTPUTS {
        return Err((
            "outputs".into(),
            format!(
                "has {} paths; at most {MAX_DEPLOYMENT_OUTPUTS}",
                outputs.len()
            ),
        ));
    }
    for (i, path) in outputs.iter().enumerate() {
        let field = format!("outputs[{i}]");
        if path.len() > MAX_OUTPUT_PATH_BYTES {
            return Err((
                field,
                format!("is {} bytes; at most {MAX_OUTPUT_PATH_BYTES}", path.len()),
            ));
        }
        crate::exec::check_guest_path(path).map_err(|reason| (field.clone(), reason))?;
        if path.ends_with('/') {
            return Err((field, format!("{path:?} names a directory; name a file")));
        }
        if outputs[..i].contains(path) {
            return Err((field, format!("{path:?} is listed twice")));
        }
    }
    Ok(())
}

/// `GET /v1/deployments/{id}/outputs` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeploymentOutputs {
    /// The deployment.
    pub deployment_id: String,
    /// The declared paths, in order (a file's `index` points here).
    pub outputs: Vec<String>,
    /// One entry per VM of the deployment.
    pub vms: Vec<VmOutputs>,
}

/// The output files of one VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmOutputs {
    /// VM (`platform/name`).
    pub vm: String,
    /// VM id.
    pub vm_id: String,
    /// Why the files could not be looked at (the VM's node or guest is
    /// offline); `files` is then empty.
    #[serde(default)]
    #[schema(required = true)]
    pub error: Option<String>,
    /// One entry per declared output, in order.
    pub files: Vec<OutputFile>,
}

/// One declared output file in one VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OutputFile {
    /// Position in the deployment's `outputs`.
    pub index: u32,
    /// The path in the VM.
    pub path: String,
    /// Whether the file exists (a program may not have written it yet).
    pub present: bool,
    /// Size in bytes, when present.
    #[serde(default)]
    #[schema(required = true)]
    pub size_bytes: Option<u64>,
    /// Lowercase hex SHA-256, when present and at most the download limit.
    #[serde(default)]
    #[schema(required = true)]
    pub sha256: Option<String>,
    /// Last modification, RFC 3339, when present.
    #[serde(default)]
    #[schema(format = DateTime, required = true)]
    pub modified_at: Option<String>,
    /// Why this file could not be looked at (not a regular file, unreadable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Response header of an output download: the file's lowercase hex
/// SHA-256, which the body must match.
pub const OUTPUT_SHA256_HEADER: &str = "x-measurelab-sha256";

/// `GET /v1/deployments` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeploymentList {
    /// Newest first.
    pub deployments: Vec<Deployment>,
    /// Set when more items follow: pass it as `?after=` for the next page
    /// (docs/pagination.md). Absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

paged!(DeploymentList, deployments, Deployment);

/// A multicast measurement task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Task {
    /// Stable id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// `platform` (run by the platform's MSCS) or `service_host`.
    #[schema(schema_with = schemas::task_mode)]
    pub mode: String,
    /// Platform name (mode platform).
    #[serde(default)]
    #[schema(required = true)]
    pub platform: Option<String>,
    /// Node names (mode service_host).
    pub nodes: Vec<String>,
    /// `once` or `periodic`.
    #[schema(schema_with = schemas::task_schedule)]
    pub schedule: String,
    /// Period of a periodic task.
    pub interval_seconds: u64,
    /// Length of one run.
    #[schema(minimum = 1)]
    pub duration_seconds: u64,
    /// Probe rate.
    #[schema(minimum = 1)]
    pub rate_pps: u64,
    /// Probe size.
    #[schema(minimum = 1)]
    pub packet_size_bytes: u64,
    /// Multicast group.
    #[schema(format = Ipv4)]
    pub group: String,
    /// UDP port.
    #[schema(minimum = 1, maximum = 65535)]
    pub port: u16,
    /// Multicast TTL.
    #[schema(minimum = 1, maximum = 255)]
    pub ttl: u32,
    /// Source-specific multicast.
    pub ssm: bool,
    /// Source point; `None`: round robin.
    #[serde(default)]
    #[schema(required = true)]
    pub source: Option<String>,
    /// Receiver points; empty: all others.
    pub receivers: Vec<String>,
    /// Inferred loss above which a link of a run's tree is a bottleneck (its
    /// interval must also exclude 0).
    #[serde(default = "default_bottleneck_loss_threshold")]
    #[schema(minimum = 0, exclusive_maximum = 1)]
    pub bottleneck_loss_threshold: f64,
    /// Inferred delay standard deviation (µs) above which a link is a bottleneck.
    #[serde(default = "default_bottleneck_delay_stddev_us")]
    #[schema(exclusive_minimum = 0)]
    pub bottleneck_delay_stddev_us: f64,
    /// pending, running, completed, failed.
    #[schema(schema_with = schemas::task_status)]
    pub status: String,
    /// Newest result.
    #[serde(default)]
    #[schema(required = true)]
    pub last_result_id: Option<String>,
    /// Id of the tenant that owns it.
    #[serde(default)]
    #[schema(required = true)]
    pub tenant_id: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Mode platform: each run is followed by the same probe pattern on the
    /// service hosts of the nodes of its source and receivers, and the result
    /// document's `comparison` sets the two side by side.
    #[serde(default)]
    #[schema(required = true)]
    pub compare_with_service_host: bool,
}

fn default_bottleneck_loss_threshold() -> f64 {
    crate::result::DEFAULT_BOTTLENECK_LOSS_THRESHOLD
}

fn default_bottleneck_delay_stddev_us() -> f64 {
    crate::result::DEFAULT_BOTTLENECK_DELAY_STDDEV_US
}

/// `POST /v1/tasks` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskCreate {
    /// Unique name (DNS label).
    pub name: String,
    /// `platform` or `service_host`.
    #[schema(schema_with = schemas::task_mode)]
    pub mode: String,
    /// Platform (mode platform).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Nodes (mode service_host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<String>>,
    /// `once` or `periodic`.
    #[schema(schema_with = schemas::task_schedule)]
    pub schedule: String,
    /// Period (periodic; default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 10)]
    pub interval_seconds: Option<u64>,
    /// Run length (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 3600)]
    pub duration_seconds: Option<u64>,
    /// Probe rate.
    #[schema(minimum = 1, maximum = 100000)]
    pub rate_pps: u64,
    /// Probe size.
    #[schema(minimum = 64, maximum = 8972)]
    pub packet_size_bytes: u64,
    /// Multicast group (IPv4 multicast address).
    #[schema(format = Ipv4)]
    pub group: String,
    /// UDP port.
    #[schema(minimum = 1024, maximum = 65535)]
    pub port: u16,
    /// Multicast TTL.
    #[schema(minimum = 1, maximum = 255)]
    pub ttl: u32,
    /// Source-specific multicast.
    #[serde(default)]
    pub ssm: bool,
    /// Source point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Receiver points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receivers: Option<Vec<String>>,
    /// Loss threshold of the bottleneck report (default 0.01).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, exclusive_maximum = 1)]
    pub bottleneck_loss_threshold: Option<f64>,
    /// Delay standard deviation threshold (µs) of the bottleneck report (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0)]
    pub bottleneck_delay_stddev_us: Option<f64>,
    /// Mode platform only: after each run, run the same probe pattern on the
    /// nodes' service hosts and compare (the result's `comparison`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub compare_with_service_host: bool,
    /// Tenant (id or name) to create it in. A tenant token may only name its
    /// own tenant; the operator's objects go to `default` when this is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `GET /v1/tasks` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskList {
    /// Ordered by name.
    pub tasks: Vec<Task>,
    /// Set when more items follow: pass it as `?after=` for the next page
    /// (docs/pagination.md). Absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

paged!(TaskList, tasks, Task);

/// One stored result document (one run of a task).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResultRecord {
    /// Stable id.
    pub id: String,
    /// Task id.
    pub task_id: String,
    /// Task name.
    pub task: String,
    /// RFC 3339 time the controller stored it.
    #[schema(format = DateTime)]
    pub received_at: String,
    /// `started_at` of the run (from the document).
    #[schema(format = DateTime)]
    pub started_at: String,
    /// Id of the tenant that owns it.
    #[serde(default)]
    #[schema(required = true)]
    pub tenant_id: String,
    /// The `measurelab.mcast.result/v1` document.
    #[schema(schema_with = schemas::result_document)]
    pub document: serde_json::Value,
}

/// Name of the result document's component in the OpenAPI document. Its
/// schema is the JSON Schema generated from [`crate::result::ResultDocument`]
/// (`crate::result::json_schema`), which utoipa's schema model cannot hold,
/// so the controller adds it to the document as JSON.
pub const RESULT_DOCUMENT_SCHEMA: &str = "ResultDocument";

/// `GET /v1/results` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResultList {
    /// Oldest first.
    pub results: Vec<ResultRecord>,
    /// Set when more items follow: pass it as `?after=` for the next page
    /// (docs/pagination.md). Absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

paged!(ResultList, results, ResultRecord);

// ---- Tenants, roles and API tokens ----

/// What a token may do. `operator` and `metrics` are global; the others
/// hold within one tenant. The order is by power, `metrics` lowest: it
/// reads `GET /metrics` (and `GET /v1/whoami`) and nothing else.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads the controller's Prometheus metrics and nothing else: a
    /// scraper's token. Belongs to no tenant; only the operator creates one.
    Metrics,
    /// Reads the tenant's objects.
    Viewer,
    /// Creates, changes and deletes the tenant's platforms, VMs, QoS
    /// policies, programs, deployments and tasks.
    Member,
    /// A member that also manages the tenant's tokens.
    Owner,
    /// Manages nodes, appliances, tenants and every tenant's objects.
    Operator,
}

impl Role {
    /// Whether a token of this role belongs to no tenant. The controller
    /// refuses such a token with a tenant, and the provider says so at plan
    /// time, from this one rule.
    pub fn is_global(self) -> bool {
        matches!(self, Role::Operator | Role::Metrics)
    }

    /// Why a token of this role may not name a tenant ("an operator token
    /// belongs to no tenant"), or `None` for a role held within a tenant.
    pub fn tenant_refusal(self) -> Option<String> {
        let article = if self == Role::Operator { "an" } else { "a" };
        self.is_global()
            .then(|| format!("{article} {} token belongs to no tenant", self.as_str()))
    }
}

/// Limits of a tenant; an absent (null) limit is unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Quota {
    /// Platforms.
    #[serde(default)]
    #[schema(required = true)]
    pub max_platforms: Option<u64>,
    /// VMs.
    #[serde(default)]
    #[schema(required = true)]
    pub max_vms: Option<u64>,
    /// vCPUs summed over the tenant's VMs.
    #[serde(default)]
    #[schema(required = true)]
    pub max_vcpus: Option<u64>,
    /// Memory summed over the tenant's VMs.
    #[serde(default)]
    #[schema(required = true)]
    pub max_memory_mib: Option<u64>,
    /// QoS bandwidth summed over the tenant's VMs, kbit/s.
    #[serde(default)]
    #[schema(required = true)]
    pub max_bandwidth_kbps: Option<u64>,
    /// Bytes of uploaded programs.
    #[serde(default)]
    #[schema(required = true)]
    pub max_program_bytes: Option<u64>,
}

/// A tenant: the owner of platforms, VMs, QoS policies, programs, tasks and results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Tenant {
    /// Stable id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Limits.
    pub quota: Quota,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
}

/// `POST /v1/tenants` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TenantCreate {
    /// Unique name (DNS label).
    pub name: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Limits; absent: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
    /// Idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `PATCH /v1/tenants/{id_or_name}` body; absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TenantPatch {
    /// New description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// New complete quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
    /// Idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// What a tenant uses, in the units of its [`Quota`]. VMs being deleted
/// no longer count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TenantUsage {
    /// Platforms.
    pub platforms: u64,
    /// VMs.
    pub vms: u64,
    /// vCPUs summed over the VMs.
    pub vcpus: u64,
    /// Memory summed over the VMs, MiB.
    pub memory_mib: u64,
    /// Bandwidth summed over the VMs, kbit/s: each VM counts its QoS
    /// policy's ingress plus egress ceiling (a VM without one counts 0).
    pub bandwidth_kbps: u64,
    /// Bytes of uploaded programs.
    pub program_bytes: u64,
}

/// `GET /v1/tenants/{id_or_name}/usage` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TenantUsageReport {
    /// The tenant.
    pub tenant_id: String,
    /// Its limits.
    pub quota: Quota,
    /// What it uses now.
    pub usage: TenantUsage,
}

/// `GET /v1/tenants` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TenantList {
    /// Ordered by name.
    pub tenants: Vec<Tenant>,
    /// Set when more items follow: pass it as `?after=` for the next page
    /// (docs/pagination.md). Absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

paged!(TenantList, tenants, Tenant);

/// An API token. Its secret is only ever in [`ApiTokenCreated`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiToken {
    /// Stable id; the bearer token is `mlt_<id>_<secret>`.
    pub id: String,
    /// Name, for people and error messages.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Its tenant; null for an operator token.
    #[serde(default)]
    #[schema(required = true)]
    pub tenant_id: Option<String>,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// RFC 3339; null: never expires.
    #[serde(default)]
    #[schema(format = DateTime, required = true)]
    pub expires_at: Option<String>,
    /// RFC 3339, to the minute.
    #[serde(default)]
    #[schema(format = DateTime, required = true)]
    pub last_used_at: Option<String>,
    /// RFC 3339; set once the token is revoked.
    #[serde(default)]
    #[schema(format = DateTime, required = true)]
    pub revoked_at: Option<String>,
}

/// `POST /v1/tokens` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiTokenCreate {
    /// Name (1-128 characters).
    pub name: String,
    /// Role of the new token.
    pub role: Role,
    /// Tenant id or name; required unless the role is operator. An owner
    /// token may only name its own tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// RFC 3339 expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    /// Lifetime in seconds (instead of expires_at).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub ttl_seconds: Option<u64>,
    /// Idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `POST /v1/tokens` response: the token and, this once, its bearer secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiTokenCreated {
    /// Stable id.
    pub id: String,
    /// Name.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Its tenant; null for an operator token.
    #[serde(default)]
    #[schema(required = true)]
    pub tenant_id: Option<String>,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// RFC 3339; null: never expires.
    #[serde(default)]
    #[schema(format = DateTime, required = true)]
    pub expires_at: Option<String>,
    /// Always null for a new token.
    #[serde(default)]
    #[schema(format = DateTime, required = true)]
    pub last_used_at: Option<String>,
    /// Always null for a new token.
    #[serde(default)]
    #[schema(format = DateTime, required = true)]
    pub revoked_at: Option<String>,
    /// The bearer token `mlt_<id>_<secret>`. The controller keeps only a
    /// digest: it is shown here and never again.
    pub secret: String,
}

/// `GET /v1/tokens` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiTokenList {
    /// Ordered by creation time.
    pub tokens: Vec<ApiToken>,
    /// Set when more items follow: pass it as `?after=` for the next page
    /// (docs/pagination.md). Absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

paged!(ApiTokenList, tokens, ApiToken);

/// `GET /v1/whoami` response: the caller's token, role and tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    /// Token id (`admin` for the bootstrap admin.token).
    pub token_id: String,
    /// Token name.
    pub token_name: String,
    /// Role.
    pub role: Role,
    /// Tenant id; null for the operator.
    #[serde(default)]
    #[schema(required = true)]
    pub tenant_id: Option<String>,
    /// Tenant name; null for the operator.
    #[serde(default)]
    #[schema(required = true)]
    pub tenant_name: Option<String>,
}

/// OpenAPI schemas the derive cannot infer from a field's Rust type: text
/// fields that take one of a few values, and the label map's limits.
mod schemas {
    use utoipa::openapi::schema::{AdditionalProperties, Object, ObjectBuilder, RefBuilder, Type};
    use utoipa::openapi::{Array, Ref};

    /// A reference only: the controller adds the schema itself, generated
    /// from [`crate::result::ResultDocument`].
    pub fn result_document() -> Ref {
        RefBuilder::new()
            .ref_location_from_schema_name(super::RESULT_DOCUMENT_SCHEMA)
            .description(Some("The `measurelab.mcast.result/v1` document."))
            .build()
    }

    fn one_of(values: &[&str]) -> Object {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(values.iter().copied()))
            .build()
    }

    /// Kept in step with the controller's label validation.
    pub fn labels() -> Object {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "Operator labels. Keys: 1-63 characters of letters, digits, '.', '_', '-', '/'. \
                 Values: at most 256 bytes, no control characters.",
            ))
            .max_properties(Some(64))
            .additional_properties(Some(AdditionalProperties::RefOr(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .max_length(Some(256))
                    .build()
                    .into(),
            )))
            .build()
    }

    pub fn log_level() -> Object {
        one_of(&["error", "warn", "info", "debug", "trace"])
    }

    pub fn error_code() -> Object {
        one_of(&[
            "unauthorized",
            "malformed_json",
            "invalid_field",
            "unsupported_media_type",
            "payload_too_large",
            "not_found",
            "method_not_allowed",
            "unavailable",
            "conflict",
            "pool_exhausted",
            "forbidden",
            "quota_exceeded",
        ])
    }

    pub fn arch() -> Object {
        one_of(&["x86_64", "i686"])
    }

    pub fn backends() -> Array {
        Array::new(one_of(&["namespace", "libvirt"]))
    }

    pub fn condition_status() -> Object {
        one_of(&["True", "False", "Unknown"])
    }

    pub fn run_status() -> Object {
        one_of(&["pending", "running", "exited", "failed", "lost", "stopped"])
    }

    pub fn task_mode() -> Object {
        one_of(&["platform", "service_host"])
    }

    pub fn task_schedule() -> Object {
        one_of(&["once", "periodic"])
    }

    pub fn task_status() -> Object {
        one_of(&["pending", "running", "completed", "failed"])
    }
}

/// One flow record of a platform, as the collector stored it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Flow {
    /// RFC 3339 time of the flow's first packet (in this record).
    #[schema(format = DateTime)]
    pub first_seen: String,
    /// RFC 3339 time of the flow's last packet (in this record).
    #[schema(format = DateTime)]
    pub last_seen: String,
    /// Name of the node whose switch exported the record.
    pub node: String,
    /// IP protocol number (1 ICMP, 6 TCP, 17 UDP).
    pub protocol: u8,
    /// Source address.
    pub src_addr: String,
    /// Source port (ICMP: 0).
    pub src_port: u16,
    /// Destination address.
    pub dst_addr: String,
    /// Destination port (ICMP: type * 256 + code).
    pub dst_port: u16,
    /// The platform's VLAN.
    pub vlan: u16,
    /// Packets as exported (with sampling 1 in N, about 1/N of them).
    pub packets: u64,
    /// Bytes as exported: Open vSwitch counts whole Ethernet frames.
    pub bytes: u64,
}

/// `GET /v1/platforms/{id_or_name}/flows` response: one page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FlowList {
    /// The platform's flows whose last packet falls in the time range, oldest
    /// first within the page; pages follow the collector's files oldest first.
    pub flows: Vec<Flow>,
    /// Set when more records may follow: pass it as `?after=` for the next
    /// page (docs/pagination.md). Absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

paged!(FlowList, flows, Flow);

/// One step of a VM's usage series, as its guest agent measured it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmUsageSample {
    /// RFC 3339 start of the step.
    #[schema(format = DateTime)]
    pub time: String,
    /// CPUs the guest sees.
    pub cpu_count: u32,
    /// Busy CPU time over all CPUs, 0..=100, averaged over the step.
    pub cpu_used_percent: f64,
    /// Memory the guest sees, bytes (last sample of the step).
    pub memory_total_bytes: u64,
    /// Memory in use (total - available), bytes (last sample of the step).
    pub memory_used_bytes: u64,
    /// Size of the guest's root filesystem, bytes.
    pub disk_total_bytes: u64,
    /// Used on the guest's root filesystem, bytes.
    pub disk_used_bytes: u64,
    /// Received bytes over all interfaces but loopback, since the guest started.
    pub network_rx_bytes: u64,
    /// Sent bytes over all interfaces but loopback, since the guest started.
    pub network_tx_bytes: u64,
    /// Receive rate since the previous step; absent for the first step and
    /// when the counter went backwards (the guest restarted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_rx_bytes_per_second: Option<f64>,
    /// Send rate since the previous step, as `network_rx_bytes_per_second`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_tx_bytes_per_second: Option<f64>,
}

/// `GET /v1/vms/{id_or_name}/usage` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmUsage {
    /// The VM's id.
    pub vm_id: String,
    /// Seconds per sample.
    pub step_seconds: u32,
    /// Samples in the time range, oldest first; steps without a heartbeat
    /// are left out.
    pub samples: Vec<VmUsageSample>,
}

/// One measurement point of a platform, as the platform's MSCS last
/// reported it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlatformPoint {
    /// Point name, as results name it.
    pub name: String,
    /// Control listener of the point, `IP:port`.
    pub control_address: String,
    /// Data-plane IPv4 the point sends and joins on; null for a static point
    /// (an MSCS `--point` flag) that never registered.
    pub data_address: Option<String>,
    /// `active`: in the MSCS's rotation; `missing`: it missed its heartbeat
    /// deadline and takes no part in runs until it is heard again.
    pub state: String,
    /// RFC 3339 time of the point's last registration or heartbeat; null for
    /// a static point that never registered.
    #[schema(format = DateTime)]
    pub last_seen: Option<String>,
    /// Control protocol version the point registered with; null: not known.
    pub protocol_version: Option<u32>,
    /// `registered` (the point registered itself) or `static` (an MSCS
    /// `--point` flag).
    pub origin: String,
}

/// `GET /v1/platforms/{id_or_name}/control-key` response: the key the
/// controller puts into every program run of the platform
/// (`MEASURELAB_CONTROL_KEY`, `MEASURELAB_CONTROL_KEY_ID`), so the tenant can
/// call its MSCS's API (`Authorization: Bearer <control_key>`).
#[derive(Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlatformControlKey {
    /// Platform id.
    pub platform: String,
    /// The key's id, as the programs get it in `MEASURELAB_CONTROL_KEY_ID`
    /// (the platform id).
    pub key_id: String,
    /// The secret, 64 lower-case hex digits. Empty in the answer to a
    /// rotation replayed with the same `request_id` (a replay never reveals
    /// a key; read it with `GET .../control-key`).
    pub control_key: String,
    /// 1 for the key drawn when the platform was created, one more for each
    /// rotation. Absent from controllers older than rotation (read as 1).
    #[serde(default = "first_control_key_version")]
    pub version: u32,
}

fn first_control_key_version() -> u32 {
    1
}

/// Never prints the secret (a client that logs its answers stays safe).
impl std::fmt::Debug for PlatformControlKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlatformControlKey")
            .field("platform", &self.platform)
            .field("key_id", &self.key_id)
            .field("control_key", &"<redacted>")
            .field("version", &self.version)
            .finish()
    }
}

/// `GET /v1/platforms/{id_or_name}/points` response: the latest point list
/// the platform's MSCS reported (it reports on every change and every 30 s).
/// A state is as of `reported_at`: when the MSCS itself stops, the list
/// stays as it last was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlatformPoints {
    /// Platform id.
    pub platform: String,
    /// RFC 3339 time the controller received the list; null: no MSCS of the
    /// platform reported one yet.
    #[schema(format = DateTime)]
    pub reported_at: Option<String>,
    /// Name of the VM whose MSCS reported the list.
    pub reported_by: Option<String>,
    /// The points in the MSCS's rotation order.
    pub points: Vec<PlatformPoint>,
}

/// A PATCH field that may be absent (`None`: unchanged), `null` (`Some(None)`:
/// cleared) or a value. Plain serde folds `null` into "absent".
fn present_or_null<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// The snake_case names serde uses for these enums, for stores and schemas
/// that keep them as plain text.
macro_rules! snake_case_names {
    ($ty:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// The name serde writes for this value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $text,)+
                }
            }

            /// The value serde reads from `text`, if any.
            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($text => Some($ty::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

snake_case_names!(PlatformPowerState { Running => "running", Paused => "paused" });
snake_case_names!(VmPowerState { Running => "running", Paused => "paused", Stopped => "stopped" });
snake_case_names!(VmBackend { Namespace => "namespace", Libvirt => "libvirt" });
snake_case_names!(FlowProtocol { Sflow => "sflow", Netflow => "netflow", Ipfix => "ipfix" });
snake_case_names!(Role { Metrics => "metrics", Viewer => "viewer", Member => "member", Owner => "owner", Operator => "operator" });

#[cfg(test)]
mod role_tests {
    use super::Role;

    /// The controller's refusal and the provider's plan-time diagnostic both
    /// say this sentence, so a token refused at apply was refused at plan.
    #[test]
    fn only_global_roles_refuse_a_tenant_and_say_so_with_their_article() {
        assert_eq!(
            Role::Operator.tenant_refusal().as_deref(),
            Some("an operator token belongs to no tenant")
        );
        assert_eq!(
            Role::Metrics.tenant_refusal().as_deref(),
            Some("a metrics token belongs to no tenant")
        );
        for role in [Role::Viewer, Role::Member, Role::Owner] {
            assert!(!role.is_global(), "{role:?}");
            assert_eq!(role.tenant_refusal(), None, "{role:?}");
        }
    }
}

#[cfg(test)]
mod snake_case_names_tests {
    use super::*;

    fn serde_name<T: Serialize>(value: T) -> String {
        serde_json::to_value(value)
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn names_match_serde_both_ways() {
        for v in [PlatformPowerState::Running, PlatformPowerState::Paused] {
            assert_eq!(v.as_str(), serde_name(v));
            assert_eq!(PlatformPowerState::parse(v.as_str()), Some(v));
        }
        for v in [
            VmPowerState::Running,
            VmPowerState::Paused,
            VmPowerState::Stopped,
        ] {
            assert_eq!(v.as_str(), serde_name(v));
            assert_eq!(VmPowerState::parse(v.as_str()), Some(v));
        }
        for v in [VmBackend::Namespace, VmBackend::Libvirt] {
            assert_eq!(v.as_str(), serde_name(v));
            assert_eq!(VmBackend::parse(v.as_str()), Some(v));
        }
        assert_eq!(VmPowerState::parse("Running"), None);
    }
}
