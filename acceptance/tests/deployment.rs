//! Acceptance tests of `measurelab_deployment`: create -> import-verify ->
//! update -> replace -> destroy.

use measurelab_acceptance::{
    acc_enabled, block_on, describe, planned_actions, resource_values, worker_slice_hcl, Lab,
    PROVIDER_BLOCK,
};
use measurelab_api::http::Deployment;

const ADDRESS: &str = "measurelab_deployment.ticker";

/// A program that stays up (what `wait_for = "running"` is for).
const TICKER: &str = "#!/bin/sh\necho \"ticker up: $* ($GREETING)\"\nexec sleep 2147483647\n";

/// `program` is the program's id, as in the multicast-measurement module,
/// although the controller reports a deployment's program by name: import
/// must read back what the configuration holds.
fn config(args: &str, timeouts: &str) -> String {
    let slice = worker_slice_hcl("slice-deploy");
    format!(
        r#"{PROVIDER_BLOCK}
{slice}
resource "measurelab_program" "ticker" {{
  name   = "ticker"
  source = "${{path.module}}/ticker.sh"
}}

resource "measurelab_deployment" "ticker" {{
  program  = measurelab_program.ticker.id
  vms      = [measurelab_vm.worker.id]
  args     = {args}
  env      = {{ GREETING = "hi" }}
  wait_for = "running"
{timeouts}
}}
"#
    )
}

fn deployment(lab: &Lab, id: &str) -> anyhow::Result<Deployment> {
    let client = lab.client()?;
    let id = id.to_string();
    block_on(async move { Ok(client.get_deployment(&id).await?) })
}

fn statuses(deployment: &Deployment) -> Vec<&str> {
    deployment.runs.iter().map(|r| r.status.as_str()).collect()
}

#[test]
fn acc_deployment_basic() -> anyhow::Result<()> {
    if !acc_enabled("acc_deployment_basic") {
        return Ok(());
    }
    let lab = Lab::up(1)?;
    let tf = lab.terraform()?;
    tf.write("ticker.sh", TICKER)?;
    tf.write("main.tf", &config(r#"["--every", "1"]"#, ""))?;
    tf.init()?;
    tf.apply()?;
    let state = tf.state_json()?;
    let values = resource_values(&state, ADDRESS)
        .cloned()
        .unwrap_or_default();
    let vm_id = resource_values(&state, "measurelab_vm.worker")
        .map(|v| v["id"].clone())
        .unwrap_or_default();
    let id = values["id"].as_str().unwrap_or_default().to_string();
    let stored = deployment(&lab, &id)?;
    assert_eq!(stored.program, "ticker");
    assert_eq!(stored.args, ["--every", "1"]);
    assert_eq!(stored.env.get("GREETING").map(String::as_str), Some("hi"));
    assert_eq!(
        stored
            .runs
            .iter()
            .map(|r| r.vm_id.as_str())
            .collect::<Vec<_>>(),
        vec![vm_id.as_str().unwrap_or_default()]
    );
    assert_eq!(statuses(&stored), ["running"], "create waits for running");
    let (code, output) = tf.plan_exit_code()?;
    assert_eq!(code, 0, "{}", describe(&output));

    // Import-verify: forget it, import it by id, and nothing may differ.
    tf.ok(&["state", "rm", ADDRESS])?;
    tf.write(
        "import.tf",
        &format!("import {{\n  to = {ADDRESS}\n  id = \"{id}\"\n}}\n"),
    )?;
    let plan = tf.saved_plan_json("import.tfplan")?;
    assert_eq!(
        planned_actions(&plan, ADDRESS),
        vec!["no-op"],
        "import must not plan a change: {plan}"
    );
    tf.ok(&["apply", "-input=false", "import.tfplan"])?;
    tf.remove("import.tf")?;
    let imported_state = tf.state_json()?;
    let imported = resource_values(&imported_state, ADDRESS)
        .cloned()
        .unwrap_or_default();
    for attribute in ["id", "program", "vms", "args", "env", "wait_for"] {
        assert_eq!(
            imported[attribute], values[attribute],
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

    // Update: `timeouts` only steers create, so the runs carry on.
    tf.write(
        "main.tf",
        &config(
            r#"["--every", "1"]"#,
            "  timeouts {\n    create = \"3m\"\n  }",
        ),
    )?;
    let plan = tf.saved_plan_json("update.tfplan")?;
    assert_eq!(planned_actions(&plan, ADDRESS), vec!["update"], "{plan}");
    tf.ok(&["apply", "-input=false", "update.tfplan"])?;
    let updated = deployment(&lab, &id)?;
    assert_eq!(statuses(&updated), ["running"], "update must not stop runs");
    let (code, output) = tf.plan_exit_code()?;
    assert_eq!(code, 0, "{}", describe(&output));

    // Replace: new arguments are a new deployment; the old one is stopped.
    tf.write(
        "main.tf",
        &config(
            r#"["--every", "2"]"#,
            "  timeouts {\n    create = \"3m\"\n  }",
        ),
    )?;
    let plan = tf.saved_plan_json("replace.tfplan")?;
    assert_eq!(
        planned_actions(&plan, ADDRESS),
        vec!["delete", "create"],
        "{plan}"
    );
    tf.ok(&["apply", "-input=false", "replace.tfplan"])?;
    let state = tf.state_json()?;
    let new_id = resource_values(&state, ADDRESS)
        .and_then(|v| v["id"].as_str())
        .unwrap_or_default()
        .to_string();
    assert_ne!(new_id, id);
    assert_eq!(statuses(&deployment(&lab, &id)?), ["stopped"]);
    let replaced = deployment(&lab, &new_id)?;
    assert_eq!(replaced.args, ["--every", "2"]);
    assert_eq!(statuses(&replaced), ["running"]);
    let (code, output) = tf.plan_exit_code()?;
    assert_eq!(code, 0, "{}", describe(&output));

    tf.destroy()?;
    let client = lab.client()?;
    let after = block_on(async move { Ok(client.get_deployment(&new_id).await) })?;
    match after {
        Ok(stopped) => assert_eq!(
            statuses(&stopped),
            ["stopped"],
            "destroy must stop the runs"
        ),
        Err(err) => assert!(err.is_not_found(), "{err}"),
    }
    Ok(())
}

#[test]
fn acc_deployment_bad_value() -> anyhow::Result<()> {
    if !acc_enabled("acc_deployment_bad_value") {
        return Ok(());
    }
    let lab = Lab::up(1)?;
    let tf = lab.terraform()?;
    tf.write("ticker.sh", TICKER)?;
    tf.write(
        "main.tf",
        &config("[]", "").replace("wait_for = \"running\"", "wait_for = \"done\""),
    )?;
    tf.init()?;
    let output = tf.run(&["plan", "-input=false"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(stderr.contains("Invalid wait_for"), "{stderr}");
    assert!(
        stderr.contains(r#"wait_for = "done""#),
        "must point at wait_for:\n{stderr}"
    );
    Ok(())
}
