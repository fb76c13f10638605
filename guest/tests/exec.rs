//! `vm exec` / `vm cp` sessions between the real `measurelab-guest-agent`
//! process and the node agent's `GuestChannels` over a unix socket: exit
//! codes, 10 MiB of stdout under flow control, stdin through `cat`, copies
//! of 20 MiB both ways checked by SHA-256, a copy that does not add up
//! leaving nothing behind, a guest that lacks the feature refused, and
//! `tty` commands on a controlling terminal (^C as SIGINT, window size).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use common::*;
use measurelab_agent::guest_channel::{
    channel_socket_path, ExecSession, GuestChannelError, GuestChannels,
};
use measurelab_api::exec::{
    frame_cost, ExecExit, ExecFrame, ExecOpen, ExecStream, TerminalSize, EXEC_FRAME_BYTES,
    EXEC_MIN_FRAME_COST, EXEC_WINDOW_BYTES,
};
use measurelab_api::guest::GuestMessage;
use sha2::Digest as _;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

struct Guest {
    _dir: tempfile::TempDir,
    work: std::path::PathBuf,
    channels: GuestChannels,
    vm_id: Uuid,
    _agent: AgentProcess,
}

async fn start_guest() -> Guest {
    let dir = tempfile::tempdir().unwrap();
    let vm_id = Uuid::new_v4();
    let socket = channel_socket_path(dir.path(), vm_id);
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let channels = GuestChannels::new();
    let mut inbound = channels.open_unix(vm_id, &socket).unwrap();
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let child = Command::new(AGENT_BIN)
        .args(["--local-api", "127.0.0.1:0", "--heartbeat-seconds", "0.3"])
        .arg("--cmdline")
        .arg("/dev/null")
        .arg("--programs-dir")
        .arg(dir.path().join("programs"))
        .env("MEASURELAB_VM_ID", vm_id.to_string())
        .env("MEASURELAB_CHANNEL", &socket)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn measurelab-guest-agent");
    expect(&mut inbound, WAIT, "hello", |m| {
        matches!(m, GuestMessage::Hello { .. }).then_some(())
    })
    .await;
    // Keep draining the inbound queue so heartbeats never block the reader.
    tokio::spawn(async move { while inbound.recv().await.is_some() {} });
    Guest {
        _dir: dir,
        work,
        channels,
        vm_id,
        _agent: AgentProcess(child),
    }
}

/// Output and exit of a session, with stdin fed within the guest's window
/// and every output byte credited back, as the CLI does.
struct Outcome {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exit: ExecExit,
    /// Most output bytes received and not yet credited back at any moment.
    max_uncredited: u64,
}

async fn drive(session: &mut ExecSession, stdin: &[u8]) -> Outcome {
    let mut outcome = Outcome {
        stdout: Vec::new(),
        stderr: Vec::new(),
        exit: ExecExit::default(),
        max_uncredited: 0,
    };
    let (mut offset, mut sent, mut acked, mut eof_sent) = (0usize, 0u64, 0u64, false);
    loop {
        while offset < stdin.len() && EXEC_WINDOW_BYTES - (sent - acked) >= EXEC_MIN_FRAME_COST {
            let room = (EXEC_WINDOW_BYTES - (sent - acked)) as usize;
            let end = stdin.len().min(offset + EXEC_FRAME_BYTES.min(room));
            let data = base64::engine::general_purpose::STANDARD.encode(&stdin[offset..end]);
            session.send(ExecFrame::Stdin { data }).await.unwrap();
            sent += frame_cost((end - offset) as u64);
            offset = end;
        }
        if offset == stdin.len() && !eof_sent {
            session.send(ExecFrame::StdinEof).await.unwrap();
            eof_sent = true;
        }
        let frame = tokio::time::timeout(WAIT, session.recv())
            .await
            .expect("no frame from the guest in time")
            .expect("session ended without an exit frame");
        match frame {
            ExecFrame::Output { stream, data } => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .unwrap();
                outcome.max_uncredited = outcome.max_uncredited.max(bytes.len() as u64);
                match stream {
                    ExecStream::Stdout => outcome.stdout.extend_from_slice(&bytes),
                    ExecStream::Stderr => outcome.stderr.extend_from_slice(&bytes),
                }
                session
                    .send(ExecFrame::Credit {
                        bytes: frame_cost(bytes.len() as u64),
                    })
                    .await
                    .unwrap();
            }
            ExecFrame::Credit { bytes } => acked += bytes,
            ExecFrame::Exit { exit } => {
                outcome.exit = exit;
                return outcome;
            }
            other => panic!("unexpected frame from the guest: {other:?}"),
        }
    }
}

async fn exec(guest: &Guest, argv: &[&str], stdin: &[u8]) -> Outcome {
    let open = ExecOpen::Command {
        argv: argv.iter().map(|a| a.to_string()).collect(),
        tty: false,
        size: None,
    };
    let mut session = guest
        .channels
        .open_exec(guest.vm_id, &Uuid::new_v4().to_string(), open)
        .await
        .unwrap();
    drive(&mut session, stdin).await
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_streams_exit_codes_and_large_output() {
    let guest = start_guest().await;

    let ok = exec(&guest, &["true"], b"").await;
    assert_eq!((ok.exit.code, ok.exit.error), (Some(0), None));
    let three = exec(&guest, &["sh", "-c", "echo out; echo err >&2; exit 3"], b"").await;
    assert_eq!(three.exit.code, Some(3), "{:?}", three.exit);
    assert_eq!(three.stdout, b"out\n");
    assert_eq!(three.stderr, b"err\n");

    // 10 MiB of stdout, counted and hashed on the guest side by `head`.
    let big = exec(
        &guest,
        &["sh", "-c", "head -c 10485760 /dev/zero | tr '\\0' 'x'"],
        b"",
    )
    .await;
    assert_eq!(big.exit.code, Some(0), "{:?}", big.exit);
    assert_eq!(big.stdout.len(), 10 * 1024 * 1024);
    assert!(big.stdout.iter().all(|b| *b == b'x'));
    assert!(big.max_uncredited <= EXEC_FRAME_BYTES as u64);

    // stdin through cat, larger than one window so credits must flow back.
    let input = pattern(3 * EXEC_WINDOW_BYTES as usize + 17, 5);
    let cat = exec(&guest, &["cat"], &input).await;
    assert_eq!(cat.exit.code, Some(0), "{:?}", cat.exit);
    assert!(cat.stdout == input, "cat returned other bytes");

    // A command that cannot start is an error, not a hang.
    let missing = exec(&guest, &["/nonexistent/cmd"], b"").await;
    assert!(
        missing
            .exit
            .error
            .as_deref()
            .is_some_and(|e| e.contains("cannot start")),
        "{:?}",
        missing.exit
    );
    assert_eq!(missing.exit.status(), 255);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_20_mib_both_ways_with_checksums() {
    let guest = start_guest().await;
    let content = pattern(20 * 1024 * 1024, 9);
    let sha = hex::encode(sha2::Sha256::digest(&content));
    let target = guest.work.join("upload.bin");

    let mut put = guest
        .channels
        .open_exec(
            guest.vm_id,
            "put-1",
            ExecOpen::Put {
                path: target.display().to_string(),
                size: content.len() as u64,
                sha256: sha.clone(),
            },
        )
        .await
        .unwrap();
    let put = drive(&mut put, &content).await;
    assert_eq!(put.exit.code, Some(0), "{:?}", put.exit);
    assert_eq!(put.exit.sha256.as_deref(), Some(sha.as_str()));
    let on_disk = std::fs::read(&target).unwrap();
    assert!(on_disk == content, "the guest wrote other bytes");

    let mut get = guest
        .channels
        .open_exec(
            guest.vm_id,
            "get-1",
            ExecOpen::Get {
                path: target.display().to_string(),
                max_bytes: 64 * 1024 * 1024,
            },
        )
        .await
        .unwrap();
    let got = drive(&mut get, b"").await;
    assert_eq!(got.exit.code, Some(0), "{:?}", got.exit);
    assert_eq!(got.exit.size, Some(content.len() as u64));
    assert_eq!(
        got.exit.sha256.as_deref(),
        Some(hex::encode(sha2::Sha256::digest(&got.stdout)).as_str())
    );
    assert!(got.stdout == content, "downloaded bytes differ");

    // Too large for the caller's limit: refused before any data moves.
    let mut small = guest
        .channels
        .open_exec(
            guest.vm_id,
            "get-2",
            ExecOpen::Get {
                path: target.display().to_string(),
                max_bytes: 1024,
            },
        )
        .await
        .unwrap();
    let refused = drive(&mut small, b"").await;
    assert!(refused.stdout.is_empty());
    assert!(
        refused
            .exit
            .error
            .as_deref()
            .is_some_and(|e| e.contains("more than the limit")),
        "{:?}",
        refused.exit
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_does_not_add_up_leaves_nothing_behind() {
    let guest = start_guest().await;
    let target = guest.work.join("bad.bin");
    std::fs::write(&target, b"old content").unwrap();
    let content = pattern(100_000, 1);
    let mut put = guest
        .channels
        .open_exec(
            guest.vm_id,
            "put-bad",
            ExecOpen::Put {
                path: target.display().to_string(),
                size: content.len() as u64,
                // The digest of something else.
                sha256: hex::encode(sha2::Sha256::digest(b"other")),
            },
        )
        .await
        .unwrap();
    let outcome = drive(&mut put, &content).await;
    assert!(
        outcome
            .exit
            .error
            .as_deref()
            .is_some_and(|e| e.contains("sha256 mismatch")),
        "{:?}",
        outcome.exit
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"old content");
    let leftovers: Vec<_> = std::fs::read_dir(&guest.work)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("bad.bin")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_without_the_feature_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let vm_id = Uuid::new_v4();
    let socket = channel_socket_path(dir.path(), vm_id);
    let channels = GuestChannels::new();
    let _inbound = channels.open_unix(vm_id, &socket).unwrap();
    // An older guest: hello without the exec feature, over a raw socket.
    let mut stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let hello = format!(
        "{{\"type\":\"hello\",\"vm_id\":\"{vm_id}\",\"agent_version\":\"0.0.9\",\"features\":[\"program_chunks\"]}}\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, hello.as_bytes())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !channels.state(vm_id).is_some_and(|s| s.registered) {
        assert!(tokio::time::Instant::now() < deadline, "never registered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let open = ExecOpen::Command {
        argv: vec!["true".into()],
        tty: false,
        size: None,
    };
    let err = channels.open_exec(vm_id, "s", open).await.err().unwrap();
    assert!(
        matches!(err, GuestChannelError::ExecUnsupported { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("does not support exec"), "{err}");
}

/// A `tty` session driven step by step, as a person at a terminal would:
/// read until a prompt shows, then type or resize.
struct Terminal {
    session: ExecSession,
    output: String,
}

impl Terminal {
    async fn open(guest: &Guest, argv: &[&str], size: Option<TerminalSize>) -> Terminal {
        let open = ExecOpen::Command {
            argv: argv.iter().map(|a| a.to_string()).collect(),
            tty: true,
            size,
        };
        let session = guest
            .channels
            .open_exec(guest.vm_id, &Uuid::new_v4().to_string(), open)
            .await
            .unwrap();
        Terminal {
            session,
            output: String::new(),
        }
    }

    async fn send(&mut self, frame: ExecFrame) {
        self.session.send(frame).await.unwrap();
    }

    async fn type_bytes(&mut self, bytes: &[u8]) {
        let data = base64::engine::general_purpose::STANDARD.encode(bytes);
        self.send(ExecFrame::Stdin { data }).await;
    }

    /// The next frame; output is collected and credited back.
    async fn next(&mut self) -> Option<ExecExit> {
        let frame = tokio::time::timeout(WAIT, self.session.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no frame from the guest in time; output so far {:?}",
                    self.output
                )
            })
            .expect("session ended without an exit frame");
        match frame {
            ExecFrame::Output { stream, data } => {
                assert_eq!(stream, ExecStream::Stdout, "a terminal has one stream");
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .unwrap();
                self.output.push_str(&String::from_utf8_lossy(&bytes));
                self.send(ExecFrame::Credit {
                    bytes: frame_cost(bytes.len() as u64),
                })
                .await;
                None
            }
            ExecFrame::Credit { .. } => None,
            ExecFrame::Exit { exit } => Some(exit),
            other => panic!("unexpected frame from the guest: {other:?}"),
        }
    }

    async fn until(&mut self, want: &str) {
        while !self.output.contains(want) {
            if let Some(exit) = self.next().await {
                panic!(
                    "exited {exit:?} before printing {want:?}; output {:?}",
                    self.output
                );
            }
        }
    }

    async fn exit(&mut self) -> ExecExit {
        loop {
            if let Some(exit) = self.next().await {
                return exit;
            }
        }
    }
}

async fn terminal_run(guest: &Guest, argv: &[&str]) -> (ExecExit, String) {
    let mut terminal = Terminal::open(guest, argv, None).await;
    let exit = terminal.exit().await;
    (exit, terminal.output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_commands_run_on_their_controlling_terminal() {
    let guest = start_guest().await;

    // `tty` names the terminal on stdin; `ps` names the controlling
    // terminal of the shell, which is "?" for a command without one.
    let (exit, output) =
        terminal_run(&guest, &["sh", "-c", "tty; test -t 0 && ps -o tty= -p $$"]).await;
    assert_eq!(exit.code, Some(0), "{exit:?} {output:?}");
    let lines: Vec<&str> = output.lines().map(str::trim).collect();
    assert_eq!(lines.len(), 2, "{output:?}");
    let pts = lines[0]
        .strip_prefix("/dev/pts/")
        .unwrap_or_else(|| panic!("tty printed {output:?}"));
    assert!(pts.parse::<u32>().is_ok(), "{output:?}");
    assert_eq!(
        lines[1],
        format!("pts/{pts}"),
        "controlling terminal: {output:?}"
    );

    let (exit, output) = terminal_run(&guest, &["sh", "-c", "exit 7"]).await;
    assert_eq!((exit.code, exit.error), (Some(7), None), "{output:?}");

    // A command that cannot start says so on the terminal, like a shell.
    let (exit, output) = terminal_run(&guest, &["/nonexistent/cmd"]).await;
    assert_eq!(exit.code, Some(127), "{exit:?}");
    assert!(output.contains("cannot start"), "{output:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_on_a_tty_is_sigint_to_the_foreground_job() {
    let guest = start_guest().await;

    // ^C reaches the shell as SIGINT, which its trap turns into exit 7.
    let mut trapped = Terminal::open(
        &guest,
        &[
            "sh",
            "-c",
            "trap 'exit 7' INT; echo ready; while :; do sleep 1; done",
        ],
        None,
    )
    .await;
    trapped.until("ready").await;
    trapped.type_bytes(b"\x03").await;
    let exit = trapped.exit().await;
    assert_eq!(exit.code, Some(7), "{exit:?} {:?}", trapped.output);

    // Untrapped, SIGINT ends the command: 128 + 2 for the caller.
    let mut sleeper =
        Terminal::open(&guest, &["sh", "-c", "echo ready; exec sleep 60"], None).await;
    sleeper.until("ready").await;
    sleeper.type_bytes(b"\x03").await;
    let exit = sleeper.exit().await;
    assert_eq!(exit.signal, Some(2), "{exit:?} {:?}", sleeper.output);
    assert_eq!(exit.status(), 130);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tty_has_the_callers_size_and_follows_resizes() {
    let guest = start_guest().await;
    let mut terminal = Terminal::open(
        &guest,
        &[
            "sh",
            "-c",
            "stty size; trap 'stty size; exit 0' WINCH; echo ready; while :; do sleep 1; done",
        ],
        Some(TerminalSize {
            rows: 33,
            cols: 101,
        }),
    )
    .await;
    terminal.until("ready").await;
    assert!(
        terminal.output.starts_with("33 101"),
        "{:?}",
        terminal.output
    );
    terminal
        .send(ExecFrame::Resize {
            rows: 40,
            cols: 120,
        })
        .await;
    let exit = terminal.exit().await;
    assert_eq!(exit.code, Some(0), "{exit:?} {:?}", terminal.output);
    assert!(terminal.output.contains("40 120"), "{:?}", terminal.output);
}

/// `stat` (program output files) describes a file in the guest without
/// sending it: size and digest as the file has them, mtime, and exit code
/// STAT_ABSENT_CODE for a file not written yet; a digest only up to the
/// caller's limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_describes_files_without_sending_them() {
    let guest = start_guest().await;
    let content = pattern(3 * 1024 * 1024 + 7, 5);
    let target = guest.work.join("capture.pcap");
    std::fs::write(&target, &content).unwrap();
    let stat = |id: &'static str, path: std::path::PathBuf, max_hash_bytes: u64| {
        let channels = &guest.channels;
        let vm_id = guest.vm_id;
        async move {
            let mut session = channels
                .open_exec(
                    vm_id,
                    id,
                    ExecOpen::Stat {
                        path: path.display().to_string(),
                        max_hash_bytes,
                    },
                )
                .await
                .unwrap();
            drive(&mut session, b"").await
        }
    };

    let found = stat("stat-1", target.clone(), 64 * 1024 * 1024).await;
    assert!(found.stdout.is_empty(), "stat sent the file");
    assert_eq!(found.exit.code, Some(0), "{:?}", found.exit);
    assert_eq!(found.exit.size, Some(content.len() as u64));
    assert_eq!(
        found.exit.sha256,
        Some(hex::encode(sha2::Sha256::digest(&content)))
    );
    let mtime = std::fs::metadata(&target)
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert_eq!(found.exit.mtime_unix, Some(mtime));

    let unhashed = stat("stat-2", target.clone(), 1024).await;
    assert_eq!(unhashed.exit.size, Some(content.len() as u64));
    assert_eq!(unhashed.exit.sha256, None);

    let absent = stat("stat-3", guest.work.join("not-yet.txt"), 1024).await;
    assert_eq!(
        absent.exit.code,
        Some(measurelab_api::exec::STAT_ABSENT_CODE),
        "{:?}",
        absent.exit
    );
    assert_eq!(absent.exit.error, None);

    let directory = stat("stat-4", guest.work.clone(), 1024).await;
    assert!(
        directory
            .exit
            .error
            .as_deref()
            .is_some_and(|e| e.contains("not a regular file")),
        "{:?}",
        directory.exit
    );
}
