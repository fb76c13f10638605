//! A periodic multicast task kept running on a lab of two nodes while a test
//! disturbs the lab (an agent upgrade, a controller outage), and the checks
//! of its run history afterwards: every run stored once, none lost.

use std::collections::BTreeSet;

use measurelab_api::client::Client;
use measurelab_api::http::ResultRecord;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::{block_on, workspace_root, Lab, Terraform};

/// Seconds between two runs.
pub const INTERVAL_SECONDS: u64 = 10;

/// The applied `multicast-measurement` module and the name of its task.
pub struct PeriodicTask {
    pub tf: Terraform,
    pub task: String,
}

/// Applies, as the lab's member, the module under `name` with the MSCS on
/// n1 and a point on each of n1 and n2, sending 3 s runs to `group` every
/// [`INTERVAL_SECONDS`]. Its task is `<name>-periodic`.
pub fn apply_periodic_task(lab: &Lab, name: &str, group: &str) -> anyhow::Result<PeriodicTask> {
    let tf = lab.terraform_as(&lab.member_env)?;
    let bin_dir = tf.dir.path().join("bin");
    std::fs::create_dir_all(&bin_dir)?;
    lab.strip_mcast_binaries_into(&bin_dir)?;
    let module_dir = workspace_root().join("modules/multicast-measurement");
    let config = format!(
        r#"
module "multicast" {{
  source = {module:?}

  name             = "{name}"
  nodes            = ["n1", "n2"]
  mscs_node        = "n1"
  point_count      = 2
  mcast_point_path = "{bin}/mcast-point"
  mcast_mscs_path  = "{bin}/mcast-mscs"
  group            = "{group}"
  rate_pps         = 100
  duration_seconds = 3

  run_once                  = false
  periodic_interval_seconds = {INTERVAL_SECONDS}
}}
"#,
        module = module_dir.display().to_string(),
        bin = bin_dir.display(),
    );
    tf.write("main.tf", &config)?;
    tf.init()?;
    tf.apply()?;
    Ok(PeriodicTask {
        tf,
        task: format!("{name}-periodic"),
    })
}

impl PeriodicTask {
    /// The task's runs stored at the controller, oldest first.
    pub fn history(&self, client: &Client) -> anyhow::Result<Vec<ResultRecord>> {
        let query = format!("task={}", self.task);
        let mut records = block_on(async { Ok(client.list_results(&query).await?) })?;
        records.sort_by_key(started);
        Ok(records)
    }
}

/// When the run of `record` started.
pub fn started(record: &ResultRecord) -> OffsetDateTime {
    OffsetDateTime::parse(&record.started_at, &Rfc3339)
        .unwrap_or_else(|err| panic!("started_at {:?}: {err}", record.started_at))
}

/// Asserts that `records` (oldest first) hold every run once: no run id
/// twice, and consecutive runs one interval apart (a lost run leaves a gap
/// of two, a doubled one a gap near 0). Returns the start times.
pub fn assert_every_run_once(records: &[ResultRecord]) -> Vec<OffsetDateTime> {
    let run_ids: BTreeSet<&str> = records
        .iter()
        .map(|r| {
            r.document["run_id"]
                .as_str()
                .unwrap_or_else(|| panic!("a result without run_id: {r:#?}"))
        })
        .collect();
    assert_eq!(
        run_ids.len(),
        records.len(),
        "a run stored twice: {records:#?}"
    );
    let starts: Vec<OffsetDateTime> = records.iter().map(started).collect();
    for pair in starts.windows(2) {
        let gap = (pair[1] - pair[0]).as_seconds_f64();
        assert!(
            gap > INTERVAL_SECONDS as f64 * 0.5 && gap < INTERVAL_SECONDS as f64 * 1.5,
            "runs {gap:.1} s apart around {}: {starts:?}",
            pair[0]
        );
    }
    starts
}
