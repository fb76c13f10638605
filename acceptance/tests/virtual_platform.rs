//! Acceptance tests of `measurelab_virtual_platform`.

use measurelab_acceptance::{
    acc_enabled, block_on, describe, planned_actions, resource_values, Lab, PROVIDER_BLOCK,
};

const ADDRESS: &str = "measurelab_virtual_platform.slice";

fn config(nodes: &str, extra: &str) -> String {
    format!(
        "{PROVIDER_BLOCK}\nresource \"measurelab_virtual_platform\" \"slice\" {{\n  name  = \"slice-a\"\n  nodes = [{nodes}]\n{extra}\n}}\n"
    )
}

fn platform(lab: &Lab, name: &str) -> anyhow::Result<Option<measurelab_api::http::Platform>> {
    let client = lab.client()?;
    let name = name.to_string();
    block_on(async move {
        match client.get_platform(&name).await {
            Ok(platform) => Ok(Some(platform)),
            Err(err) if err.is_not_found() => Ok(None),
            Err(err) => Err(err.into()),
        }
    })
}

#[test]
fn acc_virtual_platform_basic() -> anyhow::Result<()> {
    if !acc_enabled("acc_virtual_platform_basic") {
        return Ok(());
    }
    let lab = Lab::up(2)?;
    let tf = lab.terraform()?;
    tf.write(
        "main.tf",
        &config("\"n1\", \"n2\"", "  description = \"acceptance slice\""),
    )?;
    tf.init()?;
    tf.apply()?;
    let stored = platform(&lab, "slice-a")?
        .ok_or_else(|| anyhow::anyhow!("platform not on the controller"))?;
    let state = tf.state_json()?;
    let values = resource_values(&state, ADDRESS)
        .cloned()
        .unwrap_or_default();
    assert_eq!(values["id"], stored.id.as_str());
    assert_eq!(values["vlan_tag"], u64::from(stored.vlan_tag));
    assert_eq!(values["subnet"], stored.subnet.as_str());
    assert_eq!(values["power_state"], "running");
    // The platform's control key, as the controller hands it out, and marked
    // sensitive so Terraform never prints it.
    let key = {
        let client = lab.client()?;
        let id = stored.id.clone();
        block_on(async move { Ok(client.platform_control_key(&id).await?) })?
    };
    assert_eq!(values["control_key"], key.control_key.as_str());
    let outputs = tf.ok(&["show", "-no-color"])?;
    let shown = String::from_utf8_lossy(&outputs.stdout);
    assert!(
        shown.contains("control_key") && !shown.contains(&key.control_key),
        "{shown}"
    );
    let (code, output) = tf.plan_exit_code()?;
    assert_eq!(code, 0, "{}", describe(&output));
    tf.destroy()?;
    assert!(
        platform(&lab, "slice-a")?.is_none(),
        "destroy must delete the platform"
    );
    Ok(())
}

#[test]
fn acc_virtual_platform_update() -> anyhow::Result<()> {
    if !acc_enabled("acc_virtual_platform_update") {
        return Ok(());
    }
    let lab = Lab::up(2)?;
    let tf = lab.terraform()?;
    tf.write("main.tf", &config("\"n1\", \"n2\"", ""))?;
    tf.init()?;
    tf.apply()?;
    let before = platform(&lab, "slice-a")?.ok_or_else(|| anyhow::anyhow!("platform missing"))?;
    tf.write("main.tf", &config("\"n1\"", "  power_state = \"paused\""))?;
    let plan = tf.saved_plan_json("update.tfplan")?;
    assert_eq!(planned_actions(&plan, ADDRESS), vec!["update"], "{plan}");
    tf.ok(&["apply", "-input=false", "update.tfplan"])?;
    let after = platform(&lab, "slice-a")?.ok_or_else(|| anyhow::anyhow!("platform gone"))?;
    assert_eq!(after.nodes, vec!["n1".to_string()]);
    assert_eq!(
        after.power_state,
        measurelab_api::http::PlatformPowerState::Paused
    );
    assert_eq!(
        (after.id, after.vlan_tag),
        (before.id, before.vlan_tag),
        "in place keeps id and VLAN"
    );
    let (code, output) = tf.plan_exit_code()?;
    assert_eq!(code, 0, "{}", describe(&output));
    tf.destroy()?;
    Ok(())
}

/// Raising `control_key_version` rotates the platform's control key in
/// place: the controller hands out a new key at the new version, the state
/// holds that key, and the next plan is empty.
#[test]
fn acc_virtual_platform_control_key_rotation() -> anyhow::Result<()> {
    if !acc_enabled("acc_virtual_platform_control_key_rotation") {
        return Ok(());
    }
    let lab = Lab::up(1)?;
    let tf = lab.terraform()?;
    tf.write("main.tf", &config("\"n1\"", ""))?;
    tf.init()?;
    tf.apply()?;
    let id = platform(&lab, "slice-a")?
        .ok_or_else(|| anyhow::anyhow!("platform missing"))?
        .id;
    let key = |lab: &Lab| -> anyhow::Result<measurelab_api::http::PlatformControlKey> {
        let client = lab.client()?;
        let id = id.clone();
        block_on(async move { Ok(client.platform_control_key(&id).await?) })
    };
    let first = key(&lab)?;
    assert_eq!(first.version, 1);

    tf.write("main.tf", &config("\"n1\"", "  control_key_version = 2"))?;
    let plan = tf.saved_plan_json("rotate.tfplan")?;
    assert_eq!(planned_actions(&plan, ADDRESS), vec!["update"], "{plan}");
    tf.ok(&["apply", "-input=false", "rotate.tfplan"])?;
    let second = key(&lab)?;
    assert_eq!(second.version, 2);
    assert_ne!(second.control_key, first.control_key, "a new secret");
    let state = tf.state_json()?;
    let values = resource_values(&state, ADDRESS)
        .cloned()
        .unwrap_or_default();
    assert_eq!(values["control_key"], second.control_key.as_str());
    assert_eq!(values["id"], id.as_str(), "rotated in place");
    let (code, output) = tf.plan_exit_code()?;
    assert_eq!(code, 0, "{}", describe(&output));
    tf.destroy()?;
    Ok(())
}

#[test]
fn acc_virtual_platform_import() -> anyhow::Result<()> {
    if !acc_enabled("acc_virtual_platform_import") {
        return Ok(());
    }
    let lab = Lab::up(2)?;
    let tf = lab.terraform()?;
    tf.write(
        "main.tf",
        &config("\"n1\", \"n2\"", "  admins = [\"alice\"]"),
    )?;
    tf.init()?;
    tf.apply()?;
    tf.ok(&["state", "rm", ADDRESS])?;
    tf.write(
        "import.tf",
        &format!("import {{\n  to = {ADDRESS}\n  id = \"slice-a\"\n}}\n"),
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
    assert!(platform(&lab, "slice-a")?.is_none());
    Ok(())
}

#[test]
fn acc_virtual_platform_bad_value() -> anyhow::Result<()> {
    if !acc_enabled("acc_virtual_platform_bad_value") {
        return Ok(());
    }
    let lab = Lab::up(1)?;
    let tf = lab.terraform()?;
    tf.write("main.tf", &config("", ""))?;
    tf.init()?;
    let output = tf.run(&["plan", "-input=false"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(
        stderr.contains("A virtual platform needs nodes"),
        "{stderr}"
    );
    // An unknown node is refused by the controller, against `nodes`; nothing is created.
    tf.write("main.tf", &config("\"n9\"", ""))?;
    let output = tf.run(&["apply", "-auto-approve", "-input=false"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(stderr.contains("n9"), "{stderr}");
    assert!(tf.state_list()?.is_empty());
    Ok(())
}
