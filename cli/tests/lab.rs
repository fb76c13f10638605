//! The lab end to end: real namespaces, userspace OVS, controller and agents
//! as separate processes of the built `measurelab` binary. Needs root and the
//! packages of scripts/packages.txt. Each test owns a lab named after the
//! test process (`t<pid><letter>`) in its own temp dir, and its guard runs
//! `lab down` even when the test fails.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use measurelab_api::http::{Event, Node, NodeList, NodeStatus};

const BIN: &str = env!("CARGO_BIN_EXE_measurelab");

struct LabGuard {
    name: String,
    dir: tempfile::TempDir,
}

impl LabGuard {
    fn new(letter: char) -> Self {
        let name = format!("t{}{letter}", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix("mlab-test-")
            .tempdir()
            .expect("temp dir");
        LabGuard { name, dir }
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn lab(&self, sub: &str, extra: &[&str]) -> Output {
        Command::new(BIN)
            .args(["lab", sub, "--name", &self.name, "--dir"])
            .arg(self.dir())
            .args(extra)
            .output()
            .expect("run measurelab")
    }

    fn up_command(&self, nodes: u32, heartbeat_seconds: u32) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(["lab", "up", "--name", &self.name, "--dir"])
            .arg(self.dir())
            .args(["--nodes", &nodes.to_string(), "--http-port", "0"])
            .args([
                "--heartbeat-interval-seconds",
                &heartbeat_seconds.to_string(),
            ])
            .args([
                "--offline-after-seconds",
                &(3 * heartbeat_seconds).to_string(),
            ])
            .args(["--timeout-seconds", "60"]);
        cmd
    }

    /// `lab up` with short intervals; panics with the output on failure.
    fn up(&self, nodes: u32, heartbeat_seconds: u32) -> String {
        let out = self.up_command(nodes, heartbeat_seconds).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "lab up failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    fn nodes(&self) -> Vec<Node> {
        let out = self.lab("status", &["--json"]);
        assert!(
            out.status.success(),
            "lab status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list: NodeList = serde_json::from_slice(&out.stdout).expect("status --json");
        list.nodes
    }

    fn node(&self, name: &str) -> Node {
        self.nodes()
            .into_iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("node {name} not listed"))
    }

    fn pid(&self, process: &str) -> i32 {
        let path = self.dir().join("pids").join(format!("{process}.pid"));
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .parse()
            .expect("pid")
    }

    fn pids(&self) -> Vec<(String, i32)> {
        let mut pids: Vec<(String, i32)> = std::fs::read_dir(self.dir().join("pids"))
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_str()?.strip_suffix(".pid")?.to_string();
                        let pid = std::fs::read_to_string(e.path())
                            .ok()?
                            .trim()
                            .parse()
                            .ok()?;
                        Some((name, pid))
                    })
                    .collect()
            })
            .unwrap_or_default();
        pids.sort();
        pids
    }

    fn env(&self) -> (String, String) {
        let out = self.lab("env", &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let value = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("{key} missing in lab env output:\n{text}"))
                .to_string()
        };
        (value("MEASURELAB_ENDPOINT"), value("MEASURELAB_TOKEN"))
    }

    fn client(&self) -> (measurelab_api::client::Client, tokio::runtime::Runtime) {
        let (endpoint, token) = self.env();
        let client = measurelab_api::client::Client::new(&endpoint, &token, None).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        (client, runtime)
    }

    fn logs(&self, node: &str) -> Vec<measurelab_api::http::LogLine> {
        let (client, runtime) = self.client();
        runtime
            .block_on(client.node_logs(node))
            .expect("logs")
            .lines
    }

    fn events(&self) -> Vec<Event> {
        let (client, runtime) = self.client();
        runtime.block_on(client.events(0)).expect("events").events
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let out = self.lab("down", &[]);
        if !out.status.success() {
            eprintln!(
                "lab down {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn sigkill(pid: i32) {
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -KILL {pid}");
}

fn process_exists(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next()),
            Some("Z") | None
        ),
        Err(_) => false,
    }
}

/// Poll `check` every 50 ms until it returns Some or `deadline` passes.
fn wait_for<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// True when GET /healthz on `endpoint` (http://host:port) answers 200.
fn healthz_ok(endpoint: &str) -> bool {
    let Some(addr) = endpoint.strip_prefix("http://") else {
        return false;
    };
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(format!("GET /healthz HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200")
}

fn parse_time(text: &str) -> SystemTime {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"));
    SystemTime::from(t)
}

fn ip_output(args: &[&str]) -> String {
    String::from_utf8_lossy(&Command::new("ip").args(args).output().unwrap().stdout).into_owned()
}

#[test]
fn up_brings_every_node_online_and_a_second_up_starts_nothing() {
    let lab = LabGuard::new('a');
    let first = lab.up(3, 1);
    assert!(first.contains("started"), "{first}");
    let nodes = lab.nodes();
    let mut names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["n1", "n2", "n3"]);
    for node in &nodes {
        assert_eq!(node.status, NodeStatus::Online, "{node:?}");
        // Capabilities are probed inside the node: its own OVS answers.
        assert!(
            node.capabilities
                .ovs_datapath_types
                .iter()
                .any(|t| t == "netdev"),
            "{node:?}"
        );
        assert!(node
            .capabilities
            .libvirt_uris
            .iter()
            .any(|u| u == "test:///default"));
        assert_eq!(node.labels.get("lab"), Some(&lab.name));
        // The information module's data arrives with the heartbeat.
        let r = &node.resources;
        assert!(
            r.cpu_count >= 1 && r.memory_total_bytes > r.memory_used_bytes,
            "{r:?}"
        );
        assert!(r.disk_total_bytes > 0 && r.network_rx_bytes > 0, "{r:?}");
    }
    // The agents ship their own logs.
    let logs = wait_for("n1's shipped logs", Duration::from_secs(10), || {
        let lines = lab.logs("n1");
        lines
            .iter()
            .any(|l| l.message.contains("registered with the controller"))
            .then_some(lines)
    });
    assert!(logs.iter().all(|l| !l.target.starts_with("h2")), "{logs:?}");
    // The contract layout exists.
    let netns = ip_output(&["netns", "list"]);
    for ns in ["mgmt", "n1", "n2", "n3"] {
        assert!(netns.contains(&format!("{}-{ns}", lab.name)), "{netns}");
    }
    let switch_ns = format!("{}-sw", lab.name);
    for k in 1..=3 {
        assert!(lab.dir().join(format!("nodes/n{k}/ovs/db.sock")).exists());
        let link = ip_output(&[
            "-n",
            &switch_ns,
            "link",
            "show",
            &format!("{}-n{k}-up", lab.name),
        ]);
        assert!(link.contains("UP"), "{link}");
    }
    // Real packets cross the lab switch between node uplinks.
    let node = |k: u32, args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", &format!("{}-n{k}", lab.name)])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?} in n{k}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    node(1, &["ip", "addr", "add", "10.200.1.1/24", "dev", "uplink0"]);
    node(2, &["ip", "addr", "add", "10.200.1.2/24", "dev", "uplink0"]);
    node(
        1,
        &["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.200.1.2"],
    );
    let before = lab.pids();
    // Lab switch (2 OVS daemons), 3 nodes x (2 OVS daemons + agent), controller.
    assert_eq!(before.len(), 2 + 3 * 3 + 1, "{before:?}");

    let second = lab.up(3, 1);
    assert!(second.contains("nothing started"), "{second}");
    assert_eq!(lab.pids(), before, "second up must not restart anything");
    for (process, pid) in &before {
        assert!(process_exists(*pid), "{process} died");
    }
    assert_eq!(lab.nodes().len(), 3);
}

#[test]
fn killed_agent_goes_offline_and_comes_back_as_the_same_node() {
    let lab = LabGuard::new('b');
    lab.up(3, 1);
    let id = lab.node("n2").id;
    sigkill(lab.pid("n2-agent"));
    // Offline after 3 s of silence, plus up to one sweeper pass.
    wait_for("n2 offline", Duration::from_secs(15), || {
        (lab.node("n2").status == NodeStatus::Offline).then_some(())
    });
    for other in ["n1", "n3"] {
        assert_eq!(lab.node(other).status, NodeStatus::Online, "{other}");
    }
    let out = lab.up(3, 1);
    assert!(out.contains("started n2-agent"), "{out}");
    assert!(
        !out.contains("started controller"),
        "only the agent restarts: {out}"
    );
    let back = lab.node("n2");
    assert_eq!(back.status, NodeStatus::Online);
    assert_eq!(back.id, id, "restarted agent must keep its node id");
    assert_eq!(lab.nodes().len(), 3);
}

#[test]
fn restarted_controller_sees_every_node_again_within_two_intervals() {
    let heartbeat = Duration::from_secs(2);
    let lab = LabGuard::new('c');
    lab.up(3, 2);
    let mut ids: Vec<(String, String)> = lab.nodes().into_iter().map(|n| (n.name, n.id)).collect();
    ids.sort();
    let events_before = lab.events();
    assert!(
        events_before
            .iter()
            .filter(|e| e.reason == "NodeRegistered")
            .count()
            >= 3
    );
    let (endpoint, _) = lab.env();

    sigkill(lab.pid("controller"));
    // Long enough for the agents to fail and back off to their cap.
    std::thread::sleep(2 * heartbeat);
    assert!(!healthz_ok(&endpoint));

    let mut restart = lab.up_command(3, 2);
    let restart = std::thread::spawn(move || restart.output().unwrap());
    // The restarted controller keeps its port; note when it first answers.
    let ready = wait_for("controller healthz", Duration::from_secs(30), || {
        healthz_ok(&endpoint).then(SystemTime::now)
    });
    let all_back = wait_for(
        "fresh heartbeats from every node",
        2 * heartbeat + Duration::from_secs(5),
        || {
            lab.nodes()
                .iter()
                .all(|n| {
                    n.status == NodeStatus::Online
                        && n.last_heartbeat
                            .as_deref()
                            .is_some_and(|t| parse_time(t) >= ready)
                })
                .then(SystemTime::now)
        },
    );
    let out = restart.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let took = all_back.duration_since(ready).unwrap_or_default();
    eprintln!("every node heartbeating again {took:?} after the restarted controller answered");
    assert!(
        took <= 2 * heartbeat,
        "nodes took {took:?} to come back after the controller answered"
    );

    let mut after: Vec<(String, String)> =
        lab.nodes().into_iter().map(|n| (n.name, n.id)).collect();
    after.sort();
    assert_eq!(after, ids, "no node may be duplicated or renamed");
    // Lines logged while the controller was down were buffered, not lost.
    wait_for(
        "outage log lines shipped after the restart",
        Duration::from_secs(10),
        || {
            lab.logs("n1")
                .iter()
                .any(|l| l.message.contains("controller unreachable") && l.level == "warn")
                .then_some(())
        },
    );
    let events_after = lab.events();
    for event in &events_before {
        assert!(
            events_after.iter().any(|e| e == event),
            "event {} lost over the restart",
            event.id
        );
    }
}

#[test]
fn agent_with_a_bad_join_token_is_refused_and_the_refusal_is_an_event() {
    let lab = LabGuard::new('d');
    lab.up(1, 1);
    let state = lab.dir().join("rogue-state");
    let mut rogue = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}-n1", lab.name))
        .arg(BIN)
        .args(["agent", "--name", "rogue"])
        .args(["--controller", "http://10.254.0.1:7071"])
        .args(["--join-token", "not-the-token", "--state-dir"])
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let refusal = wait_for("RegistrationRefused event", Duration::from_secs(20), || {
        lab.events()
            .into_iter()
            .find(|e| e.reason == "RegistrationRefused" && e.object_id == "rogue")
    });
    // The agent keeps running: it never exits because of the controller.
    assert!(
        rogue.try_wait().unwrap().is_none(),
        "agent exited after a refusal"
    );
    rogue.kill().unwrap();
    let output = rogue.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("controller refused registration"),
        "{stderr}"
    );
    assert!(refusal.message.contains("join token"), "{refusal:?}");
    assert!(lab.nodes().iter().all(|n| n.name != "rogue"));
    assert!(!state.join("identity.json").exists());
}

#[test]
fn down_twice_leaves_nothing_behind() {
    let lab = LabGuard::new('e');
    lab.up(2, 1);
    let pids = lab.pids();
    assert!(!pids.is_empty());
    // Keep the switch's namespace alive past `lab down` (a second bind
    // mount, as `ip netns` makes them) to see what vswitchd left in it.
    let keep = format!("keep-{}", lab.name);
    let keep_path = format!("/run/netns/{keep}");
    std::fs::File::create(&keep_path).unwrap();
    let bound = Command::new("mount")
        .args(["--bind", &format!("/run/netns/{}-sw", lab.name), &keep_path])
        .status()
        .unwrap();
    assert!(bound.success());
    let first = lab.lab("down", &[]);
    let switch_links = ip_output(&["-n", &keep, "-o", "link", "show"]);
    let _ = Command::new("ip").args(["netns", "del", &keep]).status();
    // vswitchd stopped with `exit --cleanup` removes its datapath taps; a
    // kill or a plain exit leaves `ovs-netdev` and the bridge tap behind.
    assert!(
        !switch_links.contains("ovs-netdev") && switch_links.contains("lo:"),
        "the lab switch left its taps: {switch_links}"
    );
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let second = lab.lab("down", &[]);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let second_out = String::from_utf8_lossy(&second.stdout);
    assert!(second_out.contains("nothing to do"), "{second_out}");
    for (process, pid) in &pids {
        assert!(
            !process_exists(*pid),
            "{process} (pid {pid}) survived lab down"
        );
    }
    let prefix = format!("{}-", lab.name);
    let netns = ip_output(&["netns", "list"]);
    assert!(!netns.contains(&prefix), "namespaces left: {netns}");
    let links = ip_output(&["-o", "link", "show"]);
    assert!(!links.contains(&prefix), "links left: {links}");
    let dir = lab.dir().display().to_string();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let daemon = cmdline.contains("ovs")
            || cmdline.contains("measurelab agent")
            || cmdline.contains("measurelab controller");
        assert!(
            !(daemon && cmdline.contains(&dir)),
            "process left: {cmdline}"
        );
    }
    for leftover in ["pids", "ovs", "nodes", "controller"] {
        assert!(!lab.dir().join(leftover).exists(), "{leftover} left");
    }
}

#[test]
fn bad_flags_are_rejected_naming_the_flag() {
    let fails_naming = |args: &[&str], flag: &str| {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    };
    fails_naming(&["lab", "up"], "--nodes");
    fails_naming(&["lab", "up", "--nodes", "0"], "--nodes");
    fails_naming(
        &["lab", "up", "--nodes", "2", "--name", "Bad_Name"],
        "--name",
    );
    fails_naming(
        &["lab", "up", "--nodes", "2", "--name", "waytoolongname"],
        "--name",
    );
    fails_naming(
        &[
            "controller",
            "--data-dir",
            "/tmp/x",
            "--http-listen",
            "nonsense",
        ],
        "--http-listen",
    );
    fails_naming(
        &[
            "agent",
            "--name",
            "n1",
            "--controller",
            "http://x:1",
            "--state-dir",
            "/tmp/x",
        ],
        "--join-token",
    );
    fails_naming(
        &[
            "agent",
            "--name",
            "Bad_Name",
            "--controller",
            "http://127.0.0.1:1",
            "--join-token",
            "t",
            "--state-dir",
            "/tmp/x",
        ],
        "--name",
    );
}
