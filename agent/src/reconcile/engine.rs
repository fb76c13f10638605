//! One reconcile pass: observe, plan (`plan`, pure), run the jobs, compute
//! statuses. The loop around it lives in `driver`.
//!
//! Time is tokio's ([`tokio::time::Instant`]), so tests of backoff and
//! resync run in paused time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::stream::{self, StreamExt};
use measurelab_api::guest::GuestMessage;
use measurelab_api::node_v1::{Condition, DesiredState, DesiredVm, GatewayStatus, VmStatus};
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

use super::appliances::ApplianceCache;
use super::flows;
use super::gateways::GatewayChange;
use super::plan::{
    self, Failure, GuestFacts, HeartbeatCheck, Job, KeyState, Observed, Power, PowerStep,
};
use super::translate;
use super::types::{condition, Backends, ControlPlane, ReconcilerConfig, RETRY_CAP, RETRY_INITIAL};
use crate::gateway::GatewayHost;
use crate::guest_channel::GuestChannels;
use crate::hypervisor::{
    BackendKind, ChannelSocket, DefineOutcome, ErrorClass, GuestInfo, GuestSpec, GuestState,
    Hypervisor, HypervisorError, NicAdoption,
};
use crate::ovs::{OvsError, Switch, SwitchAction, SwitchCapabilities, SwitchSpec, VmPortSpec};
use measurelab_backoff::Backoff;

/// Something a pass did to the node (tests compare lists of these).
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `Hypervisor::define` created or changed a guest.
    Define {
        /// VM id.
        vm: Uuid,
    },
    /// Booted a guest.
    Start {
        /// VM id.
        vm: Uuid,
    },
    /// Froze a guest.
    Pause {
        /// VM id.
        vm: Uuid,
    },
    /// Thawed a guest.
    Resume {
        /// VM id.
        vm: Uuid,
    },
    /// Hard-stopped a guest.
    Stop {
        /// VM id.
        vm: Uuid,
    },
    /// Removed a guest (deleting VM or orphan).
    Undefine {
        /// VM id.
        vm: Uuid,
    },
    /// A change applied to the switch.
    Switch(SwitchAction),
    /// Opened (listen or connect) a guest channel.
    OpenChannel {
        /// VM id.
        vm: Uuid,
    },
    /// Closed a guest channel.
    CloseChannel {
        /// VM id.
        vm: Uuid,
    },
    /// Moved a libvirt guest's tap from the host's network namespace into
    /// the agent's (the node's), where its OVS is.
    MoveTap {
        /// VM id.
        vm: Uuid,
    },
    /// Changed a platform gateway (see `crate::gateway`).
    Gateway {
        /// The platform's id.
        platform_id: String,
        /// What changed.
        change: GatewayChange,
    },
}

/// What one pass did and found.
#[derive(Debug, Clone, Default)]
pub struct PassReport {
    /// Changes made, in order (guest operations of different VMs may
    /// interleave; each VM's own are in order).
    pub actions: Vec<Action>,
    /// The status of every desired VM after the pass.
    pub statuses: Vec<VmStatus>,
    /// Statuses that differ from what was last reported
    /// ([`Reconciler::mark_reported`]).
    pub changed: Vec<VmStatus>,
    /// How every desired platform gateway stands after the pass.
    pub gateways: Vec<GatewayStatus>,
    /// Gateway statuses that differ from what was last reported
    /// ([`Reconciler::mark_gateways_reported`]).
    pub changed_gateways: Vec<GatewayStatus>,
    /// No Transient error is pending: the node did everything the desired
    /// state asks that it can do.
    pub converged: bool,
    /// When the earliest requeued key is due.
    pub next_retry: Option<std::time::Duration>,
}

/// A job that calls the hypervisor (runs on a blocking thread).
enum HostJob {
    Converge {
        hv: Arc<dyn Hypervisor>,
        spec: Box<GuestSpec>,
        seen: Option<GuestInfo>,
        power: Power,
        deep: bool,
    },
    Remove {
        hv: Arc<dyn Hypervisor>,
        id: Uuid,
    },
}

/// Result of a [`HostJob`].
struct GuestOutcome {
    id: Uuid,
    actions: Vec<Action>,
    /// The guest and whether it needs a restart; `None` once removed.
    result: Result<Option<(GuestInfo, bool)>, HypervisorError>,
    /// The port of a tap that is new to the switch (see `readopted_taps`).
    renewed_tap: Option<String>,
}

fn run_host_job(job: HostJob) -> GuestOutcome {
    match job {
        HostJob::Converge {
            hv,
            spec,
            seen,
            power,
            deep,
        } => {
            let mut actions = Vec::new();
            let mut result =
                converge_guest(hv.as_ref(), &spec, seen, power, deep, &mut actions).map(Some);
            let mut renewed_tap = None;
            if let Ok(Some((info, _))) = &result {
                if matches!(info.state, GuestState::Running | GuestState::Paused) {
                    // A tap moved here, or made anew by a start, is new to
                    // the switch even under an old name.
                    let started = actions.contains(&Action::Start { vm: spec.id });
                    let renewed = match hv.adopt_nic(&spec) {
                        Ok(NicAdoption::NotNeeded) => false,
                        Ok(NicAdoption::Present) => started,
                        Ok(NicAdoption::Moved) => {
                            actions.push(Action::MoveTap { vm: spec.id });
                            true
                        }
                        Err(err) => {
                            result = Err(err);
                            started
                        }
                    };
                    renewed_tap = renewed
                        .then(|| spec.nic.as_ref().map(|nic| nic.port_name.clone()))
                        .flatten();
                }
            }
            GuestOutcome {
                id: spec.id,
                actions,
                result,
                renewed_tap,
            }
        }
        HostJob::Remove { hv, id } => GuestOutcome {
            id,
            result: hv.undefine(id).map(|()| None),
            actions: vec![Action::Undefine { vm: id }],
            renewed_tap: None,
        },
    }
}

/// Define (if needed) and drive the power state; returns the final info and
/// whether the guest needs a restart to pick its spec up.
fn converge_guest(
    hv: &dyn Hypervisor,
    spec: &GuestSpec,
    seen: Option<GuestInfo>,
    power: Power,
    deep: bool,
    actions: &mut Vec<Action>,
) -> Result<(GuestInfo, bool), HypervisorError> {
    let id = spec.id;
    let mut restart_required = seen.as_ref().is_some_and(|g| g.restart_pending);
    let needs_define = seen
        .as_ref()
        .is_none_or(|info| deep || info.spec_hash != spec.spec_hash());
    if needs_define {
        match hv.define(spec)? {
            DefineOutcome::Unchanged => {}
            DefineOutcome::Created => actions.push(Action::Define { vm: id }),
            DefineOutcome::Updated {
                restart_required: restart,
            } => {
                actions.push(Action::Define { vm: id });
                restart_required |= restart;
            }
        }
    }
    let state = match (&seen, needs_define) {
        (Some(info), false) => info.state,
        _ => hv
            .info(id)?
            .map(|i| i.state)
            .ok_or(HypervisorError::NotFound { id })?,
    };
    let steps = plan::power_steps(power, state).ok_or(HypervisorError::InvalidState {
        id,
        operation: "converge",
        state,
    })?;
    for step in steps {
        match step {
            PowerStep::Start => {
                hv.start(id)?;
                actions.push(Action::Start { vm: id });
                restart_required = false;
            }
            PowerStep::Pause => {
                hv.pause(id)?;
                actions.push(Action::Pause { vm: id });
            }
            PowerStep::Resume => {
                hv.resume(id)?;
                actions.push(Action::Resume { vm: id });
            }
            PowerStep::Stop => {
                hv.stop(id)?;
                actions.push(Action::Stop { vm: id });
                restart_required = false;
            }
        }
    }
    let info = if actions.is_empty() {
        seen.ok_or(HypervisorError::NotFound { id })?
    } else {
        hv.info(id)?.ok_or(HypervisorError::NotFound { id })?
    };
    Ok((info, restart_required))
}

/// The guests after the guest jobs of a pass.
struct GuestsAfter {
    /// Every guest that exists now, by VM id.
    guests: HashMap<Uuid, GuestInfo>,
    /// Guests a job of this pass removes.
    removing: BTreeSet<Uuid>,
    /// Those not removed (yet).
    unremoved: BTreeSet<Uuid>,
}

/// The switch after a pass.
#[derive(Default)]
struct PortsAfter {
    /// The switch reconciled (or there is none to reconcile).
    ok: bool,
    /// Why a VM's port is not attached.
    failures: HashMap<Uuid, Failure>,
    /// VMs whose port is on the bridge as desired.
    attached: BTreeSet<Uuid>,
}

/// The reconcile state of one node. Holds no durable truth: a new one built
/// after an agent restart converges from what it observes.
pub struct Reconciler {
    config: ReconcilerConfig,
    backends: Backends,
    switch: Option<Arc<dyn Switch>>,
    channels: GuestChannels,
    guest_events: mpsc::Sender<(Uuid, GuestMessage)>,
    keys: HashMap<Uuid, KeyState>,
    reported: HashMap<Uuid, VmStatus>,
    switch_caps: Option<SwitchCapabilities>,
    switch_backoff: Backoff,
    switch_retry_at: Option<Instant>,
    switch_failure: Option<Failure>,
    /// Passes since the last deep one (deep passes call `define` on every
    /// guest so hand-deleted pieces are recreated).
    passes: u64,
    /// Ports of libvirt guests with a new tap under an old name (started or
    /// tap moved by this agent) that the switch must re-create:
    /// ovs-vswitchd's userspace datapath keeps polling the vanished device
    /// otherwise, and the guest is cut off.
    readopted_taps: BTreeSet<String>,
    /// Verified copies of the appliance files the controller stores.
    appliances: ApplianceCache,
    /// This node's platform gateways.
    gateways: GatewayHost,
    gateway_backoff: Backoff,
    gateway_retry_at: Option<Instant>,
    /// The OVS ports the gateways need, from this pass's gateway step.
    gateway_ports: Vec<VmPortSpec>,
    /// Gateway statuses the controller has, by platform id.
    reported_gateways: HashMap<String, GatewayStatus>,
}

/// Every this many passes (and on the first) each guest is re-defined.
const DEEP_EVERY: u64 = 10;
/// `GuestRegistered` reason of a registered guest that went silent.
pub(crate) const HEARTBEAT_MISSED: &str = "GuestHeartbeatMissed";
/// The pass that judges a heartbeat deadline runs this much after it, so
/// the guest is past it by then rather than exactly on it.
const HEARTBEAT_CHECK_SLACK: Duration = Duration::from_millis(50);

impl Reconciler {
    /// A reconciler; `guest_events` receives every message from every guest
    /// channel it opens (the driver relays them).
    pub fn new(
        config: ReconcilerConfig,
        backends: Backends,
        switch: Option<Arc<dyn Switch>>,
        channels: GuestChannels,
        guest_events: mpsc::Sender<(Uuid, GuestMessage)>,
    ) -> Self {
        Reconciler {
            appliances: ApplianceCache::new(config.appliance_dir.as_deref()),
            gateways: GatewayHost::new(
                &config.state_dir,
                super::types::wireguard_binary_path(config.wireguard_binary.as_deref()),
            ),
            config,
            backends,
            switch,
            channels,
            guest_events,
            keys: HashMap::new(),
            reported: HashMap::new(),
            switch_caps: None,
            switch_backoff: Backoff::new(RETRY_INITIAL, RETRY_CAP),
            switch_retry_at: None,
            switch_failure: None,
            passes: 0,
            readopted_taps: BTreeSet::new(),
            gateway_backoff: Backoff::new(RETRY_INITIAL, RETRY_CAP),
            gateway_retry_at: None,
            gateway_ports: Vec::new(),
            reported_gateways: HashMap::new(),
        }
    }

    /// The settings it was made with.
    pub fn config(&self) -> &ReconcilerConfig {
        &self.config
    }

    /// The guest channels (shared with the driver).
    pub fn channels(&self) -> &GuestChannels {
        &self.channels
    }

    /// Remember that `statuses` reached the controller.
    pub fn mark_reported(&mut self, statuses: &[VmStatus]) {
        for status in statuses {
            if let Ok(id) = Uuid::parse_str(&status.vm_id) {
                self.reported.insert(id, status.clone());
            }
        }
    }

    /// Whether the controller last heard that VM `id`'s guest missed its
    /// heartbeat deadline: a heartbeat from it then calls for a pass.
    pub fn heartbeat_missed_reported(&self, id: Uuid) -> bool {
        self.reported.get(&id).is_some_and(|status| {
            status
                .conditions
                .iter()
                .any(|c| c.r#type == condition::GUEST_REGISTERED && c.reason == HEARTBEAT_MISSED)
        })
    }

    /// The heartbeat check of VM `id`'s guest, if it is registered.
    fn heartbeat(&self, id: Uuid) -> Option<HeartbeatCheck> {
        let channel = self.channels.state(id)?;
        channel.registered.then(|| {
            plan::heartbeat_check(
                channel.last_heard(),
                self.config.guest_heartbeat_deadline,
                SystemTime::now(),
            )
        })
    }

    /// Forget everything reported (after a re-registration the controller
    /// may have lost it): the next pass reports every VM again.
    pub fn forget_reported(&mut self) {
        self.reported.clear();
        self.forget_reported_gateways();
    }

    /// Remember that `statuses` of gateways reached the controller.
    pub fn mark_gateways_reported(&mut self, statuses: &[GatewayStatus]) {
        for status in statuses {
            self.reported_gateways
                .insert(status.platform_id.clone(), status.clone());
        }
    }

    /// The next pass reports every gateway again. A gateway's state at the
    /// controller can change without this node saying anything (its node
    /// revoked, then approved again), and gateways are few, so the driver
    /// does this on every resync.
    pub fn forget_reported_gateways(&mut self) {
        self.reported_gateways.clear();
    }

    /// Fetches and verifies the appliance files `desired` names by digest
    /// and points its VMs at the cached copies; the next [`Self::pass`]
    /// holds back the VMs whose files are missing or refused.
    pub async fn prepare_appliances(
        &mut self,
        desired: &mut DesiredState,
        control: &dyn ControlPlane,
    ) {
        self.appliances.prepare(desired, control).await;
    }

    /// One level-triggered pass towards `desired`.
    pub async fn pass(&mut self, desired: &DesiredState) -> PassReport {
        let now = Instant::now();
        let deep = self.passes.is_multiple_of(DEEP_EVERY);
        self.passes += 1;
        let wanted = plan::wanted_vms(desired);
        self.reported
            .retain(|id, _| wanted.iter().any(|(w, _)| w == id));
        let observed = self.observe_guests().await;
        plan::refresh_keys(&mut self.keys, &wanted, &observed, deep);
        let mut guest_plan = plan::guest_jobs(&GuestFacts {
            wanted: &wanted,
            observed: &observed,
            backends: &self.backend_kinds(),
            keys: &self.keys,
            open_channels: &self.channels.vm_ids().into_iter().collect(),
            config: &self.config,
            now,
            deep,
        });
        self.appliances.hold_back(&mut guest_plan.jobs);
        let mut report = PassReport::default();
        let after = self
            .run_jobs(guest_plan.jobs, &wanted, &observed, now, &mut report)
            .await;
        self.gateway_ports = self.reconcile_gateways(desired, now, &mut report).await;
        let ports = self
            .reconcile_switch(&wanted, &after.guests, desired, now, &mut report)
            .await;
        self.conclude(&mut report, &wanted, &after, &ports, &guest_plan.specs);
        report
    }

    /// The gateway step (see `gateways`): returns the ports the switch must
    /// carry for them.
    async fn reconcile_gateways(
        &mut self,
        desired: &DesiredState,
        now: Instant,
        report: &mut PassReport,
    ) -> Vec<VmPortSpec> {
        let (host, owner, want) = (
            self.gateways.clone(),
            self.config.owner.clone(),
            desired.clone(),
        );
        let after =
            match tokio::task::spawn_blocking(move || super::gateways::run(&host, &owner, &want))
                .await
            {
                Ok(after) => after,
                Err(err) => {
                    tracing::warn!(error = %err, "gateway step panicked");
                    super::gateways::GatewaysAfter {
                        failed: true,
                        ..Default::default()
                    }
                }
            };
        if after.failed {
            self.gateway_retry_at = Some(now + self.gateway_backoff.next_delay());
        } else {
            self.gateway_backoff.reset();
            self.gateway_retry_at = None;
        }
        self.readopted_taps.extend(after.rebuilt);
        self.reported_gateways
            .retain(|platform, _| after.statuses.contains_key(platform));
        for status in after.statuses.into_values() {
            if self.reported_gateways.get(&status.platform_id) != Some(&status) {
                report.changed_gateways.push(status.clone());
            }
            report.gateways.push(status);
        }
        report
            .actions
            .extend(
                after
                    .changes
                    .into_iter()
                    .map(|(platform_id, change)| Action::Gateway {
                        platform_id,
                        change,
                    }),
            );
        after.ports
    }

    fn backend_kinds(&self) -> BTreeMap<&'static str, BackendKind> {
        self.backends
            .all()
            .into_iter()
            .map(|(name, hv)| (name, hv.kind()))
            .collect()
    }

    /// Lists every backend's guests.
    async fn observe_guests(&self) -> Observed {
        let mut observed = Observed::default();
        for (name, hv) in self.backends.all() {
            let failure = match tokio::task::spawn_blocking(move || hv.list_owned()).await {
                Ok(Ok(guests)) => {
                    for guest in guests {
                        observed.guests.insert(guest.id, (name, guest));
                    }
                    continue;
                }
                Ok(Err(err)) => {
                    tracing::warn!(backend = name, error = %err, "cannot list guests");
                    Failure::of_hypervisor(&err)
                }
                Err(join) => {
                    tracing::error!(backend = name, error = %join, "list_owned panicked");
                    Failure::ready("HypervisorError", "listing guests failed")
                }
            };
            observed.unlisted.insert(name, failure);
        }
        observed
    }

    /// Runs a pass's guest jobs: channel and bookkeeping jobs in order, then
    /// the hypervisor calls, different VMs in parallel.
    async fn run_jobs(
        &mut self,
        jobs: Vec<Job>,
        wanted: &[(Uuid, &DesiredVm)],
        observed: &Observed,
        now: Instant,
        report: &mut PassReport,
    ) -> GuestsAfter {
        let mut host_jobs = Vec::new();
        let mut removing = BTreeSet::new();
        for job in jobs {
            match job {
                Job::CloseChannel { vm } => self.close_channel(vm, report),
                Job::OpenChannel {
                    vm,
                    backend,
                    socket,
                } => self.open_channel(vm, backend, &socket, report),
                Job::Fail { vm, failure, class } => {
                    self.record_failure(wanted, vm, failure, class, now)
                }
                Job::Remove { vm, backend } => {
                    if let Some(hv) = self.backends.get(backend).cloned() {
                        tracing::info!(vm = %vm, backend, "removing guest");
                        host_jobs.push(HostJob::Remove { hv, id: vm });
                        removing.insert(vm);
                    }
                }
                Job::Converge {
                    backend,
                    spec,
                    seen,
                    power,
                    deep,
                } => {
                    if let Some(hv) = self.backends.get(backend).cloned() {
                        host_jobs.push(HostJob::Converge {
                            hv,
                            spec,
                            seen,
                            power,
                            deep,
                        });
                    }
                }
            }
        }
        let outcomes: Vec<GuestOutcome> = stream::iter(host_jobs)
            .map(|job| async move {
                tokio::task::spawn_blocking(move || run_host_job(job))
                    .await
                    .ok()
            })
            .buffer_unordered(self.config.parallelism.max(1))
            .filter_map(|o| async move { o })
            .collect()
            .await;
        let mut after = GuestsAfter {
            guests: observed
                .guests
                .iter()
                .filter(|(id, _)| !removing.contains(id))
                .map(|(id, (_, g))| (*id, g.clone()))
                .collect(),
            unremoved: removing.clone(),
            removing,
        };
        for outcome in outcomes {
            self.take_outcome(outcome, wanted, observed, now, report, &mut after);
        }
        after
    }

    fn take_outcome(
        &mut self,
        outcome: GuestOutcome,
        wanted: &[(Uuid, &DesiredVm)],
        observed: &Observed,
        now: Instant,
        report: &mut PassReport,
        after: &mut GuestsAfter,
    ) {
        report.actions.extend(outcome.actions);
        self.readopted_taps.extend(outcome.renewed_tap);
        let id = outcome.id;
        match outcome.result {
            Ok(Some((info, restart))) => {
                if let Some(key) = self.keys.get_mut(&id) {
                    key.succeeded();
                    key.restart_required = restart;
                }
                after.guests.insert(id, info);
            }
            Ok(None) => {
                after.unremoved.remove(&id);
                self.close_channel(id, report);
                let _ = std::fs::remove_dir_all(translate::guest_dir(&self.config.state_dir, id));
            }
            Err(err) => {
                tracing::warn!(vm = %id, error = %err, class = ?err.class(), "guest operation failed");
                self.record_failure(wanted, id, Failure::of_hypervisor(&err), err.class(), now);
                if after.removing.contains(&id) {
                    // Still there: a deleting VM must not be acked.
                    if let Some((_, info)) = observed.guests.get(&id) {
                        after.guests.insert(id, info.clone());
                    }
                }
            }
        }
    }

    fn record_failure(
        &mut self,
        wanted: &[(Uuid, &DesiredVm)],
        id: Uuid,
        failure: Failure,
        class: ErrorClass,
        now: Instant,
    ) {
        let vm = wanted.iter().find(|(w, _)| *w == id).map(|(_, vm)| *vm);
        if let (Some(key), Some(vm)) = (self.keys.get_mut(&id), vm) {
            key.fail(failure, class, plan::fingerprint(vm), now);
        }
    }

    fn open_channel(
        &mut self,
        id: Uuid,
        backend: &str,
        socket: &std::path::Path,
        report: &mut PassReport,
    ) {
        let Some(hv) = self.backends.get(backend) else {
            return;
        };
        let opened = match hv.channel_socket() {
            ChannelSocket::AgentListens => self.channels.open_unix(id, socket),
            ChannelSocket::HypervisorListens => self.channels.connect_serial(id, socket),
        };
        match opened {
            Ok(rx) => {
                report.actions.push(Action::OpenChannel { vm: id });
                spawn_forwarder(
                    id,
                    rx,
                    self.guest_events.clone(),
                    self.channels.clone(),
                    super::relay::Gate::new(id, &self.config.relay),
                );
            }
            Err(err) => tracing::warn!(vm = %id, error = %err, "cannot open guest channel"),
        }
    }

    fn close_channel(&mut self, id: Uuid, report: &mut PassReport) {
        if self.channels.is_open(id) {
            self.channels.close(id);
            report.actions.push(Action::CloseChannel { vm: id });
        }
    }

    /// The switch: one atomic reconcile for the whole node.
    async fn reconcile_switch(
        &mut self,
        wanted: &[(Uuid, &DesiredVm)],
        guests: &HashMap<Uuid, GuestInfo>,
        desired: &DesiredState,
        now: Instant,
        report: &mut PassReport,
    ) -> PortsAfter {
        let mut ports = PortsAfter::default();
        let Some(switch) = self.switch.clone() else {
            let failure = Failure::port(
                "NoSwitch",
                "this agent has no OVSDB (--ovsdb) to attach ports to",
            );
            for (id, _) in wanted.iter().filter(|(_, vm)| !vm.deleting) {
                ports.failures.insert(*id, failure.clone());
            }
            ports.ok = true;
            return ports;
        };
        if self.switch_retry_at.is_some_and(|at| at > now) {
            if let Some(failure) = &self.switch_failure {
                for (id, _) in wanted {
                    ports.failures.insert(*id, failure.clone());
                }
            }
            return ports;
        }
        match self
            .try_switch(switch.as_ref(), wanted, guests, desired, report, &mut ports)
            .await
        {
            Ok(()) => {
                self.readopted_taps.clear();
                self.switch_backoff.reset();
                self.switch_retry_at = None;
                self.switch_failure = None;
                ports.ok = true;
            }
            Err(err) => {
                tracing::warn!(error = %err, "switch reconcile failed");
                let failure = Failure::port("SwitchError", err.to_string());
                self.switch_retry_at = Some(now + self.switch_backoff.next_delay());
                for (id, _) in wanted {
                    ports.failures.entry(*id).or_insert_with(|| failure.clone());
                }
                self.switch_failure = Some(failure);
            }
        }
        ports
    }

    async fn try_switch(
        &mut self,
        switch: &dyn Switch,
        wanted: &[(Uuid, &DesiredVm)],
        guests: &HashMap<Uuid, GuestInfo>,
        desired: &DesiredState,
        report: &mut PassReport,
        ports: &mut PortsAfter,
    ) -> Result<(), OvsError> {
        let (owner, bridge) = (&self.config.owner, &self.config.bridge);
        if self.switch_caps.is_none() || self.passes % DEEP_EVERY == 1 {
            self.switch_caps = Some(switch.capabilities().await?);
        }
        let observed = switch.observe(owner, bridge).await?;
        let stale: Vec<SwitchAction> = observed
            .ports
            .iter()
            .filter(|p| p.owned && self.readopted_taps.contains(&p.name))
            .map(|p| SwitchAction::RemovePort {
                port: p.name.clone(),
            })
            .collect();
        if !stale.is_empty() {
            // Removed here, added back by the reconcile below.
            switch.apply(owner, bridge, &observed, &stale).await?;
            report.actions.extend(stale.into_iter().map(Action::Switch));
        }
        let foreign: BTreeSet<&str> = observed.foreign_names.iter().map(|s| s.as_str()).collect();
        let mut planned = plan::switch_ports(wanted, guests, &foreign, self.switch_caps.as_ref());
        // The gateways' ports ride in the same transaction as the VMs'.
        planned.ports.extend(self.gateway_ports.iter().cloned());
        ports.failures.extend(planned.failures);
        let (flow_export, flow_text) = flows::plan(desired, self.config.flow_export.as_ref());
        let caps = self
            .switch_caps
            .as_ref()
            .ok_or_else(|| OvsError::Unexpected("switch capabilities were not probed".into()))?;
        let spec = SwitchSpec {
            owner: owner.clone(),
            bridge: bridge.clone(),
            uplink: plan::uplink(&self.config, &foreign),
            ports: planned.ports,
            tunnels: super::tunnels::plan(desired, &self.config),
            flow_export,
            datapath: crate::ovs::datapath::choose(self.config.datapath, caps)?,
        };
        let done = crate::ovs::reconcile(switch, &spec).await?;
        self.config.flow_export_status.set(flow_text);
        report
            .actions
            .extend(done.actions.into_iter().map(Action::Switch));
        ports.attached.extend(planned.owners);
        Ok(())
    }

    /// Statuses, convergence and the next retry of a pass.
    fn conclude(
        &self,
        report: &mut PassReport,
        wanted: &[(Uuid, &DesiredVm)],
        after: &GuestsAfter,
        ports: &PortsAfter,
        specs: &HashMap<Uuid, GuestSpec>,
    ) {
        let mut converged = ports.ok && after.unremoved.is_empty();
        for (id, vm) in wanted {
            let key = self.keys.get(id);
            converged &= key.is_none_or(|k| k.transient.is_none());
            let status = self.status_of(
                *id,
                vm,
                after.guests.get(id),
                key,
                ports.failures.get(id),
                ports.attached.contains(id),
                specs.get(id),
            );
            if self.reported.get(id) != Some(&status) {
                report.changed.push(status.clone());
            }
            report.statuses.push(status);
        }
        report.converged = converged;
        let now = Instant::now();
        let due = self.keys.values().filter_map(|k| k.retry_at);
        // A pass when a guest's heartbeat deadline runs out, so a silent
        // guest is reported within the deadline, not at the next idle pass.
        let heartbeat_due = wanted
            .iter()
            .filter_map(|(id, _)| match self.heartbeat(*id) {
                Some(HeartbeatCheck::DueIn(left)) => Some(now + left + HEARTBEAT_CHECK_SLACK),
                _ => None,
            });
        report.converged &= self.gateway_retry_at.is_none();
        report.next_retry = plan::next_retry(
            due.chain(self.switch_retry_at)
                .chain(self.gateway_retry_at)
                .chain(heartbeat_due),
            now,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn status_of(
        &self,
        id: Uuid,
        vm: &DesiredVm,
        guest: Option<&GuestInfo>,
        key: Option<&KeyState>,
        port_failure: Option<&Failure>,
        port_attached: bool,
        spec: Option<&GuestSpec>,
    ) -> VmStatus {
        let backend = plan::backend_name(&vm.backend).to_string();
        let address = vm
            .ipv4_cidr
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let mac = spec
            .and_then(|s| s.nic.as_ref())
            .map(|n| n.mac.clone())
            .unwrap_or_else(|| vm.mac.clone());
        let channel = self.channels.state(id);
        let guest_agent_version = channel
            .as_ref()
            .and_then(|c| c.agent_version.clone())
            .unwrap_or_default();
        if vm.deleting {
            let gone = guest.is_none() && port_attached_nowhere(port_failure, port_attached);
            return VmStatus {
                vm_id: id.to_string(),
                actual_state: "deleting".into(),
                address,
                mac,
                backend,
                restart_required: false,
                conditions: vec![cond(
                    condition::READY,
                    false,
                    "Deleting",
                    if gone {
                        "cleanup done"
                    } else {
                        "removing the guest and its port"
                    },
                )],
                deleted: gone,
                observed_generation: vm.generation,
                guest_agent_version,
            };
        }
        let actual_state = match guest.map(|g| g.state) {
            None => "pending",
            Some(GuestState::Running) => "running",
            Some(GuestState::Paused) => "paused",
            Some(GuestState::Stopped) => "stopped",
            Some(GuestState::Crashed) => "failed",
            Some(GuestState::Other) => "pending",
        };
        let failure = key.and_then(|k| {
            k.permanent
                .as_ref()
                .map(|(_, f)| f)
                .or(k.transient.as_ref())
        });
        let port = match (port_failure, port_attached) {
            (_, true) => cond(condition::PORT_ATTACHED, true, "Attached", ""),
            (Some(f), false) => cond(condition::PORT_ATTACHED, false, &f.reason, &f.message),
            (None, false) => cond(
                condition::PORT_ATTACHED,
                false,
                "WaitingForGuest",
                "the port is plugged once the guest exists",
            ),
        };
        let registered = channel.as_ref().is_some_and(|c| c.registered);
        // A paused or stopped guest is silent by design; only a running one
        // is held to its heartbeat.
        let heartbeat_missed =
            actual_state == "running" && self.heartbeat(id) == Some(HeartbeatCheck::Missed);
        let guest_cond = if heartbeat_missed {
            cond(
                condition::GUEST_REGISTERED,
                false,
                HEARTBEAT_MISSED,
                &format!(
                    "no heartbeat from the guest agent for more than {} s",
                    self.config.guest_heartbeat_deadline.as_secs_f64()
                ),
            )
        } else if registered {
            cond(condition::GUEST_REGISTERED, true, "Registered", "")
        } else if actual_state != "running" {
            cond(
                condition::GUEST_REGISTERED,
                false,
                "GuestNotRunning",
                "the guest agent runs only while the VM runs",
            )
        } else if channel.as_ref().is_some_and(|c| c.connected) {
            cond(
                condition::GUEST_REGISTERED,
                false,
                "WaitingForHello",
                channel
                    .as_ref()
                    .and_then(|c| c.last_error.as_deref())
                    .unwrap_or("connected, no hello yet"),
            )
        } else {
            cond(
                condition::GUEST_REGISTERED,
                false,
                "WaitingForGuestAgent",
                "no guest agent connected to the channel yet",
            )
        };
        let want = Power::of(vm).name();
        let ready = if let Some(f) = failure {
            cond(condition::READY, false, &f.reason, &f.message)
        } else if actual_state != want {
            cond(
                condition::READY,
                false,
                "Converging",
                &format!("{actual_state}, want {want}"),
            )
        } else if port.status != "True" {
            cond(condition::READY, false, "PortNotAttached", &port.message)
        } else if want == "running" && guest_cond.status != "True" {
            cond(
                condition::READY,
                false,
                "GuestNotRegistered",
                &guest_cond.message,
            )
        } else {
            cond(condition::READY, true, "Converged", "")
        };
        let actual_state = if failure.is_some_and(|_| key.is_some_and(|k| k.permanent.is_some()))
            && guest.is_none()
        {
            "failed"
        } else {
            actual_state
        };
        VmStatus {
            vm_id: id.to_string(),
            actual_state: actual_state.into(),
            address,
            mac,
            backend,
            restart_required: key.is_some_and(|k| k.restart_required)
                || guest.is_some_and(|g| g.restart_pending),
            conditions: vec![ready, port, guest_cond],
            deleted: false,
            observed_generation: vm.generation,
            guest_agent_version,
        }
    }
}

fn port_attached_nowhere(port_failure: Option<&Failure>, port_attached: bool) -> bool {
    // A deleting VM's port is left out of the switch spec; a successful
    // switch reconcile (no failure recorded for the VM) removed it.
    !port_attached && port_failure.is_none_or(|f| f.reason == "NoSwitch")
}

fn cond(kind: &str, ok: bool, reason: &str, message: &str) -> Condition {
    Condition {
        r#type: kind.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
    }
}

/// Moves a VM's guest messages to the node-wide event queue, within the
/// guest's relay budget: a flooding guest is cut off here, before it can
/// fill the queue every other VM's messages go through.
fn spawn_forwarder(
    id: Uuid,
    mut rx: mpsc::Receiver<GuestMessage>,
    events: mpsc::Sender<(Uuid, GuestMessage)>,
    channels: GuestChannels,
    mut gate: super::relay::Gate,
) {
    tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            if !gate.admit(&message, &channels) {
                continue;
            }
            if events.send((id, message)).await.is_err() {
                return;
            }
        }
    });
}
