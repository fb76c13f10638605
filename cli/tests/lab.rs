//! The lab end to end: real namespaces, userspace OVS, controller and agents
//! as separate processes of the built `measurelab` binary. Needs root and the
//! packages of scripts/packages.txt. Each test owns a lab named after the
//! test process (`t<pid><letter>`) in its own temp dir, and its guard runs
//! `lab down` even when the test fails.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use common::{ip_output, process_exists, sigkill, wait_for, LabGuard, BIN};
use measurelab_api::http::NodeStatus;

fn parse_time(text: &str) -> SystemTime {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"));
    SystemTime::from(t)
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
    let ca = lab.ca_pem();
    assert!(
        lab.healthz_ok(&endpoint, ca.as_deref()),
        "the controller answers before it is killed"
    );

    let agents = ["n1-agent", "n2-agent", "n3-agent"];
    let logged_before: Vec<usize> = agents.iter().map(|a| agent_log(&lab, a).len()).collect();
    sigkill(lab.pid("controller"));
    // The controller comes back only once every agent has failed and backed
    // off to its cap: the heartbeat interval less at most 20 % jitter.
    let cap_ms = heartbeat.as_millis() as u64 * 8 / 10;
    wait_for(
        "every agent backed off to its cap",
        Duration::from_secs(30),
        || {
            agents
                .iter()
                .zip(&logged_before)
                .all(|(agent, &from)| {
                    let log = agent_log(&lab, agent);
                    log.get(from..)
                        .is_some_and(|new| longest_retry_ms(new) >= cap_ms)
                })
                .then_some(())
        },
    );
    assert!(!lab.healthz_ok(&endpoint, ca.as_deref()));

    let mut restart = lab.up_command(3, 2);
    let restart = std::thread::spawn(move || restart.output().unwrap());
    // The restarted controller keeps its port; note when it first answers.
    let ready = wait_for("controller healthz", Duration::from_secs(30), || {
        lab.healthz_ok(&endpoint, ca.as_deref())
            .then(SystemTime::now)
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
    // The lab runs TLS: the rogue agent pins the lab's real CA (a bundle
    // made on the controller) but holds a wrong join token, so it gets as
    // far as registering and is refused there. The bundle names a dead
    // controller first (nothing listens on port 7999): the agent must pin
    // the CA from the second and go on to it to register.
    let wrong_token = lab.dir().join("wrong.token");
    std::fs::write(&wrong_token, "not-the-token").unwrap();
    let bundle = Command::new(BIN)
        .arg("join-bundle")
        .arg("--data-dir")
        .arg(lab.dir().join("controller"))
        .args(["--endpoint", "https://10.254.0.1:7999"])
        .args(["--endpoint", "https://10.254.0.1:7071", "--join-token-file"])
        .arg(&wrong_token)
        .output()
        .unwrap();
    assert!(
        bundle.status.success(),
        "{}",
        String::from_utf8_lossy(&bundle.stderr)
    );
    let bundle = String::from_utf8(bundle.stdout).unwrap();
    let mut rogue = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}-n1", lab.name))
        .arg(BIN)
        .args(["agent", "--name", "rogue"])
        .args(["--join-bundle", bundle.trim(), "--state-dir"])
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
    // Replicas: at most three, more than one only on a shared database.
    let fresh = tempfile::tempdir().unwrap();
    let fresh = fresh.path().to_str().unwrap();
    let replicas = |extra: &[&'static str]| {
        let mut args = vec![
            "lab", "up", "--nodes", "1", "--name", "reps", "--dir", fresh,
        ];
        args.extend_from_slice(extra);
        args
    };
    fails_naming(&replicas(&["--controllers", "2"]), "--controllers");
    fails_naming(&replicas(&["--controllers", "4"]), "--controllers");
    fails_naming(&replicas(&["--store", "mysql://db/x"]), "--store");
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

fn agent_log(lab: &LabGuard, agent: &str) -> String {
    std::fs::read_to_string(lab.dir().join("logs").join(format!("{agent}.log"))).unwrap_or_default()
}

/// The longest `retry_in_ms` of the "controller unreachable" lines in `log`.
fn longest_retry_ms(log: &str) -> u64 {
    log.lines()
        .filter(|line| line.contains("controller unreachable"))
        .filter_map(|line| line.split("retry_in_ms=").nth(1))
        .filter_map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
        })
        .max()
        .unwrap_or(0)
}
