//! The namespace backend for real: network namespaces, veth pairs, cgroups
//! and guest processes. Needs root. Each test uses its own state dir and its
//! own cgroup parent (`mltest-<pid>-<n>`), and tears everything down even
//! when an assertion fails (see `Fixture::drop`).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use measurelab_agent::hypervisor::{
    BootImage, DefineOutcome, GuestSpec, GuestState, Hypervisor, HypervisorError, NamespaceConfig,
    NamespaceHypervisor, NicAttach, NicSpec, ResizeOutcome,
};
use measurelab_testbed::OvsSandbox;
use uuid::Uuid;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The guest program: bumps a counter file every 20 ms, so a frozen guest
/// is visible as a counter that stops. The file is on the guest's own
/// root; the host reads it through `/proc/<guest pid>/root`.
const GUEST_SCRIPT: &str =
    r#"i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.02; done"#;

struct Fixture {
    config: NamespaceConfig,
    _dir: tempfile::TempDir,
    tag: String,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with_script(GUEST_SCRIPT)
    }

    fn with_script(script: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let tag = format!(
            "mltest-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let mut config = NamespaceConfig::new(
            dir.path().join("state"),
            vec!["sh".into(), "-c".into(), script.into()],
        );
        config.cgroup_parent = tag.clone();
        Fixture {
            config,
            _dir: dir,
            tag,
        }
    }

    fn backend(&self) -> NamespaceHypervisor {
        NamespaceHypervisor::new(self.config.clone()).unwrap()
    }

    fn counter(&self, id: Uuid) -> u64 {
        let Ok(Some(pid)) = self.backend().guest_pid(id) else {
            return 0;
        };
        fs::read_to_string(format!("/proc/{pid}/root/tmp/counter"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }

    fn spec(&self, k: u8) -> GuestSpec {
        let id = Uuid::new_v4();
        let short = &id.simple().to_string()[..8];
        GuestSpec {
            id,
            name: format!("{}-g{k}", self.tag),
            platform_id: None,
            vcpus: 1,
            memory_mib: 64 + u64::from(k),
            disk_mib: 0,
            swap_mib: 0,
            boot: BootImage {
                kernel: "/unused/vmlinuz".into(),
                initrd: "/unused/initrd".into(),
                disk: None,
                extra_cmdline: String::new(),
                console_log: None,
            },
            nic: Some(NicSpec {
                mac: format!("52:54:00:aa:00:{:02x}", 10 + k),
                bridge: "br-int".into(),
                vlan_tag: Some(100),
                port_name: format!("mlp{short}"),
                ipv4_cidr: Some(format!("10.200.77.{}/24", 10 + k)),
                attach: NicAttach::TapOnly,
            }),
            channel_socket: None,
            egress_limit: None,
            max_vcpus: None,
            max_memory_mib: None,
        }
    }

    fn cgroup_parents(&self) -> Vec<PathBuf> {
        ["unified", "cpu", "memory", "cpuset", ""]
            .iter()
            .map(|h| Path::new("/sys/fs/cgroup").join(h).join(&self.tag))
            .collect()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Ok(hv) = NamespaceHypervisor::new(self.config.clone()) {
            for guest in hv.list_owned().unwrap_or_default() {
                let _ = hv.undefine(guest.id);
            }
        }
        for dir in self.cgroup_parents() {
            let _ = fs::remove_dir(dir);
        }
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn netns_inode(name: &str) -> u64 {
    fs::metadata(Path::new("/run/netns").join(name))
        .unwrap()
        .ino()
}

fn pid_netns_inode(pid: u32) -> u64 {
    fs::metadata(format!("/proc/{pid}/ns/net")).unwrap().ino()
}

fn procs_in(cgroup: &Path) -> Vec<u32> {
    fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn parent_pid(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The group holds exactly one guest: `pid`, its sandbox's `unshare`
/// (the parent that waits for it, pid 1 of its PID namespace being the
/// guest) and, at most, its short-lived children (the guest script's
/// `sleep`). A duplicate guest would be a second process whose parent is
/// not `pid`.
fn assert_single_guest(cgroup: &Path, pid: u32) {
    let procs = procs_in(cgroup);
    assert!(procs.contains(&pid), "{pid} not in {procs:?}");
    let waiter = parent_pid(pid);
    for other in procs.iter().filter(|p| **p != pid && Some(**p) != waiter) {
        if let Some(parent) = parent_pid(*other) {
            assert_eq!(
                parent, pid,
                "process {other} in the guest group is not the guest's child"
            );
        }
    }
}

fn limits(tag: &str, netns: &str) -> (String, String) {
    let v2 = Path::new("/sys/fs/cgroup").join(tag).join(netns);
    if v2.join("cpu.max").exists() {
        (
            fs::read_to_string(v2.join("cpu.max")).unwrap(),
            fs::read_to_string(v2.join("memory.max")).unwrap(),
        )
    } else {
        let cpu = Path::new("/sys/fs/cgroup/cpu").join(tag).join(netns);
        let mem = Path::new("/sys/fs/cgroup/memory").join(tag).join(netns);
        (
            format!(
                "{} {}",
                fs::read_to_string(cpu.join("cpu.cfs_quota_us"))
                    .unwrap()
                    .trim(),
                fs::read_to_string(cpu.join("cpu.cfs_period_us"))
                    .unwrap()
                    .trim()
            ),
            fs::read_to_string(mem.join("memory.limit_in_bytes")).unwrap(),
        )
    }
}

#[test]
fn three_guests_full_lifecycle() {
    let fx = Fixture::new();
    let hv = fx.backend();
    let specs: Vec<GuestSpec> = (1..=3).map(|k| fx.spec(k)).collect();

    for spec in &specs {
        assert_eq!(hv.define(spec).unwrap(), DefineOutcome::Created);
        assert_eq!(hv.define(spec).unwrap(), DefineOutcome::Unchanged);
        hv.start(spec.id).unwrap();
        hv.start(spec.id).unwrap();
    }

    for (k, spec) in specs.iter().enumerate() {
        let netns = NamespaceHypervisor::netns_name(spec.id);
        let nic = spec.nic.as_ref().unwrap();
        // Namespace and veth: guest end has the MAC and address, tx offload off.
        let addr = ip(&["-n", &netns, "-o", "addr", "show", "dev", "eth0"]);
        assert!(addr.contains(nic.ipv4_cidr.as_deref().unwrap()), "{addr}");
        let link = ip(&["-n", &netns, "-o", "link", "show", "dev", "eth0"]);
        assert!(link.contains(&nic.mac), "{link}");
        assert!(link.contains("UP"), "{link}");
        let mcast = ip(&["-n", &netns, "route", "show", "224.0.0.0/4"]);
        assert!(mcast.contains("dev eth0"), "no multicast route: {mcast:?}");
        let host = ip(&["-o", "link", "show", "dev", &nic.port_name]);
        assert!(host.contains(&nic.port_name), "host port missing: {host}");
        let offload = Command::new("ip")
            .args(["netns", "exec", &netns, "ethtool", "-k", "eth0"])
            .output()
            .unwrap();
        let offload = String::from_utf8_lossy(&offload.stdout);
        assert!(
            offload.contains("tx-checksumming: off"),
            "tx checksum offload still on: {offload}"
        );

        // cgroup limits.
        let (cpu, mem) = limits(&fx.tag, &netns);
        assert_eq!(cpu.trim(), "100000 100000");
        assert_eq!(mem.trim(), ((64 + k as u64 + 1) * 1024 * 1024).to_string());

        // The process runs inside the namespace and the group.
        let pid = hv.guest_pid(spec.id).unwrap().expect("guest running");
        assert_eq!(pid_netns_inode(pid), netns_inode(&netns));
        assert_single_guest(&hv.cgroup_dir(spec.id), pid);
        let info = hv.info(spec.id).unwrap().unwrap();
        assert_eq!(info.state, GuestState::Running);
        assert_eq!((info.vcpus, info.memory_mib), (1, 64 + k as u64 + 1));
    }
    let listed: Vec<Uuid> = hv.list_owned().unwrap().iter().map(|g| g.id).collect();
    assert_eq!(listed.len(), 3);
    assert!(specs.iter().all(|s| listed.contains(&s.id)));

    // Freeze: the counter stops; thaw: it moves again.
    let target = &specs[0];
    wait_until("guest counter", || fx.counter(target.id) > 0);
    hv.pause(target.id).unwrap();
    hv.pause(target.id).unwrap();
    assert_eq!(
        hv.info(target.id).unwrap().unwrap().state,
        GuestState::Paused
    );
    let frozen_at = fx.counter(target.id);
    // The running neighbour is the clock: ten of its steps (about 200 ms)
    // and not one of the frozen guest's.
    let other = fx.counter(specs[1].id);
    wait_until("unfrozen neighbour to progress", || {
        fx.counter(specs[1].id) >= other + 10
    });
    assert_eq!(
        fx.counter(target.id),
        frozen_at,
        "frozen guest kept running"
    );
    hv.resume(target.id).unwrap();
    hv.resume(target.id).unwrap();
    wait_until("thawed guest to progress", || {
        fx.counter(target.id) > frozen_at
    });
    assert_eq!(
        hv.info(target.id).unwrap().unwrap().state,
        GuestState::Running
    );

    // Resize in place.
    assert_eq!(hv.set_vcpus(target.id, 2).unwrap(), ResizeOutcome::Applied);
    assert_eq!(
        hv.set_memory(target.id, 128).unwrap(),
        ResizeOutcome::Applied
    );
    let netns = NamespaceHypervisor::netns_name(target.id);
    let (cpu, mem) = limits(&fx.tag, &netns);
    assert_eq!(cpu.trim(), "200000 100000");
    assert_eq!(mem.trim(), (128u64 * 1024 * 1024).to_string());
    let err = hv.set_memory(target.id, 1).unwrap_err();
    assert!(matches!(
        err,
        HypervisorError::InvalidSpec {
            field: "memory_mib",
            ..
        }
    ));

    // Stop kills the group (even a frozen one) but keeps the guest defined.
    let pid = hv.guest_pid(target.id).unwrap().unwrap();
    hv.pause(target.id).unwrap();
    hv.stop(target.id).unwrap();
    hv.stop(target.id).unwrap();
    assert!(procs_in(&hv.cgroup_dir(target.id)).is_empty());
    assert!(!Path::new(&format!("/proc/{pid}/ns")).exists() || proc_is_zombie(pid));
    assert_eq!(
        hv.info(target.id).unwrap().unwrap().state,
        GuestState::Stopped
    );
    assert!(matches!(
        hv.pause(target.id),
        Err(HypervisorError::InvalidState { .. })
    ));
    hv.start(target.id).unwrap();
    assert_eq!(
        hv.info(target.id).unwrap().unwrap().state,
        GuestState::Running
    );

    // Undefine removes everything; a second undefine is a no-op.
    for spec in &specs {
        let netns = NamespaceHypervisor::netns_name(spec.id);
        let cgroup = hv.cgroup_dir(spec.id);
        hv.undefine(spec.id).unwrap();
        hv.undefine(spec.id).unwrap();
        assert!(!Path::new("/run/netns").join(&netns).exists());
        assert!(!cgroup.exists());
        let port = &spec.nic.as_ref().unwrap().port_name;
        assert!(ip(&["-o", "link", "show", "dev", port]).is_empty());
        assert!(hv.info(spec.id).unwrap().is_none());
    }
    assert!(hv.list_owned().unwrap().is_empty());
}

/// A node whose underlay is too small for full frames gives its guests a
/// lower MTU: both ends of the veth carry it, the guest's end as the guest
/// sees it from inside its namespace.
#[test]
fn guest_veth_gets_the_configured_mtu() {
    let mut fx = Fixture::new();
    fx.config.guest_mtu = 1450;
    let hv = fx.backend();
    let spec = fx.spec(1);
    assert_eq!(hv.define(&spec).unwrap(), DefineOutcome::Created);
    let netns = NamespaceHypervisor::netns_name(spec.id);
    let inside = Command::new("ip")
        .args(["netns", "exec", &netns, "cat", "/sys/class/net/eth0/mtu"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&inside.stdout).trim(), "1450");
    let port = &spec.nic.as_ref().unwrap().port_name;
    let host = fs::read_to_string(format!("/sys/class/net/{port}/mtu")).unwrap();
    assert_eq!(host.trim(), "1450");
}

fn proc_is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s[s.rfind(')').unwrap() + 2..].starts_with('Z'))
        .unwrap_or(true)
}

#[test]
fn restarted_agent_adopts_guests_without_duplicates() {
    let fx = Fixture::new();
    let specs: Vec<GuestSpec> = (1..=3).map(|k| fx.spec(k)).collect();
    let mut pids = Vec::new();
    {
        let hv = fx.backend();
        for spec in &specs {
            hv.define(spec).unwrap();
            hv.start(spec.id).unwrap();
            pids.push(hv.guest_pid(spec.id).unwrap().unwrap());
        }
        // The "agent" dies: the backend object is gone, guests keep running.
    }
    let hv = fx.backend();
    let listed = hv.list_owned().unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|g| g.state == GuestState::Running));
    for (spec, pid) in specs.iter().zip(&pids) {
        // Reconcile replays define + start: both are no-ops.
        assert_eq!(hv.define(spec).unwrap(), DefineOutcome::Unchanged);
        hv.start(spec.id).unwrap();
        assert_eq!(hv.guest_pid(spec.id).unwrap(), Some(*pid));
        assert_single_guest(&hv.cgroup_dir(spec.id), *pid);
    }
    // A dead guest (killed behind our back) is restarted once, not twice.
    let victim = &specs[2];
    Command::new("kill")
        .args(["-9", &pids[2].to_string()])
        .status()
        .unwrap();
    wait_until("killed guest to leave its cgroup", || {
        procs_in(&hv.cgroup_dir(victim.id)).is_empty()
    });
    assert_eq!(
        hv.info(victim.id).unwrap().unwrap().state,
        GuestState::Stopped
    );
    hv.start(victim.id).unwrap();
    hv.start(victim.id).unwrap();
    let new_pid = hv.guest_pid(victim.id).unwrap().unwrap();
    assert_ne!(new_pid, pids[2]);
    assert_single_guest(&hv.cgroup_dir(victim.id), new_pid);
    for spec in &specs {
        hv.undefine(spec.id).unwrap();
    }
}

#[test]
fn foreign_namespaces_are_not_touched() {
    let fx = Fixture::new();
    let hv = fx.backend();
    let spec = fx.spec(1);
    let netns = NamespaceHypervisor::netns_name(spec.id);
    // Someone else's namespace with the name our guest would get.
    assert!(Command::new("ip")
        .args(["netns", "add", &netns])
        .status()
        .unwrap()
        .success());
    let result = hv.define(&spec);
    let listed = hv.list_owned();
    let undefine = hv.undefine(spec.id);
    let still_there = Path::new("/run/netns").join(&netns).exists();
    Command::new("ip")
        .args(["netns", "del", &netns])
        .status()
        .unwrap();
    match result {
        Err(HypervisorError::NotOwned { what }) => assert!(what.contains(&netns), "{what}"),
        other => panic!("expected NotOwned, got {other:?}"),
    }
    assert!(listed.unwrap().is_empty());
    undefine.unwrap();
    assert!(still_there, "undefine removed a namespace it does not own");
}

#[test]
fn failed_define_leaves_nothing_behind() {
    let fx = Fixture::new();
    let hv = fx.backend();
    let mut spec = fx.spec(1);
    // A host interface with our port name already exists and is not ours.
    let port = spec.nic.as_ref().unwrap().port_name.clone();
    let peer = format!("{}x", &port[..port.len().min(14)]);
    assert!(Command::new("ip")
        .args(["link", "add", &port, "type", "veth", "peer", "name", &peer])
        .status()
        .unwrap()
        .success());
    let result = hv.define(&spec);
    Command::new("ip")
        .args(["link", "del", &port])
        .status()
        .unwrap();
    assert!(
        matches!(result, Err(HypervisorError::NotOwned { .. })),
        "{result:?}"
    );
    let netns = NamespaceHypervisor::netns_name(spec.id);
    assert!(!Path::new("/run/netns").join(&netns).exists());
    assert!(hv.info(spec.id).unwrap().is_none());

    // An unusable MAC is caught before anything is created.
    spec.nic.as_mut().unwrap().mac = "ff:ff:ff:ff:ff:ff".into();
    let err = hv.define(&spec).unwrap_err();
    assert!(
        matches!(
            err,
            HypervisorError::InvalidSpec {
                field: "nic.mac",
                ..
            }
        ),
        "{err}"
    );
    assert!(!Path::new("/run/netns").join(&netns).exists());
}

/// The backend's veths carry real traffic through userspace OVS: ICMP and
/// UDP (which needs tx checksum offload off) within a VLAN, nothing across.
/// The host ends are handed over the way the agent's OVS module gets them:
/// by port name. The sandbox switch runs in its own namespace, so the test
/// moves each port there first (in the lab, agent and switch share one).
#[test]
fn guests_talk_through_ovs_only_within_their_vlan() {
    let fx = Fixture::new();
    let hv = fx.backend();
    let ovs = OvsSandbox::start("virtns").unwrap();
    let bridge = format!("brn{}", std::process::id() % 100_000);
    ovs.add_bridge(&bridge).unwrap();

    let mut specs = Vec::new();
    for (k, vlan) in [(1u8, 100u16), (2, 100), (3, 200)] {
        let mut spec = fx.spec(k);
        spec.nic.as_mut().unwrap().vlan_tag = Some(vlan);
        let t0 = Instant::now();
        hv.define(&spec).unwrap();
        hv.start(spec.id).unwrap();
        println!(
            "namespace guest {k}: define+start {:.1} ms",
            t0.elapsed().as_secs_f64() * 1000.0
        );
        let port = spec.nic.as_ref().unwrap().port_name.clone();
        let moved = Command::new("ip")
            .args(["link", "set", &port, "netns", ovs.netns().name()])
            .status()
            .unwrap();
        assert!(moved.success());
        ovs.netns()
            .run(&["ip", "link", "set", &port, "up"])
            .unwrap();
        ovs.vsctl(&["add-port", &bridge, &port, &format!("tag={vlan}")])
            .unwrap();
        specs.push(spec);
    }
    let ns = |i: usize| NamespaceHypervisor::netns_name(specs[i].id);
    let ping = |from: usize, to: &str| {
        Command::new("ip")
            .args(["netns", "exec", &ns(from), "ping", "-c", "1", "-W", "1", to])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    // Same VLAN: reachable (retry while the datapath learns the ports).
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ping(0, "10.200.77.12") {
        assert!(
            Instant::now() < deadline,
            "guest 1 cannot reach guest 2 on VLAN 100"
        );
    }
    // Same subnet, other VLAN: isolated.
    assert!(!ping(0, "10.200.77.13"), "VLAN 100 reached VLAN 200");
    assert!(!ping(2, "10.200.77.11"), "VLAN 200 reached VLAN 100");

    // UDP: iperf2 server in guest 2, client in guest 1; the server report
    // only comes back if the datagrams arrived with valid checksums.
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns(1),
            "iperf",
            "-s",
            "-u",
            "-B",
            "10.200.77.12",
            "-p",
            "5201",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the iperf server's UDP socket", || {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns(1),
                "ss",
                "-Hlun",
                "sport",
                "=",
                ":5201",
            ])
            .output()
            .is_ok_and(|out| !out.stdout.is_empty())
    });
    let client = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns(0),
            "iperf",
            "-c",
            "10.200.77.12",
            "-u",
            "-p",
            "5201",
            "-t",
            "1",
            "-b",
            "1M",
        ])
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let report = String::from_utf8_lossy(&client.stdout);
    assert!(
        report.contains("Server Report"),
        "UDP did not get through: {report}"
    );

    for spec in &specs {
        hv.undefine(spec.id).unwrap();
    }
    assert!(hv.list_owned().unwrap().is_empty());
}

#[test]
fn guest_claimed_before_its_namespace_existed_converges() {
    // An agent killed right after define claimed a guest but before its
    // namespace was created leaves a record and nothing else. The next agent
    // must treat it as its own and build it, never refuse it as foreign.
    let fx = Fixture::new();
    let spec = fx.spec(1);
    let netns = {
        let hv = fx.backend();
        hv.define(&spec).unwrap();
        hv.info(spec.id).unwrap().unwrap().name
    };
    ip(&["netns", "delete", &netns]);
    assert!(!Path::new("/run/netns").join(&netns).exists());
    // The kernel destroys the veth pair asynchronously after the namespace.
    let port = spec.nic.as_ref().unwrap().port_name.clone();
    wait_until("host end of the veth to disappear", || {
        !Path::new("/sys/class/net").join(&port).exists()
    });

    let hv = fx.backend();
    let listed = hv.list_owned().unwrap();
    assert_eq!(listed.len(), 1, "the claimed guest is still ours");
    assert_eq!(listed[0].state, GuestState::Stopped);
    hv.start(spec.id).unwrap();
    assert!(Path::new("/run/netns").join(&netns).exists());
    let pid = hv.guest_pid(spec.id).unwrap().unwrap();
    // The pid is recorded by the launcher before it enters the namespace.
    wait_until("guest process to enter the rebuilt namespace", || {
        pid_netns_inode(pid) == netns_inode(&netns)
    });
    assert!(matches!(
        hv.define(&spec).unwrap(),
        DefineOutcome::Unchanged | DefineOutcome::Updated { .. }
    ));
    assert_eq!(hv.list_owned().unwrap().len(), 1, "no duplicate guest");
    hv.undefine(spec.id).unwrap();
    assert!(!Path::new("/run/netns").join(&netns).exists());
}

#[test]
fn guest_launched_but_never_recorded_is_replaced_not_doubled() {
    // An agent SIGKILLed after launching a guest but before saving its pid
    // leaves a running guest that the record does not name. A second guest
    // beside it would fight it for the guest's local ports (the real guest
    // agent then exits at once, on every retry), so start must clear it.
    let fx = Fixture::new();
    let spec = fx.spec(1);
    let stray = {
        let hv = fx.backend();
        hv.define(&spec).unwrap();
        hv.start(spec.id).unwrap();
        hv.guest_pid(spec.id).unwrap().unwrap()
    };
    let state = fx.config.state_dir.join(format!("{}.json", spec.id));
    let mut record: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&state).unwrap()).unwrap();
    assert!(record["process"].is_object(), "{record}");
    record["process"] = serde_json::Value::Null;
    fs::write(&state, record.to_string()).unwrap();

    let hv = fx.backend();
    assert_eq!(
        hv.info(spec.id).unwrap().unwrap().state,
        GuestState::Stopped
    );
    hv.start(spec.id).unwrap();
    let pid = hv.guest_pid(spec.id).unwrap().unwrap();
    assert_ne!(pid, stray);
    assert!(
        !Path::new(&format!("/proc/{stray}")).exists()
            || fs::read_to_string(format!("/proc/{stray}/stat")).is_ok_and(|s| s.contains(") Z")),
        "the unrecorded guest {stray} is still running"
    );
    assert_single_guest(&hv.cgroup_dir(spec.id), pid);
    hv.undefine(spec.id).unwrap();
}

/// A guest that writes what `nproc` says to /tmp/nproc, and on request
/// (/tmp/ctl/go) holds 96 MiB in one process (`tail` keeps the whole
/// stream) and writes that pipeline's exit status to /tmp/ctl/rc: 0 when
/// the memory fits, non-zero when the guest's memory limit killed it.
const RESIZE_SCRIPT: &str = r#"mkdir -p /tmp/ctl
while :; do
  nproc > /tmp/nproc.new && mv /tmp/nproc.new /tmp/nproc
  if [ -e /tmp/ctl/go ]; then
    rm -f /tmp/ctl/go
    head -c 96M /dev/zero | tail -c 96M > /dev/null
    echo $? > /tmp/ctl/rc.new && mv /tmp/ctl/rc.new /tmp/ctl/rc
  fi
  sleep 0.05
done"#;

fn guest_file(pid: u32, path: &str) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/root{path}"))
        .ok()
        .map(|t| t.trim().to_string())
}

/// Has the guest hold 96 MiB; its exit status.
fn allocate_in_guest(pid: u32) -> i32 {
    let _ = fs::remove_file(format!("/proc/{pid}/root/tmp/ctl/rc"));
    wait_until("guest control dir", || {
        Path::new(&format!("/proc/{pid}/root/tmp/ctl")).is_dir()
    });
    // As the guest's own root: the sandbox's tmpfs belongs to the guest's
    // user namespace, where the host's uid 0 is not mapped (EOVERFLOW).
    let status = Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-U",
            "-m",
            "--",
            "sh",
            "-c",
            ": > /tmp/ctl/go",
        ])
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cannot write the guest's go file: {status}"
    );
    let mut rc = None;
    wait_until("guest allocation to finish", || {
        rc = guest_file(pid, "/tmp/ctl/rc");
        rc.is_some()
    });
    rc.unwrap().parse().unwrap()
}

fn start_time(pid: u32) -> String {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .nth(19)
        .unwrap()
        .to_string()
}

#[test]
fn vcpu_and_memory_changes_reach_the_running_guest() {
    let fx = Fixture::with_script(RESIZE_SCRIPT);
    let hv = fx.backend();
    let mut spec = fx.spec(0);
    spec.vcpus = 1;
    spec.memory_mib = 64;
    hv.define(&spec).unwrap();
    hv.start(spec.id).unwrap();
    let pid = hv.guest_pid(spec.id).unwrap().unwrap();
    let started = start_time(pid);

    wait_until("guest to report nproc 1", || {
        guest_file(pid, "/tmp/nproc").as_deref() == Some("1")
    });
    let refused = allocate_in_guest(pid);
    assert_ne!(refused, 0, "96 MiB fitted in a 64 MiB guest");

    // The same path the reconcile loop takes: define with the new sizes.
    spec.vcpus = 2;
    spec.memory_mib = 192;
    spec.swap_mib = 32;
    assert_eq!(
        hv.define(&spec).unwrap(),
        DefineOutcome::Updated {
            restart_required: false
        }
    );
    let host_cpus = std::thread::available_parallelism().unwrap().get();
    let expected = host_cpus.min(2).to_string();
    wait_until("guest to report the new nproc", || {
        guest_file(pid, "/tmp/nproc").as_deref() == Some(expected.as_str())
    });
    assert_eq!(allocate_in_guest(pid), 0, "96 MiB did not fit in 192 MiB");

    // Memory plus swap is bounded too, where the kernel accounts swap.
    let netns = NamespaceHypervisor::netns_name(spec.id);
    let v1_memsw = Path::new("/sys/fs/cgroup/memory")
        .join(&fx.tag)
        .join(&netns)
        .join("memory.memsw.limit_in_bytes");
    let v2_swap = Path::new("/sys/fs/cgroup")
        .join(&fx.tag)
        .join(&netns)
        .join("memory.swap.max");
    if v1_memsw.is_file() {
        let memsw = fs::read_to_string(&v1_memsw).unwrap();
        assert_eq!(memsw.trim(), ((192u64 + 32) << 20).to_string());
    } else if v2_swap.is_file() {
        let swap = fs::read_to_string(&v2_swap).unwrap();
        assert_eq!(swap.trim(), (32u64 << 20).to_string());
    }

    // Still the guest that was started first, never restarted.
    assert_eq!(hv.guest_pid(spec.id).unwrap(), Some(pid));
    assert_eq!(start_time(pid), started);
    let info = hv.info(spec.id).unwrap().unwrap();
    assert_eq!((info.vcpus, info.memory_mib), (2, 192));
    assert!(!info.restart_pending);

    // And back down: the guest sees one CPU again.
    spec.vcpus = 1;
    hv.define(&spec).unwrap();
    wait_until("guest to report nproc 1 again", || {
        guest_file(pid, "/tmp/nproc").as_deref() == Some("1")
    });
    assert_eq!(start_time(pid), started);
    hv.undefine(spec.id).unwrap();
}
