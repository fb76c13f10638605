//! `measurelab lab`: a whole platform on one machine, built from network
//! namespaces, a management bridge, userspace Open vSwitch per node and a lab
//! switch, with a controller and one agent per node running as background
//! processes. The layout is pinned in CONTRACTS.md ("Lab layout"); other
//! components' tests rely on it:
//!
//! - `<name>-mgmt`: bridge `br-mgmt` 10.254.0.1/24; the controller's gRPC
//!   socket (10.254.0.1:7071) and flow collector (nfcapd, UDP
//!   10.254.0.1:2055) are bound in here, its HTTP API on 127.0.0.1.
//! - `<name>-nK`: `mgmt0` 10.254.0.(10+K)/24, `uplink0` (no address), the
//!   node's own ovsdb-server + ovs-vswitchd (run dir `DIR/nodes/nK/ovs`) and
//!   its agent (state dir `DIR/nodes/nK/agent`). The agent's service host
//!   puts `svc0` (OVS internal port on br-int, VLAN 4000) at
//!   10.253.0.(10+K)/24 with its point's control port 7090: the service
//!   network, which the uplinks trunk like a slice.
//! - `<name>-sw`: the lab switch's ovs-vswitchd with bridge `<name>-sw`
//!   (netdev, every port a VLAN trunk) and the uplink peers `<name>-nK-up`.
//!   Its ovsdb-server runs in the root namespace (`DIR/ovs/db.sock`). This
//!   namespace deviates from CONTRACTS.md, which put the switch in the root
//!   namespace: userspace OVS allows one ovs-vswitchd per namespace (see
//!   `up`), and labs must coexist with each other and with test sandboxes.
//! - `--topology routed` replaces the lab switch with a router namespace
//!   `<name>-rt` and joins the nodes through VXLAN tunnels (see `routed`).
//! - `<name>-inet`: the lab's public network (bridge `br-inet`,
//!   198.51.100.0/24); node K has `inet0` at 198.51.100.(10+K), which its
//!   agent gets as `--public-address` (platform gateways listen there), in
//!   both topologies. `lab laptop --index I` adds `<name>-lapI` at
//!   198.51.100.(100+I) with no other link (see `internet`).
//!
//! Every step of `up` first checks whether its piece is already there, so
//! `up` on a running lab starts nothing, and `up` after a process died
//! restarts just that process. `down` removes everything, found both from the
//! pid files and by sweeping namespaces and command lines, so it also cleans
//! up after a crashed `up`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

mod guests;
mod hypervisor;
mod internet;
mod routed;
mod sys;
mod table;
mod tenant;
mod uplinks;

use sys::{
    command_in, ip, ip_in, link_exists, live_pid, log_tail, netns_delete, netns_ensure,
    netns_exists, netns_pids, run, tx_offload_off, veth_add, write_private,
};

const VSWITCH_SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
const MGMT_BRIDGE: &str = "br-mgmt";
const MGMT_CONTROLLER_IP: &str = "10.254.0.1";
const GRPC_PORT: u16 = 7071;
/// UDP port of the controller's flow collector (NetFlow/IPFIX's usual one).
const FLOW_COLLECTOR_PORT: u16 = 2055;
/// Node K gets 10.254.0.(10+K), so K stops before the /24 runs out.
const MAX_NODES: u32 = 200;
/// Most controller replicas a lab runs (`--controllers`).
const MAX_CONTROLLERS: u32 = 3;
/// The PostgreSQL URL of a lab with `--store` (it may hold a password).
const STORE_URL_FILE: &str = "store.url";
/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;
const STATE_FILE: &str = "lab.json";

#[derive(Debug, Args)]
pub struct LabArgs {
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Debug, Args, Clone)]
struct LabTarget {
    /// Lab name: prefix of its namespaces, veths and switch.
    #[arg(long, default_value = "mlab")]
    name: String,
    /// Lab directory (default /var/lib/measurelab/lab/NAME).
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum LabCommand {
    /// Create (or repair) the lab and wait until every node is online.
    Up {
        #[command(flatten)]
        target: LabTarget,
        /// Number of measurement nodes.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_NODES)))]
        nodes: u32,
        /// HTTP port of the controller on 127.0.0.1 (0 picks a free one).
        #[arg(long, default_value_t = 7070)]
        http_port: u16,
        /// Heartbeat interval told to the agents.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
        heartbeat_interval_seconds: u64,
        /// A node silent for this long is offline.
        #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=86400))]
        offline_after_seconds: u64,
        /// How long to wait for every node to come online.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
        timeout_seconds: u64,
        /// `qemu`: start the system libvirtd QEMU guests need (unless one
        /// answers) and have the agents use qemu:///system, so VMs with
        /// `backend = "libvirt"` boot under QEMU; `lab down` stops it again.
        #[arg(long, value_enum, default_value_t = hypervisor::LabHypervisor::Namespace)]
        hypervisor: hypervisor::LabHypervisor,
        /// Links from each node to the lab switch; 2 bonds them (`bond0` on
        /// the node) so failover can be exercised.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(uplinks::MAX_UPLINKS)))]
        uplinks: u32,
        /// Bond mode with --uplinks 2: active-backup or balance-slb.
        #[arg(long, default_value = "active-backup", value_parser = uplinks::parse_lab_bond_mode)]
        bond_mode: String,
        /// Run the controller's APIs in plaintext instead of TLS (the
        /// default: a CA made in the controller's data dir, agents joining
        /// with a bundle that pins it, mTLS for nodes).
        #[arg(long)]
        plaintext: bool,
        /// How nodes are joined: `switched` (one lab switch, every node's
        /// uplink a VLAN trunk) or `routed` (each node in its own subnet
        /// 10.60.K.0/24 behind the router namespace NAME-rt; platforms reach
        /// across sites through per-platform VXLAN tunnels).
        #[arg(long, value_enum, default_value_t = routed::LabTopology::Switched)]
        topology: routed::LabTopology,
        /// Controller replicas (1 to 3). More than one needs --store: the
        /// replicas share one PostgreSQL database, agents and `lab env`
        /// get every replica's endpoint and fail over between them.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_CONTROLLERS)))]
        controllers: u32,
        /// `postgres://…`: the controllers keep their tables in this
        /// PostgreSQL database instead of SQLite files (kept in DIR/store.url,
        /// mode 0600, for later `lab up`s). Also read from MEASURELAB_LAB_STORE.
        #[arg(long, env = "MEASURELAB_LAB_STORE", hide_env_values = true)]
        store: Option<String>,
    },
    /// Print the node table from the controller's HTTP API.
    Status {
        #[command(flatten)]
        target: LabTarget,
        /// Print the raw JSON node list instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print MEASURELAB_ENDPOINT=... and MEASURELAB_TOKEN=... lines
    /// (use: `export $(measurelab lab env)`). The token is the demo
    /// tenant's member token, as a researcher would have.
    Env {
        #[command(flatten)]
        target: LabTarget,
        /// Print the operator token instead (nodes, appliances, tenants).
        #[arg(long)]
        operator: bool,
    },
    /// Stop every lab process and delete its namespaces, links and run dirs.
    Down {
        #[command(flatten)]
        target: LabTarget,
    },
    /// Add a "laptop": a namespace attached only to the lab's public
    /// network, as a researcher's machine; prints its name.
    Laptop {
        #[command(flatten)]
        target: LabTarget,
        /// Laptop number (1..=99): namespace <name>-lapI, 198.51.100.(100+I).
        #[arg(long, default_value_t = 1)]
        index: u32,
    },
    /// Write a terraform CLI config for the lab and print its path.
    Tfrc {
        #[command(flatten)]
        target: LabTarget,
        /// Directory holding terraform-provider-measurelab (default: beside this binary).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
    },
}

pub fn main(args: LabArgs) -> anyhow::Result<()> {
    match args.command {
        LabCommand::Up {
            target,
            nodes,
            http_port,
            heartbeat_interval_seconds,
            offline_after_seconds,
            timeout_seconds,
            hypervisor,
            uplinks,
            bond_mode,
            plaintext,
            topology,
            controllers,
            store,
        } => {
            let lab = Lab::new(&target)?;
            if let Some(url) = &store {
                if !measurelab_controller::is_postgres_url(url) {
                    bail!("--store: expected a postgres:// or postgresql:// URL");
                }
            }
            let store = match store {
                Some(url) => Some(url),
                None => lab.stored_store_url()?,
            };
            if controllers > 1 && store.is_none() {
                bail!("--controllers: {controllers} replicas need one PostgreSQL database to share (--store postgres://…)");
            }
            lab.check_interface_names(nodes)?;
            lab.check_uplink_names(nodes, uplinks)?;
            if topology == routed::LabTopology::Routed && uplinks != 1 {
                bail!("--uplinks: a routed lab's node has one link, to its router; bonds need --topology switched");
            }
            let settings = LabSettings {
                name: lab.name.clone(),
                nodes,
                http_port,
                heartbeat_interval_seconds,
                offline_after_seconds,
                hypervisor,
                uplinks,
                bond_mode,
                tls: !plaintext,
                topology,
                controllers,
                postgres: store.is_some(),
            };
            lab.up(
                &settings,
                store.as_deref(),
                Duration::from_secs(timeout_seconds),
            )
        }
        LabCommand::Status { target, json } => Lab::new(&target)?.status(json),
        LabCommand::Env { target, operator } => Lab::new(&target)?.env(operator),
        LabCommand::Down { target } => Lab::new(&target)?.down(),
        LabCommand::Laptop { target, index } => Lab::new(&target)?.laptop(index),
        LabCommand::Tfrc { target, bin_dir } => {
            let lab = Lab::new(&target)?;
            let bin_dir = match bin_dir {
                Some(dir) => dir,
                None => current_exe()?
                    .parent()
                    .map(Path::to_path_buf)
                    .context("the measurelab binary has no parent directory")?,
            };
            let path = crate::tfrc::write_tfrc(&lab.dir, &bin_dir)?;
            println!("{}", path.display());
            Ok(())
        }
    }
}

/// What `up` was asked for, kept in DIR/lab.json so a second `up` can tell
/// whether it is the same lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LabSettings {
    name: String,
    nodes: u32,
    http_port: u16,
    heartbeat_interval_seconds: u64,
    offline_after_seconds: u64,
    /// Absent in a lab.json written before `--hypervisor` existed.
    #[serde(default)]
    hypervisor: hypervisor::LabHypervisor,
    /// Links per node to the lab switch (labs from before the flag have 1).
    #[serde(default = "one_uplink")]
    uplinks: u32,
    /// Their bond mode when more than one.
    #[serde(default = "default_bond_mode")]
    bond_mode: String,
    /// TLS on both controller APIs (labs from before TLS ran plaintext).
    #[serde(default)]
    tls: bool,
    /// Switched or routed (labs from before the flag are switched).
    #[serde(default)]
    topology: routed::LabTopology,
    /// Controller replicas (labs from before the flag have one).
    #[serde(default = "one_controller")]
    controllers: u32,
    /// Tables in the PostgreSQL database of DIR/store.url, not SQLite.
    #[serde(default)]
    postgres: bool,
}

fn one_controller() -> u32 {
    1
}

fn one_uplink() -> u32 {
    1
}

fn default_bond_mode() -> String {
    "active-backup".into()
}

/// Names and paths of one lab.
#[derive(Debug, Clone)]
struct Lab {
    name: String,
    dir: PathBuf,
}

fn current_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot locate the measurelab binary")
}

impl Lab {
    fn new(target: &LabTarget) -> anyhow::Result<Self> {
        let name = &target.name;
        let valid = !name.is_empty()
            && name.as_bytes()[0].is_ascii_lowercase()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.ends_with('-');
        if !valid {
            bail!("--name: {name:?} must start with a lowercase letter and contain only lowercase letters, digits and '-'");
        }
        let dir = match &target.dir {
            Some(dir) if dir.is_absolute() => dir.clone(),
            Some(dir) => std::env::current_dir()
                .context("cannot resolve --dir")?
                .join(dir),
            None => PathBuf::from("/var/lib/measurelab/lab").join(name),
        };
        Ok(Lab {
            name: name.clone(),
            dir,
        })
    }

    /// Fail before touching anything when node K's uplink name would not fit.
    fn check_interface_names(&self, nodes: u32) -> anyhow::Result<()> {
        let longest = self.uplink(nodes);
        if longest.len() > MAX_IFNAME {
            bail!(
                "--name: {:?} is too long for {nodes} nodes: interface {longest:?} would exceed {MAX_IFNAME} characters (use at most {} characters)",
                self.name,
                MAX_IFNAME - (longest.len() - self.name.len())
            );
        }
        Ok(())
    }

    fn mgmt_ns(&self) -> String {
        format!("{}-mgmt", self.name)
    }
    fn node_ns(&self, k: u32) -> String {
        format!("{}-n{k}", self.name)
    }
    fn uplink(&self, k: u32) -> String {
        format!("{}-n{k}-up", self.name)
    }
    fn switch_bridge(&self) -> String {
        format!("{}-sw", self.name)
    }
    /// The router between the node subnets of a routed lab.
    fn router_ns(&self) -> String {
        format!("{}-rt", self.name)
    }

    /// The lab's public network.
    fn internet_ns(&self) -> String {
        format!("{}-inet", self.name)
    }
    fn laptop_ns(&self, i: u32) -> String {
        format!("{}-lap{i}", self.name)
    }
    fn public_link(&self, k: u32) -> String {
        format!("{}-n{k}-in", self.name)
    }

    /// `lab laptop`: see `internet`.
    fn laptop(&self, index: u32) -> anyhow::Result<()> {
        require_root()?;
        if !(1..=99).contains(&index) {
            bail!("--index: {index} is outside 1..=99");
        }
        if !netns_exists(&self.internet_ns()) {
            bail!("lab {} has no public network (is it up?)", self.name);
        }
        let ns = self.laptop_ns(index);
        netns_ensure(&ns)?;
        ip_in(&ns, &["link", "set", "lo", "up"])?;
        internet::ensure_attached(
            &self.internet_ns(),
            &format!("{}-lap{index}", self.name),
            &ns,
            "eth0",
            &format!("{}/24", internet::laptop_ip(index)),
        )?;
        println!("{ns}");
        Ok(())
    }

    /// Namespace of the lab switch's ovs-vswitchd and the uplink peers.
    fn switch_ns(&self) -> String {
        format!("{}-sw", self.name)
    }
    fn node_name(k: u32) -> String {
        format!("n{k}")
    }
    fn node_ip(k: u32) -> String {
        format!("10.254.0.{}", 10 + k)
    }
    /// Node K's service host address (same host part as its management one).
    fn service_cidr(k: u32) -> String {
        format!("10.253.0.{}/24", 10 + k)
    }
    fn pids_dir(&self) -> PathBuf {
        self.dir.join("pids")
    }
    fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }
    /// Replica 1's data dir; every replica holds the same CA and tokens.
    fn controller_dir(&self) -> PathBuf {
        self.replica_dir(1)
    }
    /// Process (pid and log file) name of controller replica K; replica 1
    /// keeps the name labs had before replicas.
    fn controller_process(k: u32) -> String {
        match k {
            1 => "controller".into(),
            k => format!("controller-{k}"),
        }
    }
    fn replica_dir(&self, k: u32) -> PathBuf {
        self.dir.join(Self::controller_process(k))
    }
    /// Appliance files of a lab with several replicas (one directory, as
    /// replicas on real hosts share one file system for them).
    fn shared_appliance_dir(&self) -> PathBuf {
        self.dir.join("appliances")
    }
    /// Flow archive of a lab with several replicas: one root, each
    /// replica's collector in a sub-directory of it, so any replica shows
    /// every replica's flows.
    fn shared_flow_dir(&self) -> PathBuf {
        self.dir.join("flows")
    }
    fn store_url_file(&self) -> PathBuf {
        self.dir.join(STORE_URL_FILE)
    }
    /// The `--store` an earlier `lab up` kept, if any.
    fn stored_store_url(&self) -> anyhow::Result<Option<String>> {
        match std::fs::read_to_string(self.store_url_file()) {
            Ok(url) => Ok(Some(url.trim().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => {
                Err(e).with_context(|| format!("cannot read {}", self.store_url_file().display()))
            }
        }
    }
    /// The controller's CA (TLS labs): MEASURELAB_CA_CERT of `lab env`.
    fn ca_file(&self) -> PathBuf {
        self.controller_dir()
            .join(measurelab_controller::tls::CA_CERT_FILE)
    }
    /// The agents' join bundle (TLS labs): endpoint, CA fingerprint, token.
    fn join_bundle_file(&self) -> PathBuf {
        self.dir.join("join.bundle")
    }
    /// Whether the lab runs TLS, from its lab.json.
    fn tls(&self) -> anyhow::Result<bool> {
        Ok(self.load_settings()?.is_some_and(|s| s.tls))
    }
    /// The CA the lab's own API clients trust: `None` for a plaintext lab.
    fn ca_pem(&self) -> anyhow::Result<Option<Vec<u8>>> {
        if !self.tls()? {
            return Ok(None);
        }
        std::fs::read(self.ca_file())
            .map(Some)
            .with_context(|| format!("cannot read the lab's CA {}", self.ca_file().display()))
    }
    fn join_token_file(&self) -> PathBuf {
        self.dir.join("join.token")
    }
    fn switch_ovs_dir(&self) -> PathBuf {
        self.dir.join("ovs")
    }
    fn node_dir(&self, k: u32) -> PathBuf {
        self.dir.join("nodes").join(Self::node_name(k))
    }
    fn node_ovs_dir(&self, k: u32) -> PathBuf {
        self.node_dir(k).join("ovs")
    }
    fn pid_file(&self, process: &str) -> PathBuf {
        self.pids_dir().join(format!("{process}.pid"))
    }
    fn log_file(&self, process: &str) -> PathBuf {
        self.logs_dir().join(format!("{process}.log"))
    }
    /// Replica K's gRPC port on the management network (one address, a
    /// port each).
    fn grpc_port(k: u32) -> u16 {
        GRPC_PORT + k as u16 - 1
    }
    /// Every replica's gRPC endpoint, replica 1 first.
    fn grpc_endpoints(settings: &LabSettings) -> Vec<String> {
        (1..=settings.controllers)
            .map(|k| {
                format!(
                    "{}://{MGMT_CONTROLLER_IP}:{}",
                    scheme(settings.tls),
                    Self::grpc_port(k)
                )
            })
            .collect()
    }

    fn load_settings(&self) -> anyhow::Result<Option<LabSettings>> {
        let path = self.dir.join(STATE_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map(Some).with_context(|| {
                format!("{} is corrupt; run `measurelab lab down`", path.display())
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    // ----- up -----

    fn up(
        &self,
        settings: &LabSettings,
        store: Option<&str>,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        require_root()?;
        sys::check_tools()?;
        if !Path::new(VSWITCH_SCHEMA).exists() {
            bail!("{VSWITCH_SCHEMA} is missing; install openvswitch-switch (scripts/setup.sh)");
        }
        if let Some(existing) = self.load_settings()? {
            if existing.hypervisor != settings.hypervisor {
                bail!(
                    "--hypervisor: lab {} in {} already runs with --hypervisor {:?}; run `measurelab lab down --name {}` first",
                    existing.name,
                    self.dir.display(),
                    existing.hypervisor,
                    existing.name
                );
            }
            if existing.nodes != settings.nodes || existing.name != settings.name {
                bail!(
                    "--nodes: lab {} in {} already exists with {} nodes; run `measurelab lab down --name {}` first",
                    existing.name,
                    self.dir.display(),
                    existing.nodes,
                    existing.name
                );
            }
            if existing.tls != settings.tls {
                bail!(
                    "--plaintext: lab {} already runs {}; run `measurelab lab down --name {}` first",
                    existing.name,
                    if existing.tls { "with TLS" } else { "in plaintext" },
                    existing.name
                );
            }
            if existing.topology != settings.topology {
                bail!(
                    "--topology: lab {} already runs {:?}; run `measurelab lab down --name {}` first",
                    existing.name,
                    existing.topology,
                    existing.name
                );
            }
            if (existing.controllers, existing.postgres)
                != (settings.controllers, settings.postgres)
            {
                bail!(
                    "--controllers: lab {} already runs {} controller(s) on {}; run `measurelab lab down --name {}` first",
                    existing.name,
                    existing.controllers,
                    if existing.postgres { "PostgreSQL" } else { "SQLite" },
                    existing.name
                );
            }
            if (existing.uplinks, &existing.bond_mode) != (settings.uplinks, &settings.bond_mode) {
                bail!(
                    "--uplinks: lab {} already exists with {} uplink(s) per node ({}); run `measurelab lab down --name {}` first",
                    existing.name,
                    existing.uplinks,
                    existing.bond_mode,
                    existing.name
                );
            }
        }
        for dir in [self.pids_dir(), self.logs_dir(), self.controller_dir()] {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("--dir: cannot create {}", dir.display()))?;
        }
        let state = serde_json::to_string_pretty(settings)?;
        crate::controller_cmd::write_atomically(&self.dir.join(STATE_FILE), &state)?;
        if let Some(url) = store {
            if self.stored_store_url()?.as_deref() != Some(url) {
                let _ = std::fs::remove_file(self.store_url_file());
                write_private(&self.store_url_file(), url)?;
            }
        }
        self.ensure_join_token()?;

        let mut started = Vec::new();
        self.ensure_mgmt_network()?;
        // The userspace datapath creates a tap named "ovs-netdev" in its
        // namespace, so two ovs-vswitchd in one namespace collide (the second
        // cannot open its datapath). The lab switch therefore gets a
        // namespace of its own, like every node.
        let routed = settings.topology == routed::LabTopology::Routed;
        if routed {
            routed::ensure_router(&self.router_ns())?;
        } else {
            netns_ensure(&self.switch_ns())?;
            self.ensure_ovs(
                "sw",
                &self.switch_ovs_dir(),
                Some(&self.switch_ns()),
                &mut started,
            )?;
            self.ensure_switch_bridge()?;
        }
        internet::ensure_internet(&self.internet_ns())?;
        for k in 1..=settings.nodes {
            self.ensure_node_network(k)?;
            internet::ensure_attached(
                &self.internet_ns(),
                &self.public_link(k),
                &self.node_ns(k),
                "inet0",
                &format!("{}/24", internet::node_public_ip(k)),
            )?;
            if routed {
                routed::ensure_routed_link(
                    &self.node_ns(k),
                    &self.router_ns(),
                    &self.uplink(k),
                    k,
                )?;
            } else {
                self.ensure_switch_uplink(k)?;
                self.ensure_extra_uplinks(k, settings.uplinks)?;
            }
            self.ensure_ovs(
                &Self::node_name(k),
                &self.node_ovs_dir(k),
                Some(&self.node_ns(k)),
                &mut started,
            )?;
            if routed {
                routed::ensure_underlay_bridge(
                    &self.node_ns(k),
                    &self.node_ovs_dir(k).join("db.sock"),
                    k,
                )?;
            }
        }
        if settings.hypervisor == hypervisor::LabHypervisor::Qemu {
            started.extend(hypervisor::ensure_qemu(
                &self.dir,
                &self.log_file("libvirtd"),
            )?);
            if let Some(note) = hypervisor::appliance_notice() {
                println!("{note}");
            }
        }
        let endpoint = self.ensure_controllers(settings, store, &mut started)?;
        for k in 1..=settings.nodes {
            self.ensure_agent(k, settings, &mut started)?;
        }
        let nodes = self.wait_online(&endpoint, settings, timeout)?;
        let made = runtime()?.block_on(tenant::ensure_demo_tenant(
            &endpoint,
            &self.api_client(&endpoint)?,
            &self.dir,
            self.ca_pem()?.as_deref(),
        ))?;
        if started.is_empty() {
            println!(
                "lab {} is already running ({} nodes); nothing started",
                self.name, settings.nodes
            );
        } else {
            println!("lab {}: started {}", self.name, started.join(", "));
        }
        if !made.is_empty() {
            println!("lab {}: created {}", self.name, made.join(", "));
        }
        println!("controller: {endpoint}  (lab dir {})", self.dir.display());
        if settings.tls {
            println!("controller CA: {}", self.ca_file().display());
        }
        print!("{}", table::render(&nodes));
        Ok(())
    }

    fn ensure_join_token(&self) -> anyhow::Result<()> {
        let path = self.join_token_file();
        if path.exists() {
            return Ok(());
        }
        let mut bytes = [0u8; 24];
        use std::io::Read;
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .context("cannot read /dev/urandom for the join token")?;
        let token = hex::encode(bytes);
        write_private(&path, &token)
    }

    fn ensure_mgmt_network(&self) -> anyhow::Result<()> {
        let ns = self.mgmt_ns();
        netns_ensure(&ns)?;
        if !link_exists(Some(&ns), MGMT_BRIDGE) {
            ip_in(&ns, &["link", "add", MGMT_BRIDGE, "type", "bridge"])?;
            ip_in(
                &ns,
                &[
                    "addr",
                    "add",
                    &format!("{MGMT_CONTROLLER_IP}/24"),
                    "dev",
                    MGMT_BRIDGE,
                ],
            )?;
        }
        ip_in(&ns, &["link", "set", MGMT_BRIDGE, "up"])?;
        Ok(())
    }

    fn ensure_node_network(&self, k: u32) -> anyhow::Result<()> {
        let ns = self.node_ns(k);
        let mgmt = self.mgmt_ns();
        netns_ensure(&ns)?;
        if !link_exists(Some(&ns), "mgmt0") {
            // The bridge-side end lives in the management namespace, so its
            // short name cannot collide with anything in the root namespace.
            let bridge_end = Self::node_name(k);
            if link_exists(Some(&mgmt), &bridge_end) {
                ip_in(&mgmt, &["link", "del", &bridge_end])?;
            }
            veth_add(Some(&mgmt), &bridge_end, "mgmt0", Some(&ns))?;
            ip_in(
                &mgmt,
                &["link", "set", &bridge_end, "master", MGMT_BRIDGE, "up"],
            )?;
            tx_offload_off(Some(&mgmt), &bridge_end)?;
            ip_in(
                &ns,
                &[
                    "addr",
                    "add",
                    &format!("{}/24", Self::node_ip(k)),
                    "dev",
                    "mgmt0",
                ],
            )?;
            tx_offload_off(Some(&ns), "mgmt0")?;
        }
        ip_in(&ns, &["link", "set", "mgmt0", "up"])?;
        Ok(())
    }

    /// Node K's `uplink0`, a VLAN trunk port of the lab switch.
    fn ensure_switch_uplink(&self, k: u32) -> anyhow::Result<()> {
        let ns = self.node_ns(k);
        let uplink = self.uplink(k);
        let sw = self.switch_ns();
        if !link_exists(Some(&ns), "uplink0") {
            if link_exists(Some(&sw), &uplink) {
                ip_in(&sw, &["link", "del", &uplink])?;
            }
            veth_add(Some(&sw), &uplink, "uplink0", Some(&ns))?;
            tx_offload_off(Some(&sw), &uplink)?;
            tx_offload_off(Some(&ns), "uplink0")?;
        }
        ip_in(&sw, &["link", "set", &uplink, "up"])?;
        ip_in(&ns, &["link", "set", "uplink0", "up"])?;
        // Trunk: no tag and no trunks list carries every VLAN.
        self.switch_vsctl(&[
            "--may-exist",
            "add-port",
            &self.switch_bridge(),
            &uplink,
            "--",
            "set",
            "port",
            &uplink,
            "vlan_mode=trunk",
        ])?;
        Ok(())
    }

    fn switch_vsctl(&self, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new("ovs-vsctl")
            .arg(format!(
                "--db=unix:{}",
                self.switch_ovs_dir().join("db.sock").display()
            ))
            .arg("--timeout=30")
            .args(args))
        .map_err(Into::into)
    }

    fn ensure_switch_bridge(&self) -> anyhow::Result<()> {
        let bridge = self.switch_bridge();
        self.switch_vsctl(&[
            "--may-exist",
            "add-br",
            &bridge,
            "--",
            "set",
            "bridge",
            &bridge,
            "datapath_type=netdev",
        ])?;
        Ok(())
    }

    /// Start `ovsdb-server` and `ovs-vswitchd` with a private run dir, in
    /// namespace `ns` (root when `None`), unless they already run.
    fn ensure_ovs(
        &self,
        prefix: &str,
        run_dir: &Path,
        ns: Option<&str>,
        started: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        std::fs::create_dir_all(run_dir)
            .with_context(|| format!("cannot create {}", run_dir.display()))?;
        let db = run_dir.join("conf.db");
        let socket = run_dir.join("db.sock");
        let marker = run_dir.display().to_string();
        let ovs_cmd = |program: &str| {
            let mut cmd = command_in(ns, program);
            cmd.env("OVS_RUNDIR", run_dir)
                .env("OVS_LOGDIR", run_dir)
                .env("OVS_DBDIR", run_dir)
                .env("OVS_SYSCONFDIR", run_dir);
            cmd
        };

        let server_name = format!("{prefix}-ovsdb-server");
        if live_pid(&self.pid_file(&server_name), &marker).is_none() {
            if !db.exists() {
                run(Command::new("ovsdb-tool")
                    .arg("create")
                    .arg(&db)
                    .arg(VSWITCH_SCHEMA))?;
            }
            let _ = std::fs::remove_file(&socket);
            let mut server = ovs_cmd("ovsdb-server");
            server
                .arg(&db)
                .arg(format!("--remote=punix:{}", socket.display()))
                .arg(format!(
                    "--pidfile={}",
                    self.pid_file(&server_name).display()
                ))
                .arg(format!(
                    "--log-file={}",
                    self.log_file(&server_name).display()
                ))
                .arg(format!(
                    "--unixctl={}",
                    run_dir.join("ovsdb-server.ctl").display()
                ))
                .args(["--detach", "--no-chdir"]);
            run(&mut server).with_context(|| log_tail(&self.log_file(&server_name), 15))?;
            run(Command::new("ovs-vsctl")
                .arg(format!("--db=unix:{}", socket.display()))
                .args(["--no-wait", "init"]))?;
            started.push(server_name);
        }

        let vswitchd_name = format!("{prefix}-ovs-vswitchd");
        if live_pid(&self.pid_file(&vswitchd_name), &marker).is_none() {
            let mut vswitchd = ovs_cmd("ovs-vswitchd");
            vswitchd
                .arg(format!("unix:{}", socket.display()))
                .arg(format!(
                    "--pidfile={}",
                    self.pid_file(&vswitchd_name).display()
                ))
                .arg(format!(
                    "--log-file={}",
                    self.log_file(&vswitchd_name).display()
                ))
                .arg(format!(
                    "--unixctl={}",
                    run_dir.join("ovs-vswitchd.ctl").display()
                ))
                .args(["--detach", "--no-chdir"]);
            run(&mut vswitchd).with_context(|| log_tail(&self.log_file(&vswitchd_name), 15))?;
            started.push(vswitchd_name);
        }
        Ok(())
    }

    fn controller_http_addr(&self, k: u32) -> Option<String> {
        std::fs::read_to_string(
            self.replica_dir(k)
                .join(crate::controller_cmd::HTTP_ADDR_FILE),
        )
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
    }

    /// Start every controller replica that does not run, replica 1 first
    /// (it makes the CA and tokens the others take from the database);
    /// return their HTTP endpoints as one comma-separated list, which every
    /// measurelab client fails over along.
    fn ensure_controllers(
        &self,
        settings: &LabSettings,
        store: Option<&str>,
        started: &mut Vec<String>,
    ) -> anyhow::Result<String> {
        let endpoints = (1..=settings.controllers)
            .map(|k| self.ensure_controller(settings, store, k, started))
            .collect::<anyhow::Result<Vec<_>>>()?;
        self.write_join_bundle(settings)?;
        Ok(endpoints.join(","))
    }

    /// Replica K's HTTP port. A restarted controller keeps the port it
    /// had, so endpoints handed out earlier (lab env, terraform configs)
    /// stay valid even when the lab was created with port 0; replicas past
    /// the first take a free one. The lab picks that port itself, rather
    /// than letting the controller bind port 0, because the replica must
    /// be told its own URL up front (`--advertise-url`, for forwarding exec
    /// and outputs between replicas); another process taking the port in
    /// between makes the replica fail to start, with its log shown.
    fn replica_port(&self, settings: &LabSettings, k: u32) -> anyhow::Result<u16> {
        let requested = if k == 1 { settings.http_port } else { 0 };
        let port = match (requested, self.controller_http_addr(k)) {
            (0, Some(previous)) => previous
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .unwrap_or(0),
            (requested, _) => requested,
        };
        if port != 0 {
            return Ok(port);
        }
        let probe = std::net::TcpListener::bind(("127.0.0.1", 0))
            .context("cannot find a free port for a controller replica")?;
        Ok(probe.local_addr()?.port())
    }

    /// The `measurelab controller` arguments of replica K serving HTTP on
    /// `port` (the store URL goes through the environment).
    fn controller_args(&self, settings: &LabSettings, k: u32, port: u16) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "controller".into(),
            "--data-dir".into(),
            self.replica_dir(k).into(),
            "--http-listen".into(),
            format!("127.0.0.1:{port}").into(),
            // Where the other replicas forward `vm exec` and outputs for
            // the agents that stream to this one (plain or TLS as the
            // HTTP API; 127.0.0.1 is in the lab's certificate).
            "--advertise-url".into(),
            format!("{}://127.0.0.1:{port}", scheme(settings.tls)).into(),
            "--grpc-listen".into(),
            format!("{MGMT_CONTROLLER_IP}:{}", Self::grpc_port(k)).into(),
            "--grpc-netns".into(),
            self.mgmt_ns().into(),
            "--heartbeat-interval-seconds".into(),
            settings.heartbeat_interval_seconds.to_string().into(),
            "--offline-after-seconds".into(),
            settings.offline_after_seconds.to_string().into(),
            "--join-token-file".into(),
            self.join_token_file().into(),
            // The flow collector beside the gRPC socket on the management
            // network, where every node's switch reaches it; 10 s rotation
            // keeps GET .../flows close to live in a lab. A port per
            // replica, as for gRPC.
            "--flow-collector".into(),
            format!(
                "{MGMT_CONTROLLER_IP}:{}",
                FLOW_COLLECTOR_PORT + k as u16 - 1
            )
            .into(),
            "--flow-rotate-seconds".into(),
            "10".into(),
        ];
        if settings.controllers > 1 {
            // The shared file system real replicas would mount.
            args.push("--appliance-dir".into());
            args.push(self.shared_appliance_dir().into());
            args.push("--flow-dir".into());
            args.push(self.shared_flow_dir().into());
        }
        if settings.tls {
            // The bind addresses (127.0.0.1 and the management IP) are in
            // the certificate already; localhost for browsers and curl.
            args.extend(["--tls", "--tls-san", "localhost"].map(OsString::from));
        } else {
            // gRPC listens on the lab's management network, which only the
            // lab's namespaces reach: plaintext there is what --plaintext
            // asked for.
            args.push("--insecure".into());
        }
        args
    }

    /// Start controller replica K unless it runs; return its HTTP endpoint.
    fn ensure_controller(
        &self,
        settings: &LabSettings,
        store: Option<&str>,
        k: u32,
        started: &mut Vec<String>,
    ) -> anyhow::Result<String> {
        let process = Self::controller_process(k);
        let data_dir = self.replica_dir(k);
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("--dir: cannot create {}", data_dir.display()))?;
        let ca_file = settings
            .tls
            .then(|| data_dir.join(measurelab_controller::tls::CA_CERT_FILE));
        if live_pid(&self.pid_file(&process), &data_dir.display().to_string()).is_some() {
            if let Some(addr) = self.controller_http_addr(k) {
                let endpoint = format!("{}://{addr}", scheme(settings.tls));
                wait_healthy(&endpoint, ca_file, Duration::from_secs(10))
                    .with_context(|| log_tail(&self.log_file(&process), 20))?;
                return Ok(endpoint);
            }
        }
        let port = self.replica_port(settings, k)?;
        let addr_file = data_dir.join(crate::controller_cmd::HTTP_ADDR_FILE);
        let _ = std::fs::remove_file(&addr_file);
        let mut cmd = Command::new("setsid");
        cmd.arg(current_exe()?)
            .args(self.controller_args(settings, k, port));
        if let Some(url) = store {
            // Through the environment: a password in the URL stays out of ps.
            cmd.env("MEASURELAB_STORE", url);
        }
        let pid = self.spawn_background(&process, cmd)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            if let Some(addr) = std::fs::read_to_string(&addr_file)
                .ok()
                .filter(|s| !s.trim().is_empty())
            {
                break addr.trim().to_string();
            }
            if !sys::process_exists(pid) || Instant::now() > deadline {
                bail!(
                    "controller replica {k} did not start\n{}",
                    log_tail(&self.log_file(&process), 20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let endpoint = format!("{}://{addr}", scheme(settings.tls));
        wait_healthy(&endpoint, ca_file, Duration::from_secs(20)).with_context(|| {
            format!(
                "controller replica {k} does not answer on {endpoint}\n{}",
                log_tail(&self.log_file(&process), 20)
            )
        })?;
        started.push(process);
        Ok(endpoint)
    }

    /// The agents' join bundle (TLS labs): the gRPC endpoint on the
    /// management network, the fingerprint of the controller's CA and the
    /// lab's join token, mode 0600 (it holds the token).
    fn write_join_bundle(&self, settings: &LabSettings) -> anyhow::Result<()> {
        if !settings.tls {
            return Ok(());
        }
        let ca_pem = std::fs::read_to_string(self.ca_file())
            .with_context(|| format!("cannot read {}", self.ca_file().display()))?;
        let ca_der = measurelab_controller::tls::first_cert_der(
            &ca_pem,
            &self.ca_file().display().to_string(),
        )?;
        let join_token =
            crate::controller_cmd::read_token_file(&self.join_token_file(), "join token")?;
        let mut endpoints = Self::grpc_endpoints(settings).into_iter();
        let bundle = measurelab_api::join_bundle::JoinBundle {
            endpoint: endpoints.next().context("a lab has a controller")?,
            more_endpoints: endpoints.collect(),
            ca_sha256: measurelab_controller::tls::fingerprint(&ca_der),
            join_token,
        };
        // A repeated `up` rewrites it (write_private refuses to overwrite,
        // so a file of looser mode is never reused).
        let path = self.join_bundle_file();
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot replace {}", path.display())),
        }
        write_private(&path, &bundle.encode())
    }

    fn agent_process(k: u32) -> String {
        format!("{}-agent", Self::node_name(k))
    }

    fn ensure_agent(
        &self,
        k: u32,
        settings: &LabSettings,
        started: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        let process = Self::agent_process(k);
        let state_dir = self.node_dir(k).join("agent");
        let marker = state_dir.display().to_string();
        if live_pid(&self.pid_file(&process), &marker).is_some() {
            return Ok(());
        }
        std::fs::create_dir_all(&state_dir)
            .with_context(|| format!("cannot create {}", state_dir.display()))?;
        // nsenter switches only the network namespace: unlike `ip netns
        // exec` it keeps the host's mounts, so the agent sees the cgroup
        // hierarchy and its own netns creations stay visible to the host.
        let mut cmd = Command::new("setsid");
        cmd.arg("nsenter")
            .arg(format!("--net=/run/netns/{}", self.node_ns(k)))
            .arg(current_exe()?)
            .arg("agent")
            .arg("--name")
            .arg(Self::node_name(k))
            .args(if settings.tls {
                // The bundle pins the controller's CA on the first connection.
                vec![
                    "--join-bundle-file".into(),
                    self.join_bundle_file().into_os_string(),
                ]
            } else {
                // Plaintext over the lab's management network, as
                // --plaintext asked.
                vec![
                    "--controller".into(),
                    Self::grpc_endpoints(settings).join(",").into(),
                    "--insecure".into(),
                    "--join-token-file".into(),
                    self.join_token_file().into_os_string(),
                ]
            })
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--label")
            .arg(format!("lab={}", self.name))
            .arg("--management-address")
            .arg(Self::node_ip(k))
            .arg("--ovsdb")
            .arg(format!(
                "unix:{}",
                self.node_ovs_dir(k).join("db.sock").display()
            ))
            // The agent builds br-int itself, on the userspace datapath (one
            // per namespace, no kernel module needed), with uplink0 (or the
            // bond of all uplinks) as the VLAN trunk towards the lab switch,
            // or, routed, with VXLAN tunnels from its underlay address.
            .args(routed::agent_args(
                settings.topology,
                k,
                settings.uplinks,
                &settings.bond_mode,
            ))
            .args(internet::agent_args(k))
            .arg("--datapath")
            .arg("netdev")
            // Service host on the reserved service VLAN (agent default 4000):
            // every node takes service_host tasks. One host clock: no
            // clock-sync bound.
            .arg("--service-address")
            .arg(Self::service_cidr(k))
            // Flows of platforms with flow_monitoring go to the
            // controller's collector (it tells agents where); NetFlow v5
            // because nfcapd files its per-flow counts faithfully.
            .arg("--flow-export")
            .arg("netflow");
        for uri in settings.hypervisor.agent_libvirt_uris() {
            cmd.arg("--libvirt-uri").arg(uri);
        }
        self.spawn_background(&process, cmd)?;
        started.push(process);
        Ok(())
    }

    /// Spawn a detached process logging to DIR/logs/NAME.log; record its pid.
    fn spawn_background(&self, process: &str, mut cmd: Command) -> anyhow::Result<i32> {
        let log_path = self.log_file(process);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let log_err = log.try_clone()?;
        let shown = sys::describe(&cmd);
        // setsid and nsenter exec the next program without forking (we are
        // not a process-group leader), so the child's pid is the daemon's.
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .with_context(|| format!("cannot start {shown}"))?;
        let pid = i32::try_from(child.id()).context("pid out of range")?;
        // The child is reaped by init once this command exits; dropping the
        // handle does not kill it.
        drop(child);
        std::fs::write(self.pid_file(process), format!("{pid}\n"))
            .with_context(|| format!("cannot write {}", self.pid_file(process).display()))?;
        Ok(pid)
    }

    fn wait_online(
        &self,
        endpoint: &str,
        settings: &LabSettings,
        timeout: Duration,
    ) -> anyhow::Result<Vec<measurelab_api::http::Node>> {
        let client = self.api_client(endpoint)?;
        let runtime = runtime()?;
        let deadline = Instant::now() + timeout;
        let expected: Vec<String> = (1..=settings.nodes).map(Self::node_name).collect();
        loop {
            let nodes = runtime.block_on(client.list_nodes());
            let offline: Vec<String> = match &nodes {
                Ok(nodes) => expected
                    .iter()
                    .filter(|name| {
                        // Online and heartbeating, not merely registered,
                        // with its service host up (every lab node has one),
                        // so service_host tasks are accepted right away.
                        !nodes.iter().any(|n| {
                            &n.name == *name
                                && n.status == measurelab_api::http::NodeStatus::Online
                                && n.last_heartbeat.is_some()
                                && !n.capabilities.service_endpoint.is_empty()
                        })
                    })
                    .cloned()
                    .collect(),
                Err(_) => expected.clone(),
            };
            if offline.is_empty() {
                if let Ok(nodes) = nodes {
                    return Ok(nodes);
                }
            }
            // A dead agent or controller will not come back by waiting.
            // Judged by /proc/PID/stat alone: a just-spawned process's
            // cmdline can read empty while setsid/nsenter exec the next step.
            let controllers_down: Vec<String> = (1..=settings.controllers)
                .map(Self::controller_process)
                .filter(|process| !self.process_exists(process))
                .collect();
            let crashed = !controllers_down.is_empty()
                || offline
                    .iter()
                    .any(|name| !self.process_exists(&format!("{name}-agent")));
            if crashed || Instant::now() > deadline {
                let mut report = if crashed {
                    format!(
                        "lab {}: a lab process exited; nodes not online: {}",
                        self.name,
                        offline.join(", ")
                    )
                } else {
                    format!(
                        "lab {}: nodes not online with their service host after {timeout:?}: {}",
                        self.name,
                        offline.join(", ")
                    )
                };
                if let Err(e) = &nodes {
                    report.push_str(&format!("\ncontroller: {e}"));
                }
                for process in &controllers_down {
                    report.push_str(&format!(
                        "\n{process} is not running\n{}",
                        log_tail(&self.log_file(process), 20)
                    ));
                }
                for name in &offline {
                    let process = format!("{name}-agent");
                    let state = if sys::read_pid(&self.pid_file(&process))
                        .is_some_and(sys::process_exists)
                    {
                        "running"
                    } else {
                        "not running"
                    };
                    report.push_str(&format!(
                        "\nagent {process} is {state}\n{}",
                        log_tail(&self.log_file(&process), 20)
                    ));
                }
                bail!(report);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn process_exists(&self, process: &str) -> bool {
        sys::read_pid(&self.pid_file(process)).is_some_and(sys::process_exists)
    }

    fn admin_token(&self) -> anyhow::Result<String> {
        let path = self.controller_dir().join("admin.token");
        let token = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}; is lab {} up?", path.display(), self.name))?;
        Ok(token.trim().to_string())
    }

    fn api_client(&self, endpoint: &str) -> anyhow::Result<measurelab_api::client::Client> {
        Ok(measurelab_api::client::Client::new(
            endpoint,
            &self.admin_token()?,
            self.ca_pem()?.as_deref(),
        )?
        .identifying_as("cli"))
    }

    /// Every replica's HTTP endpoint, comma-separated (what `lab env`
    /// prints and the clients fail over along).
    fn running_endpoint(&self) -> anyhow::Result<String> {
        let settings = self.load_settings()?;
        let controllers = settings.as_ref().map_or(1, |s| s.controllers);
        let tls = settings.is_some_and(|s| s.tls);
        let endpoints: Vec<String> = (1..=controllers)
            .filter_map(|k| self.controller_http_addr(k))
            .map(|addr| format!("{}://{addr}", scheme(tls)))
            .collect();
        if endpoints.is_empty() {
            bail!(
                "lab {} has no controller address in {}; run `measurelab lab up --name {}`",
                self.name,
                self.controller_dir().display(),
                self.name
            );
        }
        Ok(endpoints.join(","))
    }

    // ----- status / env -----

    fn status(&self, json: bool) -> anyhow::Result<()> {
        let endpoint = self.running_endpoint()?;
        let client = self.api_client(&endpoint)?;
        let nodes = runtime()?
            .block_on(client.list_nodes())
            .with_context(|| format!("lab {}: cannot list nodes", self.name))?;
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&measurelab_api::http::NodeList {
                    nodes,
                    next_cursor: None
                })?
            );
        } else {
            print!("{}", table::render(&nodes));
        }
        Ok(())
    }

    fn env(&self, operator: bool) -> anyhow::Result<()> {
        let endpoint = self.running_endpoint()?;
        let token = if operator {
            self.admin_token()?
        } else {
            tenant::stored_token(&self.dir, tenant::DEFAULT_ROLE)?
        };
        println!("MEASURELAB_ENDPOINT={endpoint}");
        println!("MEASURELAB_TOKEN={token}");
        if self.tls()? {
            println!("MEASURELAB_CA_CERT={}", self.ca_file().display());
        }
        Ok(())
    }

    // ----- down -----

    /// Undefine every namespace guest of every node's agent; returns their
    /// network namespace names.
    fn remove_gateways(&self) -> Vec<String> {
        use measurelab_agent::gateway::GatewayHost;
        let mut removed = Vec::new();
        let Ok(nodes) = std::fs::read_dir(self.dir.join("nodes")) else {
            return removed;
        };
        for node in nodes.flatten() {
            // The device binary is only needed to start a gateway.
            let host = GatewayHost::new(&node.path().join("agent"), PathBuf::new());
            for record in host.list_owned().unwrap_or_default() {
                match host.remove(&record) {
                    Ok(()) => removed.push(record.netns),
                    Err(e) => eprintln!("cannot remove gateway {}: {e}", record.netns),
                }
            }
        }
        removed
    }

    fn remove_namespace_guests(&self) -> Vec<String> {
        use measurelab_agent::hypervisor::{Hypervisor, NamespaceConfig, NamespaceHypervisor};
        let mut removed = Vec::new();
        let Ok(nodes) = std::fs::read_dir(self.dir.join("nodes")) else {
            return removed;
        };
        for node in nodes.flatten() {
            let state = node.path().join("agent").join("namespace");
            if !state.is_dir() {
                continue;
            }
            let config = NamespaceConfig::new(state.clone(), vec!["true".into()]);
            let backend = match NamespaceHypervisor::new(config) {
                Ok(backend) => backend,
                Err(e) => {
                    eprintln!("cannot clean guests in {}: {e}", state.display());
                    continue;
                }
            };
            for guest in backend.list_owned().unwrap_or_default() {
                match backend.undefine(guest.id) {
                    Ok(()) => removed.push(guest.name),
                    Err(e) => eprintln!("cannot remove guest {}: {e}", guest.name),
                }
            }
        }
        removed
    }

    fn down(&self) -> anyhow::Result<()> {
        require_root()?;
        let settings = self.load_settings().ok().flatten();
        let mut stopped = 0usize;

        // 0. vswitchd exits with --cleanup first: killed, a userspace
        // vswitchd leaves its persistent `ovs-netdev` and bridge taps in
        // its namespace.
        let mut vswitchd_ctls = vec![self.switch_ovs_dir().join("ovs-vswitchd.ctl")];
        if let Some(s) = &settings {
            vswitchd_ctls
                .extend((1..=s.nodes).map(|k| self.node_ovs_dir(k).join("ovs-vswitchd.ctl")));
        }
        for ctl in vswitchd_ctls.iter().filter(|c| c.exists()) {
            let _ = Command::new("ovs-appctl")
                .arg("-t")
                .arg(ctl)
                .args(["--timeout=5", "exit", "--cleanup"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        // `exit` is acknowledged before vswitchd has removed its taps; killing
        // it in step 1 while it cleans up would leave them behind.
        let vswitchd_pids: Vec<i32> = std::fs::read_dir(self.pids_dir())
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .ends_with("ovs-vswitchd.pid")
                    })
                    .filter_map(|e| sys::read_pid(&e.path()))
                    .collect()
            })
            .unwrap_or_default();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while vswitchd_pids
            .iter()
            .any(|&pid| sys::cmdline(pid).is_some_and(|c| !c.is_empty()))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }

        // 1. Everything we recorded a pid for.
        let mut pids = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.pids_dir()) {
            for entry in entries.flatten() {
                if let Some(pid) = sys::read_pid(&entry.path()) {
                    if sys::cmdline(pid).is_some_and(|c| self.owns_cmdline(&c)) {
                        pids.push(pid);
                    }
                }
            }
        }
        let mut removed = Vec::new();
        // 2. Sweep: anything running inside the lab's namespaces, and our
        // daemons anywhere whose command line names this lab's directory
        // (pid files can be missing after a crashed `up`).
        let namespaces = self.lab_namespaces(settings.as_ref());
        for ns in &namespaces {
            pids.extend(netns_pids(ns));
        }
        let me = std::process::id() as i32;
        for pid in sys::all_pids() {
            if pid != me && sys::cmdline(pid).is_some_and(|c| self.owns_cmdline(&c)) {
                pids.push(pid);
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids.retain(|p| *p != me && sys::process_exists(*p));
        if !pids.is_empty() {
            stopped = pids.len();
            sys::terminate(&pids, Duration::from_secs(5));
        }

        // 2b. Guests the agents created (namespace + cgroup + guest agent
        // process) outlive the agents by design; remove them through the
        // same backend, which touches only guests with a state file.
        removed.extend(self.remove_namespace_guests());
        // 2c. Platform gateways (namespace gw-*, device process) outlive
        // their agents too; removed through the agent's own code.
        removed.extend(self.remove_gateways());
        // Domains in a system libvirtd outlive the agents as well.
        removed.extend(guests::remove_libvirt_guests(&self.dir));
        // Then the libvirtd this lab started for them, if it did.
        match hypervisor::undo_qemu(&self.dir) {
            Ok(undone) => removed.extend(undone),
            // The rest of `down` still runs; the record stays for a retry.
            Err(e) => eprintln!("cannot stop the lab's libvirtd: {e:#}"),
        }

        // 3. Links and namespaces. Deleting a namespace destroys the veth
        // ends inside it and with them their peers.
        for ns in &namespaces {
            if netns_delete(ns).is_ok() {
                removed.push(ns.clone());
            }
        }
        for link in self.lab_root_links(settings.as_ref()) {
            if link_exists(None, &link) && ip(&["link", "del", &link]).is_ok() {
                removed.push(link);
            }
        }

        // 4. Run dirs and state; logs stay for post-mortems.
        // Replicas' data dirs; their tables in a --store database stay
        // there, as the operator's database.
        let replica_dirs = (1..=MAX_CONTROLLERS).map(|k| self.replica_dir(k));
        for path in [
            self.pids_dir(),
            self.switch_ovs_dir(),
            self.dir.join("nodes"),
            tenant::tokens_dir(&self.dir),
            self.shared_appliance_dir(),
            self.shared_flow_dir(),
        ]
        .into_iter()
        .chain(replica_dirs)
        {
            if path.exists() {
                std::fs::remove_dir_all(&path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
            }
        }
        for file in [
            self.dir.join(STATE_FILE),
            self.join_token_file(),
            self.join_bundle_file(),
            self.store_url_file(),
        ] {
            let _ = std::fs::remove_file(file);
        }
        if stopped == 0 && removed.is_empty() {
            println!("lab {} is not running; nothing to do", self.name);
        } else {
            println!(
                "lab {} down: stopped {stopped} processes, removed {}",
                self.name,
                if removed.is_empty() {
                    "nothing else".to_string()
                } else {
                    removed.join(", ")
                }
            );
        }
        Ok(())
    }

    /// True for a command line of one of this lab's daemons: OVS with a run
    /// dir under the lab dir, or a measurelab controller/agent using it.
    fn owns_cmdline(&self, cmdline: &str) -> bool {
        let dir = self.dir.display().to_string();
        let mut args = cmdline.split(' ');
        let program = args.next().unwrap_or("");
        let base = program.rsplit('/').next().unwrap_or(program);
        let names_dir = cmdline
            .split(' ')
            .any(|a| a == dir || a.contains(&format!("{dir}/")));
        let daemon = match base {
            "ovsdb-server" | "ovs-vswitchd" => true,
            "measurelab" => {
                let sub = args.next().unwrap_or("");
                sub == "controller" || sub == "agent"
            }
            _ => false,
        };
        daemon && names_dir
    }

    fn lab_namespaces(&self, settings: Option<&LabSettings>) -> Vec<String> {
        let prefix = format!("{}-n", self.name);
        let mut names: Vec<String> = sys::netns_list()
            .into_iter()
            .filter(|ns| {
                *ns == self.mgmt_ns()
                    || *ns == self.switch_ns()
                    || *ns == self.router_ns()
                    || *ns == self.internet_ns()
                    || ns
                        .strip_prefix(&format!("{}-lap", self.name))
                        .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
                    || ns
                        .strip_prefix(&prefix)
                        .is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
            })
            .collect();
        if let Some(s) = settings {
            for k in 1..=s.nodes {
                if netns_exists(&self.node_ns(k)) && !names.contains(&self.node_ns(k)) {
                    names.push(self.node_ns(k));
                }
            }
        }
        names
    }

    fn lab_root_links(&self, settings: Option<&LabSettings>) -> Vec<String> {
        let prefix = format!("{}-n", self.name);
        let mut links: Vec<String> = ip(&["-o", "link", "show"])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                // "12: name@peer: <...>"
                let name = l.split(':').nth(1)?.trim();
                Some(name.split('@').next()?.to_string())
            })
            .filter(|name| {
                name.strip_prefix(&prefix)
                    .and_then(|rest| rest.strip_suffix("-up"))
                    .is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
            })
            .collect();
        if let Some(s) = settings {
            for k in 1..=s.nodes {
                if !links.contains(&self.uplink(k)) {
                    links.push(self.uplink(k));
                }
            }
        }
        links.push(self.switch_bridge());
        links
    }
}

fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the lab creates network namespaces and must run as root");
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn scheme(tls: bool) -> &'static str {
    if tls {
        "https"
    } else {
        "http"
    }
}

/// Poll GET /healthz until it answers 2xx; over TLS trusting only the CA
/// in `ca_file`, which a starting controller writes after `http.addr`, so
/// it is waited for too.
fn wait_healthy(endpoint: &str, ca_file: Option<PathBuf>, timeout: Duration) -> anyhow::Result<()> {
    let runtime = runtime()?;
    let deadline = Instant::now() + timeout;
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(2));
    if let Some(ca_file) = ca_file {
        let pem = loop {
            match std::fs::read(&ca_file) {
                Ok(pem) if !pem.is_empty() => break pem,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => bail!("{}: {e}", ca_file.display()),
            }
            if Instant::now() > deadline {
                bail!("the controller made no CA in {}", ca_file.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        builder = builder
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
    }
    let client = builder.build()?;
    let url = format!("{endpoint}/healthz");
    loop {
        let outcome = runtime.block_on(async { client.get(&url).send().await });
        match outcome {
            Ok(resp) if resp.status().is_success() => return Ok(()),
            Ok(resp) if Instant::now() > deadline => bail!("{url} answered {}", resp.status()),
            Err(e) if Instant::now() > deadline => bail!("{url}: {e}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// `lab up --uplinks N`: the lab-switch side of a node's extra uplinks (see
/// `uplinks` for the naming and the agent's flags).
impl Lab {
    /// Fail before touching anything when an extra uplink's lab-switch name
    /// would not fit.
    pub(super) fn check_uplink_names(&self, nodes: u32, uplinks: u32) -> anyhow::Result<()> {
        let longest = self.uplink_peer(nodes, uplinks.saturating_sub(1));
        if longest.len() > MAX_IFNAME {
            anyhow::bail!(
                "--uplinks: with {uplinks} uplinks, interface {longest:?} of lab {:?} would exceed {} characters; use a shorter --name",
                self.name,
                MAX_IFNAME
            );
        }
        Ok(())
    }

    /// The lab-switch end of node K's uplink `i`; uplink 0 keeps the contract
    /// name `<name>-nK-up`.
    pub(super) fn uplink_peer(&self, k: u32, i: u32) -> String {
        match i {
            0 => self.uplink(k),
            _ => format!("{}{i}", self.uplink(k)),
        }
    }

    /// Node K's uplinks beyond the first (which `ensure_node_network` makes),
    /// each a VLAN trunk on the lab switch like the first.
    pub(super) fn ensure_extra_uplinks(&self, k: u32, uplinks: u32) -> anyhow::Result<()> {
        let (ns, sw) = (self.node_ns(k), self.switch_ns());
        for i in 1..uplinks {
            let (node_end, switch_end) = (uplinks::node_side(i), self.uplink_peer(k, i));
            if !link_exists(Some(&ns), &node_end) {
                if link_exists(Some(&sw), &switch_end) {
                    ip_in(&sw, &["link", "del", &switch_end])?;
                }
                veth_add(Some(&sw), &switch_end, &node_end, Some(&ns))
                    .with_context(|| format!("cannot create uplink {node_end} of node {k}"))?;
                tx_offload_off(Some(&sw), &switch_end)?;
                tx_offload_off(Some(&ns), &node_end)?;
            }
            ip_in(&sw, &["link", "set", &switch_end, "up"])?;
            ip_in(&ns, &["link", "set", &node_end, "up"])?;
            self.switch_vsctl(&[
                "--may-exist",
                "add-port",
                &self.switch_bridge(),
                &switch_end,
                "--",
                "set",
                "port",
                &switch_end,
                "vlan_mode=trunk",
            ])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab(name: &str, dir: &str) -> Lab {
        Lab::new(&LabTarget {
            name: name.into(),
            dir: Some(PathBuf::from(dir)),
        })
        .unwrap()
    }

    #[test]
    fn names_follow_the_contract_layout() {
        let l = lab("mlab", "/tmp/x");
        assert_eq!(l.mgmt_ns(), "mlab-mgmt");
        assert_eq!(l.node_ns(3), "mlab-n3");
        assert_eq!(l.uplink(3), "mlab-n3-up");
        assert_eq!(l.switch_bridge(), "mlab-sw");
        assert_eq!(l.node_ovs_dir(2), PathBuf::from("/tmp/x/nodes/n2/ovs"));
        assert_eq!(Lab::node_ip(1), "10.254.0.11");
        assert_eq!(Lab::service_cidr(1), "10.253.0.11/24");
        assert_eq!(
            Lab::new(&LabTarget {
                name: "abc".into(),
                dir: None
            })
            .unwrap()
            .dir,
            PathBuf::from("/var/lib/measurelab/lab/abc")
        );
    }

    #[test]
    fn bad_names_are_refused_naming_the_flag() {
        for bad in ["", "Mlab", "1lab", "a_b", "lab-"] {
            let err = Lab::new(&LabTarget {
                name: bad.into(),
                dir: None,
            })
            .unwrap_err();
            assert!(err.to_string().starts_with("--name:"), "{bad}: {err}");
        }
        let err = lab("abcdefghij", "/tmp/x")
            .check_interface_names(9)
            .unwrap_err();
        assert!(err.to_string().contains("exceed 15"), "{err}");
        lab("abcdefghi", "/tmp/x").check_interface_names(9).unwrap();
        assert!(lab("abcdefghi", "/tmp/x")
            .check_interface_names(10)
            .is_err());
    }

    #[test]
    fn only_this_labs_daemons_are_swept() {
        let l = lab("mlab", "/var/lib/ml/mlab");
        assert!(l.owns_cmdline(
            "ovsdb-server /var/lib/ml/mlab/ovs/conf.db --remote=punix:/var/lib/ml/mlab/ovs/db.sock"
        ));
        assert!(l.owns_cmdline(
            "/usr/bin/measurelab agent --name n1 --state-dir /var/lib/ml/mlab/nodes/n1/agent"
        ));
        assert!(l.owns_cmdline("/x/measurelab controller --data-dir /var/lib/ml/mlab/controller"));
        // Another lab whose dir shares a prefix.
        assert!(!l.owns_cmdline("ovsdb-server /var/lib/ml/mlab2/ovs/conf.db"));
        // The lab command itself, and unrelated programs naming the dir.
        assert!(!l.owns_cmdline("/x/measurelab lab down --dir /var/lib/ml/mlab"));
        assert!(!l.owns_cmdline("vim /var/lib/ml/mlab/lab.json"));
    }
}

#[cfg(test)]
mod replica_command_tests {
    use super::*;

    fn settings(controllers: u32, tls: bool) -> LabSettings {
        let old = r#"{"name":"mlab","nodes":1,"http_port":0,
            "heartbeat_interval_seconds":5,"offline_after_seconds":15}"#;
        LabSettings {
            controllers,
            tls,
            ..serde_json::from_str(old).unwrap()
        }
    }

    /// The value after `flag` in `args`.
    fn value<'a>(args: &'a [OsString], flag: &str) -> Option<&'a str> {
        let at = args.iter().position(|a| a == flag)?;
        args.get(at + 1).and_then(|v| v.to_str())
    }

    #[test]
    fn every_replica_advertises_the_url_of_its_own_port() {
        let dir = tempfile::tempdir().unwrap();
        let lab = Lab::new(&LabTarget {
            name: "mlab".into(),
            dir: Some(dir.path().to_path_buf()),
        })
        .unwrap();
        // Replica 2 ran before on 45678: it keeps that port.
        let replica_2 = lab.replica_dir(2);
        std::fs::create_dir_all(&replica_2).unwrap();
        std::fs::write(
            replica_2.join(crate::controller_cmd::HTTP_ADDR_FILE),
            "127.0.0.1:45678\n",
        )
        .unwrap();
        for tls in [false, true] {
            let settings = settings(3, tls);
            let mut ports = Vec::new();
            for k in 1..=3 {
                let port = lab.replica_port(&settings, k).unwrap();
                assert_ne!(port, 0, "replica {k}");
                let args = lab.controller_args(&settings, k, port);
                // gRPC on the management network: plaintext there is opted into.
                assert_eq!(args.iter().any(|a| a == "--insecure"), !tls, "replica {k}");
                assert_eq!(
                    value(&args, "--http-listen"),
                    Some(format!("127.0.0.1:{port}").as_str())
                );
                let scheme = if tls { "https" } else { "http" };
                assert_eq!(
                    value(&args, "--advertise-url"),
                    Some(format!("{scheme}://127.0.0.1:{port}").as_str()),
                    "replica {k}"
                );
                // Shared, as the file system real replicas would mount.
                let flows = lab.shared_flow_dir();
                let appliances = lab.shared_appliance_dir();
                assert_eq!(value(&args, "--flow-dir"), flows.to_str(), "replica {k}");
                assert_eq!(value(&args, "--appliance-dir"), appliances.to_str());
                ports.push(port);
            }
            assert_eq!(ports[1], 45678);
        }
        // One controller keeps both in its own data dir.
        let args = lab.controller_args(&settings(1, false), 1, 7070);
        assert_eq!(value(&args, "--flow-dir"), None);
        assert_eq!(value(&args, "--appliance-dir"), None);
    }
}

#[cfg(test)]
mod hypervisor_setting_tests {
    use super::*;

    #[test]
    fn a_lab_json_from_before_the_hypervisor_flag_is_a_namespace_lab() {
        let old = r#"{"name":"mlab","nodes":2,"http_port":7070,
            "heartbeat_interval_seconds":5,"offline_after_seconds":15}"#;
        let settings: LabSettings = serde_json::from_str(old).unwrap();
        assert_eq!(settings.hypervisor, hypervisor::LabHypervisor::Namespace);
        assert_eq!(settings.topology, routed::LabTopology::Switched);
        let qemu = LabSettings {
            hypervisor: hypervisor::LabHypervisor::Qemu,
            ..settings
        };
        let text = serde_json::to_string(&qemu).unwrap();
        assert!(text.contains(r#""hypervisor":"qemu""#), "{text}");
        assert_eq!(serde_json::from_str::<LabSettings>(&text).unwrap(), qemu);
    }
}
