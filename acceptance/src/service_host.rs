//! A once `service_host` measurement task (the nodes' own measurement
//! points, no platform) as HCL, and the checks of its run. Shared by every
//! lab that runs one (this build's nodes, nodes of mixed releases), so a
//! lab variant cannot pass on looser figures.

use crate::{resource_values, Terraform};

/// How long each run lasts: short, so a lab runs several tasks quickly.
const DURATION_SECONDS: u32 = 3;

/// One once `service_host` task, its results data source and its outputs
/// (`<resource>_receivers`, `<resource>_history`).
pub struct ServiceHostTask<'a> {
    /// The resource's local name (`measurelab_measurement_task.<resource>`).
    pub resource: &'a str,
    /// The task's `name`.
    pub name: &'a str,
    /// The task's `nodes`: the first orchestrates and is the source, the
    /// others receive.
    pub nodes: &'a [&'a str],
    pub rate_pps: u32,
    /// The task's multicast group and port; tasks of one lab use distinct
    /// ones.
    pub group: &'a str,
    pub port: u16,
}

impl ServiceHostTask<'_> {
    /// The task's HCL (without the provider block); `depends_on` names a
    /// resource address it waits for, so two tasks run one after the other.
    pub fn hcl(&self, depends_on: Option<&str>) -> String {
        let ServiceHostTask {
            resource,
            name,
            rate_pps,
            group,
            port,
            ..
        } = self;
        let nodes = self
            .nodes
            .iter()
            .map(|n| format!("{n:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let depends_on = depends_on
            .map(|address| format!("  depends_on       = [{address}]\n"))
            .unwrap_or_default();
        format!(
            r#"
# No platform, no VMs, no programs: the nodes' service hosts run the task.
resource "measurelab_measurement_task" "{resource}" {{
  name             = "{name}"
  mode             = "service_host"
  nodes            = [{nodes}]
  duration_seconds = {DURATION_SECONDS}
  rate_pps         = {rate_pps}
  group            = "{group}"
  port             = {port}
  timeouts {{
    create = "2m"
  }}
{depends_on}}}

data "measurelab_results" "{resource}" {{
  task       = measurelab_measurement_task.{resource}.name
  depends_on = [measurelab_measurement_task.{resource}]
}}

output "{resource}_receivers" {{
  value = measurelab_measurement_task.{resource}.receivers
}}

output "{resource}_history" {{
  value = length(data.measurelab_results.{resource}.results)
}}
"#
        )
    }

    /// After `apply`: the run completed with one clean result from every
    /// receiver, in node order, each counting what the source says it sent,
    /// and the task's history holds that one result.
    pub fn check_run(&self, tf: &Terraform) -> anyhow::Result<()> {
        let outputs: serde_json::Value =
            serde_json::from_slice(&tf.ok(&["output", "-json"])?.stdout)?;
        let receivers = outputs[format!("{}_receivers", self.resource)]["value"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        // The first listed node is the first source; the others receive.
        let names: Vec<&str> = receivers
            .iter()
            .filter_map(|r| r["name"].as_str())
            .collect();
        anyhow::ensure!(
            names == self.nodes[1..],
            "{}: receivers {names:?}, expected {:?}: {receivers:#?}",
            self.name,
            &self.nodes[1..]
        );
        for receiver in &receivers {
            anyhow::ensure!(receiver["status"] == "ok", "{}: {receiver:#}", self.name);
        }
        let history = &outputs[format!("{}_history", self.resource)]["value"];
        anyhow::ensure!(history == 1, "{}: {outputs:#}", self.name);

        let state = tf.state_json()?;
        let address = format!("measurelab_measurement_task.{}", self.resource);
        let task = resource_values(&state, &address)
            .cloned()
            .unwrap_or_default();
        anyhow::ensure!(task["status"] == "completed", "{}: {task:#}", self.name);
        let doc: serde_json::Value =
            serde_json::from_str(task["result_json"].as_str().unwrap_or("{}"))?;
        anyhow::ensure!(doc["task_id"] == task["id"], "{}: {doc:#}", self.name);
        anyhow::ensure!(
            doc["source_point"] == self.nodes[0],
            "{}: {doc:#}",
            self.name
        );
        for receiver in &receivers {
            assert_clean_receiver(
                receiver,
                &doc["source"]["report"],
                u64::from(DURATION_SECONDS * self.rate_pps),
            );
        }
        Ok(())
    }
}

/// A receiver on a clean path: it got what the source sent, give or take
/// 1 %; and the source ran for the whole run, by its own report (`sender`,
/// the result's `source.report`): the probes it sent, failed to send and
/// skipped when its machine stalled it make the nominal count, to within one
/// slot. A sender of release 0.1.0 reports no skipped slots; then only the
/// counts against each other are checked.
pub fn assert_clean_receiver(
    receiver: &serde_json::Value,
    sender: &serde_json::Value,
    nominal: u64,
) {
    let report: measurelab_api::result::SenderReport = serde_json::from_value(sender.clone())
        .unwrap_or_else(|e| panic!("the source's report: {e}: {sender:#}"));
    let sent = receiver["packets_sent"].as_u64().unwrap_or(0);
    assert_eq!(sent, report.packets_sent, "{receiver:#} {sender:#}");
    if let Some(accounted) = report.slots_accounted() {
        assert!(
            accounted.abs_diff(nominal) <= 1,
            "sent {sent}, failed {}, skipped {:?}: {accounted} slots of {nominal}: {sender:#}",
            report.send_errors,
            report.slots_skipped
        );
    }
    let received = receiver["packets_received"].as_u64().unwrap_or(0);
    assert!(
        received as f64 >= 0.99 * sent as f64,
        "received {received} of {sent}: {receiver:#}"
    );
    assert!(
        receiver["loss_ratio"].as_f64().unwrap_or(1.0) < 0.01,
        "{receiver:#}"
    );
}
