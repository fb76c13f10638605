//! OS-level slivers (PlanetLab's idea): a guest is a network namespace
//! `vm-<short id>` with one veth, a cgroup that caps CPU and memory, and a
//! guest process running inside both.
//!
//! - Network: `ip netns add`; a veth whose guest end `eth0` carries the VM's
//!   MAC and address and has tx checksum offload off (userspace OVS would
//!   forward UDP with bad checksums otherwise), and whose host end is named
//!   after the spec's port. Plugging that port into OVS is the OVS module's
//!   job; this backend only creates it.
//! - Limits: cgroup v2 `cpu.max`, `memory.max` and `memory.swap.max`
//!   (`swap_mib`), and a cpuset of `vcpus` host CPUs so the guest sees as
//!   many CPUs as it has vCPUs (`nproc`). On hosts with the hybrid layout
//!   (v1 controllers, v2 only at /sys/fs/cgroup/unified - as on the build
//!   machine) the limits go to the v1 `cpu`, `memory` (with
//!   `memory.memsw.limit_in_bytes` = memory + swap) and `cpuset`
//!   hierarchies and the v2 group is used for freeze and kill, which need
//!   no controller. Every limit changes live: a vCPU or memory change
//!   never restarts the guest.
//! - Process: started detached (`setsid -f`) so it outlives the agent; its pid
//!   and start time are recorded in a state file and re-adopted by a new
//!   backend object after an agent restart (the start time guards against pid
//!   reuse).
//! - Sandbox: the guest and its programs run as a host uid of their own, in
//!   their own user, mount, PID, UTS and IPC namespaces, on a private root
//!   whose only writable layer is bounded by `disk_mib`, without
//!   capabilities (see `sandbox`). Its channel directory belongs to that uid
//!   (0700). A running guest of an older agent (root, host filesystem) is
//!   stopped when the backend opens, so reconcile starts it boxed.
//! - Ownership: a guest is ours iff `<state_dir>/<vm id>.json` exists. A
//!   namespace or cgroup without a state file is never listed or touched.
//!
//! - Egress limit (traffic out of the guest): an htb root qdisc on the
//!   guest's `eth0`, set with `tc` inside the namespace. The kernel here has
//!   no police action, so OVS ingress policing on the host end cannot work;
//!   shaping where the guest's packets are queued also pushes back on the
//!   guest's own sockets instead of dropping.
//! - Host end of the veth: `txqueuelen` [`HOST_PORT_TXQUEUELEN`], see there.
//!
//! All methods block (they run `ip`, `tc` and `ethtool`).

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use measurelab_hostnet::{self as hostnet, HostnetError};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::api::Hypervisor;
use super::cpuset::{format_cpu_list, guest_cpus, parse_cpu_list};
use super::sandbox::{self, UidRegistry};
use super::spec::{short_id, GuestSpec, NicSpec, RateLimit};
use super::types::{
    BackendKind, DefineOutcome, ErrorClass, GuestInfo, GuestState, HypervisorError, ResizeOutcome,
};

const CPU_PERIOD_US: u64 = 100_000;

/// `txqueuelen` of the host end of every guest veth.
///
/// ovs-vswitchd's userspace datapath transmits to every Linux netdev through
/// ONE shared AF_PACKET socket. When a port has linux-htb QoS, the packets
/// its htb holds back stay charged to that socket; with the default
/// 1000-packet leaf queue a flood towards the limited port fills the
/// socket's send buffer and sends to every OTHER port then fail and are
/// dropped silently (the mcast team measured 91-95 % loss on unlimited
/// ports; `agent/tests/ovs_htb_txqueue.rs` reproduces it). The leaf queue
/// htb creates takes its length from the device's txqueuelen, so a short
/// one makes the limited port drop its own excess instead. A veth has no
/// qdisc of its own (`noqueue`), so the value is inert until OVS adds a QoS,
/// which is why it is set on every guest port rather than only on those
/// that have a QoS now: QoS can be added to a port in place later.
pub const HOST_PORT_TXQUEUELEN: u32 = 20;

/// tc handles of the egress shaper on the guest's `eth0`: root qdisc 1:,
/// parent class 1:1 (the ceiling), leaves 1:10 (bulk, the default) and
/// 1:20 (small TCP segments), both borrowing up to the ceiling.
const EGRESS_QDISC: &str = "1:";
const EGRESS_CEILING_CLASS: &str = "1:1";
const EGRESS_LEAF_CLASS: &str = "1:10";
const EGRESS_ACK_CLASS: &str = "1:20";
const MIB: u64 = 1024 * 1024;

/// Settings of the namespace backend.
#[derive(Clone, Debug)]
pub struct NamespaceConfig {
    /// Where state files and guest logs live; the ownership record.
    pub state_dir: PathBuf,
    /// Name of our parent cgroup (`measurelab`): guests are its children.
    pub cgroup_parent: String,
    /// cgroup mount point; `/sys/fs/cgroup` on every normal host.
    pub cgroup_mount: PathBuf,
    /// Program and arguments of the guest process (the guest agent). It gets
    /// `MEASURELAB_VM_ID`, `MEASURELAB_VM_NAME` and `MEASURELAB_IP` in its
    /// environment, and `MEASURELAB_CHANNEL` when the spec has a
    /// `channel_socket` (unix sockets work across network namespaces).
    /// It runs inside the guest's sandbox: host paths other than the
    /// system directories do not exist there; `guest_binaries` do.
    pub guest_command: Vec<String>,
    /// Host files (the guest agent) bound read-only into every guest at
    /// `/opt/measurelab/bin/<file name>` ([`sandbox::GUEST_BIN_DIR`]).
    pub guest_binaries: Vec<PathBuf>,
    /// Host-wide registry of guest uids, shared by every agent on the host
    /// ([`sandbox::DEFAULT_UID_REGISTRY`]).
    pub uid_registry: PathBuf,
    /// MTU of both ends of a guest's veth, set when the pair is created
    /// (a guest keeps it while it exists). Default 1500.
    pub guest_mtu: u32,
}

impl NamespaceConfig {
    /// Defaults: cgroup parent `measurelab` under /sys/fs/cgroup.
    pub fn new(state_dir: impl Into<PathBuf>, guest_command: Vec<String>) -> Self {
        NamespaceConfig {
            state_dir: state_dir.into(),
            cgroup_parent: "measurelab".into(),
            cgroup_mount: PathBuf::from("/sys/fs/cgroup"),
            guest_command,
            guest_binaries: Vec::new(),
            uid_registry: PathBuf::from(sandbox::DEFAULT_UID_REGISTRY),
            guest_mtu: crate::underlay::GUEST_MTU,
        }
    }
}

/// Which cgroup hierarchies exist on this host.
#[derive(Clone, Debug)]
enum CgroupLayout {
    /// Pure v2: one hierarchy with the cpu and memory controllers.
    Unified {
        root: PathBuf,
        /// The cpuset controller is available too.
        cpuset: bool,
    },
    /// v1 controllers plus a controller-less v2 hierarchy (systemd hybrid).
    Hybrid {
        unified: PathBuf,
        cpu: PathBuf,
        memory: PathBuf,
        /// The v1 cpuset hierarchy, if mounted.
        cpuset: Option<PathBuf>,
    },
}

/// The cgroup directories of one guest.
#[derive(Clone, Debug)]
struct GuestCgroups {
    /// v2 group: freeze, kill, membership.
    unified: PathBuf,
    /// Where CPU and memory limits live (same as `unified` on pure v2).
    cpu: PathBuf,
    memory: PathBuf,
    /// Where the guest's CPU set lives; `None` without a cpuset controller.
    cpuset: Option<PathBuf>,
    v1_limits: bool,
}

impl GuestCgroups {
    fn dirs(&self) -> Vec<&Path> {
        let mut dirs = vec![self.unified.as_path()];
        for dir in [Some(&self.cpu), Some(&self.memory), self.cpuset.as_ref()]
            .into_iter()
            .flatten()
        {
            if !dirs.contains(&dir.as_path()) {
                dirs.push(dir);
            }
        }
        dirs
    }
}

/// What we persist per guest.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct GuestRecord {
    spec: GuestSpec,
    netns: String,
    /// The guest process, if we started one.
    process: Option<ProcessRecord>,
    /// Host uid of the guest's sandbox. `None` only in records of older
    /// agents, whose guests ran as root (see `NamespaceHypervisor::new`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uid: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ProcessRecord {
    pid: u32,
    /// Field 22 of /proc/<pid>/stat: distinguishes our process from a later
    /// one that got the same pid.
    start_time: u64,
}

/// Guests as network namespaces + cgroups.
pub struct NamespaceHypervisor {
    config: NamespaceConfig,
    layout: CgroupLayout,
    uids: UidRegistry,
}

impl NamespaceHypervisor {
    /// Checks the config, detects the cgroup layout and creates the state dir.
    /// Existing guests (from a previous agent) are adopted as they are.
    pub fn new(config: NamespaceConfig) -> Result<Self, HypervisorError> {
        if config.guest_command.is_empty() {
            return Err(HypervisorError::InvalidSpec {
                field: "guest_command",
                reason: "must name a program".into(),
            });
        }
        if config.cgroup_parent.is_empty()
            || config.cgroup_parent.contains('/')
            || config.cgroup_parent.starts_with('.')
        {
            return Err(HypervisorError::InvalidSpec {
                field: "cgroup_parent",
                reason: format!("{:?} must be a single path component", config.cgroup_parent),
            });
        }
        for binary in &config.guest_binaries {
            let name = binary.file_name().and_then(|n| n.to_str());
            if !binary.is_absolute()
                || binary.to_str().is_none_or(|b| b.contains(':'))
                || name.is_none()
            {
                return Err(HypervisorError::InvalidSpec {
                    field: "guest_binaries",
                    reason: format!("{} must be an absolute path without ':'", binary.display()),
                });
            }
        }
        let layout = detect_layout(&config.cgroup_mount)?;
        fs::create_dir_all(&config.state_dir).map_err(|e| {
            HypervisorError::io(format!("create {}", config.state_dir.display()), e)
        })?;
        let uids = UidRegistry::new(&config.uid_registry);
        let backend = NamespaceHypervisor {
            config,
            layout,
            uids,
        };
        backend.replace_unboxed_guests()?;
        Ok(backend)
    }

    /// Stops the running guests of an older agent, which ran as root on the
    /// host filesystem, and gives every record a uid: reconcile then starts
    /// them again, boxed. Their network namespace and veth stay, so the
    /// switch port is untouched.
    fn replace_unboxed_guests(&self) -> Result<(), HypervisorError> {
        for id in self.record_ids()? {
            let Some(mut record) = self.load(id)? else {
                continue;
            };
            if record.uid.is_some() {
                continue;
            }
            if record.process.take().is_some_and(process_alive) {
                tracing::warn!(vm = %id, "stopping a guest started without a sandbox by an older agent; reconcile restarts it boxed");
            }
            kill_cgroup(&self.cgroups(&record.netns))?;
            record.uid = Some(self.claim_uid(id)?);
            self.save(&record)?;
        }
        Ok(())
    }

    /// The host uid of a guest's sandbox (for tests and diagnostics).
    pub fn guest_uid(&self, id: Uuid) -> Result<Option<u32>, HypervisorError> {
        Ok(self.load(id)?.and_then(|r| r.uid))
    }

    fn claim_uid(&self, id: Uuid) -> Result<u32, HypervisorError> {
        self.uids.claim(&self.state_path(id), |record, uid| {
            // A claim is live while its record exists and names that uid.
            fs::read_to_string(record)
                .ok()
                .and_then(|text| serde_json::from_str::<GuestRecord>(&text).ok())
                .is_some_and(|r| r.uid == Some(uid))
        })
    }

    fn root_dir(&self, id: Uuid) -> PathBuf {
        self.config.state_dir.join(format!("{id}.root"))
    }

    /// Ids of every record in the state dir.
    fn record_ids(&self) -> Result<Vec<Uuid>, HypervisorError> {
        let dir = &self.config.state_dir;
        let entries = fs::read_dir(dir)
            .map_err(|e| HypervisorError::io(format!("read {}", dir.display()), e))?;
        let mut ids = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|e| HypervisorError::io(format!("read {}", dir.display()), e))?;
            if let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| Uuid::parse_str(n).ok())
            {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// Whether this host can run namespace guests: a usable cgroup layout
    /// under `cgroup_mount` and the tools the backend runs (`ip`, `ethtool`,
    /// `setsid`, `sh`, and the sandbox's util-linux tools). For capability
    /// reports; creating guests also needs root.
    pub fn probe(cgroup_mount: &Path) -> Result<(), HypervisorError> {
        detect_layout(cgroup_mount)?;
        for tool in [
            "ip",
            "ethtool",
            "setsid",
            "sh",
            "unshare",
            "setpriv",
            "mount",
            "pivot_root",
            "hostname",
        ] {
            let found = std::env::var_os("PATH")
                .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
                .unwrap_or(false);
            if !found {
                return Err(HypervisorError::Command {
                    command: tool.to_string(),
                    detail: "not found in PATH".into(),
                    class: ErrorClass::Permanent,
                });
            }
        }
        Ok(())
    }

    /// Network namespace name of a guest: `vm-<first 8 hex of its id>`.
    pub fn netns_name(id: Uuid) -> String {
        format!("vm-{}", short_id(id))
    }

    /// cgroup v2 directory of a guest (freeze/kill/membership).
    pub fn cgroup_dir(&self, id: Uuid) -> PathBuf {
        self.cgroups(&Self::netns_name(id)).unified
    }

    /// Pid of the guest process if it is running.
    pub fn guest_pid(&self, id: Uuid) -> Result<Option<u32>, HypervisorError> {
        let Some(record) = self.load(id)? else {
            return Ok(None);
        };
        Ok(record.process.filter(|p| process_alive(*p)).map(|p| p.pid))
    }

    fn cgroups(&self, guest: &str) -> GuestCgroups {
        let parent = &self.config.cgroup_parent;
        match &self.layout {
            CgroupLayout::Unified { root, cpuset } => {
                let dir = root.join(parent).join(guest);
                GuestCgroups {
                    unified: dir.clone(),
                    cpu: dir.clone(),
                    cpuset: cpuset.then(|| dir.clone()),
                    memory: dir,
                    v1_limits: false,
                }
            }
            CgroupLayout::Hybrid {
                unified,
                cpu,
                memory,
                cpuset,
            } => GuestCgroups {
                unified: unified.join(parent).join(guest),
                cpu: cpu.join(parent).join(guest),
                memory: memory.join(parent).join(guest),
                cpuset: cpuset.as_ref().map(|c| c.join(parent).join(guest)),
                v1_limits: true,
            },
        }
    }

    fn state_path(&self, id: Uuid) -> PathBuf {
        self.config.state_dir.join(format!("{id}.json"))
    }

    fn log_path(&self, id: Uuid) -> PathBuf {
        self.config.state_dir.join(format!("{id}.log"))
    }

    fn load(&self, id: Uuid) -> Result<Option<GuestRecord>, HypervisorError> {
        let path = self.state_path(id);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(HypervisorError::io(format!("read {}", path.display()), e)),
        };
        serde_json::from_str(&text).map(Some).map_err(|e| {
            HypervisorError::io(
                format!("parse {}", path.display()),
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })
    }

    fn require(&self, id: Uuid) -> Result<GuestRecord, HypervisorError> {
        self.load(id)?.ok_or(HypervisorError::NotFound { id })
    }

    /// Atomic replace, so a crash never leaves a torn record.
    fn save(&self, record: &GuestRecord) -> Result<(), HypervisorError> {
        let path = self.state_path(record.spec.id);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(record).map_err(|e| {
            HypervisorError::io(
                "serialize guest record",
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })?;
        fs::write(&tmp, text)
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(|e| HypervisorError::io(format!("write {}", path.display()), e))
    }

    /// Creates whatever of the guest's namespace, veth and cgroups is missing
    /// and applies the limits. Safe to call on a complete guest.
    fn ensure_resources(
        &self,
        spec: &GuestSpec,
        netns: &str,
        old_nic: Option<&NicSpec>,
    ) -> Result<(), HypervisorError> {
        hostnet::netns_ensure(netns)?;
        if old_nic != spec.nic.as_ref() {
            if let Some(old) = old_nic {
                // MAC, address or port changed: rebuild the veth. Deleting
                // one end removes the pair.
                if link_exists(None, &old.port_name)? {
                    run("ip", &["link", "del", &old.port_name])?;
                }
            }
        }
        if let Some(nic) = &spec.nic {
            ensure_veth(netns, nic, self.config.guest_mtu)?;
            apply_egress_limit(netns, spec.egress_limit.as_ref())?;
        } else if link_exists(Some(netns), "eth0")? {
            run("ip", &["-n", netns, "link", "del", "eth0"])?;
        }
        let cgroups = self.cgroups(netns);
        self.ensure_cgroup_parents()?;
        for dir in cgroups.dirs() {
            fs::create_dir_all(dir)
                .map_err(|e| HypervisorError::io(format!("create {}", dir.display()), e))?;
        }
        write_limits(&cgroups, spec)?;
        adopt_into_cpuset(&cgroups)
    }

    /// On pure v2 the parent must delegate cpu, memory (and cpuset) to its
    /// children. A v1 cpuset group starts with no CPUs and no memory nodes,
    /// and no task may join it before it has both: the parent gets its
    /// parent's (the host's) once.
    fn ensure_cgroup_parents(&self) -> Result<(), HypervisorError> {
        let create = |dir: &Path| {
            fs::create_dir_all(dir)
                .map_err(|e| HypervisorError::io(format!("create {}", dir.display()), e))
        };
        match &self.layout {
            CgroupLayout::Unified { root, cpuset } => {
                let parent = root.join(&self.config.cgroup_parent);
                create(&parent)?;
                let controllers = if *cpuset {
                    "+cpu +memory +cpuset"
                } else {
                    "+cpu +memory"
                };
                for dir in [root.as_path(), parent.as_path()] {
                    write_file(&dir.join("cgroup.subtree_control"), controllers)?;
                }
            }
            CgroupLayout::Hybrid {
                cpuset: Some(root), ..
            } => {
                let parent = root.join(&self.config.cgroup_parent);
                create(&parent)?;
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    if read_trimmed(&parent.join(file))?.is_empty() {
                        write_file(&parent.join(file), &read_trimmed(&root.join(file))?)?;
                    }
                }
            }
            CgroupLayout::Hybrid { cpuset: None, .. } => {}
        }
        Ok(())
    }

    /// Removes everything of a guest; missing pieces are fine.
    fn remove_resources(&self, netns: &str, nic: Option<&NicSpec>) -> Result<(), HypervisorError> {
        let cgroups = self.cgroups(netns);
        kill_cgroup(&cgroups)?;
        if let Some(nic) = nic {
            if link_exists(None, &nic.port_name)? {
                run("ip", &["link", "del", &nic.port_name])?;
            }
        }
        if hostnet::netns_exists(netns) {
            hostnet::netns_delete(netns)?;
        }
        for dir in cgroups.dirs() {
            remove_cgroup_dir(dir)?;
        }
        Ok(())
    }

    fn observe(&self, record: &GuestRecord) -> Result<GuestInfo, HypervisorError> {
        let cgroups = self.cgroups(&record.netns);
        let running = record.process.is_some_and(process_alive);
        let state = if !running {
            GuestState::Stopped
        } else if cgroup_frozen(&cgroups.unified)? {
            GuestState::Paused
        } else {
            GuestState::Running
        };
        let (vcpus, memory_mib) =
            read_limits(&cgroups).unwrap_or((record.spec.vcpus, record.spec.memory_mib));
        Ok(GuestInfo {
            id: record.spec.id,
            name: record.netns.clone(),
            platform_id: record.spec.platform_id,
            spec_hash: record.spec.spec_hash(),
            state,
            vcpus,
            memory_mib,
            restart_pending: false,
        })
    }

    fn spawn_guest(
        &self,
        record: &GuestRecord,
        uid: u32,
    ) -> Result<ProcessRecord, HypervisorError> {
        let id = record.spec.id;
        let cgroups = self.cgroups(&record.netns);
        let pid_path = self.config.state_dir.join(format!("{id}.pid"));
        let _ = fs::remove_file(&pid_path);
        let log_path = self.log_path(id);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| HypervisorError::io(format!("open {}", log_path.display()), e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| HypervisorError::io(format!("dup {}", log_path.display()), e))?;
        let root = self.root_dir(id);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(|e| HypervisorError::io(format!("create {}", root.display()), e))?;
        // The shell joins the cgroups *before* anything else runs, so no
        // child of the guest can escape them; `ip netns exec` enters the
        // network namespace and the sandbox launcher builds the rest. Its
        // innermost step writes the guest's host pid to fd 3 and execs the
        // guest in that same process, so the recorded pid is the guest's.
        let script = r#"exec 3>"$1" || exit 96; n=$2; shift 2
while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 97; shift; n=$((n-1)); done
netns=$1; shift
exec ip netns exec "$netns" sh -c "$SBX_LAUNCHER" measurelab-guest "$@""#;
        let procs: Vec<PathBuf> = cgroups
            .dirs()
            .iter()
            .map(|d| d.join("cgroup.procs"))
            .collect();
        let channel_dir = record
            .spec
            .channel_socket
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf);
        let channel_in_guest = record.spec.channel_socket.as_deref().and_then(|socket| {
            socket
                .file_name()
                .map(|name| Path::new(sandbox::GUEST_CHANNEL_DIR).join(name))
        });
        let bins = self
            .config
            .guest_binaries
            .iter()
            .map(|b| b.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let disk_mib = if record.spec.disk_mib == 0 {
            sandbox::DEFAULT_WRITABLE_MIB
        } else {
            record.spec.disk_mib
        };
        let mut command = Command::new("setsid");
        command
            .arg("-f")
            .arg("sh")
            .arg("-c")
            .arg(script)
            .arg("measurelab-guest")
            .arg(&pid_path)
            .arg(procs.len().to_string())
            .args(&procs)
            .arg(&record.netns)
            .args(&self.config.guest_command)
            // Nothing of the agent's environment (tokens, paths) reaches
            // the guest; only what describes the VM.
            .env_clear()
            .env("PATH", sandbox::GUEST_PATH)
            .env("HOME", "/root")
            .env("SBX_UID", uid.to_string())
            .env("SBX_ROOT", &root)
            .env("SBX_DISK_MIB", disk_mib.to_string())
            .env("SBX_HOSTNAME", &record.spec.name)
            .env(
                "SBX_CHANNEL_DIR",
                channel_dir.as_deref().unwrap_or(Path::new("")),
            )
            .env("SBX_BINS", bins)
            .env("SBX_LAUNCHER", sandbox::LAUNCHER)
            .env("SBX_INIT", sandbox::GUEST_INIT)
            .env("MEASURELAB_VM_ID", id.to_string())
            .env("MEASURELAB_VM_NAME", &record.spec.name)
            .env(
                "MEASURELAB_IP",
                record
                    .spec
                    .nic
                    .as_ref()
                    .and_then(|n| n.ipv4_cidr.clone())
                    .unwrap_or_default(),
            )
            .env("MEASURELAB_PROGRAMS_DIR", sandbox::GUEST_PROGRAMS_DIR)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        if let Ok(filter) = std::env::var("RUST_LOG") {
            command.env("RUST_LOG", filter);
        }
        if let Some(socket) = &channel_in_guest {
            command.env("MEASURELAB_CHANNEL", socket);
        }
        let status = command.status().map_err(|e| HypervisorError::Command {
            command: "setsid -f sh -c ...".into(),
            detail: e.to_string(),
            class: ErrorClass::Permanent,
        })?;
        if !status.success() {
            return Err(HypervisorError::Command {
                command: "setsid -f sh -c ...".into(),
                detail: format!("exited with {status}"),
                class: ErrorClass::Transient,
            });
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid = loop {
            if let Some(pid) = sandbox::read_pid_file(&pid_path) {
                break pid;
            }
            if Instant::now() > deadline {
                return Err(HypervisorError::Command {
                    command: format!("guest launcher for {}", record.netns),
                    detail: format!("no guest pid after 10 s; see {}", log_path.display()),
                    class: ErrorClass::Transient,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let _ = fs::remove_file(&pid_path);
        let start_time =
            hostnet::process_start_time(pid).ok_or_else(|| HypervisorError::Command {
                command: self.config.guest_command.join(" "),
                detail: format!(
                    "guest process {pid} exited immediately; see {}",
                    log_path.display()
                ),
                class: ErrorClass::Transient,
            })?;
        Ok(ProcessRecord { pid, start_time })
    }
}

impl Hypervisor for NamespaceHypervisor {
    fn kind(&self) -> BackendKind {
        BackendKind::Namespace
    }

    fn define(&self, spec: &GuestSpec) -> Result<DefineOutcome, HypervisorError> {
        spec.validate()?;
        let netns = Self::netns_name(spec.id);
        let existing = self.load(spec.id)?;
        match existing {
            None => {
                if hostnet::netns_exists(&netns) {
                    return Err(HypervisorError::NotOwned {
                        what: format!("network namespace {netns}"),
                    });
                }
                if let Some(nic) = &spec.nic {
                    if link_exists(None, &nic.port_name)? {
                        return Err(HypervisorError::NotOwned {
                            what: format!("interface {}", nic.port_name),
                        });
                    }
                }
                // Claim the guest before creating anything: an agent killed
                // between `ip netns add` and writing the record would leave a
                // namespace that no later agent may touch (it is not ours by
                // the record), so that VM could never converge. A record
                // without resources is repaired by the next define or start.
                let uid = self.claim_uid(spec.id)?;
                self.save(&GuestRecord {
                    spec: spec.clone(),
                    netns: netns.clone(),
                    process: None,
                    uid: Some(uid),
                })?;
                if let Err(err) = self.ensure_resources(spec, &netns, None) {
                    // Nothing half-applied: undo whatever was created.
                    let _ = self.remove_resources(&netns, spec.nic.as_ref());
                    let _ = fs::remove_file(self.state_path(spec.id));
                    return Err(err);
                }
                Ok(DefineOutcome::Created)
            }
            Some(mut record) => {
                let complete = hostnet::netns_exists(&netns)
                    && match &spec.nic {
                        Some(nic) => link_exists(None, &nic.port_name)?,
                        None => true,
                    }
                    && self.cgroups(&netns).dirs().iter().all(|d| d.is_dir())
                    // A shaper removed or changed behind our back (tc by
                    // hand, a rebuilt veth) is drift to repair, too.
                    && (spec.nic.is_none() || egress_matches(&netns, spec.egress_limit.as_ref())?);
                if record.spec == *spec && complete {
                    return Ok(DefineOutcome::Unchanged);
                }
                self.ensure_resources(spec, &netns, record.spec.nic.as_ref())?;
                // Limits and the veth apply live, but the guest process got
                // its channel path and name as environment at exec.
                // The writable layer's size is fixed when the guest starts.
                let restart_required = record.process.is_some_and(process_alive)
                    && (record.spec.channel_socket != spec.channel_socket
                        || record.spec.name != spec.name
                        || record.spec.disk_mib != spec.disk_mib);
                record.spec = spec.clone();
                self.save(&record)?;
                Ok(DefineOutcome::Updated { restart_required })
            }
        }
    }

    fn start(&self, id: Uuid) -> Result<(), HypervisorError> {
        let mut record = self.require(id)?;
        if record.process.is_some_and(process_alive) {
            return Ok(());
        }
        if !hostnet::netns_exists(&record.netns) {
            // A claimed guest whose creation was interrupted (see define).
            self.ensure_resources(&record.spec, &record.netns, None)?;
        }
        let cgroups = self.cgroups(&record.netns);
        // Anything left in the guest's group is a guest that the record does
        // not name: an agent killed between launching it and saving its pid.
        // It still holds the guest's local API port, so a second launch
        // would exit at once, forever; one guest process per VM means
        // clearing it first.
        kill_cgroup(&cgroups)?;
        // A new member of a frozen group would freeze at once.
        write_file(&cgroups.unified.join("cgroup.freeze"), "0")?;
        let uid = match record.uid {
            Some(uid) => uid,
            None => self.claim_uid(id)?,
        };
        record.uid = Some(uid);
        if let Some(dir) = record.spec.channel_socket.as_deref().and_then(Path::parent) {
            sandbox::prepare_channel_dir(dir, uid)?;
        }
        let process = self.spawn_guest(&record, uid)?;
        record.process = Some(process);
        self.save(&record)
    }

    fn pause(&self, id: Uuid) -> Result<(), HypervisorError> {
        let record = self.require(id)?;
        if !record.process.is_some_and(process_alive) {
            return Err(HypervisorError::InvalidState {
                id,
                operation: "pause",
                state: GuestState::Stopped,
            });
        }
        set_frozen(&self.cgroups(&record.netns).unified, true)
    }

    fn resume(&self, id: Uuid) -> Result<(), HypervisorError> {
        let record = self.require(id)?;
        if !record.process.is_some_and(process_alive) {
            return Err(HypervisorError::InvalidState {
                id,
                operation: "resume",
                state: GuestState::Stopped,
            });
        }
        set_frozen(&self.cgroups(&record.netns).unified, false)
    }

    fn stop(&self, id: Uuid) -> Result<(), HypervisorError> {
        let mut record = self.require(id)?;
        kill_cgroup(&self.cgroups(&record.netns))?;
        if record.process.take().is_some() {
            self.save(&record)?;
        }
        Ok(())
    }

    fn undefine(&self, id: Uuid) -> Result<(), HypervisorError> {
        let Some(record) = self.load(id)? else {
            return Ok(());
        };
        self.remove_resources(&record.netns, record.spec.nic.as_ref())?;
        // The guest's mounts died with its mount namespace; this is only
        // the empty mount point.
        remove_dir_if_present(&self.root_dir(id))?;
        if let Some(uid) = record.uid {
            self.uids.release(&self.state_path(id), uid)?;
        }
        for path in [self.state_path(id), self.log_path(id)] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(HypervisorError::io(format!("remove {}", path.display()), e)),
            }
        }
        Ok(())
    }

    fn info(&self, id: Uuid) -> Result<Option<GuestInfo>, HypervisorError> {
        match self.load(id)? {
            Some(record) => self.observe(&record).map(Some),
            None => Ok(None),
        }
    }

    fn list_owned(&self) -> Result<Vec<GuestInfo>, HypervisorError> {
        let mut guests = Vec::new();
        for id in self.record_ids()? {
            if let Some(record) = self.load(id)? {
                guests.push(self.observe(&record)?);
            }
        }
        guests.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(guests)
    }

    fn set_vcpus(&self, id: Uuid, vcpus: u32) -> Result<ResizeOutcome, HypervisorError> {
        let mut record = self.require(id)?;
        let mut spec = record.spec.clone();
        spec.vcpus = vcpus;
        spec.validate()?;
        write_limits(&self.cgroups(&record.netns), &spec)?;
        record.spec = spec;
        self.save(&record)?;
        Ok(ResizeOutcome::Applied)
    }

    fn set_memory(&self, id: Uuid, memory_mib: u64) -> Result<ResizeOutcome, HypervisorError> {
        let mut record = self.require(id)?;
        let mut spec = record.spec.clone();
        spec.memory_mib = memory_mib;
        spec.validate()?;
        write_limits(&self.cgroups(&record.netns), &spec)?;
        record.spec = spec;
        self.save(&record)?;
        Ok(ResizeOutcome::Applied)
    }

    /// Replaces the htb on the guest's `eth0` (or removes it) while the
    /// guest runs; its sockets and connections are untouched.
    fn set_egress_limit(
        &self,
        id: Uuid,
        limit: Option<RateLimit>,
    ) -> Result<ResizeOutcome, HypervisorError> {
        let mut record = self.require(id)?;
        let mut spec = record.spec.clone();
        spec.egress_limit = limit;
        spec.validate()?;
        apply_egress_limit(&record.netns, limit.as_ref())?;
        record.spec = spec;
        self.save(&record)?;
        Ok(ResizeOutcome::Applied)
    }
}

impl NamespaceHypervisor {
    /// The egress limit the kernel enforces on the guest's `eth0` now, read
    /// back from tc (not from our record): `None` when no shaper of ours is
    /// there. Lets reconcile and tests see drift, e.g. a hand-deleted qdisc.
    pub fn egress_limit_in_effect(
        &self,
        id: Uuid,
    ) -> Result<Option<EgressShaping>, HypervisorError> {
        let record = self.require(id)?;
        read_egress_limit(&record.netns)
    }
}

fn detect_layout(mount: &Path) -> Result<CgroupLayout, HypervisorError> {
    let controllers = mount.join("cgroup.controllers");
    if controllers.is_file() {
        let cpuset = fs::read_to_string(&controllers)
            .is_ok_and(|text| text.split_whitespace().any(|c| c == "cpuset"));
        return Ok(CgroupLayout::Unified {
            root: mount.to_path_buf(),
            cpuset,
        });
    }
    let unified = mount.join("unified");
    let (cpu, memory) = (mount.join("cpu"), mount.join("memory"));
    if unified.join("cgroup.procs").is_file()
        && cpu.join("cpu.cfs_quota_us").is_file()
        && memory.join("memory.limit_in_bytes").is_file()
    {
        let cpuset = mount.join("cpuset");
        return Ok(CgroupLayout::Hybrid {
            unified,
            cpu,
            memory,
            cpuset: cpuset.join("cpuset.cpus").is_file().then_some(cpuset),
        });
    }
    Err(HypervisorError::Unsupported {
        backend: BackendKind::Namespace,
        operation: "guests without cgroup v2 (need /sys/fs/cgroup as cgroup2, or the hybrid layout with /sys/fs/cgroup/unified)",
    })
}

/// Applies the spec's CPU time, CPU set, memory and swap limits; each
/// takes effect on the running guest at once.
fn write_limits(cgroups: &GuestCgroups, spec: &GuestSpec) -> Result<(), HypervisorError> {
    let quota = u64::from(spec.vcpus) * CPU_PERIOD_US;
    let bytes = spec.memory_mib * MIB;
    let swap_bytes = spec.swap_mib * MIB;
    if cgroups.v1_limits {
        write_file(
            &cgroups.cpu.join("cpu.cfs_period_us"),
            &CPU_PERIOD_US.to_string(),
        )?;
        write_file(&cgroups.cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
        write_v1_memory(&cgroups.memory, bytes, bytes + swap_bytes)?;
    } else {
        write_file(
            &cgroups.cpu.join("cpu.max"),
            &format!("{quota} {CPU_PERIOD_US}"),
        )?;
        write_file(&cgroups.memory.join("memory.max"), &bytes.to_string())?;
        // Absent without swap accounting; then there is no swap to bound.
        let swap_max = cgroups.memory.join("memory.swap.max");
        if swap_max.is_file() {
            write_file(&swap_max, &swap_bytes.to_string())?;
        }
    }
    if let Some(dir) = &cgroups.cpuset {
        write_cpuset(dir, cgroups.v1_limits, spec)?;
    }
    Ok(())
}

/// v1 memory: `memsw` (memory + swap) must never be below the memory
/// limit, so the order of the two writes follows the direction of change.
/// Without swap accounting (`memsw` absent) only memory is bounded.
fn write_v1_memory(dir: &Path, bytes: u64, with_swap: u64) -> Result<(), HypervisorError> {
    let memory = dir.join("memory.limit_in_bytes");
    let memsw = dir.join("memory.memsw.limit_in_bytes");
    if !memsw.is_file() {
        return write_file(&memory, &bytes.to_string());
    }
    let current: u64 = read_trimmed(&memory)?.parse().unwrap_or(u64::MAX);
    if bytes > current {
        write_file(&memsw, &with_swap.to_string())?;
        write_file(&memory, &bytes.to_string())
    } else {
        write_file(&memory, &bytes.to_string())?;
        write_file(&memsw, &with_swap.to_string())
    }
}

/// Gives the guest `vcpus` of the CPUs its parent group may use. The
/// kernel moves the guest's running tasks onto the new set, which changes
/// their affinity and so what `nproc` says inside the guest.
fn write_cpuset(dir: &Path, v1: bool, spec: &GuestSpec) -> Result<(), HypervisorError> {
    let parent = dir.parent().unwrap_or(dir);
    let (effective_cpus, effective_mems) = if v1 {
        ("cpuset.effective_cpus", "cpuset.effective_mems")
    } else {
        ("cpuset.cpus.effective", "cpuset.mems.effective")
    };
    let listed = read_trimmed(&parent.join(effective_cpus))?;
    let available = parse_cpu_list(&listed).ok_or_else(|| HypervisorError::Command {
        command: format!("read {}", parent.join(effective_cpus).display()),
        detail: format!("not a CPU list: {listed:?}"),
        class: ErrorClass::Permanent,
    })?;
    // v2 inherits memory nodes when the file is empty; v1 needs them set.
    if v1 && read_trimmed(&dir.join("cpuset.mems"))?.is_empty() {
        let mems = read_trimmed(&parent.join(effective_mems))?;
        write_file(&dir.join("cpuset.mems"), &mems)?;
    }
    let cpus = guest_cpus(&available, spec.vcpus, spec.id);
    write_file(&dir.join("cpuset.cpus"), &format_cpu_list(&cpus))
}

/// Moves the guest's processes into its v1 cpuset group when they are not
/// there: a guest started by an agent that made no cpuset group would keep
/// seeing every host CPU until its next restart. New processes inherit the
/// group, so the processes of the (controller-less) v2 group are all of
/// the guest's.
fn adopt_into_cpuset(cgroups: &GuestCgroups) -> Result<(), HypervisorError> {
    let Some(cpuset) = cgroups.cpuset.as_ref().filter(|c| **c != cgroups.unified) else {
        return Ok(());
    };
    let procs = |dir: &Path| -> Result<Vec<String>, HypervisorError> {
        Ok(read_trimmed(&dir.join("cgroup.procs"))?
            .lines()
            .map(str::to_string)
            .collect())
    };
    let members = procs(cpuset)?;
    for pid in procs(&cgroups.unified)? {
        if !members.contains(&pid) {
            match fs::write(cpuset.join("cgroup.procs"), &pid) {
                // Exited since the list was read.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                other => other.map_err(|e| {
                    HypervisorError::io(format!("move {pid} into {}", cpuset.display()), e)
                })?,
            }
        }
    }
    Ok(())
}

fn read_trimmed(path: &Path) -> Result<String, HypervisorError> {
    fs::read_to_string(path)
        .map(|text| text.trim().to_string())
        .map_err(|e| HypervisorError::io(format!("read {}", path.display()), e))
}

/// (vcpus, memory MiB) as the kernel enforces them.
fn read_limits(cgroups: &GuestCgroups) -> Option<(u32, u64)> {
    let read = |p: PathBuf| fs::read_to_string(p).ok();
    let (quota, period) = if cgroups.v1_limits {
        (
            read(cgroups.cpu.join("cpu.cfs_quota_us"))?
                .trim()
                .parse::<u64>()
                .ok()?,
            read(cgroups.cpu.join("cpu.cfs_period_us"))?
                .trim()
                .parse::<u64>()
                .ok()?,
        )
    } else {
        let text = read(cgroups.cpu.join("cpu.max"))?;
        let mut parts = text.split_whitespace();
        (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?)
    };
    let memory_file = if cgroups.v1_limits {
        "memory.limit_in_bytes"
    } else {
        "memory.max"
    };
    let bytes: u64 = read(cgroups.memory.join(memory_file))?
        .trim()
        .parse()
        .ok()?;
    let vcpus = u32::try_from(quota.div_ceil(period.max(1))).ok()?;
    Some((vcpus, bytes / MIB))
}

fn cgroup_frozen(dir: &Path) -> Result<bool, HypervisorError> {
    let path = dir.join("cgroup.events");
    match fs::read_to_string(&path) {
        Ok(text) => Ok(text.lines().any(|l| l.trim() == "frozen 1")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(HypervisorError::io(format!("read {}", path.display()), e)),
    }
}

/// Writes cgroup.freeze and waits until the kernel reports the new state,
/// so a caller that sees Ok can rely on it.
fn set_frozen(dir: &Path, frozen: bool) -> Result<(), HypervisorError> {
    write_file(&dir.join("cgroup.freeze"), if frozen { "1" } else { "0" })?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while cgroup_frozen(dir)? != frozen {
        if Instant::now() > deadline {
            return Err(HypervisorError::Command {
                command: format!("{}/cgroup.freeze", dir.display()),
                detail: format!("group did not reach frozen={frozen} within 5 s"),
                class: ErrorClass::Transient,
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Kills every process in the guest's group and waits until it is empty.
fn kill_cgroup(cgroups: &GuestCgroups) -> Result<(), HypervisorError> {
    let dir = &cgroups.unified;
    if !dir.is_dir() {
        return Ok(());
    }
    // SIGKILL is delivered to frozen tasks, but thaw anyway so nothing
    // lingers in a frozen state that rmdir would trip over.
    let _ = write_file(&dir.join("cgroup.freeze"), "0");
    write_file(&dir.join("cgroup.kill"), "1")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let members: usize = cgroups
            .dirs()
            .iter()
            .map(|d| {
                fs::read_to_string(d.join("cgroup.procs"))
                    .map(|t| t.lines().count())
                    .unwrap_or(0)
            })
            .sum();
        if members == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(HypervisorError::Command {
                command: format!("{}/cgroup.kill", dir.display()),
                detail: format!("{members} processes still in the group after 5 s"),
                class: ErrorClass::Transient,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn remove_cgroup_dir(dir: &Path) -> Result<(), HypervisorError> {
    // Exited tasks leave the group asynchronously; rmdir can briefly see
    // EBUSY right after a kill.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(HypervisorError::io(format!("rmdir {}", dir.display()), e)),
        }
    }
}

fn remove_dir_if_present(dir: &Path) -> Result<(), HypervisorError> {
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(HypervisorError::io(format!("rmdir {}", dir.display()), e)),
    }
}

fn write_file(path: &Path, value: &str) -> Result<(), HypervisorError> {
    fs::write(path, value)
        .map_err(|e| HypervisorError::io(format!("write {value:?} to {}", path.display()), e))
}

fn process_alive(process: ProcessRecord) -> bool {
    hostnet::process_start_time(process.pid) == Some(process.start_time)
}

const MULTICAST_ROUTE: &str = "224.0.0.0/4";

fn ensure_veth(netns: &str, nic: &NicSpec, mtu: u32) -> Result<(), HypervisorError> {
    let host_up = link_exists(None, &nic.port_name)?;
    let guest_up = link_exists(Some(netns), "eth0")?;
    if !(host_up && guest_up) {
        // A half pair from an interrupted define: start over.
        if host_up {
            run("ip", &["link", "del", &nic.port_name])?;
        }
        if guest_up {
            run("ip", &["-n", netns, "link", "del", "eth0"])?;
        }
        // Both ends: the host end must pass the guest's full frames too.
        let mtu = mtu.to_string();
        run(
            "ip",
            &[
                "link",
                "add",
                &nic.port_name,
                "mtu",
                &mtu,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "mtu",
                &mtu,
                "address",
                &nic.mac,
                "netns",
                netns,
            ],
        )?;
    } else {
        run(
            "ip",
            &["-n", netns, "link", "set", "eth0", "address", &nic.mac],
        )?;
    }
    run("ip", &["-n", netns, "addr", "flush", "dev", "eth0"])?;
    if let Some(cidr) = &nic.ipv4_cidr {
        run("ip", &["-n", netns, "addr", "add", cidr, "dev", "eth0"])?;
    }
    // Userspace OVS does not complete offloaded checksums: UDP from the
    // guest would arrive with bad checksums and be dropped.
    hostnet::tx_offload_off(Some(netns), "eth0")?;
    run("ip", &["-n", netns, "link", "set", "eth0", "up"])?;
    // Like a VM with one NIC, the guest sends multicast out of it; without
    // this route a program that does not pick the interface itself gets
    // "network unreachable" for every group.
    run(
        "ip",
        &[
            "-n",
            netns,
            "route",
            "replace",
            MULTICAST_ROUTE,
            "dev",
            "eth0",
        ],
    )?;
    let txqueuelen = HOST_PORT_TXQUEUELEN.to_string();
    run(
        "ip",
        &[
            "link",
            "set",
            &nic.port_name,
            "txqueuelen",
            &txqueuelen,
            "up",
        ],
    )?;
    Ok(())
}

/// Installs, changes or removes the egress shaper on `eth0` in `netns`.
/// `replace` makes each step idempotent and keeps the classes in place on
/// a change, so a rate change never leaves the guest unshaped in between.
///
/// Layout: class 1:1 holds the ceiling; under it leaf 1:20 (prio 0) takes
/// small TCP segments (pure ACKs) and leaf 1:10 everything else, so ACKs
/// of traffic INTO the guest do not queue behind the guest's own bulk
/// data. Without that, a 10 Mbit/s egress limit cut a concurrent
/// 20 Mbit/s download to 8.2 Mbit/s (measured). The two leaves' guaranteed
/// rates add up to the limit's guaranteed rate, so the total never
/// exceeds the ceiling.
fn apply_egress_limit(netns: &str, limit: Option<&RateLimit>) -> Result<(), HypervisorError> {
    let ours = format!("qdisc htb {EGRESS_QDISC} ");
    let Some(limit) = limit else {
        if root_qdisc(netns)?.is_some_and(|q| q.starts_with(&ours)) {
            run("tc", &["-n", netns, "qdisc", "del", "dev", "eth0", "root"])?;
        }
        return Ok(());
    };
    limit.validate()?;
    let (bulk_kbps, ack_kbps) = split_guaranteed(limit.guaranteed_kbps());
    let ceiling = format!("{}kbit", limit.max_kbps);
    let bulk = format!("{bulk_kbps}kbit");
    let acks = format!("{ack_kbps}kbit");
    // tc takes a bare size in bytes; the API's kbytes are 1000 bytes.
    let burst = limit.burst_kbytes.map(|kb| (kb * 1000).to_string());
    // htb cannot "change" its root in place; when ours is there the class
    // replaces below are the whole update.
    let fresh = !root_qdisc(netns)?.is_some_and(|q| q.starts_with(&ours));
    if fresh {
        run(
            "tc",
            &[
                "-n",
                netns,
                "qdisc",
                "replace",
                "dev",
                "eth0",
                "root",
                "handle",
                EGRESS_QDISC,
                "htb",
                "default",
                "10",
            ],
        )?;
    }
    for (parent, class, rate, prio) in [
        (EGRESS_QDISC, EGRESS_CEILING_CLASS, &ceiling, "0"),
        (EGRESS_CEILING_CLASS, EGRESS_ACK_CLASS, &acks, "0"),
        (EGRESS_CEILING_CLASS, EGRESS_LEAF_CLASS, &bulk, "1"),
    ] {
        let mut args = vec![
            "-n", netns, "class", "replace", "dev", "eth0", "parent", parent, "classid", class,
            "htb", "rate", rate, "ceil", &ceiling, "prio", prio,
            // One full frame per round: the default (rate / r2q) is far
            // above htb's sane range at these rates and only draws warnings.
            "quantum", "1514",
        ];
        if let Some(burst) = &burst {
            args.extend(["burst", burst, "cburst", burst]);
        }
        run("tc", &args)?;
    }
    if fresh {
        // IPv4 TCP with total length < 128: pure ACKs (with timestamps and
        // SACK blocks), SYNs and FINs.
        run(
            "tc",
            &[
                "-n",
                netns,
                "filter",
                "add",
                "dev",
                "eth0",
                "parent",
                EGRESS_QDISC,
                "protocol",
                "ip",
                "prio",
                "1",
                "u32",
                "match",
                "ip",
                "protocol",
                "6",
                "0xff",
                "match",
                "u16",
                "0x0000",
                "0xff80",
                "at",
                "2",
                "flowid",
                EGRESS_ACK_CLASS,
            ],
        )?;
    }
    Ok(())
}

/// Whether the shaper on `eth0` in `netns` is what `limit` asks for.
fn egress_matches(netns: &str, limit: Option<&RateLimit>) -> Result<bool, HypervisorError> {
    if !link_exists(Some(netns), "eth0")? {
        return Ok(false);
    }
    Ok(match (read_egress_limit(netns)?, limit) {
        (None, None) => true,
        (Some(shaping), Some(limit)) => shaping.enforces(limit),
        _ => false,
    })
}

/// Splits a guaranteed rate between bulk data and the ACK class: 1/20 for
/// ACKs (at least 1 kbit/s), which is what a full-rate TCP download's ACKs
/// need; they borrow up to the ceiling when there is more.
fn split_guaranteed(guaranteed_kbps: u64) -> (u64, u64) {
    let acks = (guaranteed_kbps / 20).max(1);
    (guaranteed_kbps.saturating_sub(acks).max(1), acks)
}

/// The first line of `tc qdisc show dev eth0 root` in `netns`, if any.
fn root_qdisc(netns: &str) -> Result<Option<String>, HypervisorError> {
    let text = output("tc", &["-n", netns, "qdisc", "show", "dev", "eth0", "root"])?;
    Ok(text
        .lines()
        .next()
        .map(str::to_string)
        .filter(|l| !l.is_empty()))
}

fn read_egress_limit(netns: &str) -> Result<Option<EgressShaping>, HypervisorError> {
    if !root_qdisc(netns)?.is_some_and(|q| q.starts_with(&format!("qdisc htb {EGRESS_QDISC} "))) {
        return Ok(None);
    }
    // This iproute2 has no JSON output for htb classes; the text form is
    // stable: `class htb 1:10 parent 1:1 prio 0 rate 5Mbit ceil 20Mbit burst 32000b ...`.
    let text = output("tc", &["-n", netns, "class", "show", "dev", "eth0"])?;
    let class = |handle: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("class htb {handle} ")))
            .and_then(parse_htb_class)
    };
    let (Some(bulk), Some(acks)) = (class(EGRESS_LEAF_CLASS), class(EGRESS_ACK_CLASS)) else {
        return Ok(None);
    };
    Ok(Some(EgressShaping {
        guaranteed_kbps: bulk.guaranteed_kbps + acks.guaranteed_kbps,
        ..bulk
    }))
}

/// Rate, ceil and burst of one `tc class show` line of an htb class.
fn parse_htb_class(line: &str) -> Option<EgressShaping> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let value = |key: &str| {
        words
            .iter()
            .position(|w| *w == key)
            .and_then(|i| words.get(i + 1))
            .copied()
    };
    Some(EgressShaping {
        guaranteed_kbps: parse_tc_rate(value("rate")?)? / 1000,
        max_kbps: parse_tc_rate(value("ceil")?)? / 1000,
        burst_bytes: parse_tc_size(value("burst")?)?,
    })
}

/// tc's printed rate (`20Mbit`, `12500Kbit`, `800bit`), SI units, in bit/s.
fn parse_tc_rate(text: &str) -> Option<u64> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let factor: u64 = match unit {
        "bit" => 1,
        "Kbit" => 1_000,
        "Mbit" => 1_000_000,
        "Gbit" => 1_000_000_000,
        "Tbit" => 1_000_000_000_000,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(factor)
}

/// tc's printed size (`1600b`, `125Kb`, `2Mb`), binary units, in bytes.
fn parse_tc_size(text: &str) -> Option<u64> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let factor: u64 = match unit {
        "b" => 1,
        "Kb" => 1 << 10,
        "Mb" => 1 << 20,
        "Gb" => 1 << 30,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(factor)
}

/// The egress shaper the kernel has on a guest's `eth0`, in its own terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EgressShaping {
    /// Ceiling, kbit/s.
    pub max_kbps: u64,
    /// Guaranteed rate of the leaf class, kbit/s.
    pub guaranteed_kbps: u64,
    /// Bucket, bytes (tc's own minimum when the limit named none).
    pub burst_bytes: u64,
}

impl EgressShaping {
    /// Whether this is what `limit` asks for (the burst only if it names
    /// one; htb keeps it as a time at the class's rate, so it reads back a
    /// few bytes off: 1 % is accepted).
    pub fn enforces(&self, limit: &RateLimit) -> bool {
        self.max_kbps == limit.max_kbps
            && self.guaranteed_kbps == limit.guaranteed_kbps()
            && limit.burst_kbytes.is_none_or(|kb| {
                let wanted = kb * 1000;
                self.burst_bytes.abs_diff(wanted) <= (wanted / 100).max(64)
            })
    }
}

/// Whether guest egress shaping works on this host: `tc` runs and the
/// kernel accepts an htb qdisc and class. Tried for real in a throwaway
/// network namespace (on its loopback), because a kernel config can claim
/// sch_htb while the tool or the module is missing. Needs root, like the
/// namespace backend itself. `Err` says what failed.
pub fn probe_guest_egress_shaping() -> Result<(), String> {
    // The children `tc` inherit the thread's new namespace; the kernel
    // frees it when the thread exits.
    hostnet::in_new_netns(|| -> Result<(), String> {
        for args in [
            &[
                "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "10",
            ][..],
            &[
                "class", "add", "dev", "lo", "parent", "1:", "classid", "1:10", "htb", "rate",
                "1mbit", "ceil", "2mbit",
            ][..],
        ] {
            run("tc", args).map_err(|e| e.to_string())?;
        }
        Ok(())
    })
    .map_err(|e| e.to_string())?
}

/// Whether tc can police here (ingress qdisc + u32 filter + police action):
/// what libvirt's `<bandwidth><outbound>` runs on a QEMU tap, and what OVS
/// ingress policing needs. Tried in a throwaway namespace; `Err` says why
/// not (on the build machine: the kernel has no act_police).
pub fn probe_tc_police() -> Result<(), String> {
    hostnet::in_new_netns(|| -> Result<(), String> {
        for args in [
            &["qdisc", "add", "dev", "lo", "ingress"][..],
            &[
                "filter", "add", "dev", "lo", "parent", "ffff:", "protocol", "all", "u32", "match",
                "u32", "0", "0", "police", "rate", "1mbit", "burst", "10k", "drop", "flowid", ":1",
            ][..],
        ] {
            run("tc", args).map_err(|e| e.to_string())?;
        }
        Ok(())
    })
    .map_err(|e| e.to_string())?
}

/// Whether `link` exists in `netns` (or the agent's own namespace). A
/// lookup that fails for another reason is an error, not "absent": the
/// caller would otherwise create a link that is already there.
fn link_exists(netns: Option<&str>, link: &str) -> Result<bool, HypervisorError> {
    hostnet::link_show(netns, link)
        .map(|line| line.is_some())
        .map_err(|e| match e {
            // A lookup that ran and failed may work next time, whatever
            // it said.
            HostnetError::Failed { .. } => {
                HypervisorError::from(e).reclassified(ErrorClass::Transient)
            }
            other => other.into(),
        })
}

fn run(program: &str, args: &[&str]) -> Result<(), HypervisorError> {
    hostnet::run(Command::new(program).args(args))?;
    Ok(())
}

/// Like [`run`], returning stdout; a tool that ran and failed is always
/// transient here (these are reads).
fn output(program: &str, args: &[&str]) -> Result<String, HypervisorError> {
    hostnet::run(Command::new(program).args(args)).map_err(|e| match e {
        HostnetError::Failed { .. } => HypervisorError::from(e).reclassified(ErrorClass::Transient),
        other => other.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_start_time_is_readable() {
        let pid = std::process::id();
        let start = hostnet::process_start_time(pid).expect("own /proc/<pid>/stat");
        assert!(process_alive(ProcessRecord {
            pid,
            start_time: start
        }));
        assert!(!process_alive(ProcessRecord {
            pid,
            start_time: start + 1
        }));
    }

    #[test]
    fn config_is_checked() {
        let err = NamespaceHypervisor::new(NamespaceConfig::new("/tmp/x", vec![])).err();
        assert!(matches!(
            err,
            Some(HypervisorError::InvalidSpec {
                field: "guest_command",
                ..
            })
        ));
        let mut config = NamespaceConfig::new("/tmp/x", vec!["sleep".into()]);
        config.cgroup_parent = "a/b".into();
        assert!(matches!(
            NamespaceHypervisor::new(config).err(),
            Some(HypervisorError::InvalidSpec {
                field: "cgroup_parent",
                ..
            })
        ));
    }

    #[test]
    fn probe_checks_the_cgroup_mount() {
        NamespaceHypervisor::probe(Path::new("/sys/fs/cgroup")).unwrap();
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            NamespaceHypervisor::probe(empty.path()),
            Err(HypervisorError::Unsupported { .. })
        ));
    }

    #[test]
    fn htb_class_lines_parse() {
        let line =
            "class htb 1:10 parent 1:1 prio 0 rate 5Mbit ceil 20Mbit burst 32000b cburst 32000b ";
        let shaping = parse_htb_class(line).unwrap();
        assert_eq!(
            shaping,
            EgressShaping {
                max_kbps: 20_000,
                guaranteed_kbps: 5_000,
                burst_bytes: 32_000
            }
        );
        let asked = RateLimit {
            max_kbps: 20_000,
            min_kbps: Some(5_000),
            burst_kbytes: Some(32),
        };
        assert!(shaping.enforces(&asked));
        assert!(!shaping.enforces(&RateLimit {
            min_kbps: None,
            ..asked
        }));
        assert_eq!(parse_tc_rate("12500Kbit"), Some(12_500_000));
        assert_eq!(parse_tc_size("125Kb"), Some(128_000));
        assert_eq!(parse_tc_rate("5Mbps"), None);
    }

    #[test]
    fn netns_name_uses_short_id() {
        let id = Uuid::parse_str("6f1c2a3b-4d5e-4f60-8172-8394a5b6c7d8").unwrap();
        assert_eq!(NamespaceHypervisor::netns_name(id), "vm-6f1c2a3b");
    }
}
