//! Acceptance tests of the read-only data sources for slices:
//! `measurelab_virtual_platform(s)`, `measurelab_vm(s)` and
//! `measurelab_measurement_task(s)`. Two platforms share node n2, so every
//! filter has something to leave out; what Terraform reads is compared with
//! what the controller's API answers.

use measurelab_acceptance::{acc_enabled, block_on, describe, Lab, PROVIDER_BLOCK};
use serde_json::{json, Value};

/// Platform `a` spans n1 and n2 with a VM on each; platform `b` only n2 with
/// one VM; each has a periodic task. The data sources read them back.
fn config() -> String {
    format!(
        r#"{PROVIDER_BLOCK}
resource "measurelab_virtual_platform" "a" {{
  name  = "ds-a"
  nodes = ["n1", "n2"]
}}

resource "measurelab_virtual_platform" "b" {{
  name  = "ds-b"
  nodes = ["n2"]
}}

locals {{
  vms = {{
    a1 = {{ platform = measurelab_virtual_platform.a.name, node = "n1" }}
    a2 = {{ platform = measurelab_virtual_platform.a.name, node = "n2" }}
    b2 = {{ platform = measurelab_virtual_platform.b.name, node = "n2" }}
  }}
}}

resource "measurelab_vm" "each" {{
  for_each   = local.vms
  name       = "vm-${{each.key}}"
  platform   = each.value.platform
  node       = each.value.node
  appliance  = "namespace"
  backend    = "namespace"
  vcpus      = 1
  memory_mib = 32
}}

resource "measurelab_measurement_task" "a" {{
  name             = "ds-a-hourly"
  platform         = measurelab_virtual_platform.a.name
  schedule         = "periodic"
  interval_seconds = 3600
  rate_pps         = 250
}}

resource "measurelab_measurement_task" "b" {{
  name             = "ds-b-daily"
  platform         = measurelab_virtual_platform.b.name
  schedule         = "periodic"
  interval_seconds = 86400
}}

data "measurelab_virtual_platform" "a" {{
  name = measurelab_virtual_platform.a.name
}}

data "measurelab_virtual_platforms" "on_n1" {{
  node       = "n1"
  depends_on = [measurelab_virtual_platform.a, measurelab_virtual_platform.b]
}}

data "measurelab_virtual_platforms" "on_n2" {{
  node       = "n2"
  depends_on = [measurelab_virtual_platform.a, measurelab_virtual_platform.b]
}}

data "measurelab_vm" "a2" {{
  name     = measurelab_vm.each["a2"].name
  platform = measurelab_virtual_platform.a.name
}}

data "measurelab_vm" "b2_by_id" {{
  name = measurelab_vm.each["b2"].id
}}

data "measurelab_vms" "a_on_n2" {{
  platform   = measurelab_virtual_platform.a.name
  node       = "n2"
  depends_on = [measurelab_vm.each]
}}

data "measurelab_vms" "on_n2" {{
  node       = "n2"
  depends_on = [measurelab_vm.each]
}}

data "measurelab_measurement_task" "a" {{
  name = measurelab_measurement_task.a.name
}}

data "measurelab_measurement_tasks" "a_periodic" {{
  platform   = measurelab_virtual_platform.a.name
  schedule   = "periodic"
  depends_on = [measurelab_measurement_task.a, measurelab_measurement_task.b]
}}

data "measurelab_measurement_tasks" "once" {{
  schedule   = "once"
  depends_on = [measurelab_measurement_task.a, measurelab_measurement_task.b]
}}

output "platform_a"      {{ value = data.measurelab_virtual_platform.a }}
output "platforms_on_n1" {{ value = data.measurelab_virtual_platforms.on_n1.names }}
output "platforms_on_n2" {{ value = data.measurelab_virtual_platforms.on_n2.names }}
output "vm_a2"           {{ value = data.measurelab_vm.a2 }}
output "vm_b2_by_id"     {{ value = data.measurelab_vm.b2_by_id }}
output "vms_a_on_n2"     {{ value = data.measurelab_vms.a_on_n2.ids }}
output "vms_on_n2"       {{ value = data.measurelab_vms.on_n2.vms[*].name }}
output "task_a"          {{ value = data.measurelab_measurement_task.a }}
output "tasks_a"         {{ value = data.measurelab_measurement_tasks.a_periodic.names }}
output "tasks_once"      {{ value = data.measurelab_measurement_tasks.once.names }}
"#
    )
}

#[test]
fn acc_data_sources_slices_basic() -> anyhow::Result<()> {
    if !acc_enabled("acc_data_sources_slices_basic") {
        return Ok(());
    }
    let lab = Lab::up(2)?;
    let tf = lab.terraform()?;
    tf.write("main.tf", &config())?;
    tf.init()?;
    tf.apply()?;
    let outputs: Value = serde_json::from_slice(&tf.ok(&["output", "-json"])?.stdout)?;
    let out = |name: &str| outputs[name]["value"].clone();

    let client = lab.client()?;
    let (platform, vms, task) = block_on({
        let client = client.clone();
        async move {
            Ok((
                client.get_platform("ds-a").await?,
                client.list_vms("").await?,
                client.get_task("ds-a-hourly").await?,
            ))
        }
    })?;
    let vm = |platform: &str, name: &str| {
        vms.iter()
            .find(|vm| vm.platform == platform && vm.name == name)
            .ok_or_else(|| anyhow::anyhow!("{platform}/{name} not on the controller: {vms:?}"))
    };

    // One platform: what the controller allocated (VLAN, subnet), not what
    // the configuration said.
    let platform_a = out("platform_a");
    assert_eq!(platform_a["id"], platform.id.as_str());
    assert_eq!(platform_a["vlan_tag"], json!(platform.vlan_tag));
    assert_eq!(platform_a["subnet"], platform.subnet.as_str());
    assert_eq!(platform_a["nodes"], json!(platform.nodes));
    assert_eq!(platform_a["power_state"], "running");

    // The node filter: ds-b is not on n1.
    assert_eq!(out("platforms_on_n1"), json!(["ds-a"]));
    assert_eq!(out("platforms_on_n2"), json!(["ds-a", "ds-b"]));

    // One VM by platform + name, and one by id alone.
    let a2 = vm("ds-a", "vm-a2")?;
    let vm_a2 = out("vm_a2");
    assert_eq!(vm_a2["id"], a2.id.as_str());
    assert_eq!(vm_a2["node"], "n2");
    assert_eq!(vm_a2["address"], a2.address.as_str());
    assert_eq!(vm_a2["mac"], a2.mac.as_str());
    assert_eq!(vm_a2["memory_mib"], json!(32));
    assert!(
        vm_a2["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True"),
        "the resource waited for Ready, so the data source must see it: {vm_a2}"
    );
    let b2 = vm("ds-b", "vm-b2")?;
    let vm_b2 = out("vm_b2_by_id");
    assert_eq!(
        (&vm_b2["name"], &vm_b2["platform"], &vm_b2["address"]),
        (&json!("vm-b2"), &json!("ds-b"), &json!(b2.address))
    );

    // The controller filters by platform and node: vm-b2 shares n2 but not ds-a.
    assert_eq!(out("vms_a_on_n2"), json!([a2.id]));
    assert_eq!(out("vms_on_n2"), json!(["vm-a2", "vm-b2"]));

    // One task, and the task filters: ds-b's task and the (absent) once tasks
    // are left out.
    let task_a = out("task_a");
    assert_eq!(task_a["id"], task.id.as_str());
    assert_eq!(task_a["platform"], "ds-a");
    assert_eq!(task_a["interval_seconds"], json!(3600));
    assert_eq!(task_a["rate_pps"], json!(task.rate_pps));
    assert_eq!(task_a["group"], task.group.as_str());
    assert_eq!(out("tasks_a"), json!(["ds-a-hourly"]));
    assert_eq!(out("tasks_once"), json!([]));

    // No empty-plan check: the outputs carry guest heartbeats, which move.
    tf.destroy()?;
    Ok(())
}

#[test]
fn acc_data_sources_slices_bad_value() -> anyhow::Result<()> {
    if !acc_enabled("acc_data_sources_slices_bad_value") {
        return Ok(());
    }
    let lab = Lab::up(1)?;
    let tf = lab.terraform()?;
    tf.write(
        "main.tf",
        &format!(
            "{PROVIDER_BLOCK}\ndata \"measurelab_measurement_tasks\" \"x\" {{\n  status = \"done\"\n}}\n"
        ),
    )?;
    tf.init()?;
    let output = tf.run(&["plan", "-input=false"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(stderr.contains("Invalid filter value"), "{stderr}");
    assert!(
        stderr.contains(r#"status = "done""#),
        "must point at status:\n{stderr}"
    );

    // A platform, a VM and a task that do not exist: each fails on `name`.
    for (kind, summary) in [
        ("measurelab_virtual_platform", "No such virtual platform"),
        ("measurelab_vm", "No such VM"),
        ("measurelab_measurement_task", "No such measurement task"),
    ] {
        tf.write(
            "main.tf",
            &format!("{PROVIDER_BLOCK}\ndata \"{kind}\" \"x\" {{\n  name = \"ghost\"\n}}\n"),
        )?;
        let output = tf.run(&["plan", "-input=false"])?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{kind}: {}", describe(&output));
        assert!(stderr.contains(summary), "{kind}: {stderr}");
        assert!(
            stderr.contains(r#"name = "ghost""#),
            "{kind}: must point at name:\n{stderr}"
        );
    }
    Ok(())
}
