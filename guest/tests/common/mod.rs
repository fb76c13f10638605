//! Shared helpers for the guest agent's black-box tests: the real
//! `measurelab-guest-agent` binary against the node agent's `GuestChannels`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use base64::Engine;
use measurelab_api::guest::{AgentMessage, GuestMessage, ProgramRunState};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

pub const AGENT_BIN: &str = env!("CARGO_BIN_EXE_measurelab-guest-agent");

/// Kills (SIGTERM, then SIGKILL) and reaps the guest agent on drop.
pub struct AgentProcess(pub Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Next message matching `want`, skipping the others; panics on timeout.
pub async fn expect<T>(
    inbound: &mut mpsc::Receiver<GuestMessage>,
    timeout: Duration,
    what: &str,
    mut want: impl FnMut(&GuestMessage) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut skipped = Vec::new();
    loop {
        let message = match tokio::time::timeout_at(deadline, inbound.recv()).await {
            Ok(Some(message)) => message,
            Ok(None) => panic!("channel closed while waiting for {what}; saw {skipped:#?}"),
            Err(_) => panic!("no {what} within {timeout:?}; saw {skipped:#?}"),
        };
        if let Some(found) = want(&message) {
            return found;
        }
        if skipped.len() < 50 {
            skipped.push(message);
        }
    }
}

/// A `run` message for `content`, with its real sha256.
pub fn run_message(
    deployment_id: &str,
    program_name: &str,
    content: &[u8],
    args: &[&str],
    env: &[(&str, &str)],
) -> AgentMessage {
    AgentMessage::Run {
        deployment_id: deployment_id.into(),
        program_name: program_name.into(),
        sha256: hex::encode(Sha256::digest(content)),
        content_base64: base64::engine::general_purpose::STANDARD.encode(content),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// (status, exit_code, stdout_tail, stderr_tail) of a program_status for `deployment`.
pub type Status = (ProgramRunState, Option<i32>, String, String);

pub fn status_of(
    deployment: &str,
    wanted: ProgramRunState,
) -> impl FnMut(&GuestMessage) -> Option<Status> + '_ {
    move |m| match m {
        GuestMessage::ProgramStatus {
            deployment_id,
            status,
            exit_code,
            stdout_tail,
            stderr_tail,
        } if deployment_id == deployment && *status == wanted => Some((
            *status,
            *exit_code,
            stdout_tail.clone(),
            stderr_tail.clone(),
        )),
        _ => None,
    }
}

/// Minimal HTTP/1.1 exchange (Connection: close) with the guest's local API:
/// returns (status code, body).
pub fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status: u16 = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The local API address from the guest's shipped log line
/// `... local platform API listening addr=127.0.0.1:PORT`.
pub fn local_api_from_log(message: &GuestMessage) -> Option<String> {
    let GuestMessage::Log { lines } = message else {
        return None;
    };
    lines.iter().find_map(|line| {
        if !line.contains("local platform API listening") {
            return None;
        }
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .map(str::to_string)
    })
}
