//! `measurelab controller` as a process: port 0 via http.addr, SIGTERM as a
//! clean shutdown. Loopback only; no root needed.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_measurelab");

fn get(addr: &str, path: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

#[test]
fn port_zero_is_published_in_http_addr_and_sigterm_stops_cleanly() {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["controller", "--data-dir"])
        .arg(data.path())
        .args([
            "--http-listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
        ])
        .args(["--heartbeat-interval-seconds", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr_file = data.path().join("http.addr");
    let start = Instant::now();
    let addr = loop {
        if let Ok(addr) = std::fs::read_to_string(&addr_file) {
            if get(addr.trim(), "/healthz").is_some_and(|r| r.contains(" 200 ")) {
                break addr.trim().to_string();
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "controller did not answer on the address in http.addr"
        );
        assert!(child.try_wait().unwrap().is_none(), "controller exited");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!addr.ends_with(":0"), "{addr}");
    // The public API wants the admin token the controller created.
    let unauthorized = get(&addr, "/v1/nodes").unwrap();
    assert!(unauthorized.contains(" 401 "), "{unauthorized}");
    assert!(data.path().join("admin.token").exists());

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "controller ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(exit.success(), "exit {exit}: {stderr}");
    assert!(stderr.contains("shutdown requested"), "{stderr}");
}

#[test]
fn unknown_grpc_netns_is_an_error_naming_the_flag() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["controller", "--data-dir"])
        .arg(data.path())
        .args([
            "--http-listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
        ])
        .args(["--grpc-netns", "no-such-namespace-here"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--grpc-netns"), "{stderr}");
}
