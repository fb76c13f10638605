//! Platform vs nodes (issue 14 §4): a platform task with
//! `compare_with_service_host = true` on a lab with no impairment. The
//! platform run (VM a on n1 to VM b on n2, through the slice's VLAN) is
//! followed by the same probe pattern between n1's and n2's service hosts;
//! loss must agree within the binomial bound and median delay within 0.2 ms.

use std::path::Path;

use measurelab_acceptance::{
    acc_enabled, describe, mcast_slice_hcl, resource_values, Lab, PROVIDER_BLOCK,
};

fn config(bin: &Path) -> String {
    let slice = mcast_slice_hcl("acc-compare", "acc-cmp", bin);
    format!(
        r#"{PROVIDER_BLOCK}
{slice}
resource "measurelab_measurement_task" "checked" {{
  name                      = "acc-compare"
  platform                  = measurelab_virtual_platform.t.name
  source                    = "a"
  duration_seconds          = 5
  rate_pps                  = 200
  group                     = "239.192.7.9"
  port                      = 50079
  compare_with_service_host = true
  timeouts {{
    create = "4m"
  }}
  depends_on = [measurelab_deployment.mscs]
}}

data "measurelab_results" "checked" {{
  task       = measurelab_measurement_task.checked.name
  depends_on = [measurelab_measurement_task.checked]
}}

output "comparison" {{
  value = measurelab_measurement_task.checked.comparison
}}

output "history_comparison" {{
  value = data.measurelab_results.checked.results[0].comparison
}}
"#
    )
}

#[test]
fn acc_platform_vs_service_host_without_impairment() -> anyhow::Result<()> {
    if !acc_enabled("acc_platform_vs_service_host_without_impairment") {
        return Ok(());
    }
    let lab = Lab::up(2)?;
    let tf = lab.terraform()?;
    let bin = tf.dir.path().join("bin");
    std::fs::create_dir_all(&bin)?;
    lab.strip_mcast_binaries_into(&bin)?;
    tf.write("main.tf", &config(&bin))?;
    tf.init()?;
    tf.apply()?;

    let outputs: serde_json::Value = serde_json::from_slice(&tf.ok(&["output", "-json"])?.stdout)?;
    let comparison = &outputs["comparison"]["value"];
    eprintln!("comparison: {comparison:#}");
    assert_eq!(comparison["status"], "completed", "{comparison:#}");
    assert_eq!(comparison["source_node"], "n1", "{comparison:#}");
    assert_eq!(
        &outputs["history_comparison"]["value"], comparison,
        "the data source shows the same comparison"
    );
    let receivers = comparison["receivers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(receivers.len(), 1, "{comparison:#}");
    let b = &receivers[0];
    assert_eq!(b["name"], "b");
    assert_eq!(b["node"], "n2");
    assert_eq!(b["service_host_point"], "n2", "{b:#}");

    // The figures behind the verdicts, from the stored document.
    let state = tf.state_json()?;
    let task = resource_values(&state, "measurelab_measurement_task.checked")
        .cloned()
        .unwrap_or_default();
    let doc: serde_json::Value =
        serde_json::from_str(task["result_json"].as_str().unwrap_or("{}"))?;
    let entry = &doc["comparison"]["receivers"][0];
    let (platform, service) = (&entry["platform"], &entry["service_host"]);
    for side in [platform, service] {
        // 5 s at 200 pps; a loaded machine may send fewer (schedule slips), but
        // half proves the run lasted.
        let sent = side["packets_sent"].as_u64().unwrap_or(0);
        assert!(sent >= 500, "sent {sent}: {entry:#}");
    }
    // Loss: the difference lies within the z = 3 two-proportion bound,
    // recomputed here from the counts.
    let (lp, np) = (
        platform["packets_lost"].as_u64().unwrap_or(u64::MAX) as f64,
        platform["packets_sent"].as_u64().unwrap_or(0) as f64,
    );
    let (ls, ns) = (
        service["packets_lost"].as_u64().unwrap_or(u64::MAX) as f64,
        service["packets_sent"].as_u64().unwrap_or(0) as f64,
    );
    let p = (lp + ls) / (np + ns);
    let bound = 3.0 * (p * (1.0 - p) * (1.0 / np + 1.0 / ns)).sqrt();
    assert!(
        (lp / np - ls / ns).abs() <= bound,
        "loss {} vs {} exceeds the bound {bound}: {entry:#}",
        lp / np,
        ls / ns
    );
    assert_eq!(b["loss_within_bound"], true, "{b:#}");
    // Median one-way delay within 0.2 ms.
    let dp = platform["delay_median_us"].as_f64().unwrap_or(f64::NAN);
    let ds = service["delay_median_us"].as_f64().unwrap_or(f64::NAN);
    assert!(
        (dp - ds).abs() <= 200.0,
        "median delay {dp} us on the platform vs {ds} us on the service hosts: {entry:#}"
    );
    assert_eq!(b["delay_within_bound"], true, "{b:#}");
    assert_eq!(comparison["consistent"], true, "{comparison:#}");

    let (code, output) = tf.plan_exit_code()?;
    assert_eq!(
        code,
        0,
        "plan after apply must be empty:\n{}",
        describe(&output)
    );
    tf.destroy()?;
    Ok(())
}
