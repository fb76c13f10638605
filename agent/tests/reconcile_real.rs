//! End to end on one node, everything real: the in-process controller, a
//! private OVS (measurelab-testbed) as the node's switch, the namespace
//! backend with the real guest agent, and the agent's reconcile loop.
//!
//! The agent runs on its own thread inside the OVS sandbox's network
//! namespace (as it runs inside `<lab>-nK` in a lab), so the veths it creates
//! are switchable by that ovs-vswitchd; the controller's gRPC listener is
//! bound in the same namespace. "Killing" the agent drops its runtime without
//! any shutdown (no cleanup code runs), like SIGKILL - except that a
//! hypervisor call already running on a blocking thread finishes, which a
//! real SIGKILL would cut short (see the namespace backend's define).
//!
//! Needs root (netns, cgroups, OVS). Everything is torn down on drop.

mod reconcile_common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use measurelab_agent::AgentConfig;
use measurelab_api::client::Client;
use measurelab_api::http::{DeploymentCreate, PlatformCreate, ProgramCreate, Vm, VmBackend};
use measurelab_testbed::OvsSandbox;
use reconcile_common::{
    guest_agent, namespace_vm, spooled_files, GuestCleanup, NodeController, RunningAgent,
};

const WAIT: Duration = Duration::from_secs(60);

/// Runs inside a guest: uses the local platform API, prints its argument.
const PROGRAM: &str = r#"#!/usr/bin/env python3
import json, os, sys, urllib.request
api = os.environ.get("MEASURELAB_PLATFORM_API", "http://127.0.0.1:7079")
tasks = json.load(urllib.request.urlopen(api + "/tasks", timeout=20))["tasks"]
print("hello", sys.argv[1], "tasks", len(tasks))
"#;

fn netns_list() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn vm_netns(vm: &Vm) -> String {
    format!("vm-{}", &vm.id.replace('-', "")[..8])
}

/// Port name -> tag of every Port on br-int.
fn ports(ovs: &OvsSandbox) -> BTreeMap<String, String> {
    let out = ovs
        .vsctl(&[
            "--format=csv",
            "--no-headings",
            "--columns=name,tag",
            "list",
            "Port",
        ])
        .unwrap_or_default();
    out.lines()
        .filter_map(|l| {
            let (name, tag) = l.split_once(',')?;
            Some((name.trim_matches('"').to_string(), tag.to_string()))
        })
        .collect()
}

fn port_names_of_bridge(ovs: &OvsSandbox) -> Vec<String> {
    ovs.vsctl(&["list-ports", "br-int"])
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn condition<'a>(vm: &'a Vm, kind: &str) -> Option<&'a str> {
    vm.conditions
        .iter()
        .find(|c| c.condition_type == kind)
        .map(|c| c.status.as_str())
}

fn ready(vm: &Vm) -> bool {
    vm.actual_state == "running"
        && condition(vm, "PortAttached") == Some("True")
        && condition(vm, "GuestRegistered") == Some("True")
        && condition(vm, "Ready") == Some("True")
}

async fn wait_for<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn vms(client: &Client) -> Vec<Vm> {
    client.list_vms("").await.unwrap()
}

/// One node as a lab runs it: a private OVS, the controller in-process with
/// a 1 s heartbeat and a 5 s offline deadline, and the configuration of
/// agent `n1` with the real guest agent, to start (and restart) in `netns`.
struct OneNode {
    ovs: OvsSandbox,
    netns: String,
    controller: NodeController,
    client: Client,
    agent_config: AgentConfig,
    state_dir: PathBuf,
    cleanup: GuestCleanup,
    dir: tempfile::TempDir,
}

async fn one_node(ovs_prefix: &str, guest_agent: PathBuf) -> OneNode {
    let ovs = OvsSandbox::start(ovs_prefix).unwrap();
    let netns = ovs.netns().name().to_string();
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("agent");
    let cleanup = GuestCleanup {
        state_dir: state_dir.clone(),
    };
    let controller = NodeController::start(
        &netns,
        &dir.path().join("controller"),
        |config| {
            config.heartbeat_interval = Duration::from_secs(1);
            config.offline_after = Duration::from_secs(5);
        },
        WAIT,
    )
    .await
    .unwrap();
    let client = controller.client.clone();
    let mut agent_config = controller.agent_config("n1", state_dir.clone());
    agent_config.ovsdb = Some(ovs.db_target());
    agent_config.libvirt_uris = vec![];
    agent_config.guest_agent = Some(guest_agent);
    OneNode {
        ovs,
        netns,
        controller,
        client,
        agent_config,
        state_dir,
        cleanup,
        dir,
    }
}

/// Whether the VM's guest heartbeat reached the controller after `at`:
/// guest heartbeats travel only through a working agent and channel.
fn heard_after(vm: &Vm, at: time::OffsetDateTime) -> bool {
    vm.guest_last_heartbeat
        .as_deref()
        .and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
        .is_some_and(|t| t > at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_vms_converge_survive_restart_and_repair() {
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("[{:>6.1} s] {what}", t0.elapsed().as_secs_f64());
    let guest_agent = guest_agent();
    phase("guest agent built");
    let OneNode {
        ovs,
        netns,
        controller,
        client,
        agent_config,
        state_dir,
        cleanup: _cleanup,
        dir: _dir,
    } = one_node("rcl", guest_agent).await;
    let mut agent = RunningAgent::start(&netns, agent_config.clone());

    phase("controller and agent started");
    wait_for("node n1 online", async || {
        let nodes = client.list_nodes().await.ok()?;
        nodes
            .iter()
            .any(|n| n.name == "n1" && n.capabilities.namespace_backend)
            .then_some(())
    })
    .await;

    let platform = client
        .create_platform(&PlatformCreate {
            tenant: None,
            name: "rcl".into(),
            nodes: vec!["n1".into()],
            admins: vec![],
            description: None,
            request_id: None,
            flow_monitoring: None,
            gateway: None,
        })
        .await
        .unwrap();
    let mut created = Vec::new();
    for name in ["a", "b"] {
        created.push(client.create_vm(&namespace_vm(name, "rcl")).await.unwrap());
    }

    // Kill the agent mid-creation: as soon as the first guest's namespace
    // exists, before the rest is done.
    let deadline = Instant::now() + WAIT;
    while !created
        .iter()
        .any(|vm| Path::new("/run/netns").join(vm_netns(vm)).exists())
    {
        assert!(Instant::now() < deadline, "no guest namespace appeared");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    phase("first guest namespace exists; killing the agent");
    agent.kill();
    let restarted_at = time::OffsetDateTime::now_utc();
    let mut agent = RunningAgent::start(&netns, agent_config.clone());

    let deadline = Instant::now() + WAIT;
    let running = loop {
        let all = vms(&client).await;
        // Guest heartbeats reach the controller only through the new agent,
        // so a heartbeat newer than the restart proves its channel works
        // (statuses alone could be left over from the killed agent).
        if all.len() == 2
            && all
                .iter()
                .all(|vm| ready(vm) && heard_after(vm, restarted_at))
        {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for both VMs running, attached and registered: {all:#?}\n{}",
            guest_logs(&state_dir)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    phase("both VMs ready after the restart");
    for vm in &running {
        assert_eq!(vm.backend, VmBackend::Namespace);
        assert!(!vm.address.is_empty(), "{vm:?}");
        assert!(vm.observed_generation >= 1, "{vm:?}");
    }

    // No duplicates: one namespace and one tagged port per VM, plus the
    // bridge's internal port.
    let list = netns_list();
    for vm in &running {
        assert_eq!(list.iter().filter(|n| **n == vm_netns(vm)).count(), 1);
    }
    let bridge_ports = port_names_of_bridge(&ovs);
    assert_eq!(bridge_ports.len(), 2, "{bridge_ports:?}");
    let tags = ports(&ovs);
    for port in &bridge_ports {
        assert_eq!(
            tags.get(port).map(String::as_str),
            Some(platform.vlan_tag.to_string().as_str()),
            "port {port} must carry the platform's VLAN: {tags:?}"
        );
    }
    let state_files: Vec<_> = std::fs::read_dir(state_dir.join("namespace"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .collect();
    assert_eq!(state_files.len(), 2);

    // Program distribution: the program reaches both guests through the
    // node agent, asks the local platform API for tasks (relayed as
    // poll_tasks -> PollTasks) and its exit status comes back.
    let program = client
        .create_program(&ProgramCreate {
            tenant: None,
            name: "hello.py".into(),
            content_base64: base64::engine::general_purpose::STANDARD.encode(PROGRAM),
            sha256: None,
            request_id: None,
        })
        .await
        .unwrap();
    let deployment = client
        .create_deployment(&DeploymentCreate {
            tenant: None,
            program: program.id.clone(),
            vms: running.iter().map(|vm| vm.id.clone()).collect(),
            args: vec!["world".into()],
            env: BTreeMap::new(),
            outputs: vec![],
            request_id: None,
        })
        .await
        .unwrap();
    let runs = wait_for("both program runs to exit", async || {
        let d = client.get_deployment(&deployment.id).await.ok()?;
        (d.runs.len() == 2 && d.runs.iter().all(|r| r.status == "exited")).then_some(d.runs)
    })
    .await;
    for run in &runs {
        assert_eq!(run.exit_code, Some(0), "{run:?}");
        assert!(run.stdout_tail.contains("hello world tasks 0"), "{run:?}");
    }

    phase("program ran in both guests");
    // Drift: a port deleted by hand comes back with its tag.
    let victim = bridge_ports[0].clone();
    ovs.vsctl(&["del-port", "br-int", &victim]).unwrap();
    assert!(!port_names_of_bridge(&ovs).contains(&victim));
    wait_for("the deleted port to be re-added", async || {
        port_names_of_bridge(&ovs).contains(&victim).then_some(())
    })
    .await;
    assert_eq!(
        ports(&ovs).get(&victim).cloned(),
        Some(platform.vlan_tag.to_string())
    );

    phase("port repaired");
    // Delete a VM: namespace, port and row disappear.
    let gone = running.iter().find(|vm| vm.name == "a").unwrap().clone();
    client.delete_vm(&gone.id, false).await.unwrap();
    wait_for(
        "VM a removed after the agent's ack",
        async || match client.get_vm(&gone.id).await {
            Err(e) if e.is_not_found() => Some(()),
            _ => None,
        },
    )
    .await;
    phase("VM deleted and acked");
    assert!(!netns_list().contains(&vm_netns(&gone)));
    assert_eq!(port_names_of_bridge(&ovs).len(), 1);
    let left = vms(&client).await;
    assert_eq!(left.len(), 1);
    assert!(ready(&left[0]), "{:?}\n{}", left[0], guest_logs(&state_dir));

    agent.kill();
    let _ = controller.stop(Duration::from_secs(10)).await;
    drop(_cleanup);
    cleanup_cgroup_parent(Path::new("/sys/fs/cgroup"));
}

/// The tail of every guest's log and its cgroup's memory events, so a
/// failure in CI says why a guest process died.
fn guest_logs(state_dir: &Path) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(state_dir.join("namespace")) else {
        return out;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let path = entry.path();
        if path.extension().is_some_and(|x| x == "log") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            out += &format!("--- {}\n{tail}\n", path.display());
        }
    }
    for events in [
        "/sys/fs/cgroup/measurelab",
        "/sys/fs/cgroup/unified/measurelab",
    ] {
        if let Ok(dirs) = std::fs::read_dir(events) {
            for dir in dirs.filter_map(|e| e.ok()) {
                let text =
                    std::fs::read_to_string(dir.path().join("memory.events")).unwrap_or_default();
                out += &format!("--- {}/memory.events\n{text}", dir.path().display());
            }
        }
    }
    out
}

/// The namespace backend's parent cgroup; removed only when empty, so a real
/// agent's guests on the same host are never touched.
fn cleanup_cgroup_parent(mount: &Path) {
    for hierarchy in ["unified", "cpu", "memory", ""] {
        let _ = std::fs::remove_dir(mount.join(hierarchy).join("measurelab"));
    }
}

/// Runs inside the hostile VM, as a researcher's program: floods the node
/// through the guest's local platform API (task polls from four threads,
/// results for a task of another platform from two) and tries to take the
/// VM's channel from its guest agent; then prints what it was answered.
/// Every count is the sender's own, so the test checks the flood happened.
const FLOOD_PROGRAM: &str = r#"#!/usr/bin/env python3
import glob, json, os, socket, sys, threading, time, urllib.error, urllib.request
api = os.environ.get("MEASURELAB_PLATFORM_API", "http://127.0.0.1:7079")
foreign_task, seconds = sys.argv[1], float(sys.argv[2])
end = time.monotonic() + seconds
counts = {"polls": 0, "polls_ok": 0, "polls_refused": 0, "results": 0, "results_accepted": 0, "results_rejected": 0,
          "takeovers": 0, "takeovers_refused": 0}
lock = threading.Lock()
def bump(key):
    with lock:
        counts[key] += 1
def status(request):
    try:
        with urllib.request.urlopen(request, timeout=15) as answer:
            return answer.status
    except urllib.error.HTTPError as e:
        return e.code
    except Exception:
        return 0
def poll():
    while time.monotonic() < end:
        code = status(api + "/tasks")
        bump("polls")
        if code == 200: bump("polls_ok")
        if code == 429: bump("polls_refused")
def post():
    n = 0
    while time.monotonic() < end:
        n += 1
        body = json.dumps({"task_id": foreign_task,
                           "document": {"run_id": "forged-%d" % n, "loss": 0}}).encode()
        code = status(urllib.request.Request(api + "/results", data=body,
                                             headers={"content-type": "application/json"}))
        bump("results")
        if code == 202: bump("results_accepted")
        if code == 422: bump("results_rejected")
def take_channel():
    sockets = glob.glob("/run/measurelab/*")
    hello = b'{"type":"hello","vm_id":"%s","agent_version":"evil"}\n' % os.environ["MEASURELAB_VM_ID"].encode()
    while time.monotonic() < end and sockets:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect(sockets[0])
        except OSError:
            s.close()
            continue
        bump("takeovers")
        try:
            s.sendall(hello + b'{"type":"poll_tasks"}\n' * 100)
            closed = s.recv(1) == b""
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        except OSError:
            closed = False
        if closed: bump("takeovers_refused")
        s.close()
        time.sleep(0.5)
threads = [threading.Thread(target=poll) for _ in range(4)]
threads += [threading.Thread(target=post) for _ in range(2)]
threads.append(threading.Thread(target=take_channel))
for t in threads: t.start()
for t in threads: t.join()
sys.stderr.write("flood " + json.dumps(counts) + "\n")
"#;

/// Guests treated as hostile, with every part real: a program in one VM
/// floods the node agent through its guest's local API and tries to take
/// the VM's channel, while another VM on the node is deleted and a third
/// keeps heartbeating. The deletion completes and the heartbeats keep
/// reaching the controller during the flood; polls over the VM's budget are
/// refused at the agent, results for another platform's task are refused by
/// the controller (none stored), and the channel stays its guest agent's.
/// The raw-channel flood (4 MiB tails, a guest root speaking the protocol
/// itself) is `reconcile_fake`'s `a_flooding_guest_is_bounded...`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_guest_program_cannot_starve_the_node_or_post_for_others() {
    const FLOOD_SECONDS: u64 = 40;
    let OneNode {
        ovs: _ovs,
        netns,
        controller,
        client,
        agent_config,
        state_dir,
        cleanup: _cleanup,
        dir: _dir,
    } = one_node("rfl", guest_agent()).await;
    let mut agent = RunningAgent::start(&netns, agent_config);
    wait_for("node n1 online", async || {
        let nodes = client.list_nodes().await.ok()?;
        nodes
            .iter()
            .any(|n| n.name == "n1" && n.status == measurelab_api::http::NodeStatus::Online)
            .then_some(())
    })
    .await;

    for platform in ["victims", "other"] {
        client
            .create_platform(&PlatformCreate {
                tenant: None,
                name: platform.into(),
                nodes: vec!["n1".into()],
                admins: vec![],
                description: None,
                request_id: None,
                flow_monitoring: None,
                gateway: None,
            })
            .await
            .unwrap();
    }
    let mut created = BTreeMap::new();
    for (name, platform) in [
        ("hostile", "victims"),
        ("honest", "victims"),
        ("doomed", "victims"),
        ("bystander", "other"),
    ] {
        let vm = client
            .create_vm(&measurelab_api::http::VmCreate {
                // Python and its threads live in the guest's memory.
                memory_mib: 128,
                ..namespace_vm(name, platform)
            })
            .await
            .unwrap();
        created.insert(name, vm.id);
    }
    let foreign_task = client
        .create_task(
            &serde_json::from_value(serde_json::json!({"name": "theirs", "mode": "platform",
                "platform": "other", "schedule": "periodic", "interval_seconds": 3600,
                "duration_seconds": 5, "rate_pps": 100, "packet_size_bytes": 200,
                "group": "239.1.2.3", "port": 5000, "ttl": 4}))
            .unwrap(),
        )
        .await
        .unwrap();
    wait_for("four VMs ready", async || {
        let all = vms(&client).await;
        (all.len() == 4 && all.iter().all(ready)).then_some(())
    })
    .await;

    let program = client
        .create_program(&ProgramCreate {
            tenant: None,
            name: "flood.py".into(),
            content_base64: base64::engine::general_purpose::STANDARD.encode(FLOOD_PROGRAM),
            sha256: None,
            request_id: None,
        })
        .await
        .unwrap();
    let deployment = client
        .create_deployment(&DeploymentCreate {
            tenant: None,
            program: program.id.clone(),
            vms: vec![created["hostile"].clone()],
            args: vec![foreign_task.id.clone(), FLOOD_SECONDS.to_string()],
            env: BTreeMap::new(),
            outputs: vec![],
            request_id: None,
        })
        .await
        .unwrap();
    let flood_running = async || {
        let d = client.get_deployment(&deployment.id).await.ok()?;
        Some(d.runs.first()?.status == "running")
    };
    wait_for("the flood to start", async || {
        flood_running().await.unwrap_or(false).then_some(())
    })
    .await;
    let flood_started = time::OffsetDateTime::now_utc();
    let since_start = Instant::now();

    // Mid-flood: the deletion is acked and the honest guest's heartbeats
    // (every 5 s) keep arriving, and the flood is still on when they do.
    client.delete_vm(&created["doomed"], false).await.unwrap();
    wait_for("the doomed VM deleted during the flood", async || {
        matches!(client.get_vm(&created["doomed"]).await, Err(e) if e.is_not_found()).then_some(())
    })
    .await;
    let later = flood_started + time::Duration::seconds(12);
    wait_for("an honest heartbeat 12 s into the flood", async || {
        let honest = client.get_vm(&created["honest"]).await.ok()?;
        heard_after(&honest, later).then_some(())
    })
    .await;
    assert!(
        flood_running().await == Some(true),
        "the flood ended before the checks ({:?} in): they prove nothing",
        since_start.elapsed()
    );
    assert!(
        since_start.elapsed() < Duration::from_secs(FLOOD_SECONDS),
        "checks done after the flood's end"
    );

    let run = wait_for("the flood program to exit", async || {
        let d = client.get_deployment(&deployment.id).await.ok()?;
        let run = d.runs.first()?.clone();
        (run.status == "exited").then_some(run)
    })
    .await;
    let report = run
        .stderr_tail
        .lines()
        .find_map(|l| l.strip_prefix("flood "))
        .unwrap_or_else(|| panic!("no flood report: {run:?}"));
    let counts: serde_json::Value = serde_json::from_str(report).unwrap();
    eprintln!("flood program's report: {counts}");
    let count = |key: &str| counts[key].as_u64().unwrap();
    assert!(
        count("polls_refused") > 0,
        "polls over the VM's budget are refused at the agent: {counts}"
    );
    // The controller refuses a result for another platform's task, and the
    // program hears so (422). One whose verdict took longer than the agent
    // waits for it was answered 202 (spooled, as a controller outage needs);
    // it is refused all the same and leaves the spool without being stored.
    assert!(
        count("results_rejected") > 0,
        "the program hears its forged results refused: {counts}"
    );
    wait_for("refused results gone from the spool", async || {
        (spooled_files(&state_dir) == 0).then_some(())
    })
    .await;
    assert!(count("takeovers") > 0, "{counts}");
    assert_eq!(
        count("takeovers_refused"),
        count("takeovers"),
        "the channel stays with the registered guest agent: {counts}"
    );
    let stored = client
        .list_results(&format!("task={}", foreign_task.id))
        .await
        .unwrap();
    assert!(stored.is_empty(), "forged results stored: {stored:?}");
    let left = vms(&client).await;
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(
        left.iter().all(ready),
        "{left:#?}\n{}",
        guest_logs(&state_dir)
    );
    let node = client.get_node("n1").await.unwrap();
    assert_eq!(node.status, measurelab_api::http::NodeStatus::Online);

    agent.kill();
    let _ = controller.stop(Duration::from_secs(10)).await;
    drop(_cleanup);
    cleanup_cgroup_parent(Path::new("/sys/fs/cgroup"));
}
