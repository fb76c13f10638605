//! `lab up` runs TLS by default: the API answers only clients that trust the
//! lab CA, agents pinned it, and captures of the gRPC port on the management
//! network and of the HTTP API port, while an agent registers again and a
//! researcher uploads and deploys a program, hold no join token, node
//! secret, tenant token or program bytes in clear.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

use measurelab_acceptance::{
    acc_enabled, block_on, describe, worker_slice_hcl, Lab, PROVIDER_BLOCK,
};

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A tcpdump writing the TCP traffic of one port to a file.
struct Capture {
    tcpdump: Child,
    /// Kept open until tcpdump exits: its closing statistics must not hit
    /// a closed pipe.
    stderr: BufReader<ChildStderr>,
    said: String,
    file: PathBuf,
    port: u16,
}

impl Capture {
    /// Capture `port` on `interface`, in network namespace `netns` when
    /// given; returns once tcpdump listens.
    fn start(netns: Option<&str>, interface: &str, port: u16, file: &Path) -> anyhow::Result<Self> {
        let mut command = match netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns, "tcpdump"]);
                command
            }
            None => Command::new("tcpdump"),
        };
        // --immediate-mode: otherwise packets wait in the kernel ring buffer
        // and those not yet handed over are lost at SIGINT.
        let mut tcpdump = command
            // -B: a larger kernel buffer (KiB), so that a burst is not dropped.
            .args([
                "--immediate-mode",
                "-B",
                "8192",
                "-i",
                interface,
                "-U",
                "-s",
                "0",
                "-w",
            ])
            .arg(file)
            .args(["tcp", "port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut stderr = BufReader::new(tcpdump.stderr.take().expect("piped stderr"));
        let mut said = String::new();
        // tcpdump says "listening on ..." once the capture is active.
        while !said.contains("listening on") {
            let mut line = String::new();
            if stderr.read_line(&mut line)? == 0 {
                let _ = tcpdump.kill();
                let _ = tcpdump.wait();
                anyhow::bail!("tcpdump on port {port} stopped: {said}");
            }
            said.push_str(&line);
        }
        Ok(Capture {
            tcpdump,
            stderr,
            said,
            file: file.to_path_buf(),
            port,
        })
    }

    /// Stop tcpdump; the captured bytes and the number of packets to or
    /// from the port.
    fn stop(mut self) -> anyhow::Result<(Vec<u8>, usize)> {
        let status = Command::new("kill")
            .args(["-INT", &self.tcpdump.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "cannot stop tcpdump");
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.stderr, &mut rest)?;
        self.tcpdump.wait()?;
        eprintln!("tcpdump port {}: {}{rest}", self.port, self.said);
        let listing = Command::new("tcpdump")
            .args(["-nn", "-r"])
            .arg(&self.file)
            .args(["tcp", "port", &self.port.to_string()])
            .output()?;
        anyhow::ensure!(listing.status.success(), "{}", describe(&listing));
        let packets = String::from_utf8_lossy(&listing.stdout).lines().count();
        Ok((std::fs::read(&self.file)?, packets))
    }
}

impl Drop for Capture {
    /// A test that fails between start and stop leaves no tcpdump behind
    /// (after `stop` the child is reaped, and this does nothing).
    fn drop(&mut self) {
        let _ = self.tcpdump.kill();
        let _ = self.tcpdump.wait();
    }
}

/// A program that stays up, carrying `marker`.
fn program_text(marker: &str) -> String {
    format!("#!/bin/sh\n# {marker}\necho up\nexec sleep 2147483647\n")
}

/// Base64 of `file` by coreutils: how the upload carries it (`content_base64`).
fn base64_of(file: &Path) -> anyhow::Result<String> {
    let output = Command::new("base64").arg("-w0").arg(file).output()?;
    anyhow::ensure!(output.status.success(), "{}", describe(&output));
    Ok(String::from_utf8(output.stdout)?.trim().to_string())
}

#[test]
fn acc_lab_runs_tls_and_the_capture_shows_no_secret_or_program_in_clear() -> anyhow::Result<()> {
    if !acc_enabled("acc_lab_runs_tls_and_the_capture_shows_no_secret_or_program_in_clear") {
        return Ok(());
    }
    let lab = Lab::up(1)?;
    assert!(lab.endpoint.starts_with("https://"), "{}", lab.endpoint);
    assert!(
        lab.ca_cert.is_some(),
        "lab env printed no MEASURELAB_CA_CERT"
    );

    // Without the lab CA the API does not answer.
    let url = format!("{}/healthz", lab.endpoint);
    let without_ca = block_on(async {
        let client = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .build()?;
        Ok(client.get(&url).send().await.is_ok())
    })?;
    assert!(!without_ca, "answered a client without the lab CA");
    let with_ca = block_on(async {
        Ok(lab
            .http_client()?
            .get(&url)
            .send()
            .await?
            .status()
            .is_success())
    })?;
    assert!(with_ca);

    let agent_dir = lab.dir.path().join("nodes/n1/agent");
    let pinned = std::fs::read_to_string(agent_dir.join("controller-ca.pem"))?;
    let lab_ca = std::fs::read_to_string(lab.ca_cert.as_deref().unwrap_or_default())?;
    assert_eq!(pinned.trim(), lab_ca.trim(), "the agent pinned another CA");

    // Capture the gRPC port on the management network and the HTTP API
    // port while n1's agent starts again and registers (join token and node
    // secret in the request), and while a researcher uploads a program and
    // deploys it (tenant token on every request, the program in the upload
    // and in the agent's download).
    let grpc = Capture::start(
        Some(&format!("{}-mgmt", lab.name)),
        "any",
        7071,
        &lab.dir.path().join("grpc.pcap"),
    )?;
    let http_port: u16 = lab
        .endpoint
        .rsplit(':')
        .next()
        .and_then(|port| port.trim_end_matches('/').parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no port in {}", lab.endpoint))?;
    let http = Capture::start(None, "lo", http_port, &lab.dir.path().join("http.pcap"))?;

    // The registration carries the secret of the last one; its answer, the
    // new one.
    let secret_of = |dir: &Path| -> anyhow::Result<String> {
        let identity: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("identity.json"))?)?;
        Ok(identity["node_secret"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    };
    let old_secret = secret_of(&agent_dir)?;
    let pid_file = lab.dir.path().join("pids/n1-agent.pid");
    let pid = std::fs::read_to_string(&pid_file)?.trim().to_string();
    lab.stop_agent("n1")?;
    // Until the old agent is gone, `lab up` sees it running and starts none.
    let deadline = Instant::now() + Duration::from_secs(15);
    while Path::new(&format!("/proc/{pid}")).exists() {
        anyhow::ensure!(Instant::now() < deadline, "n1's agent did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = lab.node("n1")?.and_then(|n| n.last_heartbeat);
    lab.measurelab(&["lab", "up", "--nodes", "1", "--http-port", "0"])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = lab.node("n1")?.and_then(|n| n.last_heartbeat);
        if now.is_some() && now != before {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "n1 sent no heartbeat after its restart"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // As the tenant: upload the program and run it in a VM on n1, which
    // n1's agent fetches from the controller to start it.
    let marker = format!("capture-marker-{}-{}", std::process::id(), lab.name);
    let tf = lab.terraform_as(&lab.member_env)?;
    tf.write("marked.sh", &program_text(&marker))?;
    let slice = worker_slice_hcl("slice-capture");
    tf.write(
        "main.tf",
        &format!(
            r#"{PROVIDER_BLOCK}
{slice}
resource "measurelab_program" "marked" {{
  name   = "marked"
  source = "${{path.module}}/marked.sh"
}}

resource "measurelab_deployment" "marked" {{
  program  = measurelab_program.marked.id
  vms      = [measurelab_vm.worker.id]
  wait_for = "running"
}}
"#
        ),
    )?;
    tf.init()?;
    tf.apply()?;
    let marker_base64 = base64_of(&tf.dir.path().join("marked.sh"))?;

    let (grpc_bytes, grpc_packets) = grpc.stop()?;
    let (http_bytes, http_packets) = http.stop()?;
    // Registration, heartbeats and the program's download on one port, a
    // whole terraform apply on the other: dozens of packets each. An empty
    // capture, or one of the wrong port, would prove nothing.
    assert!(
        grpc_packets >= 20,
        "captured only {grpc_packets} packets on the gRPC port"
    );
    assert!(
        http_packets >= 20,
        "captured only {http_packets} packets on the HTTP port"
    );

    let join_token = std::fs::read_to_string(lab.dir.path().join("join.token"))?;
    let new_secret = secret_of(&agent_dir)?;
    anyhow::ensure!(new_secret != old_secret, "n1 did not register again");
    let mut in_clear = Vec::new();
    for (port, bytes) in [("gRPC", &grpc_bytes), ("HTTP", &http_bytes)] {
        for (what, needle) in [
            ("the join token", join_token.trim()),
            ("the node secret sent", old_secret.as_str()),
            ("the node secret received", new_secret.as_str()),
            ("the tenant token", lab.member_token.as_str()),
            ("the program", marker.as_str()),
            ("the program (base64)", marker_base64.as_str()),
        ] {
            if contains(bytes, needle.as_bytes()) {
                in_clear.push(format!("{what} on the {port} port"));
            }
        }
    }
    assert!(in_clear.is_empty(), "crossed in clear: {in_clear:?}");
    Ok(())
}
