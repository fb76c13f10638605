//! The node agent's reconcile loop: make the guests, switch ports and guest
//! channels of this node match the controller's desired state.
//!
//! Level-triggered (STYLE "How this maps to our node agent"): every pass
//! re-reads the *observed* state (`Hypervisor::list_owned` of each backend and
//! `Switch::observe`) and compares it with the *desired* state (the
//! controller's [`DesiredState`]), so the agent keeps no durable truth and can
//! be killed at any moment: a new agent converges from whatever it finds.
//!
//! Keys are VM ids. Per VM, a pass:
//! 1. translates the [`DesiredVm`] into a [`GuestSpec`] and a [`VmPortSpec`]
//!    (`translate`); a bad spec is a Permanent error;
//! 2. defines/starts/pauses/resumes/stops the guest on its backend, or
//!    undefines it when the VM is deleting or unknown to the controller (an
//!    orphan we own): `plan` turns desired plus observed state into jobs
//!    without any I/O, `engine` observes and runs them through the
//!    [`Hypervisor`](crate::hypervisor::Hypervisor) and [`Switch`](crate::ovs::Switch) traits;
//! 3. plugs its port into the integration bridge with the platform's VLAN tag
//!    and QoS: one atomic OVS reconcile for the whole node;
//! 4. opens its guest channel;
//! 5. reports a [`VmStatus`] (conditions `Ready`, `PortAttached`,
//!    `GuestRegistered`) only when it changed, and acks deleted VMs.
//!
//! Transient errors requeue the key with exponential backoff; Permanent ones
//! set the condition False with a CamelCase reason and leave the key alone
//! until its desired spec changes.
//!
//! `driver` runs the loop: it fetches the desired state when a heartbeat or
//! the controller's `WatchDesiredState` push says the generation moved (and
//! every [`RESYNC_INTERVAL`]), relays guest
//! channel traffic (logs, heartbeats, program status, results, task polls)
//! to the controller, and distributes programs (`programs`).

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

mod appliances;
mod driver;
mod engine;
mod flows;
mod gateways;
mod plan;
mod programs;
mod relay;
mod spool;
mod translate;
mod tunnels;
mod types;
mod uplink;

pub use appliances::ApplianceError;
pub use driver::{run_loop, GrpcControlPlane, LoopHandles};
pub use engine::{Action, PassReport, Reconciler};
pub use flows::{FlowExportSettings, FlowExportStatus};
pub use gateways::GatewayChange;
pub use spool::{ResultSpool, SpoolError};
pub use translate::{guest_spec, port_spec, TranslateError};
pub use types::{
    condition, wireguard_binary_path, ApplianceChunks, Backends, ControlPlane, ReconcileError,
    ReconcilerConfig, RelaySettings, SpoolSettings, DEFAULT_GUEST_HEARTBEAT_DEADLINE,
    RESYNC_INTERVAL, RETRY_CAP, RETRY_INITIAL,
};
pub use uplink::{UplinkBondMode, UplinkBondSettings};

#[doc(no_inline)]
pub use measurelab_api::node_v1::{DesiredState, DesiredVm, VmStatus};

#[doc(no_inline)]
pub use crate::hypervisor::GuestSpec;
#[doc(no_inline)]
pub use crate::ovs::VmPortSpec;

/// A switch that connects to OVSDB on first use and again after any error,
/// so an OVS that starts after the agent (or restarts) is picked up.
pub struct LazySwitch {
    target: String,
    current: tokio::sync::Mutex<Option<Arc<crate::ovs::OvsdbSwitch>>>,
}

impl LazySwitch {
    /// A switch for `target` (`unix:/path/db.sock`); nothing is connected yet.
    pub fn new(target: &str) -> Self {
        LazySwitch {
            target: target.to_string(),
            current: tokio::sync::Mutex::new(None),
        }
    }

    async fn get(&self) -> Result<Arc<crate::ovs::OvsdbSwitch>, crate::ovs::OvsError> {
        let mut current = self.current.lock().await;
        if let Some(switch) = current.as_ref() {
            return Ok(switch.clone());
        }
        let switch = Arc::new(crate::ovs::OvsdbSwitch::connect(&self.target).await?);
        *current = Some(switch.clone());
        Ok(switch)
    }

    async fn check<T>(
        &self,
        result: Result<T, crate::ovs::OvsError>,
    ) -> Result<T, crate::ovs::OvsError> {
        if let Err(err) = &result {
            if !err.is_transient() {
                // Cheap to redo on a unix socket; covers a lost session.
                *self.current.lock().await = None;
            }
        }
        result
    }
}

#[async_trait]
impl crate::ovs::Switch for LazySwitch {
    async fn capabilities(&self) -> Result<crate::ovs::SwitchCapabilities, crate::ovs::OvsError> {
        let switch = self.get().await?;
        let result = switch.capabilities().await;
        self.check(result).await
    }

    async fn observe(
        &self,
        owner: &str,
        bridge: &str,
    ) -> Result<crate::ovs::ObservedSwitch, crate::ovs::OvsError> {
        let switch = self.get().await?;
        let result = switch.observe(owner, bridge).await;
        self.check(result).await
    }

    async fn apply(
        &self,
        owner: &str,
        bridge: &str,
        observed: &crate::ovs::ObservedSwitch,
        actions: &[crate::ovs::SwitchAction],
    ) -> Result<(), crate::ovs::OvsError> {
        let switch = self.get().await?;
        let result = switch.apply(owner, bridge, observed, actions).await;
        self.check(result).await
    }
}

/// Path of the guest agent binary: `configured`, or `measurelab-guest-agent`
/// beside the running executable (how the packages install them).
pub fn guest_agent_path(configured: Option<&std::path::Path>) -> PathBuf {
    types::beside_executable(configured, "measurelab-guest-agent")
}

/// The namespace backend's guest command: the guest agent as the sandbox
/// sees it (bound read-only under [`crate::hypervisor::GUEST_BIN_DIR`]), with
/// no kernel command line to read; its programs go to the guest's writable
/// layer (`MEASURELAB_PROGRAMS_DIR`, set by the backend).
pub fn namespace_guest_command(guest_agent: &std::path::Path) -> Vec<String> {
    let name = guest_agent
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "measurelab-guest-agent".into());
    vec![
        format!("{}/{name}", crate::hypervisor::GUEST_BIN_DIR),
        "--cmdline".into(),
        "/dev/null".into(),
    ]
}

/// Open the backends this node has: namespace always (if the host allows
/// it), libvirt on the first URI of `uris` that connects, preferring QEMU and
/// Xen over the test driver. libvirt guests boot only appliances under
/// `appliance_dir` and keep their disks in their directory under
/// `<state_dir>/guests`. Both give the guests they create NICs of
/// `guest_mtu`.
pub async fn open_backends(
    state_dir: &std::path::Path,
    guest_agent: &std::path::Path,
    uris: &[String],
    appliance_dir: &std::path::Path,
    guest_mtu: u32,
) -> Backends {
    let mut backends = Backends::default();
    let mut ns_config = crate::hypervisor::NamespaceConfig::new(
        state_dir.join("namespace"),
        namespace_guest_command(guest_agent),
    );
    ns_config.guest_binaries = vec![guest_agent.to_path_buf()];
    ns_config.guest_mtu = guest_mtu;
    match tokio::task::spawn_blocking(move || {
        crate::hypervisor::NamespaceHypervisor::new(ns_config)
    })
    .await
    {
        Ok(Ok(hv)) => backends.namespace = Some(Arc::new(hv)),
        Ok(Err(err)) => tracing::warn!(error = %err, "namespace backend unavailable"),
        Err(err) => tracing::error!(error = %err, "namespace backend setup panicked"),
    }
    let mut ordered: Vec<String> = uris.to_vec();
    ordered.sort_by_key(|uri| uri.starts_with("test:"));
    // Scoped: several agents on one host (lab nodes, tests) share libvirtd
    // and must not collect each other's domains as orphans.
    let owner = crate::hypervisor::LibvirtHypervisor::owner_for_state_dir(state_dir);
    let disks = crate::hypervisor::DiskConfig {
        appliance_dir: appliance_dir.to_path_buf(),
        guests_dir: state_dir.join("guests"),
    };
    for uri in ordered {
        let probe = uri.clone();
        let owner = owner.clone();
        let disks = disks.clone();
        match tokio::task::spawn_blocking(move || {
            Ok::<_, crate::hypervisor::HypervisorError>(
                crate::hypervisor::LibvirtHypervisor::connect(&probe)?
                    .with_owner(&owner)?
                    .with_disks(disks)
                    .with_guest_mtu(guest_mtu),
            )
        })
        .await
        {
            Ok(Ok(hv)) => {
                tracing::info!(uri = %uri, "libvirt backend");
                backends.libvirt = Some(Arc::new(hv));
                break;
            }
            Ok(Err(err)) => tracing::debug!(uri = %uri, error = %err, "libvirt URI unusable"),
            Err(err) => tracing::error!(error = %err, "libvirt connect panicked"),
        }
    }
    backends
}
