//! What the reconcile files share: timing, condition names, the error, the
//! controller seam ([`ControlPlane`]), the backends and the loop's settings.
//! A leaf, so `driver`, `engine`, `plan`, `programs` and `translate` never
//! import the parent module that re-exports them.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use measurelab_api::node_v1::{DesiredState, ProgramBlob, StatusAck, StatusReport};

use super::flows::{FlowExportSettings, FlowExportStatus};
use super::uplink::UplinkBondSettings;
use crate::hypervisor::Hypervisor;
use crate::ovs::DatapathChoice;

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

/// The chunks of an appliance file, as `FetchAppliance` streams them.
pub type ApplianceChunks =
    Pin<Box<dyn futures::Stream<Item = Result<Vec<u8>, ReconcileError>> + Send>>;

/// What the reconcile loop needs from the controller. The real one is
/// [`GrpcControlPlane`](super::GrpcControlPlane); tests use fakes. Node credentials are the
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
    /// `FetchAppliance`: the stored appliance file `sha256`, unverified (the
    /// caller checks the digest). By default the controller serves none.
    async fn fetch_appliance(&self, sha256: &str) -> Result<ApplianceChunks, ReconcileError> {
        Err(ReconcileError::Controller {
            call: "FetchAppliance",
            status: Box::new(tonic::Status::unimplemented(format!(
                "this control plane serves no appliance files ({sha256})"
            ))),
        })
    }
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

/// Relay limits of a node.
#[derive(Clone, Debug, PartialEq)]
pub struct RelaySettings {
    /// Messages a guest may send at once before its rate applies.
    pub burst: u32,
    /// Messages per second a guest may send on average. An honest guest
    /// agent sends a heartbeat and a log message every 5 s, a status per
    /// program change and what its programs ask of the local API.
    pub per_second: f64,
    /// Relay jobs (task polls at the controller, results being written to
    /// the spool) of the whole node at once; more are refused.
    pub queue: usize,
}

impl Default for RelaySettings {
    fn default() -> Self {
        RelaySettings {
            burst: 40,
            per_second: 10.0,
            queue: 64,
        }
    }
}

/// Limits and retry timing of the spool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolSettings {
    /// Bytes of spooled results at most (file sizes summed).
    pub max_bytes: u64,
    /// Spooled results at most.
    pub max_files: usize,
    /// What one VM's guest may hold of each limit, as a fraction (1/N), so
    /// one flooding guest cannot take the spool from the others.
    pub vm_share: u32,
    /// First delay after a failed post.
    pub retry_initial: Duration,
    /// Longest delay between posts while the controller is unreachable.
    pub retry_cap: Duration,
}

impl Default for SpoolSettings {
    /// 256 MiB and 10,000 results, a quarter of it per VM: hours of
    /// results of a busy node, far below a node's disk.
    fn default() -> Self {
        SpoolSettings {
            max_bytes: 256 * 1024 * 1024,
            max_files: 10_000,
            vm_share: 4,
            retry_initial: Duration::from_millis(500),
            retry_cap: Duration::from_secs(30),
        }
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
    /// A bonded uplink instead (the agent's config never sets both).
    pub uplink_bond: Option<UplinkBondSettings>,
    /// Which datapath the bridge is built on.
    pub datapath: DatapathChoice,
    /// Hypervisor calls running at once (different VMs only).
    pub parallelism: usize,
    /// Flow export from the agent's configuration; the operator's setting in
    /// the desired state overrides it (see `reconcile::flows`).
    pub flow_export: Option<FlowExportSettings>,
    /// Where the loop publishes what the switch exports, for capabilities.
    pub flow_export_status: FlowExportStatus,
    /// A registered guest of a running VM silent (no heartbeat, no hello)
    /// for longer than this turns `GuestRegistered` False
    /// (`GuestHeartbeatMissed`) until it is heard again.
    pub guest_heartbeat_deadline: Duration,
    /// The operator's appliance directory; appliance files the controller
    /// stores are cached in its `sha256/`. `None`: VMs of such appliances
    /// are refused.
    pub appliance_dir: Option<PathBuf>,
    /// What a guest may make the agent relay.
    pub relay: RelaySettings,
    /// Limits and retry timing of the result spool (`<state_dir>/results`).
    pub result_spool: SpoolSettings,
    /// This node's underlay address: the local end of its VXLAN tunnels to
    /// peers at other sites. `None`: no tunnels (peers share the uplink's L2).
    pub tunnel_ip: Option<std::net::Ipv4Addr>,
    /// The service host's VLAN, which the service network's tunnels carry;
    /// `None`: this node runs no service host.
    pub service_vlan: Option<u16>,
    /// The `measurelab-wg` binary the platform gateways run; `None`: beside
    /// the running executable.
    pub wireguard_binary: Option<PathBuf>,
}

/// Three of the guest agent's default 5 s heartbeat intervals.
pub const DEFAULT_GUEST_HEARTBEAT_DEADLINE: Duration = Duration::from_secs(15);

impl ReconcilerConfig {
    /// Defaults: bridge `br-int`, no uplink, 8 parallel guest operations.
    pub fn new(state_dir: impl Into<PathBuf>, owner: &str) -> Self {
        ReconcilerConfig {
            state_dir: state_dir.into(),
            owner: owner.to_string(),
            bridge: "br-int".into(),
            uplink: None,
            uplink_bond: None,
            datapath: DatapathChoice::Auto,
            parallelism: 8,
            flow_export: None,
            flow_export_status: FlowExportStatus::default(),
            guest_heartbeat_deadline: DEFAULT_GUEST_HEARTBEAT_DEADLINE,
            appliance_dir: None,
            relay: RelaySettings::default(),
            result_spool: SpoolSettings::default(),
            tunnel_ip: None,
            service_vlan: None,
            wireguard_binary: None,
        }
    }
}

/// The gateways' WireGuard device binary: the configured path, else
/// `measurelab-wg` beside the running executable.
pub fn wireguard_binary_path(configured: Option<&std::path::Path>) -> PathBuf {
    beside_executable(configured, "measurelab-wg")
}

/// `configured`, else `name` beside the running executable.
pub(crate) fn beside_executable(configured: Option<&std::path::Path>, name: &str) -> PathBuf {
    if let Some(path) = configured {
        return path.to_path_buf();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}
