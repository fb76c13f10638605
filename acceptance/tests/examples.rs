//! Every directory under `examples/` applies as-is against
//! `measurelab lab up --nodes 3`, with only the variables `lab env` prints
//! (`lab env --operator` for nodes, tenants and tokens).

use std::path::{Path, PathBuf};

use measurelab_acceptance::{acc_enabled, describe, workspace_root, Lab};

/// Directories under `examples/` that hold `.tf` files.
fn example_dirs(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let mut has_tf = false;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "tf") {
                has_tf = true;
            }
        }
        if has_tf {
            found.push(dir);
        }
    }
    found.sort();
    Ok(found)
}

/// The addresses of the `terraform import ADDRESS ID` lines of a script.
fn imported_addresses(script: &str) -> Vec<String> {
    script
        .lines()
        .filter_map(|line| line.trim().strip_prefix("terraform import "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(|address| address.trim_matches('\'').to_string())
        .collect()
}

/// Attributes of a resource type that only the configuration knows: the
/// `timeouts` block of every type, the local file a program was uploaded
/// from, and what a deployment's create waited for.
fn configuration_only(resource_type: &str) -> Vec<&'static str> {
    match resource_type {
        "measurelab_program" => vec!["timeouts", "source"],
        "measurelab_deployment" => vec!["timeouts", "wait_for"],
        // The local image files; the controller keeps only their digests.
        "measurelab_appliance" => vec!["timeouts", "kernel", "initrd", "disk"],
        _ => vec!["timeouts"],
    }
}

#[test]
fn acc_examples_apply() -> anyhow::Result<()> {
    if !acc_enabled("acc_examples_apply") {
        return Ok(());
    }
    let examples = workspace_root().join("examples");
    let dirs = example_dirs(&examples)?;
    assert!(
        dirs.len() >= 4,
        "expected the provider, resource and data-source examples: {dirs:?}"
    );
    // The platform peer example puts a gateway on n1: `lab up` gives every
    // node a public address on the lab internet, so n1 can run one.
    let lab = Lab::up(3)?;
    // The appliance example uploads a built image (scripts/build-appliance.sh)
    // from `var.appliance_dir`; stand-in files keep this test from needing
    // one: the example creates no VM, so nothing boots them.
    let image_dir = tempfile::tempdir()?;
    for file in ["vmlinuz", "initrd.img", "disk.img"] {
        std::fs::write(image_dir.path().join(file), format!("stand-in {file}\n"))?;
    }
    for dir in dirs {
        // Only the documentation examples (tfplugindocs layout). Scenario
        // directories such as multicast-lab use modules by relative path and
        // have their own tests.
        let documented = ["provider", "resources", "data-sources"]
            .iter()
            .any(|kind| dir.starts_with(examples.join(kind)));
        if !documented {
            continue;
        }
        let label = dir.strip_prefix(&examples)?.display().to_string();
        eprintln!("example {label}");
        // Nodes, tenants and their tokens are the operator's; everything
        // else runs as the demo tenant's member, like a researcher.
        let operator_only = [
            "measurelab_measurement_node",
            "measurelab_tenant",
            "measurelab_api_token",
            "measurelab_appliance",
        ]
        .iter()
        .any(|name| dir.ends_with(name));
        let mut env = if operator_only {
            lab.env.clone()
        } else {
            lab.member_env.clone()
        };
        if dir.ends_with("measurelab_appliance") {
            env.push((
                "TF_VAR_appliance_dir".to_string(),
                image_dir.path().display().to_string(),
            ));
        }
        let tf = lab.terraform_as(&env)?;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_file() {
                std::fs::copy(
                    &path,
                    tf.dir.path().join(path.file_name().unwrap_or_default()),
                )?;
            }
        }
        tf.init()?;
        tf.apply()?;
        let (code, output) = tf.plan_exit_code()?;
        assert_eq!(
            code,
            0,
            "{label}: plan after apply must be empty:\n{}",
            describe(&output)
        );

        if tf.dir.path().join("import.sh").is_file() {
            // The documented import commands work: forget exactly the
            // addresses import.sh imports, then run it.
            let script = std::fs::read_to_string(tf.dir.path().join("import.sh"))?;
            let addresses = imported_addresses(&script);
            assert!(!addresses.is_empty(), "{label}: import.sh imports nothing");
            for address in &addresses {
                tf.ok(&["state", "rm", address])?;
            }
            let mut import = std::process::Command::new("sh");
            import.arg("import.sh").current_dir(tf.dir.path());
            // Same environment as terraform itself gets.
            let template = tf.command(&[]);
            for (key, value) in template.get_envs() {
                match value {
                    Some(value) => import.env(key, value),
                    None => import.env_remove(key),
                };
            }
            let output = import.output()?;
            assert!(
                output.status.success(),
                "{label}: import.sh failed:\n{}",
                describe(&output)
            );
            // Import cannot know configuration-only attributes (the controller
            // never stores them), so the first plan may fill them in; nothing
            // else may differ.
            let plan = tf.saved_plan_json("after-import.tfplan")?;
            for change in plan["resource_changes"].as_array().into_iter().flatten() {
                let (before, after) = (&change["change"]["before"], &change["change"]["after"]);
                let config_only = configuration_only(change["type"].as_str().unwrap_or_default());
                let differing: Vec<&String> = after
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(key, value)| before.get(key.as_str()) != Some(value))
                    .map(|(key, _)| key)
                    .collect();
                assert!(
                    differing
                        .iter()
                        .all(|key| config_only.contains(&key.as_str())),
                    "{label}: import left a difference in {differing:?}: {change}"
                );
            }
            tf.ok(&["apply", "-input=false", "after-import.tfplan"])?;
            let (code, output) = tf.plan_exit_code()?;
            assert_eq!(
                code,
                0,
                "{label}: plan after import.sh must be empty:\n{}",
                describe(&output)
            );
        }
        tf.destroy()?;
        assert!(
            tf.state_list()?.is_empty(),
            "{label}: state left after destroy"
        );
    }
    // The resource example adopted n1; destroy must have released it.
    let n1 = lab
        .node("n1")?
        .ok_or_else(|| anyhow::anyhow!("n1 missing"))?;
    assert!(
        n1.labels.is_empty(),
        "n1 keeps labels after destroy: {:?}",
        n1.labels
    );
    Ok(())
}
