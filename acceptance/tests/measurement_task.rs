//! Acceptance tests of `measurelab_program`, `measurelab_deployment`,
//! `measurelab_measurement_task` and the `measurelab_results` /
//! `measurelab_appliances` data sources, written with the resources directly
//! (no module): a platform once-task on two nodes returns its result at apply.

use std::path::Path;
use std::process::Command;

use measurelab_acceptance::service_host::{assert_clean_receiver, ServiceHostTask};
use measurelab_acceptance::{
    acc_enabled, block_on, describe, mcast_slice_hcl, planned_actions, resource_values, Lab,
    PROVIDER_BLOCK,
};

fn config(bin: &Path, rate_pps: u32) -> String {
    let slice = mcast_slice_hcl("acc-task", "acc-mcast", bin);
    format!(
        r#"{PROVIDER_BLOCK}
data "measurelab_appliances" "ns" {{
  backend = "namespace"
}}

{slice}
resource "measurelab_measurement_task" "once" {{
  name             = "acc-once"
  platform         = measurelab_virtual_platform.t.name
  source           = "a"
  duration_seconds = 5
  rate_pps         = {rate_pps}
  timeouts {{
    create = "3m"
  }}
  depends_on = [measurelab_deployment.mscs]
}}

data "measurelab_results" "once" {{
  task       = measurelab_measurement_task.once.name
  depends_on = [measurelab_measurement_task.once]
}}

output "receivers" {{
  value = measurelab_measurement_task.once.receivers
}}

output "history" {{
  value = length(data.measurelab_results.once.results)
}}

output "appliances" {{
  value = data.measurelab_appliances.ns.names
}}
"#
    )
}

#[test]
fn acc_measurement_task_basic() -> anyhow::Result<()> {
    if !acc_enabled("acc_measurement_task_basic") {
        return Ok(());
    }
    let lab = Lab::up(2)?;
    let tf = lab.terraform()?;
    let bin = tf.dir.path().join("bin");
    std::fs::create_dir_all(&bin)?;
    lab.strip_mcast_binaries_into(&bin)?;
    tf.write("main.tf", &config(&bin, 200))?;
    tf.init()?;
    tf.apply()?;

    let outputs: serde_json::Value = serde_json::from_slice(&tf.ok(&["output", "-json"])?.stdout)?;
    let receivers = outputs["receivers"]["value"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(receivers.len(), 1, "source a, one receiver: {receivers:#?}");
    let b = &receivers[0];
    assert_eq!(b["name"], "b");
    assert_eq!(b["status"], "ok", "{b:#}");
    assert_eq!(outputs["history"]["value"], 1, "{outputs:#}");
    assert!(
        outputs["appliances"]["value"]
            .as_array()
            .is_some_and(|a| a.iter().any(|n| n == "namespace")),
        "{outputs:#}"
    );

    let state = tf.state_json()?;
    let task = resource_values(&state, "measurelab_measurement_task.once")
        .cloned()
        .unwrap_or_default();
    let task_id = task["id"].as_str().unwrap_or_default().to_string();
    let result_id = task["result_id"].as_str().unwrap_or_default().to_string();
    assert_eq!(task["status"], "completed", "{task:#}");
    let doc: serde_json::Value =
        serde_json::from_str(task["result_json"].as_str().unwrap_or("{}"))?;
    assert_eq!(doc["task_id"], task_id.as_str());
    assert_eq!(doc["source_point"], "a");
    // 5 s at 200 pps.
    assert_clean_receiver(b, &doc["source"]["report"], 1000);
    let deployment = resource_values(&state, "measurelab_deployment.mscs")
        .cloned()
        .unwrap_or_default();
    assert_eq!(deployment["runs"][0]["status"], "running", "{deployment:#}");

    let (code, output) = tf.plan_exit_code()?;
    assert_eq!(
        code,
        0,
        "plan after apply must be empty:\n{}",
        describe(&output)
    );

    // A changed task argument replaces the task (a new run, a new result).
    tf.write("main.tf", &config(&bin, 100))?;
    let plan = tf.saved_plan_json("change.tfplan")?;
    assert_eq!(
        planned_actions(&plan, "measurelab_measurement_task.once"),
        vec!["delete", "create"]
    );
    tf.apply()?;
    let state = tf.state_json()?;
    let replaced = resource_values(&state, "measurelab_measurement_task.once")
        .cloned()
        .unwrap_or_default();
    assert_ne!(replaced["result_id"].as_str(), Some(result_id.as_str()));
    assert_eq!(replaced["rate_pps"], 100);

    // Import by name reads the task and its latest result.
    tf.ok(&["state", "rm", "measurelab_measurement_task.once"])?;
    tf.ok(&["import", "measurelab_measurement_task.once", "acc-once"])?;
    let imported = resource_values(&tf.state_json()?, "measurelab_measurement_task.once")
        .cloned()
        .unwrap_or_default();
    assert_eq!(imported["result_id"], replaced["result_id"]);

    // Deleted outside Terraform: the next plan creates it again.
    let client = lab.client()?;
    block_on(async { Ok(client.delete_task("acc-once").await?) })?;
    let plan = tf.saved_plan_json("gone.tfplan")?;
    assert_eq!(
        planned_actions(&plan, "measurelab_measurement_task.once"),
        vec!["create"]
    );

    tf.destroy()?;
    let programs: serde_json::Value = block_on(async {
        Ok(client
            .request::<(), serde_json::Value>(reqwest::Method::GET, "/v1/programs", None)
            .await?)
    })?;
    assert_eq!(programs["programs"], serde_json::json!([]), "{programs:#}");
    Ok(())
}

#[test]
fn acc_measurement_task_bad_values() -> anyhow::Result<()> {
    if !acc_enabled("acc_measurement_task_bad_values") {
        return Ok(());
    }
    let lab = Lab::up(1)?;
    let tf = lab.terraform()?;
    tf.write(
        "main.tf",
        &format!(
            r#"{PROVIDER_BLOCK}
resource "measurelab_measurement_task" "bad" {{
  name     = "bad"
  platform = "nowhere"
  group    = "10.1.2.3"
  rate_pps = 0
}}

resource "measurelab_program" "missing" {{
  name   = "missing"
  source = "/nonexistent/program"
}}

resource "measurelab_deployment" "bad" {{
  program  = "x"
  vms      = []
  wait_for = "forever"
}}
"#
        ),
    )?;
    tf.init()?;
    let output = tf.run(&["plan", "-input=false"])?;
    let text = describe(&output);
    assert!(!output.status.success(), "{text}");
    for needle in [
        "is not an IPv4 multicast address",
        "`rate_pps` must be a whole number from 1 to 100000",
        "/nonexistent/program",
        "`vms` is empty",
        "\"forever\" is not a goal",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    // Each diagnostic points at its attribute.
    for line in [
        "group    = \"10.1.2.3\"",
        "rate_pps = 0",
        "source = \"/nonexistent/program\"",
        "wait_for = \"forever\"",
    ] {
        assert!(text.contains(line), "no diagnostic on {line:?}:\n{text}");
    }
    Ok(())
}

fn service_host_config<'a>(nodes: &'a [&'a str]) -> (String, ServiceHostTask<'a>) {
    let task = ServiceHostTask {
        resource: "quick",
        name: "acc-svc-once",
        nodes,
        rate_pps: 300,
        group: "239.192.7.1",
        port: 50070,
    };
    (format!("{PROVIDER_BLOCK}{}", task.hcl(None)), task)
}

/// A once service_host task over three nodes' service hosts: real
/// namespaces, real OVS (each node's br-int, the service VLAN over the lab
/// switch), real multicast; `apply` returns every receiver's counts.
#[test]
fn acc_measurement_task_service_host() -> anyhow::Result<()> {
    if !acc_enabled("acc_measurement_task_service_host") {
        return Ok(());
    }
    let lab = Lab::up(3)?;
    let tf = lab.terraform()?;
    let (config, task) = service_host_config(&["n1", "n2", "n3"]);
    tf.write("main.tf", &config)?;
    tf.init()?;
    tf.apply()?;
    task.check_run(&tf)?;

    // The result is stored under the task like an MSCS result: once, in the
    // history and in the CSV export (one row per receiver).
    let client = lab.client()?;
    let history = block_on(async { Ok(client.list_results("task=acc-svc-once").await?) })?;
    assert_eq!(history.len(), 1, "{history:#?}");
    let csv: String = block_on(async {
        let response = lab
            .http_client()?
            .get(format!(
                "{}/v1/results/export?task=acc-svc-once&format=csv",
                lab.endpoint
            ))
            .bearer_auth(&lab.token)
            .send()
            .await?;
        Ok(response.error_for_status()?.text().await?)
    })?;
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(
        csv.lines().nth(1).unwrap_or_default().contains(",n2,"),
        "{csv}"
    );

    let (code, output) = tf.plan_exit_code()?;
    assert_eq!(
        code,
        0,
        "plan after apply must be empty:\n{}",
        describe(&output)
    );

    // A node that is not registered is refused, naming the attribute.
    tf.write("main.tf", &service_host_config(&["n1", "n9"]).0)?;
    let output = tf.run(&["apply", "-input=false", "-auto-approve"])?;
    let text = describe(&output);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("nodes[1]"), "{text}");
    tf.destroy()?;
    Ok(())
}

/// SIGKILL of the orchestrating node agent in the middle of a periodic
/// service_host run: the schedule resumes after `lab up` restarts it, the
/// source keeps rotating, no result is stored twice and every stored run has
/// real counts.
#[test]
fn acc_measurement_task_service_host_restart() -> anyhow::Result<()> {
    if !acc_enabled("acc_measurement_task_service_host_restart") {
        return Ok(());
    }
    let lab_flags = ["--heartbeat-interval-seconds", "1"];
    let lab = Lab::up_with(3, &lab_flags)?;
    let tf = lab.terraform()?;
    tf.write(
        "main.tf",
        &format!(
            r#"{PROVIDER_BLOCK}
resource "measurelab_measurement_task" "every" {{
  name             = "acc-svc-periodic"
  mode             = "service_host"
  nodes            = ["n1", "n2", "n3"]
  schedule         = "periodic"
  interval_seconds = 10
  duration_seconds = 3
  rate_pps         = 200
  group            = "239.192.7.2"
  port             = 50072
}}
"#
        ),
    )?;
    tf.init()?;
    tf.apply()?;

    let log = lab.dir.path().join("logs").join("n1-agent.log");
    let runs_started = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("service task run starts")
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while runs_started() < 2 {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the second periodic run never started:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // In the middle of the 3 s run: its probes are reaching the receivers,
    // by the kernel's count of UDP datagrams delivered in the nodes'
    // namespaces (the source rotates, so all three are summed; 50 is an
    // eighth of a second's worth at 200 pps to each of two receivers).
    let received = || -> anyhow::Result<u64> {
        (1..=3)
            .map(|k| udp_in_datagrams(&format!("{}-n{k}", lab.name)))
            .sum()
    };
    let before = received()?;
    while received()? < before + 50 {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the second run's probes never reached a receiver:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = std::fs::read_to_string(lab.dir.path().join("pids").join("n1-agent.pid"))?;
    let status = Command::new("kill").args(["-KILL", pid.trim()]).status()?;
    anyhow::ensure!(status.success(), "kill -KILL {} failed", pid.trim());
    // Really mid-run: the second run had not finished.
    let finished = std::fs::read_to_string(&log)?
        .matches("service task run finished")
        .count();
    assert_eq!(finished, 1, "the kill came too late to hit a run in flight");
    let mut up = vec!["lab", "up", "--nodes", "3", "--http-port", "0"];
    up.extend(lab_flags);
    lab.measurelab(&up)?;

    let client = lab.client()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let history = loop {
        let history = block_on(async { Ok(client.list_results("task=acc-svc-periodic").await?) })?;
        if history.len() >= 3 {
            break history;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "fewer than 3 results after the restart: {history:#?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    let run_ids: std::collections::BTreeSet<&str> = history
        .iter()
        .filter_map(|r| r.document["run_id"].as_str())
        .collect();
    assert_eq!(
        run_ids.len(),
        history.len(),
        "a run stored twice: {history:#?}"
    );
    let sources: Vec<&str> = history
        .iter()
        .filter_map(|r| r.document["source_point"].as_str())
        .collect();
    // The killed run (source n2) stored nothing, so n2 is the source again.
    assert_eq!(&sources[..3], ["n1", "n2", "n3"], "{history:#?}");
    for record in &history {
        assert_eq!(record.document["status"], "ok", "{:#}", record.document);
        for receiver in record.document["receivers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            assert_clean_receiver(
                &receiver["metrics"],
                &record.document["source"]["report"],
                600,
            );
        }
    }
    tf.destroy()?;
    Ok(())
}

/// `Udp: InDatagrams` of network namespace `ns`: datagrams its sockets read.
fn udp_in_datagrams(ns: &str) -> anyhow::Result<u64> {
    let output = Command::new("ip")
        .args(["netns", "exec", ns, "cat", "/proc/net/snmp"])
        .output()?;
    anyhow::ensure!(output.status.success(), "{}", describe(&output));
    let snmp = String::from_utf8_lossy(&output.stdout);
    let mut udp = snmp.lines().filter(|line| line.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        anyhow::bail!("no Udp lines in /proc/net/snmp of {ns}");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "InDatagrams")
        .and_then(|(_, value)| value.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no Udp InDatagrams in {ns}"))
}
