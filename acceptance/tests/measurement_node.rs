//! Acceptance tests of `measurelab_measurement_node` against a real lab and the
//! real terraform CLI. Run with `TF_ACC=1` (see `cargo run -p xtask -- acc`).

use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use anyhow::Context;
use measurelab_acceptance::{
    acc_enabled, closed_port, describe, interrupt_group, interrupt_process, planned_actions,
    resource_values, Lab, Terraform, PROVIDER_BLOCK,
};

const ADDRESS: &str = "measurelab_measurement_node.probe";

fn node_config(name: &str, labels: &str) -> String {
    format!(
        r#"{PROVIDER_BLOCK}
resource "measurelab_measurement_node" "probe" {{
  name   = "{name}"
  labels = {{
{labels}
  }}
}}
"#
    )
}

fn labels_on_controller(lab: &Lab, name: &str) -> anyhow::Result<Vec<(String, String)>> {
    let node = lab
        .node(name)?
        .ok_or_else(|| anyhow::anyhow!("node {name} vanished from the controller"))?;
    Ok(node.labels.into_iter().collect())
}

#[test]
fn acc_measurement_node_basic() -> anyhow::Result<()> {
    if !acc_enabled("acc_measurement_node_basic") {
        return Ok(());
    }
    let lab = Lab::up(2)?;
    let name = lab.node_name(1);
    let other_before = labels_on_controller(&lab, &lab.node_name(2))?;
    let tf = lab.terraform()?;
    tf.write(
        "main.tf",
        &node_config(
            &name,
            r#"    role = "probe"
    rack = "r1""#,
        ),
    )?;
    tf.init()?;
    tf.apply()?;

    let state = tf.state_json()?;
    let values =
        resource_values(&state, ADDRESS).ok_or_else(|| anyhow::anyhow!("no {ADDRESS} in state"))?;
    let node = lab
        .node(&name)?
        .ok_or_else(|| anyhow::anyhow!("node missing"))?;
    assert_eq!(values["id"], node.id.as_str());
    assert_eq!(values["status"], "online");
    assert_eq!(values["agent_version"], node.agent_version.as_str());
    assert!(
        values["capabilities"]["libvirt_uris"].is_array(),
        "{values}"
    );
    assert!(
        values["resources"]["cpu_count"].as_u64().unwrap_or(0) >= 1,
        "{values}"
    );
    assert_eq!(
        labels_on_controller(&lab, &name)?,
        vec![
            ("rack".to_string(), "r1".to_string()),
            ("role".to_string(), "probe".to_string())
        ]
    );
    // The other node is untouched.
    assert_eq!(labels_on_controller(&lab, &lab.node_name(2))?, other_before);

    // Wait for two newer heartbeats on the controller, so last_heartbeat and
    // resources have changed there; the refresh picks them up but the plan
    // must stay empty.
    let first_heartbeat = values["last_heartbeat"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut seen = vec![first_heartbeat.clone()];
    let deadline = Instant::now() + Duration::from_secs(60);
    // The switch's uplink and datapath reach the controller a heartbeat or
    // two after the node comes online; the refresh below must carry them.
    let mut switch_reported = false;
    while seen.len() < 3 || !switch_reported {
        let node = lab
            .node(&name)?
            .ok_or_else(|| anyhow::anyhow!("node {name} vanished from the controller"))?;
        switch_reported = !node.capabilities.datapath.is_empty();
        if let Some(beat) = node.last_heartbeat.filter(|beat| !seen.contains(beat)) {
            seen.push(beat);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no two new heartbeats of {name} with its switch status within 60 s after {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, output) = tf.plan_exit_code()?;
    assert_eq!(
        code,
        0,
        "plan after apply must be empty:\n{}",
        describe(&output)
    );
    tf.ok(&["apply", "-refresh-only", "-auto-approve"])?;
    let refreshed = tf.state_json()?;
    let later = resource_values(&refreshed, ADDRESS)
        .ok_or_else(|| anyhow::anyhow!("no {ADDRESS} in state after refresh"))?;
    // The acceptance lab's nodes: one uplink, userspace datapath.
    let capabilities = &later["capabilities"];
    assert_eq!(capabilities["datapath"], "netdev", "{later}");
    assert_eq!(capabilities["uplink"]["name"], "uplink0", "{later}");
    assert_eq!(capabilities["uplink"]["mode"], "single", "{later}");
    assert_eq!(
        capabilities["uplink"]["members"],
        serde_json::json!([{"name": "uplink0", "link_up": true}]),
        "{later}"
    );
    let later_heartbeat = Some(later["last_heartbeat"].clone());
    assert_ne!(
        later_heartbeat,
        Some(serde_json::Value::String(first_heartbeat)),
        "last_heartbeat should be refreshed from the controller"
    );
    let (code, output) = tf.plan_exit_code()?;
    assert_eq!(
        code,
        0,
        "plan after refresh must be empty:\n{}",
        describe(&output)
    );

    tf.destroy()?;
    // Destroy releases the node: labels cleared, node still registered and online.
    let node = lab
        .node(&name)?
        .ok_or_else(|| anyhow::anyhow!("destroy must not delete the node"))?;
    assert!(
        node.labels.is_empty(),
        "labels left after destroy: {:?}",
        node.labels
    );
    assert_eq!(node.status, measurelab_api::http::NodeStatus::Online);
    assert!(tf.state_list()?.is_empty());
    Ok(())
}

#[test]
fn acc_measurement_node_update() -> anyhow::Result<()> {
    if !acc_enabled("acc_measurement_node_update") {
        return Ok(());
    }
    let lab = Lab::up(2)?;
    let name = lab.node_name(1);
    let tf = lab.terraform()?;
    tf.write("main.tf", &node_config(&name, r#"    role = "probe""#))?;
    tf.init()?;
    tf.apply()?;
    let id_before = resource_values(&tf.state_json()?, ADDRESS).map(|v| v["id"].clone());

    tf.write(
        "main.tf",
        &node_config(
            &name,
            r#"    role = "mscs"
    site = "lab""#,
        ),
    )?;
    let plan = tf.saved_plan_json("update.tfplan")?;
    assert_eq!(planned_actions(&plan, ADDRESS), vec!["update"], "{plan}");
    tf.ok(&["apply", "-input=false", "update.tfplan"])?;
    assert_eq!(
        labels_on_controller(&lab, &name)?,
        vec![
            ("role".to_string(), "mscs".to_string()),
            ("site".to_string(), "lab".to_string())
        ]
    );
    assert_eq!(
        resource_values(&tf.state_json()?, ADDRESS).map(|v| v["id"].clone()),
        id_before
    );
    let (code, output) = tf.plan_exit_code()?;
    assert_eq!(code, 0, "{}", describe(&output));

    // Drift: someone edits the labels behind Terraform's back; the plan must
    // notice and put them back (labels are authoritative).
    let client = lab.client()?;
    let edited = name.clone();
    measurelab_acceptance::block_on(async move {
        client
            .set_node_labels(
                &edited,
                [("role".to_string(), "hand-edited".to_string())].into(),
            )
            .await?;
        Ok(())
    })?;
    let (code, output) = tf.plan_exit_code()?;
    assert_eq!(
        code,
        2,
        "drift must show as a change:\n{}",
        describe(&output)
    );
    tf.apply()?;
    assert_eq!(labels_on_controller(&lab, &name)?.len(), 2);

    tf.destroy()?;
    assert!(labels_on_controller(&lab, &name)?.is_empty());
    Ok(())
}

#[test]
fn acc_measurement_node_replace() -> anyhow::Result<()> {
    if !acc_enabled("acc_measurement_node_replace") {
        return Ok(());
    }
    let lab = Lab::up(2)?;
    let (first, second) = (lab.node_name(1), lab.node_name(2));
    let tf = lab.terraform()?;
    tf.write("main.tf", &node_config(&first, r#"    role = "probe""#))?;
    tf.init()?;
    tf.apply()?;

    tf.write("main.tf", &node_config(&second, r#"    role = "probe""#))?;
    let plan = tf.saved_plan_json("replace.tfplan")?;
    assert_eq!(
        planned_actions(&plan, ADDRESS),
        vec!["delete", "create"],
        "{plan}"
    );
    tf.ok(&["apply", "-input=false", "replace.tfplan"])?;
    assert!(
        labels_on_controller(&lab, &first)?.is_empty(),
        "old node must be released"
    );
    assert_eq!(
        labels_on_controller(&lab, &second)?,
        vec![("role".to_string(), "probe".to_string())]
    );
    tf.destroy()?;
    Ok(())
}

#[test]
fn acc_measurement_node_import() -> anyhow::Result<()> {
    if !acc_enabled("acc_measurement_node_import") {
        return Ok(());
    }
    let lab = Lab::up(2)?;
    let name = lab.node_name(2);
    let tf = lab.terraform()?;
    tf.write("main.tf", &node_config(&name, r#"    role = "probe""#))?;
    tf.init()?;
    tf.apply()?;
    let before = tf.state_json()?;

    tf.ok(&["state", "rm", ADDRESS])?;
    assert!(tf.state_list()?.is_empty());
    // The node keeps its labels: `state rm` does not touch the controller.
    assert_eq!(
        labels_on_controller(&lab, &name)?,
        vec![("role".to_string(), "probe".to_string())]
    );

    tf.write(
        "import.tf",
        &format!("import {{\n  to = {ADDRESS}\n  id = \"{name}\"\n}}\n"),
    )?;
    let plan = tf.saved_plan_json("import.tfplan")?;
    let change = plan["resource_changes"]
        .as_array()
        .and_then(|changes| changes.iter().find(|c| c["address"] == ADDRESS))
        .cloned()
        .unwrap_or_default();
    assert!(
        change["change"]["importing"].is_object(),
        "import expected: {change}"
    );
    assert_eq!(planned_actions(&plan, ADDRESS), vec!["no-op"], "{plan}");
    tf.ok(&["apply", "-input=false", "import.tfplan"])?;
    tf.remove("import.tf")?;

    let after = tf.state_json()?;
    for attribute in [
        "id",
        "name",
        "labels",
        "registered_at",
        "agent_version",
        "management_address",
    ] {
        assert_eq!(
            resource_values(&after, ADDRESS).map(|v| v[attribute].clone()),
            resource_values(&before, ADDRESS).map(|v| v[attribute].clone()),
            "{attribute} differs after import"
        );
    }
    let (code, output) = tf.plan_exit_code()?;
    assert_eq!(
        code,
        0,
        "plan after import must be empty:\n{}",
        describe(&output)
    );
    tf.destroy()?;
    assert!(labels_on_controller(&lab, &name)?.is_empty());
    Ok(())
}

#[test]
fn acc_measurement_node_bad_value() -> anyhow::Result<()> {
    if !acc_enabled("acc_measurement_node_bad_value") {
        return Ok(());
    }
    let lab = Lab::up(2)?;
    let name = lab.node_name(1);
    let labels_before = labels_on_controller(&lab, &name)?;
    let tf = lab.terraform()?;
    tf.write("main.tf", &node_config(&name, r#"    "bad key" = "x""#))?;
    tf.init()?;
    let output = tf.run(&["plan", "-input=false"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(stderr.contains("Invalid label"), "{stderr}");
    assert!(stderr.contains(r#"label key "bad key""#), "{stderr}");
    // Terraform quotes the offending line of main.tf: the diagnostic carries
    // the attribute path labels["bad key"].
    assert!(
        stderr.contains(r#""bad key" = "x""#),
        "must point at the attribute:\n{stderr}"
    );

    tf.write(
        "main.tf",
        &format!(
            "{PROVIDER_BLOCK}\nresource \"measurelab_measurement_node\" \"probe\" {{\n  name = \"{name}\"\n  timeouts {{\n    create = \"5 minutes\"\n  }}\n}}\n"
        ),
    )?;
    let output = tf.run(&["plan", "-input=false"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(stderr.contains("Invalid timeout"), "{stderr}");
    assert!(
        stderr.contains(r#"create = "5 minutes""#),
        "must point at timeouts.create:\n{stderr}"
    );
    assert_eq!(
        labels_on_controller(&lab, &name)?,
        labels_before,
        "nothing may be applied"
    );
    Ok(())
}

#[test]
fn acc_measurement_node_wait_timeout() -> anyhow::Result<()> {
    if !acc_enabled("acc_measurement_node_wait_timeout") {
        return Ok(());
    }
    let lab = Lab::up(2)?;
    let tf = lab.terraform()?;
    tf.write(
        "main.tf",
        &format!(
            "{PROVIDER_BLOCK}\nresource \"measurelab_measurement_node\" \"probe\" {{\n  name = \"n9\"\n  timeouts {{\n    create = \"3s\"\n  }}\n}}\n",
        ),
    )?;
    tf.init()?;
    let started = Instant::now();
    let output = tf.run(&["apply", "-auto-approve", "-input=false"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(stderr.contains("did not come online in time"), "{stderr}");
    assert!(stderr.contains("not registered"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(tf.state_list()?.is_empty(), "no state may be written");
    Ok(())
}

#[test]
fn acc_measurement_node_interrupt() -> anyhow::Result<()> {
    if !acc_enabled("acc_measurement_node_interrupt") {
        return Ok(());
    }
    // SIGINT to the whole group reaches terraform and its provider plugin
    // as Ctrl-C in a terminal would.
    interrupted_wait_stops_without_state(interrupt_group)
}

#[test]
fn acc_measurement_node_stop_provider() -> anyhow::Result<()> {
    if !acc_enabled("acc_measurement_node_stop_provider") {
        return Ok(());
    }
    // SIGINT to terraform alone: the plugin learns of the interrupt only
    // through StopProvider, as under a CI runner or an IDE that signals
    // terraform's pid.
    interrupted_wait_stops_without_state(interrupt_process)
}

/// Applies a node that never comes online, interrupts terraform once the
/// provider is creating it (waiting for the node) with `interrupt` (given terraform's pid, which leads its own
/// process group), and checks that the wait ends at once with a clear
/// error and no state.
fn interrupted_wait_stops_without_state(
    interrupt: fn(u32) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let lab = Lab::up(2)?;
    let tf = lab.terraform()?;
    tf.write(
        "main.tf",
        &format!(
            "{PROVIDER_BLOCK}\nresource \"measurelab_measurement_node\" \"probe\" {{\n  name = \"n9\"\n}}\n",
        ),
    )?;
    tf.init()?;
    // Its own process group, so the signal reaches nothing else.
    let mut child = tf
        .command(&["apply", "-auto-approve", "-input=false", "-no-color"])
        .process_group(0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // Terraform prints "Creating..." as it hands the resource to the
    // provider, whose create then waits for the node: interrupt from there.
    let stdout = child.stdout.take().context("terraform's stdout")?;
    let (creating_tx, creating) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains(&format!("{ADDRESS}: Creating...")) {
                let _ = creating_tx.send(());
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let started = creating.recv_timeout(Duration::from_secs(120));
    let interrupted = Instant::now();
    interrupt(child.id())?;
    let mut output = child.wait_with_output()?;
    output.stdout = reader
        .join()
        .map_err(|_| anyhow::anyhow!("stdout reader panicked"))?
        .into_bytes();
    anyhow::ensure!(
        started.is_ok(),
        "terraform never started creating {ADDRESS}:\n{}",
        describe(&output)
    );
    let stopped_after = interrupted.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(
        stderr.contains("Stopped while waiting for the node"),
        "{}",
        describe(&output)
    );
    assert!(
        stopped_after < Duration::from_secs(20),
        "took {stopped_after:?} to stop (default timeout is 5m)"
    );
    assert!(tf.state_list()?.is_empty(), "no state may be written");
    Ok(())
}

#[test]
fn acc_measurement_node_controller_down() -> anyhow::Result<()> {
    if !acc_enabled("acc_measurement_node_controller_down") {
        return Ok(());
    }
    let lab = Lab::up(2)?;
    let name = lab.node_name(1);
    let labels_before = labels_on_controller(&lab, &name)?;
    // Same lab config, but the endpoint points at a port where no controller listens.
    let down = vec![
        (
            "MEASURELAB_ENDPOINT".to_string(),
            format!("http://127.0.0.1:{}", closed_port()?),
        ),
        ("MEASURELAB_TOKEN".to_string(), lab.token.clone()),
    ];
    let tf = Terraform::new(&lab.tfrc, &down)?;
    tf.write("main.tf", &node_config(&name, r#"    role = "probe""#))?;
    tf.init()?;
    let output = tf.run(&["apply", "-auto-approve", "-input=false"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(
        stderr.contains("Cannot reach the measurelab controller"),
        "{stderr}"
    );
    assert!(stderr.contains("no state was written"), "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
    assert!(tf.state_list()?.is_empty(), "no state may be written");
    assert_eq!(
        labels_on_controller(&lab, &name)?,
        labels_before,
        "nothing may be half-applied"
    );

    // A resource already in state survives a refresh while the controller is down.
    let up = lab.terraform()?;
    up.write("main.tf", &node_config(&name, r#"    role = "probe""#))?;
    up.init()?;
    up.apply()?;
    let state_file = up.dir.path().join("terraform.tfstate");
    std::fs::copy(&state_file, tf.dir.path().join("terraform.tfstate"))?;
    let output = tf.run(&["plan", "-input=false"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("Cannot reach the measurelab controller"),
        "{stderr}"
    );
    assert_eq!(
        tf.state_list()?,
        vec![ADDRESS.to_string()],
        "refresh failure must keep the resource"
    );
    up.destroy()?;
    Ok(())
}

/// `terraform init` + a local module + `terraform test`: the workflow the
/// filesystem mirror (rather than dev_overrides) exists for.
#[test]
fn acc_measurement_node_terraform_test() -> anyhow::Result<()> {
    if !acc_enabled("acc_measurement_node_terraform_test") {
        return Ok(());
    }
    let lab = Lab::up(2)?;
    let tf = lab.terraform()?;
    std::fs::create_dir_all(tf.dir.path().join("probe"))?;
    std::fs::create_dir_all(tf.dir.path().join("tests"))?;
    tf.write(
        "probe/main.tf",
        r#"terraform {
  required_providers {
    measurelab = {
      source = "measurelab.local/measurelab/measurelab"
    }
  }
}

variable "node" { type = string }
variable "role" { type = string }

resource "measurelab_measurement_node" "this" {
  name   = var.node
  labels = { role = var.role }
}

output "status" { value = measurelab_measurement_node.this.status }
output "labels" { value = measurelab_measurement_node.this.labels }
"#,
    )?;
    tf.write(
        "main.tf",
        &format!(
            r#"{PROVIDER_BLOCK}
variable "role" {{
  type    = string
  default = "probe"
}}

module "probe" {{
  source = "./probe"
  node   = "n2"
  role   = var.role
}}

output "status" {{ value = module.probe.status }}
output "role"   {{ value = module.probe.labels["role"] }}
"#
        ),
    )?;
    tf.write(
        "tests/probe.tftest.hcl",
        r#"run "adopt" {
  assert {
    condition     = output.status == "online"
    error_message = "the adopted node must be online"
  }
  assert {
    condition     = output.role == "probe"
    error_message = "the node must carry role=probe"
  }
}

run "relabel" {
  variables {
    role = "mscs"
  }
  assert {
    condition     = output.role == "mscs"
    error_message = "the label must change in place"
  }
}
"#,
    )?;
    tf.init()?;
    let output = tf.ok(&["test"])?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("2 passed, 0 failed"),
        "{}",
        describe(&output)
    );
    // terraform test destroys what it created: the node is released.
    assert!(labels_on_controller(&lab, "n2")?.is_empty());
    Ok(())
}

/// A node that stops heartbeating turns `offline` on refresh: a warning, never
/// a diff (status and last_heartbeat are refreshed, not planned).
#[test]
fn acc_measurement_node_offline() -> anyhow::Result<()> {
    if !acc_enabled("acc_measurement_node_offline") {
        return Ok(());
    }
    let lab = Lab::up_with(
        2,
        &[
            "--heartbeat-interval-seconds",
            "1",
            "--offline-after-seconds",
            "3",
        ],
    )?;
    let name = lab.node_name(1);
    let tf = lab.terraform()?;
    tf.write("main.tf", &node_config(&name, r#"    role = "probe""#))?;
    tf.init()?;
    tf.apply()?;

    lab.stop_agent(&name)?;
    lab.wait_status(
        &name,
        measurelab_api::http::NodeStatus::Offline,
        Duration::from_secs(30),
    )?;
    let (code, output) = tf.plan_exit_code()?;
    assert_eq!(
        code,
        0,
        "an offline node is not a change:\n{}",
        describe(&output)
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains(&format!("Node \"{name}\" is offline")),
        "{text}"
    );
    tf.ok(&["apply", "-refresh-only", "-auto-approve"])?;
    let state = tf.state_json()?;
    assert_eq!(
        resource_values(&state, ADDRESS).map(|v| v["status"].clone()),
        Some("offline".into())
    );
    tf.destroy()?;
    Ok(())
}
