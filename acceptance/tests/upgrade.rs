//! Rolling upgrades (issue 13 §3): a node agent replaced by a new binary and
//! restarted while a periodic multicast task runs on its node. The guests keep
//! running (not one guest process is restarted), and the task's history has
//! every run once: no run is lost while the agent is down, none is stored
//! twice when the restarted agent re-posts what it had spooled.
//!
//! The "new binary" is this build copied to a new path (a new file, as a
//! package upgrade installs). The last release's binaries against this
//! controller, and the reverse, are `version_skew.rs`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use measurelab_acceptance::periodic_task::{
    apply_periodic_task, assert_every_run_once, started, INTERVAL_SECONDS,
};
use measurelab_acceptance::{acc_enabled, block_on, guest_processes, Lab};
use time::OffsetDateTime;

/// `measurelab` and the guest agent copied into `dir`: what an upgrade installs.
fn install_new_binaries(lab: &Lab, dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    for name in ["measurelab", "measurelab-guest-agent"] {
        std::fs::copy(lab.binaries.dir.join(name), dir.join(name))?;
    }
    Ok(dir.join("measurelab"))
}

#[test]
fn acc_agent_replaced_during_a_periodic_task() -> anyhow::Result<()> {
    if !acc_enabled("acc_agent_replaced_during_a_periodic_task") {
        return Ok(());
    }
    let lab_flags = ["--heartbeat-interval-seconds", "1"];
    let lab = Lab::up_with(2, &lab_flags)?;
    let periodic = apply_periodic_task(&lab, "upgrade", "239.192.13.3")?;
    let tf = &periodic.tf;

    let client = lab.client()?;
    let history = || periodic.history(&client);
    let wait_for_runs = |count: usize, after: OffsetDateTime| -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(INTERVAL_SECONDS * (count as u64 + 6));
        loop {
            let records = history()?;
            if records.iter().filter(|r| started(r) > after).count() >= count {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "fewer than {count} runs after {after}: {records:#?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let applied = OffsetDateTime::now_utc();
    wait_for_runs(2, OffsetDateTime::UNIX_EPOCH)?;

    let vms = block_on(async { Ok(client.list_vms("").await?) })?;
    anyhow::ensure!(vms.len() == 3, "an MSCS and two points: {vms:#?}");
    let guests_before: Vec<(String, BTreeSet<i32>)> = vms
        .iter()
        .map(|vm| (vm.name.clone(), guest_processes(&vm.id)))
        .collect();
    for (name, processes) in &guests_before {
        anyhow::ensure!(!processes.is_empty(), "guest {name} has no processes");
    }

    // The upgrade: stop the agent as systemd would (SIGTERM), then start it
    // again from the newly installed binary.
    let old_pid = lab.pid("n1-agent")?;
    let new_binary = install_new_binaries(&lab, &tf.dir.path().join("next"))?;
    lab.stop_and_wait("n1-agent", Duration::from_secs(30))?;
    let down_at = OffsetDateTime::now_utc();
    // Down across a run's start: the MSCS's next run begins while the agent is gone.
    std::thread::sleep(Duration::from_secs(INTERVAL_SECONDS));
    let mut up = vec!["lab", "up", "--nodes", "2", "--http-port", "0"];
    up.extend(lab_flags);
    lab.measurelab_from(&new_binary, &up)?;
    let new_pid = lab.pid("n1-agent")?;
    assert_ne!(new_pid, old_pid);
    assert_eq!(
        std::fs::read_link(format!("/proc/{new_pid}/exe"))?,
        new_binary,
        "the restarted agent runs the new binary"
    );

    wait_for_runs(3, down_at)?;
    let records = history()?;
    for (name, processes) in &guests_before {
        let vm = vms
            .iter()
            .find(|vm| &vm.name == name)
            .expect("listed above");
        assert_eq!(
            &guest_processes(&vm.id),
            processes,
            "guest {name}'s processes changed: it was restarted"
        );
    }
    let starts = assert_every_run_once(&records);
    assert!(
        starts
            .iter()
            .any(|s| *s > down_at && *s < down_at + Duration::from_secs(INTERVAL_SECONDS)),
        "no run started while the agent was down: {starts:?}"
    );
    eprintln!("applied {applied}, agent down {down_at}, runs {starts:?}");
    tf.destroy()?;
    Ok(())
}
