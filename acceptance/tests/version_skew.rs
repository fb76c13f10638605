//! Mixed versions (issue 13 §3, docs/version-skew.md): the last release's
//! node agent and guest agent, built from the commit in
//! `compat/released/RELEASE`, against this tree's controller, and the
//! reverse. Both run the multicast example through this tree's provider with
//! the same checks as `multicast_module.rs`; the first also runs
//! service-host tasks with the checks of `measurement_task.rs` while its
//! agents are half upgraded.
//!
//! Each test starts from the release as it was deployed: a lab made by the
//! release's `measurelab` (its controller, agents and guest agents, its
//! database and agent state). Then one side is upgraded as a package
//! upgrade does it: the process is stopped with SIGTERM and this build's
//! `lab up` starts it again from this build's binary; the other side keeps
//! running, untouched. The release predates TLS, so its lab is plaintext
//! and the upgrading `lab up` says `--plaintext` too.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use measurelab_acceptance::multicast_example::{paper_experiment, programs_hold_the_platform_key};
use measurelab_acceptance::release::Release;
use measurelab_acceptance::service_host::ServiceHostTask;
use measurelab_acceptance::{
    acc_enabled, block_on, executable, guest_processes, Lab, PROVIDER_BLOCK,
};

const NODES: u32 = 4;

fn agent(k: u32) -> String {
    format!("n{k}-agent")
}

/// The release as deployed: its binaries, and a lab its own `lab up` made.
struct Deployed {
    release: Release,
    /// Holds the release's `measurelab` and `measurelab-guest-agent`.
    dir: PathBuf,
    lab: Lab,
}

impl Deployed {
    fn up() -> anyhow::Result<Deployed> {
        let release = Release::recorded()?;
        let dir = release.binaries()?;
        let lab = Lab::up_from(&dir.join("measurelab"), NODES, &[])?;
        Ok(Deployed { release, dir, lab })
    }
}

/// `lab up` from this build on a lab made by the release: restarts whatever
/// was stopped from this build's binary.
fn up_from_this_build(lab: &Lab) -> anyhow::Result<()> {
    let nodes = NODES.to_string();
    lab.measurelab(&[
        "lab",
        "up",
        "--nodes",
        &nodes,
        "--http-port",
        "0",
        "--plaintext",
    ])?;
    Ok(())
}

/// Check that every running VM's guest agent is `guest_agent`: the node agent
/// starts the one beside its own executable, so this is the agent's release.
/// A namespace guest sees its binaries bind-mounted under
/// `/opt/measurelab/bin`, so `/proc/PID/exe` names that path; the file is
/// the same one, which its device and inode show.
fn guest_agents_are(lab: &Lab, guest_agent: &Path) -> anyhow::Result<()> {
    let expected =
        std::fs::metadata(guest_agent).with_context(|| format!("{}", guest_agent.display()))?;
    let client = lab.client()?;
    let vms = block_on(async { Ok(client.list_vms("").await?) })?;
    anyhow::ensure!(!vms.is_empty(), "no VMs while the example is applied");
    for vm in &vms {
        let processes = guest_processes(&vm.id);
        let runs_it = processes.iter().any(|pid| {
            std::fs::metadata(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| (exe.dev(), exe.ino()) == (expected.dev(), expected.ino()))
        });
        let executables: Vec<(i32, PathBuf)> = processes
            .iter()
            .filter_map(|pid| executable(*pid).ok().map(|exe| (*pid, exe)))
            .collect();
        anyhow::ensure!(
            runs_it,
            "VM {} on {}: no process runs {} (its processes: {executables:?})",
            vm.name,
            vm.node,
            guest_agent.display()
        );
    }
    Ok(())
}

/// The order the policy supports: the controller is upgraded first, and the
/// release's agents and guest agents keep running under it. Then the agents
/// of n2..n4 are upgraded and service-host tasks run across the two
/// versions, with n1's release agent orchestrating and as a receiver.
#[test]
fn acc_release_agents_under_this_controller() -> anyhow::Result<()> {
    if !acc_enabled("acc_release_agents_under_this_controller") {
        return Ok(());
    }
    let Deployed {
        release,
        dir: release_dir,
        lab,
    } = Deployed::up()?;
    let release_measurelab = release_dir.join("measurelab");
    let agents: Vec<i32> = (1..=NODES)
        .map(|k| lab.pid(&agent(k)))
        .collect::<anyhow::Result<_>>()?;

    lab.stop_and_wait("controller", Duration::from_secs(30))?;
    up_from_this_build(&lab)?;
    assert_eq!(
        executable(lab.pid("controller")?)?,
        lab.binaries.measurelab(),
        "the controller runs this build"
    );
    for (k, pid) in (1..=NODES).zip(&agents) {
        assert_eq!(lab.pid(&agent(k))?, *pid, "n{k}'s agent was restarted");
        assert_eq!(
            executable(*pid)?,
            release_measurelab,
            "n{k}'s agent runs release {}",
            release.version
        );
    }
    lab.wait_online(NODES as usize, Duration::from_secs(60))?;

    // This controller hands the platform's key to the release's agents,
    // which pass it on to the programs like any other env.
    paper_experiment(&lab, || {
        guest_agents_are(&lab, &release_dir.join("measurelab-guest-agent"))?;
        programs_hold_the_platform_key(&lab)
    })?;

    // The agents' upgrade under way: n2..n4 run this build, n1 still the
    // release (control protocol version 1, unsigned orders).
    for k in 2..=NODES {
        lab.stop_and_wait(&agent(k), Duration::from_secs(30))?;
    }
    up_from_this_build(&lab)?;
    assert_eq!(lab.pid(&agent(1))?, agents[0], "n1's agent was restarted");
    assert_eq!(executable(agents[0])?, release_measurelab);
    for k in 2..=NODES {
        assert_eq!(
            executable(lab.pid(&agent(k))?)?,
            lab.binaries.measurelab(),
            "n{k}'s agent runs this build"
        );
    }
    lab.wait_online(NODES as usize, Duration::from_secs(60))?;
    service_host_tasks_across_versions(&lab)
}

/// Service-host tasks while n1's agent is the release's and the others this
/// build's, in both directions: n1's release agent orchestrates (it does not
/// sign, and the upgraded points obey its unsigned orders because the
/// controller marks it old, from the address of its service endpoint), then
/// an upgraded agent orchestrates with n1's release point as a receiver (it
/// gets unsigned orders, the others signed ones).
fn service_host_tasks_across_versions(lab: &Lab) -> anyhow::Result<()> {
    let old_orchestrator = ServiceHostTask {
        resource: "old_orchestrator",
        name: "acc-svc-old-orchestrator",
        nodes: &["n1", "n2", "n3", "n4"],
        rate_pps: 300,
        group: "239.192.7.3",
        port: 50074,
    };
    let old_receiver = ServiceHostTask {
        resource: "old_receiver",
        name: "acc-svc-old-receiver",
        nodes: &["n2", "n1", "n3"],
        rate_pps: 300,
        group: "239.192.7.4",
        port: 50076,
    };
    let tf = lab.terraform()?;
    // One after the other, so neither run's probes share the lab with the
    // other's.
    tf.write(
        "main.tf",
        &format!(
            "{PROVIDER_BLOCK}{}{}",
            old_orchestrator.hcl(None),
            old_receiver.hcl(Some("measurelab_measurement_task.old_orchestrator"))
        ),
    )?;
    tf.init()?;
    tf.apply()?;
    old_orchestrator.check_run(&tf)?;
    old_receiver.check_run(&tf)?;
    tf.destroy()?;
    Ok(())
}

/// The reverse: this build's agents and guest agents under the release's
/// controller (a controller rolled back, or agents upgraded out of order).
/// The policy does not promise this direction for new features, only that
/// what both versions know keeps working; the example uses nothing newer.
#[test]
fn acc_this_agents_under_the_release_controller() -> anyhow::Result<()> {
    if !acc_enabled("acc_this_agents_under_the_release_controller") {
        return Ok(());
    }
    let Deployed {
        release,
        dir: release_dir,
        lab,
    } = Deployed::up()?;
    let release_measurelab = release_dir.join("measurelab");
    let controller = lab.pid("controller")?;

    for k in 1..=NODES {
        lab.stop_and_wait(&agent(k), Duration::from_secs(30))?;
    }
    up_from_this_build(&lab)?;
    assert_eq!(
        lab.pid("controller")?,
        controller,
        "the controller was restarted"
    );
    assert_eq!(
        executable(controller)?,
        release_measurelab,
        "the controller runs release {}",
        release.version
    );
    for k in 1..=NODES {
        assert_eq!(
            executable(lab.pid(&agent(k))?)?,
            lab.binaries.measurelab(),
            "n{k}'s agent runs this build"
        );
    }
    lab.wait_online(NODES as usize, Duration::from_secs(60))?;

    let guest_agent = lab.binaries.dir.join("measurelab-guest-agent");
    paper_experiment(&lab, || guest_agents_are(&lab, &guest_agent))
}
