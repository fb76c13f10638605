//! How the read-only data sources show a virtual platform, a VM and a
//! measurement task. Each view is at once the state of the one-object data
//! source (`measurelab_vm` and so on: the lookup key is one of its attributes)
//! and the element type of the list data source (`measurelab_vms`), so the two
//! cannot drift apart. The fields are `Value`s because Terraform hands the
//! one-object data source its configuration with every computed attribute
//! null.

use std::collections::HashMap;

use measurelab_api::http::{Platform, Task, Vm};
use serde::{Deserialize, Serialize};
use tf_provider::schema::{
    Attribute, AttributeConstraint, AttributeType, Block, Description, Schema,
};
use tf_provider::value::Value;

use crate::number::Number;

/// One attribute of a view: name, Terraform type, markdown description.
pub type Field = (&'static str, AttributeType, &'static str);

fn strings() -> AttributeType {
    AttributeType::List(Box::new(AttributeType::String))
}

fn text(value: &str) -> Value<String> {
    Value::Value(value.to_string())
}

fn optional_text(value: Option<&String>) -> Value<String> {
    value.map_or(Value::Null, |v| Value::Value(v.clone()))
}

fn number(value: impl Into<Number>) -> Value<Number> {
    Value::Value(value.into())
}

fn text_list(values: &[String]) -> Value<Vec<String>> {
    Value::Value(values.to_vec())
}

/// The Terraform object type of a view's fields (the element of a list).
pub fn object_type(fields: &[Field]) -> AttributeType {
    AttributeType::Object(
        fields
            .iter()
            .map(|(name, attr_type, _)| (name.to_string(), attr_type.clone()))
            .collect(),
    )
}

/// The attributes of a one-object data source: every field computed, except
/// the lookup keys given in `keys` (name, constraint, description).
pub fn lookup_attributes(
    fields: &[Field],
    keys: &[(&str, AttributeConstraint, &str)],
) -> HashMap<String, Attribute> {
    let mut attributes: HashMap<String, Attribute> = fields
        .iter()
        .map(|(name, attr_type, doc)| {
            (
                name.to_string(),
                Attribute {
                    attr_type: attr_type.clone(),
                    description: Description::markdown(*doc),
                    constraint: AttributeConstraint::Computed,
                    ..Default::default()
                },
            )
        })
        .collect();
    for (name, constraint, doc) in keys {
        if let Some(attribute) = attributes.get_mut(*name) {
            attribute.constraint = constraint.clone();
            attribute.description = Description::markdown(*doc);
        }
    }
    attributes
}

/// The schema of a data source: its markdown description and attributes.
pub fn data_source_schema(description: &str, attributes: HashMap<String, Attribute>) -> Schema {
    Schema {
        version: 1,
        block: Block {
            description: Description::markdown(description),
            attributes,
            ..Default::default()
        },
    }
}

/// A virtual platform as the data sources show it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlatformView {
    /// Stable id.
    pub id: Value<String>,
    /// Unique name.
    pub name: Value<String>,
    /// Member node names.
    pub nodes: Value<Vec<String>>,
    /// Administrators.
    pub admins: Value<Vec<String>>,
    /// Free text.
    pub description: Value<String>,
    /// VLAN tag of the platform's VM ports.
    pub vlan_tag: Value<Number>,
    /// IPv4 subnet (CIDR).
    pub subnet: Value<String>,
    /// Gateway address, if any.
    pub gateway: Value<String>,
    /// `running` or `paused`.
    pub power_state: Value<String>,
    /// RFC 3339.
    pub created_at: Value<String>,
    /// Bumped on every change.
    pub generation: Value<Number>,
    /// Whether its flows are exported and kept.
    #[serde(default)]
    pub flow_monitoring: Value<bool>,
    /// Node running its WireGuard gateway, if any.
    #[serde(default)]
    pub gateway_node: Value<String>,
    /// `public_address:listen_port` of its gateway, if any.
    #[serde(default)]
    pub gateway_endpoint: Value<String>,
    /// Base64 public key of its gateway, if any.
    #[serde(default)]
    pub gateway_public_key: Value<String>,
    /// `pending`, `ready` or `failed`; null without a gateway.
    #[serde(default)]
    pub gateway_state: Value<String>,
    /// Why the gateway is not ready; null without a gateway.
    #[serde(default)]
    pub gateway_message: Value<String>,
}

impl From<&Platform> for PlatformView {
    fn from(p: &Platform) -> Self {
        PlatformView {
            id: text(&p.id),
            name: text(&p.name),
            nodes: text_list(&p.nodes),
            admins: text_list(&p.admins),
            description: text(&p.description),
            vlan_tag: number(u64::from(p.vlan_tag)),
            subnet: text(&p.subnet),
            gateway: optional_text(p.gateway.as_ref()),
            power_state: text(p.power_state.as_str()),
            created_at: text(&p.created_at),
            generation: number(p.generation),
            flow_monitoring: Value::Value(p.flow_monitoring),
            gateway_node: optional_text(p.gateway_spec.as_ref().map(|g| &g.node)),
            gateway_endpoint: optional_text(p.gateway_endpoint.as_ref()),
            gateway_public_key: optional_text(p.gateway_public_key.as_ref()),
            gateway_state: p
                .gateway_status
                .as_ref()
                .map_or(Value::Null, |g| text(g.state.as_str())),
            gateway_message: optional_text(p.gateway_status.as_ref().map(|g| &g.message)),
        }
    }
}

/// The attributes of a platform view.
pub fn platform_fields() -> Vec<Field> {
    vec![
        (
            "id",
            AttributeType::String,
            "Stable id assigned by the controller.",
        ),
        (
            "name",
            AttributeType::String,
            "Unique name of the platform.",
        ),
        ("nodes", strings(), "Names of the member nodes."),
        ("admins", strings(), "Administrators of the platform."),
        ("description", AttributeType::String, "Free text."),
        (
            "vlan_tag",
            AttributeType::Number,
            "VLAN tag of every VM port of the platform (its L2 isolation).",
        ),
        (
            "subnet",
            AttributeType::String,
            "IPv4 subnet (CIDR) the VM addresses come from.",
        ),
        (
            "gateway",
            AttributeType::String,
            "Gateway address inside the subnet; null when none.",
        ),
        (
            "power_state",
            AttributeType::String,
            "`running` or `paused`.",
        ),
        (
            "created_at",
            AttributeType::String,
            "RFC 3339 creation time.",
        ),
        (
            "flow_monitoring",
            AttributeType::Bool,
            "Whether the platform's flows are exported and kept (`measurelab_flows` reads them).",
        ),
        (
            "generation",
            AttributeType::Number,
            "Bumped on every change of the platform.",
        ),
        (
            "gateway_node",
            AttributeType::String,
            "Node running the platform's WireGuard gateway; null when it has none.",
        ),
        (
            "gateway_endpoint",
            AttributeType::String,
            "`public_address:listen_port` WireGuard peers connect to; null without a gateway.",
        ),
        (
            "gateway_public_key",
            AttributeType::String,
            "The gateway's base64 X25519 public key; null without a gateway.",
        ),
        (
            "gateway_state",
            AttributeType::String,
            "`pending`, `ready` or `failed`, as the gateway's node last reported (`failed` too when the node was revoked); null without a gateway.",
        ),
        (
            "gateway_message",
            AttributeType::String,
            "Why the gateway is not `ready`; empty when it is, null without a gateway.",
        ),
    ]
}

/// A condition reported by the node agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConditionView {
    /// `Ready`, `PortAttached`, ...
    #[serde(rename = "type")]
    pub condition_type: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable detail.
    pub message: String,
}

/// A VM as the data sources show it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VmView {
    /// Stable id.
    pub id: Value<String>,
    /// Name, unique within the platform.
    pub name: Value<String>,
    /// Platform name.
    pub platform: Value<String>,
    /// Node name.
    pub node: Value<String>,
    /// Appliance name.
    pub appliance: Value<String>,
    /// `namespace` or `libvirt`.
    pub backend: Value<String>,
    /// Virtual CPUs.
    pub vcpus: Value<Number>,
    /// Memory.
    pub memory_mib: Value<Number>,
    /// Disk size.
    pub disk_mib: Value<Number>,
    /// Swap size.
    pub swap_mib: Value<Number>,
    /// QoS policy name, if any.
    pub qos_policy: Value<String>,
    /// Desired power state.
    pub power_state: Value<String>,
    /// IPv4 address.
    pub address: Value<String>,
    /// MAC address.
    pub mac: Value<String>,
    /// What the node reports.
    pub actual_state: Value<String>,
    /// A change waits for a restart.
    pub restart_required: Value<bool>,
    /// Same as `restart_required`, under the resource's name.
    pub pending_restart: Value<bool>,
    /// Room for live vCPU growth; null: `vcpus`.
    pub max_vcpus: Value<Number>,
    /// Room for live memory growth; null: `memory_mib`.
    pub max_memory_mib: Value<Number>,
    /// Last guest-agent heartbeat, if any.
    pub guest_last_heartbeat: Value<String>,
    /// The guest agent's version, if it said hello.
    pub guest_agent_version: Value<String>,
    /// Conditions from the node agent.
    pub conditions: Value<Vec<ConditionView>>,
    /// RFC 3339.
    pub created_at: Value<String>,
}

impl From<&Vm> for VmView {
    fn from(vm: &Vm) -> Self {
        VmView {
            id: text(&vm.id),
            name: text(&vm.name),
            platform: text(&vm.platform),
            node: text(&vm.node),
            appliance: text(&vm.appliance),
            backend: text(vm.backend.as_str()),
            vcpus: number(vm.vcpus),
            memory_mib: number(vm.memory_mib),
            disk_mib: number(vm.disk_mib),
            swap_mib: number(vm.swap_mib),
            qos_policy: optional_text(vm.qos_policy.as_ref()),
            power_state: text(vm.power_state.as_str()),
            address: text(&vm.address),
            mac: text(&vm.mac),
            actual_state: text(&vm.actual_state),
            restart_required: Value::Value(vm.restart_required),
            pending_restart: Value::Value(vm.pending_restart),
            max_vcpus: vm.max_vcpus.map(number).unwrap_or(Value::Null),
            max_memory_mib: vm.max_memory_mib.map(number).unwrap_or(Value::Null),
            guest_last_heartbeat: optional_text(vm.guest_last_heartbeat.as_ref()),
            guest_agent_version: optional_text(vm.guest_agent_version.as_ref()),
            conditions: Value::Value(
                vm.conditions
                    .iter()
                    .map(|c| ConditionView {
                        condition_type: c.condition_type.clone(),
                        status: c.status.clone(),
                        reason: c.reason.clone(),
                        message: c.message.clone(),
                    })
                    .collect(),
            ),
            created_at: text(&vm.created_at),
        }
    }
}

/// The attributes of a VM view.
pub fn vm_fields() -> Vec<Field> {
    let condition = AttributeType::Object(HashMap::from([
        ("type".to_string(), AttributeType::String),
        ("status".to_string(), AttributeType::String),
        ("reason".to_string(), AttributeType::String),
        ("message".to_string(), AttributeType::String),
    ]));
    vec![
        ("id", AttributeType::String, "Stable id assigned by the controller."),
        ("name", AttributeType::String, "Name of the VM, unique within its platform."),
        ("platform", AttributeType::String, "Name of the VM's virtual platform."),
        ("node", AttributeType::String, "Node the VM runs on."),
        ("appliance", AttributeType::String, "Appliance (VM image) of the VM."),
        ("backend", AttributeType::String, "`namespace` or `libvirt`."),
        ("vcpus", AttributeType::Number, "Virtual CPUs."),
        ("memory_mib", AttributeType::Number, "Memory in MiB."),
        ("disk_mib", AttributeType::Number, "Disk size in MiB (0: the appliance's own)."),
        ("swap_mib", AttributeType::Number, "Swap size in MiB."),
        ("qos_policy", AttributeType::String, "Name of the VM's QoS policy; null when none."),
        ("power_state", AttributeType::String, "Desired power state: `running`, `paused` or `stopped`."),
        ("address", AttributeType::String, "IPv4 address of the VM (no prefix), from the platform's subnet."),
        ("mac", AttributeType::String, "MAC address of the VM's port."),
        ("actual_state", AttributeType::String, "What the node reports: `pending`, `running`, `paused`, `stopped`, `failed` or `deleting`."),
        ("restart_required", AttributeType::Bool, "A changed attribute waits for a restart of the VM."),
        ("pending_restart", AttributeType::Bool, "Same as `restart_required`: a change that cannot apply live waits for the VM's next restart."),
        ("max_vcpus", AttributeType::Number, "Most vCPUs the VM can get without a restart; null: `vcpus`."),
        ("max_memory_mib", AttributeType::Number, "Most memory in MiB the VM can get without a restart; null: `memory_mib`."),
        ("guest_last_heartbeat", AttributeType::String, "RFC 3339 time of the guest agent's last heartbeat; null before the first."),
        ("guest_agent_version", AttributeType::String, "Version the VM's guest agent gave when it last said hello; null until it has. An unsupported one adds the condition `GuestAgentSupported` `False` (docs/version-skew.md)."),
        ("conditions", AttributeType::List(Box::new(condition)), "Conditions reported by the node agent, and `GuestAgentSupported` (only when `False`) by the controller: `type` (`Ready`, `PortAttached`, ...), `status` (`True`, `False`, `Unknown`), `reason`, `message`."),
        ("created_at", AttributeType::String, "RFC 3339 creation time."),
    ]
}

/// A measurement task as the data sources show it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    /// Stable id.
    pub id: Value<String>,
    /// Unique name.
    pub name: Value<String>,
    /// `platform` or `service_host`.
    pub mode: Value<String>,
    /// Platform name (mode platform).
    pub platform: Value<String>,
    /// Node names (mode service_host).
    pub nodes: Value<Vec<String>>,
    /// `once` or `periodic`.
    pub schedule: Value<String>,
    /// Period of a periodic task.
    pub interval_seconds: Value<Number>,
    /// Length of one run.
    pub duration_seconds: Value<Number>,
    /// Probe rate.
    pub rate_pps: Value<Number>,
    /// Probe size.
    pub packet_size_bytes: Value<Number>,
    /// Multicast group.
    pub group: Value<String>,
    /// UDP port.
    pub port: Value<Number>,
    /// Multicast TTL.
    pub ttl: Value<Number>,
    /// Source-specific multicast.
    pub ssm: Value<bool>,
    /// Source point; null: round robin.
    pub source: Value<String>,
    /// Receiver points; empty: all others.
    pub receivers: Value<Vec<String>>,
    /// pending, running, completed, failed.
    pub status: Value<String>,
    /// Newest result, if any.
    pub last_result_id: Value<String>,
    /// RFC 3339.
    pub created_at: Value<String>,
}

impl From<&Task> for TaskView {
    fn from(t: &Task) -> Self {
        TaskView {
            id: text(&t.id),
            name: text(&t.name),
            mode: text(&t.mode),
            platform: optional_text(t.platform.as_ref()),
            nodes: text_list(&t.nodes),
            schedule: text(&t.schedule),
            interval_seconds: number(t.interval_seconds),
            duration_seconds: number(t.duration_seconds),
            rate_pps: number(t.rate_pps),
            packet_size_bytes: number(t.packet_size_bytes),
            group: text(&t.group),
            port: number(u64::from(t.port)),
            ttl: number(t.ttl),
            ssm: Value::Value(t.ssm),
            source: optional_text(t.source.as_ref()),
            receivers: text_list(&t.receivers),
            status: text(&t.status),
            last_result_id: optional_text(t.last_result_id.as_ref()),
            created_at: text(&t.created_at),
        }
    }
}

/// The attributes of a task view.
pub fn task_fields() -> Vec<Field> {
    vec![
        ("id", AttributeType::String, "Stable id assigned by the controller."),
        ("name", AttributeType::String, "Unique name of the task."),
        ("mode", AttributeType::String, "`platform` (run by the platform's MSCS) or `service_host` (run by the nodes' service hosts)."),
        ("platform", AttributeType::String, "Platform of a `platform` task; null otherwise."),
        ("nodes", strings(), "Nodes of a `service_host` task."),
        ("schedule", AttributeType::String, "`once` or `periodic`."),
        ("interval_seconds", AttributeType::Number, "Period of a periodic task in seconds."),
        ("duration_seconds", AttributeType::Number, "Length of one run in seconds."),
        ("rate_pps", AttributeType::Number, "Probe rate in packets per second."),
        ("packet_size_bytes", AttributeType::Number, "UDP payload size of a probe in bytes."),
        ("group", AttributeType::String, "IPv4 multicast group of the probes."),
        ("port", AttributeType::Number, "UDP port of the probes."),
        ("ttl", AttributeType::Number, "Multicast TTL."),
        ("ssm", AttributeType::Bool, "Source-specific multicast."),
        ("source", AttributeType::String, "Point that sends; null: round robin over the points."),
        ("receivers", strings(), "Receiving points; empty: all points but the source."),
        ("status", AttributeType::String, "`pending`, `running`, `completed` or `failed`."),
        ("last_result_id", AttributeType::String, "Id of the newest result; null before the first run ends. Read results with the `measurelab_results` data source."),
        ("created_at", AttributeType::String, "RFC 3339 creation time."),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field the view serializes has a schema attribute and the other
    /// way round; a field missing on one side makes Terraform reject the
    /// state ("unsupported attribute" or a missing one).
    fn assert_fields_match<T: Serialize + Default>(fields: &[Field]) {
        let json = serde_json::to_value(T::default()).unwrap_or_default();
        let mut serialized: Vec<String> = json
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        let mut declared: Vec<String> = fields.iter().map(|(n, _, _)| n.to_string()).collect();
        serialized.sort();
        declared.sort();
        assert_eq!(serialized, declared);
    }

    #[test]
    fn views_serialize_exactly_their_schema_attributes() {
        assert_fields_match::<PlatformView>(&platform_fields());
        assert_fields_match::<VmView>(&vm_fields());
        assert_fields_match::<TaskView>(&task_fields());
    }

    #[test]
    fn lookup_keys_become_arguments_the_rest_stays_computed() {
        let attributes = lookup_attributes(
            &vm_fields(),
            &[
                ("name", AttributeConstraint::Required, "by name"),
                (
                    "platform",
                    AttributeConstraint::OptionalComputed,
                    "in platform",
                ),
            ],
        );
        assert_eq!(attributes["name"].constraint, AttributeConstraint::Required);
        assert_eq!(
            attributes["platform"].constraint,
            AttributeConstraint::OptionalComputed
        );
        assert_eq!(
            attributes["address"].constraint,
            AttributeConstraint::Computed
        );
        assert_eq!(attributes.len(), vm_fields().len());
    }
}
