//! `measurelab agent`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use measurelab_agent::capabilities::DEFAULT_LIBVIRT_URIS;
use measurelab_agent::ovs::DatapathChoice;
use measurelab_agent::reconcile::{FlowExportSettings, UplinkBondMode, UplinkBondSettings};
use measurelab_agent::AgentConfig;
use measurelab_api::http::FlowProtocol;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Unique node name (a DNS label).
    #[arg(long)]
    name: String,
    /// Controller gRPC endpoint, e.g. http://10.254.0.1:7071 (or from
    /// --join-bundle). An https:// controller needs its CA pinned: join
    /// with a bundle the first time. Several controllers: separate them
    /// with commas (all http:// or all https://); the agent uses one at a
    /// time and goes on to the next when it stops answering.
    #[arg(long, required_unless_present_any = ["join_bundle", "join_bundle_file"])]
    controller: Option<String>,
    /// Allow a plaintext http:// controller that is not on loopback. The
    /// join token and the node secret then cross the network in clear, and
    /// anyone on the path can act as this node or as its controller: fit
    /// for an isolated lab network only.
    #[arg(long)]
    insecure: bool,
    /// File holding the lab's join token.
    #[arg(
        long,
        required_unless_present_any = ["join_token", "join_bundle", "join_bundle_file"],
        conflicts_with = "join_token"
    )]
    join_token_file: Option<PathBuf>,
    /// The lab's join token (visible in `ps`; prefer --join-token-file).
    #[arg(long)]
    join_token: Option<String>,
    /// A join bundle (`measurelab join-bundle` on the controller): the
    /// controller's endpoint, the fingerprint of its CA, which the agent pins
    /// on the first connection, and a join token. Visible in `ps`; prefer
    /// --join-bundle-file.
    #[arg(long, env = "MEASURELAB_JOIN_BUNDLE", conflicts_with_all = ["controller", "join_token", "join_token_file", "join_bundle_file"])]
    join_bundle: Option<String>,
    /// File holding a join bundle.
    #[arg(long, conflicts_with_all = ["controller", "join_token", "join_token_file"])]
    join_bundle_file: Option<PathBuf>,
    /// Directory for identity.json (node id + secret).
    #[arg(long)]
    state_dir: PathBuf,
    /// Label to report, KEY=VALUE; repeatable. Seeds the operator labels of
    /// a new node; later changes show only as its reported labels.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Address of this node on the management network.
    #[arg(long, default_value = "")]
    management_address: String,
    /// This node's OVSDB, e.g. unix:/run/openvswitch/db.sock.
    #[arg(long)]
    ovsdb: Option<String>,
    /// libvirt URI to probe; repeatable (default: test:///default, qemu:///system, xen:///system).
    #[arg(long = "libvirt-uri")]
    libvirt_uris: Vec<String>,
    /// Directory that must hold the appliance files (kernel, initrd, disk
    /// image) of libvirt guests; VMs whose appliance lies elsewhere are refused.
    #[arg(long, default_value = measurelab_agent::DEFAULT_APPLIANCE_DIR)]
    appliance_dir: PathBuf,
    /// Integration bridge for VM ports (created on the node's OVS).
    #[arg(long, default_value = "br-int")]
    bridge: String,
    /// Uplink interface added to the bridge as a VLAN trunk, e.g. uplink0.
    #[arg(long, conflicts_with = "uplink_bond")]
    uplink: Option<String>,
    /// Make the uplink a bond with this port name, e.g. bond0, of the
    /// --bond-member interfaces (instead of --uplink).
    #[arg(long, requires = "bond_members")]
    uplink_bond: Option<String>,
    /// A member interface of --uplink-bond; give it twice or more.
    #[arg(long = "bond-member", requires = "uplink_bond")]
    bond_members: Vec<String>,
    /// How the bond balances and fails over: active-backup (one member at a
    /// time, switches on carrier loss), balance-slb (by source MAC) or lacp
    /// (balance-slb negotiated with the partner over LACP).
    #[arg(long, default_value = "active-backup", value_parser = parse_bond_mode)]
    bond_mode: UplinkBondMode,
    /// This node's underlay IPv4 address, the local end of VXLAN tunnels
    /// that carry its platforms' VLANs (and the service network) to nodes
    /// at other sites, behind routers. It must sit on a bridge of this
    /// node's userspace OVS (e.g. br-phy with the physical NIC in it), and
    /// the underlay must carry 50 bytes more than the guests' MTU. Without
    /// it the uplink trunk is the only way between nodes.
    #[arg(long)]
    tunnel_ip: Option<std::net::Ipv4Addr>,
    /// MTU of the platform NIC of every guest this agent creates, 576 to
    /// 9000. Default (auto): with --tunnel-ip on an interface whose MTU is
    /// below 1550, that MTU less VXLAN's 50 bytes, so full guest frames fit
    /// in the tunnels; otherwise 1500. Chosen at start; guests keep the MTU
    /// they were created with.
    #[arg(long, env = "MEASURELAB_GUEST_MTU", value_parser = clap::value_parser!(u32).range(576..=9000))]
    guest_mtu: Option<u32>,
    /// This node's public IPv4 address: where researchers' WireGuard peers
    /// reach the platform gateways this node runs (UDP, each gateway's
    /// listen_port). Without it the controller puts no gateway on this node.
    #[arg(long, env = "MEASURELAB_AGENT_PUBLIC_ADDRESS")]
    public_address: Option<std::net::Ipv4Addr>,
    /// Datapath of the bridge: auto (the kernel's where the openvswitch
    /// module works, else userspace), system (kernel) or netdev (userspace).
    #[arg(long, default_value = "auto", value_parser = parse_datapath)]
    datapath: DatapathChoice,
    /// Guest agent binary for namespace guests (default: measurelab-guest-agent beside this binary).
    #[arg(long)]
    guest_agent: Option<PathBuf>,
    /// The userspace WireGuard device binary the gateways run (default:
    /// measurelab-wg beside this binary).
    #[arg(long)]
    wireguard_binary: Option<PathBuf>,
    /// Run the service host (built-in multicast point for service_host
    /// tasks) at this address of the service network, IPv4/PREFIX, e.g.
    /// 10.253.0.11/24. Without it the node takes no service_host tasks.
    #[arg(long)]
    service_address: Option<String>,
    /// VLAN of the service network on the integration bridge.
    #[arg(long, default_value_t = measurelab_agent::service_host::DEFAULT_VLAN)]
    service_vlan: u16,
    /// TCP control port of the service host's point.
    #[arg(long, default_value_t = measurelab_agent::service_host::DEFAULT_PORT)]
    service_port: u16,
    /// Interface carrying the service address: an OVS internal port the agent
    /// creates on the bridge (with --ovsdb), else an existing interface.
    #[arg(long, default_value = measurelab_agent::service_host::DEFAULT_INTERFACE)]
    service_interface: String,
    /// Bound on the clock error between nodes in µs, for one-way delay of
    /// service_host tasks; leave out when all nodes share one clock (a local lab).
    #[arg(long)]
    service_clock_sync_bound_us: Option<f64>,
    /// Export flows of platforms with flow monitoring on: sflow, netflow (Open
    /// vSwitch speaks NetFlow v5, not v9) or ipfix. The operator's
    /// `flow_export` on the node, when set, overrides all --flow-export-* flags.
    #[arg(long, value_parser = parse_flow_protocol)]
    flow_export: Option<FlowProtocol>,
    /// Sample one packet in N (sflow, ipfix; netflow needs 1).
    #[arg(long, default_value_t = 1)]
    flow_export_sampling: u32,
    /// Seconds after which a long flow is exported anyway (netflow, ipfix);
    /// the counter polling interval for sflow.
    #[arg(long, default_value_t = 10)]
    flow_export_active_timeout_seconds: u32,
    /// Collector IP:PORT (default: the controller's collector).
    #[arg(long)]
    flow_export_collector: Option<String>,
    /// A running guest silent for this long (guests heartbeat every 5 s)
    /// turns its VM's GuestRegistered condition False (GuestHeartbeatMissed).
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    guest_heartbeat_deadline_seconds: u64,
    /// Serve Prometheus /metrics on this IP:PORT (plain HTTP, no token:
    /// use the management address or loopback). Off when absent.
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
}

fn parse_flow_protocol(text: &str) -> Result<FlowProtocol, String> {
    FlowProtocol::parse(text).ok_or_else(|| {
        format!(
            "{text:?} is not one of sflow, netflow (NetFlow v5, what Open vSwitch exports), ipfix"
        )
    })
}

fn parse_bond_mode(text: &str) -> Result<UplinkBondMode, String> {
    UplinkBondMode::parse(text)
        .ok_or_else(|| format!("{text:?} is not one of active-backup, balance-slb, lacp"))
}

fn parse_datapath(text: &str) -> Result<DatapathChoice, String> {
    DatapathChoice::parse(text)
        .ok_or_else(|| format!("{text:?} is not one of auto, system, netdev"))
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// Refuses a plaintext controller that is not on loopback unless
/// `--insecure`: the node's join token and secret would cross the network
/// unencrypted.
fn check_controller_transport(controllers: &str, insecure: bool) -> anyhow::Result<()> {
    let endpoints = measurelab_api::client::split_endpoints(controllers)
        .map_err(|e| anyhow::anyhow!("--controller: {e}"))?;
    for endpoint in &endpoints {
        if let Some(host) = measurelab_api::client::plaintext_remote_host(endpoint) {
            if !insecure {
                bail!(
                    "--controller: {endpoint:?} is plaintext http:// to {host}, which is not \
                     loopback: the join token and the node secret would cross the network \
                     unencrypted. Join with a bundle of a --tls controller (--join-bundle), or \
                     give --insecure to accept that"
                );
            }
        }
    }
    Ok(())
}

pub fn main(args: AgentArgs) -> anyhow::Result<()> {
    tracing_subscriber::registry()
        .with(crate::daemon::console_layer())
        .with(measurelab_agent::logs::layer())
        .init();
    // libvirt's default error handler prints every failed probe to stderr;
    // the agent logs the ones that matter itself.
    measurelab_agent::capabilities::silence_libvirt_errors();

    let bundle = match (&args.join_bundle, &args.join_bundle_file) {
        (Some(text), _) => {
            Some(measurelab_api::join_bundle::JoinBundle::decode(text).context("--join-bundle")?)
        }
        (None, Some(path)) => Some(
            measurelab_api::join_bundle::JoinBundle::decode(
                &crate::controller_cmd::read_token_file(path, "--join-bundle-file")?,
            )
            .with_context(|| format!("--join-bundle-file {}", path.display()))?,
        ),
        (None, None) => None,
    };
    let (controller, join_token, ca_sha256) = match bundle {
        Some(bundle) => (
            bundle.controller(),
            bundle.join_token,
            Some(bundle.ca_sha256),
        ),
        None => {
            let join_token = match (&args.join_token_file, &args.join_token) {
                (Some(path), _) => {
                    crate::controller_cmd::read_token_file(path, "--join-token-file")?
                }
                (None, Some(token)) => token.clone(),
                (None, None) => {
                    bail!("--join-token-file, --join-token or --join-bundle is required")
                }
            };
            let Some(controller) = args.controller.clone() else {
                bail!("--controller or --join-bundle is required");
            };
            (controller, join_token, None)
        }
    };
    check_controller_transport(&controller, args.insecure)?;
    let mut labels = BTreeMap::new();
    for (key, value) in args.labels {
        if labels.insert(key.clone(), value).is_some() {
            bail!("--label: key {key:?} given twice");
        }
    }
    let service_host = match &args.service_address {
        Some(text) => {
            let (address, prefix_len) =
                measurelab_agent::service_host::ServiceHostConfig::parse_address(text)
                    .map_err(|e| anyhow::anyhow!("--service-address: {e}"))?;
            Some(measurelab_agent::service_host::ServiceHostConfig {
                vlan: args.service_vlan,
                port: args.service_port,
                interface: args.service_interface.clone(),
                clock_sync_bound_us: args.service_clock_sync_bound_us,
                ..measurelab_agent::service_host::ServiceHostConfig::new(address, prefix_len)
            })
        }
        None => None,
    };
    let config = AgentConfig {
        name: args.name,
        controller,
        join_token,
        ca_sha256,
        state_dir: args.state_dir,
        labels,
        management_address: args.management_address,
        ovsdb: args.ovsdb,
        libvirt_uris: if args.libvirt_uris.is_empty() {
            DEFAULT_LIBVIRT_URIS.iter().map(|s| s.to_string()).collect()
        } else {
            args.libvirt_uris
        },
        appliance_dir: args.appliance_dir,
        bridge: args.bridge,
        uplink: args.uplink,
        uplink_bond: args.uplink_bond.map(|name| UplinkBondSettings {
            name,
            members: args.bond_members,
            mode: args.bond_mode,
        }),
        datapath: args.datapath,
        tunnel_ip: args.tunnel_ip,
        guest_mtu: args.guest_mtu,
        guest_agent: args.guest_agent,
        public_address: args.public_address,
        wireguard_binary: args.wireguard_binary,
        service_host,
        flow_export: args.flow_export.map(|protocol| FlowExportSettings {
            protocol,
            sampling: args.flow_export_sampling,
            active_timeout_seconds: args.flow_export_active_timeout_seconds,
            collector: args.flow_export_collector.clone(),
        }),
        guest_heartbeat_deadline: std::time::Duration::from_secs(
            args.guest_heartbeat_deadline_seconds,
        ),
        metrics_listen: args.metrics_listen,
    };
    config
        .validate()
        .map_err(|e| anyhow::anyhow!(flag_name(e)))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(measurelab_agent::run(
        config,
        crate::daemon::shutdown_signal(),
    ))?;
    Ok(())
}

/// Rephrase a config error in terms of the command-line flag.
fn flag_name(error: measurelab_agent::AgentError) -> String {
    match error {
        measurelab_agent::AgentError::InvalidConfig { field, reason } => {
            let flag = match field.as_str() {
                "labels" => "label".to_string(),
                other => other.replace('_', "-"),
            };
            format!("--{flag}: {reason}")
        }
        other => other.to_string(),
    }
}
