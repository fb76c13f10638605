//! `measurelab_virtual_platform`: a slice of the physical platform (the
//! paper's virtual platform): member nodes, one VLAN tag and one subnet that
//! the controller allocates, and VMs (`measurelab_vm`) placed on the members.
//! An optional `gateway` block runs a WireGuard endpoint into the subnet on
//! one member; `measurelab_platform_peer` adds its peers.

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use measurelab_api::client::{Client, ClientError};
use measurelab_api::http::{
    Platform, PlatformCreate, PlatformGatewaySpec, PlatformPatch, PlatformPowerState,
};
use serde::{Deserialize, Serialize};
use tf_provider::schema::{
    Attribute, AttributeConstraint, AttributeType, Block, Description, NestedBlock, Schema,
};
use tf_provider::value::Value;
use tf_provider::{AttributePath, Diagnostics};

use super::adapter::{attribute, holds_shared, id_or_name, known, CreateRequest, ManagedResource};
use crate::diagnostics::{self, Operation};
use crate::node_model::computed;
use crate::number::Number;
use crate::shared::Shared;

const KIND: &str = "virtual platform";
/// Schema 2: `gateway` became the gateway block; the address is `gateway_address`.
const SCHEMA_VERSION: i64 = 2;

/// The `gateway` block: where the platform's WireGuard endpoint runs. A
/// group block, so a configuration without it reads as both attributes null.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GatewayBlock {
    /// Member node name.
    pub node: Value<String>,
    /// UDP port on the node's public address.
    pub listen_port: Value<Number>,
}

impl GatewayBlock {
    fn from_spec(spec: Option<&PlatformGatewaySpec>) -> Self {
        match spec {
            Some(spec) => GatewayBlock {
                node: Value::Value(spec.node.clone()),
                listen_port: Value::Value(Number::from(u64::from(spec.listen_port))),
            },
            None => GatewayBlock {
                node: Value::Null,
                listen_port: Value::Null,
            },
        }
    }
}

/// Terraform state of one platform.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlatformState {
    /// Unique name.
    pub name: Value<String>,
    /// Member node names.
    pub nodes: Value<BTreeSet<String>>,
    /// Administrators.
    pub admins: Value<BTreeSet<String>>,
    /// Free text.
    pub description: Value<String>,
    /// `running` or `paused`.
    pub power_state: Value<String>,
    /// Controller id.
    pub id: Value<String>,
    /// Allocated VLAN tag.
    pub vlan_tag: Value<Number>,
    /// Allocated subnet.
    pub subnet: Value<String>,
    /// The `gateway` block.
    pub gateway: Value<GatewayBlock>,
    /// Gateway address in the subnet, empty if none.
    #[serde(default)]
    pub gateway_address: Value<String>,
    /// `public_address:listen_port` of the gateway, null without one.
    #[serde(default)]
    pub gateway_endpoint: Value<String>,
    /// The gateway's base64 public key, null without one.
    #[serde(default)]
    pub gateway_public_key: Value<String>,
    /// `pending`, `ready` or `failed`, as the gateway's node last reported;
    /// null without a gateway.
    #[serde(default)]
    pub gateway_state: Value<String>,
    /// Why the gateway is not ready; empty when it is, null without one.
    #[serde(default)]
    pub gateway_message: Value<String>,
    /// Creation time.
    pub created_at: Value<String>,
    /// Export and keep the platform's traffic (absent from states written
    /// before it existed).
    #[serde(default)]
    pub flow_monitoring: Value<bool>,
    /// The key of the platform's MSCS and points (sensitive; absent from
    /// states written before it existed, read on the next refresh).
    #[serde(default)]
    pub control_key: Value<String>,
    /// Rotation trigger: raising it replaces the control key (absent from
    /// states written before it existed).
    #[serde(default)]
    pub control_key_version: Value<Number>,
}

impl PlatformState {
    /// The configured gateway: `Ok(None)` without one, `Err(())` while a
    /// value is unknown or invalid (reported by `validate`).
    fn gateway_spec(&self) -> Result<Option<PlatformGatewaySpec>, ()> {
        let block = match &self.gateway {
            Value::Value(block) => block,
            Value::Null => return Ok(None),
            Value::Unknown => return Err(()),
        };
        match (&block.node, &block.listen_port) {
            (Value::Null, Value::Null) => Ok(None),
            (Value::Value(node), Value::Value(port)) => {
                let listen_port = port
                    .as_whole()
                    .and_then(|p| u32::try_from(p).ok())
                    .filter(|p| (1..=65535).contains(p))
                    .ok_or(())?;
                Ok(Some(PlatformGatewaySpec {
                    node: node.clone(),
                    listen_port,
                }))
            }
            _ => Err(()),
        }
    }

    fn validate_gateway(&self, diags: &mut Diagnostics) {
        let Value::Value(block) = &self.gateway else {
            return;
        };
        let path = |name: &str| AttributePath::new("gateway").attribute(name.to_string());
        match (&block.node, &block.listen_port) {
            (Value::Value(_), Value::Null) => diagnostics::invalid_value(
                diags,
                path("listen_port"),
                "A gateway needs a port",
                "`gateway.listen_port` is missing; give the UDP port the gateway listens on."
                    .to_string(),
            ),
            (Value::Null, Value::Value(_)) => diagnostics::invalid_value(
                diags,
                path("node"),
                "A gateway needs a node",
                "`gateway.node` is missing; name the member node that runs the gateway."
                    .to_string(),
            ),
            _ => {}
        }
        if let Value::Value(port) = &block.listen_port {
            if !port.as_whole().is_some_and(|p| (1..=65535).contains(&p)) {
                diagnostics::invalid_value(
                    diags,
                    path("listen_port"),
                    "Invalid gateway port",
                    format!("`gateway.listen_port` is {port:?}; it must be a whole number from 1 to 65535."),
                );
            }
        }
    }

    /// The configured `control_key_version`; a null one counts as 1, the key
    /// drawn at creation. `Err(())` for anything but a whole number from 1.
    fn key_version(&self) -> Result<u64, ()> {
        match &self.control_key_version {
            Value::Null => Ok(1),
            Value::Value(number) => number.as_whole().filter(|v| *v >= 1).ok_or(()),
            Value::Unknown => Err(()),
        }
    }

    fn validate(&self, diags: &mut Diagnostics) {
        self.validate_gateway(diags);
        if self.control_key_version.is_value() && self.key_version().is_err() {
            diagnostics::invalid_value(
                diags,
                AttributePath::new("control_key_version"),
                "Invalid control key version",
                "`control_key_version` must be a whole number from 1; raise it by one to rotate \
                 the platform's control key."
                    .to_string(),
            );
        }
        if let Value::Value(nodes) = &self.nodes {
            if nodes.is_empty() {
                diagnostics::invalid_value(
                    diags,
                    AttributePath::new("nodes"),
                    "A virtual platform needs nodes",
                    "`nodes` is empty; list at least one measurement node (by name).".to_string(),
                );
            }
        }
        if let Value::Value(power) = &self.power_state {
            if PlatformPowerState::parse(power).is_none() {
                diagnostics::invalid_value(
                    diags,
                    AttributePath::new("power_state"),
                    "Invalid power state",
                    format!(
                        "{power:?} is not a platform power state; use \"running\" or \"paused\"."
                    ),
                );
            }
        }
    }

    fn refresh_from(&mut self, platform: &Platform) {
        self.name = Value::Value(platform.name.clone());
        self.nodes = Value::Value(platform.nodes.iter().cloned().collect());
        // Empty lists and text stay null when the configuration left them out.
        self.admins = if platform.admins.is_empty() && !self.admins.is_value() {
            Value::Null
        } else {
            Value::Value(platform.admins.iter().cloned().collect())
        };
        self.description = if platform.description.is_empty() && !self.description.is_value() {
            Value::Null
        } else {
            Value::Value(platform.description.clone())
        };
        self.power_state = Value::Value(platform.power_state.as_str().to_string());
        self.id = Value::Value(platform.id.clone());
        self.vlan_tag = Value::Value(Number::from(u64::from(platform.vlan_tag)));
        self.subnet = Value::Value(platform.subnet.clone());
        self.gateway = Value::Value(GatewayBlock::from_spec(platform.gateway_spec.as_ref()));
        self.gateway_address = Value::Value(platform.gateway.clone().unwrap_or_default());
        self.gateway_endpoint = platform.gateway_endpoint.clone().into();
        self.gateway_public_key = platform.gateway_public_key.clone().into();
        let status = platform.gateway_status.as_ref();
        self.gateway_state = status.map(|s| s.state.as_str().to_string()).into();
        self.gateway_message = status.map(|s| s.message.clone()).into();
        self.created_at = Value::Value(platform.created_at.clone());
        self.flow_monitoring = Value::Value(platform.flow_monitoring);
    }

    fn mark_computed_unknown(&mut self) {
        self.id = Value::Unknown;
        self.vlan_tag = Value::Unknown;
        self.subnet = Value::Unknown;
        self.created_at = Value::Unknown;
        self.mark_gateway_unknown();
        self.control_key = Value::Unknown;
        if self.power_state.is_null() {
            self.power_state = Value::Unknown;
        }
        if self.flow_monitoring.is_null() {
            self.flow_monitoring = Value::Unknown;
        }
    }
}

impl PlatformState {
    fn mark_gateway_unknown(&mut self) {
        self.gateway_address = Value::Unknown;
        self.gateway_endpoint = Value::Unknown;
        self.gateway_public_key = Value::Unknown;
        self.mark_gateway_state_unknown();
    }

    /// The node's report can change the gateway's state at any time, so
    /// an apply may return another one than the last refresh read.
    fn mark_gateway_state_unknown(&mut self) {
        self.gateway_state = Value::Unknown;
        self.gateway_message = Value::Unknown;
    }
}

/// A schema 1 state (JSON) in schema 2: its `gateway` address string moves to
/// `gateway_address`, and `gateway` becomes an empty block (schema 1 had no
/// way to configure a gateway, so none was configured).
fn upgrade_from_1(mut prior: serde_json::Value) -> Result<PlatformState, String> {
    let object = prior
        .as_object_mut()
        .ok_or_else(|| "the stored state is not a JSON object".to_string())?;
    let address = object.remove("gateway").unwrap_or(serde_json::Value::Null);
    object.insert("gateway_address".into(), address);
    object.insert(
        "gateway".into(),
        serde_json::json!({"node": null, "listen_port": null}),
    );
    serde_json::from_value(prior).map_err(|e| format!("the stored state does not parse: {e}"))
}

fn set_of(value: &Value<BTreeSet<String>>) -> Vec<String> {
    value
        .as_ref_option()
        .map(|s| s.iter().cloned().collect())
        .unwrap_or_default()
}

/// The controller's platforms, as a Terraform resource.
pub struct Platforms {
    shared: Shared,
}

#[async_trait]
impl ManagedResource for Platforms {
    type State = PlatformState;
    type Object = Platform;

    const KIND: &'static str = KIND;

    holds_shared!();

    fn schema(&self) -> Schema {
        let strings = || AttributeType::Set(Box::new(AttributeType::String));
        let attributes: HashMap<String, Attribute> = HashMap::from([
            (
                "name".to_string(),
                attribute(
                    AttributeType::String,
                    "Unique name (a DNS label). Changing it replaces the platform.",
                    AttributeConstraint::Required,
                ),
            ),
            (
                "nodes".to_string(),
                attribute(
                    strings(),
                    "Names of the measurement nodes the platform spans. Changed in place; a node that \
                     still hosts a VM of the platform cannot be removed.",
                    AttributeConstraint::Required,
                ),
            ),
            (
                "admins".to_string(),
                attribute(strings(), "Administrators of the platform (free-form principals).", AttributeConstraint::Optional),
            ),
            (
                "description".to_string(),
                attribute(AttributeType::String, "Free text.", AttributeConstraint::Optional),
            ),
            (
                "power_state".to_string(),
                attribute(
                    AttributeType::String,
                    "`running` (VMs follow their own `power_state`) or `paused` (every VM of the platform \
                     is suspended). Default `running`.",
                    AttributeConstraint::OptionalComputed,
                ),
            ),
            ("id".to_string(), computed(AttributeType::String, "Stable id assigned by the controller.")),
            (
                "vlan_tag".to_string(),
                computed(AttributeType::Number, "VLAN tag the controller allocated; every VM port of the platform carries it, which isolates the platform at layer 2."),
            ),
            (
                "subnet".to_string(),
                computed(AttributeType::String, "IPv4 subnet (CIDR) the controller allocated; VM addresses come from it."),
            ),
            (
                "gateway_address".to_string(),
                computed(AttributeType::String, "The gateway's address inside the subnet (its first host, every VM's default route); empty without a `gateway` block."),
            ),
            (
                "gateway_endpoint".to_string(),
                computed(AttributeType::String, "`public_address:listen_port` WireGuard peers connect to; null without a `gateway` block."),
            ),
            (
                "gateway_public_key".to_string(),
                computed(AttributeType::String, "The gateway's WireGuard (X25519) public key, base64; null without a `gateway` block. The private key never leaves the controller and the gateway's node."),
            ),
            (
                "gateway_state".to_string(),
                computed(AttributeType::String, "`pending` until the gateway's node reports it (after it was added or moved), then `ready` (WireGuard device, addresses, forwarding rules and listen port up) or `failed`; `failed` too when the node was revoked. Read on every refresh; null without a `gateway` block."),
            ),
            (
                "gateway_message".to_string(),
                computed(AttributeType::String, "Why the gateway is not `ready`, as its node or the controller said (e.g. the listen port already in use on the node); empty when ready, null without a `gateway` block."),
            ),
            ("created_at".to_string(), computed(AttributeType::String, "RFC 3339 creation time.")),
            (
                "flow_monitoring".to_string(),
                attribute(
                    AttributeType::Bool,
                    "Export the platform's traffic from its nodes' switches and keep it in the \
                     controller's collector, readable with the `measurelab_flows` data source. Each \
                     node exports as its `flow_export` (or its agent's configuration) says. Default \
                     `false`; changed in place (a member of the platform's tenant may change it).",
                    AttributeConstraint::OptionalComputed,
                ),
            ),
            (
                "control_key".to_string(),
                Attribute {
                    sensitive: true,
                    ..computed(
                        AttributeType::String,
                        "The platform's control key (64 hex digits). The controller gives it to every \
                         program of the platform as `MEASURELAB_CONTROL_KEY` (unless a deployment's `env` \
                         sets its own), so `mcast-mscs` and `mcast-point` authenticate each other; call \
                         the MSCS's API with `Authorization: Bearer <control_key>`. Read once with an \
                         owner or member token (`GET /v1/platforms/{id}/control-key`, recorded as an \
                         event); null for a viewer. See docs/measurement-control.md.",
                    )
                },
            ),
            (
                "control_key_version".to_string(),
                attribute(
                    AttributeType::Number,
                    "Rotation trigger for `control_key`: raise it (by one, from the default 1) and \
                     apply to replace the platform's control key by a fresh one (`POST \
                     /v1/platforms/{id}/control-key/rotate`, recorded as a \
                     `PlatformControlKeyRotated` event). Node agents then restart every program of \
                     the platform with the new key, and the old key is refused once they have; a \
                     periodic measurement's interrupted run is run again by the restarted MSCS. It \
                     cannot be lowered. A key rotated elsewhere (`measurelab platform control-key \
                     --rotate`) is not noticed here: raise this to read a fresh one.",
                    AttributeConstraint::Optional,
                ),
            ),
        ]);
        let port = |description: &str| Attribute {
            attr_type: AttributeType::Number,
            description: Description::markdown(description),
            constraint: AttributeConstraint::Optional,
            ..Default::default()
        };
        let gateway = Block {
            description: Description::markdown(
                "A WireGuard gateway into the platform subnet, reached by `measurelab_platform_peer`s: it \
                 routes the subnet and nothing else. Changing `node` or `listen_port` moves it in place \
                 (keys, tunnel network and peers are kept; peers must update their `Endpoint`); removing \
                 the block is refused while the platform has peers.",
            ),
            attributes: HashMap::from([
                (
                    "node".to_string(),
                    Attribute {
                        attr_type: AttributeType::String,
                        description: Description::markdown(
                            "Member node (in `nodes`) that runs the gateway. Its agent must report a public \
                             address (`--public-address`).",
                        ),
                        constraint: AttributeConstraint::Optional,
                        ..Default::default()
                    },
                ),
                (
                    "listen_port".to_string(),
                    port("UDP port on the node's public address, 1-65535, unique among the node's gateways."),
                ),
            ]),
            ..Default::default()
        };
        Schema {
            version: SCHEMA_VERSION,
            block: Block {
                description: Description::markdown(
                    "A virtual platform: a slice of the physical platform spanning chosen nodes, with its own \
                     VLAN and subnet, invisible to other platforms. VMs are added with `measurelab_vm`.",
                ),
                attributes,
                blocks: HashMap::from([("gateway".to_string(), NestedBlock::Group(gateway))]),
                ..Default::default()
            },
        }
    }

    fn validate(&self, diags: &mut Diagnostics, state: &PlatformState) {
        state.validate(diags);
    }

    async fn plan_create(&self, diags: &mut Diagnostics, proposed: PlatformState) -> PlatformState {
        proposed.validate(diags);
        let mut state = proposed;
        state.mark_computed_unknown();
        state
    }

    async fn plan_update(
        &self,
        diags: &mut Diagnostics,
        prior: &PlatformState,
        proposed: PlatformState,
    ) -> (PlatformState, Vec<AttributePath>) {
        proposed.validate(diags);
        let mut state = proposed;
        let mut replace = Vec::new();
        if state.name != prior.name {
            replace.push(AttributePath::new("name"));
            state.mark_computed_unknown();
        } else if state.gateway_spec() != prior.gateway_spec() {
            state.mark_gateway_unknown();
        } else if state != *prior {
            // Not on an empty plan: that would never be empty.
            state.mark_gateway_state_unknown();
        }
        match (prior.key_version(), state.key_version()) {
            (Ok(before), Ok(after)) if after > before => state.control_key = Value::Unknown,
            (Ok(before), Ok(after)) if after < before => diagnostics::invalid_value(
                diags,
                AttributePath::new("control_key_version"),
                "A control key version cannot be lowered",
                format!(
                    "`control_key_version` was {before} and is now {after}; a rotated key cannot \
                     come back. Raise it to rotate again, or leave it as it is."
                ),
            ),
            _ => {}
        }
        (state, replace)
    }

    async fn create(
        &self,
        diags: &mut Diagnostics,
        client: &Client,
        planned: PlatformState,
        request: &CreateRequest,
    ) -> Option<PlatformState> {
        planned.validate(diags);
        if !diags.errors.is_empty() {
            return None;
        }
        let body = PlatformCreate {
            tenant: None,
            name: known(&planned.name),
            nodes: set_of(&planned.nodes),
            admins: set_of(&planned.admins),
            description: planned.description.as_ref_option().cloned(),
            request_id: request.request_id(),
            flow_monitoring: planned.flow_monitoring.as_ref_option().copied(),
            gateway: planned.gateway_spec().ok().flatten(),
        };
        let mut platform = request
            .send(diags, || client.create_platform(&body))
            .await?;
        if let Some(PlatformPowerState::Paused) = planned
            .power_state
            .as_ref_option()
            .and_then(|p| PlatformPowerState::parse(p))
        {
            let patch = PlatformPatch {
                power_state: Some(PlatformPowerState::Paused),
                ..Default::default()
            };
            match client.update_platform(&platform.id, &patch).await {
                Ok(updated) => platform = updated,
                Err(err) => {
                    // The platform exists: keep it in the state (tainted by the
                    // error) so the next apply fixes the power state.
                    diagnostics::client_error(diags, &err, Operation::Update(KIND));
                }
            }
        }
        let mut state = planned;
        state.refresh_from(&platform);
        fill_control_key(client, &mut state).await;
        Some(state)
    }

    async fn update(
        &self,
        diags: &mut Diagnostics,
        prior: &PlatformState,
        planned: PlatformState,
    ) -> Option<PlatformState> {
        let client = self.shared.client(diags)?;
        let patch = PlatformPatch {
            nodes: Some(set_of(&planned.nodes)),
            admins: Some(set_of(&planned.admins)),
            description: Some(known(&planned.description)),
            power_state: planned
                .power_state
                .as_ref_option()
                .and_then(|p| PlatformPowerState::parse(p)),
            request_id: None,
            // Left out of the configuration: the controller keeps its value.
            flow_monitoring: planned.flow_monitoring.as_ref_option().copied(),
            // Sent only when it changed: an unchanged gateway is not moved.
            gateway: match planned.gateway_spec() {
                Ok(spec) if prior.gateway_spec() != Ok(spec.clone()) => Some(spec),
                _ => None,
            },
        };
        let rotate = matches!(
            (prior.key_version(), planned.key_version()),
            (Ok(before), Ok(after)) if after > before
        );
        match client.update_platform(&known(&prior.id), &patch).await {
            Ok(platform) => {
                let mut state = planned;
                state.refresh_from(&platform);
                if rotate {
                    rotate_control_key(diags, &client, prior, &mut state).await;
                }
                Some(state)
            }
            Err(err) => {
                diagnostics::client_error(diags, &err, Operation::Update(KIND));
                None
            }
        }
    }

    fn id(state: &PlatformState) -> &Value<String> {
        &state.id
    }

    fn read_key(state: &PlatformState) -> String {
        id_or_name(&state.id, &state.name)
    }

    async fn get(client: &Client, key: &str) -> Result<Platform, ClientError> {
        client.get_platform(key).await
    }

    async fn delete(client: &Client, id: &str) -> Result<(), ClientError> {
        client.delete_platform(id).await.map(drop)
    }

    async fn refresh(&self, client: &Client, state: &mut PlatformState, platform: &Platform) {
        state.refresh_from(platform);
        fill_control_key(client, state).await;
    }

    fn upgrade(version: i64, prior: serde_json::Value) -> Result<PlatformState, String> {
        match version {
            1 => upgrade_from_1(prior),
            _ => Err(format!(
                "this provider knows virtual platform schemas 1 and {SCHEMA_VERSION}, not {version}; use a newer provider"
            )),
        }
    }
}

/// Replaces the platform's control key (`control_key_version` was raised).
/// On failure the state keeps the prior key and version, so the next apply
/// tries again.
async fn rotate_control_key(
    diags: &mut Diagnostics,
    client: &Client,
    prior: &PlatformState,
    state: &mut PlatformState,
) {
    match client
        .rotate_platform_control_key(&known(&prior.id), None)
        .await
    {
        Ok(key) => state.control_key = Value::Value(key.control_key),
        Err(err) => {
            diagnostics::client_error(diags, &err, Operation::Update(KIND));
            state.control_key = prior.control_key.clone();
            state.control_key_version = prior.control_key_version.clone();
        }
    }
}

/// Reads the platform's control key into `state` unless it already holds it.
/// The key changes only when this resource rotates it, so it is read once
/// (each read is an event at the controller), not on every refresh. A token that may not read
/// it (a viewer) leaves it null rather than failing the platform.
async fn fill_control_key(client: &Client, state: &mut PlatformState) {
    if state.control_key.is_value() {
        return;
    }
    state.control_key = match client.platform_control_key(&known(&state.id)).await {
        Ok(key) => Value::Value(key.control_key),
        Err(_) => Value::Null,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schema_1_state_keeps_its_address_and_gets_an_empty_gateway_block() {
        let prior = serde_json::json!({
            "name": "lab", "nodes": ["n1"], "admins": null, "description": null,
            "power_state": "running", "id": "p1", "vlan_tag": 100,
            "subnet": "10.201.0.0/24", "gateway": "", "created_at": "2026-01-01T00:00:00Z",
            "flow_monitoring": false
        });
        let state = Platforms::upgrade(1, prior).unwrap();
        assert_eq!(state.gateway_address, Value::Value(String::new()));
        assert_eq!(state.gateway, Value::Value(GatewayBlock::from_spec(None)));
        assert_eq!(state.gateway_spec(), Ok(None));
        assert_eq!(state.id, Value::Value("p1".to_string()));
        assert!(Platforms::upgrade(7, serde_json::json!({})).is_err());
    }

    #[test]
    fn a_half_gateway_block_points_at_the_missing_attribute() {
        let mut diags = Diagnostics::default();
        let state = PlatformState {
            gateway: Value::Value(GatewayBlock {
                node: Value::Value("n1".into()),
                listen_port: Value::Null,
            }),
            ..Default::default()
        };
        state.validate(&mut diags);
        let paths: Vec<_> = diags.errors.iter().map(|d| d.attribute.clone()).collect();
        assert_eq!(
            paths,
            vec![AttributePath::new("gateway").attribute("listen_port")]
        );
        let mut diags = Diagnostics::default();
        let state = PlatformState {
            gateway: Value::Value(GatewayBlock {
                node: Value::Value("n1".into()),
                listen_port: Value::Value(Number::from(70000u64)),
            }),
            ..Default::default()
        };
        state.validate(&mut diags);
        assert_eq!(diags.errors.len(), 1);
        assert_eq!(state.gateway_spec(), Err(()));
    }

    /// Raising `control_key_version` plans a new (unknown) key in place;
    /// keeping it keeps the key; lowering it or a fraction is an error on the
    /// attribute.
    #[tokio::test]
    async fn a_raised_control_key_version_plans_a_new_key_and_a_lowered_one_is_refused() {
        let resource = Platforms::new(Shared::new(tokio_util::sync::CancellationToken::new()));
        let prior = PlatformState {
            name: Value::Value("lab".into()),
            nodes: Value::Value(BTreeSet::from(["n1".to_string()])),
            id: Value::Value("p1".into()),
            control_key: Value::Value("ab".repeat(32)),
            control_key_version: Value::Null,
            ..Default::default()
        };
        let with_version = |version: Number| PlatformState {
            control_key_version: Value::Value(version),
            ..prior.clone()
        };
        let plan = |proposed: PlatformState| {
            let resource = &resource;
            let prior = &prior;
            async move {
                let mut diags = Diagnostics::default();
                let (state, replace) = resource.plan_update(&mut diags, prior, proposed).await;
                assert!(replace.is_empty(), "replaces for {replace:?}");
                let paths: Vec<_> = diags.errors.iter().map(|d| d.attribute.clone()).collect();
                (state, paths)
            }
        };
        let (state, errors) = plan(with_version(Number::Unsigned(1))).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(state.control_key, prior.control_key, "1 is the first key");
        let (state, errors) = plan(with_version(Number::Unsigned(2))).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(state.control_key, Value::Unknown, "a raise rotates");
        assert_eq!(state.id, prior.id, "in place");

        let raised = with_version(Number::Unsigned(3));
        let mut diags = Diagnostics::default();
        let (_, _) = resource
            .plan_update(&mut diags, &raised, with_version(Number::Unsigned(2)))
            .await;
        let paths: Vec<_> = diags.errors.iter().map(|d| d.attribute.clone()).collect();
        assert_eq!(paths, vec![AttributePath::new("control_key_version")]);
        let (_, errors) = plan(with_version(Number::Float(1.5))).await;
        assert_eq!(errors, vec![AttributePath::new("control_key_version")]);
    }

    /// The gateway's state comes from its node, so an apply may read a new
    /// one: any planned change leaves it unknown, while an empty plan keeps
    /// it (or every plan would show a change).
    #[tokio::test]
    async fn the_gateway_state_is_unknown_in_a_change_and_kept_in_an_empty_plan() {
        let resource = Platforms::new(Shared::new(tokio_util::sync::CancellationToken::new()));
        let prior = PlatformState {
            name: Value::Value("lab".into()),
            nodes: Value::Value(BTreeSet::from(["n1".to_string()])),
            id: Value::Value("p1".into()),
            gateway: Value::Value(GatewayBlock {
                node: Value::Value("n1".into()),
                listen_port: Value::Value(Number::from(51820u64)),
            }),
            gateway_state: Value::Value("failed".into()),
            gateway_message: Value::Value("listen port 51820 is already in use".into()),
            ..Default::default()
        };
        let mut diags = Diagnostics::default();
        let (same, _) = resource
            .plan_update(&mut diags, &prior, prior.clone())
            .await;
        assert_eq!(same, prior);
        let described = PlatformState {
            description: Value::Value("now with a description".into()),
            ..prior.clone()
        };
        let (changed, _) = resource.plan_update(&mut diags, &prior, described).await;
        assert_eq!(
            (changed.gateway_state, changed.gateway_message),
            (Value::Unknown, Value::Unknown)
        );
        assert_eq!(changed.gateway_public_key, prior.gateway_public_key);
        assert!(diags.errors.is_empty(), "{:?}", diags.errors);
    }

    #[test]
    fn empty_nodes_and_bad_power_point_at_their_attributes() {
        let mut diags = Diagnostics::default();
        let state = PlatformState {
            nodes: Value::Value(BTreeSet::new()),
            power_state: Value::Value("off".into()),
            ..Default::default()
        };
        state.validate(&mut diags);
        let paths: Vec<_> = diags.errors.iter().map(|d| d.attribute.clone()).collect();
        assert_eq!(
            paths,
            vec![
                AttributePath::new("nodes"),
                AttributePath::new("power_state")
            ]
        );
    }
}
