//! A namespace guest (network namespace + veth + cgroups) whose guest
//! process is the real guest agent: it registers over `MEASURELAB_CHANNEL`
//! (a unix socket crosses the netns boundary), and a distributed Python
//! program inside the namespace uses the local platform API
//! (`GET /tasks`, `POST /results`) which is relayed over the channel.
//!
//! Needs root (netns, cgroups). Everything is torn down on drop, even when
//! an assertion fails.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use measurelab_agent::guest_channel::{channel_socket_path, GuestChannels};
use measurelab_agent::hypervisor::{
    BootImage, DefineOutcome, GuestSpec, GuestState, Hypervisor, NamespaceConfig,
    NamespaceHypervisor, NicAttach, NicSpec, GUEST_BIN_DIR,
};
use measurelab_api::guest::{AgentMessage, GuestMessage, ProgramRunState};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

/// A program that lives in the guest: reads its tasks and posts a result
/// through the local API, prints its address to prove where it runs.
const PROGRAM: &str = r#"#!/usr/bin/env python3
import json, os, subprocess, urllib.request
api = os.environ["MEASURELAB_PLATFORM_API"]
tasks = json.load(urllib.request.urlopen(api + "/tasks", timeout=20))["tasks"]
doc = {"task_id": tasks[0]["id"], "schema": "measurelab.mcast.result/v1", "from": os.environ["MEASURELAB_VM_ID"]}
req = urllib.request.Request(api + "/results", data=json.dumps(doc).encode(), headers={"Content-Type": "application/json"})
print("post", urllib.request.urlopen(req, timeout=20).status)
print(subprocess.run(["ip", "-o", "-4", "addr", "show", "dev", "eth0"], capture_output=True, text=True).stdout.split()[3])
"#;

struct Fixture {
    dir: tempfile::TempDir,
    config: NamespaceConfig,
    tag: String,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let tag = format!("mlgt-{}", std::process::id());
        // The guest agent runs boxed: bound read-only into the guest, its
        // programs on the guest's own writable layer.
        let agent_in_guest =
            Path::new(GUEST_BIN_DIR).join(Path::new(AGENT_BIN).file_name().unwrap());
        let mut config = NamespaceConfig::new(
            dir.path().join("ns-state"),
            vec![
                agent_in_guest.display().to_string(),
                "--heartbeat-seconds".into(),
                "0.5".into(),
                "--cmdline".into(),
                "/dev/null".into(),
            ],
        );
        config.guest_binaries = vec![PathBuf::from(AGENT_BIN)];
        config.cgroup_parent = tag.clone();
        Fixture { dir, config, tag }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Ok(hv) = NamespaceHypervisor::new(self.config.clone()) {
            for guest in hv.list_owned().unwrap_or_default() {
                let _ = hv.undefine(guest.id);
            }
        }
        for hierarchy in ["unified", "cpu", "memory", ""] {
            let _ =
                std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(hierarchy).join(&self.tag));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_guest_registers_and_runs_a_program() {
    let fx = Fixture::new();
    let hv = std::sync::Arc::new(NamespaceHypervisor::new(fx.config.clone()).unwrap());
    let id = Uuid::new_v4();
    let short = &id.simple().to_string()[..8];
    let socket: PathBuf = channel_socket_path(&fx.dir.path().join("agent"), id);
    let spec = GuestSpec {
        id,
        name: format!("mlgt-{short}"),
        platform_id: None,
        vcpus: 1,
        memory_mib: 128,
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
            mac: "52:54:00:c8:4e:02".into(),
            bridge: "br-int".into(),
            vlan_tag: None,
            port_name: format!("mgt{short}"),
            ipv4_cidr: Some("10.200.78.2/24".into()),
            attach: NicAttach::TapOnly,
        }),
        channel_socket: Some(socket.clone()),
        egress_limit: None,
        max_vcpus: None,
        max_memory_mib: None,
    };

    let channels = GuestChannels::new();
    let mut inbound = channels.open_unix(id, &socket).unwrap();
    let t0 = Instant::now();
    let (hv2, spec2) = (hv.clone(), spec.clone());
    tokio::task::spawn_blocking(move || {
        hv2.define(&spec2)?;
        hv2.start(spec2.id)
    })
    .await
    .unwrap()
    .unwrap();
    let t_started = t0.elapsed();
    expect(
        &mut inbound,
        WAIT,
        "hello from the namespace guest",
        |m| match m {
            GuestMessage::Hello { vm_id, .. } if *vm_id == id.to_string() => Some(()),
            _ => None,
        },
    )
    .await;
    let t_hello = t0.elapsed();
    println!(
        "namespace guest: define+start {:.3} s, hello {:.3} s after define",
        t_started.as_secs_f64(),
        t_hello.as_secs_f64()
    );
    assert_eq!(hv.info(id).unwrap().unwrap().state, GuestState::Running);
    assert!(channels.state(id).unwrap().registered);

    channels
        .send(
            id,
            &run_message("dep-ns", "probe.py", PROGRAM.as_bytes(), &[], &[]),
        )
        .unwrap();
    expect(&mut inbound, WAIT, "poll_tasks from the program", |m| {
        matches!(m, GuestMessage::PollTasks).then_some(())
    })
    .await;
    channels
        .send(
            id,
            &AgentMessage::Tasks {
                tasks: vec![serde_json::json!({"id": "task-ns", "name": "round-robin"})],
            },
        )
        .unwrap();
    let (task_id, document, request_id) = expect(&mut inbound, WAIT, "result", |m| match m {
        GuestMessage::Result {
            task_id,
            document,
            request_id,
        } => Some((task_id.clone(), document.clone(), request_id.clone())),
        _ => None,
    })
    .await;
    // The program's POST is answered once the node agent stored it.
    channels
        .send(
            id,
            &AgentMessage::ResultAck {
                request_id: request_id.expect("a request id"),
                stored: true,
                reason: None,
                rejected: false,
            },
        )
        .unwrap();
    assert_eq!(task_id, "task-ns");
    assert_eq!(document["from"], id.to_string());
    let (_, exit_code, stdout, stderr) = expect(
        &mut inbound,
        WAIT,
        "program exited",
        status_of("dep-ns", ProgramRunState::Exited),
    )
    .await;
    assert_eq!(exit_code, Some(0), "stderr: {stderr}");
    // It ran inside the guest's namespace: eth0 carries the guest address.
    assert_eq!(stdout, "post 202\n10.200.78.2/24\n", "stderr: {stderr}");

    // Moving the channel needs a restart (the path is in the guest's env);
    // after it the guest agent registers on the new socket.
    let moved = fx.dir.path().join("agent2").join("channel.sock");
    let mut respec = spec.clone();
    respec.channel_socket = Some(moved.clone());
    let hv2 = hv.clone();
    let outcome = tokio::task::spawn_blocking(move || hv2.define(&respec))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        outcome,
        DefineOutcome::Updated {
            restart_required: true
        }
    );
    channels.close(id);
    let mut inbound = channels.open_unix(id, &moved).unwrap();
    let hv2 = hv.clone();
    tokio::task::spawn_blocking(move || {
        hv2.stop(id)?;
        hv2.start(id)
    })
    .await
    .unwrap()
    .unwrap();
    expect(&mut inbound, WAIT, "hello on the moved channel", |m| {
        matches!(m, GuestMessage::Hello { .. }).then_some(())
    })
    .await;
    let socket = moved;

    // Undefine kills the guest agent; the channel sees it go.
    let hv2 = hv.clone();
    tokio::task::spawn_blocking(move || hv2.undefine(id))
        .await
        .unwrap()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while channels.state(id).unwrap().connected {
        assert!(
            Instant::now() < deadline,
            "disconnect not seen after undefine"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    channels.close(id);
    assert!(!socket.exists());
}
