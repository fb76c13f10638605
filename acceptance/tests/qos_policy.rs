//! Acceptance tests of `measurelab_qos_policy`.

use measurelab_acceptance::{
    acc_enabled, block_on, describe, planned_actions, resource_values, Lab, PROVIDER_BLOCK,
};

const ADDRESS: &str = "measurelab_qos_policy.slice";

fn config(name: &str, rates: &str) -> String {
    format!("{PROVIDER_BLOCK}\nresource \"measurelab_qos_policy\" \"slice\" {{\n  name = \"{name}\"\n{rates}\n}}\n")
}

fn policy(lab: &Lab, name: &str) -> anyhow::Result<Option<measurelab_api::http::QosPolicy>> {
    let client = lab.client()?;
    let name = name.to_string();
    block_on(async move {
        match client.get_qos_policy(&name).await {
            Ok(policy) => Ok(Some(policy)),
            Err(err) if err.is_not_found() => Ok(None),
            Err(err) => Err(err.into()),
        }
    })
}

#[test]
fn acc_qos_policy_basic() -> anyhow::Result<()> {
    if !acc_enabled("acc_qos_policy_basic") {
        return Ok(());
    }
    let lab = Lab::up(1)?;
    let tf = lab.terraform()?;
    tf.write(
        "main.tf",
        &config(
            "slow",
            "  ingress_max_kbps = 20000\n  egress_max_kbps  = 10000",
        ),
    )?;
    tf.init()?;
    tf.apply()?;
    let stored =
        policy(&lab, "slow")?.ok_or_else(|| anyhow::anyhow!("policy not on the controller"))?;
    assert_eq!(
        (stored.ingress_max_kbps, stored.egress_max_kbps),
        (20000, Some(10000))
    );
    let state = tf.state_json()?;
    assert_eq!(
        resource_values(&state, ADDRESS).map(|v| v["id"].clone()),
        Some(stored.id.clone().into())
    );
    let (code, output) = tf.plan_exit_code()?;
    assert_eq!(code, 0, "{}", describe(&output));
    tf.destroy()?;
    assert!(
        policy(&lab, "slow")?.is_none(),
        "destroy must delete the policy"
    );
    Ok(())
}

#[test]
fn acc_qos_policy_update() -> anyhow::Result<()> {
    if !acc_enabled("acc_qos_policy_update") {
        return Ok(());
    }
    let lab = Lab::up(1)?;
    let tf = lab.terraform()?;
    tf.write(
        "main.tf",
        &config(
            "slow",
            "  ingress_max_kbps = 20000\n  egress_max_kbps  = 10000",
        ),
    )?;
    tf.init()?;
    tf.apply()?;
    let id = policy(&lab, "slow")?.map(|p| p.id);
    // Raise the ceiling and drop the egress limit: in place, not a replace.
    tf.write("main.tf", &config("slow", "  ingress_max_kbps = 50000"))?;
    let plan = tf.saved_plan_json("update.tfplan")?;
    assert_eq!(planned_actions(&plan, ADDRESS), vec!["update"], "{plan}");
    tf.ok(&["apply", "-input=false", "update.tfplan"])?;
    let stored = policy(&lab, "slow")?.ok_or_else(|| anyhow::anyhow!("policy gone"))?;
    assert_eq!(
        (stored.ingress_max_kbps, stored.egress_max_kbps),
        (50000, None)
    );
    assert_eq!(Some(stored.id), id, "update must keep the policy");
    let (code, output) = tf.plan_exit_code()?;
    assert_eq!(code, 0, "{}", describe(&output));

    tf.write("main.tf", &config("fast", "  ingress_max_kbps = 50000"))?;
    let plan = tf.saved_plan_json("replace.tfplan")?;
    assert_eq!(
        planned_actions(&plan, ADDRESS),
        vec!["delete", "create"],
        "{plan}"
    );
    tf.destroy()?;
    Ok(())
}

#[test]
fn acc_qos_policy_import() -> anyhow::Result<()> {
    if !acc_enabled("acc_qos_policy_import") {
        return Ok(());
    }
    let lab = Lab::up(1)?;
    let tf = lab.terraform()?;
    tf.write(
        "main.tf",
        &config(
            "slow",
            "  ingress_max_kbps = 20000\n  ingress_min_kbps = 5000",
        ),
    )?;
    tf.init()?;
    tf.apply()?;
    tf.ok(&["state", "rm", ADDRESS])?;
    tf.write(
        "import.tf",
        &format!("import {{\n  to = {ADDRESS}\n  id = \"slow\"\n}}\n"),
    )?;
    tf.apply()?;
    tf.remove("import.tf")?;
    let (code, output) = tf.plan_exit_code()?;
    assert_eq!(
        code,
        0,
        "plan after import must be empty:\n{}",
        describe(&output)
    );
    tf.destroy()?;
    assert!(policy(&lab, "slow")?.is_none());
    Ok(())
}

#[test]
fn acc_qos_policy_bad_value() -> anyhow::Result<()> {
    if !acc_enabled("acc_qos_policy_bad_value") {
        return Ok(());
    }
    let lab = Lab::up(1)?;
    let tf = lab.terraform()?;
    tf.write(
        "main.tf",
        &config(
            "slow",
            "  ingress_max_kbps = 1000\n  ingress_min_kbps = 5000",
        ),
    )?;
    tf.init()?;
    let output = tf.run(&["plan", "-input=false"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(
        stderr.contains("Guaranteed rate above the ceiling"),
        "{stderr}"
    );
    assert!(
        stderr.contains("ingress_min_kbps = 5000"),
        "must point at the attribute:\n{stderr}"
    );
    // A name the controller rejects (not a DNS label) is reported by the
    // controller on apply, against `name`, and nothing is created.
    tf.write(
        "main.tf",
        &config("Not_A_Label", "  ingress_max_kbps = 1000"),
    )?;
    let output = tf.run(&["apply", "-auto-approve", "-input=false"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(
        stderr.contains("name = \"Not_A_Label\""),
        "must point at name:\n{stderr}"
    );
    assert!(tf.state_list()?.is_empty());
    Ok(())
}
