//! One reconcile pass: observe, diff against the desired state, act, compute
//! statuses. The loop around it lives in `driver`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use measurelab_api::guest::GuestMessage;
use measurelab_api::node_v1::{Condition, DesiredState, DesiredVm, VmStatus};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::translate::{self, TranslateError};
use super::{condition, Backends, ReconcilerConfig, RETRY_CAP, RETRY_INITIAL};
use crate::backoff::Backoff;
use crate::guest_channel::GuestChannels;
use crate::hypervisor::{
    BackendKind, DefineOutcome, ErrorClass, GuestInfo, GuestSpec, GuestState, Hypervisor,
    HypervisorError, NicAttach,
};
use crate::ovs::{
    FlowExportSpec, OvsError, Switch, SwitchAction, SwitchCapabilities, SwitchSpec, UplinkSpec,
    VmPortSpec,
};

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
    /// No Transient error is pending: the node did everything the desired
    /// state asks that it can do.
    pub converged: bool,
    /// When the earliest requeued key is due.
    pub next_retry: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
struct Failure {
    /// Condition the failure sets False.
    condition: &'static str,
    reason: String,
    message: String,
}

#[derive(Debug)]
struct KeyState {
    backoff: Backoff,
    retry_at: Option<Instant>,
    /// Fingerprint of the desired VM a Permanent failure belongs to.
    permanent: Option<(u64, Failure)>,
    transient: Option<Failure>,
    restart_required: bool,
}

impl KeyState {
    fn new() -> Self {
        KeyState {
            backoff: Backoff::new(RETRY_INITIAL, RETRY_CAP),
            retry_at: None,
            permanent: None,
            transient: None,
            restart_required: false,
        }
    }

    fn requeue(&mut self, failure: Failure, now: Instant) {
        self.retry_at = Some(now + self.backoff.next_delay());
        self.transient = Some(failure);
    }

    fn succeeded(&mut self) {
        self.backoff.reset();
        self.retry_at = None;
        self.transient = None;
        self.permanent = None;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Power {
    Running,
    Paused,
    Stopped,
}

fn power_of(vm: &DesiredVm) -> Power {
    match vm.power_state.as_str() {
        "paused" => Power::Paused,
        "stopped" => Power::Stopped,
        _ => Power::Running,
    }
}

fn fingerprint(vm: &DesiredVm) -> u64 {
    // Debug output of a prost message covers every field; good enough to
    // notice that the controller changed the spec.
    let text = format!("{vm:?}");
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn hv_failure(err: &HypervisorError) -> Failure {
    let reason = match err {
        HypervisorError::InvalidSpec { .. } => "InvalidSpec",
        HypervisorError::NotOwned { .. } => "NameConflict",
        HypervisorError::Unsupported { .. } => "Unsupported",
        HypervisorError::NotFound { .. } => "GuestMissing",
        HypervisorError::InvalidState { .. } => "GuestBusy",
        HypervisorError::Libvirt { .. } => "HypervisorError",
        HypervisorError::Command { .. } => "CommandFailed",
        HypervisorError::Io { .. } => "HostIoError",
    };
    Failure {
        condition: condition::READY,
        reason: reason.into(),
        message: err.to_string(),
    }
}

fn translate_failure(err: &TranslateError) -> Failure {
    Failure {
        condition: condition::READY,
        reason: "InvalidSpec".into(),
        message: err.to_string(),
    }
}

/// Result of converging one guest (runs on a blocking thread).
struct GuestOutcome {
    id: Uuid,
    actions: Vec<Action>,
    result: Result<Option<(GuestInfo, bool)>, HypervisorError>,
}

enum GuestJob {
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

fn run_job(job: GuestJob) -> GuestOutcome {
    let mut actions = Vec::new();
    match job {
        GuestJob::Converge {
            hv,
            spec,
            seen,
            power,
            deep,
        } => {
            let id = spec.id;
            let mut result =
                converge_guest(hv.as_ref(), &spec, seen, power, deep, &mut actions).map(Some);
            let tap = spec
                .nic
                .as_ref()
                .filter(|nic| nic.attach == NicAttach::TapOnly)
                .map(|nic| nic.port_name.clone());
            let has_tap = matches!(hv.kind(), BackendKind::Qemu | BackendKind::Xen);
            if let (Ok(Some((info, _))), Some(tap), true) = (&result, tap, has_tap) {
                if matches!(info.state, GuestState::Running | GuestState::Paused) {
                    match adopt_tap(&tap, &spec.name) {
                        Ok(true) => actions.push(Action::MoveTap { vm: id }),
                        Ok(false) => {}
                        Err(err) => result = Err(err),
                    }
                }
            }
            GuestOutcome {
                id,
                actions,
                result,
            }
        }
        GuestJob::Remove { hv, id } => {
            let result = hv.undefine(id).map(|()| None);
            actions.push(Action::Undefine { vm: id });
            GuestOutcome {
                id,
                actions,
                result,
            }
        }
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
    let needs_define = match &seen {
        None => true,
        Some(info) => deep || info.spec_hash != spec.spec_hash(),
    };
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
    match (power, state) {
        (Power::Running, GuestState::Stopped | GuestState::Crashed) => {
            hv.start(id)?;
            actions.push(Action::Start { vm: id });
            restart_required = false;
        }
        (Power::Running, GuestState::Paused) => {
            hv.resume(id)?;
            actions.push(Action::Resume { vm: id });
        }
        (Power::Paused, GuestState::Stopped | GuestState::Crashed) => {
            hv.start(id)?;
            actions.push(Action::Start { vm: id });
            hv.pause(id)?;
            actions.push(Action::Pause { vm: id });
            restart_required = false;
        }
        (Power::Paused, GuestState::Running) => {
            hv.pause(id)?;
            actions.push(Action::Pause { vm: id });
        }
        (Power::Stopped, GuestState::Running | GuestState::Paused | GuestState::Crashed) => {
            hv.stop(id)?;
            actions.push(Action::Stop { vm: id });
            restart_required = false;
        }
        (_, GuestState::Other) => {
            return Err(HypervisorError::InvalidState {
                id,
                operation: "converge",
                state: GuestState::Other,
            })
        }
        _ => {}
    }
    let info = if actions.is_empty() {
        seen.ok_or(HypervisorError::NotFound { id })?
    } else {
        hv.info(id)?.ok_or(HypervisorError::NotFound { id })?
    };
    Ok((info, restart_required))
}

/// libvirtd creates a TapOnly guest's tap in its own (usually the host's)
/// network namespace. An agent running in a node namespace (as in a lab)
/// moves it here, where the node's OVS can open it, and brings it up.
/// Returns whether it changed anything.
///
/// "Here" is the calling thread's namespace, not the process's: tests (and
/// any embedding) run the agent on threads that entered the node namespace,
/// and the `ip` children forked from this thread inherit it.
///
/// Where the tap is: the namespace of the domain's QEMU process (libvirt's
/// pid file), else libvirtd's, else pid 1's - the first of those that holds
/// it. Sandboxes may forbid opening pid 1's namespace, so it comes last.
fn adopt_tap(port: &str, domain: &str) -> Result<bool, HypervisorError> {
    match link_flags(port)? {
        Some(flags) if flags.split(',').any(|f| f == "UP") => return Ok(false),
        // Moved by an agent killed before it brought the tap up.
        Some(_) => {
            run_ip(&["ip", "link", "set", "dev", port, "up"])?;
            return Ok(true);
        }
        None => {}
    }
    let here = std::fs::read_link("/proc/thread-self/ns/net")
        .map_err(|e| HypervisorError::io("read /proc/thread-self/ns/net", e))?;
    // `ip` resolves a netns argument containing '/' as a path; this thread's
    // namespace file stays valid while the thread waits for the command.
    let thread = std::fs::read_link("/proc/thread-self")
        .map_err(|e| HypervisorError::io("read /proc/thread-self", e))?;
    let target = format!("/proc/{}/ns/net", thread.display());
    let pid_files = [
        format!("/run/libvirt/qemu/{domain}.pid"),
        "/run/libvirtd.pid".to_string(),
        "/run/virtqemud.pid".to_string(),
    ];
    let mut pids: Vec<String> = pid_files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .map(|text| text.trim().to_string())
        .filter(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    pids.push("1".into());
    let mut tried = Vec::new();
    for pid in pids {
        let namespace = format!("/proc/{pid}/ns/net");
        match std::fs::read_link(&namespace) {
            Ok(ns) if ns != here && !tried.contains(&ns) => tried.push(ns),
            _ => continue,
        }
        let holds_tap = std::process::Command::new("nsenter")
            .arg(format!("--net={namespace}"))
            .args(["ip", "link", "show", "dev", port])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !holds_tap {
            continue;
        }
        run_ip(&[
            "nsenter",
            &format!("--net={namespace}"),
            "ip",
            "link",
            "set",
            "dev",
            port,
            "netns",
            &target,
        ])?;
        run_ip(&["ip", "link", "set", "dev", port, "up"])?;
        return Ok(true);
    }
    // libvirt creates the tap before QEMU starts, so a running guest has one.
    Err(HypervisorError::Command {
        command: format!("ip link show dev {port}"),
        detail: format!(
            "the tap of running domain {domain} is neither in this network namespace nor in the domain's, libvirtd's or pid 1's (of those readable)"
        ),
        class: ErrorClass::Transient,
    })
}

/// The `<FLAGS>` of `port` in this thread's namespace; `None` if it is not here.
fn link_flags(port: &str) -> Result<Option<String>, HypervisorError> {
    let output = std::process::Command::new("ip")
        .args(["-o", "link", "show", "dev", port])
        .output()
        .map_err(|e| HypervisorError::Command {
            command: format!("ip -o link show dev {port}"),
            detail: e.to_string(),
            class: ErrorClass::Transient,
        })?;
    if !output.status.success() {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(flags, _)| flags.to_string()))
}

fn run_ip(step: &[&str]) -> Result<(), HypervisorError> {
    let output = std::process::Command::new(step[0])
        .args(&step[1..])
        .output()
        .map_err(|e| HypervisorError::Command {
            command: step.join(" "),
            detail: e.to_string(),
            class: ErrorClass::Transient,
        })?;
    if !output.status.success() {
        return Err(HypervisorError::Command {
            command: step.join(" "),
            detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            class: ErrorClass::Transient,
        });
    }
    Ok(())
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
}

/// Every this many passes (and on the first) each guest is re-defined.
const DEEP_EVERY: u64 = 10;

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
        }
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

    /// Forget everything reported (after a re-registration the controller
    /// may have lost it): the next pass reports every VM again.
    pub fn forget_reported(&mut self) {
        self.reported.clear();
    }

    /// One level-triggered pass towards `desired`.
    pub async fn pass(&mut self, desired: &DesiredState) -> PassReport {
        let now = Instant::now();
        let deep = self.passes.is_multiple_of(DEEP_EVERY);
        self.passes += 1;
        let mut report = PassReport::default();

        // Observe every backend. A backend that cannot list is not acted on
        // (no orphan removal from a partial view).
        let mut observed: HashMap<Uuid, (&'static str, GuestInfo)> = HashMap::new();
        let mut listed_ok: BTreeSet<&'static str> = BTreeSet::new();
        let mut list_errors: HashMap<&'static str, HypervisorError> = HashMap::new();
        for (name, hv) in self.backends.all() {
            match tokio::task::spawn_blocking(move || hv.list_owned()).await {
                Ok(Ok(guests)) => {
                    listed_ok.insert(name);
                    for guest in guests {
                        observed.insert(guest.id, (name, guest));
                    }
                }
                Ok(Err(err)) => {
                    tracing::warn!(backend = name, error = %err, "cannot list guests");
                    list_errors.insert(name, err);
                }
                Err(join) => tracing::error!(backend = name, error = %join, "list_owned panicked"),
            }
        }

        // Desired VMs by id; a VM whose id does not parse cannot be keyed.
        let mut wanted: Vec<(Uuid, &DesiredVm)> = Vec::new();
        for vm in &desired.vms {
            match translate::vm_id(vm) {
                Ok(id) => wanted.push((id, vm)),
                Err(err) => tracing::error!(vm = %vm.name, error = %err, "skipping desired VM"),
            }
        }
        let wanted_ids: HashMap<Uuid, &DesiredVm> = wanted.iter().copied().collect();
        self.keys.retain(|id, _| wanted_ids.contains_key(id));
        self.reported.retain(|id, _| wanted_ids.contains_key(id));

        // Plan guest jobs.
        let mut jobs: Vec<GuestJob> = Vec::new();
        let mut specs: HashMap<Uuid, GuestSpec> = HashMap::new();
        let mut removing: BTreeSet<Uuid> = BTreeSet::new();
        for (id, (backend, info)) in &observed {
            let keep = wanted_ids
                .get(id)
                .is_some_and(|vm| !vm.deleting && backend_name(&vm.backend) == *backend);
            if !keep {
                if let Some(hv) = self.backends.get(backend) {
                    tracing::info!(vm = %id, guest = %info.name, backend, "removing guest");
                    jobs.push(GuestJob::Remove {
                        hv: hv.clone(),
                        id: *id,
                    });
                    removing.insert(*id);
                }
            }
        }
        for (id, vm) in &wanted {
            let key = self.keys.entry(*id).or_insert_with(KeyState::new);
            let print = fingerprint(vm);
            if key.permanent.as_ref().is_some_and(|(p, _)| *p != print) {
                // The spec changed: try again from scratch.
                key.succeeded();
            }
            // A name conflict is about the host, not the spec: it is gone
            // once the guest shows up as ours (a previous agent's define
            // finished) and may be cleared by hand, so deep passes retry it.
            if key
                .permanent
                .as_ref()
                .is_some_and(|(_, f)| f.reason == "NameConflict")
                && (deep || observed.contains_key(id))
            {
                key.succeeded();
            }
            if vm.deleting {
                if self.channels.is_open(*id) {
                    self.channels.close(*id);
                    report.actions.push(Action::CloseChannel { vm: *id });
                }
                continue;
            }
            if key.permanent.is_some() {
                continue;
            }
            let name = backend_name(&vm.backend);
            let Some(hv) = self.backends.get(name).cloned() else {
                key.permanent = Some((
                    print,
                    Failure {
                        condition: condition::READY,
                        reason: "BackendUnavailable".into(),
                        message: format!("this node has no {name:?} backend"),
                    },
                ));
                continue;
            };
            if !listed_ok.contains(name) {
                let failure = match list_errors.get(name) {
                    Some(err) => hv_failure(err),
                    None => Failure {
                        condition: condition::READY,
                        reason: "HypervisorError".into(),
                        message: "listing guests failed".into(),
                    },
                };
                if key.retry_at.is_none_or(|at| at <= now) {
                    key.requeue(failure, now);
                }
                continue;
            }
            let spec = match translate::guest_spec(vm, hv.kind(), &self.config) {
                Ok(spec) => spec,
                Err(err) => {
                    tracing::warn!(vm = %id, error = %err, "desired VM is invalid");
                    key.permanent = Some((print, translate_failure(&err)));
                    continue;
                }
            };
            specs.insert(*id, spec.clone());
            if key.retry_at.is_some_and(|at| at > now) {
                continue;
            }
            // Open the channel before the guest starts, so a namespace
            // guest's first connect finds the listener.
            if !self.channels.is_open(*id) {
                if let Some(path) = spec.channel_socket.clone() {
                    let opened = if hv.kind() == BackendKind::Namespace {
                        self.channels.open_unix(*id, &path)
                    } else {
                        self.channels.connect_serial(*id, &path)
                    };
                    match opened {
                        Ok(rx) => {
                            report.actions.push(Action::OpenChannel { vm: *id });
                            spawn_forwarder(*id, rx, self.guest_events.clone());
                        }
                        Err(err) => {
                            tracing::warn!(vm = %id, error = %err, "cannot open guest channel")
                        }
                    }
                }
            }
            jobs.push(GuestJob::Converge {
                hv,
                spec: Box::new(spec),
                seen: observed
                    .get(id)
                    .filter(|(b, _)| *b == name)
                    .map(|(_, g)| g.clone()),
                power: power_of(vm),
                deep,
            });
        }

        // Run guest jobs, different VMs in parallel.
        let outcomes: Vec<GuestOutcome> = stream::iter(jobs)
            .map(|job| async move { tokio::task::spawn_blocking(move || run_job(job)).await.ok() })
            .buffer_unordered(self.config.parallelism.max(1))
            .filter_map(|o| async move { o })
            .collect()
            .await;
        let mut guests: HashMap<Uuid, GuestInfo> = observed
            .iter()
            .filter(|(id, _)| !removing.contains(id))
            .map(|(id, (_, g))| (*id, g.clone()))
            .collect();
        let mut removed: BTreeSet<Uuid> = BTreeSet::new();
        for outcome in outcomes {
            report.actions.extend(outcome.actions);
            let id = outcome.id;
            match outcome.result {
                Ok(Some((info, restart))) => {
                    if let Some(key) = self.keys.get_mut(&id) {
                        key.succeeded();
                        key.restart_required = restart;
                    }
                    guests.insert(id, info);
                }
                Ok(None) => {
                    removed.insert(id);
                    if self.channels.is_open(id) {
                        self.channels.close(id);
                        report.actions.push(Action::CloseChannel { vm: id });
                    }
                    let _ =
                        std::fs::remove_dir_all(translate::guest_dir(&self.config.state_dir, id));
                }
                Err(err) => {
                    tracing::warn!(vm = %id, error = %err, class = ?err.class(), "guest operation failed");
                    if let Some(key) = self.keys.get_mut(&id) {
                        let failure = hv_failure(&err);
                        match err.class() {
                            ErrorClass::Transient => key.requeue(failure, now),
                            ErrorClass::Permanent => {
                                let print = wanted_ids.get(&id).map(|vm| fingerprint(vm));
                                key.permanent = print.map(|p| (p, failure));
                            }
                        }
                    }
                    if removing.contains(&id) {
                        // Still there: a deleting VM must not be acked.
                        if let Some((_, info)) = observed.get(&id) {
                            guests.insert(id, info.clone());
                        }
                    }
                }
            }
        }
        // A libvirt guest started here has a new tap even when libvirtd
        // shares our namespace (nothing moved); a moved tap is new to us.
        for action in &report.actions {
            let (Action::MoveTap { vm } | Action::Start { vm }) = action else {
                continue;
            };
            // The test driver makes no taps.
            let libvirt = wanted_ids
                .get(vm)
                .is_some_and(|d| backend_name(&d.backend) == "libvirt")
                && self
                    .backends
                    .get("libvirt")
                    .is_some_and(|hv| matches!(hv.kind(), BackendKind::Qemu | BackendKind::Xen));
            let tap = specs
                .get(vm)
                .and_then(|s| s.nic.as_ref())
                .filter(|nic| nic.attach == NicAttach::TapOnly);
            if let (true, Some(nic)) = (libvirt, tap) {
                self.readopted_taps.insert(nic.port_name.clone());
            }
        }
        // Orphan channels (VM gone from the desired state).
        for id in self.channels.vm_ids() {
            if wanted_ids.get(&id).is_none_or(|vm| vm.deleting) {
                self.channels.close(id);
                report.actions.push(Action::CloseChannel { vm: id });
            }
        }

        // The switch: one atomic reconcile for the whole node.
        let mut port_failures: HashMap<Uuid, Failure> = HashMap::new();
        let mut attached: BTreeSet<Uuid> = BTreeSet::new();
        let switch_ok = self
            .reconcile_switch(
                &wanted,
                &guests,
                now,
                &mut report,
                &mut port_failures,
                &mut attached,
            )
            .await;

        // Statuses.
        let mut converged = switch_ok && !removing.iter().any(|id| !removed.contains(id));
        for (id, vm) in &wanted {
            let key = self.keys.get(id);
            if key.is_some_and(|k| k.transient.is_some()) {
                converged = false;
            }
            let status = self.status_of(
                *id,
                vm,
                guests.get(id),
                key,
                port_failures.get(id),
                attached.contains(id),
                specs.get(id),
            );
            if self.reported.get(id) != Some(&status) {
                report.changed.push(status.clone());
            }
            report.statuses.push(status);
        }
        report.converged = converged;
        let next = self
            .keys
            .values()
            .filter_map(|k| k.retry_at)
            .chain(self.switch_retry_at)
            .min();
        report.next_retry = next.map(|at| at.saturating_duration_since(Instant::now()));
        report
    }

    #[allow(clippy::too_many_arguments)]
    async fn reconcile_switch(
        &mut self,
        wanted: &[(Uuid, &DesiredVm)],
        guests: &HashMap<Uuid, GuestInfo>,
        now: Instant,
        report: &mut PassReport,
        port_failures: &mut HashMap<Uuid, Failure>,
        attached: &mut BTreeSet<Uuid>,
    ) -> bool {
        let Some(switch) = self.switch.clone() else {
            for (id, vm) in wanted {
                if !vm.deleting {
                    port_failures.insert(
                        *id,
                        Failure {
                            condition: condition::PORT_ATTACHED,
                            reason: "NoSwitch".into(),
                            message: "this agent has no OVSDB (--ovsdb) to attach ports to".into(),
                        },
                    );
                }
            }
            return true;
        };
        if self.switch_retry_at.is_some_and(|at| at > now) {
            let failure = self.switch_failure.clone();
            for (id, _) in wanted {
                if let Some(f) = &failure {
                    port_failures.insert(*id, f.clone());
                }
            }
            return false;
        }
        let switch_error = |err: &OvsError| Failure {
            condition: condition::PORT_ATTACHED,
            reason: "SwitchError".into(),
            message: err.to_string(),
        };
        if self.switch_caps.is_none() || self.passes % DEEP_EVERY == 1 {
            match switch.capabilities().await {
                Ok(caps) => self.switch_caps = Some(caps),
                Err(err) => {
                    self.switch_failed(switch_error(&err), now, wanted, port_failures);
                    return false;
                }
            }
        }
        let observed = match switch
            .observe(&self.config.owner, &self.config.bridge)
            .await
        {
            Ok(observed) => observed,
            Err(err) => {
                self.switch_failed(switch_error(&err), now, wanted, port_failures);
                return false;
            }
        };
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
            if let Err(err) = switch
                .apply(&self.config.owner, &self.config.bridge, &observed, &stale)
                .await
            {
                self.switch_failed(switch_error(&err), now, wanted, port_failures);
                return false;
            }
            report.actions.extend(stale.into_iter().map(Action::Switch));
        }
        let foreign: BTreeSet<&str> = observed.foreign_names.iter().map(|s| s.as_str()).collect();
        let caps = self.switch_caps.clone();
        let mut ports: Vec<VmPortSpec> = Vec::new();
        let mut port_owner: Vec<Uuid> = Vec::new();
        for (id, vm) in wanted {
            if vm.deleting || !guests.contains_key(id) {
                continue;
            }
            let port = match translate::port_spec(vm) {
                Ok(port) => port,
                Err(err) => {
                    port_failures.insert(
                        *id,
                        Failure {
                            condition: condition::PORT_ATTACHED,
                            reason: "InvalidSpec".into(),
                            message: err.to_string(),
                        },
                    );
                    continue;
                }
            };
            let refuse = |reason: &str, message: String| Failure {
                condition: condition::PORT_ATTACHED,
                reason: reason.into(),
                message,
            };
            if foreign.contains(port.name.as_str()) {
                port_failures.insert(
                    *id,
                    refuse(
                        "PortNameConflict",
                        format!("port {:?} exists on the switch but is not ours", port.name),
                    ),
                );
                continue;
            }
            if let Some(caps) = &caps {
                if port.ingress_policing.is_some() && !caps.ingress_policing.is_available() {
                    port_failures.insert(
                        *id,
                        refuse(
                            "EgressLimitUnsupported",
                            format!(
                                "the QoS policy limits egress, which needs ingress policing: {}",
                                caps.ingress_policing.reason().unwrap_or("unavailable")
                            ),
                        ),
                    );
                    continue;
                }
                if port.qos.is_some() && !caps.linux_htb.is_available() {
                    port_failures.insert(
                        *id,
                        refuse(
                            "IngressLimitUnsupported",
                            format!(
                                "linux-htb is unavailable: {}",
                                caps.linux_htb.reason().unwrap_or("unknown")
                            ),
                        ),
                    );
                    continue;
                }
            }
            ports.push(port);
            port_owner.push(*id);
        }
        let uplink = self
            .config
            .uplink
            .as_ref()
            .filter(|name| !foreign.contains(name.as_str()))
            .map(|name| UplinkSpec {
                name: name.clone(),
                members: vec![name.clone()],
                bond: None,
            });
        let spec = SwitchSpec {
            owner: self.config.owner.clone(),
            bridge: self.config.bridge.clone(),
            uplink,
            ports,
            flow_export: FlowExportSpec::default(),
        };
        match crate::ovs::reconcile(switch.as_ref(), &spec).await {
            Ok(done) => {
                report
                    .actions
                    .extend(done.actions.into_iter().map(Action::Switch));
                self.readopted_taps.clear();
                self.switch_backoff.reset();
                self.switch_retry_at = None;
                self.switch_failure = None;
                attached.extend(port_owner);
                true
            }
            Err(err) => {
                tracing::warn!(error = %err, "switch reconcile failed");
                self.switch_failed(switch_error(&err), now, wanted, port_failures);
                false
            }
        }
    }

    fn switch_failed(
        &mut self,
        failure: Failure,
        now: Instant,
        wanted: &[(Uuid, &DesiredVm)],
        port_failures: &mut HashMap<Uuid, Failure>,
    ) {
        self.switch_retry_at = Some(now + self.switch_backoff.next_delay());
        for (id, _) in wanted {
            port_failures.entry(*id).or_insert_with(|| failure.clone());
        }
        self.switch_failure = Some(failure);
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
        let backend = backend_name(&vm.backend).to_string();
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
        let channel = self.channels.state(id);
        let registered = channel.as_ref().is_some_and(|c| c.registered);
        let guest_cond = if registered {
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
        let want = match power_of(vm) {
            Power::Running => "running",
            Power::Paused => "paused",
            Power::Stopped => "stopped",
        };
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
        } else if want == "running" && !registered {
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
        }
    }
}

fn port_attached_nowhere(port_failure: Option<&Failure>, port_attached: bool) -> bool {
    // A deleting VM's port is left out of the switch spec; a successful
    // switch reconcile (no failure recorded for the VM) removed it.
    !port_attached && port_failure.is_none_or(|f| f.reason == "NoSwitch")
}

fn backend_name(name: &str) -> &'static str {
    match name {
        "libvirt" => "libvirt",
        "" | "namespace" => "namespace",
        _ => "unknown",
    }
}

fn cond(kind: &str, ok: bool, reason: &str, message: &str) -> Condition {
    Condition {
        r#type: kind.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
    }
}

fn spawn_forwarder(
    id: Uuid,
    mut rx: mpsc::Receiver<GuestMessage>,
    events: mpsc::Sender<(Uuid, GuestMessage)>,
) {
    tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            if events.send((id, message)).await.is_err() {
                return;
            }
        }
    });
}
