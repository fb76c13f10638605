//! The real `measurelab-guest-agent` process against the node agent's
//! `GuestChannels` over a unix socket (the namespace-guest transport):
//! hello, heartbeat, shipped logs, a shell-script program with its exit code
//! and output, a bad checksum, a program in chunks and chunks that do not
//! add up, stop, the local platform API relaying
//! `POST /results` and `GET /tasks`, and reconnecting after the node agent's
//! side is dropped and recreated. No root needed.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use measurelab_agent::guest_channel::{channel_socket_path, GuestChannels, ProgramSend};
use measurelab_api::guest::{
    AgentMessage, GuestMessage, ProgramRunState, MAX_AGENT_LINE_BYTES, PROGRAM_CHUNK_BYTES,
};
use sha2::Digest as _;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

/// Starts the guest agent; its log (stderr) goes to `log`.
fn spawn_agent(
    vm_id: Uuid,
    socket: &std::path::Path,
    programs: &std::path::Path,
    log: &std::path::Path,
) -> AgentProcess {
    let log = std::fs::File::create(log).expect("create the guest agent's log");
    let child = Command::new(AGENT_BIN)
        .args(["--local-api", "127.0.0.1:0", "--heartbeat-seconds", "0.3"])
        .arg("--cmdline")
        .arg("/dev/null")
        .arg("--programs-dir")
        .arg(programs)
        .env("MEASURELAB_VM_ID", vm_id.to_string())
        .env("MEASURELAB_CHANNEL", socket)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn measurelab-guest-agent");
    AgentProcess(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_agent_over_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let vm_id = Uuid::new_v4();
    let socket = channel_socket_path(dir.path(), vm_id);
    let programs = dir.path().join("programs");

    let channels = GuestChannels::new();
    let mut inbound = channels.open_unix(vm_id, &socket).unwrap();
    let agent_log = dir.path().join("agent.log");
    let _agent = spawn_agent(vm_id, &socket, &programs, &agent_log);

    // hello with our vm id, then heartbeats with real usage.
    let version = expect(&mut inbound, WAIT, "hello", |m| match m {
        GuestMessage::Hello {
            vm_id: id,
            agent_version,
            ..
        } if *id == vm_id.to_string() => Some(agent_version.clone()),
        _ => None,
    })
    .await;
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    let usage = expect(&mut inbound, WAIT, "heartbeat", |m| match m {
        GuestMessage::Heartbeat { usage } => Some(usage.clone()),
        _ => None,
    })
    .await;
    assert!(
        usage.cpu_count >= 1 && usage.memory_total_bytes > 0,
        "{usage:?}"
    );
    let state = channels.state(vm_id).unwrap();
    assert!(state.connected && state.registered, "{state:?}");
    assert!(state.last_heartbeat.is_some());
    assert!(state.program_chunks(), "{state:?}");

    // The agent ships its own log, which names the local API address.
    let local_api = expect(
        &mut inbound,
        WAIT,
        "log with the local API address",
        local_api_from_log,
    )
    .await;

    // A shell-script program: args, env, exit code, both output tails.
    let script =
        b"#!/bin/sh\necho \"hello $1 $GREETING from $MEASURELAB_VM_ID\"\necho oops >&2\nexit 7\n";
    channels
        .send(
            vm_id,
            &run_message(
                "dep-1",
                "probe.sh",
                script,
                &["world"],
                &[("GREETING", "hi")],
            ),
        )
        .unwrap();
    expect(
        &mut inbound,
        WAIT,
        "dep-1 running",
        status_of("dep-1", ProgramRunState::Running),
    )
    .await;
    let (_, exit_code, stdout, stderr) = expect(
        &mut inbound,
        WAIT,
        "dep-1 exited",
        status_of("dep-1", ProgramRunState::Exited),
    )
    .await;
    assert_eq!(exit_code, Some(7));
    assert_eq!(stdout, format!("hello world hi from {vm_id}\n"));
    assert_eq!(stderr, "oops\n");
    let written = programs.join("dep-1").join("probe.sh");
    assert_eq!(std::fs::read(&written).unwrap(), script);

    // A repeated run only re-reports; it does not run the program again.
    channels
        .send(
            vm_id,
            &run_message(
                "dep-1",
                "probe.sh",
                script,
                &["world"],
                &[("GREETING", "hi")],
            ),
        )
        .unwrap();
    let (_, _, stdout_again, _) = expect(
        &mut inbound,
        WAIT,
        "dep-1 re-reported",
        status_of("dep-1", ProgramRunState::Exited),
    )
    .await;
    assert_eq!(stdout_again, stdout);

    // The same deployment with another env (a rotated control key) or args
    // is a new request: the guest runs it again with them.
    channels
        .send(
            vm_id,
            &run_message(
                "dep-1",
                "probe.sh",
                script,
                &["world"],
                &[("GREETING", "rotated")],
            ),
        )
        .unwrap();
    let (_, exit_code, stdout_changed, _) = expect(
        &mut inbound,
        WAIT,
        "dep-1 rerun with the new env",
        |m| match status_of("dep-1", ProgramRunState::Exited)(m) {
            Some(found) if found.2.contains("rotated") => Some(found),
            _ => None,
        },
    )
    .await;
    assert_eq!(exit_code, Some(7));
    assert_eq!(
        stdout_changed,
        format!("hello world rotated from {vm_id}\n")
    );

    // A running program whose env changes is stopped and started again with
    // the new env, once (its first process is gone before the second starts).
    let long = b"#!/bin/sh\necho \"start $KEY\" >> starts\nexec sleep 600\n";
    channels
        .send(
            vm_id,
            &run_message("dep-long", "long.sh", long, &[], &[("KEY", "old")]),
        )
        .unwrap();
    expect(
        &mut inbound,
        WAIT,
        "dep-long running",
        status_of("dep-long", ProgramRunState::Running),
    )
    .await;
    // Running is reported once the process is spawned, which can be before
    // its shell wrote the first line: a restart then would leave no trace
    // of the first run. Wait for the line, so the check below sees both.
    let starts = programs.join("dep-long").join("starts");
    wait_for_text(&starts, "start old\n").await;
    channels
        .send(
            vm_id,
            &run_message("dep-long", "long.sh", long, &[], &[("KEY", "new")]),
        )
        .unwrap();
    expect(
        &mut inbound,
        WAIT,
        "the old dep-long exited",
        status_of("dep-long", ProgramRunState::Exited),
    )
    .await;
    expect(
        &mut inbound,
        WAIT,
        "dep-long running again",
        status_of("dep-long", ProgramRunState::Running),
    )
    .await;
    wait_for_text(&starts, "start old\nstart new\n").await;
    channels
        .send(
            vm_id,
            &AgentMessage::Stop {
                deployment_id: "dep-long".into(),
            },
        )
        .unwrap();
    expect(
        &mut inbound,
        WAIT,
        "dep-long stopped",
        status_of("dep-long", ProgramRunState::Exited),
    )
    .await;

    // Wrong checksum: failed, with the reason, and nothing executed.
    let mut bad = run_message("dep-bad", "x.sh", b"#!/bin/sh\ntouch ran\n", &[], &[]);
    if let AgentMessage::Run { sha256, .. } = &mut bad {
        *sha256 = "0".repeat(64);
    }
    channels.send(vm_id, &bad).unwrap();
    let (_, exit_code, _, reason) = expect(
        &mut inbound,
        WAIT,
        "dep-bad failed",
        status_of("dep-bad", ProgramRunState::Failed),
    )
    .await;
    assert_eq!(exit_code, None);
    assert!(reason.contains("sha256 mismatch"), "{reason}");
    assert!(!programs.join("dep-bad").join("ran").exists());

    // A program larger than a guest's line bound goes in chunks (the node
    // agent's writer splits it) and runs whole.
    let mut large = b"#!/bin/sh\necho large $(wc -c < \"$0\")\nexit 0\n".to_vec();
    large.extend((0..5 * PROGRAM_CHUNK_BYTES + 17).map(|i| b'a' + (i % 26) as u8));
    assert!(large.len() > MAX_AGENT_LINE_BYTES);
    channels
        .send_program(
            vm_id,
            ProgramSend {
                deployment_id: "dep-large".into(),
                program_name: "large.sh".into(),
                content: std::sync::Arc::new(large.clone()),
                args: vec![],
                env: Default::default(),
            },
        )
        .unwrap();
    let (_, exit_code, stdout, stderr) = expect(
        &mut inbound,
        WAIT,
        "dep-large exited",
        status_of("dep-large", ProgramRunState::Exited),
    )
    .await;
    assert_eq!(exit_code, Some(0), "{stderr}");
    assert_eq!(stdout, format!("large {}\n", large.len()));
    assert_eq!(
        std::fs::read(programs.join("dep-large").join("large.sh")).unwrap(),
        large
    );

    // Chunks that do not add up (one byte changed on the way, a chunk out
    // of order): a transfer failure naming why, nothing written or run, and
    // the deployment forgotten, so the same deployment sent again runs.
    let content = b"#!/bin/sh\ntouch ran\n".to_vec();
    let begin = AgentMessage::ProgramBegin {
        deployment_id: "dep-torn".into(),
        program_name: "t.sh".into(),
        sha256: hex::encode(sha2::Sha256::digest(&content)),
        size: content.len() as u64,
        args: vec![],
        env: Default::default(),
    };
    let chunk = |offset: usize, bytes: &[u8]| AgentMessage::ProgramChunk {
        deployment_id: "dep-torn".into(),
        offset: offset as u64,
        data_base64: base64::engine::general_purpose::STANDARD.encode(bytes),
    };
    let mut torn = content.clone();
    torn[12] ^= 1;
    channels.send(vm_id, &begin).unwrap();
    channels.send(vm_id, &chunk(0, &torn)).unwrap();
    let transfer_failed = |m: &GuestMessage| match m {
        GuestMessage::ProgramTransferFailed {
            deployment_id,
            reason,
        } if deployment_id == "dep-torn" => Some(reason.clone()),
        _ => None,
    };
    let reason = expect(
        &mut inbound,
        WAIT,
        "dep-torn transfer failed",
        transfer_failed,
    )
    .await;
    assert!(reason.contains("sha256 mismatch"), "{reason}");
    channels.send(vm_id, &begin).unwrap();
    channels.send(vm_id, &chunk(5, &content[5..])).unwrap();
    let reason = expect(&mut inbound, WAIT, "dep-torn out of order", transfer_failed).await;
    assert!(reason.contains("chunk at offset 5, expected 0"), "{reason}");
    assert!(!programs.join("dep-torn").exists());
    channels.send(vm_id, &begin).unwrap();
    channels.send(vm_id, &chunk(0, &content[..5])).unwrap();
    channels.send(vm_id, &chunk(5, &content[5..])).unwrap();
    let (_, exit_code, _, stderr) = expect(
        &mut inbound,
        WAIT,
        "dep-torn sent again exited",
        status_of("dep-torn", ProgramRunState::Exited),
    )
    .await;
    assert_eq!(exit_code, Some(0), "{stderr}");
    assert!(programs.join("dep-torn").join("ran").exists());

    // stop kills a running program (and its process group).
    channels
        .send(
            vm_id,
            &run_message(
                "dep-long",
                "long.sh",
                b"#!/bin/sh\necho started\nsleep 600\n",
                &[],
                &[],
            ),
        )
        .unwrap();
    expect(
        &mut inbound,
        WAIT,
        "dep-long running with its first output",
        |m| {
            // Running reports repeat while the output grows (every heartbeat).
            status_of("dep-long", ProgramRunState::Running)(m)
                .filter(|(_, _, out, _)| out == "started\n")
        },
    )
    .await;
    channels
        .send(
            vm_id,
            &AgentMessage::Stop {
                deployment_id: "dep-long".into(),
            },
        )
        .unwrap();
    let (_, exit_code, stdout, stderr) = expect(
        &mut inbound,
        WAIT,
        "dep-long exited",
        status_of("dep-long", ProgramRunState::Exited),
    )
    .await;
    assert_eq!(exit_code, None, "killed by a signal");
    assert_eq!(stdout, "started\n");
    assert!(stderr.contains("terminated by signal 15"), "{stderr}");

    // Local API: POST /results arrives as an inbound result message, and is
    // answered only once the node agent says it is durable.
    let post = |body: String| {
        let api = local_api.clone();
        tokio::task::spawn_blocking(move || http(&api, "POST", "/results", Some(&body)))
    };
    let result = |task_id: &str| {
        format!(r#"{{"task_id":"{task_id}","schema":"measurelab.mcast.result/v1","receivers":[]}}"#)
    };
    let mut pending = post(result("task-9"));
    let (task_id, document, request_id) = expect(&mut inbound, WAIT, "result", |m| match m {
        GuestMessage::Result {
            task_id,
            document,
            request_id,
        } => Some((task_id.clone(), document.clone(), request_id.clone())),
        _ => None,
    })
    .await;
    assert_eq!(task_id, "task-9");
    assert_eq!(document["schema"], "measurelab.mcast.result/v1");
    let request_id = request_id.expect("a result post carries a request id");
    // Not durable yet: no answer to the program.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut pending)
            .await
            .is_err(),
        "POST /results answered before the node agent stored the result"
    );
    channels
        .send(
            vm_id,
            &AgentMessage::ResultAck {
                request_id,
                stored: true,
                reason: None,
                rejected: false,
            },
        )
        .unwrap();
    let (code, body) = pending.await.unwrap();
    assert_eq!(code, 202, "{body}");
    // A result the node agent could not store is refused, not acknowledged;
    // one the controller refused for good is a 422 the program should not
    // retry, with the controller's reason.
    for (task_id, reason, rejected, expected_code, says) in [
        (
            "task-9",
            "the node's result spool is full",
            false,
            503,
            ["not_stored", "spool is full"],
        ),
        (
            "task-x",
            "task_id: no task \"task-x\" exists",
            true,
            422,
            ["\"code\":\"rejected\"", "no task"],
        ),
    ] {
        let answer = post(result(task_id));
        let request_id = expect(&mut inbound, WAIT, task_id, |m| match m {
            GuestMessage::Result { request_id, .. } => request_id.clone(),
            _ => None,
        })
        .await;
        channels
            .send(
                vm_id,
                &AgentMessage::ResultAck {
                    request_id,
                    stored: false,
                    reason: Some(reason.into()),
                    rejected,
                },
            )
            .unwrap();
        let (code, body) = answer.await.unwrap();
        assert_eq!(code, expected_code, "{body}");
        assert!(says.iter().all(|said| body.contains(said)), "{body}");
    }
    // ...and a bad body is refused naming the field, without a message.
    let api = local_api.clone();
    let (code, body) =
        tokio::task::spawn_blocking(move || http(&api, "POST", "/results", Some(r#"{"x":1}"#)))
            .await
            .unwrap();
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("\"field\":\"task_id\""), "{body}");

    // GET /tasks: poll_tasks goes out, our tasks answer comes back.
    let api = local_api.clone();
    let poll = tokio::task::spawn_blocking(move || http(&api, "GET", "/tasks", None));
    expect(&mut inbound, WAIT, "poll_tasks", |m| {
        matches!(m, GuestMessage::PollTasks).then_some(())
    })
    .await;
    channels
        .send(
            vm_id,
            &AgentMessage::Tasks {
                tasks: vec![serde_json::json!({"name":"t1","group":"239.1.2.3"})],
            },
        )
        .unwrap();
    let (code, body) = poll.await.unwrap();
    assert_eq!(code, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["tasks"][0]["group"], "239.1.2.3");

    // Node agent restart: drop every channel (socket removed), recreate.
    let logged_before = std::fs::read_to_string(&agent_log).unwrap().len();
    drop(inbound);
    drop(channels);
    assert!(
        !socket.exists(),
        "dropping GuestChannels removes the socket"
    );
    // The node side stays away until the guest agent has noticed and
    // failed to reconnect at least once (it logs each new failure).
    let deadline = Instant::now() + WAIT;
    loop {
        let log = std::fs::read_to_string(&agent_log).unwrap();
        if log[logged_before..].contains("channel not available; retrying") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the guest agent never retried the channel:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t_reopen = Instant::now();
    let channels = GuestChannels::new();
    let mut inbound = channels.open_unix(vm_id, &socket).unwrap();
    expect(&mut inbound, WAIT, "hello after reconnect", |m| {
        matches!(m, GuestMessage::Hello { .. }).then_some(())
    })
    .await;
    println!(
        "guest agent re-registered {:.3} s after the node side came back",
        t_reopen.elapsed().as_secs_f64()
    );
    // The run table survives and is re-reported to the new node agent.
    let (_, exit_code, _, _) = expect(
        &mut inbound,
        WAIT,
        "dep-1 re-reported",
        status_of("dep-1", ProgramRunState::Exited),
    )
    .await;
    assert_eq!(exit_code, Some(7));
    assert!(channels.state(vm_id).unwrap().registered);
    channels.close(vm_id);
}

/// A hand-written node agent on a raw socket: garbage, unknown types and an
/// oversized line are skipped, and the guest agent still answers afterwards.
#[tokio::test]
async fn bad_messages_are_skipped_not_fatal() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("raw.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let vm_id = Uuid::new_v4();
    let mut agent = spawn_agent(
        vm_id,
        &socket,
        &dir.path().join("programs"),
        &dir.path().join("agent.log"),
    );
    let (stream, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .unwrap()
        .unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.contains("\"type\":\"hello\""), "{first}");

    write
        .write_all(b"not json at all\n{\"type\":\"reformat_disk\"}\n{\"type\":\"run\"}\n\xff\xfe\n")
        .await
        .unwrap();
    write
        .write_all(&vec![b'x'; 100 * 1024 * 1024])
        .await
        .unwrap();
    write
        .write_all(b"\n{\"type\":\"hello_request\"}\n")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .expect("no hello after the bad lines")
            .unwrap()
            .expect("guest agent closed the channel");
        if line.contains("\"type\":\"hello\"") {
            break;
        }
    }
    assert!(agent.0.try_wait().unwrap().is_none(), "guest agent exited");
}

/// Wait until `path` holds exactly `expected`, failing after [`WAIT`].
async fn wait_for_text(path: &std::path::Path, expected: &str) {
    let deadline = Instant::now() + WAIT;
    while std::fs::read_to_string(path).unwrap_or_default() != expected {
        assert!(
            Instant::now() < deadline,
            "{} is {:?}, not {expected:?}",
            path.display(),
            std::fs::read_to_string(path)
        );
        // Poll interval only: the condition, not the pause, ends the wait.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
