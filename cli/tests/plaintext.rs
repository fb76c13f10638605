//! Plaintext only on loopback unless `--insecure`: the controller's
//! listeners and the agent's controller URLs. Processes of the built
//! binary; no root needed.

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_measurelab");

/// The output of `command`, which must exit by itself: one still running
/// after a while has accepted its flags, and is stopped.
fn exited(command: &mut Command) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running, so accepted: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn refused(out: &Output, flags: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "accepted: {stderr}");
    for flag in flags {
        assert!(stderr.contains(flag), "does not name {flag}: {stderr}");
    }
    stderr
}

fn controller(data: &std::path::Path, http: &str, grpc: &str) -> Command {
    let mut command = Command::new(BIN);
    command.args(["controller", "--data-dir"]).arg(data).args([
        "--http-listen",
        http,
        "--grpc-listen",
        grpc,
    ]);
    command
}

#[test]
fn a_plaintext_controller_on_a_non_loopback_address_needs_insecure() {
    let data = tempfile::tempdir().unwrap();
    let out = exited(&mut controller(data.path(), "0.0.0.0:0", "127.0.0.1:0"));
    let stderr = refused(&out, &["--http-listen", "--insecure", "--tls"]);
    assert!(stderr.contains("not loopback"), "{stderr}");
    let out = exited(&mut controller(data.path(), "127.0.0.1:0", "0.0.0.0:0"));
    refused(&out, &["--grpc-listen", "--insecure"]);
    // Refused before anything was made in the data dir.
    assert!(!data.path().join("admin.token").exists());

    // With the opt-in it serves, on every address.
    let mut child = controller(data.path(), "0.0.0.0:0", "0.0.0.0:0")
        .arg("--insecure")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let port = std::fs::read_to_string(data.path().join("http.addr"))
            .ok()
            .and_then(|addr| addr.trim().rsplit_once(':').map(|(_, p)| p.to_string()));
        if let Some(port) = port {
            if healthz(&format!("127.0.0.1:{port}")) {
                break;
            }
        }
        if let Some(exit) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
            panic!("controller exited {exit}: {stderr}");
        }
        assert!(Instant::now() < deadline, "controller did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

fn healthz(addr: &str) -> bool {
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /healthz HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut response = String::new();
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_to_string(&mut response).is_ok()
        && response.contains(" 200 ")
}

fn agent(controller: &str, extra: &[&str]) -> Output {
    let state = tempfile::tempdir().unwrap();
    exited(
        Command::new(BIN)
            .args(["agent", "--name", "n1", "--controller", controller])
            .args(["--join-token", "t", "--state-dir"])
            .arg(state.path())
            // A bad value the agent checks after the transport: an agent
            // refused for it got past the transport check.
            .args(["--service-address", "nonsense"])
            .args(extra),
    )
}

#[test]
fn an_agent_refuses_a_plaintext_controller_off_loopback_unless_insecure() {
    for remote in [
        "http://10.1.2.3:7071",
        "http://ctl.example:7071",
        "http://127.0.0.1:7071,http://10.1.2.3:7071",
    ] {
        let stderr = refused(&agent(remote, &[]), &["--controller", "--insecure"]);
        assert!(stderr.contains("not loopback"), "{remote}: {stderr}");
        // Given the opt-in it goes on to the next check.
        let stderr = refused(&agent(remote, &["--insecure"]), &["--service-address"]);
        assert!(!stderr.contains("not loopback"), "{remote}: {stderr}");
    }
    // Loopback and TLS need no opt-in.
    for fine in ["http://127.0.0.1:7071", "https://10.1.2.3:7071"] {
        let stderr = refused(&agent(fine, &[]), &["--service-address"]);
        assert!(!stderr.contains("not loopback"), "{fine}: {stderr}");
    }
}
