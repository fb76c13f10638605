//! A platform gateway end to end with real packets: a private OVS as the
//! node's switch, namespace VMs of two platforms on it, the agent's
//! reconciler driven with a hand-built desired state (the controller side of
//! gateways is not needed to test the node side), and a "laptop" namespace
//! whose only link is to the node's public address, running
//! `measurelab tunnel up` as the researcher's WireGuard.
//!
//! Needs root (netns, cgroups, OVS, TUN, nft) and iperf3. Heavy: run it
//! under the heavy-test lock.

mod reconcile_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use measurelab_agent::gateway::{GatewayHost, GatewayNames};
use measurelab_agent::guest_channel::GuestChannels;
use measurelab_agent::hypervisor::{NamespaceConfig, NamespaceHypervisor};
use measurelab_agent::ovs::OvsdbSwitch;
use measurelab_agent::reconcile::{
    Action, Backends, DesiredState, DesiredVm, GatewayChange, Reconciler, ReconcilerConfig,
};
use measurelab_api::node_v1::{DesiredGateway, DesiredGatewayPeer, GatewayStatus};
use measurelab_testbed::OvsSandbox;
use measurelab_wireguard::{uapi, Key};
use reconcile_common::{workspace_binary, GuestCleanup};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);
const PUBLIC: &str = "198.51.100.11";
const LAPTOP: &str = "198.51.100.100";
const MGMT: &str = "10.250.0.2";
const SERVICE: &str = "10.253.0.11";
const PLATFORM_ID: &str = "a0000000-0000-4000-8000-00000000000a";
/// Another platform for the port test: gateway namespaces and devices are
/// named after the platform host-wide, and the tests may run at once.
const PORT_TEST_PLATFORM_ID: &str = "a0000000-0000-4000-8000-00000000000b";

fn sh(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn ok(args: &[&str]) -> String {
    let (good, out) = sh(Command::new(args[0]).args(&args[1..]));
    assert!(good, "{args:?}: {out}");
    out
}

fn laptop_ping(laptop: &str, target: &str) -> bool {
    sh(Command::new("ip").args([
        "netns", "exec", laptop, "ping", "-c", "1", "-W", "1", target,
    ]))
    .0
}

/// Polls `check` every 200 ms until it holds or `within` passes.
fn wait_until(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn vm(name: &str, vlan: u16, cidr: &str, mac: &str) -> DesiredVm {
    let id = Uuid::new_v4().to_string();
    DesiredVm {
        port_name: format!("vp{}", &id.replace('-', "")[..8]),
        id,
        name: name.into(),
        platform_id: format!("00000000-0000-4000-8000-{vlan:012}"),
        vlan_tag: vlan.into(),
        backend: "namespace".into(),
        vcpus: 1,
        memory_mib: 64,
        mac: mac.into(),
        ipv4_cidr: cidr.into(),
        power_state: "running".into(),
        ..Default::default()
    }
}

fn vm_netns(vm: &DesiredVm) -> String {
    format!("vm-{}", &vm.id.replace('-', "")[..8])
}

struct Rig {
    ovs: OvsSandbox,
    node: String,
    laptop: String,
    state_dir: PathBuf,
    uid_registry: PathBuf,
    wg: PathBuf,
    /// The laptop's tunnel device name.
    tunnel: String,
    _cleanup: GuestCleanup,
    _dir: tempfile::TempDir,
}

impl Rig {
    /// A rig for the gateway of `platform_id` (it names the laptop's tunnel,
    /// which `drop` stops: distinct per test, as tests may run at once).
    fn new(platform_id: &str) -> Rig {
        let ovs = OvsSandbox::start("gwr").unwrap();
        let node = ovs.netns().name().to_string();
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("agent");
        let laptop = format!("{node}-lap");
        // The lab "internet": the node's public address and the laptop,
        // which has no other link.
        ok(&["ip", "netns", "add", &laptop]);
        ok(&[
            "ip", "-n", &node, "link", "add", "pub0", "type", "veth", "peer", "name", "eth0",
            "netns", &laptop,
        ]);
        ok(&[
            "ip",
            "-n",
            &node,
            "addr",
            "add",
            &format!("{PUBLIC}/24"),
            "dev",
            "pub0",
        ]);
        ok(&["ip", "-n", &node, "link", "set", "pub0", "up"]);
        ok(&[
            "ip",
            "-n",
            &laptop,
            "addr",
            "add",
            &format!("{LAPTOP}/24"),
            "dev",
            "eth0",
        ]);
        ok(&["ip", "-n", &laptop, "link", "set", "eth0", "up"]);
        ok(&["ip", "-n", &laptop, "link", "set", "lo", "up"]);
        // The node's management and service network addresses.
        // (A veth with both ends in the node: this kernel has no dummy.)
        for (link, cidr) in [
            ("mgmt0", format!("{MGMT}/24")),
            ("svc0", format!("{SERVICE}/24")),
        ] {
            ok(&[
                "ip",
                "-n",
                &node,
                "link",
                "add",
                link,
                "type",
                "veth",
                "peer",
                "name",
                &format!("{link}p"),
            ]);
            ok(&["ip", "-n", &node, "addr", "add", &cidr, "dev", link]);
            ok(&["ip", "-n", &node, "link", "set", link, "up"]);
        }
        Rig {
            wg: workspace_binary("measurelab-wireguard", "measurelab-wg"),
            uid_registry: dir.path().join("uids"),
            tunnel: format!(
                "lw{}",
                &GatewayNames::new("gw-node", platform_id).device[2..]
            ),
            _cleanup: GuestCleanup {
                state_dir: state_dir.clone(),
            },
            state_dir,
            laptop,
            node,
            ovs,
            _dir: dir,
        }
    }

    /// A reconciler as a freshly started agent builds it.
    async fn reconciler(&self) -> Reconciler {
        let mut ns = NamespaceConfig::new(
            self.state_dir.join("namespace"),
            vec!["sleep".into(), "infinity".into()],
        );
        ns.uid_registry = self.uid_registry.clone();
        let hv = NamespaceHypervisor::new(ns).unwrap();
        let switch = OvsdbSwitch::connect(&self.ovs.db_target()).await.unwrap();
        let mut config = ReconcilerConfig::new(self.state_dir.clone(), "gw-node");
        config.wireguard_binary = Some(self.wg.clone());
        let (events, rx) = tokio::sync::mpsc::channel(1024);
        // Guest channel traffic is not what this test looks at.
        std::mem::forget(rx);
        Reconciler::new(
            config,
            Backends {
                namespace: Some(Arc::new(hv)),
                libvirt: None,
            },
            Some(Arc::new(switch)),
            GuestChannels::new(),
            events,
        )
    }
}

impl Drop for Rig {
    /// Also after a failed assertion: no device process or gateway
    /// namespace outlives the test.
    fn drop(&mut self) {
        let host = GatewayHost::new(&self.state_dir, self.wg.clone());
        for record in host.list_owned().unwrap_or_default() {
            let _ = host.remove(&record);
        }
        let record = Path::new("/run/measurelab/tunnels").join(format!("{}.json", self.tunnel));
        if let Some(value) = std::fs::read_to_string(&record)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        {
            let pid = value["pid"].as_u64().unwrap_or(0) as u32;
            let start = value["start_time"].as_u64().unwrap_or(0);
            let _ = measurelab_wireguard::launch::stop(pid, start);
            let _ = std::fs::remove_file(&record);
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.laptop])
            .status();
    }
}

/// Passes until one converges with every VM running on its port; returns every action
/// taken.
async fn converge(reconciler: &mut Reconciler, desired: &DesiredState) -> Vec<Action> {
    let deadline = Instant::now() + WAIT;
    let mut actions = Vec::new();
    loop {
        let report = reconciler.pass(desired).await;
        actions.extend(report.actions);
        let ready = report.statuses.iter().all(|s| {
            // Ready also waits for a guest agent, which these guests (sleep) lack.
            s.actual_state == "running"
                && s.conditions
                    .iter()
                    .any(|c| c.r#type == "PortAttached" && c.status == "True")
        });
        if report.converged && ready {
            return actions;
        }
        if Instant::now() >= deadline {
            panic!("no convergence: {:?}", report.statuses);
        }
        tokio::time::sleep(report.next_retry.unwrap_or(Duration::from_millis(200))).await;
    }
}

fn gateway_actions(actions: &[Action]) -> Vec<GatewayChange> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Gateway { change, .. } => Some(*change),
            _ => None,
        })
        .collect()
}

fn record_pid(state_dir: &Path, names: &GatewayNames) -> u32 {
    let text = std::fs::read_to_string(
        state_dir
            .join("gateways")
            .join(format!("{}.json", names.netns)),
    )
    .unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    value["pid"].as_u64().unwrap() as u32
}

/// Passes until the gateway's status is reported (changed since the last
/// [`Reconciler::mark_gateways_reported`]) in `state`; returns it.
async fn reported(
    reconciler: &mut Reconciler,
    desired: &DesiredState,
    state: &str,
) -> GatewayStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        let report = reconciler.pass(desired).await;
        if let Some(status) = report
            .changed_gateways
            .iter()
            .find(|s| s.platform_id == PORT_TEST_PLATFORM_ID && s.state == state)
        {
            return status.clone();
        }
        if Instant::now() >= deadline {
            panic!("the gateway never reported {state}: {:?}", report.gateways);
        }
        tokio::time::sleep(report.next_retry.unwrap_or(Duration::from_millis(200))).await;
    }
}

/// What the controller is told of a gateway: `failed`, naming the port,
/// while another socket holds its listen port; `ready` once the port is
/// free; nothing while that does not change.
#[test]
fn a_taken_listen_port_is_reported_failed_until_it_is_free() {
    let rig = Rig::new(PORT_TEST_PLATFORM_ID);
    let node = rig.node.clone();
    let mut desired = DesiredState {
        gateways: vec![DesiredGateway {
            platform_id: PORT_TEST_PLATFORM_ID.into(),
            platform_name: "alpha".into(),
            vlan_tag: 101,
            platform_subnet: "10.20.1.0/24".into(),
            inside_address: "10.20.1.1/24".into(),
            listen_port: 51821,
            private_key: Key::generate().to_base64(),
            tunnel_address: "100.96.3.1/24".into(),
            peers: Vec::new(),
        }],
        ..Default::default()
    };
    let names = GatewayNames::new("gw-node", PORT_TEST_PLATFORM_ID);
    reconcile_common::in_netns(&node, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // Someone else's service on the gateway's port, in the node's
            // namespace where the device binds it.
            let squatter = std::net::UdpSocket::bind(("0.0.0.0", 51821)).unwrap();
            let mut reconciler = rig.reconciler().await;
            let report = reconciler.pass(&desired).await;
            assert_eq!(report.changed_gateways, report.gateways);
            let [failed] = &report.gateways[..] else {
                panic!("{:?}", report.gateways);
            };
            assert_eq!(
                (failed.platform_id.as_str(), failed.state.as_str()),
                (PORT_TEST_PLATFORM_ID, "failed")
            );
            assert!(
                failed
                    .message
                    .contains("listen port 51821 is already in use on this node"),
                "{}",
                failed.message
            );
            assert!(!report.converged, "a failed gateway is retried");
            reconciler.mark_gateways_reported(&report.changed_gateways);
            let again = reconciler.pass(&desired).await;
            assert_eq!(again.gateways, report.gateways);
            assert!(again.changed_gateways.is_empty(), "{again:?}");

            drop(squatter);
            let ready = reported(&mut reconciler, &desired, "ready").await;
            assert_eq!(ready.message, "");
            let device = uapi::get(&measurelab_wireguard::socket_path(&names.device)).unwrap();
            assert_eq!(device.listen_port, 51821);
            reconciler.mark_gateways_reported(&[ready]);

            // A resync reports it again although nothing changed.
            reconciler.forget_reported_gateways();
            assert_eq!(
                reported(&mut reconciler, &desired, "ready").await.state,
                "ready"
            );

            desired.gateways.clear();
            let report = reconciler.pass(&desired).await;
            assert!(report.gateways.is_empty(), "{:?}", report.gateways);
        });
        drop(rig);
    });
}

#[test]
fn a_peer_reaches_its_platform_only_and_the_gateway_survives_and_repairs() {
    let rig = Rig::new(PLATFORM_ID);
    let node = rig.node.clone();
    let laptop = rig.laptop.clone();
    let cli = workspace_binary("measurelab", "measurelab");
    let gw_key = Key::generate();
    let peer_key = Key::generate();
    let a1 = vm("a1", 101, "10.20.1.10/24", "52:54:00:00:01:0a");
    let a2 = vm("a2", 101, "10.20.1.11/24", "52:54:00:00:01:0b");
    let b1 = vm("b1", 102, "10.20.2.10/24", "52:54:00:00:02:0a");
    let gateway = DesiredGateway {
        platform_id: PLATFORM_ID.into(),
        platform_name: "alpha".into(),
        vlan_tag: 101,
        platform_subnet: "10.20.1.0/24".into(),
        inside_address: "10.20.1.1/24".into(),
        listen_port: 51820,
        private_key: gw_key.to_base64(),
        tunnel_address: "100.96.3.1/24".into(),
        peers: vec![DesiredGatewayPeer {
            id: "laptop".into(),
            public_key: peer_key.public().to_base64(),
            tunnel_address: "100.96.3.2/32".into(),
        }],
    };
    let mut desired = DesiredState {
        vms: vec![a1.clone(), a2.clone(), b1.clone()],
        gateways: vec![gateway.clone()],
        ..Default::default()
    };
    let names = GatewayNames::new("gw-node", PLATFORM_ID);
    let conf = rig.state_dir.parent().unwrap().join("wg.conf");
    std::fs::write(
        &conf,
        format!(
            "[Interface]\nPrivateKey = {}\nAddress = 100.96.3.2/32\n\n[Peer]\nPublicKey = {}\nEndpoint = {PUBLIC}:51820\nAllowedIPs = 0.0.0.0/0\nPersistentKeepalive = 25\n",
            peer_key.to_base64(),
            gw_key.public().to_base64()
        ),
    )
    .unwrap();
    let tunnel_name = rig.tunnel.clone();

    reconcile_common::in_netns(&node, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut reconciler = rig.reconciler().await;
            let actions = converge(&mut reconciler, &desired).await;
            assert!(
                gateway_actions(&actions).contains(&GatewayChange::Started),
                "{actions:?}"
            );
            assert!(Path::new(&format!("/run/netns/{}", names.netns)).exists());

            // The laptop brings up its tunnel; AllowedIPs 0.0.0.0/0.
            ok(&[
                cli.to_str().unwrap(),
                "tunnel",
                "up",
                "--config",
                conf.to_str().unwrap(),
                "--netns",
                &laptop,
                "--name",
                &tunnel_name,
                "--wireguard-binary",
                rig.wg.to_str().unwrap(),
            ]);
            if !(0..50).any(|_| laptop_ping(&laptop, "10.20.1.10")) {
                for cmd in [
                    vec!["ip", "-n", &names.netns, "-br", "addr"],
                    vec!["ip", "-n", &names.netns, "route"],
                    vec![
                        "ip",
                        "netns",
                        "exec",
                        &names.netns,
                        "nft",
                        "list",
                        "ruleset",
                    ],
                    vec!["ip", "-n", &laptop, "route"],
                    vec!["ip", "-n", &vm_netns(&a1), "-br", "addr"],
                    vec![
                        "ip",
                        "netns",
                        "exec",
                        &names.netns,
                        "ping",
                        "-c1",
                        "-W1",
                        "10.20.1.10",
                    ],
                    vec![
                        "ip",
                        "netns",
                        "exec",
                        &names.netns,
                        "sysctl",
                        "net.ipv4.ip_forward",
                    ],
                ] {
                    eprintln!("{cmd:?}\n{}", sh(Command::new(cmd[0]).args(&cmd[1..])).1);
                }
                eprintln!("{}", rig.ovs.vsctl(&["show"]).unwrap());
                panic!("a1 unreachable through the tunnel");
            }
            assert!(laptop_ping(&laptop, "10.20.1.11"), "a2 unreachable");
            assert!(
                laptop_ping(&laptop, "100.96.3.1"),
                "the gateway's tunnel address"
            );

            // iperf3 from the laptop to a1 through the tunnel.
            let mut server = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &vm_netns(&a1),
                    "iperf3",
                    "-s",
                    "-1",
                    "-p",
                    "5201",
                ])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            wait_until("iperf3 server", Duration::from_secs(10), || {
                ok(&[
                    "ip",
                    "netns",
                    "exec",
                    &vm_netns(&a1),
                    "ss",
                    "-Hltn",
                    "sport = :5201",
                ])
                .contains("5201")
            });
            let out = ok(&[
                "ip",
                "netns",
                "exec",
                &laptop,
                "iperf3",
                "-c",
                "10.20.1.10",
                "-p",
                "5201",
                "-t",
                "2",
                "-J",
            ]);
            server.wait().unwrap();
            let result: serde_json::Value = serde_json::from_str(&out).unwrap();
            let bytes = result["end"]["sum_received"]["bytes"].as_u64().unwrap();
            assert!(bytes > 0, "iperf3 moved nothing: {out}");

            // Nothing else is reachable through the tunnel.
            for (what, target) in [
                ("platform B's VM", "10.20.2.10"),
                ("the management address", MGMT),
                ("the service network address", SERVICE),
            ] {
                assert!(
                    !laptop_ping(&laptop, target),
                    "{what} ({target}) is reachable through the tunnel"
                );
            }
            // The node's own addresses, asked through the tunnel: the
            // gateway namespace has no way to them.
            let gw_routes = ok(&["ip", "-n", &names.netns, "route", "show"]);
            assert!(!gw_routes.contains("default"), "{gw_routes}");

            // Agent restart: the gateway is adopted, pings keep flowing.
            let pid = record_pid(&rig.state_dir, &names);
            let pinger = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &laptop,
                    "ping",
                    "-c",
                    "30",
                    "-i",
                    "0.1",
                    "-W",
                    "1",
                    "10.20.1.10",
                ])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            drop(reconciler);
            let mut reconciler = rig.reconciler().await;
            let actions = converge(&mut reconciler, &desired).await;
            assert!(
                gateway_actions(&actions).is_empty(),
                "restart touched the gateway: {actions:?}"
            );
            assert_eq!(record_pid(&rig.state_dir, &names), pid);
            let out = pinger.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && text.contains(" 0% packet loss"),
                "{text}"
            );

            // Repairs: killed process, deleted namespace, deleted OVS port.
            ok(&["kill", "-9", &pid.to_string()]);
            wait_until("the killed device gone", Duration::from_secs(10), || {
                !Path::new(&format!("/proc/{pid}")).exists()
                    || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                        .is_ok_and(|s| s.contains(") Z"))
            });
            let actions = converge(&mut reconciler, &desired).await;
            assert!(
                gateway_actions(&actions).contains(&GatewayChange::Started),
                "{actions:?}"
            );
            wait_until(
                "a1 after the process was repaired",
                Duration::from_secs(20),
                || laptop_ping(&laptop, "10.20.1.10"),
            );
            ok(&["ip", "netns", "del", &names.netns]);
            let actions = converge(&mut reconciler, &desired).await;
            assert!(
                gateway_actions(&actions).contains(&GatewayChange::Started),
                "{actions:?}"
            );
            wait_until(
                "a1 after the namespace was repaired",
                Duration::from_secs(20),
                || laptop_ping(&laptop, "10.20.1.10"),
            );
            rig.ovs.vsctl(&["del-port", "br-int", &names.port]).unwrap();
            converge(&mut reconciler, &desired).await;
            assert!(rig
                .ovs
                .vsctl(&["list-ports", "br-int"])
                .unwrap()
                .contains(&names.port));
            wait_until(
                "a1 after the port was repaired",
                Duration::from_secs(20),
                || laptop_ping(&laptop, "10.20.1.10"),
            );

            // The peer removed: its traffic stops, the device keeps running.
            let pid = record_pid(&rig.state_dir, &names);
            desired.gateways[0].peers.clear();
            let actions = converge(&mut reconciler, &desired).await;
            assert_eq!(gateway_actions(&actions), [GatewayChange::Reconfigured]);
            wait_until("the removed peer cut off", Duration::from_secs(10), || {
                !laptop_ping(&laptop, "10.20.1.10")
            });
            let device = uapi::get(&measurelab_wireguard::socket_path(&names.device)).unwrap();
            assert!(device.peers.is_empty());
            assert_eq!(record_pid(&rig.state_dir, &names), pid);

            // The gateway removed: namespace, port, process gone.
            desired.gateways.clear();
            let actions = converge(&mut reconciler, &desired).await;
            assert_eq!(gateway_actions(&actions), [GatewayChange::Removed]);
            assert!(!Path::new(&format!("/run/netns/{}", names.netns)).exists());
            assert!(!rig
                .ovs
                .vsctl(&["list-ports", "br-int"])
                .unwrap()
                .contains(&names.port));
            assert!(measurelab_wireguard::launch::process_start_time(pid).is_none());

            ok(&[
                cli.to_str().unwrap(),
                "tunnel",
                "down",
                "--name",
                &tunnel_name,
            ]);
            desired.vms.clear();
            converge(&mut reconciler, &desired).await;
        });
        drop(rig);
    });
}
