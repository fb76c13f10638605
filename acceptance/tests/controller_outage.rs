//! A controller outage during a periodic task (issue 10): the controller is
//! stopped with SIGSTOP for five minutes while a periodic multicast task runs
//! on a real lab, then resumed. Every run the MSCS made is in the controller,
//! once.
//!
//! SIGSTOP is harsher than a kill for the clients: the controller's sockets
//! stay open and the kernel still accepts connections into their backlogs,
//! so nothing is refused and nothing answers. Every agent call hangs until
//! its own timeout, the results made meanwhile wait in the MSCS's outbox and
//! the node agent's spool, and have to arrive once the controller runs
//! again. The in-process counterpart with a fake controller is
//! `agent/tests/reconcile_fake.rs`
//! (`a_result_outlives_a_controller_outage_longer_than_the_old_retries`).
//!
//! `MEASURELAB_ACC_OUTAGE_SECONDS` shortens the outage for iterating on this
//! test by hand; the default, and CI, keep the 300 s.

use std::time::{Duration, Instant};

use measurelab_acceptance::periodic_task::{
    apply_periodic_task, assert_every_run_once, started, INTERVAL_SECONDS,
};
use measurelab_acceptance::{acc_enabled, block_on, Lab};
use measurelab_api::http::{NodeStatus, ResultRecord};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const DEFAULT_OUTAGE_SECONDS: u64 = 300;
const OUTAGE_VAR: &str = "MEASURELAB_ACC_OUTAGE_SECONDS";
/// After SIGCONT, how long the backlog may take to drain: the agent's spool
/// and heartbeat retries wait at most 30 s between attempts, and an attempt
/// sent just before the controller resumed may hang for the agent's 10 s RPC
/// timeout; the MSCS's outbox backs off to 30 s as well. Twice the sum.
const CATCH_UP: Duration = Duration::from_secs(2 * (30 + 10 + 30));

fn outage() -> anyhow::Result<Duration> {
    match std::env::var(OUTAGE_VAR) {
        Err(std::env::VarError::NotPresent) => Ok(Duration::from_secs(DEFAULT_OUTAGE_SECONDS)),
        Err(err) => anyhow::bail!("{OUTAGE_VAR}: {err}"),
        Ok(text) => {
            let seconds: u64 = text.trim().parse().map_err(|err| {
                anyhow::anyhow!("{OUTAGE_VAR}={text:?} is not a number of seconds: {err}")
            })?;
            // Shorter than two intervals, no run would start while the
            // controller is stopped, and the test would prove nothing.
            anyhow::ensure!(
                seconds >= 2 * INTERVAL_SECONDS,
                "{OUTAGE_VAR}={seconds}: at least {} s, two task intervals",
                2 * INTERVAL_SECONDS
            );
            Ok(Duration::from_secs(seconds))
        }
    }
}

#[test]
fn acc_controller_stopped_with_sigstop_during_a_periodic_task() -> anyhow::Result<()> {
    if !acc_enabled("acc_controller_stopped_with_sigstop_during_a_periodic_task") {
        return Ok(());
    }
    let outage = outage()?;
    let lab = Lab::up_with(2, &["--heartbeat-interval-seconds", "1"])?;
    let periodic = apply_periodic_task(&lab, "outage", "239.192.10.5")?;

    let client = lab.client()?;
    let history = || periodic.history(&client);
    let wait_for = |what: &str,
                    deadline: Instant,
                    done: &dyn Fn(&[ResultRecord]) -> bool|
     -> anyhow::Result<Vec<ResultRecord>> {
        loop {
            let records = history()?;
            if done(&records) {
                return Ok(records);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{what}: not within the deadline; stored runs {:?}",
                records.iter().map(started).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    wait_for(
        "two runs before the outage",
        Instant::now() + Duration::from_secs(INTERVAL_SECONDS * 8),
        &|records| records.len() >= 2,
    )?;

    let frozen = lab.freeze("controller")?;
    let stopped_at = OffsetDateTime::now_utc();
    // The outage itself: a duration the issue sets, not a wait for anything.
    std::thread::sleep(outage);
    let resumed_at = OffsetDateTime::now_utc();
    frozen.thaw()?;
    eprintln!("controller stopped {stopped_at}, resumed {resumed_at}");

    // Results reach the controller oldest first (the MSCS's outbox and the
    // agent's spool both keep their order), so a run that started after the
    // resume being stored means the backlog has drained.
    let records = wait_for(
        "a run started after the controller resumed",
        Instant::now() + CATCH_UP,
        &|records| records.iter().any(|r| started(r) > resumed_at),
    )?;

    let starts = assert_every_run_once(&records);
    eprintln!("runs stored: {starts:?}");
    let during = starts
        .iter()
        .filter(|s| **s > stopped_at && **s < resumed_at)
        .count();
    // One run per interval of the outage, give or take the one at each edge.
    let expected = (outage.as_secs() / INTERVAL_SECONDS) as usize - 1;
    assert!(
        during >= expected,
        "{during} runs started while the controller was stopped, expected at least {expected}: {starts:?}"
    );

    // The nodes were silent to the controller for the whole outage; their
    // agents find it again and heartbeat after the resume.
    let deadline = Instant::now() + CATCH_UP;
    for name in ["n1", "n2"] {
        loop {
            let node = lab.node(name)?;
            let back = node.as_ref().is_some_and(|node| {
                node.status == NodeStatus::Online
                    && node
                        .last_heartbeat
                        .as_deref()
                        .and_then(|at| OffsetDateTime::parse(at, &Rfc3339).ok())
                        .is_some_and(|at| at > resumed_at)
            });
            if back {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "node {name} not online with a heartbeat after {resumed_at}: {node:#?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    periodic.tf.destroy()?;
    let vms = block_on(async { Ok(client.list_vms("").await?) })?;
    assert!(vms.is_empty(), "VMs left after destroy: {vms:#?}");
    Ok(())
}
