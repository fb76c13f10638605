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
//!    [`Hypervisor`] and [`Switch`](crate::ovs::Switch) traits;
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
use std::time::Duration;

use async_trait::async_trait;
use measurelab_api::node_v1::{ProgramBlob, StatusAck, StatusReport};

use crate::hypervisor::Hypervisor;

mod driver;
mod engine;
mod plan;
mod programs;
mod translate;

pub use driver::{run_loop, GrpcControlPlane, LoopHandles};
pub use engine::{Action, PassReport, Reconciler};
pub use translate::{guest_spec, port_spec, TranslateError};

#[doc(no_inline)]
pub use measurelab_api::node_v1::{DesiredState, DesiredVm, VmStatus};

#[doc(no_inline)]
pub use crate::hypervisor::GuestSpec;
#[doc(no_inline)]
pub use crate::ovs::VmPortSpec;

/// How often the desired state is fetched even if the generation did not move
/// (catches hand edits with `virsh` or `ovs-vsctl` and lost heartbeats).
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(30);
/// First retry delay of a key after a Transient error.
pub const RETRY_INITIAL: Duration = Duration::from_millis(200);
/// Longest retry delay of a key.
pub const RETRY_CAP: Duration = Duration::from_secs(30);

/// Condition types reported per VM.
pub mod condition {
    /// The VM is as desired: power state, port and guest agent.
    pub const READY: &str = "Ready";
    /// Its port is on the integration bridge with the right tag and QoS.
    pub const PORT_ATTACHED: &str = "PortAttached";
    /// Its guest agent said hello on the guest channel.
    pub const GUEST_REGISTERED: &str = "GuestRegistered";
}

/// Errors of the reconcile module.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The agent is not registered yet, so it cannot talk to the controller.
    #[error("not registered with the controller yet")]
    NotRegistered,
    /// A controller call failed.
    #[error("controller {call} failed: {status}")]
    Controller {
        /// The RPC.
        call: &'static str,
        /// What the controller (or the transport) said (boxed: a Status is large).
        status: Box<tonic::Status>,
    },
    /// A fetched program does not match its checksum.
    #[error("program {program_id}: content has sha256 {actual}, expected {expected}")]
    ProgramChecksum {
        /// Program id.
        program_id: String,
        /// What the desired state promised.
        expected: String,
        /// What arrived.
        actual: String,
    },
    /// The program cache cannot be read or written.
    #[error("program cache {path}: {source}")]
    ProgramCache {
        /// File.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
}

/// What the reconcile loop needs from the controller. The real one is
/// [`GrpcControlPlane`]; tests use fakes. Node credentials are the
/// implementation's business.
#[async_trait]
pub trait ControlPlane: Send + Sync {
    /// `GetDesiredState`.
    async fn desired_state(&self) -> Result<DesiredState, ReconcileError>;
    /// `ReportStatus` (node id and secret are filled in by the implementation).
    async fn report_status(&self, report: StatusReport) -> Result<StatusAck, ReconcileError>;
    /// `FetchProgram`.
    async fn fetch_program(&self, program_id: &str) -> Result<ProgramBlob, ReconcileError>;
    /// `PostResult`; returns the result id.
    async fn post_result(
        &self,
        vm_id: &str,
        task_id: &str,
        document_json: String,
    ) -> Result<String, ReconcileError>;
    /// `PollTasks`; each entry is one task as JSON.
    async fn poll_tasks(&self, vm_id: &str) -> Result<Vec<String>, ReconcileError>;
}

/// The hypervisor backends of this node, by the controller's backend names.
#[derive(Clone, Default)]
pub struct Backends {
    /// `"namespace"`: network namespace + cgroup slivers.
    pub namespace: Option<Arc<dyn Hypervisor>>,
    /// `"libvirt"`: the node's preferred libvirt URI (QEMU or Xen; the test
    /// driver when nothing else is there).
    pub libvirt: Option<Arc<dyn Hypervisor>>,
}

impl Backends {
    /// The backend a desired VM names (`""` means namespace, the default).
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Hypervisor>> {
        match name {
            "" | "namespace" => self.namespace.as_ref(),
            "libvirt" => self.libvirt.as_ref(),
            _ => None,
        }
    }

    /// Every backend with its controller name.
    pub fn all(&self) -> Vec<(&'static str, Arc<dyn Hypervisor>)> {
        let mut all = Vec::new();
        if let Some(hv) = &self.namespace {
            all.push(("namespace", hv.clone()));
        }
        if let Some(hv) = &self.libvirt {
            all.push(("libvirt", hv.clone()));
        }
        all
    }
}

/// Node-wide settings of the reconcile loop.
#[derive(Clone, Debug)]
pub struct ReconcilerConfig {
    /// The agent's state dir: guest channel sockets and the program cache.
    pub state_dir: PathBuf,
    /// `external_ids:measurelab-owner` of our OVS rows (the node name).
    pub owner: String,
    /// The integration bridge, `br-int`.
    pub bridge: String,
    /// The uplink port (trunk towards the lab switch), e.g. `uplink0`.
    pub uplink: Option<String>,
    /// Hypervisor calls running at once (different VMs only).
    pub parallelism: usize,
}

impl ReconcilerConfig {
    /// Defaults: bridge `br-int`, no uplink, 8 parallel guest operations.
    pub fn new(state_dir: impl Into<PathBuf>, owner: &str) -> Self {
        ReconcilerConfig {
            state_dir: state_dir.into(),
            owner: owner.to_string(),
            bridge: "br-int".into(),
            uplink: None,
            parallelism: 8,
        }
    }
}

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
    if let Some(path) = configured {
        return path.to_path_buf();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("measurelab-guest-agent")))
        .unwrap_or_else(|| PathBuf::from("measurelab-guest-agent"))
}

/// The namespace backend's guest command: the guest agent, with programs
/// under `<programs_root>/<vm id>` and no kernel command line to read. A shell
/// `exec`s it, so the recorded pid stays the guest agent's.
pub fn namespace_guest_command(
    guest_agent: &std::path::Path,
    programs_root: &std::path::Path,
) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        r#"exec "$0" --cmdline /dev/null --programs-dir "$1/$MEASURELAB_VM_ID""#.into(),
        guest_agent.display().to_string(),
        programs_root.display().to_string(),
    ]
}

/// Open the backends this node has: namespace always (if the host allows
/// it), libvirt on the first URI of `uris` that connects, preferring QEMU and
/// Xen over the test driver.
pub async fn open_backends(
    state_dir: &std::path::Path,
    guest_agent: &std::path::Path,
    uris: &[String],
) -> Backends {
    let mut backends = Backends::default();
    let ns_config = crate::hypervisor::NamespaceConfig::new(
        state_dir.join("namespace"),
        namespace_guest_command(guest_agent, &state_dir.join("guest-programs")),
    );
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
    for uri in ordered {
        let probe = uri.clone();
        let owner = owner.clone();
        match tokio::task::spawn_blocking(move || {
            crate::hypervisor::LibvirtHypervisor::connect(&probe)?.with_owner(&owner)
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
