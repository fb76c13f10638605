//! `lab up` runs TLS by default: the API answers only clients that trust the
//! lab CA, agents pinned it, and a capture on the management network while
//! an agent registers again holds neither the join token nor the node
//! secret in clear.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use measurelab_acceptance::{acc_enabled, block_on, Lab};

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn acc_lab_runs_tls_and_registration_shows_no_secret_in_clear() -> anyhow::Result<()> {
    if !acc_enabled("acc_lab_runs_tls_and_registration_shows_no_secret_in_clear") {
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

    // Capture the management network while n1's agent starts again and
    // registers (join token and node secret in the request).
    let pid_file = lab.dir.path().join("pids/n1-agent.pid");
    let pid = std::fs::read_to_string(&pid_file)?.trim().to_string();
    lab.stop_agent("n1")?;
    // Until the old agent is gone, `lab up` sees it running and starts none.
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        anyhow::ensure!(Instant::now() < deadline, "n1's agent did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = lab.node("n1")?.and_then(|n| n.last_heartbeat);
    let capture = lab.dir.path().join("mgmt.pcap");
    let mut tcpdump = Command::new("ip")
        .args(["netns", "exec", &format!("{}-mgmt", lab.name)])
        // --immediate-mode: otherwise packets wait in the kernel ring buffer
        // and those not yet handed over are lost at SIGINT.
        .args([
            "tcpdump",
            "--immediate-mode",
            "-i",
            "any",
            "-U",
            "-s",
            "0",
            "-w",
        ])
        .arg(&capture)
        .args(["tcp", "port", "7071"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    // tcpdump says "listening on ..." once the capture is active.
    // Kept open until tcpdump exits: its closing statistics must not hit a
    // closed pipe.
    let mut stderr = std::io::BufReader::new(tcpdump.stderr.take().expect("piped stderr"));
    let mut said = String::new();
    while !said.contains("listening on") {
        let mut line = String::new();
        anyhow::ensure!(
            std::io::BufRead::read_line(&mut stderr, &mut line)? > 0,
            "tcpdump stopped: {said}"
        );
        said.push_str(&line);
    }
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
    let status = Command::new("kill")
        .args(["-INT", &tcpdump.id().to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "cannot stop tcpdump");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest)?;
    tcpdump.wait()?;
    eprintln!("tcpdump: {said}{rest}");

    let bytes = std::fs::read(&capture)?;
    // Registration plus a heartbeat carry kilobytes; an empty capture would
    // prove nothing.
    assert!(bytes.len() > 2_000, "captured only {} bytes", bytes.len());
    let join_token = std::fs::read_to_string(lab.dir.path().join("join.token"))?;
    assert!(
        !contains(&bytes, join_token.trim().as_bytes()),
        "the join token crossed the management network in clear"
    );
    let identity: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(agent_dir.join("identity.json"))?)?;
    let secret = identity["node_secret"].as_str().unwrap_or_default();
    assert!(
        !contains(&bytes, secret.as_bytes()),
        "the node secret crossed the management network in clear"
    );
    Ok(())
}
