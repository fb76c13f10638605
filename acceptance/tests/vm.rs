//! Acceptance tests of `measurelab_vm` (with its platform and QoS policy).

use measurelab_acceptance::{
    acc_enabled, block_on, describe, planned_actions, resource_values, Lab, PROVIDER_BLOCK,
};

const ADDRESS: &str = "measurelab_vm.probe";

fn config(qos: &str, vcpus: u32) -> String {
    format!(
        r#"{PROVIDER_BLOCK}
resource "measurelab_virtual_platform" "slice" {{
  name  = "slice-vm"
  nodes = ["n1"]
}}

resource "measurelab_qos_policy" "slow" {{
  name             = "slow"
  ingress_max_kbps = 20000
}}

resource "measurelab_qos_policy" "fast" {{
  name             = "fast"
  ingress_max_kbps = 80000
}}

resource "measurelab_vm" "probe" {{
  name       = "probe"
  platform   = measurelab_virtual_platform.slice.name
  node       = "n1"
  appliance  = "namespace"
  backend    = "namespace"
  vcpus      = {vcpus}
  memory_mib = 32
  qos_policy = {qos}

  timeouts {{
    create = "2m"
    delete = "2m"
  }}
}}
"#
    )
}

#[test]
fn acc_vm_basic() -> anyhow::Result<()> {
    if !acc_enabled("acc_vm_basic") {
        return Ok(());
    }
    let lab = Lab::up(1)?;
    let tf = lab.terraform()?;
    tf.write("main.tf", &config("measurelab_qos_policy.slow.name", 1))?;
    tf.init()?;
    tf.apply()?;
    let state = tf.state_json()?;
    let values = resource_values(&state, ADDRESS)
        .cloned()
        .unwrap_or_default();
    let id = values["id"].as_str().unwrap_or_default().to_string();
    let client = lab.client()?;
    let vm = block_on({
        let client = client.clone();
        let id = id.clone();
        async move { Ok(client.get_vm(&id).await?) }
    })?;
    assert_eq!(vm.qos_policy.as_deref(), Some("slow"));
    assert!(
        vm.conditions
            .iter()
            .any(|c| c.condition_type == "Ready" && c.status == "True"),
        "create must wait for Ready: {:?}",
        vm.conditions
    );
    assert_eq!(values["address"], vm.address.as_str());
    // Ready waits for the guest agent's hello, which names its version:
    // the lab's guest agent is this build's.
    assert_eq!(
        values["guest_agent_version"],
        env!("CARGO_PKG_VERSION"),
        "{values}"
    );
    assert_eq!(
        vm.guest_agent_version.as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    let (code, output) = tf.plan_exit_code()?;
    assert_eq!(code, 0, "{}", describe(&output));

    // QoS change: in place, the VM keeps its id.
    tf.write("main.tf", &config("measurelab_qos_policy.fast.name", 1))?;
    let plan = tf.saved_plan_json("qos.tfplan")?;
    assert_eq!(planned_actions(&plan, ADDRESS), vec!["update"], "{plan}");
    tf.ok(&["apply", "-input=false", "qos.tfplan"])?;
    let vm = block_on({
        let client = client.clone();
        let id = id.clone();
        async move { Ok(client.get_vm(&id).await?) }
    })?;
    assert_eq!(vm.qos_policy.as_deref(), Some("fast"));
    let (code, output) = tf.plan_exit_code()?;
    assert_eq!(code, 0, "{}", describe(&output));

    tf.destroy()?;
    let gone = block_on(async move {
        Ok(client
            .get_vm(&id)
            .await
            .err()
            .is_some_and(|e| e.is_not_found()))
    })?;
    assert!(gone, "destroy must delete the VM");
    Ok(())
}

#[test]
fn acc_vm_bad_value() -> anyhow::Result<()> {
    if !acc_enabled("acc_vm_bad_value") {
        return Ok(());
    }
    let lab = Lab::up(1)?;
    let tf = lab.terraform()?;
    tf.write("main.tf", &config("null", 0))?;
    tf.init()?;
    let output = tf.run(&["plan", "-input=false"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(stderr.contains("Invalid size"), "{stderr}");
    assert!(
        stderr.contains("vcpus      = 0"),
        "must point at vcpus:\n{stderr}"
    );
    Ok(())
}
