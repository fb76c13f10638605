//! Into the slice through its gateway, as a researcher does it (issue 11):
//! `examples/platform-access` as shipped, plus VMs on both nodes and a second
//! platform, applied with the real terraform CLI to a two-node lab as the
//! demo tenant's member. The lab's nodes have public addresses on a lab
//! internet; a "laptop" namespace attached only to that internet brings the
//! tunnel up from the `wg_config` output with `measurelab tunnel up` (the
//! userspace WireGuard a researcher without the kernel module uses). Then:
//! - the config is what the controller holds, and a refresh shows no drift;
//! - the laptop pings the platform's VMs on both nodes and runs iperf3 to one;
//! - it reaches nothing else, even when it sends everything into the tunnel:
//!   not the other platform's VM, not the controller's management address,
//!   not a node's service address;
//! - destroying the peer (`-target`, as the example's README says) cuts its
//!   traffic within a bound, and destroy removes the platform.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use measurelab_acceptance::{
    acc_enabled, block_on, describe, resource_values, workspace_root, Lab, Terraform,
};
use measurelab_api::http::GatewayState;

const PEER: &str = "measurelab_platform_peer.laptop";
/// n1's address on the lab internet (`lab up` gives node K 198.51.100.(10+K)
/// and its agent `--public-address`): the gateway's endpoint.
const N1_PUBLIC: &str = "198.51.100.11";
/// The controller's address on the lab's management network.
const MANAGEMENT_ADDRESS: &str = "10.254.0.1";
/// n1's service-network address (its service host's point).
const SERVICE_ADDRESS: &str = "10.253.0.11";
const TUNNEL_DEVICE: &str = "mlwgacc0";
/// The first packet triggers the handshake; the gateway may also still be
/// starting when apply returns (the VMs' readiness does not wait for it).
const TUNNEL_UP_BOUND: Duration = Duration::from_secs(30);
/// A removed peer's traffic must stop within this: the desired state is
/// pushed to the node, whose agent replaces the gateway's peer set in place.
const PEER_REMOVAL_BOUND: Duration = Duration::from_secs(20);

/// VMs on both nodes of the platform, and a second platform with a VM on
/// the gateway's node (what the tunnel must not reach).
const EXTRA: &str = r#"
resource "measurelab_vm" "a1" {
  name       = "a1"
  platform   = measurelab_virtual_platform.access.name
  node       = "n1"
  appliance  = "namespace"
  backend    = "namespace"
  vcpus      = 1
  memory_mib = 64
}

resource "measurelab_vm" "a2" {
  name       = "a2"
  platform   = measurelab_virtual_platform.access.name
  node       = "n2"
  appliance  = "namespace"
  backend    = "namespace"
  vcpus      = 1
  memory_mib = 64
}

resource "measurelab_virtual_platform" "other" {
  name  = "other"
  nodes = ["n1"]
}

resource "measurelab_vm" "b1" {
  name       = "b1"
  platform   = measurelab_virtual_platform.other.name
  node       = "n1"
  appliance  = "namespace"
  backend    = "namespace"
  vcpus      = 1
  memory_mib = 64
}

# The data source shows the gateway too (a platform looked up by name).
data "measurelab_virtual_platform" "access" {
  name = measurelab_virtual_platform.access.name
}

output "looked_up_gateway" {
  value = {
    node       = data.measurelab_virtual_platform.access.gateway_node
    endpoint   = data.measurelab_virtual_platform.access.gateway_endpoint
    public_key = data.measurelab_virtual_platform.access.gateway_public_key
  }
}

output "vms" {
  value = {
    a1 = { id = measurelab_vm.a1.id, address = measurelab_vm.a1.address }
    a2 = { id = measurelab_vm.a2.id, address = measurelab_vm.a2.address }
    b1 = { id = measurelab_vm.b1.id, address = measurelab_vm.b1.address }
  }
}
"#;

/// A working directory holding `examples/platform-access` as shipped.
fn platform_access(lab: &Lab) -> anyhow::Result<Terraform> {
    let tf = lab.terraform_as(&lab.member_env)?;
    let example = workspace_root().join("examples/platform-access");
    for entry in std::fs::read_dir(&example)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "tf") {
            std::fs::copy(
                &path,
                tf.dir.path().join(path.file_name().unwrap_or_default()),
            )?;
        }
    }
    Ok(tf)
}

fn output(tf: &Terraform, name: &str) -> anyhow::Result<String> {
    let out = tf.ok(&["output", "-raw", name])?;
    Ok(String::from_utf8(out.stdout)?)
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<Output> {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program} {}", args.join(" ")))
}

/// One ping from namespace `ns`; true when it was answered.
fn answers_ping(ns: &str, address: &str) -> anyhow::Result<bool> {
    let out = run(
        "ip",
        &[
            "netns", "exec", ns, "ping", "-n", "-c", "1", "-W", "1", address,
        ],
    )?;
    Ok(out.status.success())
}

/// Poll `check` until it holds or `bound` has passed; whether it held.
fn holds_within(
    bound: Duration,
    mut check: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<bool> {
    let deadline = Instant::now() + bound;
    loop {
        if check()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A namespace VM's network namespace, as the node agent names it.
fn vm_netns(vm_id: &str) -> String {
    format!("vm-{}", &vm_id.replace('-', "")[..8])
}

/// Bytes the iperf3 server in `server_ns` received from a 2 s run of the
/// client in `client_ns`, from the server's own report.
fn iperf3_received(server_ns: &str, client_ns: &str, address: &str) -> anyhow::Result<u64> {
    let server = Command::new("ip")
        .args(["netns", "exec", server_ns, "iperf3", "-s", "-1", "-J"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting iperf3 -s")?;
    // The client may start before the server listens; iperf3 -c gives up at
    // once on a refused connection, so retry that until a deadline.
    let deadline = Instant::now() + Duration::from_secs(15);
    let client = loop {
        let out = run(
            "ip",
            &[
                "netns", "exec", client_ns, "iperf3", "-c", address, "-t", "2",
            ],
        )?;
        if out.status.success() || Instant::now() >= deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let server_out = server.wait_with_output()?;
    ensure!(
        client.status.success(),
        "iperf3 -c {address}: {}",
        describe(&client)
    );
    let report: serde_json::Value = serde_json::from_slice(&server_out.stdout)
        .with_context(|| format!("iperf3 -s report: {}", describe(&server_out)))?;
    report["end"]["sum_received"]["bytes"]
        .as_u64()
        .with_context(|| format!("no end.sum_received.bytes in the server's report: {report}"))
}

/// The peer's config with every destination sent into the tunnel, so what
/// the gateway refuses is tested rather than what the laptop's routes omit.
fn everything_into_the_tunnel(config: &str) -> anyhow::Result<String> {
    let mut replaced = 0;
    let lines: Vec<String> = config
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("AllowedIPs") {
                replaced += 1;
                "AllowedIPs = 0.0.0.0/0".to_owned()
            } else {
                line.to_owned()
            }
        })
        .collect();
    if replaced != 1 {
        bail!("expected one AllowedIPs line in\n{config}");
    }
    Ok(lines.join("\n") + "\n")
}

/// Takes the laptop's tunnel down on every exit, also when a check fails.
struct Tunnel<'a> {
    measurelab: &'a std::path::Path,
}

impl Drop for Tunnel<'_> {
    fn drop(&mut self) {
        let _ = Command::new(self.measurelab)
            .args(["tunnel", "down", "--name", TUNNEL_DEVICE])
            .stdin(Stdio::null())
            .output();
    }
}

#[test]
fn acc_platform_access_through_the_gateway() -> anyhow::Result<()> {
    if !acc_enabled("acc_platform_access_through_the_gateway") {
        return Ok(());
    }
    let lab = Lab::up(2)?;
    let tf = platform_access(&lab)?;
    tf.write("vms.tf", EXTRA)?;
    tf.init()?;
    tf.apply()?;

    // What Terraform shows is what the controller holds.
    let client = lab.client_as(&lab.member_token)?;
    let platform = block_on(async { Ok(client.get_platform("access").await?) })?;
    let endpoint = format!("{N1_PUBLIC}:51820");
    assert_eq!(output(&tf, "gateway_endpoint")?, endpoint);
    assert_eq!(output(&tf, "subnet")?, platform.subnet);
    let gateway_key = platform
        .gateway_public_key
        .clone()
        .context("the platform reports no gateway key")?;
    assert_eq!(gateway_key.len(), 44, "base64 of 32 bytes: {gateway_key}");
    let state = tf.state_json()?;
    let peer = resource_values(&state, PEER)
        .cloned()
        .context("no peer in the state")?;
    let private_key = peer["private_key"]
        .as_str()
        .with_context(|| format!("no generated private key: {peer}"))?
        .to_string();
    let config = output(&tf, "wg_config")?;
    let lines: Vec<&str> = config.lines().collect();
    for line in [
        format!("PrivateKey = {private_key}"),
        format!(
            "Address = {}",
            peer["tunnel_address"].as_str().unwrap_or("?")
        ),
        format!("PublicKey = {gateway_key}"),
        format!("Endpoint = {endpoint}"),
        format!("AllowedIPs = {}", platform.subnet),
        "PersistentKeepalive = 25".to_string(),
    ] {
        assert!(lines.contains(&line.as_str()), "{line:?} not in\n{config}");
    }
    let looked_up: serde_json::Value =
        serde_json::from_slice(&tf.ok(&["output", "-json", "looked_up_gateway"])?.stdout)?;
    assert_eq!(
        looked_up,
        serde_json::json!({"node": "n1", "endpoint": endpoint, "public_key": gateway_key}),
        "data.measurelab_virtual_platform shows the gateway"
    );
    let on_controller = block_on(async { Ok(client.list_platform_peers("access").await?) })?;
    assert_eq!(on_controller.len(), 1);
    assert_eq!(peer["public_key"], on_controller[0].public_key.as_str());
    assert_eq!(
        on_controller[0].private_key, None,
        "the controller keeps no private key"
    );
    // The agent on n1 brings the gateway up and says so; Terraform reads
    // it on a refresh.
    let deadline = Instant::now() + TUNNEL_UP_BOUND;
    loop {
        let status = block_on(async { Ok(client.get_platform("access").await?) })?.gateway_status;
        if status
            .as_ref()
            .is_some_and(|s| s.state == GatewayState::Ready)
        {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the gateway is not ready within {TUNNEL_UP_BOUND:?}: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    tf.ok(&["apply", "-refresh-only", "-auto-approve", "-input=false"])?;
    let refreshed = tf.state_json()?;
    let shown = resource_values(&refreshed, "measurelab_virtual_platform.access")
        .context("no platform in the state")?;
    assert_eq!(
        (&shown["gateway_state"], &shown["gateway_message"]),
        (&serde_json::json!("ready"), &serde_json::json!("")),
        "{shown}"
    );
    let (code, out) = tf.plan_exit_code()?;
    assert_eq!(
        code,
        0,
        "refresh re-renders the config: no drift\n{}",
        describe(&out)
    );

    let vms: serde_json::Value =
        serde_json::from_slice(&tf.ok(&["output", "-json", "vms"])?.stdout)?;
    let field = |vm: &str, name: &str| -> anyhow::Result<String> {
        vms[vm][name]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("output vms.{vm}.{name} missing: {vms}"))
    };
    let (a1, a2, b1) = (
        field("a1", "address")?,
        field("a2", "address")?,
        field("b1", "address")?,
    );

    lab.measurelab(&["lab", "laptop", "--index", "1"])?;
    let laptop = format!("{}-lap1", lab.name);
    assert!(
        !answers_ping(&laptop, &a1)?,
        "{a1} answered the laptop before the tunnel was up"
    );

    let config_path = lab.dir.path().join("laptop.conf");
    std::fs::write(&config_path, everything_into_the_tunnel(&config)?)?;
    let measurelab = lab.binaries.measurelab();
    let config_arg = config_path.to_str().context("config path")?;
    let up = run(
        measurelab.to_str().context("binary path")?,
        &[
            "tunnel",
            "up",
            "--config",
            config_arg,
            "--netns",
            &laptop,
            "--name",
            TUNNEL_DEVICE,
        ],
    )?;
    let _tunnel = Tunnel {
        measurelab: &measurelab,
    };
    ensure!(up.status.success(), "tunnel up: {}", describe(&up));

    let tunnel_started = Instant::now();
    assert!(
        holds_within(TUNNEL_UP_BOUND, || answers_ping(&laptop, &a1))?,
        "{a1} (on n1, the gateway's node) not reachable through the tunnel within {TUNNEL_UP_BOUND:?}"
    );
    eprintln!(
        "{a1} answered through the tunnel after {:.1?}",
        tunnel_started.elapsed()
    );
    assert!(
        answers_ping(&laptop, &a2)?,
        "{a2} (on n2) not reachable through the tunnel"
    );
    let received = iperf3_received(&vm_netns(&field("a2", "id")?), &laptop, &a2)?;
    assert!(
        received > 0,
        "iperf3 through the tunnel to {a2} moved no bytes"
    );
    eprintln!("iperf3 through the tunnel to {a2}: {received} bytes in 2 s");

    for (what, address) in [
        ("the other platform's VM", b1.as_str()),
        ("the controller's management address", MANAGEMENT_ADDRESS),
        ("n1's service address", SERVICE_ADDRESS),
    ] {
        assert!(
            !answers_ping(&laptop, address)?,
            "{what} {address} answered through the tunnel"
        );
    }
    // The refusals above are the gateway's, not a broken tunnel's.
    assert!(
        answers_ping(&laptop, &a1)?,
        "{a1} stopped answering during the isolation checks"
    );

    tf.ok(&[
        "destroy",
        "-auto-approve",
        "-input=false",
        &format!("-target={PEER}"),
    ])?;
    let destroyed = Instant::now();
    assert!(block_on(async { Ok(client.list_platform_peers("access").await?) })?.is_empty());
    assert!(
        holds_within(PEER_REMOVAL_BOUND, || Ok(!answers_ping(&laptop, &a1)?))?,
        "{a1} still answers {:?} after the peer was destroyed",
        destroyed.elapsed()
    );
    eprintln!(
        "the destroyed peer's traffic stopped {:.1?} after destroy returned",
        destroyed.elapsed()
    );

    tf.destroy()?;
    let gone = block_on(async { Ok(client.get_platform("access").await) })?;
    assert!(
        matches!(gone, Err(e) if e.is_not_found()),
        "destroy must delete the platform"
    );
    Ok(())
}
