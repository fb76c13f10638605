//! The [`Hypervisor`] trait every backend implements.

use uuid::Uuid;

use super::spec::{GuestSpec, RateLimit};
use super::types::{
    BackendKind, ChannelSocket, DefineOutcome, GuestInfo, HypervisorError, NicAdoption,
    ResizeOutcome,
};

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
