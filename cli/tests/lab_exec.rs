//! `measurelab vm exec` and `vm cp` through the whole product: `lab up`
//! starts the controller (TLS) and an agent as real processes, a tenant
//! creates a namespace VM, and the real CLI binary runs commands and copies
//! files over CLI → controller (upgraded HTTPS) → agent (ExecChannel gRPC,
//! mTLS) → guest channel → guest agent. Needs root and the packages of
//! scripts/packages.txt; run under the heavy-test lock.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{ensure_guest_agent, sha256_hex, tenant_token, LabGuard, BIN};
use measurelab_api::client::Client;

const WAIT: Duration = Duration::from_secs(180);

struct Cli {
    endpoint: String,
    ca: Option<String>,
}

impl Cli {
    fn run(&self, token: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.arg("vm")
            .args(args)
            .env("MEASURELAB_ENDPOINT", &self.endpoint)
            .env("MEASURELAB_TOKEN", token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match &self.ca {
            Some(ca) => cmd.env("MEASURELAB_CA_CERT", ca),
            None => cmd.env_remove("MEASURELAB_CA_CERT"),
        };
        let mut child = cmd.spawn().expect("run measurelab vm");
        let mut input = child.stdin.take().expect("stdin");
        let data = stdin.unwrap_or_default().to_vec();
        let feeder = std::thread::spawn(move || {
            let _ = input.write_all(&data);
        });
        let output = child.wait_with_output().expect("wait for measurelab vm");
        let _ = feeder.join();
        output
    }
}

/// The CLI's exit code is `code`; otherwise panic with what it printed
/// and the lab's logs.
fn assert_code(lab: &LabGuard, what: &str, out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: stderr {}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        lab.log_tail("controller", 30),
        lab.log_tail("n1-agent", 40)
    );
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

#[test]
fn exec_and_cp_through_the_whole_product() {
    ensure_guest_agent();
    let lab = LabGuard::new('x');
    lab.up(1, 2);
    let (endpoint, _) = lab.env();
    let ca_path = lab.dir().join("exec-test-ca.pem");
    let ca = lab.ca_pem().map(|pem| {
        std::fs::write(&ca_path, pem).unwrap();
        ca_path.display().to_string()
    });
    let (admin, runtime) = lab.client();
    let mine = tenant_token(&admin, &runtime, "exec-a");
    let theirs = tenant_token(&admin, &runtime, "exec-b");

    let client = Client::new(&endpoint, &mine, lab.ca_pem().as_deref()).unwrap();
    common::platform_with_ready_vm(&lab, &runtime, &client, ("xp", "box"), WAIT);

    let cli = Cli { endpoint, ca };
    // Exit codes come back as the CLI's own.
    let ok = cli.run(&mine, &["exec", "xp/box", "--", "true"], None);
    assert_code(&lab, "ok", &ok, 0);
    let three = cli.run(
        &mine,
        &[
            "exec",
            "xp/box",
            "--",
            "sh",
            "-c",
            "echo to-err >&2; exit 3",
        ],
        None,
    );
    assert_code(&lab, "exit 3", &three, 3);
    assert_eq!(String::from_utf8_lossy(&three.stderr), "to-err\n");

    // -t: the guest's pty is the command's controlling terminal (ps names
    // it, where a command without one shows "?"), and its exit code comes
    // back through the whole product.
    let tty = cli.run(
        &mine,
        &[
            "exec",
            "-t",
            "xp/box",
            "--",
            "sh",
            "-c",
            "tty; test -t 0 && ps -o tty= -p $$; exit 7",
        ],
        None,
    );
    assert_code(&lab, "tty", &tty, 7);
    let shown = String::from_utf8_lossy(&tty.stdout);
    let lines: Vec<&str> = shown.lines().map(str::trim).collect();
    let pts = lines
        .first()
        .and_then(|l| l.strip_prefix("/dev/pts/"))
        .unwrap_or_else(|| panic!("tty printed {shown:?}"));
    assert_eq!(
        lines.get(1),
        Some(&format!("pts/{pts}").as_str()),
        "{shown:?}"
    );

    // 10 MiB of stdout, all of it, in order.
    let big = cli.run(
        &mine,
        &[
            "exec",
            "xp/box",
            "--",
            "head",
            "-c",
            "10485760",
            "/dev/urandom",
        ],
        None,
    );
    assert_code(&lab, "big", &big, 0);
    assert_eq!(big.stdout.len(), 10 * 1024 * 1024);

    // stdin through cat, several windows' worth.
    let input = pattern(3 * 1024 * 1024 + 5, 3);
    let cat = cli.run(&mine, &["exec", "-i", "xp/box", "--", "cat"], Some(&input));
    assert_code(&lab, "cat", &cat, 0);
    let first_difference = cat.stdout.iter().zip(&input).position(|(a, b)| a != b);
    assert!(
        cat.stdout == input,
        "cat returned other bytes: {} of {} bytes, first difference at {first_difference:?}",
        cat.stdout.len(),
        input.len()
    );

    // Another tenant's VM does not exist for it, and nothing ran.
    let marker = format!("/tmp/exec-b-was-here-{}", std::process::id());
    let refused = cli.run(&theirs, &["exec", "xp/box", "--", "touch", &marker], None);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(255), "{stderr}");
    assert!(stderr.contains("404"), "{stderr}");
    let probe = cli.run(
        &mine,
        &["exec", "xp/box", "--", "test", "-e", &marker],
        None,
    );
    assert_code(
        &lab,
        "the other tenant's command must not have run",
        &probe,
        1,
    );

    // vm cp of 20 MiB both ways.
    let work = tempfile::tempdir().unwrap();
    let content = pattern(20 * 1024 * 1024, 7);
    let up = work.path().join("up.bin");
    std::fs::write(&up, &content).unwrap();
    let remote = format!("xp/box:/tmp/exec-cp-{}.bin", std::process::id());
    let put = cli.run(&mine, &["cp", up.to_str().unwrap(), &remote], None);
    assert_code(&lab, "cp up", &put, 0);
    let down = work.path().join("down.bin");
    let get = cli.run(&mine, &["cp", &remote, down.to_str().unwrap()], None);
    assert_code(&lab, "cp down", &get, 0);
    assert_eq!(
        sha256_hex(&std::fs::read(&down).unwrap()),
        sha256_hex(&content)
    );

    // A capture-sized file that a program wrote in the guest, downloaded
    // intact: its digest as the guest computes it matches ours.
    let pcap = format!("/tmp/exec-capture-{}.pcap", std::process::id());
    let write = cli.run(
        &mine,
        &[
            "exec",
            "xp/box",
            "--",
            "sh",
            "-c",
            &format!("head -c 6000000 /dev/urandom > {pcap} && sha256sum {pcap}"),
        ],
        None,
    );
    assert_code(&lab, "write", &write, 0);
    let guest_sum = String::from_utf8_lossy(&write.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let local = work.path().join("capture.pcap");
    let fetched = cli.run(
        &mine,
        &["cp", &format!("xp/box:{pcap}"), local.to_str().unwrap()],
        None,
    );
    assert_code(&lab, "cp capture", &fetched, 0);
    let bytes = std::fs::read(&local).unwrap();
    assert_eq!(bytes.len(), 6_000_000);
    assert_eq!(sha256_hex(&bytes), guest_sum);

    // A limit below the file's size refuses the copy and leaves nothing.
    let small = work.path().join("small.pcap");
    let limited = cli.run(
        &mine,
        &[
            "cp",
            "--max-bytes",
            "1000",
            &format!("xp/box:{pcap}"),
            small.to_str().unwrap(),
        ],
        None,
    );
    assert!(!limited.status.success());
    assert!(
        String::from_utf8_lossy(&limited.stderr).contains("more than the limit"),
        "{}",
        String::from_utf8_lossy(&limited.stderr)
    );
    let leftovers: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("small"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
