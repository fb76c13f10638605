//! Flow monitoring from HCL against a real lab: `flow_export` on the node and
//! `flow_monitoring` on the platform reach the node's switch, traffic between
//! two VMs of the platform reaches the controller's collector (nfcapd), and
//! the `measurelab_flows` data source returns it with the exact counts
//! (NetFlow v5: every packet, no sampling). With monitoring off, the data
//! source refuses with the controller's reason.

use std::process::Command;
use std::time::{Duration, Instant};

use measurelab_acceptance::{
    acc_enabled, describe, resource_values, Lab, Terraform, PROVIDER_BLOCK,
};

const WAIT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_secs(2);
const PINGS: u64 = 5;
const PAYLOAD: u64 = 56;
/// An ICMP echo as Open vSwitch counts its bytes: the whole Ethernet frame,
/// 14 bytes Ethernet + 20 IP + 8 ICMP headers, plus the payload.
const FRAME_HEADERS: u64 = 42;

fn config(monitoring: bool) -> String {
    format!(
        r#"{PROVIDER_BLOCK}
resource "measurelab_measurement_node" "n1" {{
  name = "n1"
  flow_export {{
    protocol       = "netflow"
    active_timeout = 1
  }}
}}

resource "measurelab_virtual_platform" "watched" {{
  name            = "flows-acc"
  nodes           = ["n1"]
  flow_monitoring = {monitoring}
  # Literal node names: the platform's `nodes` cannot be validated while an
  # element is unknown, so the order comes from depends_on.
  depends_on = [measurelab_measurement_node.n1]
}}

resource "measurelab_vm" "a" {{
  name       = "fa"
  platform   = measurelab_virtual_platform.watched.name
  node       = "n1"
  appliance  = "namespace"
  backend    = "namespace"
  vcpus      = 1
  memory_mib = 32
}}

resource "measurelab_vm" "b" {{
  name       = "fb"
  platform   = measurelab_virtual_platform.watched.name
  node       = "n1"
  appliance  = "namespace"
  backend    = "namespace"
  vcpus      = 1
  memory_mib = 32
}}
"#
    )
}

/// Everything the lab recorded since it started (the lab is this test's own).
const DATA_SOURCE: &str = r#"
data "measurelab_flows" "watched" {
  platform = measurelab_virtual_platform.watched.name
  since    = "2026-01-01T00:00:00Z"
}
"#;

fn state_string(values: &serde_json::Value, key: &str) -> anyhow::Result<String> {
    values[key]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no {key} in {values}"))
}

/// (packets, bytes) of the ICMP records from `src` to `dst` in the data
/// source's state.
fn icmp_counts(tf: &Terraform, src: &str, dst: &str) -> anyhow::Result<(u64, u64)> {
    let state = tf.state_json()?;
    let values = resource_values(&state, "data.measurelab_flows.watched")
        .ok_or_else(|| anyhow::anyhow!("data source not in the state"))?;
    let mut packets = 0;
    let mut bytes = 0;
    for flow in values["flows"].as_array().into_iter().flatten() {
        if flow["protocol"] == 1 && flow["src_addr"] == src && flow["dst_addr"] == dst {
            packets += flow["packets"].as_u64().unwrap_or(0);
            bytes += flow["bytes"].as_u64().unwrap_or(0);
        }
    }
    Ok((packets, bytes))
}

#[test]
fn acc_flows_from_hcl_to_the_data_source() -> anyhow::Result<()> {
    if !acc_enabled("acc_flows_from_hcl_to_the_data_source") {
        return Ok(());
    }
    let lab = Lab::up(1)?;
    let tf = lab.terraform()?;
    tf.write("main.tf", &config(true))?;
    tf.init()?;
    tf.apply()?;
    let (code, output) = tf.plan_exit_code()?;
    assert_eq!(code, 0, "plan after apply: {}", describe(&output));

    // The operator's setting is stored and the switch runs it.
    let deadline = Instant::now() + WAIT;
    loop {
        let node = lab
            .node("n1")?
            .ok_or_else(|| anyhow::anyhow!("node n1 not registered"))?;
        let export = node.flow_export.clone();
        assert_eq!(
            export
                .as_ref()
                .map(|e| (e.protocol, e.sampling, e.active_timeout_seconds)),
            Some((measurelab_api::http::FlowProtocol::Netflow, 1, 1)),
            "{node:?}"
        );
        if !node.capabilities.flow_export.is_empty() {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "export never ran: {node:?}");
        std::thread::sleep(POLL);
    }

    let state = tf.state_json()?;
    let vm = |address: &str| {
        resource_values(&state, address)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("{address} not in the state"))
    };
    let (a, b) = (vm("measurelab_vm.a")?, vm("measurelab_vm.b")?);
    let (a_addr, b_addr) = (state_string(&a, "address")?, state_string(&b, "address")?);
    let a_netns = format!("vm-{}", &state_string(&a, "id")?.replace('-', "")[..8]);
    let ping = Command::new("ip")
        .args([
            "netns", "exec", &a_netns, "ping", "-n", "-q", "-W", "2", "-i", "0.2",
        ])
        .args([
            "-c",
            &PINGS.to_string(),
            "-s",
            &PAYLOAD.to_string(),
            &b_addr,
        ])
        .output()?;
    anyhow::ensure!(ping.status.success(), "ping: {}", describe(&ping));

    tf.write("flows.tf", DATA_SOURCE)?;
    let frame = PAYLOAD + FRAME_HEADERS;
    let deadline = Instant::now() + WAIT;
    let (requests, replies) = loop {
        tf.apply()?;
        let requests = icmp_counts(&tf, &a_addr, &b_addr)?;
        let replies = icmp_counts(&tf, &b_addr, &a_addr)?;
        if requests.0 >= PINGS && replies.0 >= PINGS {
            break (requests, replies);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "flows never complete: requests {requests:?}, replies {replies:?}"
        );
        std::thread::sleep(POLL);
    };
    assert_eq!(requests, (PINGS, PINGS * frame), "{a_addr} -> {b_addr}");
    assert_eq!(replies, (PINGS, PINGS * frame), "{b_addr} -> {a_addr}");

    // Monitoring off: nothing is kept, and the data source says why.
    tf.remove("flows.tf")?;
    tf.write("main.tf", &config(false))?;
    tf.apply()?;
    tf.write("flows.tf", DATA_SOURCE)?;
    let refused = tf.run(&["plan", "-input=false"])?;
    assert!(!refused.status.success(), "{}", describe(&refused));
    let text = describe(&refused);
    assert!(text.contains("flow_monitoring"), "{text}");
    tf.remove("flows.tf")?;
    tf.destroy()?;
    Ok(())
}
