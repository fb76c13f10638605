//! Backend-neutral guest management for the node agent.
//!
//! The agent's reconcile loop is level-triggered: it re-reads the desired
//! state from the controller and the actual state from the host, and calls the
//! operations of [`Hypervisor`] until they match. Every operation is therefore
//! idempotent: starting a running guest, stopping a stopped one or undefining a
//! missing one succeeds without doing anything.
//!
//! # Blocking
//! The trait is synchronous on purpose. libvirt's client library (crate
//! `virt`) blocks on its RPC socket and the namespace backend runs `ip` and
//! writes cgroup files. From async code, call every method inside
//! `tokio::task::spawn_blocking` (hold the backend in an `Arc`).
//!
//! # Concurrency
//! Backends are `Send + Sync`; calls for different guests may run in
//! parallel. Calls for the *same* guest must not overlap (the reconcile loop
//! never works on one key twice at once): the namespace backend's
//! read-modify-write of a guest's state file is not locked.
//!
//! # Ownership
//! A backend only ever lists or touches guests that carry our tag: a libvirt
//! `<metadata>` element in [`OWNER_XML_NAMESPACE`], or a state file of the
//! namespace backend. Anything else on the host is invisible to it.
//!
//! # Layout
//! - `spec`: [`GuestSpec`] and its validation and hash.
//! - `domain_xml`: libvirt domain XML for Xen PV, QEMU/KVM and the test driver.
//! - `libvirt`: [`LibvirtHypervisor`], the libvirt backend.
//! - `namespace`: [`NamespaceHypervisor`], network namespace + cgroup slivers.
//! - `tap`: moving a libvirt guest's tap into the agent's network namespace.

mod domain_xml;
mod libvirt;
mod namespace;
mod spec;
mod tap;

pub use domain_xml::{domain_xml, DomainFlavor, QemuAccel, XEN_CHANNEL_NAME};
pub use libvirt::LibvirtHypervisor;
pub use namespace::{
    probe_guest_egress_shaping, probe_tc_police, EgressShaping, NamespaceConfig,
    NamespaceHypervisor, HOST_PORT_TXQUEUELEN,
};
pub use spec::{BootImage, GuestSpec, NicAttach, NicSpec, RateLimit};

use uuid::Uuid;

/// XML namespace of the `<metadata>` element that marks a libvirt domain as ours.
pub const OWNER_XML_NAMESPACE: &str = "https://measurelab.dev/xmlns/domain/1";

/// Which kind of backend runs the guests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// Xen PV domains through libvirt (`xen:///system`).
    Xen,
    /// QEMU (TCG) or KVM through libvirt (`qemu:///system`).
    Qemu,
    /// libvirt's in-process test driver (`test:///default`): real API, no guests.
    LibvirtTest,
    /// Network namespace + cgroup slivers (OS-level virtualization).
    Namespace,
}

/// Observed run state of a guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestState {
    /// Defined but not running.
    Stopped,
    /// Running.
    Running,
    /// Frozen (libvirt suspend, cgroup freeze).
    Paused,
    /// Stopped abnormally (libvirt crashed state).
    Crashed,
    /// In a transition (starting, shutting down) or a state we do not model.
    Other,
}

/// What the backend reports about one of our guests.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuestInfo {
    /// The VM id (libvirt domain UUID).
    pub id: Uuid,
    /// The guest's name on the host (libvirt domain name or namespace name).
    pub name: String,
    /// Virtual platform the guest belongs to, if the spec named one.
    pub platform_id: Option<Uuid>,
    /// [`GuestSpec::spec_hash`] of the spec it was defined from.
    pub spec_hash: String,
    /// Current run state.
    pub state: GuestState,
    /// vCPUs currently in effect.
    pub vcpus: u32,
    /// Memory currently in effect, MiB.
    pub memory_mib: u64,
    /// The guest runs an older definition than `spec_hash`: it was redefined
    /// while running and needs a stop + start to pick the change up.
    pub restart_pending: bool,
}

/// Result of [`Hypervisor::define`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefineOutcome {
    /// The guest did not exist and was defined.
    Created,
    /// The guest exists with the same spec hash; nothing was done.
    Unchanged,
    /// The guest existed with another spec; its definition was replaced.
    Updated {
        /// The guest is running: changes that cannot be applied live take
        /// effect only after a stop and start.
        restart_required: bool,
    },
}

/// Result of an in-place resize.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeOutcome {
    /// The new value is in effect now (and persisted).
    Applied,
    /// The new value was persisted but takes effect only after a restart
    /// (the backend cannot change it on a running guest, e.g. above its maximum).
    RestartRequired,
}

/// Who binds a guest's channel socket ([`GuestSpec::channel_socket`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelSocket {
    /// The agent listens and the guest agent connects (namespace guests).
    AgentListens,
    /// The hypervisor binds it for the guest's serial port and the agent
    /// connects (libvirt guests).
    HypervisorListens,
}

/// Result of [`Hypervisor::adopt_nic`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NicAdoption {
    /// The backend plugs nothing the agent must adopt (namespace veths, the
    /// libvirt test driver, NICs libvirt attaches itself).
    NotNeeded,
    /// The guest's tap is in the agent's namespace and up already.
    Present,
    /// The tap was moved into the agent's namespace, or brought up there.
    Moved,
}

/// Whether retrying the same call later may succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Requeue with backoff: connection lost, daemon busy, state in flux.
    Transient,
    /// Retrying the same spec will fail again: set a False condition and
    /// wait for the spec to change.
    Permanent,
}

/// Errors of the hypervisor module.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// The spec is invalid; nothing was applied.
    #[error("invalid guest spec: field `{field}`: {reason}")]
    InvalidSpec {
        /// Field path, e.g. `nic.mac`.
        field: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// No guest of ours has this id.
    #[error("guest {id} is not defined")]
    NotFound {
        /// The VM id.
        id: Uuid,
    },
    /// Something with this name or id exists on the host but is not ours.
    #[error("{what} exists but is not owned by measurelab; refusing to touch it")]
    NotOwned {
        /// What was found (domain name, namespace name).
        what: String,
    },
    /// The backend cannot do this operation at all.
    #[error("{backend:?} backend does not support {operation}")]
    Unsupported {
        /// The backend.
        backend: BackendKind,
        /// The operation.
        operation: &'static str,
    },
    /// A libvirt call failed.
    #[error("libvirt {operation} failed ({code}): {message}")]
    Libvirt {
        /// The operation we attempted.
        operation: &'static str,
        /// libvirt's error number, e.g. `NoConnect`.
        code: String,
        /// libvirt's message.
        message: String,
        /// Classified from the error number.
        class: ErrorClass,
    },
    /// An external command (`ip`, `ethtool`) failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Exit status and stderr.
        detail: String,
        /// Whether retrying may help.
        class: ErrorClass,
    },
    /// A file operation (cgroup, state file) failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing, with the path.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The guest is in a state in which the operation is not possible.
    #[error("guest {id}: cannot {operation} while {state:?}")]
    InvalidState {
        /// The VM id.
        id: Uuid,
        /// The operation.
        operation: &'static str,
        /// The state it is in.
        state: GuestState,
    },
}

impl HypervisorError {
    /// Whether a retry of the same call may succeed.
    pub fn class(&self) -> ErrorClass {
        match self {
            HypervisorError::InvalidSpec { .. }
            | HypervisorError::NotOwned { .. }
            | HypervisorError::Unsupported { .. } => ErrorClass::Permanent,
            // A missing guest or a state conflict can be fixed by the next
            // reconcile pass (define, start) - not by waiting for a new spec.
            HypervisorError::NotFound { .. } | HypervisorError::InvalidState { .. } => {
                ErrorClass::Transient
            }
            HypervisorError::Libvirt { class, .. } | HypervisorError::Command { class, .. } => {
                *class
            }
            HypervisorError::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::InvalidInput => {
                    ErrorClass::Permanent
                }
                _ => ErrorClass::Transient,
            },
        }
    }

    /// Shorthand for `class() == Transient`.
    pub fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        HypervisorError::Io {
            context: context.into(),
            source,
        }
    }
}

/// A backend that runs guests. All methods block; see the module docs.
///
/// Idempotency contract (the reconcile loop relies on it):
/// - `define` of an identical spec is `Unchanged`;
/// - `start` of a running guest, `stop` of a stopped one, `pause` of a paused
///   one and `resume` of a running one succeed without effect;
/// - `undefine` of a missing guest succeeds; `undefine` of a running guest
///   stops it first.
pub trait Hypervisor: Send + Sync {
    /// The backend's kind.
    fn kind(&self) -> BackendKind;

    /// Creates the guest, or replaces its definition if the spec changed.
    /// Does not start it.
    fn define(&self, spec: &GuestSpec) -> Result<DefineOutcome, HypervisorError>;

    /// Boots a defined guest. `NotFound` if it is not defined.
    fn start(&self, id: Uuid) -> Result<(), HypervisorError>;

    /// Freezes a running guest.
    fn pause(&self, id: Uuid) -> Result<(), HypervisorError>;

    /// Thaws a paused guest.
    fn resume(&self, id: Uuid) -> Result<(), HypervisorError>;

    /// Hard-stops the guest (libvirt destroy, cgroup kill); it stays defined.
    fn stop(&self, id: Uuid) -> Result<(), HypervisorError>;

    /// Stops and removes the guest and everything the backend created for it.
    fn undefine(&self, id: Uuid) -> Result<(), HypervisorError>;

    /// Our guest with this id, or `None`.
    fn info(&self, id: Uuid) -> Result<Option<GuestInfo>, HypervisorError>;

    /// All guests we own on this host, and only those.
    fn list_owned(&self) -> Result<Vec<GuestInfo>, HypervisorError>;

    /// Who binds the guests' channel sockets. The default suits backends
    /// whose guests dial the agent (namespace guests, fakes).
    fn channel_socket(&self) -> ChannelSocket {
        ChannelSocket::AgentListens
    }

    /// Makes the NIC of `spec`'s running (or paused) guest usable by this
    /// agent's switch: a host device the backend created elsewhere is moved
    /// into the calling thread's network namespace and brought up.
    /// Idempotent. The default is for backends whose NIC needs nothing.
    fn adopt_nic(&self, spec: &GuestSpec) -> Result<NicAdoption, HypervisorError> {
        let _ = spec;
        Ok(NicAdoption::NotNeeded)
    }

    /// Changes the vCPU count, live if the backend can.
    fn set_vcpus(&self, id: Uuid, vcpus: u32) -> Result<ResizeOutcome, HypervisorError>;

    /// Changes the memory size, live if the backend can.
    fn set_memory(&self, id: Uuid, memory_mib: u64) -> Result<ResizeOutcome, HypervisorError>;

    /// Sets (`Some`) or removes (`None`) the cap on traffic out of the guest
    /// ([`GuestSpec::egress_limit`]) without restarting it, and persists it
    /// so the stored spec (and its hash) follows. Idempotent.
    ///
    /// The default is for backends that cannot shape (fakes, future ones).
    fn set_egress_limit(
        &self,
        id: Uuid,
        limit: Option<RateLimit>,
    ) -> Result<ResizeOutcome, HypervisorError> {
        let _ = (id, limit);
        Err(HypervisorError::Unsupported {
            backend: self.kind(),
            operation: "egress limits",
        })
    }
}
