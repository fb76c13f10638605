//! The reconcile logic against an in-memory hypervisor, an in-memory switch
//! and a hand-written desired state: checks the list of actions each pass
//! takes (create, idempotent second pass, drift repair, orphan removal,
//! permanent error condition, delete ack). No root needed.
//!
//! Tests that wait for backoff or the loop's periods run in paused time: the
//! clock jumps to the next timer whenever the runtime is idle.

mod reconcile_common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use measurelab_agent::guest_channel::GuestChannels;
use measurelab_agent::hypervisor::{
    BackendKind, DefineOutcome, ErrorClass, GuestInfo, GuestSpec, GuestState, Hypervisor,
    HypervisorError, ResizeOutcome,
};
use measurelab_agent::ovs::{
    KernelFeature, ObservedBridge, ObservedPort, ObservedQos, ObservedSwitch, OvsError, PortRole,
    Switch, SwitchAction, SwitchCapabilities,
};
use measurelab_agent::reconcile::{
    Action, Backends, DesiredState, DesiredVm, Reconciler, ReconcilerConfig, VmStatus,
};
use measurelab_api::node_v1::DesiredAppliance;
use reconcile_common::spooled_files;
use uuid::Uuid;

const OWNER: &str = "n1";

/// Guests in a map; every call is recorded as `op:<short id>`.
#[derive(Default)]
struct FakeHypervisor {
    guests: Mutex<BTreeMap<Uuid, (GuestSpec, GuestState)>>,
    calls: Mutex<Vec<String>>,
    /// `define` of this VM fails with a Transient error this many times.
    flaky_define: Mutex<BTreeMap<Uuid, u32>>,
    /// `list_owned` calls: every pass starts with one.
    lists: Mutex<u32>,
}

fn short(id: Uuid) -> String {
    id.simple().to_string()[..8].to_string()
}

impl FakeHypervisor {
    fn record(&self, op: &str, id: Uuid) {
        self.calls
            .lock()
            .unwrap()
            .push(format!("{op}:{}", short(id)));
    }
    fn take_calls(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
    fn set_state(&self, id: Uuid, state: GuestState) -> Result<(), HypervisorError> {
        let mut guests = self.guests.lock().unwrap();
        let guest = guests
            .get_mut(&id)
            .ok_or(HypervisorError::NotFound { id })?;
        guest.1 = state;
        Ok(())
    }
    fn info_of(spec: &GuestSpec, state: GuestState) -> GuestInfo {
        GuestInfo {
            id: spec.id,
            name: spec.name.clone(),
            platform_id: spec.platform_id,
            spec_hash: spec.spec_hash(),
            state,
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            restart_pending: false,
        }
    }
}

impl Hypervisor for FakeHypervisor {
    fn kind(&self) -> BackendKind {
        BackendKind::Namespace
    }
    fn define(&self, spec: &GuestSpec) -> Result<DefineOutcome, HypervisorError> {
        self.record("define", spec.id);
        if let Some(left) = self.flaky_define.lock().unwrap().get_mut(&spec.id) {
            if *left > 0 {
                *left -= 1;
                return Err(HypervisorError::Command {
                    command: "ip netns add".into(),
                    detail: "device busy".into(),
                    class: ErrorClass::Transient,
                });
            }
        }
        let mut guests = self.guests.lock().unwrap();
        match guests.get_mut(&spec.id) {
            None => {
                guests.insert(spec.id, (spec.clone(), GuestState::Stopped));
                Ok(DefineOutcome::Created)
            }
            Some((old, _)) if old == spec => Ok(DefineOutcome::Unchanged),
            Some((old, state)) => {
                *old = spec.clone();
                Ok(DefineOutcome::Updated {
                    restart_required: *state == GuestState::Running,
                })
            }
        }
    }
    fn start(&self, id: Uuid) -> Result<(), HypervisorError> {
        self.record("start", id);
        self.set_state(id, GuestState::Running)
    }
    fn pause(&self, id: Uuid) -> Result<(), HypervisorError> {
        self.record("pause", id);
        self.set_state(id, GuestState::Paused)
    }
    fn resume(&self, id: Uuid) -> Result<(), HypervisorError> {
        self.record("resume", id);
        self.set_state(id, GuestState::Running)
    }
    fn stop(&self, id: Uuid) -> Result<(), HypervisorError> {
        self.record("stop", id);
        self.set_state(id, GuestState::Stopped)
    }
    fn undefine(&self, id: Uuid) -> Result<(), HypervisorError> {
        self.record("undefine", id);
        self.guests.lock().unwrap().remove(&id);
        Ok(())
    }
    fn info(&self, id: Uuid) -> Result<Option<GuestInfo>, HypervisorError> {
        Ok(self
            .guests
            .lock()
            .unwrap()
            .get(&id)
            .map(|(spec, state)| Self::info_of(spec, *state)))
    }
    fn list_owned(&self) -> Result<Vec<GuestInfo>, HypervisorError> {
        *self.lists.lock().unwrap() += 1;
        Ok(self
            .guests
            .lock()
            .unwrap()
            .values()
            .map(|(spec, state)| Self::info_of(spec, *state))
            .collect())
    }
    fn set_vcpus(&self, _id: Uuid, _vcpus: u32) -> Result<ResizeOutcome, HypervisorError> {
        Ok(ResizeOutcome::Applied)
    }
    fn set_memory(&self, _id: Uuid, _memory_mib: u64) -> Result<ResizeOutcome, HypervisorError> {
        Ok(ResizeOutcome::Applied)
    }
}

/// An OVSDB stand-in: applies actions to an [`ObservedSwitch`].
struct FakeSwitch {
    state: Mutex<ObservedSwitch>,
    next_uuid: Mutex<u32>,
}

impl FakeSwitch {
    fn new() -> Self {
        FakeSwitch {
            state: Mutex::new(ObservedSwitch::default()),
            next_uuid: Mutex::new(1),
        }
    }
    fn uuid(&self) -> String {
        let mut next = self.next_uuid.lock().unwrap();
        *next += 1;
        format!("uuid-{next}")
    }
    fn port_tags(&self) -> BTreeMap<String, Option<u16>> {
        self.state
            .lock()
            .unwrap()
            .ports
            .iter()
            .map(|p| (p.name.clone(), p.tag))
            .collect()
    }
    fn remove_port_by_hand(&self, name: &str) {
        self.state.lock().unwrap().ports.retain(|p| p.name != name);
    }
    fn add_foreign_port(&self, name: &str) {
        self.state.lock().unwrap().foreign_names.push(name.into());
    }
}

#[async_trait]
impl Switch for FakeSwitch {
    async fn capabilities(&self) -> Result<SwitchCapabilities, OvsError> {
        Ok(SwitchCapabilities {
            ovs_version: Some("3.1.0".into()),
            datapath_types: vec!["netdev".into()],
            iface_types: vec![],
            linux_htb: KernelFeature::Available,
            ingress_policing: KernelFeature::Missing("no act_police".into()),
            kernel_datapath: KernelFeature::Missing("no module".into()),
        })
    }
    async fn observe(&self, _owner: &str, _bridge: &str) -> Result<ObservedSwitch, OvsError> {
        Ok(self.state.lock().unwrap().clone())
    }
    async fn apply(
        &self,
        _owner: &str,
        _bridge: &str,
        _observed: &ObservedSwitch,
        actions: &[SwitchAction],
    ) -> Result<(), OvsError> {
        for action in actions {
            let uuid = self.uuid();
            let mut state = self.state.lock().unwrap();
            match action {
                SwitchAction::CreateBridge(datapath) => {
                    state.bridge = Some(ObservedBridge {
                        uuid,
                        owned: true,
                        port_uuids: vec![],
                        datapath_type: datapath.as_str().into(),
                    })
                }
                SwitchAction::SetBridgeDatapath(datapath) => {
                    if let Some(bridge) = state.bridge.as_mut() {
                        bridge.datapath_type = datapath.as_str().into();
                    }
                }
                SwitchAction::AddVmPort(port) => state.ports.push(ObservedPort {
                    uuid,
                    name: port.name.clone(),
                    owned: true,
                    role: Some(PortRole::Vm),
                    tag: Some(port.vlan),
                    interfaces: vec![port.name.clone()],
                    bond_mode: None,
                    lacp: None,
                    qos: port.qos.map(|q| ObservedQos {
                        uuid: "qos".into(),
                        owned: true,
                        spec: Some(q),
                        queue_uuids: vec![],
                    }),
                    policing: port.ingress_policing,
                    tunnel: None,
                }),
                SwitchAction::AddUplink(uplink) => state.ports.push(ObservedPort {
                    uuid,
                    name: uplink.name.clone(),
                    owned: true,
                    role: Some(PortRole::Uplink),
                    tag: None,
                    interfaces: uplink.members.clone(),
                    bond_mode: None,
                    lacp: None,
                    qos: None,
                    policing: None,
                    tunnel: None,
                }),
                SwitchAction::RemovePort { port } => state.ports.retain(|p| &p.name != port),
                SwitchAction::SetPortTag { port, vlan } => {
                    for p in state.ports.iter_mut().filter(|p| &p.name == port) {
                        p.tag = Some(*vlan);
                    }
                }
                other => panic!("fake switch does not model {other:?}"),
            }
        }
        Ok(())
    }
}

struct Rig {
    hv: Arc<FakeHypervisor>,
    switch: Arc<FakeSwitch>,
    reconciler: Reconciler,
    _dir: tempfile::TempDir,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let hv = Arc::new(FakeHypervisor::default());
    let switch = Arc::new(FakeSwitch::new());
    let mut config = ReconcilerConfig::new(dir.path(), OWNER);
    config.uplink = Some("uplink0".into());
    let (events, _rx) = tokio::sync::mpsc::channel(16);
    let reconciler = Reconciler::new(
        config,
        Backends {
            namespace: Some(hv.clone() as Arc<dyn Hypervisor>),
            libvirt: None,
        },
        Some(switch.clone() as Arc<dyn Switch>),
        GuestChannels::new(),
        events,
    );
    Rig {
        hv,
        switch,
        reconciler,
        _dir: dir,
    }
}

fn vm(n: u8, vlan: u32) -> DesiredVm {
    let id = Uuid::from_bytes([n, 0xaa, 0, 0, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, n]);
    DesiredVm {
        id: id.to_string(),
        name: format!("vm{n}"),
        platform_id: "0a0b0c0d-0e0f-4011-8213-141516171819".into(),
        vlan_tag: vlan,
        backend: "namespace".into(),
        vcpus: 1,
        memory_mib: 64,
        appliance: Some(DesiredAppliance {
            name: "namespace".into(),
            ..Default::default()
        }),
        mac: format!("52:54:00:00:00:{n:02x}"),
        ipv4_cidr: format!("10.201.0.{}/24", 10 + n),
        power_state: "running".into(),
        port_name: format!("ml-{}", short(id)),
        generation: 1,
        ..Default::default()
    }
}

fn id_of(vm: &DesiredVm) -> Uuid {
    Uuid::parse_str(&vm.id).unwrap()
}

fn desired(generation: u64, vms: Vec<DesiredVm>) -> DesiredState {
    DesiredState {
        generation,
        vms,
        ..Default::default()
    }
}

fn condition<'a>(status: &'a VmStatus, kind: &str) -> &'a measurelab_api::node_v1::Condition {
    status
        .conditions
        .iter()
        .find(|c| c.r#type == kind)
        .unwrap_or_else(|| panic!("no {kind} condition in {status:?}"))
}

fn status_of<'a>(statuses: &'a [VmStatus], vm: &DesiredVm) -> &'a VmStatus {
    statuses.iter().find(|s| s.vm_id == vm.id).unwrap()
}

#[tokio::test]
async fn creates_then_second_pass_does_nothing() {
    let mut rig = rig();
    let (a, b) = (vm(1, 101), vm(2, 102));
    let state = desired(1, vec![a.clone(), b.clone()]);

    let first = rig.reconciler.pass(&state).await;
    let mut calls = rig.hv.take_calls();
    calls.sort();
    assert_eq!(
        calls,
        vec![
            format!("define:{}", short(id_of(&a))),
            format!("define:{}", short(id_of(&b))),
            format!("start:{}", short(id_of(&a))),
            format!("start:{}", short(id_of(&b))),
        ]
    );
    for v in [&a, &b] {
        let id = id_of(v);
        assert!(first.actions.contains(&Action::Define { vm: id }));
        assert!(first.actions.contains(&Action::Start { vm: id }));
        assert!(first.actions.contains(&Action::OpenChannel { vm: id }));
        let define_at = first
            .actions
            .iter()
            .position(|x| *x == Action::Define { vm: id });
        let start_at = first
            .actions
            .iter()
            .position(|x| *x == Action::Start { vm: id });
        assert!(
            define_at < start_at,
            "define before start: {:?}",
            first.actions
        );
    }
    let switch_actions: Vec<&SwitchAction> = first
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Switch(s) => Some(s),
            _ => None,
        })
        .collect();
    assert!(matches!(switch_actions[0], SwitchAction::CreateBridge(_)));
    assert!(switch_actions
        .iter()
        .any(|s| matches!(s, SwitchAction::AddUplink(u) if u.name == "uplink0")));
    assert_eq!(
        rig.switch.port_tags(),
        BTreeMap::from([
            (a.port_name.clone(), Some(101)),
            (b.port_name.clone(), Some(102)),
            ("uplink0".to_string(), None),
        ])
    );
    assert!(first.converged);
    assert_eq!(first.changed.len(), 2);
    let sa = status_of(&first.statuses, &a);
    assert_eq!(sa.actual_state, "running");
    assert_eq!(sa.address, "10.201.0.11");
    assert_eq!(condition(sa, "PortAttached").status, "True");
    // No guest agent in this test: running, attached, but not registered.
    assert_eq!(condition(sa, "GuestRegistered").status, "False");
    assert_eq!(
        condition(sa, "GuestRegistered").reason,
        "WaitingForGuestAgent"
    );
    assert_eq!(condition(sa, "Ready").reason, "GuestNotRegistered");
    rig.reconciler.mark_reported(&first.changed);

    let second = rig.reconciler.pass(&state).await;
    assert_eq!(second.actions, vec![], "second pass must change nothing");
    assert_eq!(rig.hv.take_calls(), Vec::<String>::new());
    assert!(
        second.changed.is_empty(),
        "unchanged statuses are not re-sent"
    );
    assert!(second.converged);
}

#[tokio::test]
async fn repairs_a_port_removed_by_hand_and_a_stopped_guest() {
    let mut rig = rig();
    let a = vm(1, 101);
    let state = desired(1, vec![a.clone()]);
    let first = rig.reconciler.pass(&state).await;
    rig.reconciler.mark_reported(&first.changed);
    rig.hv.take_calls();

    rig.switch.remove_port_by_hand(&a.port_name);
    rig.hv.set_state(id_of(&a), GuestState::Stopped).unwrap();
    let repair = rig.reconciler.pass(&state).await;
    assert_eq!(
        rig.hv.take_calls(),
        vec![format!("start:{}", short(id_of(&a)))]
    );
    let switch_actions: Vec<&Action> = repair
        .actions
        .iter()
        .filter(|x| matches!(x, Action::Switch(_)))
        .collect();
    assert_eq!(switch_actions.len(), 1, "{:?}", repair.actions);
    assert!(
        matches!(switch_actions[0], Action::Switch(SwitchAction::AddVmPort(p)) if p.name == a.port_name && p.vlan == 101)
    );
    assert_eq!(rig.switch.port_tags()[&a.port_name], Some(101));
}

#[tokio::test]
async fn removes_orphans_we_own_and_keeps_the_rest() {
    let mut rig = rig();
    let (a, b) = (vm(1, 101), vm(2, 101));
    rig.reconciler
        .pass(&desired(1, vec![a.clone(), b.clone()]))
        .await;
    rig.hv.take_calls();

    // The controller forgot b (e.g. force-deleted while the agent was down).
    let pass = rig.reconciler.pass(&desired(2, vec![a.clone()])).await;
    assert_eq!(
        rig.hv.take_calls(),
        vec![format!("undefine:{}", short(id_of(&b)))]
    );
    assert!(pass.actions.contains(&Action::Undefine { vm: id_of(&b) }));
    assert!(pass
        .actions
        .contains(&Action::Switch(SwitchAction::RemovePort {
            port: b.port_name.clone()
        })));
    assert!(!rig.switch.port_tags().contains_key(&b.port_name));
    assert!(rig.switch.port_tags().contains_key(&a.port_name));
    assert_eq!(pass.statuses.len(), 1);
}

#[tokio::test]
async fn permanent_error_sets_condition_and_waits_for_a_new_spec() {
    let mut rig = rig();
    let mut bad = vm(1, 101);
    bad.mac = "01:00:5e:00:00:01".into(); // multicast: no NIC can have it
    let good = vm(2, 102);
    let pass = rig
        .reconciler
        .pass(&desired(1, vec![bad.clone(), good.clone()]))
        .await;
    let status = status_of(&pass.statuses, &bad);
    let ready = condition(status, "Ready");
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason, "InvalidSpec");
    assert!(ready.message.contains("mac"), "{}", ready.message);
    assert_eq!(status.actual_state, "failed");
    assert!(
        pass.converged,
        "a permanent error is not something to retry"
    );
    assert_eq!(pass.next_retry, None);
    // The good VM is not held back by the bad one.
    assert_eq!(status_of(&pass.statuses, &good).actual_state, "running");
    rig.hv.take_calls();

    let again = rig
        .reconciler
        .pass(&desired(1, vec![bad.clone(), good.clone()]))
        .await;
    assert_eq!(again.actions, vec![]);
    assert_eq!(rig.hv.take_calls(), Vec::<String>::new());

    // The controller fixes the spec: the VM is created.
    let mut fixed = bad.clone();
    fixed.mac = "52:54:00:00:00:01".into();
    fixed.generation = 2;
    let after = rig
        .reconciler
        .pass(&desired(2, vec![fixed.clone(), good]))
        .await;
    assert!(after
        .actions
        .contains(&Action::Define { vm: id_of(&fixed) }));
    assert_eq!(status_of(&after.statuses, &fixed).actual_state, "running");
}

#[tokio::test]
async fn port_name_taken_by_a_foreign_port_is_permanent_for_that_vm_only() {
    let mut rig = rig();
    let (a, b) = (vm(1, 101), vm(2, 101));
    rig.switch.add_foreign_port(&a.port_name);
    let pass = rig
        .reconciler
        .pass(&desired(1, vec![a.clone(), b.clone()]))
        .await;
    let port = condition(status_of(&pass.statuses, &a), "PortAttached");
    assert_eq!(
        (port.status.as_str(), port.reason.as_str()),
        ("False", "PortNameConflict")
    );
    assert_eq!(
        condition(status_of(&pass.statuses, &b), "PortAttached").status,
        "True"
    );
}

#[tokio::test(start_paused = true)]
async fn transient_error_requeues_with_backoff() {
    let mut rig = rig();
    let a = vm(1, 101);
    rig.hv.flaky_define.lock().unwrap().insert(id_of(&a), 1);
    let state = desired(1, vec![a.clone()]);
    let first = rig.reconciler.pass(&state).await;
    assert!(!first.converged);
    let retry = first
        .next_retry
        .expect("a transient error requeues the key");
    assert!(retry <= std::time::Duration::from_secs(1), "{retry:?}");
    let ready = condition(status_of(&first.statuses, &a), "Ready");
    assert_eq!(ready.reason, "CommandFailed");
    assert_eq!(status_of(&first.statuses, &a).actual_state, "pending");
    rig.hv.take_calls();

    // Before the backoff expires the key is left alone.
    let early = rig.reconciler.pass(&state).await;
    assert_eq!(rig.hv.take_calls(), Vec::<String>::new());
    assert!(!early.converged);

    tokio::time::advance(retry).await;
    let later = rig.reconciler.pass(&state).await;
    assert!(later.converged);
    assert!(later.actions.contains(&Action::Start { vm: id_of(&a) }));
}

#[tokio::test]
async fn power_states_pause_resume_stop() {
    let mut rig = rig();
    let mut a = vm(1, 101);
    rig.reconciler.pass(&desired(1, vec![a.clone()])).await;
    rig.hv.take_calls();
    let id = short(id_of(&a));

    a.power_state = "paused".into();
    let paused = rig.reconciler.pass(&desired(2, vec![a.clone()])).await;
    assert_eq!(rig.hv.take_calls(), vec![format!("pause:{id}")]);
    assert_eq!(status_of(&paused.statuses, &a).actual_state, "paused");

    a.power_state = "running".into();
    rig.reconciler.pass(&desired(3, vec![a.clone()])).await;
    assert_eq!(rig.hv.take_calls(), vec![format!("resume:{id}")]);

    a.power_state = "stopped".into();
    let stopped = rig.reconciler.pass(&desired(4, vec![a.clone()])).await;
    assert_eq!(rig.hv.take_calls(), vec![format!("stop:{id}")]);
    let status = status_of(&stopped.statuses, &a);
    assert_eq!(status.actual_state, "stopped");
    assert_eq!(condition(status, "Ready").status, "True");
}

#[tokio::test]
async fn deleting_vm_is_cleaned_up_then_acked_once() {
    let mut rig = rig();
    let mut a = vm(1, 101);
    let first = rig.reconciler.pass(&desired(1, vec![a.clone()])).await;
    rig.reconciler.mark_reported(&first.changed);
    rig.hv.take_calls();

    a.deleting = true;
    a.generation = 2;
    let state = desired(2, vec![a.clone()]);
    let pass = rig.reconciler.pass(&state).await;
    assert_eq!(
        rig.hv.take_calls(),
        vec![format!("undefine:{}", short(id_of(&a)))]
    );
    assert!(pass
        .actions
        .contains(&Action::CloseChannel { vm: id_of(&a) }));
    assert!(!rig.switch.port_tags().contains_key(&a.port_name));
    let status = status_of(&pass.statuses, &a);
    assert!(status.deleted, "cleanup done must be acked: {status:?}");
    assert_eq!(status.actual_state, "deleting");
    assert_eq!(pass.changed.len(), 1);
    rig.reconciler.mark_reported(&pass.changed);

    // Until the controller drops the row, nothing more happens.
    let again = rig.reconciler.pass(&state).await;
    assert_eq!(again.actions, vec![]);
    assert!(again.changed.is_empty());
}

/// The controller as the loop sees it: a desired state to hand out and a
/// record of every call.
#[derive(Default)]
struct FakeControl {
    desired: Mutex<DesiredState>,
    reports: Mutex<Vec<measurelab_api::node_v1::StatusReport>>,
    results: Mutex<Vec<(String, String, String)>>,
    polls: Mutex<Vec<String>>,
    fetches: Mutex<u32>,
    /// "Stopped": every call fails as it does while the controller is
    /// unreachable (the in-process equivalent of SIGSTOP).
    down: AtomicBool,
    /// "Hung": every call waits, unanswered, until the hang is lifted (a
    /// controller stopped with SIGSTOP: the kernel accepts the connection
    /// and nothing answers), then goes on as usual.
    hung: tokio::sync::watch::Sender<bool>,
    /// Calls that found the controller hung.
    hung_calls: AtomicU32,
    /// PostResult calls, answered or not.
    post_attempts: AtomicU32,
    polls_in_flight: AtomicU32,
    max_polls_in_flight: AtomicU32,
    /// What FetchProgram answers instead of the program, when set.
    program_refusal: Mutex<Option<tonic::Status>>,
}

fn unreachable(call: &'static str) -> measurelab_agent::reconcile::ReconcileError {
    measurelab_agent::reconcile::ReconcileError::Controller {
        call,
        status: Box::new(tonic::Status::unavailable("controller stopped")),
    }
}

impl FakeControl {
    async fn wait_while_hung(&self) {
        let mut hung = self.hung.subscribe();
        if *hung.borrow_and_update() {
            self.hung_calls.fetch_add(1, Ordering::SeqCst);
            let _ = hung.wait_for(|hung| !*hung).await;
        }
    }
}

#[async_trait]
impl measurelab_agent::reconcile::ControlPlane for FakeControl {
    async fn desired_state(
        &self,
    ) -> Result<DesiredState, measurelab_agent::reconcile::ReconcileError> {
        self.wait_while_hung().await;
        *self.fetches.lock().unwrap() += 1;
        Ok(self.desired.lock().unwrap().clone())
    }
    async fn report_status(
        &self,
        report: measurelab_api::node_v1::StatusReport,
    ) -> Result<measurelab_api::node_v1::StatusAck, measurelab_agent::reconcile::ReconcileError>
    {
        self.wait_while_hung().await;
        if self.down.load(Ordering::SeqCst) {
            return Err(unreachable("ReportStatus"));
        }
        self.reports.lock().unwrap().push(report);
        Ok(measurelab_api::node_v1::StatusAck {
            desired_generation: self.desired.lock().unwrap().generation,
            ..Default::default()
        })
    }
    async fn fetch_program(
        &self,
        _program_id: &str,
    ) -> Result<measurelab_api::node_v1::ProgramBlob, measurelab_agent::reconcile::ReconcileError>
    {
        self.wait_while_hung().await;
        if let Some(status) = self.program_refusal.lock().unwrap().clone() {
            return Err(measurelab_agent::reconcile::ReconcileError::Controller {
                call: "FetchProgram",
                status: Box::new(status),
            });
        }
        Ok(measurelab_api::node_v1::ProgramBlob {
            // The run carries no checksum here, so none is checked.
            sha256: String::new(),
            content: b"echo hi\n".to_vec(),
            name: "hi.sh".into(),
        })
    }
    async fn post_result(
        &self,
        vm_id: &str,
        task_id: &str,
        document_json: String,
    ) -> Result<String, measurelab_agent::reconcile::ReconcileError> {
        self.post_attempts.fetch_add(1, Ordering::SeqCst);
        self.wait_while_hung().await;
        if self.down.load(Ordering::SeqCst) {
            return Err(unreachable("PostResult"));
        }
        // As the controller answers a result for a task that is not the VM's.
        if task_id.starts_with("other-") {
            return Err(measurelab_agent::reconcile::ReconcileError::Controller {
                call: "PostResult",
                status: Box::new(tonic::Status::invalid_argument(format!(
                    "task_id: task {task_id} does not belong to the VM's platform"
                ))),
            });
        }
        self.results
            .lock()
            .unwrap()
            .push((vm_id.into(), task_id.into(), document_json));
        Ok("r1".into())
    }
    async fn poll_tasks(
        &self,
        vm_id: &str,
    ) -> Result<Vec<String>, measurelab_agent::reconcile::ReconcileError> {
        self.polls.lock().unwrap().push(vm_id.into());
        self.wait_while_hung().await;
        if self.down.load(Ordering::SeqCst) {
            return Err(unreachable("PollTasks"));
        }
        let now = self.polls_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_polls_in_flight.fetch_max(now, Ordering::SeqCst);
        // A controller takes a moment; polls relayed at once would overlap.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        self.polls_in_flight.fetch_sub(1, Ordering::SeqCst);
        Ok(vec![r#"{"id":"t1","name":"probe"}"#.into()])
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The loop end to end against fakes and a fake guest on the real unix
/// channel: registration shows in a status report, result/poll_tasks are
/// relayed, a program run goes out and its status comes back, and the
/// observed generation is published for heartbeats.
#[tokio::test(start_paused = true)]
async fn loop_relays_guest_traffic_and_reports_changes_only() {
    use measurelab_agent::reconcile::{run_loop, LoopHandles};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    let rig = rig();
    let state_dir = rig._dir.path().to_path_buf();
    let a = vm(1, 101);
    let control = Arc::new(FakeControl::default());
    *control.desired.lock().unwrap() = DesiredState {
        generation: 7,
        vms: vec![a.clone()],
        program_runs: vec![measurelab_api::node_v1::ProgramRun {
            deployment_id: "d1".into(),
            vm_id: a.id.clone(),
            program_id: "p1".into(),
            sha256: String::new(),
            args: vec!["x".into()],
            env: Default::default(),
            program_name: "hi.sh".into(),
        }],
        ..Default::default()
    };
    // The loop needs the receiving end of the reconciler's event channel.
    let (events_tx, events_rx) = tokio::sync::mpsc::channel(64);
    let mut config = ReconcilerConfig::new(&state_dir, OWNER);
    config.uplink = None;
    let reconciler = Reconciler::new(
        config,
        Backends {
            namespace: Some(rig.hv.clone() as Arc<dyn Hypervisor>),
            libvirt: None,
        },
        Some(rig.switch.clone() as Arc<dyn Switch>),
        GuestChannels::new(),
        events_tx,
    );
    let (desired_tx, desired_rx) = tokio::sync::watch::channel(7u64);
    let (observed_tx, mut observed_rx) = tokio::sync::watch::channel(0u64);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(run_loop(
        reconciler,
        events_rx,
        control.clone(),
        state_dir.clone(),
        LoopHandles {
            desired_generation: desired_rx,
            observed_generation: observed_tx,
            shutdown: stop_rx,
        },
    ));

    observed_rx.wait_for(|g| *g == 7).await.unwrap();
    let socket = measurelab_agent::guest_channel::channel_socket_path(&state_dir, id_of(&a));
    eventually("channel socket", || socket.exists()).await;
    // First report: running, waiting for the guest agent.
    eventually("first status report", || {
        control
            .reports
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.vms.iter().any(|v| v.actual_state == "running"))
    })
    .await;
    assert!(
        control
            .reports
            .lock()
            .unwrap()
            .iter()
            .all(|r| r.vms.iter().all(|v| v.guest_agent_version.is_empty())),
        "a guest agent version before any hello"
    );

    let stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let hello = format!(
        "{{\"type\":\"hello\",\"vm_id\":\"{}\",\"agent_version\":\"test\"}}\n",
        a.id
    );
    write.write_all(hello.as_bytes()).await.unwrap();
    eventually("GuestRegistered=True reported", || {
        control.reports.lock().unwrap().iter().any(|r| {
            r.vms.iter().any(|v| {
                v.conditions
                    .iter()
                    .any(|c| c.r#type == "Ready" && c.status == "True")
            })
        })
    })
    .await;

    // Registered: the program run goes out over the channel.
    let run: serde_json::Value = loop {
        let line = lines.next_line().await.unwrap().unwrap();
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        if value["type"] == "run" {
            break value;
        }
    };
    assert_eq!(run["deployment_id"], "d1");
    assert_eq!(run["program_name"], "hi.sh");
    assert_eq!(run["args"], serde_json::json!(["x"]));

    write
        .write_all(b"{\"type\":\"program_status\",\"deployment_id\":\"d1\",\"status\":\"exited\",\"exit_code\":0,\"stdout_tail\":\"hi\\n\",\"stderr_tail\":\"\"}\n")
        .await
        .unwrap();
    write
        .write_all(b"{\"type\":\"result\",\"task_id\":\"t1\",\"document\":{\"loss\":0}}\n")
        .await
        .unwrap();
    write
        .write_all(b"{\"type\":\"poll_tasks\"}\n")
        .await
        .unwrap();
    let tasks: serde_json::Value = loop {
        let line = lines.next_line().await.unwrap().unwrap();
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        if value["type"] == "tasks" {
            break value;
        }
    };
    assert_eq!(tasks["tasks"][0]["id"], "t1");
    assert_eq!(*control.polls.lock().unwrap(), vec![a.id.clone()]);
    eventually("result relayed", || {
        control
            .results
            .lock()
            .unwrap()
            .iter()
            .any(|(vm, task, doc)| vm == &a.id && task == "t1" && doc.contains("\"loss\":0"))
    })
    .await;
    eventually("program status relayed", || {
        control.reports.lock().unwrap().iter().any(|r| {
            r.program_runs
                .iter()
                .any(|p| p.deployment_id == "d1" && p.status == "exited" && p.exit_code == Some(0))
        })
    })
    .await;

    // Nothing changes any more: no further VM statuses are sent.
    let sent = |c: &FakeControl| {
        c.reports
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.vms.len())
            .sum::<usize>()
    };
    let before = sent(&control);
    // Two more passes started, so one ran in full (with its report) in
    // between: the loop's periodic local pass, in paused time.
    let passes = *rig.hv.lists.lock().unwrap();
    eventually("another full pass", || {
        *rig.hv.lists.lock().unwrap() >= passes + 2
    })
    .await;
    assert_eq!(
        sent(&control),
        before,
        "unchanged statuses must not be re-sent"
    );

    // The run's env changes (a platform's rotated control key): the run
    // goes out again with it, so the guest restarts the program.
    {
        let mut desired = control.desired.lock().unwrap();
        desired.generation = 8;
        desired.program_runs[0]
            .env
            .insert("MEASURELAB_CONTROL_KEY".into(), "rotated".into());
    }
    desired_tx.send(8).unwrap();
    let rerun = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        loop {
            let line = lines.next_line().await.unwrap().unwrap();
            let value: serde_json::Value = serde_json::from_str(&line).unwrap();
            if value["type"] == "run" {
                break value;
            }
        }
    })
    .await
    .expect("the changed run is sent again");
    assert_eq!(rerun["deployment_id"], "d1");
    assert_eq!(rerun["env"]["MEASURELAB_CONTROL_KEY"], "rotated");

    stop_tx.send(true).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

/// A desired state changed without any announcement (a lost heartbeat hint)
/// is picked up by the periodic resync: not before RESYNC_INTERVAL, and
/// right at it. Paused time, so the half minute costs nothing.
#[tokio::test(start_paused = true)]
async fn loop_resyncs_an_unannounced_desired_state() {
    use measurelab_agent::reconcile::{run_loop, LoopHandles, RESYNC_INTERVAL};

    let rig = rig();
    let state_dir = rig._dir.path().to_path_buf();
    let (a, b) = (vm(1, 101), vm(2, 101));
    let control = Arc::new(FakeControl::default());
    *control.desired.lock().unwrap() = desired(1, vec![a.clone()]);
    let (events_tx, events_rx) = tokio::sync::mpsc::channel(64);
    let reconciler = Reconciler::new(
        ReconcilerConfig::new(&state_dir, OWNER),
        Backends {
            namespace: Some(rig.hv.clone() as Arc<dyn Hypervisor>),
            libvirt: None,
        },
        Some(rig.switch.clone() as Arc<dyn Switch>),
        GuestChannels::new(),
        events_tx,
    );
    let (_desired_tx, desired_rx) = tokio::sync::watch::channel(1u64);
    let (observed_tx, mut observed_rx) = tokio::sync::watch::channel(0u64);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let started = tokio::time::Instant::now();
    let task = tokio::spawn(run_loop(
        reconciler,
        events_rx,
        control.clone(),
        state_dir,
        LoopHandles {
            desired_generation: desired_rx,
            observed_generation: observed_tx,
            shutdown: stop_rx,
        },
    ));
    observed_rx.wait_for(|g| *g == 1).await.unwrap();

    // The controller moves on; nobody tells the loop.
    *control.desired.lock().unwrap() = desired(2, vec![a.clone(), b.clone()]);
    tokio::time::timeout(RESYNC_INTERVAL * 2, observed_rx.wait_for(|g| *g == 2))
        .await
        .expect("no resync within two intervals")
        .unwrap();
    let took = started.elapsed();
    assert!(
        took >= RESYNC_INTERVAL,
        "fetched after {took:?}, before any resync was due"
    );
    assert!(
        took < RESYNC_INTERVAL + std::time::Duration::from_secs(2),
        "the resync came late: {took:?}"
    );
    assert!(rig.switch.port_tags().contains_key(&b.port_name));

    stop_tx.send(true).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

/// A loop over fakes, in real time, with settings to adjust.
struct LoopRun {
    desired_tx: tokio::sync::watch::Sender<u64>,
    stop_tx: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl LoopRun {
    fn start(
        hv: &Arc<FakeHypervisor>,
        switch: &Arc<FakeSwitch>,
        state_dir: &std::path::Path,
        control: &Arc<FakeControl>,
        tweak: impl FnOnce(&mut ReconcilerConfig),
    ) -> LoopRun {
        use measurelab_agent::reconcile::{run_loop, LoopHandles};
        let (events_tx, events_rx) = tokio::sync::mpsc::channel(1024);
        let mut config = ReconcilerConfig::new(state_dir, OWNER);
        config.uplink = None;
        tweak(&mut config);
        let reconciler = Reconciler::new(
            config,
            Backends {
                namespace: Some(hv.clone() as Arc<dyn Hypervisor>),
                libvirt: None,
            },
            Some(switch.clone() as Arc<dyn Switch>),
            GuestChannels::new(),
            events_tx,
        );
        let generation = control.desired.lock().unwrap().generation;
        let (desired_tx, desired_rx) = tokio::sync::watch::channel(generation);
        let (observed_tx, _observed_rx) = tokio::sync::watch::channel(0u64);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(run_loop(
            reconciler,
            events_rx,
            control.clone(),
            state_dir.to_path_buf(),
            LoopHandles {
                desired_generation: desired_rx,
                observed_generation: observed_tx,
                shutdown: stop_rx,
            },
        ));
        LoopRun {
            desired_tx,
            stop_tx,
            task,
        }
    }

    async fn stop(self) {
        self.stop_tx.send(true).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), self.task)
            .await
            .expect("the loop did not stop")
            .unwrap();
    }
}

/// A fake guest on the real unix channel of `vm`: says hello, then the
/// caller writes lines; what the agent sends back is collected.
struct FakeGuest {
    write: tokio::net::unix::OwnedWriteHalf,
    received: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl FakeGuest {
    async fn connect(state_dir: &std::path::Path, vm: &DesiredVm) -> FakeGuest {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let socket = measurelab_agent::guest_channel::channel_socket_path(state_dir, id_of(vm));
        let stream = connect_when_listening(&socket).await;
        let (read, mut write) = stream.into_split();
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(value) = serde_json::from_str(&line) {
                    sink.lock().unwrap().push(value);
                }
            }
        });
        let hello = format!(
            "{{\"type\":\"hello\",\"vm_id\":\"{}\",\"agent_version\":\"test\"}}\n",
            vm.id
        );
        write.write_all(hello.as_bytes()).await.unwrap();
        FakeGuest { write, received }
    }

    async fn send(&mut self, line: String) {
        use tokio::io::AsyncWriteExt;
        self.write.write_all(line.as_bytes()).await.unwrap();
        self.write.write_all(b"\n").await.unwrap();
    }

    fn received(&self, kind: &str) -> Vec<serde_json::Value> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["type"] == kind)
            .cloned()
            .collect()
    }
}

/// A connection to the channel socket once the agent listens on it. The
/// socket appears when the reconciler creates the VM's channel, which is
/// before (or, on a stale file, without) a listener: until then a connect
/// is refused or finds no file, and only those two are waited out.
async fn connect_when_listening(socket: &std::path::Path) -> tokio::net::UnixStream {
    use std::io::ErrorKind;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match tokio::net::UnixStream::connect(socket).await {
            Ok(stream) => return stream,
            Err(e)
                if matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::NotFound)
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            Err(e) => panic!("connecting to {}: {e}", socket.display()),
        }
    }
}

/// One VM `a` (vm 1, VLAN 101) the controller wants, the loop running over
/// fakes, and a fake guest on its channel.
struct OneVmLoop {
    rig: Rig,
    state_dir: std::path::PathBuf,
    a: DesiredVm,
    control: Arc<FakeControl>,
    run: LoopRun,
    guest: FakeGuest,
}

/// [`OneVmLoop`] with the controller down from the start when
/// `controller_down`, and the loop's settings changed by `tweak`.
async fn one_vm_loop(
    controller_down: bool,
    tweak: impl FnOnce(&mut ReconcilerConfig),
) -> OneVmLoop {
    let rig = rig();
    let state_dir = rig._dir.path().to_path_buf();
    let a = vm(1, 101);
    let control = Arc::new(FakeControl::default());
    *control.desired.lock().unwrap() = desired(1, vec![a.clone()]);
    control.down.store(controller_down, Ordering::SeqCst);
    let run = LoopRun::start(&rig.hv, &rig.switch, &state_dir, &control, tweak);
    let guest = FakeGuest::connect(&state_dir, &a).await;
    OneVmLoop {
        rig,
        state_dir,
        a,
        control,
        run,
        guest,
    }
}

fn heartbeat_line() -> String {
    r#"{"type":"heartbeat","usage":{"cpu_count":1,"cpu_used_percent":5.0,"memory_total_bytes":10,"memory_used_bytes":5,"disk_total_bytes":0,"disk_used_bytes":0,"network_rx_bytes":0,"network_tx_bytes":0}}"#.into()
}

fn result_line(task_id: &str, run_id: &str, request_id: &str) -> String {
    serde_json::json!({"type": "result", "task_id": task_id, "request_id": request_id,
                       "document": {"run_id": run_id, "loss": 0}})
    .to_string()
}

/// A hostile guest floods its channel - `poll_tasks` in a loop, 4 MiB
/// output tails, results for tasks that are not its VM's - while another
/// guest on the node heartbeats and a third VM is deleted. The flood is
/// bounded at the agent (one poll at the controller at a time, polls over
/// budget refused back to the guest, tails cut to 8 KiB), the other guest's
/// heartbeats keep reaching the controller, and the deletion is acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_guest_is_bounded_and_the_node_keeps_reporting() {
    use measurelab_agent::guest_channel::RELAYED_TAIL_BYTES;
    let rig = rig();
    let state_dir = rig._dir.path().to_path_buf();
    let (hostile, honest, doomed) = (vm(1, 101), vm(2, 101), vm(3, 101));
    let control = Arc::new(FakeControl::default());
    *control.desired.lock().unwrap() = DesiredState {
        generation: 1,
        vms: vec![hostile.clone(), honest.clone(), doomed.clone()],
        program_runs: vec![measurelab_api::node_v1::ProgramRun {
            deployment_id: "d1".into(),
            vm_id: hostile.id.clone(),
            program_id: "p1".into(),
            program_name: "hi.sh".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let run = LoopRun::start(&rig.hv, &rig.switch, &state_dir, &control, |_| {});
    let mut bad = FakeGuest::connect(&state_dir, &hostile).await;
    let mut good = FakeGuest::connect(&state_dir, &honest).await;
    eventually("the doomed VM defined", || {
        rig.hv.guests.lock().unwrap().contains_key(&id_of(&doomed))
    })
    .await;

    // The honest guest heartbeats all along.
    let beating = tokio::spawn(async move {
        loop {
            good.send(heartbeat_line()).await;
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
    let honest_heartbeats = |control: &FakeControl| {
        control
            .reports
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.guests.iter())
            .filter(|g| g.vm_id == honest.id && g.last_heartbeat_unix_ms > 0)
            .map(|g| g.last_heartbeat_unix_ms)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    let before = honest_heartbeats(&control);

    // The deletion is asked for in the middle of the flood.
    let mut deleting = doomed.clone();
    deleting.deleting = true;
    deleting.generation = 2;
    {
        let mut desired = control.desired.lock().unwrap();
        desired.generation = 2;
        desired.vms[2] = deleting;
    }
    run.desired_tx.send(2).unwrap();

    // Statuses count only for runs the agent gave the guest.
    eventually("the hostile guest was given its run", || {
        !bad.received("run").is_empty()
    })
    .await;
    // A 4 MiB tail: as much as fits in one channel line.
    let huge_tail = "x".repeat(4 * 1024 * 1024 - 1024);
    let flood_started = std::time::Instant::now();
    let mut polls_sent = 0;
    // Each round opens with the messages whose bounds are checked below
    // (tail, logs, an invented status): the guest's relay budget (a burst,
    // then a rate) admits the first messages of a flood, and drops what
    // comes after it is spent, whichever they are. The polls and results
    // that follow spend it.
    for round in 0..10 {
        bad.send(
            serde_json::json!({"type": "program_status", "deployment_id": "d1",
                "status": "running", "stdout_tail": huge_tail, "stderr_tail": "e"})
            .to_string(),
        )
        .await;
        // Long log messages: cut to 4 KiB a line at the channel, and a
        // report carries a bounded share of them.
        bad.send(
            serde_json::json!({"type": "log", "lines": vec!["l".repeat(8 * 1024); 200]})
                .to_string(),
        )
        .await;
        // Statuses of runs it was never given are not relayed.
        bad.send(
            serde_json::json!({"type": "program_status",
                "deployment_id": format!("invented-{round}"), "status": "running"})
            .to_string(),
        )
        .await;
        for i in 0..20 {
            bad.send(result_line(
                "other-task",
                &format!("run-{round}-{i}"),
                &format!("q{round}-{i}"),
            ))
            .await;
        }
        for _ in 0..300 {
            bad.send(r#"{"type":"poll_tasks"}"#.into()).await;
            polls_sent += 1;
        }
    }
    let flood = flood_started.elapsed();
    eprintln!("flood of {polls_sent} polls took {flood:?}");

    eventually("the deletion acked during the flood", || {
        control
            .reports
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.vms.iter().any(|v| v.vm_id == doomed.id && v.deleted))
    })
    .await;
    eventually("the honest guest's heartbeats keep being reported", || {
        honest_heartbeats(&control) >= before + 3
    })
    .await;
    eventually("polls over budget refused back to the guest", || {
        !bad.received("poll_refused").is_empty()
    })
    .await;
    eventually("the cut tail relayed", || {
        control
            .reports
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.program_runs.iter())
            .any(|p| p.deployment_id == "d1")
    })
    .await;
    beating.abort();

    assert_eq!(
        control.max_polls_in_flight.load(Ordering::SeqCst),
        1,
        "one poll of the VM at the controller at a time"
    );
    let relayed = control.polls.lock().unwrap().len();
    assert!(
        relayed * 10 < polls_sent,
        "{relayed} of {polls_sent} polls reached the controller"
    );
    // Logs go out with the next guest report after the loop took them,
    // which can be a report after the one that carried the tail.
    eventually("the hostile guest's logs are relayed, bounded", || {
        control
            .reports
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.guests.iter())
            .any(|g| g.vm_id == hostile.id && !g.logs.is_empty())
    })
    .await;
    for report in control.reports.lock().unwrap().iter() {
        for p in &report.program_runs {
            assert!(
                p.stdout_tail.len() <= RELAYED_TAIL_BYTES,
                "{}",
                p.stdout_tail.len()
            );
            assert!(p.stderr_tail.len() <= RELAYED_TAIL_BYTES);
            assert!(p.stdout_tail.contains("cut by the node agent"));
            assert_eq!(p.deployment_id, "d1", "only the run the guest was given");
        }
        let log_bytes: usize = report
            .guests
            .iter()
            .flat_map(|g| g.logs.iter())
            .map(|l| l.message.len())
            .sum();
        assert!(
            log_bytes <= 512 * 1024,
            "a report with {log_bytes} log bytes"
        );
    }
    // Results for tasks that are not the VM's: refused by the controller,
    // so they do not stay in the spool.
    eventually("refused results leave the spool", || {
        spooled_files(&state_dir) == 0
    })
    .await;
    assert!(control.results.lock().unwrap().is_empty());
    run.stop().await;
}

/// The result spool outlasts a controller outage: a result produced while
/// the controller is "stopped" is acknowledged to the guest once it is on
/// disk, re-posted with backoff for as long as the outage lasts, and stored
/// exactly once after the controller is back.
///
/// The window: the old relay gave up after 8 attempts. The spool's backoff
/// is set to 10-50 ms here, and the outage lasts until the spool has made
/// more than 8 attempts (and at least 2 s), so it runs past the point where
/// the old relay dropped the result, in seconds rather than minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_outlives_a_controller_outage_longer_than_the_old_retries() {
    let OneVmLoop {
        rig: _rig,
        state_dir,
        a,
        control,
        run,
        mut guest,
    } = one_vm_loop(false, |config| {
        config.result_spool.retry_initial = std::time::Duration::from_millis(10);
        config.result_spool.retry_cap = std::time::Duration::from_millis(50);
    })
    .await;
    eventually("the VM reported", || {
        !control.reports.lock().unwrap().is_empty()
    })
    .await;

    control.down.store(true, Ordering::SeqCst);
    let stopped = std::time::Instant::now();
    guest.send(result_line("t1", "run-1", "q1")).await;
    eventually("the guest hears the result is stored", || {
        !guest.received("result_ack").is_empty()
    })
    .await;
    let ack = guest.received("result_ack").remove(0);
    assert_eq!(ack["request_id"], "q1");
    assert_eq!(ack["stored"], true, "{ack}");
    eventually("more attempts than the old relay made", || {
        control.post_attempts.load(Ordering::SeqCst) > 8
            && stopped.elapsed() >= std::time::Duration::from_secs(2)
    })
    .await;
    assert!(control.results.lock().unwrap().is_empty());
    assert_eq!(spooled_files(&state_dir), 1, "the result waits on disk");

    control.down.store(false, Ordering::SeqCst);
    eventually("the result reaches the controller", || {
        !control.results.lock().unwrap().is_empty()
    })
    .await;
    eventually("the spool empties", || spooled_files(&state_dir) == 0).await;
    let stored: Vec<_> = control
        .results
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, _, doc)| doc.contains("run-1"))
        .cloned()
        .collect();
    assert_eq!(stored.len(), 1, "stored exactly once: {stored:?}");
    assert_eq!(stored[0].0, a.id);
    run.stop().await;
}

/// A poll the controller does not answer is refused to the guest, not
/// answered with an empty task list: an MSCS takes the list it gets as the
/// platform's tasks, and an empty one made it drop its periodic schedules
/// for as long as the controller was out of reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_the_controller_cannot_answer_is_refused_not_answered_empty() {
    let OneVmLoop {
        rig: _rig,
        control,
        run,
        mut guest,
        ..
    } = one_vm_loop(false, |_| {}).await;

    control.down.store(true, Ordering::SeqCst);
    guest.send(r#"{"type":"poll_tasks"}"#.into()).await;
    eventually("the poll is answered", || {
        !guest.received("poll_refused").is_empty() || !guest.received("tasks").is_empty()
    })
    .await;
    assert_eq!(guest.received("tasks"), Vec::<serde_json::Value>::new());
    let refused = guest.received("poll_refused").remove(0);
    assert!(
        refused["reason"]
            .as_str()
            .is_some_and(|r| r.contains("PollTasks")),
        "{refused}"
    );

    control.down.store(false, Ordering::SeqCst);
    guest.send(r#"{"type":"poll_tasks"}"#.into()).await;
    eventually("the tasks once the controller answers", || {
        !guest.received("tasks").is_empty()
    })
    .await;
    assert_eq!(guest.received("tasks")[0]["tasks"][0]["id"], "t1");
    run.stop().await;
}

/// The guest agent's version reaches the controller in its VM's status, so
/// the controller can judge it (docs/version-skew.md); the fake guest says
/// hello as version "test".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vm_status_carries_the_version_from_the_guests_hello() {
    let OneVmLoop {
        rig: _rig,
        a,
        control,
        run,
        guest: _guest,
        ..
    } = one_vm_loop(false, |_| {}).await;
    eventually("a status with the guest agent's version", || {
        control.reports.lock().unwrap().iter().any(|report| {
            report
                .vms
                .iter()
                .any(|vm| vm.vm_id == a.id && vm.guest_agent_version == "test")
        })
    })
    .await;
    run.stop().await;
}

/// A hung controller (every call waits unanswered, as with SIGSTOP) does
/// not keep results out of the spool: the loop is stuck in a controller call
/// and a task poll sent before them waits at the controller, yet each of
/// several results in a row is spooled and acknowledged "stored" well
/// within the guest's 10 s wait for an answer. Once the controller answers
/// again, each is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_spooled_while_the_controller_hangs() {
    let OneVmLoop {
        rig: _rig,
        state_dir,
        a,
        control,
        run,
        mut guest,
    } = one_vm_loop(false, |_| {}).await;
    eventually("the VM reported", || {
        !control.reports.lock().unwrap().is_empty()
    })
    .await;

    control.hung.send_replace(true);
    // A new heartbeat makes the loop report it: the loop now waits on the
    // hung controller.
    guest.send(heartbeat_line()).await;
    eventually("the loop waits on the hung controller", || {
        control.hung_calls.load(Ordering::SeqCst) >= 1
    })
    .await;
    guest.send(r#"{"type":"poll_tasks"}"#.into()).await;

    let runs = ["run-1", "run-2", "run-3"];
    for (n, run_id) in runs.iter().enumerate() {
        let request_id = format!("q{n}");
        guest.send(result_line("t1", run_id, &request_id)).await;
        // The guest's own wait is 10 s; the agent answers after at most
        // VERDICT_WAIT (2 s) once the result is on disk.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while guest.received("result_ack").len() <= n {
            assert!(
                std::time::Instant::now() < deadline,
                "no answer to {request_id} within 5 s while the controller hangs"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let ack = guest.received("result_ack").remove(n);
        assert_eq!(ack["request_id"], request_id.as_str(), "{ack}");
        assert_eq!(ack["stored"], true, "{ack}");
        assert_eq!(spooled_files(&state_dir), n + 1, "spooled before the ack");
    }
    assert!(control.results.lock().unwrap().is_empty());
    assert_eq!(
        control.polls.lock().unwrap().len(),
        1,
        "the task poll went to the controller at once and waits there"
    );
    assert!(guest.received("tasks").is_empty());

    control.hung.send_replace(false);
    eventually("every result reaches the controller", || {
        control.results.lock().unwrap().len() >= runs.len()
    })
    .await;
    eventually("the spool empties", || spooled_files(&state_dir) == 0).await;
    eventually("the task poll answered", || {
        !guest.received("tasks").is_empty()
    })
    .await;
    let results = control.results.lock().unwrap().clone();
    for run_id in runs {
        let stored = results
            .iter()
            .filter(|(vm, task, doc)| vm == &a.id && task == "t1" && doc.contains(run_id))
            .count();
        assert_eq!(stored, 1, "{run_id} stored exactly once: {results:?}");
    }
    run.stop().await;
}

/// An agent that stops with a spooled result (controller unreachable) leaves
/// it on disk; the next agent on the same state dir posts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_reposts_its_spooled_result() {
    let OneVmLoop {
        rig,
        state_dir,
        a,
        control,
        run: first,
        mut guest,
    } = one_vm_loop(true, |_| {}).await;
    guest.send(result_line("t1", "run-7", "q7")).await;
    eventually("stored ack", || !guest.received("result_ack").is_empty()).await;
    assert_eq!(guest.received("result_ack")[0]["stored"], true);
    first.stop().await;
    drop(guest);
    assert_eq!(spooled_files(&state_dir), 1);

    control.down.store(false, Ordering::SeqCst);
    let second = LoopRun::start(&rig.hv, &rig.switch, &state_dir, &control, |_| {});
    eventually("the next agent posts the spooled result", || {
        control
            .results
            .lock()
            .unwrap()
            .iter()
            .any(|(vm, task, doc)| vm == &a.id && task == "t1" && doc.contains("run-7"))
    })
    .await;
    eventually("the spool empties", || spooled_files(&state_dir) == 0).await;
    second.stop().await;
}

/// The spool is bounded: when full, the guest is told its result is not
/// stored instead of getting a false ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_refuses_instead_of_acknowledging() {
    let OneVmLoop {
        rig: _rig,
        run,
        mut guest,
        ..
    } = one_vm_loop(true, |config| {
        config.result_spool.max_files = 1;
    })
    .await;
    guest.send(result_line("t1", "run-1", "q1")).await;
    eventually("first ack", || guest.received("result_ack").len() == 1).await;
    guest.send(result_line("t1", "run-2", "q2")).await;
    eventually("second ack", || guest.received("result_ack").len() == 2).await;
    let acks = guest.received("result_ack");
    assert_eq!(acks[0]["stored"], true, "{acks:?}");
    assert_eq!(acks[1]["request_id"], "q2");
    assert_eq!(acks[1]["stored"], false, "{acks:?}");
    assert!(
        acks[1]["reason"]
            .as_str()
            .unwrap()
            .contains("spool is full"),
        "{acks:?}"
    );
    run.stop().await;
}

/// With the controller in reach, a guest hears its controller's verdict:
/// a result for a task that is not the VM's is refused for good (and not
/// left in the spool), a result for its own task is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_the_controller_refuses_is_refused_to_the_guest_for_good() {
    let OneVmLoop {
        rig: _rig,
        state_dir,
        control,
        run,
        mut guest,
        ..
    } = one_vm_loop(false, |_| {}).await;
    guest.send(result_line("other-task", "run-1", "q1")).await;
    guest.send(result_line("t1", "run-2", "q2")).await;
    eventually("both acks", || guest.received("result_ack").len() == 2).await;
    let acks = guest.received("result_ack");
    let ack = |id: &str| acks.iter().find(|a| a["request_id"] == id).unwrap().clone();
    let refused = ack("q1");
    assert_eq!(refused["stored"], false, "{refused}");
    assert_eq!(refused["rejected"], true, "{refused}");
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .contains("does not belong to the VM's platform"),
        "the controller's reason reaches the guest: {refused}"
    );
    let stored = ack("q2");
    assert_eq!(stored["stored"], true, "{stored}");
    assert!(stored.get("rejected").is_none(), "{stored}");
    assert_eq!(spooled_files(&state_dir), 0);
    let results = control.results.lock().unwrap().clone();
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0].1, "t1");
    run.stop().await;
}

/// A program the controller cannot send in one gRPC answer fails its run
/// with the controller's reason instead of leaving the deployment pending
/// for ever, while a controller that is merely unreachable leaves it
/// pending. Once the operator raises the limit, the run goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_too_large_for_a_grpc_answer_fails_its_run_until_it_fits() {
    let OneVmLoop {
        rig,
        a,
        control,
        run,
        guest,
        ..
    } = one_vm_loop(false, |_| {}).await;
    let run_status = |c: &FakeControl| -> Vec<(String, String)> {
        c.reports
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.program_runs.iter())
            .filter(|p| p.deployment_id == "d1")
            .map(|p| (p.status.clone(), p.stderr_tail.clone()))
            .collect()
    };

    *control.program_refusal.lock().unwrap() = Some(tonic::Status::unavailable("failing over"));
    {
        let mut desired = control.desired.lock().unwrap();
        desired.generation = 2;
        desired.program_runs = vec![measurelab_api::node_v1::ProgramRun {
            deployment_id: "d1".into(),
            vm_id: a.id.clone(),
            program_id: "p1".into(),
            program_name: "big.bin".into(),
            ..Default::default()
        }];
    }
    run.desired_tx.send(2).unwrap();
    let passes = *rig.hv.lists.lock().unwrap();
    eventually("two more full passes", || {
        *rig.hv.lists.lock().unwrap() >= passes + 2
    })
    .await;
    assert_eq!(run_status(&control), vec![], "an outage fails no run");

    let refusal = "program \"big.bin\" (70000000 bytes) does not fit in this controller's \
                   gRPC answers: over --grpc-max-response-message-bytes 1048576";
    *control.program_refusal.lock().unwrap() = Some(tonic::Status::out_of_range(refusal));
    eventually("the run reported failed", || {
        !run_status(&control).is_empty()
    })
    .await;
    assert_eq!(
        run_status(&control),
        vec![("failed".to_string(), format!("FetchProgram: {refusal}"))]
    );
    assert_eq!(guest.received("run"), Vec::<serde_json::Value>::new());

    *control.program_refusal.lock().unwrap() = None;
    eventually("the run sent once the program fits", || {
        !guest.received("run").is_empty()
    })
    .await;
    assert_eq!(guest.received("run")[0]["deployment_id"], "d1");
    run.stop().await;
}
