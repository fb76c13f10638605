//! The paper's experiment as a user runs it: `examples/multicast-lab` (the
//! `multicast-measurement` module) applied to a lab of 4 nodes through the
//! built provider, as the demo tenant's member. One check for every lab it
//! runs on (switched, routed, nodes of another release), so a lab variant
//! cannot pass on looser figures.

use crate::{block_on, describe, workspace_root, Lab};

/// Apply the example (10 s runs), check the per-receiver results and an
/// empty plan, run `while_applied` (a lab variant's own checks of the
/// running VMs), then destroy it and check the controller has nothing left.
pub fn paper_experiment(
    lab: &Lab,
    while_applied: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    // As a researcher would run it: the demo tenant's member token.
    let tf = lab.terraform_as(&lab.member_env)?;
    let bin_dir = tf.dir.path().join("bin");
    std::fs::create_dir_all(&bin_dir)?;
    lab.strip_mcast_binaries_into(&bin_dir)?;

    // The example as shipped; only the module path is made absolute because
    // the working directory is a temporary one.
    let root = workspace_root();
    let example = std::fs::read_to_string(root.join("examples/multicast-lab/main.tf"))?;
    let module_dir = root.join("modules/multicast-measurement");
    let example = example.replace(
        "\"../../modules/multicast-measurement\"",
        &format!("{:?}", module_dir.display().to_string()),
    );
    anyhow::ensure!(
        example.contains(&module_dir.display().to_string()),
        "the example no longer uses ../../modules/multicast-measurement"
    );
    tf.write("main.tf", &example)?;
    let bin_var = format!("bin_dir={}", bin_dir.display());
    // A 10 s run keeps the test short; the example's default is the paper's 30 s.
    let vars = ["-var", bin_var.as_str(), "-var", "duration_seconds=10"];

    tf.init()?;
    let mut apply = vec!["apply", "-auto-approve", "-input=false"];
    apply.extend(vars);
    tf.ok(&apply)?;

    let outputs = tf.ok(&["output", "-json"])?;
    let outputs: serde_json::Value = serde_json::from_slice(&outputs.stdout)?;
    let receivers = outputs["receivers"]["value"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let source = outputs["source_point"]["value"]
        .as_str()
        .unwrap_or_default();
    eprintln!(
        "source {source}, receivers: {}",
        serde_json::to_string_pretty(&receivers)?
    );
    assert_eq!(outputs["result_status"]["value"], "ok", "{outputs:#}");
    // 4 points: one sends, three receive.
    assert_eq!(receivers.len(), 3, "{receivers:#?}");
    assert!(
        !receivers.contains_key(source),
        "the source is not a receiver"
    );
    for (name, r) in &receivers {
        assert_eq!(r["status"], "ok", "{name}: {r:#}");
        let received = r["packets_received"].as_f64().unwrap_or(0.0);
        let sent = r["packets_sent"].as_f64().unwrap_or(0.0);
        let loss = r["loss_ratio"].as_f64().unwrap_or(1.0);
        assert!(received > 0.0, "{name} received nothing: {r:#}");
        // 100 pps for 10 s.
        assert!((990.0..=1010.0).contains(&sent), "{name}: sent {sent}");
        assert!(loss < 0.01, "{name}: loss ratio {loss} on a clean path");
        for metric in ["delay_median_ms", "delay_p95_ms", "jitter_ms", "pdv_ms"] {
            let value = r[metric].as_f64();
            assert!(
                value.is_some_and(|v| (0.0..1000.0).contains(&v)),
                "{name}: {metric} = {value:?}"
            );
        }
    }
    // The VMs really are spread over the 4 nodes.
    let nodes: std::collections::BTreeSet<String> = outputs["point_vms"]["value"]
        .as_object()
        .map(|m| {
            m.values()
                .filter_map(|v| v["node"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(nodes.len(), 4, "points on {nodes:?}");

    let mut plan = vec!["plan", "-detailed-exitcode", "-input=false"];
    plan.extend(vars);
    let output = tf.run(&plan)?;
    assert_eq!(
        output.status.code(),
        Some(0),
        "plan after apply must be empty:\n{}",
        describe(&output)
    );

    // The periodic task is there and the controller stores its results.
    let client = lab.client_as(&lab.member_token)?;
    let periodic = outputs["periodic_task"]["value"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let task = block_on(async { Ok(client.get_task(&periodic).await?) })?;
    assert_eq!(task.schedule, "periodic");
    assert_eq!(task.interval_seconds, 300);

    while_applied()?;

    let mut destroy = vec!["destroy", "-auto-approve", "-input=false"];
    destroy.extend(vars);
    tf.ok(&destroy)?;
    let (vms, platforms) =
        block_on(async { Ok((client.list_vms("").await?, client.list_platforms().await?)) })?;
    assert!(vms.is_empty(), "VMs left after destroy: {vms:#?}");
    assert!(
        platforms.is_empty(),
        "platforms left after destroy: {platforms:#?}"
    );
    let tasks = block_on(async { Ok(client.get_task(&periodic).await) })?;
    assert!(
        tasks.as_ref().is_err_and(|e| e.is_not_found()),
        "the periodic task survived destroy: {tasks:?}"
    );
    Ok(())
}

/// Every mcast program of the platform runs with the platform's control key
/// in its environment, put there by the controller (the example sets none),
/// so the MSCS and its points authenticate each other: read back from the
/// running processes, against what `GET /v1/platforms/{id}/control-key` says.
/// A check for the labs whose controller is this build's (`while_applied`):
/// a controller of an older release hands out no keys and has no such route.
pub fn programs_hold_the_platform_key(lab: &Lab) -> anyhow::Result<()> {
    let client = lab.client_as(&lab.member_token)?;
    let (platforms, vms) =
        block_on(async { Ok((client.list_platforms().await?, client.list_vms("").await?)) })?;
    anyhow::ensure!(platforms.len() == 1, "one platform: {platforms:#?}");
    let platform = &platforms[0];
    let key = block_on(async { Ok(client.platform_control_key(&platform.id).await?) })?;
    let mut keyed = 0;
    for vm in &vms {
        for pid in crate::guest_processes(&vm.id) {
            let Ok(exe) = crate::executable(pid) else {
                continue;
            };
            let name = exe.file_name().unwrap_or_default().to_string_lossy();
            if !name.starts_with("mcast-") {
                continue;
            }
            let environ = std::fs::read(format!("/proc/{pid}/environ"))?;
            let env: std::collections::BTreeMap<String, String> = environ
                .split(|b| *b == 0)
                .filter_map(|kv| std::str::from_utf8(kv).ok()?.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            anyhow::ensure!(
                env.get("MEASURELAB_CONTROL_KEY") == Some(&key.control_key)
                    && env.get("MEASURELAB_CONTROL_KEY_ID") == Some(&platform.id),
                "{name} (pid {pid}) in {} runs without the platform's control key",
                vm.name
            );
            keyed += 1;
        }
    }
    // The MSCS and the 4 points.
    anyhow::ensure!(keyed == 5, "{keyed} keyed mcast programs, expected 5");
    Ok(())
}
