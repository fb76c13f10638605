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
//! - `api`: the [`Hypervisor`] trait.
//! - `types`: values and [`HypervisorError`], shared by every backend.
//! - `spec`: [`GuestSpec`] and its validation and hash.
//! - `domain_xml`: libvirt domain XML for Xen PV, QEMU/KVM and the test driver.
//! - `disks`: per-VM overlay and swap disks of libvirt guests, appliance containment.
//! - `libvirt`: [`LibvirtHypervisor`], the libvirt backend.
//! - `namespace`: [`NamespaceHypervisor`], network namespace + cgroup slivers.
//! - `cpuset`: which host CPUs a namespace guest's vCPUs map to.
//! - `sandbox`: what a namespace guest runs in: its own host uid, user,
//!   mount, PID, UTS and IPC namespaces, private root, no capabilities.
//! - `tap`: moving a libvirt guest's tap into the agent's network namespace.

mod api;
mod cpuset;
mod disks;
mod domain_xml;
mod libvirt;
mod namespace;
mod sandbox;
mod spec;
mod tap;
mod types;

pub use api::Hypervisor;
pub use disks::DiskConfig;
pub use domain_xml::{domain_xml, DomainFlavor, QemuAccel, GUEST_CHANNEL_NAME};
pub use libvirt::LibvirtHypervisor;
pub use namespace::{
    probe_guest_egress_shaping, probe_tc_police, EgressShaping, NamespaceConfig,
    NamespaceHypervisor, HOST_PORT_TXQUEUELEN,
};
pub use sandbox::{
    DEFAULT_UID_REGISTRY, DEFAULT_WRITABLE_MIB, GUEST_BIN_DIR, GUEST_CHANNEL_DIR,
    GUEST_PROGRAMS_DIR, GUEST_UID_FIRST, GUEST_UID_LAST,
};
pub(crate) use spec::parse_cidr;
pub use spec::{BootImage, GuestSpec, NicAttach, NicSpec, RateLimit};
pub use types::{
    BackendKind, ChannelSocket, DefineOutcome, ErrorClass, GuestInfo, GuestState, HypervisorError,
    NicAdoption, ResizeOutcome, OWNER_XML_NAMESPACE,
};
