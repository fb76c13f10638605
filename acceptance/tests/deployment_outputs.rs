//! Acceptance tests of a deployment's `outputs` and the
//! `measurelab_deployment_outputs` data source, with the real terraform CLI
//! against a real lab: a one-shot program writes a summary and a larger
//! file in a namespace VM, the data source reads the summary as text,
//! refuses the larger one by its size, and a change of `outputs` updates
//! the deployment in place without touching its run.

use measurelab_acceptance::{
    acc_enabled, block_on, describe, planned_actions, resource_values, worker_slice_hcl, Lab,
    PROVIDER_BLOCK,
};
use measurelab_api::http::Deployment;

const ADDRESS: &str = "measurelab_deployment.writer";

fn program(dir: &str) -> String {
    format!(
        "#!/bin/sh\nset -e\nmkdir -p {dir}\nprintf 'packets=4242\\nloss=0.5\\n' > {dir}/summary.txt\n\
         head -c 100000 /dev/zero > {dir}/big.bin\n"
    )
}

fn config(outputs: &str, read: &str, max_bytes: &str) -> String {
    let slice = worker_slice_hcl("slice-outputs");
    format!(
        r#"{PROVIDER_BLOCK}
{slice}
resource "measurelab_program" "writer" {{
  name   = "writer"
  source = "${{path.module}}/writer.sh"
}}

resource "measurelab_deployment" "writer" {{
  program  = measurelab_program.writer.id
  vms      = [measurelab_vm.worker.id]
  outputs  = {outputs}
  wait_for = "exited"
}}

data "measurelab_deployment_outputs" "writer" {{
  deployment = measurelab_deployment.writer.id
  outputs    = {read}
{max_bytes}
}}

output "summary" {{
  value = values(data.measurelab_deployment_outputs.writer.vms[0].contents)[0]
}}
"#
    )
}

fn deployment(lab: &Lab, id: &str) -> anyhow::Result<Deployment> {
    let client = lab.client()?;
    let id = id.to_string();
    block_on(async move { Ok(client.get_deployment(&id).await?) })
}

#[test]
fn acc_deployment_outputs() -> anyhow::Result<()> {
    if !acc_enabled("acc_deployment_outputs") {
        return Ok(());
    }
    let lab = Lab::up(1)?;
    let tf = lab.terraform()?;
    let dir = format!("/tmp/mlacc-out-{}", std::process::id());
    let summary = format!("{dir}/summary.txt");
    let big = format!("{dir}/big.bin");
    tf.write("writer.sh", &program(&dir))?;

    // A bad path is refused at plan, on its element.
    tf.write(
        "main.tf",
        &config(
            &format!(r#"["{summary}", "results/big.bin"]"#),
            &format!(r#"["{summary}"]"#),
            "",
        ),
    )?;
    tf.init()?;
    let output = tf.run(&["plan", "-input=false"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(stderr.contains("Invalid output path"), "{stderr}");
    assert!(stderr.contains("outputs[1]"), "{stderr}");
    assert!(stderr.contains("not absolute"), "{stderr}");

    // The summary reaches Terraform as text.
    tf.write(
        "main.tf",
        &config(
            &format!(r#"["{summary}", "{big}"]"#),
            &format!(r#"["{summary}"]"#),
            "",
        ),
    )?;
    tf.apply()?;
    let out = tf.ok(&["output", "-raw", "summary"])?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "packets=4242\nloss=0.5\n"
    );
    let state = tf.state_json()?;
    let id = resource_values(&state, ADDRESS)
        .and_then(|v| v["id"].as_str())
        .unwrap_or_default()
        .to_string();
    let before = deployment(&lab, &id)?;
    assert_eq!(before.outputs, [summary.clone(), big.clone()]);
    assert_eq!(before.runs[0].status, "exited");

    // Changing the outputs updates in place; the run is what it was.
    tf.write(
        "main.tf",
        &config(
            &format!(r#"["{big}", "{summary}"]"#),
            &format!(r#"["{summary}"]"#),
            "",
        ),
    )?;
    let plan = tf.saved_plan_json("outputs.tfplan")?;
    assert_eq!(planned_actions(&plan, ADDRESS), vec!["update"], "{plan}");
    tf.ok(&["apply", "-input=false", "outputs.tfplan"])?;
    let after = deployment(&lab, &id)?;
    assert_eq!(after.id, id);
    assert_eq!(after.outputs, [big.clone(), summary.clone()]);
    assert_eq!(after.runs, before.runs, "an outputs change touched the run");
    let (code, output) = tf.plan_exit_code()?;
    assert_eq!(code, 0, "{}", describe(&output));

    // A file over max_bytes is an error that names its size.
    tf.write(
        "main.tf",
        &config(
            &format!(r#"["{big}", "{summary}"]"#),
            &format!(r#"["{big}"]"#),
            "  max_bytes  = 1000",
        ),
    )?;
    let output = tf.run(&["plan", "-input=false"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(stderr.contains("100000 bytes"), "{stderr}");
    assert!(stderr.contains("max_bytes (1000)"), "{stderr}");

    tf.write(
        "main.tf",
        &config(
            &format!(r#"["{big}", "{summary}"]"#),
            &format!(r#"["{summary}"]"#),
            "",
        ),
    )?;
    tf.destroy()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
