//! The node data plane through the whole product: `measurelab lab up` starts
//! the controller and one agent per node as real processes, VMs are created
//! through the controller's HTTP API, and the checks look at what really
//! exists on the nodes - packets between guests, network namespaces, each
//! node's own ovsdb, cgroups, processes. Needs root and the packages of
//! scripts/packages.txt. Each test owns a lab named after its process, and
//! the guard runs `lab down` even when the test fails.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::{ensure_guest_agent, namespace_vm, netns_list, process_exists, sigkill, LabGuard};
use measurelab_api::client::{Client, ClientError};
use measurelab_api::http::{
    Platform, PlatformCreate, QosPolicyCreate, Vm, VmBackend, VmCreate, VmPowerState,
};

/// Generous: a loaded 2-core machine runs several labs at once.
const WAIT: Duration = Duration::from_secs(180);
const GROUP: Ipv4Addr = Ipv4Addr::new(239, 77, 1, 1);
const MCAST_PORT: u16 = 5599;
const PROBES: u32 = 40;

/// The controller's API with a runtime to drive it from sync test code.
struct Api {
    client: Client,
    runtime: tokio::runtime::Runtime,
}

impl Api {
    fn new(lab: &LabGuard) -> Self {
        let (client, runtime) = lab.client();
        Api { client, runtime }
    }

    fn run<T>(&self, future: impl std::future::Future<Output = T>) -> T {
        self.runtime.block_on(future)
    }

    fn platform(&self, name: &str, nodes: &[&str]) -> Platform {
        self.run(self.client.create_platform(&PlatformCreate {
            tenant: None,
            name: name.into(),
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            admins: vec![],
            description: None,
            request_id: None,
            flow_monitoring: None,
            gateway: None,
        }))
        .unwrap_or_else(|e| panic!("create platform {name}: {e}"))
    }

    fn vm(&self, body: &VmCreate) -> Vm {
        self.run(self.client.create_vm(body))
            .unwrap_or_else(|e| panic!("create VM {}: {e}", body.name))
    }

    fn vms(&self) -> Vec<Vm> {
        self.run(self.client.list_vms("")).expect("list VMs")
    }
}

fn hex_id(vm: &Vm) -> String {
    vm.id.replace('-', "")
}

/// The namespace backend's name for a guest: `vm-<first 8 hex of its id>`.
fn vm_netns(vm: &Vm) -> String {
    format!("vm-{}", &hex_id(vm)[..8])
}

/// The controller's host port name for a VM: `ml<first 13 hex of its id>`.
fn vm_port(vm: &Vm) -> String {
    format!("ml{}", &hex_id(vm)[..13])
}

fn condition<'a>(vm: &'a Vm, kind: &str) -> Option<&'a str> {
    vm.conditions
        .iter()
        .find(|c| c.condition_type == kind)
        .map(|c| c.status.as_str())
}

/// Running, on the switch, and its guest agent registered.
fn ready(vm: &Vm) -> bool {
    vm.actual_state == "running"
        && condition(vm, "PortAttached") == Some("True")
        && condition(vm, "GuestRegistered") == Some("True")
        && condition(vm, "Ready") == Some("True")
}

fn heard_since(vm: &Vm, since: time::OffsetDateTime) -> bool {
    vm.guest_last_heartbeat
        .as_deref()
        .and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
        .is_some_and(|t| t > since)
}

/// What a failing assertion needs to say why: agent logs and each node's
/// br-int as its own ovsdb sees it.
fn diagnostics(lab: &LabGuard, nodes: u32) -> String {
    let mut out = String::new();
    for k in 1..=nodes {
        out += &lab.log_tail(&format!("n{k}-agent"), 40);
        out += &format!(
            "\n--- n{k} ports:\n{}\n",
            lab.node_vsctl(k, &["--columns=name,tag", "list", "Port"])
                .unwrap_or_else(|e| e)
        );
        out += &format!(
            "--- n{k} namespace guests' logs:\n{}",
            guest_logs(&agent_dir(lab, k))
        );
    }
    out
}

fn agent_dir(lab: &LabGuard, k: u32) -> PathBuf {
    lab.dir().join(format!("nodes/n{k}/agent"))
}

/// The tail of each namespace guest's log in an agent's state dir.
fn guest_logs(agent_dir: &Path) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(agent_dir.join("namespace")) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|x| x == "log") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out += &format!(
                "--- {}\n{}\n",
                path.display(),
                lines[lines.len().saturating_sub(15)..].join("\n")
            );
        }
    }
    out
}

/// Polls the API until `count` VMs exist and all are `ready` (and, with
/// `since`, have heartbeated after it); panics with diagnostics otherwise.
fn wait_ready(
    lab: &LabGuard,
    api: &Api,
    nodes: u32,
    count: usize,
    since: Option<time::OffsetDateTime>,
) -> Vec<Vm> {
    let deadline = Instant::now() + WAIT;
    loop {
        let vms = api.vms();
        if vms.len() == count
            && vms
                .iter()
                .all(|vm| ready(vm) && since.is_none_or(|t| heard_since(vm, t)))
        {
            return vms;
        }
        if Instant::now() > deadline {
            let states: Vec<String> = vms
                .iter()
                .map(|vm| {
                    format!(
                        "{} on {}: {} {:?} heartbeat {:?}",
                        vm.name,
                        vm.node,
                        vm.actual_state,
                        vm.conditions
                            .iter()
                            .map(|c| format!("{}={} ({})", c.condition_type, c.status, c.message))
                            .collect::<Vec<_>>(),
                        vm.guest_last_heartbeat
                    )
                })
                .collect();
            panic!(
                "timed out after {WAIT:?} waiting for {count} ready VMs{}:\n{}\n{}",
                since
                    .map(|t| format!(" heard since {t}"))
                    .unwrap_or_default(),
                states.join("\n"),
                diagnostics(lab, nodes)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `f` on a new thread that has entered network namespace `netns`; the
/// sockets it opens live there.
fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
}

/// Checks that the agent gave the guest a multicast route on eth0 (as a VM
/// with one NIC has) and turns off the reverse-path filter, so packets from
/// another platform's subnet would be accepted if the switch ever delivered
/// them - isolation must come from the VLANs, not from the guest's routing
/// table.
fn prepare_guest_for_multicast(netns: &str) {
    let route = Command::new("ip")
        .args(["-n", netns, "route", "show", "224.0.0.0/4"])
        .output()
        .expect("ip route show");
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(
        route.contains("dev eth0"),
        "guest {netns} has no multicast route on eth0: {route:?}"
    );
    // /proc/sys/net belongs to the network namespace of the task that opens it.
    in_netns(netns, || {
        for conf in ["all", "eth0"] {
            let path = format!("/proc/sys/net/ipv4/conf/{conf}/rp_filter");
            std::fs::write(&path, "0").unwrap_or_else(|e| panic!("{path}: {e}"));
        }
    })
    .join()
    .expect("rp_filter");
}

/// A receiver joined to GROUP on the guest's eth0; returns every payload
/// that carries `tag` until `stop` is set.
fn start_receiver(
    netns: &str,
    address: Ipv4Addr,
    tag: String,
    stop: Arc<AtomicBool>,
    ready: mpsc::Sender<()>,
    heard_last: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<String>> {
    let last = format!("{tag} {}", PROBES - 1);
    in_netns(netns, move || {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, MCAST_PORT)).expect("bind receiver");
        socket
            .join_multicast_v4(&GROUP, &address)
            .expect("join the group");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        ready.send(()).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1500];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, _)) = socket.recv_from(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if text.starts_with(&tag) {
                    if text == last {
                        heard_last.store(true, Ordering::Relaxed);
                    }
                    got.push(text);
                }
            }
        }
        got
    })
}

/// Sends PROBES datagrams to GROUP from the guest, each `<tag> <seq>`.
fn send_probes(netns: &str, address: Ipv4Addr, tag: String) {
    in_netns(netns, move || {
        let socket = UdpSocket::bind((address, 0)).expect("bind sender");
        socket.set_multicast_loop_v4(false).unwrap();
        for seq in 0..PROBES {
            socket
                .send_to(format!("{tag} {seq}").as_bytes(), (GROUP, MCAST_PORT))
                .expect("send to the group");
            std::thread::sleep(Duration::from_millis(25));
        }
    })
    .join()
    .expect("sender thread");
}

#[test]
fn multicast_stays_inside_its_platform_across_two_nodes() {
    ensure_guest_agent();
    let lab = LabGuard::new('i');
    lab.up(2, 1);
    let api = Api::new(&lab);
    for node in lab.nodes() {
        assert!(
            node.capabilities.namespace_backend,
            "{} lacks the namespace backend: {:?}",
            node.name, node.capabilities
        );
    }

    // Bad input first: each refusal names the field, and nothing of it may
    // reach the nodes (checked below against what the nodes really hold).
    let refused = |result: Result<_, ClientError>, field: &str, reason: &str| match result {
        Err(ClientError::Api {
            status,
            field: got,
            message,
            ..
        }) => {
            assert_eq!(status, 422, "{message}");
            assert_eq!(got.as_deref(), Some(field), "{message}");
            assert!(message.contains(reason), "{field}: {message}");
        }
        Ok(_) => panic!("a request with a bad {field} was accepted"),
        Err(e) => panic!("{field}: unexpected error {e}"),
    };
    refused(
        api.run(api.client.create_platform(&PlatformCreate {
            tenant: None,
            name: "ghost".into(),
            nodes: vec!["n1".into(), "n9".into()],
            admins: vec![],
            description: None,
            request_id: None,
            flow_monitoring: None,
            gateway: None,
        }))
        .map(|_| ()),
        "nodes[1]",
        "n9",
    );
    refused(
        api.run(api.client.create_qos_policy(&QosPolicyCreate {
            tenant: None,
            name: "upside-down".into(),
            ingress_max_kbps: 1000,
            ingress_min_kbps: Some(5000),
            ingress_burst_kbytes: None,
            egress_max_kbps: None,
            egress_min_kbps: None,
            egress_burst_kbytes: None,
            request_id: None,
        }))
        .map(|_| ()),
        "ingress_min_kbps",
        "",
    );

    let a = api.platform("slice-a", &["n1", "n2"]);
    let b = api.platform("slice-b", &["n1", "n2"]);
    assert_ne!(a.vlan_tag, b.vlan_tag, "{a:?} {b:?}");
    refused(
        api.run(
            api.client
                .create_vm(&namespace_vm("ghost", "slice-a", "n9")),
        )
        .map(|_| ()),
        "node",
        "n9",
    );
    let mut tiny = namespace_vm("tiny", "slice-a", "n1");
    tiny.memory_mib = 8;
    refused(
        api.run(api.client.create_vm(&tiny)).map(|_| ()),
        "memory_mib",
        "minimum",
    );

    for (platform, node, name) in [
        ("slice-a", "n1", "a1"),
        ("slice-a", "n2", "a2"),
        ("slice-b", "n1", "b1"),
        ("slice-b", "n2", "b2"),
    ] {
        api.vm(&namespace_vm(name, platform, node));
    }
    let vms = wait_ready(&lab, &api, 2, 4, None);
    let by_name: BTreeMap<&str, &Vm> = vms.iter().map(|vm| (vm.name.as_str(), vm)).collect();

    // The refused requests left nothing: the controller holds exactly what
    // was accepted, and each node exactly the guests and ports of its VMs.
    let mut platforms: Vec<String> = api
        .run(api.client.list_platforms())
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    platforms.sort();
    assert_eq!(platforms, ["slice-a", "slice-b"]);
    assert!(api.run(api.client.list_qos_policies()).unwrap().is_empty());
    for k in 1..=2u32 {
        let node = format!("n{k}");
        let mine: Vec<&Vm> = vms.iter().filter(|vm| vm.node == node).collect();
        let expected: BTreeSet<String> = mine.iter().map(|vm| vm_port(vm)).collect();
        let ports = bridge_ports(&lab, k);
        assert!(ports.contains("uplink0"), "{ports:?}");
        assert_eq!(
            vm_port_names(&ports),
            expected,
            "{node}'s br-int\n{}",
            diagnostics(&lab, 2)
        );
        for vm in &mine {
            let platform = if vm.platform == "slice-a" { &a } else { &b };
            let tag = lab
                .node_vsctl(k, &["get", "Port", &vm_port(vm), "tag"])
                .unwrap();
            assert_eq!(tag.trim(), platform.vlan_tag.to_string(), "{}", vm.name);
        }
        assert_eq!(
            state_files(&agent_dir(&lab, k)).len(),
            mine.len(),
            "{node} holds guests of refused requests"
        );
    }

    for vm in &vms {
        prepare_guest_for_multicast(&vm_netns(vm));
    }
    let nonce = format!(
        "labt-{}-{}",
        std::process::id(),
        time::OffsetDateTime::now_utc().unix_timestamp_nanos()
    );
    // Every guest sends once: its platform peer on the other node must hear
    // it, the other platform's guests (one on each node) must not. So every
    // receiver is also shown to work.
    for sender in ["a1", "b2", "a2", "b1"] {
        check_multicast_round(&lab, &by_name, sender, &format!("{nonce} {sender}"));
    }

    // Someone moves b1's port into A's VLAN by hand: the agent puts B's tag
    // back (its switch state is level-triggered), and isolation holds again.
    let b1_port = vm_port(by_name["b1"]);
    lab.node_vsctl(
        1,
        &["set", "Port", &b1_port, &format!("tag={}", a.vlan_tag)],
    )
    .unwrap();
    common::wait_for("n1's agent to restore b1's VLAN tag", WAIT, || {
        let tag = lab.node_vsctl(1, &["get", "Port", &b1_port, "tag"]).ok()?;
        (tag.trim() == b.vlan_tag.to_string()).then_some(())
    });
    check_multicast_round(&lab, &by_name, "a1", &format!("{nonce} a1-after-repair"));
}

/// Two platforms with each node at its own site: `lab up --topology
/// routed` puts node K in 10.60.K.0/24 behind the router namespace, so
/// nothing but the agents' VXLAN tunnels joins the nodes' switches. Three
/// nodes make the tunnels a mesh with a cycle, where a missing split horizon
/// loops every flooded frame. Multicast, unicast and full-size frames must
/// cross between a platform's VMs, exactly once, nothing may cross between
/// platforms, and the tunnels follow the platforms: hand-deleted ones come
/// back, and a platform that leaves a node takes its tunnels along.
#[test]
fn platforms_stay_isolated_across_three_routed_sites() {
    ensure_guest_agent();
    let lab = LabGuard::new('w');
    let out = lab
        .up_command(3, 1)
        .args(["--topology", "routed"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lab up --topology routed failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let api = Api::new(&lab);
    for (k, node) in (1u32..).zip(lab.nodes()) {
        assert_eq!(node.name, format!("n{k}"));
        assert_eq!(node.capabilities.tunnel_address, format!("10.60.{k}.2"));
        assert!(
            node.capabilities.uplink.is_none(),
            "{:?}",
            node.capabilities
        );
    }
    // The underlay is routed: n1 reaches n2's subnet only via its router.
    let route = common::ip_output(&["-n", &lab.node_ns(1), "route", "get", "10.60.2.2"]);
    assert!(route.contains("via 10.60.1.1"), "{route}");

    let a = api.platform("slice-a", &["n1", "n2", "n3"]);
    let b = api.platform("slice-b", &["n1", "n2"]);
    for (platform, node, name) in [
        ("slice-a", "n1", "a1"),
        ("slice-a", "n2", "a2"),
        ("slice-a", "n3", "a3"),
        ("slice-b", "n1", "b1"),
        ("slice-b", "n2", "b2"),
    ] {
        api.vm(&namespace_vm(name, platform, node));
    }
    let vms = wait_ready(&lab, &api, 3, 5, None);
    let by_name: BTreeMap<&str, &Vm> = vms.iter().map(|vm| (vm.name.as_str(), vm)).collect();

    // Each node: one tunnel per (VLAN, peer) - both slices and the service
    // network - each an access port of its VLAN with VNI = VLAN.
    // `members`: (VLAN, its nodes); node K gets a tunnel to each other member
    // of each VLAN it is in.
    let expected_tunnels = |k: u32, members: &[(u16, &[u32])]| -> BTreeMap<String, String> {
        members
            .iter()
            .filter(|(_, nodes)| nodes.contains(&k))
            .flat_map(|(vlan, nodes)| {
                nodes
                    .iter()
                    .filter(move |peer| **peer != k)
                    .map(move |peer| {
                        (
                            format!("vx{vlan}-0a3c{peer:02x}02"),
                            format!("{vlan} key={vlan} remote_ip=10.60.{peer}.2"),
                        )
                    })
            })
            .collect()
    };
    let all: &[u32] = &[1, 2, 3];
    let before = [(a.vlan_tag, all), (b.vlan_tag, &[1, 2][..]), (4000, all)];
    for k in 1..=3u32 {
        common::wait_for(&format!("n{k}'s tunnels"), WAIT, || {
            (tunnels(&lab, k) == expected_tunnels(k, &before)).then_some(())
        });
        let ports = bridge_ports(&lab, k);
        assert!(
            !ports.contains("uplink0"),
            "n{k} br-int has an uplink: {ports:?}"
        );
    }

    for vm in &vms {
        prepare_guest_for_multicast(&vm_netns(vm));
    }
    // Full-size frames: 1500-byte IP packets with DF set cross the tunnel,
    // because the underlay carries VXLAN's extra 50 bytes.
    let df = Command::new("ip")
        .args([
            "netns",
            "exec",
            &vm_netns(by_name["a1"]),
            "ping",
            "-c",
            "3",
            "-W",
            "5",
        ])
        .args(["-M", "do", "-s", "1472", &by_name["a2"].address])
        .output()
        .unwrap();
    assert!(
        df.status.success(),
        "a 1500-byte DF ping a1 -> a2 across the tunnel failed:\n{}\n{}",
        String::from_utf8_lossy(&df.stdout),
        diagnostics(&lab, 2)
    );

    let nonce = format!(
        "labw-{}-{}",
        std::process::id(),
        time::OffsetDateTime::now_utc().unix_timestamp_nanos()
    );
    for sender in ["a1", "b2", "a2", "b1", "a3"] {
        check_multicast_round(&lab, &by_name, sender, &format!("{nonce} {sender}"));
    }
    // Unicast straight at another platform's VM (its MAC pinned in the
    // sender's neighbour table, so no ARP stands in the way) must not
    // arrive; the same at the own platform's peer must.
    check_unicast_round(&lab, &by_name, "a1", "a2", &format!("{nonce} a1>a2"));
    check_unicast_round(&lab, &by_name, "a1", "b2", &format!("{nonce} a1>b2"));
    check_unicast_round(&lab, &by_name, "b2", "a1", &format!("{nonce} b2>a1"));

    // A tunnel deleted by hand comes back (the agent owns it like a VM port).
    let a_tunnel = format!("vx{}-0a3c0202", a.vlan_tag);
    lab.node_vsctl(1, &["del-port", "br-int", &a_tunnel])
        .unwrap();
    common::wait_for("n1's agent to rebuild slice-a's tunnel", WAIT, || {
        (tunnels(&lab, 1) == expected_tunnels(1, &before)).then_some(())
    });
    check_multicast_round(&lab, &by_name, "a1", &format!("{nonce} a1-after-repair"));

    // slice-b leaves n2: both nodes drop their slice-b tunnels, the rest stays.
    api.run(api.client.delete_vm("b2", false))
        .expect("delete b2");
    common::wait_for("b2 to be gone", WAIT, || {
        (!api.vms().iter().any(|vm| vm.name == "b2")).then_some(())
    });
    api.run(api.client.update_platform(
        &b.id,
        &measurelab_api::http::PlatformPatch {
            nodes: Some(vec!["n1".into()]),
            ..Default::default()
        },
    ))
    .expect("shrink slice-b to n1");
    let after = [(a.vlan_tag, all), (b.vlan_tag, &[1][..]), (4000, all)];
    for k in 1..=3u32 {
        common::wait_for(&format!("n{k} to drop slice-b's tunnel"), WAIT, || {
            (tunnels(&lab, k) == expected_tunnels(k, &after)).then_some(())
        });
    }
}

/// The tunnel ports on node K's br-int: name -> "TAG key=K remote_ip=IP".
fn tunnels(lab: &LabGuard, k: u32) -> BTreeMap<String, String> {
    let Ok(names) = lab.node_vsctl(k, &["list-ports", "br-int"]) else {
        return BTreeMap::new();
    };
    names
        .lines()
        .filter(|name| name.starts_with("vx"))
        .filter_map(|name| {
            let tag = lab.node_vsctl(k, &["get", "Port", name, "tag"]).ok()?;
            let key = lab
                .node_vsctl(k, &["get", "Interface", name, "options:key"])
                .ok()?;
            let remote = lab
                .node_vsctl(k, &["get", "Interface", name, "options:remote_ip"])
                .ok()?;
            Some((
                name.to_string(),
                format!(
                    "{} key={} remote_ip={}",
                    tag.trim(),
                    key.trim().trim_matches('"'),
                    remote.trim().trim_matches('"')
                ),
            ))
        })
        .collect()
}

/// `sender` sends PROBES unicast datagrams to `target`'s address and MAC
/// while every other VM listens: the target hears at least half when it
/// shares the sender's platform, and nobody else hears anything.
fn check_unicast_round(
    lab: &LabGuard,
    by_name: &BTreeMap<&str, &Vm>,
    sender: &str,
    target: &str,
    tag: &str,
) {
    let (from, to) = (by_name[sender], by_name[target]);
    let netns = vm_netns(from);
    // Another platform's subnet is not on eth0: point a host route and a
    // permanent neighbour entry at the target, as a hostile guest could.
    for args in [
        vec![
            "route",
            "replace",
            &format!("{}/32", to.address),
            "dev",
            "eth0",
        ],
        vec![
            "neigh",
            "replace",
            &to.address,
            "lladdr",
            &to.mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    ] {
        let out = Command::new("ip")
            .args(["-n", &netns])
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let same_platform = to.platform == from.platform;
    let target_heard_last = Arc::new(AtomicBool::new(false));
    let receivers: Vec<(&str, std::thread::JoinHandle<Vec<String>>)> = by_name
        .iter()
        .filter(|(name, _)| **name != sender)
        .map(|(name, vm)| {
            let flag = if *name == target {
                target_heard_last.clone()
            } else {
                Arc::new(AtomicBool::new(false))
            };
            (
                *name,
                start_receiver(
                    &vm_netns(vm),
                    vm.address.parse().expect("VM address"),
                    tag.to_string(),
                    stop.clone(),
                    ready_tx.clone(),
                    flag,
                ),
            )
        })
        .collect();
    for _ in 0..receivers.len() {
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("receivers bound");
    }
    let (address, destination): (Ipv4Addr, Ipv4Addr) = (
        from.address.parse().expect("VM address"),
        to.address.parse().expect("VM address"),
    );
    let probes_tag = tag.to_string();
    in_netns(&netns, move || {
        let socket = UdpSocket::bind((address, 0)).expect("bind sender");
        for seq in 0..PROBES {
            socket
                .send_to(
                    format!("{probes_tag} {seq}").as_bytes(),
                    (destination, MCAST_PORT),
                )
                .expect("send unicast");
            std::thread::sleep(Duration::from_millis(25));
        }
    })
    .join()
    .expect("sender thread");
    // Same FIFO argument as for multicast: once the target heard the last
    // probe, a leak would have arrived meanwhile. Across platforms the
    // deadline bounds the wait instead.
    let deadline = Instant::now() + Duration::from_secs(if same_platform { 10 } else { 3 });
    while !target_heard_last.load(Ordering::Relaxed) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let heard: BTreeMap<&str, usize> = receivers
        .into_iter()
        .map(|(name, handle)| (name, handle.join().expect("receiver").len()))
        .collect();
    eprintln!("{sender} -> {target} unicast, sent {PROBES}: heard {heard:?}");
    for (name, count) in &heard {
        if *name == target && same_platform {
            assert!(
                *count >= (PROBES / 2) as usize,
                "{target} heard only {count} of {PROBES} unicast from {sender}\n{}",
                diagnostics(lab, 2)
            );
        } else {
            assert_eq!(
                *count,
                0,
                "{name} heard {sender}'s unicast to {target}: isolation broken\n{}",
                diagnostics(lab, 2)
            );
        }
    }
}

/// `sender` sends PROBES datagrams to GROUP while every other VM listens:
/// those of its platform must hear at least half, the others none.
fn check_multicast_round(lab: &LabGuard, by_name: &BTreeMap<&str, &Vm>, sender: &str, tag: &str) {
    let from = by_name[sender];
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    // Receivers of the sender's platform raise their flag on its last probe.
    let mut heard_last = Vec::new();
    let receivers: Vec<(&str, std::thread::JoinHandle<Vec<String>>)> = by_name
        .iter()
        .filter(|(name, _)| **name != sender)
        .map(|(name, vm)| {
            let address: Ipv4Addr = vm.address.parse().expect("VM address");
            let flag = Arc::new(AtomicBool::new(false));
            if vm.platform == from.platform {
                heard_last.push(flag.clone());
            }
            (
                *name,
                start_receiver(
                    &vm_netns(vm),
                    address,
                    tag.to_string(),
                    stop.clone(),
                    ready_tx.clone(),
                    flag,
                ),
            )
        })
        .collect();
    for _ in 0..receivers.len() {
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("receivers joined");
    }
    send_probes(
        &vm_netns(from),
        from.address.parse().expect("VM address"),
        tag.to_string(),
    );
    // Listen until the last probe has come through the two userspace
    // switches and the lab switch to the sender's peers: the path is FIFO,
    // so nothing sent before it is still in flight, and a leak into the
    // other platform would have crossed the same switches meanwhile. A lost
    // last probe ends the wait at the deadline; the counts then judge.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !heard_last.iter().all(|flag| flag.load(Ordering::Relaxed)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let heard: BTreeMap<&str, usize> = receivers
        .into_iter()
        .map(|(name, handle)| (name, handle.join().expect("receiver").len()))
        .collect();
    eprintln!(
        "{sender} ({}) sent {PROBES}: heard {heard:?}",
        from.platform
    );
    for (name, count) in &heard {
        let vm = by_name[name];
        if vm.platform == from.platform {
            // More than sent: the frames went round a forwarding loop.
            assert!(
                *count <= PROBES as usize,
                "{name} heard {count} copies of {PROBES} probes from {sender}: a loop\n{}",
                diagnostics(lab, 2)
            );
            assert!(
                *count >= (PROBES / 2) as usize,
                "{name} (same platform, {} -> {}) heard only {count} of {PROBES} from {sender}\n{}",
                from.node,
                vm.node,
                diagnostics(lab, 2)
            );
        } else {
            assert_eq!(
                *count,
                0,
                "{name} ({}, {}) heard {sender} of {} on {}: isolation broken\n{}",
                vm.platform,
                vm.node,
                from.platform,
                from.node,
                diagnostics(lab, 2)
            );
        }
    }
}

/// VM ids with a state file in an agent's namespace backend.
fn state_files(agent_dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(agent_dir.join("namespace"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_suffix(".json")
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The cgroup v2 directory of a namespace guest (the backend uses the
/// unified hierarchy at /sys/fs/cgroup/unified on hybrid hosts).
fn guest_cgroup(netns: &str) -> PathBuf {
    let unified = Path::new("/sys/fs/cgroup/unified");
    let root = if unified.join("cgroup.procs").is_file() {
        unified
    } else {
        Path::new("/sys/fs/cgroup")
    };
    root.join("measurelab").join(netns)
}

/// Every cgroup directory of a guest: on hybrid hosts the v1 `cpu` and
/// `memory` hierarchies hold its limits beside the unified group.
fn guest_cgroup_dirs(netns: &str) -> Vec<PathBuf> {
    ["unified", "cpu", "memory", ""]
        .iter()
        .map(|h| {
            Path::new("/sys/fs/cgroup")
                .join(h)
                .join("measurelab")
                .join(netns)
        })
        .collect()
}

fn cgroup_pids(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// True for a name of the shape the controller gives VM ports.
fn is_vm_port(name: &str) -> bool {
    name.len() == 15 && name.starts_with("ml") && name[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The VM ports among `names` (a node's bridge also holds the uplink, the
/// bridge's own port and the service host's port).
fn vm_port_names(names: &BTreeSet<String>) -> BTreeSet<String> {
    names.iter().filter(|n| is_vm_port(n)).cloned().collect()
}

/// Ports on node K's br-int, from its own ovsdb.
fn bridge_ports(lab: &LabGuard, k: u32) -> BTreeSet<String> {
    lab.node_vsctl(k, &["list-ports", "br-int"])
        .unwrap_or_else(|e| panic!("n{k}: {e}"))
        .lines()
        .map(str::to_string)
        .collect()
}

/// Links in a node's namespace named like VM ports.
fn vm_links(netns: &str) -> BTreeSet<String> {
    let links: BTreeSet<String> = common::ip_output(&["-n", netns, "-o", "link", "show"])
        .lines()
        .filter_map(|l| Some(l.split(':').nth(1)?.trim().split('@').next()?.to_string()))
        .collect();
    vm_port_names(&links)
}

#[test]
fn agent_sigkilled_while_creating_vms_converges_without_duplicates() {
    const COUNT: usize = 6;
    ensure_guest_agent();
    let lab = LabGuard::new('r');
    lab.up(1, 1);
    let api = Api::new(&lab);
    let platform = api.platform("rcl", &["n1"]);
    let agent_pid = lab.pid("n1-agent");
    let mut created = Vec::new();
    for i in 0..COUNT {
        created.push(api.vm(&namespace_vm(&format!("v{i}"), "rcl", "n1")));
    }
    // Kill as soon as the first guest's namespace exists, while the rest
    // are still being built.
    let deadline = Instant::now() + WAIT;
    let first = loop {
        if let Some(vm) = created
            .iter()
            .find(|vm| Path::new("/run/netns").join(vm_netns(vm)).exists())
        {
            break vm.name.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no guest namespace appeared\n{}",
            diagnostics(&lab, 1)
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    sigkill(agent_pid);
    let existing_at_kill = created
        .iter()
        .filter(|vm| Path::new("/run/netns").join(vm_netns(vm)).exists())
        .count();
    eprintln!("killed n1-agent after {first}'s namespace appeared; {existing_at_kill} of {COUNT} namespaces existed");
    common::wait_for("the agent to die", Duration::from_secs(10), || {
        (!process_exists(agent_pid)).then_some(())
    });
    let killed_at = time::OffsetDateTime::now_utc();

    let out = lab.up(1, 1);
    assert!(
        out.contains(&format!("lab {}: started n1-agent\n", lab.name)),
        "only the agent restarts: {out}"
    );
    assert_ne!(lab.pid("n1-agent"), agent_pid);

    // Guest heartbeats reach the controller only through the new agent.
    let vms = wait_ready(&lab, &api, 1, COUNT, Some(killed_at));
    let ids: BTreeSet<String> = vms.iter().map(|vm| vm.id.clone()).collect();
    let created_ids: BTreeSet<String> = created.iter().map(|vm| vm.id.clone()).collect();
    assert_eq!(ids, created_ids, "the controller's VMs changed");

    let diag = || diagnostics(&lab, 1);
    // Exactly one guest per VM: one state file, one namespace, one cgroup
    // with a live guest agent in it.
    assert_eq!(
        state_files(&agent_dir(&lab, 1)),
        ids,
        "state files of the namespace backend\n{}",
        diag()
    );
    let netns = netns_list();
    for vm in &vms {
        let name = vm_netns(vm);
        assert_eq!(
            netns.iter().filter(|n| **n == name).count(),
            1,
            "{name}: {netns:?}"
        );
        let pids = cgroup_pids(&guest_cgroup(&name));
        assert!(
            !pids.is_empty() && pids.iter().all(|p| process_exists(*p)),
            "{name}: no live guest process in its cgroup ({pids:?})\n{}",
            diag()
        );
    }
    // Exactly one port per VM on n1's br-int, each with the platform's tag,
    // plus the uplink; and no veth left over from the killed agent.
    let expected_ports: BTreeSet<String> = vms.iter().map(vm_port).collect();
    let ports = bridge_ports(&lab, 1);
    assert!(ports.contains("uplink0"), "{ports:?}");
    assert_eq!(
        vm_port_names(&ports),
        expected_ports,
        "n1's br-int\n{}",
        diag()
    );
    let rows = lab
        .node_vsctl(
            1,
            &[
                "--format=csv",
                "--no-headings",
                "--columns=name,tag",
                "list",
                "Port",
            ],
        )
        .unwrap();
    let tags: BTreeMap<String, String> = rows
        .lines()
        .filter_map(|l| {
            let (name, tag) = l.split_once(',')?;
            Some((name.trim_matches('"').to_string(), tag.to_string()))
        })
        .collect();
    for port in &expected_ports {
        assert_eq!(
            tags.get(port),
            Some(&platform.vlan_tag.to_string()),
            "port {port}: {tags:?}"
        );
    }
    // No VM port row outside the bridge either (a dangling row from the
    // killed agent's half-done transaction).
    let port_rows: BTreeSet<String> = tags.keys().cloned().collect();
    assert_eq!(
        vm_port_names(&port_rows),
        expected_ports,
        "Port rows: {tags:?}"
    );
    let interface_errors = lab
        .node_vsctl(
            1,
            &[
                "--format=csv",
                "--no-headings",
                "--columns=name,error",
                "list",
                "Interface",
            ],
        )
        .unwrap();
    for line in interface_errors.lines() {
        assert!(
            line.ends_with(",[]") || line.ends_with(",\"\""),
            "interface with an error: {line}"
        );
    }
    assert_eq!(
        vm_links(&lab.node_ns(1)),
        expected_ports,
        "veths in {}",
        lab.node_ns(1)
    );
    assert_eq!(api.vms().len(), COUNT);
}

#[test]
fn down_removes_the_guests_the_agents_created_and_runs_again_harmlessly() {
    ensure_guest_agent();
    let lab = LabGuard::new('d');
    lab.up(2, 1);
    let api = Api::new(&lab);
    api.platform("gone", &["n1", "n2"]);
    for (name, node) in [("g1", "n1"), ("g2", "n1"), ("g3", "n2")] {
        api.vm(&namespace_vm(name, "gone", node));
    }
    let vms = wait_ready(&lab, &api, 2, 3, None);
    let guests: Vec<(String, Vec<PathBuf>, Vec<i32>)> = vms
        .iter()
        .map(|vm| {
            let netns = vm_netns(vm);
            let pids = cgroup_pids(&guest_cgroup(&netns));
            assert!(!pids.is_empty(), "{netns} has no guest process");
            let cgroups: Vec<PathBuf> = guest_cgroup_dirs(&netns)
                .into_iter()
                .filter(|d| d.is_dir())
                .collect();
            (netns, cgroups, pids)
        })
        .collect();
    let ports: BTreeSet<String> = vms.iter().map(vm_port).collect();

    let first = lab.lab("down", &[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let netns = netns_list();
    for (name, cgroups, pids) in &guests {
        assert!(!netns.contains(name), "{name} survived lab down");
        for cgroup in cgroups {
            assert!(!cgroup.exists(), "{} survived lab down", cgroup.display());
        }
        for pid in pids {
            assert!(
                !process_exists(*pid),
                "guest process {pid} of {name} survived"
            );
        }
    }
    let root_links = common::ip_output(&["-o", "link", "show"]);
    for port in &ports {
        assert!(!root_links.contains(port.as_str()), "veth {port} left");
    }
    for k in 1..=2 {
        assert!(
            !netns.contains(&lab.node_ns(k)),
            "{} left: {netns:?}",
            lab.node_ns(k)
        );
    }
    assert!(!lab.dir().join("nodes").exists());

    let second = lab.lab("down", &[]);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let text = String::from_utf8_lossy(&second.stdout);
    assert!(text.contains("nothing to do"), "{text}");
}

/// The libvirtd that the QEMU tests share (started if none answers, stopped
/// by its last user).
#[path = "../../agent/tests/libvirt_setup/mod.rs"]
mod libvirt_setup;

fn virsh(args: &[&str]) -> Result<String, String> {
    let out = Command::new("virsh")
        .args(["-c", libvirt_setup::QEMU_URI])
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Removes a domain the test expected `lab down` to remove, so a failing
/// run does not leave it in the shared libvirtd.
struct DomainGuard(String);

impl Drop for DomainGuard {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.0]);
        let _ = virsh(&["undefine", &self.0]);
    }
}

#[test]
fn down_removes_the_libvirt_domains_the_agents_defined() {
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("[{:>6.1} s] {what}", t0.elapsed().as_secs_f64());
    // Declared before the lab: dropped after its `lab down`.
    let _libvirt = libvirt_setup::LibvirtSetup::ensure().expect("libvirtd for qemu:///system");
    phase("libvirtd answers");
    let lab = LabGuard::new('v');
    lab.up(1, 1);
    phase("lab up");
    let node = lab.node("n1");
    assert!(
        node.capabilities
            .libvirt_uris
            .iter()
            .any(|u| u == libvirt_setup::QEMU_URI),
        "n1 does not use qemu:///system: {:?}\n{}",
        node.capabilities,
        diagnostics(&lab, 1)
    );
    let api = Api::new(&lab);
    api.platform("kept", &["n1"]);
    let mut body = namespace_vm("q1", "kept", "n1");
    body.appliance = "measurelab-tiny".into();
    body.backend = Some(VmBackend::Libvirt);
    // Defined, never booted: what matters is the persistent definition,
    // which outlives the agent in libvirtd.
    body.power_state = VmPowerState::Stopped;
    let vm = api.vm(&body);
    let _domain = DomainGuard(vm.id.clone());
    common::wait_for("the agent to define q1's domain", WAIT, || {
        virsh(&["dominfo", &vm.id]).ok()
    });
    let vm = common::wait_for("q1 reported stopped", WAIT, || {
        api.vms()
            .into_iter()
            .find(|v| v.id == vm.id && v.actual_state == "stopped")
    });
    assert_eq!(vm.backend, VmBackend::Libvirt);
    phase("q1 defined and stopped");

    let first = lab.lab("down", &[]);
    phase("lab down");
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let left = virsh(&["dominfo", &vm.id]);
    assert!(
        left.is_err(),
        "q1's domain survived lab down: {left:?}\n{}",
        String::from_utf8_lossy(&first.stdout)
    );
    let second = lab.lab("down", &[]);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let text = String::from_utf8_lossy(&second.stdout);
    assert!(text.contains("nothing to do"), "{text}");
}
