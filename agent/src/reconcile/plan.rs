//! The planning half of a pass: desired VMs plus observed guests (plus what
//! the reconciler remembers per key) give plain-data jobs. No I/O and no
//! clock: `engine` observes, hands the facts and the time in, and runs the
//! jobs it gets back.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use measurelab_api::node_v1::{DesiredState, DesiredVm};
use tokio::time::Instant;
use uuid::Uuid;

use super::translate::{self, TranslateError};
use super::types::{condition, ReconcilerConfig, RETRY_CAP, RETRY_INITIAL};
use crate::hypervisor::{
    BackendKind, ErrorClass, GuestInfo, GuestSpec, GuestState, HypervisorError,
};
use crate::ovs::{SwitchCapabilities, UplinkSpec, VmPortSpec};
use measurelab_backoff::Backoff;

/// Why a VM is not as desired; becomes a False condition.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Failure {
    /// Condition the failure sets False.
    pub condition: &'static str,
    pub reason: String,
    pub message: String,
}

impl Failure {
    pub fn ready(reason: &str, message: impl Into<String>) -> Self {
        Failure {
            condition: condition::READY,
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn port(reason: &str, message: impl Into<String>) -> Self {
        Failure {
            condition: condition::PORT_ATTACHED,
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn of_hypervisor(err: &HypervisorError) -> Self {
        let reason = match err {
            HypervisorError::InvalidSpec { .. } => "InvalidSpec",
            HypervisorError::NotOwned { .. } => "NameConflict",
            HypervisorError::OutsideApplianceDir { .. } => "ApplianceOutsideDir",
            HypervisorError::Unsupported { .. } => "Unsupported",
            HypervisorError::NotFound { .. } => "GuestMissing",
            HypervisorError::InvalidState { .. } => "GuestBusy",
            HypervisorError::Libvirt { .. } => "HypervisorError",
            HypervisorError::Command { .. } => "CommandFailed",
            HypervisorError::Io { .. } => "HostIoError",
        };
        Failure::ready(reason, err.to_string())
    }

    fn of_translate(err: &TranslateError) -> Self {
        Failure::ready("InvalidSpec", err.to_string())
    }
}

/// What the reconciler remembers about one VM between passes.
#[derive(Debug)]
pub(crate) struct KeyState {
    backoff: Backoff,
    pub retry_at: Option<Instant>,
    /// Fingerprint of the desired VM a Permanent failure belongs to.
    pub permanent: Option<(u64, Failure)>,
    pub transient: Option<Failure>,
    pub restart_required: bool,
}

impl KeyState {
    pub fn new() -> Self {
        KeyState {
            backoff: Backoff::new(RETRY_INITIAL, RETRY_CAP),
            retry_at: None,
            permanent: None,
            transient: None,
            restart_required: false,
        }
    }

    /// Records `failure`: Transient ones are retried after the backoff,
    /// Permanent ones once the desired VM (`print`) changes.
    pub fn fail(&mut self, failure: Failure, class: ErrorClass, print: u64, now: Instant) {
        match class {
            ErrorClass::Transient => {
                self.retry_at = Some(now + self.backoff.next_delay());
                self.transient = Some(failure);
            }
            ErrorClass::Permanent => self.permanent = Some((print, failure)),
        }
    }

    pub fn succeeded(&mut self) {
        self.backoff.reset();
        self.retry_at = None;
        self.transient = None;
        self.permanent = None;
    }

    fn waiting(&self, now: Instant) -> bool {
        self.retry_at.is_some_and(|at| at > now)
    }
}

/// The power state a desired VM asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Power {
    Running,
    Paused,
    Stopped,
}

impl Power {
    pub fn of(vm: &DesiredVm) -> Self {
        match vm.power_state.as_str() {
            "paused" => Power::Paused,
            "stopped" => Power::Stopped,
            _ => Power::Running,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Power::Running => "running",
            Power::Paused => "paused",
            Power::Stopped => "stopped",
        }
    }
}

/// One call that moves a guest towards a power state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PowerStep {
    Start,
    Pause,
    Resume,
    Stop,
}

/// The calls that take a guest in `state` to `want`, in order; `None` when
/// the state is one we cannot act from.
pub(crate) fn power_steps(want: Power, state: GuestState) -> Option<&'static [PowerStep]> {
    use PowerStep::*;
    Some(match (want, state) {
        (_, GuestState::Other) => return None,
        (Power::Running, GuestState::Stopped | GuestState::Crashed) => &[Start],
        (Power::Running, GuestState::Paused) => &[Resume],
        (Power::Paused, GuestState::Stopped | GuestState::Crashed) => &[Start, Pause],
        (Power::Paused, GuestState::Running) => &[Pause],
        (Power::Stopped, GuestState::Running | GuestState::Paused | GuestState::Crashed) => &[Stop],
        _ => &[],
    })
}

/// Hash of a desired VM: a Permanent failure holds until it changes.
pub(crate) fn fingerprint(vm: &DesiredVm) -> u64 {
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

/// The controller's backend name in canonical form (`""` is namespace).
pub(crate) fn backend_name(name: &str) -> &'static str {
    match name {
        "libvirt" => "libvirt",
        "" | "namespace" => "namespace",
        _ => "unknown",
    }
}

/// The desired VMs by id; a VM whose id does not parse cannot be keyed.
pub(crate) fn wanted_vms(desired: &DesiredState) -> Vec<(Uuid, &DesiredVm)> {
    let mut wanted = Vec::new();
    for vm in &desired.vms {
        match translate::vm_id(vm) {
            Ok(id) => wanted.push((id, vm)),
            Err(err) => tracing::error!(vm = %vm.name, error = %err, "skipping desired VM"),
        }
    }
    wanted
}

/// What the backends reported at the start of a pass.
#[derive(Debug, Default)]
pub(crate) struct Observed {
    /// Our guests by id, with the name of the backend that listed them.
    pub guests: HashMap<Uuid, (&'static str, GuestInfo)>,
    /// Backends that could not list their guests. They are not acted on: no
    /// orphan removal from a partial view.
    pub unlisted: HashMap<&'static str, Failure>,
}

/// Something the engine does for a pass.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Job {
    /// Stop and remove a guest we own that is not wanted where it is (an
    /// orphan, a deleting VM, or a VM moved to another backend).
    Remove { vm: Uuid, backend: &'static str },
    /// Open a guest channel, before the guest starts, so a namespace guest's
    /// first connect finds the listener.
    OpenChannel {
        vm: Uuid,
        backend: &'static str,
        socket: std::path::PathBuf,
    },
    /// Close the channel of a VM that is deleting or gone.
    CloseChannel { vm: Uuid },
    /// Define the guest if needed and drive it to `power`.
    Converge {
        backend: &'static str,
        spec: Box<GuestSpec>,
        seen: Option<GuestInfo>,
        power: Power,
        /// Define even if the spec hash matches (recreates hand-deleted pieces).
        deep: bool,
    },
    /// The VM cannot be acted on; record why.
    Fail {
        vm: Uuid,
        failure: Failure,
        class: ErrorClass,
    },
}

/// The facts a guest plan is made from.
pub(crate) struct GuestFacts<'a> {
    pub wanted: &'a [(Uuid, &'a DesiredVm)],
    pub observed: &'a Observed,
    /// The backends this node has, by canonical name.
    pub backends: &'a BTreeMap<&'static str, BackendKind>,
    pub keys: &'a HashMap<Uuid, KeyState>,
    pub open_channels: &'a BTreeSet<Uuid>,
    pub config: &'a ReconcilerConfig,
    pub now: Instant,
    pub deep: bool,
}

/// The guest jobs of a pass, and the spec of every desired VM that has one.
#[derive(Debug, Default)]
pub(crate) struct GuestPlan {
    pub jobs: Vec<Job>,
    pub specs: HashMap<Uuid, GuestSpec>,
}

/// Forgets keys of VMs no longer desired, adds new ones and clears
/// Permanent failures that no longer hold: the spec changed, or (a name
/// conflict) the guest showed up as ours or a deep pass may find the host
/// cleared by hand.
pub(crate) fn refresh_keys(
    keys: &mut HashMap<Uuid, KeyState>,
    wanted: &[(Uuid, &DesiredVm)],
    observed: &Observed,
    deep: bool,
) {
    keys.retain(|id, _| wanted.iter().any(|(w, _)| w == id));
    for (id, vm) in wanted {
        let key = keys.entry(*id).or_insert_with(KeyState::new);
        let Some((print, failure)) = &key.permanent else {
            continue;
        };
        let spec_changed = *print != fingerprint(vm);
        let conflict_may_be_gone =
            failure.reason == "NameConflict" && (deep || observed.guests.contains_key(id));
        if spec_changed || conflict_may_be_gone {
            key.succeeded();
        }
    }
}

/// What to do about every guest: remove the unwanted, converge the wanted
/// whose backoff expired, open and close channels. Keys must be refreshed.
pub(crate) fn guest_jobs(facts: &GuestFacts<'_>) -> GuestPlan {
    let mut plan = GuestPlan::default();
    let wanted: HashMap<Uuid, &DesiredVm> = facts.wanted.iter().copied().collect();
    let mut removals: Vec<(Uuid, &'static str)> = facts
        .observed
        .guests
        .iter()
        .filter(|(id, (backend, _))| {
            !wanted
                .get(id)
                .is_some_and(|vm| !vm.deleting && backend_name(&vm.backend) == *backend)
        })
        .map(|(id, (backend, _))| (*id, *backend))
        .collect();
    removals.sort();
    for (vm, backend) in removals {
        plan.jobs.push(Job::Remove { vm, backend });
    }
    for vm in facts.open_channels {
        if wanted.get(vm).is_none_or(|d| d.deleting) {
            plan.jobs.push(Job::CloseChannel { vm: *vm });
        }
    }
    for (id, vm) in facts.wanted {
        if let Some((job, spec)) = guest_job(facts, *id, vm) {
            if let Some(spec) = spec {
                plan.specs.insert(*id, spec);
            }
            plan.jobs.extend(job);
        }
    }
    plan
}

/// The jobs of one desired VM and its spec, if it translates.
fn guest_job(
    facts: &GuestFacts<'_>,
    id: Uuid,
    vm: &DesiredVm,
) -> Option<(Vec<Job>, Option<GuestSpec>)> {
    let key = facts.keys.get(&id)?;
    if vm.deleting || key.permanent.is_some() {
        return None;
    }
    let fail = |failure, class| Job::Fail {
        vm: id,
        failure,
        class,
    };
    let backend = backend_name(&vm.backend);
    let Some(kind) = facts.backends.get(backend) else {
        let failure = Failure::ready(
            "BackendUnavailable",
            format!("this node has no {backend:?} backend"),
        );
        return Some((vec![fail(failure, ErrorClass::Permanent)], None));
    };
    if let Some(failure) = facts.observed.unlisted.get(backend) {
        let jobs = if key.waiting(facts.now) {
            vec![]
        } else {
            vec![fail(failure.clone(), ErrorClass::Transient)]
        };
        return Some((jobs, None));
    }
    let spec = match translate::guest_spec(vm, *kind, facts.config) {
        Ok(spec) => spec,
        Err(err) => {
            tracing::warn!(vm = %id, error = %err, "desired VM is invalid");
            let failure = Failure::of_translate(&err);
            return Some((vec![fail(failure, ErrorClass::Permanent)], None));
        }
    };
    if key.waiting(facts.now) {
        return Some((vec![], Some(spec)));
    }
    let mut jobs = Vec::new();
    if let Some(socket) = spec
        .channel_socket
        .clone()
        .filter(|_| !facts.open_channels.contains(&id))
    {
        jobs.push(Job::OpenChannel {
            vm: id,
            backend,
            socket,
        });
    }
    jobs.push(Job::Converge {
        backend,
        spec: Box::new(spec.clone()),
        seen: facts
            .observed
            .guests
            .get(&id)
            .filter(|(b, _)| *b == backend)
            .map(|(_, g)| g.clone()),
        power: Power::of(vm),
        deep: facts.deep,
    });
    Some((jobs, Some(spec)))
}

/// The switch's VM ports for a pass, and why the others are left out.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct PortPlan {
    pub ports: Vec<VmPortSpec>,
    /// The VM of each entry of `ports`.
    pub owners: Vec<Uuid>,
    pub failures: HashMap<Uuid, Failure>,
}

/// Ports of the desired VMs whose guest exists, minus those whose name a
/// foreign row holds or whose QoS the switch cannot do.
pub(crate) fn switch_ports(
    wanted: &[(Uuid, &DesiredVm)],
    guests: &HashMap<Uuid, GuestInfo>,
    foreign: &BTreeSet<&str>,
    caps: Option<&SwitchCapabilities>,
) -> PortPlan {
    let mut plan = PortPlan::default();
    for (id, vm) in wanted {
        if vm.deleting || !guests.contains_key(id) {
            continue;
        }
        match translate::port_spec(vm).map_err(|err| Failure::port("InvalidSpec", err.to_string()))
        {
            Ok(port) => match refused(&port, foreign, caps) {
                Some(failure) => {
                    plan.failures.insert(*id, failure);
                }
                None => {
                    plan.ports.push(port);
                    plan.owners.push(*id);
                }
            },
            Err(failure) => {
                plan.failures.insert(*id, failure);
            }
        }
    }
    plan
}

fn refused(
    port: &VmPortSpec,
    foreign: &BTreeSet<&str>,
    caps: Option<&SwitchCapabilities>,
) -> Option<Failure> {
    if foreign.contains(port.name.as_str()) {
        return Some(Failure::port(
            "PortNameConflict",
            format!("port {:?} exists on the switch but is not ours", port.name),
        ));
    }
    let caps = caps?;
    if port.ingress_policing.is_some() && !caps.ingress_policing.is_available() {
        return Some(Failure::port(
            "EgressLimitUnsupported",
            format!(
                "the QoS policy limits egress, which needs ingress policing: {}",
                caps.ingress_policing.reason().unwrap_or("unavailable")
            ),
        ));
    }
    if port.qos.is_some() && !caps.linux_htb.is_available() {
        return Some(Failure::port(
            "IngressLimitUnsupported",
            format!(
                "linux-htb is unavailable: {}",
                caps.linux_htb.reason().unwrap_or("unknown")
            ),
        ));
    }
    None
}

/// The uplink port (single or bonded), unless a foreign row holds its name
/// or a member's.
pub(crate) fn uplink(config: &ReconcilerConfig, foreign: &BTreeSet<&str>) -> Option<UplinkSpec> {
    let spec = match (&config.uplink_bond, &config.uplink) {
        (Some(bond), _) => bond.to_spec(),
        (None, Some(name)) => UplinkSpec {
            name: name.clone(),
            members: vec![name.clone()],
            bond: None,
        },
        (None, None) => return None,
    };
    let taken = std::iter::once(&spec.name)
        .chain(&spec.members)
        .any(|name| foreign.contains(name.as_str()));
    (!taken).then_some(spec)
}

/// Whether a registered guest's heartbeat is overdue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeartbeatCheck {
    /// Last heard longer than the deadline ago.
    Missed,
    /// Heard in time; overdue after this long unless heard again.
    DueIn(Duration),
}

/// Judge `last_heard` (hello or heartbeat) against `deadline` at `now`. A
/// clock step back (last heard "in the future") counts as just heard.
pub(crate) fn heartbeat_check(
    last_heard: Option<std::time::SystemTime>,
    deadline: Duration,
    now: std::time::SystemTime,
) -> HeartbeatCheck {
    let silent = last_heard
        .and_then(|t| now.duration_since(t).ok())
        .unwrap_or(Duration::ZERO);
    if silent > deadline {
        HeartbeatCheck::Missed
    } else {
        HeartbeatCheck::DueIn(deadline - silent)
    }
}

/// How long until the earliest of `due` (`None` if none is pending).
pub(crate) fn next_retry(due: impl Iterator<Item = Instant>, now: Instant) -> Option<Duration> {
    due.min().map(|at| at.saturating_duration_since(now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovs::KernelFeature;
    use measurelab_api::node_v1::{DesiredAppliance, DesiredQos};

    fn id(n: u8) -> Uuid {
        Uuid::from_bytes([n, 0xaa, 0, 0, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, n])
    }

    fn vm(n: u8) -> DesiredVm {
        DesiredVm {
            id: id(n).to_string(),
            name: format!("vm{n}"),
            vlan_tag: 101,
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
            port_name: format!("ml-vm{n}"),
            ..Default::default()
        }
    }

    fn guest(n: u8, state: GuestState) -> GuestInfo {
        GuestInfo {
            id: id(n),
            name: format!("vm{n}"),
            platform_id: None,
            spec_hash: "h".into(),
            state,
            vcpus: 1,
            memory_mib: 64,
            restart_pending: false,
        }
    }

    /// One planning case: the facts, and the jobs expected in the compact
    /// form of [`describe`].
    struct Case {
        name: &'static str,
        desired: Vec<DesiredVm>,
        observed: Vec<(&'static str, GuestInfo)>,
        unlisted: Vec<&'static str>,
        backends: Vec<(&'static str, BackendKind)>,
        open_channels: Vec<u8>,
        /// VMs whose key waits for its backoff.
        waiting: Vec<u8>,
        expect: Vec<&'static str>,
    }

    impl Default for Case {
        fn default() -> Self {
            Case {
                name: "",
                desired: vec![],
                observed: vec![],
                unlisted: vec![],
                backends: vec![("namespace", BackendKind::Namespace)],
                open_channels: vec![],
                waiting: vec![],
                expect: vec![],
            }
        }
    }

    fn short(vm: Uuid) -> String {
        format!("vm{}", vm.as_bytes()[0])
    }

    fn describe(job: &Job) -> String {
        match job {
            Job::Remove { vm, backend } => format!("remove {} from {backend}", short(*vm)),
            Job::OpenChannel { vm, backend, .. } => format!("open {} on {backend}", short(*vm)),
            Job::CloseChannel { vm } => format!("close {}", short(*vm)),
            Job::Converge {
                backend,
                spec,
                seen,
                power,
                deep,
            } => format!(
                "converge {} on {backend} from {:?} to {power:?}{}",
                short(spec.id),
                seen.as_ref().map(|g| g.state),
                if *deep { " deep" } else { "" }
            ),
            Job::Fail { vm, failure, class } => {
                format!("fail {} {class:?} {}", short(*vm), failure.reason)
            }
        }
    }

    fn run(case: Case) {
        let now = Instant::now();
        let wanted: Vec<(Uuid, &DesiredVm)> = case
            .desired
            .iter()
            .map(|vm| (Uuid::parse_str(&vm.id).unwrap(), vm))
            .collect();
        let observed = Observed {
            guests: case
                .observed
                .into_iter()
                .map(|(backend, g)| (g.id, (backend, g)))
                .collect(),
            unlisted: case
                .unlisted
                .into_iter()
                .map(|b| (b, Failure::ready("HypervisorError", "down")))
                .collect(),
        };
        let mut keys = HashMap::new();
        refresh_keys(&mut keys, &wanted, &observed, false);
        for n in case.waiting {
            keys.get_mut(&id(n)).unwrap().retry_at = Some(now + Duration::from_secs(1));
        }
        let plan = guest_jobs(&GuestFacts {
            wanted: &wanted,
            observed: &observed,
            backends: &case.backends.into_iter().collect(),
            keys: &keys,
            open_channels: &case.open_channels.into_iter().map(id).collect(),
            config: &ReconcilerConfig::new("/var/lib/measurelab/agent", "n1"),
            now,
            deep: false,
        });
        let got: Vec<String> = plan.jobs.iter().map(describe).collect();
        assert_eq!(got, case.expect, "case {:?}", case.name);
    }

    #[test]
    fn guest_jobs_from_desired_and_observed() {
        let deleting = DesiredVm {
            deleting: true,
            ..vm(1)
        };
        let on_libvirt = DesiredVm {
            backend: "libvirt".into(),
            appliance: Some(DesiredAppliance {
                name: "busybox".into(),
                kernel: "/srv/vmlinuz".into(),
                initrd: "/srv/initrd.img".into(),
                ..Default::default()
            }),
            ..vm(1)
        };
        let bad_mac = DesiredVm {
            mac: "01:00:5e:00:00:01".into(),
            ..vm(1)
        };
        let paused = DesiredVm {
            power_state: "paused".into(),
            ..vm(1)
        };
        let cases = vec![
            Case {
                name: "new VM: channel first, then define and start",
                desired: vec![vm(1)],
                expect: vec![
                    "open vm1 on namespace",
                    "converge vm1 on namespace from None to Running",
                ],
                ..Case::default()
            },
            Case {
                name: "existing guest with its channel open",
                desired: vec![paused],
                observed: vec![("namespace", guest(1, GuestState::Running))],
                open_channels: vec![1],
                expect: vec!["converge vm1 on namespace from Some(Running) to Paused"],
                ..Case::default()
            },
            Case {
                name: "orphan guest and orphan channel",
                observed: vec![("namespace", guest(2, GuestState::Running))],
                open_channels: vec![2],
                expect: vec!["remove vm2 from namespace", "close vm2"],
                ..Case::default()
            },
            Case {
                name: "deleting VM: removed, channel closed, nothing converged",
                desired: vec![deleting],
                observed: vec![("namespace", guest(1, GuestState::Running))],
                open_channels: vec![1],
                expect: vec!["remove vm1 from namespace", "close vm1"],
                ..Case::default()
            },
            Case {
                name: "VM moved to another backend",
                desired: vec![on_libvirt.clone()],
                observed: vec![("namespace", guest(1, GuestState::Running))],
                backends: vec![
                    ("namespace", BackendKind::Namespace),
                    ("libvirt", BackendKind::LibvirtTest),
                ],
                expect: vec![
                    "remove vm1 from namespace",
                    "open vm1 on libvirt",
                    "converge vm1 on libvirt from None to Running",
                ],
                ..Case::default()
            },
            Case {
                name: "backend missing on this node",
                desired: vec![on_libvirt],
                expect: vec!["fail vm1 Permanent BackendUnavailable"],
                ..Case::default()
            },
            Case {
                name: "backend cannot list: retried, its guests not removed",
                desired: vec![vm(1)],
                unlisted: vec!["namespace"],
                expect: vec!["fail vm1 Transient HypervisorError"],
                ..Case::default()
            },
            Case {
                name: "backend cannot list and the key waits: nothing",
                desired: vec![vm(1)],
                unlisted: vec!["namespace"],
                waiting: vec![1],
                expect: vec![],
                ..Case::default()
            },
            Case {
                name: "invalid spec is permanent",
                desired: vec![bad_mac],
                expect: vec!["fail vm1 Permanent InvalidSpec"],
                ..Case::default()
            },
            Case {
                name: "key in backoff: left alone, others go on",
                desired: vec![vm(1), vm(2)],
                waiting: vec![1],
                open_channels: vec![2],
                expect: vec!["converge vm2 on namespace from None to Running"],
                ..Case::default()
            },
        ];
        for case in cases {
            run(case);
        }
    }

    #[test]
    fn spec_of_a_waiting_key_is_still_known() {
        let desired = [vm(1)];
        let wanted: Vec<(Uuid, &DesiredVm)> = vec![(id(1), &desired[0])];
        let mut keys = HashMap::new();
        let observed = Observed::default();
        refresh_keys(&mut keys, &wanted, &observed, false);
        let now = Instant::now();
        keys.get_mut(&id(1)).unwrap().retry_at = Some(now + Duration::from_secs(1));
        let plan = guest_jobs(&GuestFacts {
            wanted: &wanted,
            observed: &observed,
            backends: &BTreeMap::from([("namespace", BackendKind::Namespace)]),
            keys: &keys,
            open_channels: &BTreeSet::new(),
            config: &ReconcilerConfig::new("/srv/agent", "n1"),
            now,
            deep: false,
        });
        assert_eq!(plan.jobs, vec![]);
        // Statuses report the spec's MAC, so it must be there.
        let nic = plan.specs[&id(1)].nic.clone().unwrap();
        assert_eq!(nic.mac, "52:54:00:00:00:01");
    }

    #[test]
    fn heartbeat_is_missed_only_past_the_deadline() {
        let t0 = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let deadline = Duration::from_secs(15);
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(
            heartbeat_check(Some(t0), deadline, at(10)),
            HeartbeatCheck::DueIn(Duration::from_secs(5))
        );
        assert_eq!(
            heartbeat_check(Some(t0), deadline, at(15)),
            HeartbeatCheck::DueIn(Duration::ZERO)
        );
        assert_eq!(
            heartbeat_check(Some(t0), deadline, at(16)),
            HeartbeatCheck::Missed
        );
        // The clock went back: not a missed heartbeat.
        assert_eq!(
            heartbeat_check(Some(at(60)), deadline, t0),
            HeartbeatCheck::DueIn(deadline)
        );
        assert_eq!(
            heartbeat_check(None, deadline, t0),
            HeartbeatCheck::DueIn(deadline)
        );
    }

    #[test]
    fn power_steps_for_every_state() {
        use GuestState::*;
        use PowerStep::*;
        let table: [(Power, GuestState, Option<&[PowerStep]>); 15] = [
            (Power::Running, Stopped, Some(&[Start])),
            (Power::Running, Crashed, Some(&[Start])),
            (Power::Running, Paused, Some(&[Resume])),
            (Power::Running, Running, Some(&[])),
            (Power::Running, Other, None),
            (Power::Paused, Stopped, Some(&[Start, Pause])),
            (Power::Paused, Crashed, Some(&[Start, Pause])),
            (Power::Paused, Running, Some(&[Pause])),
            (Power::Paused, Paused, Some(&[])),
            (Power::Paused, Other, None),
            (Power::Stopped, Running, Some(&[Stop])),
            (Power::Stopped, Paused, Some(&[Stop])),
            (Power::Stopped, Crashed, Some(&[Stop])),
            (Power::Stopped, Stopped, Some(&[])),
            (Power::Stopped, Other, None),
        ];
        for (want, state, steps) in table {
            assert_eq!(power_steps(want, state), steps, "{want:?} from {state:?}");
        }
    }

    #[test]
    fn permanent_failures_clear_when_they_may_no_longer_hold() {
        let a = vm(1);
        let wanted = vec![(id(1), &a)];
        let now = Instant::now();
        let with_failure = |reason: &str, print: u64| {
            let mut keys = HashMap::new();
            let mut key = KeyState::new();
            key.fail(
                Failure::ready(reason, "x"),
                ErrorClass::Permanent,
                print,
                now,
            );
            keys.insert(id(1), key);
            // A key of a VM no longer desired is forgotten.
            keys.insert(id(9), KeyState::new());
            keys
        };
        let observed_a = Observed {
            guests: HashMap::from([(id(1), ("namespace", guest(1, GuestState::Running)))]),
            ..Observed::default()
        };
        let none = Observed::default();
        // (reason, fingerprint matches, deep, observed, still permanent)
        let table = [
            ("InvalidSpec", true, false, &none, true),
            ("InvalidSpec", true, true, &observed_a, true),
            ("InvalidSpec", false, false, &none, false),
            ("NameConflict", true, false, &none, true),
            ("NameConflict", true, true, &none, false),
            ("NameConflict", true, false, &observed_a, false),
        ];
        for (reason, same, deep, observed, kept) in table {
            let print = if same { fingerprint(&a) } else { 0 };
            let mut keys = with_failure(reason, print);
            refresh_keys(&mut keys, &wanted, observed, deep);
            assert_eq!(keys.len(), 1);
            assert_eq!(
                keys[&id(1)].permanent.is_some(),
                kept,
                "{reason} same={same} deep={deep}"
            );
        }
    }

    #[test]
    fn transient_failures_back_off_and_success_resets() {
        let now = Instant::now();
        let mut key = KeyState::new();
        key.fail(
            Failure::ready("CommandFailed", "x"),
            ErrorClass::Transient,
            0,
            now,
        );
        let first = key.retry_at.unwrap() - now;
        assert!(first <= RETRY_INITIAL, "{first:?}");
        assert!(key.waiting(now) && !key.waiting(now + RETRY_INITIAL));
        key.fail(
            Failure::ready("CommandFailed", "x"),
            ErrorClass::Transient,
            0,
            now,
        );
        assert!(
            key.retry_at.unwrap() - now > RETRY_INITIAL,
            "the delay doubles"
        );
        key.succeeded();
        assert_eq!((key.retry_at, key.transient.is_some()), (None, false));
    }

    fn caps(htb: bool) -> SwitchCapabilities {
        SwitchCapabilities {
            ovs_version: None,
            datapath_types: vec!["netdev".into()],
            iface_types: vec![],
            linux_htb: if htb {
                KernelFeature::Available
            } else {
                KernelFeature::Missing("no sch_htb".into())
            },
            ingress_policing: KernelFeature::Missing("no act_police".into()),
            kernel_datapath: KernelFeature::Missing("no module".into()),
        }
    }

    #[test]
    fn switch_ports_leave_out_what_cannot_be_attached() {
        let shaped = DesiredVm {
            qos: Some(DesiredQos {
                ingress_max_kbps: 20_000,
                ..Default::default()
            }),
            ..vm(3)
        };
        let deleting = DesiredVm {
            deleting: true,
            ..vm(4)
        };
        let bad_vlan = DesiredVm {
            vlan_tag: 0,
            ..vm(5)
        };
        let (a, no_guest) = (vm(1), vm(2));
        let desired = [&a, &no_guest, &shaped, &deleting, &bad_vlan];
        let wanted: Vec<(Uuid, &DesiredVm)> = desired
            .iter()
            .map(|vm| (Uuid::parse_str(&vm.id).unwrap(), *vm))
            .collect();
        let guests: HashMap<Uuid, GuestInfo> = [1, 3, 4, 5]
            .into_iter()
            .map(|n| (id(n), guest(n, GuestState::Running)))
            .collect();
        let reasons = |plan: &PortPlan| {
            let mut r: Vec<(String, String)> = plan
                .failures
                .iter()
                .map(|(vm, f)| (short(*vm), f.reason.clone()))
                .collect();
            r.sort();
            r
        };

        let plan = switch_ports(&wanted, &guests, &BTreeSet::new(), Some(&caps(true)));
        let names: Vec<&str> = plan.ports.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["ml-vm1", "ml-vm3"]);
        assert_eq!(plan.owners, [id(1), id(3)]);
        assert_eq!(reasons(&plan), [("vm5".into(), "InvalidSpec".into())]);

        let foreign = BTreeSet::from(["ml-vm1"]);
        let plan = switch_ports(&wanted, &guests, &foreign, Some(&caps(false)));
        assert_eq!(plan.owners, Vec::<Uuid>::new());
        assert_eq!(
            reasons(&plan),
            [
                ("vm1".into(), "PortNameConflict".into()),
                ("vm3".into(), "IngressLimitUnsupported".into()),
                ("vm5".into(), "InvalidSpec".into()),
            ]
        );
    }

    #[test]
    fn uplink_yields_to_a_foreign_port() {
        let mut config = ReconcilerConfig::new("/srv/agent", "n1");
        assert_eq!(uplink(&config, &BTreeSet::new()), None);
        config.uplink = Some("uplink0".into());
        assert_eq!(
            uplink(&config, &BTreeSet::new()).map(|u| u.members),
            Some(vec!["uplink0".to_string()])
        );
        assert_eq!(uplink(&config, &BTreeSet::from(["uplink0"])), None);
    }

    #[test]
    fn a_configured_bond_becomes_the_uplink() {
        let mut config = ReconcilerConfig::new("/srv/agent", "n1");
        config.uplink_bond = Some(crate::reconcile::uplink::UplinkBondSettings {
            name: "bond0".into(),
            members: vec!["uplink0".into(), "uplink1".into()],
            mode: crate::reconcile::uplink::UplinkBondMode::ActiveBackup,
        });
        let spec = uplink(&config, &BTreeSet::new()).unwrap();
        assert_eq!(spec.name, "bond0");
        assert_eq!(spec.members, vec!["uplink0", "uplink1"]);
        assert_eq!(
            spec.bond.map(|b| (b.mode, b.lacp)),
            Some((crate::ovs::BondMode::ActiveBackup, false))
        );
        // A foreign member is not taken over.
        assert_eq!(uplink(&config, &BTreeSet::from(["uplink1"])), None);
    }
}
