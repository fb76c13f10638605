//! The controller's `Warning: 299` answers (a client version outside its
//! version-skew policy) reach the CLI's user on stderr, once each, as they
//! reach a Terraform user as warning diagnostics. A stand-in controller
//! answers, since a real one warns only a client of another version.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_measurelab");

const WARNING: &str =
    "measurelab-cli 0.0.9 is older than this controller (measurelab 0.2.0) serves";

/// Answer every request on `listener` with an empty node list and the
/// warning, twice over (as two replicas' proxies might repeat it).
fn serve(listener: TcpListener) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { return };
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let body = r#"{"nodes":[]}"#;
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
             warning: 299 - \"{WARNING}\"\r\nwarning: 299 - \"{WARNING}\"\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(answer.as_bytes());
    }
}

#[test]
fn the_controllers_warnings_are_printed_once_each() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || serve(listener));

    let out = Command::new(BIN)
        .args(["node", "--endpoint", &endpoint, "--token", "t", "list"])
        .env_remove("MEASURELAB_CA_CERT")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let line = format!("warning: {WARNING}");
    assert_eq!(
        stderr.lines().filter(|l| *l == line).count(),
        1,
        "the warning once on stderr:\n{stderr}"
    );
}
