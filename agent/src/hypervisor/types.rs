//! Values and errors shared by every backend and every caller of a
//! [`Hypervisor`](super::Hypervisor): kept apart from the parent so backends
//! import them without importing the module that re-exports the backends.

use measurelab_hostnet::HostnetError;
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
    /// [`GuestSpec::spec_hash`](super::GuestSpec::spec_hash) of the spec it was defined from.
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

/// Result of [`Hypervisor::define`](super::Hypervisor::define).
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

/// Who binds a guest's channel socket ([`GuestSpec::channel_socket`](super::GuestSpec::channel_socket)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelSocket {
    /// The agent listens and the guest agent connects (namespace guests).
    AgentListens,
    /// The hypervisor binds it for the guest's serial port and the agent
    /// connects (libvirt guests).
    HypervisorListens,
}

/// Result of [`Hypervisor::adopt_nic`](super::Hypervisor::adopt_nic).
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
    /// An appliance file lies outside the operator's appliance directory:
    /// the guest would boot from (and a disk would expose) an arbitrary
    /// host file, so it is not defined.
    #[error("{field} {path} lies outside the appliance directory {dir}: {reason}")]
    OutsideApplianceDir {
        /// Spec field, e.g. `boot.disk`.
        field: &'static str,
        /// The path as the spec gave it.
        path: std::path::PathBuf,
        /// The configured appliance directory.
        dir: std::path::PathBuf,
        /// What the check found (where it resolves to, a `..`).
        reason: String,
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
            | HypervisorError::OutsideApplianceDir { .. }
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

    /// The same failed command with `class` instead of the class
    /// [`From<HostnetError>`] guessed, for callers that know better; other
    /// errors are returned unchanged.
    pub(crate) fn reclassified(self, class: ErrorClass) -> Self {
        match self {
            HypervisorError::Command {
                command, detail, ..
            } => HypervisorError::Command {
                command,
                detail,
                class,
            },
            other => other,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        HypervisorError::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<HostnetError> for HypervisorError {
    /// A tool that ran and failed may succeed on retry (EBUSY, a race with
    /// another tool) unless it rejected its arguments; a tool that cannot
    /// start, a bad namespace name or a namespace that cannot be entered
    /// will fail again the same way.
    fn from(error: HostnetError) -> Self {
        let (command, detail, class) = match error {
            HostnetError::Failed {
                command,
                status,
                detail,
            } => {
                let class =
                    if detail.contains("Invalid argument") || detail.contains("Error: argument") {
                        ErrorClass::Permanent
                    } else {
                        ErrorClass::Transient
                    };
                (command, format!("{status}: {detail}"), class)
            }
            HostnetError::Spawn { command, source } => {
                (command, source.to_string(), ErrorClass::Permanent)
            }
            other @ (HostnetError::BadNamespaceName { .. } | HostnetError::Namespace { .. }) => (
                "setns".to_string(),
                other.to_string(),
                ErrorClass::Permanent,
            ),
            other @ HostnetError::ThreadPanicked { .. } => (
                "setns".to_string(),
                other.to_string(),
                ErrorClass::Transient,
            ),
        };
        HypervisorError::Command {
            command,
            detail,
            class,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    use super::*;

    fn failed(detail: &str) -> HostnetError {
        HostnetError::Failed {
            command: "ip link add x".to_string(),
            status: ExitStatus::from_raw(2 << 8),
            detail: detail.to_string(),
        }
    }

    #[test]
    fn hostnet_failures_keep_the_namespace_backends_classes() {
        let busy = HypervisorError::from(failed("RTNETLINK answers: Device or resource busy"));
        assert_eq!(busy.class(), ErrorClass::Transient);
        assert!(busy.to_string().contains("exit status: 2"), "{busy}");
        for rejected in ["Error: argument \"x\" is wrong.", "Invalid argument"] {
            assert_eq!(
                HypervisorError::from(failed(rejected)).class(),
                ErrorClass::Permanent
            );
        }
        let missing_tool = HostnetError::Spawn {
            command: "ethtool -K eth0 tx off".to_string(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(
            HypervisorError::from(missing_tool).class(),
            ErrorClass::Permanent
        );
        assert_eq!(
            HypervisorError::from(failed("Invalid argument"))
                .reclassified(ErrorClass::Transient)
                .class(),
            ErrorClass::Transient
        );
    }
}
