//! `measurelab_vm`: a VM (a virtual measurement node) of a virtual platform,
//! placed on one member node. The node agent builds it (libvirt domain or
//! namespace sliver), attaches its port to the platform's VLAN and applies the
//! QoS policy; create waits until the agent reports it `Ready`.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use measurelab_api::client::{Client, ClientError};
use measurelab_api::http::{Vm, VmBackend, VmCreate, VmPatch, VmPowerState};
use serde::{Deserialize, Serialize};
use tf_provider::schema::{
    Attribute, AttributeConstraint, AttributeType, Block, Description, NestedBlock, Schema,
};
use tf_provider::value::Value;
use tf_provider::{AttributePath, Diagnostics};

use super::adapter::{attribute, holds_shared, known, CreateRequest, DeleteWait, ManagedResource};
use crate::data_sources::vms::list_query;
use crate::diagnostics::{self, Operation};
use crate::node_model::computed;
use crate::number::Number;
use crate::shared::Shared;
use crate::timeouts;
use crate::wait::{self, Poll};

const KIND: &str = "VM";

/// The `timeouts` block of a VM.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VmTimeouts {
    /// Wait for Ready after create.
    pub create: Value<String>,
    /// Wait for the agent to apply a change.
    pub update: Value<String>,
    /// Wait for the VM to be gone.
    pub delete: Value<String>,
}

impl VmTimeouts {
    fn get(value: &Value<String>) -> Duration {
        match value {
            Value::Value(text) => {
                timeouts::parse_duration(text).unwrap_or(timeouts::DEFAULT_CREATE)
            }
            _ => timeouts::DEFAULT_CREATE,
        }
    }
}

/// One condition as Terraform shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConditionValue {
    /// Condition type (`Ready`, `PortAttached`, ...).
    #[serde(rename = "type")]
    pub condition_type: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// CamelCase reason.
    pub reason: String,
    /// Detail.
    pub message: String,
}

/// Terraform state of one VM.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VmState {
    /// Name within the platform.
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
    /// Room for live vCPU growth.
    pub max_vcpus: Value<Number>,
    /// Room for live memory growth.
    pub max_memory_mib: Value<Number>,
    /// QoS policy name.
    pub qos_policy: Value<String>,
    /// `running`, `paused` or `stopped`.
    pub power_state: Value<String>,
    /// Controller id.
    pub id: Value<String>,
    /// IPv4 address.
    pub address: Value<String>,
    /// MAC address.
    pub mac: Value<String>,
    /// Observed state.
    pub actual_state: Value<String>,
    /// Conditions.
    pub conditions: Value<Vec<ConditionValue>>,
    /// The guest agent's version; null until it said hello.
    pub guest_agent_version: Value<String>,
    /// A change waits for the VM's next restart.
    pub pending_restart: Value<bool>,
    /// The `timeouts` block.
    pub timeouts: Value<VmTimeouts>,
}

/// Whole positive number (MiB, CPUs); `None` for null/unknown, diagnostic when bad.
fn whole(
    diags: &mut Diagnostics,
    attribute: &'static str,
    value: &Value<Number>,
    allow_zero: bool,
) -> Option<u64> {
    let Value::Value(number) = value else {
        return None;
    };
    match number {
        Number::Unsigned(v) if *v > 0 || allow_zero => Some(*v),
        other => {
            diagnostics::invalid_value(
                diags,
                AttributePath::new(attribute),
                "Invalid size",
                format!(
                    "`{attribute}` is {}; it must be a whole number{}.",
                    serde_json::to_string(other).unwrap_or_default(),
                    if allow_zero { "" } else { " greater than zero" }
                ),
            );
            None
        }
    }
}

impl VmState {
    fn validate(&self, diags: &mut Diagnostics) {
        whole(diags, "vcpus", &self.vcpus, false);
        whole(diags, "memory_mib", &self.memory_mib, false);
        whole(diags, "disk_mib", &self.disk_mib, true);
        whole(diags, "swap_mib", &self.swap_mib, true);
        whole(diags, "max_vcpus", &self.max_vcpus, false);
        whole(diags, "max_memory_mib", &self.max_memory_mib, false);
        if let Value::Value(backend) = &self.backend {
            if VmBackend::parse(backend).is_none() {
                diagnostics::invalid_value(
                    diags,
                    AttributePath::new("backend"),
                    "Invalid backend",
                    format!("{backend:?} is not a VM backend; use \"namespace\" or \"libvirt\"."),
                );
            }
        }
        if let Value::Value(power) = &self.power_state {
            if VmPowerState::parse(power).is_none() {
                diagnostics::invalid_value(
                    diags,
                    AttributePath::new("power_state"),
                    "Invalid power state",
                    format!("{power:?} is not a VM power state; use \"running\", \"paused\" or \"stopped\"."),
                );
            }
        }
        if let Value::Value(t) = &self.timeouts {
            for (name, value) in [
                ("create", &t.create),
                ("update", &t.update),
                ("delete", &t.delete),
            ] {
                if let Value::Value(text) = value {
                    if let Err(err) = timeouts::parse_duration(text) {
                        diagnostics::invalid_value(
                            diags,
                            AttributePath::new("timeouts").attribute(name),
                            "Invalid timeout",
                            format!("{err}."),
                        );
                    }
                }
            }
        }
    }

    fn timeouts(&self) -> VmTimeouts {
        self.timeouts.as_ref_option().cloned().unwrap_or_default()
    }

    /// Copy the controller's view. Volatile fields (`actual_state`,
    /// `conditions`, `guest_agent_version`) are refreshed here, on read, and
    /// never planned.
    fn refresh_from(&mut self, vm: &Vm) {
        self.name = Value::Value(vm.name.clone());
        self.platform = Value::Value(vm.platform.clone());
        self.node = Value::Value(vm.node.clone());
        self.appliance = Value::Value(vm.appliance.clone());
        self.backend = Value::Value(vm.backend.as_str().to_string());
        self.vcpus = Value::Value(Number::from(vm.vcpus));
        self.memory_mib = Value::Value(Number::from(vm.memory_mib));
        self.disk_mib = Value::Value(Number::from(vm.disk_mib));
        self.swap_mib = Value::Value(Number::from(vm.swap_mib));
        self.max_vcpus = vm
            .max_vcpus
            .map(|n| Value::Value(Number::from(n)))
            .unwrap_or(Value::Null);
        self.max_memory_mib = vm
            .max_memory_mib
            .map(|n| Value::Value(Number::from(n)))
            .unwrap_or(Value::Null);
        self.pending_restart = Value::Value(vm.pending_restart);
        self.qos_policy = vm
            .qos_policy
            .clone()
            .map(Value::Value)
            .unwrap_or(Value::Null);
        self.power_state = Value::Value(vm.power_state.as_str().to_string());
        self.id = Value::Value(vm.id.clone());
        self.address = Value::Value(vm.address.clone());
        self.mac = Value::Value(vm.mac.clone());
        self.actual_state = Value::Value(vm.actual_state.clone());
        self.conditions = Value::Value(
            vm.conditions
                .iter()
                .map(|c| ConditionValue {
                    condition_type: c.condition_type.clone(),
                    status: c.status.clone(),
                    reason: c.reason.clone(),
                    message: c.message.clone(),
                })
                .collect(),
        );
        self.guest_agent_version = vm
            .guest_agent_version
            .clone()
            .map(Value::Value)
            .unwrap_or(Value::Null);
    }

    fn mark_computed_unknown(&mut self) {
        self.id = Value::Unknown;
        self.address = Value::Unknown;
        self.mac = Value::Unknown;
        self.actual_state = Value::Unknown;
        self.conditions = Value::Unknown;
        self.guest_agent_version = Value::Unknown;
        self.pending_restart = Value::Unknown;
        for value in [&mut self.backend, &mut self.power_state] {
            if value.is_null() {
                *value = Value::Unknown;
            }
        }
        for value in [&mut self.disk_mib, &mut self.swap_mib] {
            if value.is_null() {
                *value = Value::Unknown;
            }
        }
    }
}

/// Ready = the agent applied the current generation and reports `Ready=True`
/// (or, for a stopped VM, that it is stopped).
fn converged(vm: &Vm) -> Result<bool, String> {
    let applied = vm.observed_generation >= vm.generation;
    let ready = vm.conditions.iter().find(|c| c.condition_type == "Ready");
    if vm.actual_state == "failed" {
        let why = ready
            .map(|c| format!("{}: {}", c.reason, c.message))
            .unwrap_or_default();
        return Err(format!("the node agent reports the VM failed ({why})"));
    }
    let wanted = vm.power_state.as_str();
    let done = applied
        && match vm.power_state {
            VmPowerState::Running => ready.is_some_and(|c| c.status == "True"),
            _ => vm.actual_state == wanted,
        };
    Ok(done)
}

fn describe(vm: &Vm) -> String {
    let conditions: Vec<String> = vm
        .conditions
        .iter()
        .map(|c| {
            format!(
                "{}={} ({}: {})",
                c.condition_type, c.status, c.reason, c.message
            )
        })
        .collect();
    format!(
        "actual_state {}, generation {} observed {}, conditions [{}]",
        vm.actual_state,
        vm.generation,
        vm.observed_generation,
        conditions.join("; ")
    )
}

/// The controller's VMs, as a Terraform resource.
pub struct Vms {
    shared: Shared,
}

impl Vms {
    /// Wait until the VM converged; a failed VM ends the wait with a diagnostic.
    async fn wait_converged(
        &self,
        diags: &mut Diagnostics,
        client: &Client,
        id: &str,
        name: &str,
        timeout: Duration,
        operation: Operation,
    ) -> Option<Vm> {
        let mut failure = None;
        let result = wait::until(&self.shared.stop, timeout, || {
            let client = client.clone();
            let id = id.to_string();
            async move {
                let vm = client.get_vm(&id).await?;
                Ok(match converged(&vm) {
                    Ok(true) => Poll::Done(Ok(vm)),
                    Ok(false) => Poll::Pending(describe(&vm)),
                    Err(why) => Poll::Done(Err(why)),
                })
            }
        })
        .await;
        match result {
            Ok(Ok(vm)) => return Some(vm),
            Ok(Err(why)) => failure = Some(why),
            Err(end) => diagnostics::wait_failed(
                diags,
                &end,
                KIND,
                name,
                "become ready",
                timeout,
                operation,
            ),
        }
        if let Some(why) = failure {
            diagnostics::invalid_value(
                diags,
                AttributePath::root(),
                format!("VM {name:?} failed"),
                format!("{why}.\n\nWhat to do: check the appliance, the node's backends and the node agent's log."),
            );
        }
        None
    }

    /// Plan-time check that the node can run the VM: fails with a diagnostic on
    /// `backend` (or `node`) when the node lacks the backend. Reads the node
    /// and appliance lists the provider fetched once (see `catalog`), so a
    /// plan of N VMs costs one request, not N. An unknown node or an
    /// unreachable controller is left to apply, which reports it.
    async fn check_placement(&self, diags: &mut Diagnostics, state: &VmState) {
        let (Value::Value(node_name), Value::Value(appliance)) = (&state.node, &state.appliance)
        else {
            return;
        };
        let Some((client, catalog)) = self.shared.catalog_quiet() else {
            return;
        };
        let Ok(Some(node)) = catalog.node(&client, node_name).await else {
            return;
        };
        let caps = &node.capabilities;
        let has = |backend: VmBackend| match backend {
            VmBackend::Namespace => caps.namespace_backend,
            VmBackend::Libvirt => !caps.libvirt_uris.is_empty(),
        };
        let available: Vec<&str> = [VmBackend::Namespace, VmBackend::Libvirt]
            .into_iter()
            .filter(|b| has(*b))
            .map(VmBackend::as_str)
            .collect();
        match state.backend.as_ref_option().and_then(|b| VmBackend::parse(b)) {
            Some(backend) if !has(backend) => diagnostics::invalid_value(
                diags,
                AttributePath::new("backend"),
                format!("Node {node_name:?} has no {} backend", backend.as_str()),
                format!(
                    "Node {node_name:?} reports the backends [{}] (libvirt URIs: {:?}); it cannot run a {} VM.\n\n\
                     What to do: pick another node or backend.",
                    available.join(", "),
                    caps.libvirt_uris,
                    backend.as_str()
                ),
            ),
            Some(_) => {}
            None => {
                let Ok(appliances) = catalog.appliances(&client).await else { return };
                let Some(appliance) = appliances.iter().find(|a| &a.name == appliance) else { return };
                if !appliance.backends.iter().any(|b| available.contains(&b.as_str())) {
                    diagnostics::invalid_value(
                        diags,
                        AttributePath::new("node"),
                        format!("Node {node_name:?} cannot run appliance {:?}", appliance.name),
                        format!(
                            "The appliance runs on [{}]; the node has [{}].\n\nWhat to do: pick another node or appliance.",
                            appliance.backends.join(", "),
                            available.join(", ")
                        ),
                    );
                }
            }
        }
    }
}

#[async_trait]
impl ManagedResource for Vms {
    type State = VmState;
    type Object = Vm;

    const KIND: &'static str = KIND;

    holds_shared!();

    fn schema(&self) -> Schema {
        use AttributeConstraint::{Optional, OptionalComputed, Required};
        let condition_type = AttributeType::Object(
            ["type", "status", "reason", "message"]
                .into_iter()
                .map(|n| (n.to_string(), AttributeType::String))
                .collect(),
        );
        let attributes: HashMap<String, Attribute> = HashMap::from([
            ("name".into(), attribute(AttributeType::String, "Name (a DNS label), unique within the platform. Changing it replaces the VM.", Required)),
            ("platform".into(), attribute(AttributeType::String, "Name of the virtual platform (`measurelab_virtual_platform.NAME.name`). Changing it replaces the VM.", Required)),
            ("node".into(), attribute(AttributeType::String, "Name of the measurement node to run on; must be a member of the platform. Changing it replaces the VM.", Required)),
            ("appliance".into(), attribute(AttributeType::String, "Name of the appliance (VM image). Changing it replaces the VM.", Required)),
            ("backend".into(), attribute(AttributeType::String, "`namespace` (network namespace + cgroups) or `libvirt` (Xen, QEMU or the test driver). Default: the appliance's first backend the node has. Planning fails when the node lacks the backend. Changing it replaces the VM.", OptionalComputed)),
            ("vcpus".into(), attribute(AttributeType::Number, "Virtual CPUs (1-64). Changed in place: live on a namespace VM (cgroup CPU time and a cpuset, so `nproc` in the guest follows) and on a libvirt VM up to `max_vcpus`; beyond that at the VM's next restart (`pending_restart`).", Required)),
            ("memory_mib".into(), attribute(AttributeType::Number, "Memory in MiB; at least the appliance's minimum. Changed in place: live on a namespace VM (cgroup limit) and on a libvirt VM up to `max_memory_mib`; beyond that at the next restart (`pending_restart`).", Required)),
            ("max_vcpus".into(), attribute(AttributeType::Number, "Most vCPUs a libvirt VM can get without a restart (it boots with room for them); at least `vcpus`. Unset: `vcpus`. Changed in place; a new maximum applies at the next restart.", Optional)),
            ("max_memory_mib".into(), attribute(AttributeType::Number, "Most memory in MiB a libvirt VM can get without a restart (QEMU VMs get a balloon for it); at least `memory_mib`. Unset: `memory_mib`. Changed in place; a new maximum applies at the next restart.", Optional)),
            ("disk_mib".into(), attribute(AttributeType::Number, "Disk size in MiB; 0 or unset: the appliance's own. Changing it replaces the VM.", OptionalComputed)),
            ("swap_mib".into(), attribute(AttributeType::Number, "Swap size in MiB. Changing it replaces the VM.", OptionalComputed)),
            ("qos_policy".into(), attribute(AttributeType::String, "Name of a `measurelab_qos_policy` limiting the VM's bandwidth. Changed in place, without a restart; removing it removes the limit.", Optional)),
            ("power_state".into(), attribute(AttributeType::String, "`running`, `paused` or `stopped`. Default `running`. Changed in place.", OptionalComputed)),
            ("id".into(), computed(AttributeType::String, "Stable id assigned by the controller.")),
            ("address".into(), computed(AttributeType::String, "IPv4 address from the platform's subnet.")),
            ("mac".into(), computed(AttributeType::String, "MAC address of the VM's port.")),
            ("actual_state".into(), computed(AttributeType::String, "What the node agent last reported: `pending`, `running`, `paused`, `stopped`, `failed` or `deleting`. Refreshed on read; never causes a diff.")),
            ("pending_restart".into(), computed(AttributeType::Bool, "True while the VM runs an older spec than it was given: a change that cannot apply live (e.g. `vcpus` beyond the `max_vcpus` it booted with) waits for its next restart (`power_state` `stopped`, then `running`). Refreshed on read; never causes a diff.")),
            ("conditions".into(), computed(AttributeType::List(Box::new(condition_type)), "Conditions reported by the node agent (`Ready`, `PortAttached`, `GuestRegistered`) and by the controller (`GuestAgentSupported`, only when `False`), each with `type`, `status` (`True`/`False`/`Unknown`), `reason` and `message`. Refreshed on read; never causes a diff.")),
            ("guest_agent_version".into(), computed(AttributeType::String, "Version the VM's guest agent gave when it last said hello; null until it has (or under a node agent too old to report it). A version the controller's skew policy does not support adds the condition `GuestAgentSupported` `False` (docs/version-skew.md); the VM keeps running. Refreshed on read; never causes a diff.")),
        ]);
        let duration = |what: &str| {
            Attribute {
            attr_type: AttributeType::String,
            description: Description::markdown(format!("How long to wait {what}, as a duration such as `\"90s\"` or `\"5m\"`. Default `\"5m\"`.")),
            constraint: AttributeConstraint::Optional,
            ..Default::default()
        }
        };
        let timeouts_block = Block {
            description: Description::markdown(
                "Limits on how long operations wait for the node agent.",
            ),
            attributes: HashMap::from([
                (
                    "create".to_string(),
                    duration("after create for the VM to be ready"),
                ),
                (
                    "update".to_string(),
                    duration("after a change for the node agent to apply it"),
                ),
                (
                    "delete".to_string(),
                    duration("after destroy for the VM to be gone"),
                ),
            ]),
            ..Default::default()
        };
        Schema {
            version: 1,
            block: Block {
                description: Description::markdown(
                    "A VM of a virtual platform, on one of the platform's nodes. Its port carries the platform's \
                     VLAN tag and, with `qos_policy`, a bandwidth limit. Create waits until the node agent reports \
                     the VM `Ready`; destroy waits until it is gone.",
                ),
                attributes,
                blocks: HashMap::from([("timeouts".to_string(), NestedBlock::Group(timeouts_block))]),
                ..Default::default()
            },
        }
    }

    fn validate(&self, diags: &mut Diagnostics, state: &VmState) {
        state.validate(diags);
    }

    async fn plan_create(&self, diags: &mut Diagnostics, proposed: VmState) -> VmState {
        proposed.validate(diags);
        self.check_placement(diags, &proposed).await;
        let mut state = proposed;
        state.mark_computed_unknown();
        state
    }

    async fn plan_update(
        &self,
        diags: &mut Diagnostics,
        prior: &VmState,
        proposed: VmState,
    ) -> (VmState, Vec<AttributePath>) {
        proposed.validate(diags);
        let mut replace = Vec::new();
        for (attribute, changed) in [
            ("name", proposed.name != prior.name),
            ("platform", proposed.platform != prior.platform),
            ("node", proposed.node != prior.node),
            ("appliance", proposed.appliance != prior.appliance),
            ("backend", proposed.backend != prior.backend),
            ("disk_mib", proposed.disk_mib != prior.disk_mib),
            ("swap_mib", proposed.swap_mib != prior.swap_mib),
        ] {
            if changed {
                replace.push(AttributePath::new(attribute));
            }
        }
        let mut state = proposed;
        if !replace.is_empty() {
            self.check_placement(diags, &state).await;
            state.mark_computed_unknown();
        }
        (state, replace)
    }

    async fn create(
        &self,
        diags: &mut Diagnostics,
        client: &Client,
        planned: VmState,
        request: &CreateRequest,
    ) -> Option<VmState> {
        planned.validate(diags);
        if !diags.errors.is_empty() {
            return None;
        }
        let number = |v: &Value<Number>| match v {
            Value::Value(Number::Unsigned(n)) => Some(*n),
            _ => None,
        };
        let name = known(&planned.name);
        let body = VmCreate {
            tenant: None,
            name: name.clone(),
            platform: known(&planned.platform),
            node: known(&planned.node),
            vcpus: number(&planned.vcpus)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(1),
            memory_mib: number(&planned.memory_mib).unwrap_or(0),
            disk_mib: number(&planned.disk_mib),
            swap_mib: number(&planned.swap_mib),
            max_vcpus: number(&planned.max_vcpus).and_then(|n| u32::try_from(n).ok()),
            max_memory_mib: number(&planned.max_memory_mib),
            appliance: known(&planned.appliance),
            qos_policy: planned.qos_policy.as_ref_option().cloned(),
            power_state: planned
                .power_state
                .as_ref_option()
                .and_then(|p| VmPowerState::parse(p))
                .unwrap_or(VmPowerState::Running),
            backend: planned
                .backend
                .as_ref_option()
                .and_then(|b| VmBackend::parse(b)),
            request_id: request.request_id(),
        };
        let vm = request.send(diags, || client.create_vm(&body)).await?;
        let mut state = planned;
        let timeout = VmTimeouts::get(&state.timeouts().create);
        // From here on the VM exists: always return a state (Terraform taints
        // it if the wait fails) so nothing is orphaned on the controller.
        match self
            .wait_converged(
                diags,
                client,
                &vm.id,
                &name,
                timeout,
                Operation::Create(KIND),
            )
            .await
        {
            Some(ready) => state.refresh_from(&ready),
            None => state.refresh_from(&vm),
        }
        Some(state)
    }

    async fn update(
        &self,
        diags: &mut Diagnostics,
        prior: &VmState,
        planned: VmState,
    ) -> Option<VmState> {
        let client = self.shared.client(diags)?;
        let id = known(&prior.id);
        let number = |v: &Value<Number>| match v {
            Value::Value(Number::Unsigned(n)) => Some(*n),
            _ => None,
        };
        let patch = VmPatch {
            vcpus: number(&planned.vcpus).and_then(|n| u32::try_from(n).ok()),
            memory_mib: number(&planned.memory_mib),
            max_vcpus: number(&planned.max_vcpus).and_then(|n| u32::try_from(n).ok()),
            max_memory_mib: number(&planned.max_memory_mib),
            qos_policy: Some(planned.qos_policy.as_ref_option().cloned()),
            power_state: planned
                .power_state
                .as_ref_option()
                .and_then(|p| VmPowerState::parse(p)),
            ..Default::default()
        };
        if let Err(err) = client.update_vm(&id, &patch).await {
            diagnostics::client_error(diags, &err, Operation::Update(KIND));
            return None;
        }
        let name = known(&planned.name);
        let timeout = VmTimeouts::get(&planned.timeouts().update);
        // The change is stored either way; the wait only reports whether the
        // node agent applied it. Volatile fields keep their planned values.
        self.wait_converged(diags, &client, &id, &name, timeout, Operation::Update(KIND))
            .await;
        Some(planned)
    }

    fn id(state: &VmState) -> &Value<String> {
        &state.id
    }

    async fn get(client: &Client, id: &str) -> Result<Vm, ClientError> {
        client.get_vm(id).await
    }

    /// Marks the VM deleting; the node agent tears it down.
    async fn delete(client: &Client, id: &str) -> Result<(), ClientError> {
        client.delete_vm(id, false).await.map(drop)
    }

    async fn refresh(&self, _client: &Client, state: &mut VmState, vm: &Vm) {
        state.refresh_from(vm);
    }

    /// `PLATFORM/NAME` (what a user knows) or the controller id.
    async fn find(client: &Client, id: &str) -> Result<Vm, ClientError> {
        let Some((platform, name)) = id.split_once('/') else {
            return client.get_vm(id).await;
        };
        client
            .list_vms(&list_query(Some(platform), None))
            .await?
            .into_iter()
            .find(|vm| vm.name == name)
            .ok_or_else(|| ClientError::Api {
                status: 404,
                code: "not_found".into(),
                message: format!("no VM {name:?} in platform {platform:?}"),
                field: None,
            })
    }

    fn import_base(_vm: &Vm) -> VmState {
        VmState {
            timeouts: Value::Value(VmTimeouts::default()),
            ..Default::default()
        }
    }

    fn import_not_found(id: &str) -> String {
        format!("The controller has no VM {id:?}.\n\nWhat to do: import by `PLATFORM/NAME` or by the VM's id (`GET /v1/vms`).")
    }

    /// The agent tears the VM down after the DELETE: wait until it is gone.
    fn delete_wait(state: &VmState) -> Option<DeleteWait> {
        Some(DeleteWait {
            name: known(&state.name),
            timeout: VmTimeouts::get(&state.timeouts().delete),
        })
    }

    fn describe(vm: &Vm) -> String {
        describe(vm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    type VmResource = crate::resources::adapter::Adapter<Vms>;
    use measurelab_api::http::Condition;
    use tf_provider::value::ValueEmpty;
    use tf_provider::Resource;

    fn vm(power: VmPowerState, actual: &str, ready: &str, generation: u64, observed: u64) -> Vm {
        Vm {
            tenant_id: String::new(),
            id: "v".into(),
            name: "probe".into(),
            platform: "p".into(),
            node: "n1".into(),
            vcpus: 1,
            memory_mib: 64,
            disk_mib: 0,
            swap_mib: 0,
            appliance: "a".into(),
            qos_policy: None,
            power_state: power,
            backend: VmBackend::Namespace,
            address: "10.0.0.2".into(),
            mac: "52:54:00:00:00:01".into(),
            actual_state: actual.into(),
            restart_required: false,
            pending_restart: false,
            max_vcpus: None,
            max_memory_mib: None,
            guest_last_heartbeat: None,
            guest_agent_version: None,
            conditions: vec![Condition {
                condition_type: "Ready".into(),
                status: ready.into(),
                reason: "R".into(),
                message: "m".into(),
            }],
            generation,
            observed_generation: observed,
            created_at: String::new(),
        }
    }

    #[test]
    fn running_vm_converges_on_ready_for_the_current_generation() {
        assert_eq!(
            converged(&vm(VmPowerState::Running, "running", "True", 2, 2)),
            Ok(true)
        );
        assert_eq!(
            converged(&vm(VmPowerState::Running, "running", "True", 3, 2)),
            Ok(false)
        );
        assert_eq!(
            converged(&vm(VmPowerState::Running, "pending", "False", 1, 1)),
            Ok(false)
        );
        assert!(converged(&vm(VmPowerState::Running, "failed", "False", 1, 1)).is_err());
        assert_eq!(
            converged(&vm(VmPowerState::Stopped, "stopped", "False", 1, 1)),
            Ok(true)
        );
    }

    /// A controller stand-in on loopback that serves two nodes and the
    /// appliances, counting requests per route.
    mod fake_controller {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;

        use axum::routing::get;
        use axum::{Json, Router};
        use measurelab_api::http::{
            Appliance, ApplianceList, Capabilities, Node, NodeList, NodeStatus, Resources,
        };

        #[derive(Default)]
        pub struct Counts {
            pub node_list: AtomicUsize,
            pub node_get: AtomicUsize,
            pub appliances: AtomicUsize,
        }

        impl Counts {
            pub fn get(counter: &AtomicUsize) -> usize {
                counter.load(Ordering::SeqCst)
            }
        }

        fn node(name: &str, namespace: bool, libvirt: bool) -> Node {
            Node {
                id: format!("id-{name}"),
                name: name.into(),
                status: NodeStatus::Online,
                last_heartbeat: None,
                registered_at: String::new(),
                agent_version: String::new(),
                management_address: String::new(),
                capabilities: Capabilities {
                    namespace_backend: namespace,
                    libvirt_uris: if libvirt {
                        vec!["qemu:///system".into()]
                    } else {
                        vec![]
                    },
                    ..Default::default()
                },
                resources: Resources::default(),
                labels: Default::default(),
                flow_export: None,
                cpu_overcommit: 16.0,
                memory_overcommit: 1.0,
                reported_labels: Default::default(),
            }
        }

        /// Serve on an ephemeral port; returns the base URL and the counts.
        pub async fn start() -> (String, Arc<Counts>) {
            let counts = Arc::new(Counts::default());
            let (list, one, apps) = (counts.clone(), counts.clone(), counts.clone());
            let app = Router::new()
                .route(
                    "/v1/nodes",
                    get(move || async move {
                        list.node_list.fetch_add(1, Ordering::SeqCst);
                        // Slow enough that concurrent first callers overlap.
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        Json(NodeList {
                            nodes: vec![node("ns", true, false), node("kvm", false, true)],
                            next_cursor: None,
                        })
                    }),
                )
                .route(
                    "/v1/nodes/:name",
                    get(move || async move {
                        one.node_get.fetch_add(1, Ordering::SeqCst);
                        Json(node("ns", true, false))
                    }),
                )
                .route(
                    "/v1/appliances",
                    get(move || async move {
                        apps.appliances.fetch_add(1, Ordering::SeqCst);
                        Json(ApplianceList {
                            appliances: vec![Appliance {
                                id: "a1".into(),
                                name: "debian".into(),
                                version: "12".into(),
                                arch: "x86_64".into(),
                                os: "linux".into(),
                                kernel: "/k".into(),
                                initrd: "/i".into(),
                                disk: None,
                                min_memory_mib: 64,
                                backends: vec!["libvirt".into()],
                                builtin: false,
                                kernel_sha256: None,
                                initrd_sha256: None,
                                disk_sha256: None,
                            }],
                            next_cursor: None,
                        })
                    }),
                );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, app).await });
            (url, counts)
        }
    }

    fn planned(node: &str, appliance: &str, backend: Option<&str>) -> VmState {
        VmState {
            name: Value::Value("g".into()),
            platform: Value::Value("p".into()),
            node: Value::Value(node.into()),
            appliance: Value::Value(appliance.into()),
            backend: backend.map_or(Value::Null, |b| Value::Value(b.into())),
            vcpus: Value::Value(Number::Unsigned(1)),
            memory_mib: Value::Value(Number::Unsigned(64)),
            ..Default::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_plan_of_many_vms_fetches_the_node_list_once() {
        let (url, counts) = fake_controller::start().await;
        let shared = Shared::new(tokio_util::sync::CancellationToken::new());
        shared.set_client(Client::new(&url, "token", None).unwrap());
        let resource = std::sync::Arc::new(VmResource::new(shared));
        let mut plans = tokio::task::JoinSet::new();
        for i in 0..40 {
            let resource = resource.clone();
            plans.spawn(async move {
                // Even: a node with the backend; odd: one without it.
                let node = if i % 2 == 0 { "ns" } else { "kvm" };
                let mut diags = Diagnostics::default();
                resource
                    .plan_create(
                        &mut diags,
                        planned(node, "namespace", Some("namespace")),
                        planned(node, "namespace", Some("namespace")),
                        ValueEmpty::default(),
                    )
                    .await
                    .unwrap();
                (i, diags)
            });
        }
        while let Some(joined) = plans.join_next().await {
            let (i, diags) = joined.unwrap();
            let paths: Vec<_> = diags.errors.iter().map(|d| d.attribute.clone()).collect();
            if i % 2 == 0 {
                assert!(paths.is_empty(), "plan {i}: {paths:?}");
            } else {
                // The check still runs against the cached list.
                assert_eq!(paths, vec![AttributePath::new("backend")], "plan {i}");
            }
        }
        // Without a backend the appliance list decides, also fetched once.
        for _ in 0..5 {
            let mut diags = Diagnostics::default();
            resource
                .plan_create(
                    &mut diags,
                    planned("ns", "debian", None),
                    planned("ns", "debian", None),
                    ValueEmpty::default(),
                )
                .await
                .unwrap();
            let paths: Vec<_> = diags.errors.iter().map(|d| d.attribute.clone()).collect();
            assert_eq!(paths, vec![AttributePath::new("node")]);
        }
        use fake_controller::Counts;
        assert_eq!(Counts::get(&counts.node_list), 1, "GET /v1/nodes calls");
        assert_eq!(Counts::get(&counts.node_get), 0, "GET /v1/nodes/NAME calls");
        assert_eq!(
            Counts::get(&counts.appliances),
            1,
            "GET /v1/appliances calls"
        );
    }

    #[tokio::test]
    async fn a_reconfigured_provider_fetches_the_lists_again() {
        let (url, counts) = fake_controller::start().await;
        let shared = Shared::new(tokio_util::sync::CancellationToken::new());
        let resource = Vms::new(shared.clone());
        for _ in 0..2 {
            shared.set_client(Client::new(&url, "token", None).unwrap());
            for _ in 0..3 {
                let mut diags = Diagnostics::default();
                resource
                    .check_placement(&mut diags, &planned("ns", "namespace", Some("namespace")))
                    .await;
            }
        }
        assert_eq!(fake_controller::Counts::get(&counts.node_list), 2);
    }

    #[tokio::test]
    async fn size_and_maximum_changes_plan_in_place() {
        let resource = Vms::new(Shared::new(tokio_util::sync::CancellationToken::new()));
        let prior = VmState {
            id: Value::Value("v".into()),
            pending_restart: Value::Value(false),
            ..planned("ns", "namespace", Some("namespace"))
        };
        let proposed = VmState {
            vcpus: Value::Value(Number::Unsigned(2)),
            memory_mib: Value::Value(Number::Unsigned(128)),
            max_vcpus: Value::Value(Number::Unsigned(4)),
            max_memory_mib: Value::Value(Number::Unsigned(256)),
            ..prior.clone()
        };
        let mut diags = Diagnostics::default();
        let (state, replace) = resource.plan_update(&mut diags, &prior, proposed).await;
        assert!(diags.errors.is_empty(), "{:?}", diags.errors);
        assert!(replace.is_empty(), "replaces for {replace:?}");
        assert_eq!(state.id, prior.id, "an in-place change keeps the VM");
    }

    #[test]
    fn the_guest_agent_version_is_computed_and_refreshed_null_until_a_hello() {
        let schema = Vms::new(Shared::new(tokio_util::sync::CancellationToken::new())).schema();
        let attribute = &schema.block.attributes["guest_agent_version"];
        assert_eq!(attribute.constraint, AttributeConstraint::Computed);
        assert_eq!(attribute.attr_type, AttributeType::String);

        let mut reported = vm(VmPowerState::Running, "running", "True", 1, 1);
        let mut state = VmState::default();
        state.refresh_from(&reported);
        assert_eq!(state.guest_agent_version, Value::Null);
        reported.guest_agent_version = Some("0.3.9".into());
        state.refresh_from(&reported);
        assert_eq!(state.guest_agent_version, Value::Value("0.3.9".into()));
        state.mark_computed_unknown();
        assert_eq!(state.guest_agent_version, Value::Unknown);
    }

    #[test]
    fn bad_sizes_point_at_their_attributes() {
        let mut diags = Diagnostics::default();
        let state = VmState {
            vcpus: Value::Value(Number::Unsigned(0)),
            memory_mib: Value::Value(Number::Float(1.5)),
            backend: Value::Value("xen".into()),
            ..Default::default()
        };
        state.validate(&mut diags);
        let paths: Vec<_> = diags.errors.iter().map(|d| d.attribute.clone()).collect();
        assert_eq!(
            paths,
            vec![
                AttributePath::new("vcpus"),
                AttributePath::new("memory_mib"),
                AttributePath::new("backend")
            ]
        );
    }
}
