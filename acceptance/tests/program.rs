//! Acceptance tests of `measurelab_program`: create -> import-verify ->
//! update -> replace -> destroy.

use std::path::Path;
use std::time::Duration;

use measurelab_acceptance::{
    acc_enabled, block_on, describe, planned_actions, resource_values, Lab, Terraform,
    PROVIDER_BLOCK,
};
use measurelab_api::http::Program;

const ADDRESS: &str = "measurelab_program.probe";

fn config(source: &str) -> String {
    format!(
        "{PROVIDER_BLOCK}\nresource \"measurelab_program\" \"probe\" {{\n  name   = \"probe\"\n  source = \"${{path.module}}/{source}\"\n}}\n"
    )
}

/// The program as the controller has it; `None` when it has none of that name.
fn program(lab: &Lab, key: &str) -> anyhow::Result<Option<Program>> {
    let client = lab.client()?;
    let path = format!("/v1/programs/{key}");
    block_on(async move {
        match client
            .request::<(), Program>(reqwest::Method::GET, &path, None)
            .await
        {
            Ok(program) => Ok(Some(program)),
            Err(err) if err.is_not_found() => Ok(None),
            Err(err) => Err(err.into()),
        }
    })
}

/// SHA-256 of a file by coreutils, independent of the provider's and the
/// controller's own digests.
fn sha256sum(path: &Path) -> anyhow::Result<String> {
    let output = std::process::Command::new("sha256sum").arg(path).output()?;
    anyhow::ensure!(output.status.success(), "{}", describe(&output));
    let text = String::from_utf8(output.stdout)?;
    text.split_whitespace()
        .next()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("sha256sum printed nothing"))
}

fn write_program(tf: &Terraform, name: &str, text: &str) -> anyhow::Result<()> {
    tf.write(name, &format!("#!/bin/sh\n{text}\n"))
}

#[test]
fn acc_program_basic() -> anyhow::Result<()> {
    if !acc_enabled("acc_program_basic") {
        return Ok(());
    }
    let lab = Lab::up(1)?;
    let tf = lab.terraform()?;
    write_program(&tf, "probe.sh", "echo one")?;
    tf.write("main.tf", &config("probe.sh"))?;
    tf.init()?;
    tf.apply()?;
    let stored = program(&lab, "probe")?.ok_or_else(|| anyhow::anyhow!("program not uploaded"))?;
    let file = tf.dir.path().join("probe.sh");
    assert_eq!(stored.sha256, sha256sum(&file)?);
    assert_eq!(stored.size_bytes, std::fs::metadata(&file)?.len());
    let state = tf.state_json()?;
    let values = resource_values(&state, ADDRESS)
        .cloned()
        .unwrap_or_default();
    assert_eq!(values["id"], stored.id.as_str());
    assert_eq!(values["sha256"], stored.sha256.as_str());
    let (code, output) = tf.plan_exit_code()?;
    assert_eq!(code, 0, "{}", describe(&output));

    // Update: the same content under another path is the same program.
    std::fs::copy(&file, tf.dir.path().join("probe-copy.sh"))?;
    tf.write("main.tf", &config("probe-copy.sh"))?;
    let plan = tf.saved_plan_json("move.tfplan")?;
    assert_eq!(planned_actions(&plan, ADDRESS), vec!["update"], "{plan}");
    tf.ok(&["apply", "-input=false", "move.tfplan"])?;
    let moved = program(&lab, "probe")?.ok_or_else(|| anyhow::anyhow!("program gone"))?;
    assert_eq!(moved.id, stored.id, "a moved file must keep the program");
    let (code, output) = tf.plan_exit_code()?;
    assert_eq!(code, 0, "{}", describe(&output));

    // Replace: new content is a new program (the controller keeps content
    // immutable under a name).
    write_program(&tf, "probe-copy.sh", "echo two")?;
    let plan = tf.saved_plan_json("content.tfplan")?;
    assert_eq!(
        planned_actions(&plan, ADDRESS),
        vec!["delete", "create"],
        "{plan}"
    );
    tf.ok(&["apply", "-input=false", "content.tfplan"])?;
    let replaced = program(&lab, "probe")?.ok_or_else(|| anyhow::anyhow!("program gone"))?;
    assert_ne!(replaced.id, stored.id);
    assert_eq!(
        replaced.sha256,
        sha256sum(&tf.dir.path().join("probe-copy.sh"))?
    );
    assert!(
        program(&lab, &stored.id)?.is_none(),
        "the old program must be deleted"
    );
    let (code, output) = tf.plan_exit_code()?;
    assert_eq!(code, 0, "{}", describe(&output));

    tf.destroy()?;
    assert!(
        program(&lab, "probe")?.is_none(),
        "destroy must delete the program"
    );
    Ok(())
}

#[test]
fn acc_program_import() -> anyhow::Result<()> {
    if !acc_enabled("acc_program_import") {
        return Ok(());
    }
    let lab = Lab::up(1)?;
    let tf = lab.terraform()?;
    write_program(&tf, "probe.sh", "echo one")?;
    tf.write("main.tf", &config("probe.sh"))?;
    tf.init()?;
    tf.apply()?;
    let before = tf.state_json()?;
    let created = resource_values(&before, ADDRESS)
        .cloned()
        .unwrap_or_default();
    tf.ok(&["state", "rm", ADDRESS])?;
    tf.write(
        "import.tf",
        &format!("import {{\n  to = {ADDRESS}\n  id = \"probe\"\n}}\n"),
    )?;
    let plan = tf.saved_plan_json("import.tfplan")?;
    assert_eq!(
        planned_actions(&plan, ADDRESS),
        vec!["update"],
        "import, then fill in `source`: {plan}"
    );
    tf.ok(&["apply", "-input=false", "import.tfplan"])?;
    tf.remove("import.tf")?;
    let after = tf.state_json()?;
    let imported = resource_values(&after, ADDRESS)
        .cloned()
        .unwrap_or_default();
    // `source` is a local path the controller never sees; everything the
    // controller knows must come back as it was.
    for attribute in ["id", "name", "sha256", "size_bytes", "created_at", "source"] {
        assert_eq!(
            imported[attribute], created[attribute],
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
    tf.destroy()?;
    assert!(program(&lab, "probe")?.is_none());
    Ok(())
}

#[test]
fn acc_program_bad_value() -> anyhow::Result<()> {
    if !acc_enabled("acc_program_bad_value") {
        return Ok(());
    }
    let lab = Lab::up(1)?;
    let tf = lab.terraform()?;
    tf.write("main.tf", &config("missing.sh"))?;
    tf.init()?;
    let output = tf.run(&["plan", "-input=false"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(stderr.contains("Cannot use the program file"), "{stderr}");
    assert!(
        stderr.contains("source = "),
        "must point at source:\n{stderr}"
    );
    Ok(())
}

/// Peak resident set (VmHWM) of a process in KiB; `None` once it is gone.
fn peak_rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The provider processes Terraform (`parent`) runs now.
fn provider_pids(parent: u32) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The field after the `(comm)` state letter is the parent pid.
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().nth(1));
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            ppid == Some(parent.to_string().as_str()) && comm.trim().starts_with("terraform-provi")
        })
        .collect()
}

/// A 48 MiB program is hashed at plan and streamed at apply without the
/// provider holding it: its peak RSS stays far below the file's size.
/// The peak is a high-water mark read until Terraform exits, so a missed
/// last reading can only hide memory, never invent it. Before streaming the
/// provider peaked at 70 MiB planning and 198 MiB applying such a file.
#[test]
fn acc_program_upload_does_not_hold_the_file() -> anyhow::Result<()> {
    if !acc_enabled("acc_program_upload_does_not_hold_the_file") {
        return Ok(());
    }
    const SIZE: usize = 48 * 1024 * 1024;
    let lab = Lab::up(1)?;
    let tf = lab.terraform()?;
    // Incompressible enough that no layer could keep it small.
    let content: Vec<u8> = (0..SIZE)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = tf.dir.path().join("big.bin");
    std::fs::write(&file, &content)?;
    drop(content);
    tf.write("main.tf", &config("big.bin"))?;
    tf.init()?;
    for (phase, args) in [
        ("plan", ["plan", "-input=false", "-out=big.tfplan"]),
        ("apply", ["apply", "-input=false", "big.tfplan"]),
    ] {
        let mut terraform = tf
            .command(&[args[0], args[1], args[2], "-no-color"])
            .spawn()?;
        let mut peak_kib = 0;
        let status = loop {
            for pid in provider_pids(terraform.id()) {
                peak_kib = peak_kib.max(peak_rss_kib(&pid).unwrap_or(0));
            }
            if let Some(status) = terraform.try_wait()? {
                break status;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        anyhow::ensure!(status.success(), "terraform {phase} failed");
        anyhow::ensure!(peak_kib > 0, "the provider of {phase} was never seen");
        let peak = peak_kib as usize * 1024;
        assert!(
            peak < SIZE / 2,
            "the provider peaked at {} MiB during {phase} of a {} MiB program",
            peak >> 20,
            SIZE >> 20
        );
    }
    let stored = program(&lab, "probe")?.ok_or_else(|| anyhow::anyhow!("program not uploaded"))?;
    assert_eq!(stored.size_bytes, SIZE as u64);
    assert_eq!(stored.sha256, sha256sum(&file)?);
    tf.destroy()?;
    Ok(())
}
