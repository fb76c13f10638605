//! Acceptance tests of the `measurelab_nodes` and `measurelab_node` data sources.

use measurelab_acceptance::{acc_enabled, describe, Lab, PROVIDER_BLOCK};

#[test]
fn acc_nodes_basic() -> anyhow::Result<()> {
    if !acc_enabled("acc_nodes_basic") {
        return Ok(());
    }
    let lab = Lab::up(2)?;
    let (first, second) = (lab.node_name(1), lab.node_name(2));
    let tf = lab.terraform()?;
    tf.write(
        "main.tf",
        &format!(
            r#"{PROVIDER_BLOCK}
resource "measurelab_measurement_node" "mscs" {{
  name   = "{first}"
  labels = {{ role = "mscs" }}
}}

data "measurelab_nodes" "online" {{
  status = "online"
}}

data "measurelab_nodes" "mscs" {{
  labels     = {{ role = "mscs" }}
  depends_on = [measurelab_measurement_node.mscs]
}}

data "measurelab_node" "second" {{
  name = "{second}"
}}

output "online_names" {{ value = data.measurelab_nodes.online.names }}
output "mscs_names"   {{ value = data.measurelab_nodes.mscs.names }}
output "second_id"    {{ value = data.measurelab_node.second.id }}
output "second_tools" {{ value = data.measurelab_node.second.capabilities.service_tools }}
"#
        ),
    )?;
    tf.init()?;
    tf.apply()?;
    let outputs: serde_json::Value = serde_json::from_slice(&tf.ok(&["output", "-json"])?.stdout)?;
    let online: Vec<String> = serde_json::from_value(outputs["online_names"]["value"].clone())?;
    assert!(
        online.contains(&first) && online.contains(&second),
        "{online:?}"
    );
    assert_eq!(outputs["mscs_names"]["value"], serde_json::json!([first]));
    let node = lab
        .node(&second)?
        .ok_or_else(|| anyhow::anyhow!("node missing"))?;
    assert_eq!(outputs["second_id"]["value"], node.id.as_str());
    assert_eq!(
        outputs["second_tools"]["value"],
        serde_json::to_value(&node.capabilities.service_tools)?
    );
    tf.destroy()?;
    Ok(())
}

#[test]
fn acc_nodes_bad_value() -> anyhow::Result<()> {
    if !acc_enabled("acc_nodes_bad_value") {
        return Ok(());
    }
    let lab = Lab::up(1)?;
    let tf = lab.terraform()?;
    tf.write(
        "main.tf",
        &format!("{PROVIDER_BLOCK}\ndata \"measurelab_nodes\" \"x\" {{\n  status = \"up\"\n}}\n"),
    )?;
    tf.init()?;
    let output = tf.run(&["plan", "-input=false"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(stderr.contains("Invalid status filter"), "{stderr}");
    assert!(
        stderr.contains(r#"status = "up""#),
        "must point at the attribute:\n{stderr}"
    );

    tf.write(
        "main.tf",
        &format!("{PROVIDER_BLOCK}\ndata \"measurelab_node\" \"x\" {{\n  name = \"n7\"\n}}\n",),
    )?;
    let output = tf.run(&["plan", "-input=false"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(stderr.contains("No such node"), "{stderr}");
    Ok(())
}
