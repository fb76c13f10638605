//! Three controller replicas on one PostgreSQL database (issue 13 §4): the
//! replica that Terraform and the agents talk to is killed in the middle of
//! an apply. The apply completes through another replica, nothing it made
//! exists twice, and the nodes stay online. Then `vm exec` works through
//! either survivor, forwarded by the one that does not hold the node's
//! exec channel.

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use measurelab_acceptance::{acc_enabled, block_on, describe, Lab, PROVIDER_BLOCK};
use measurelab_api::http::{NodeStatus, Vm};
use measurelab_testbed::pg::TestDatabase;

const PLATFORM: &str = "replicas";
/// Enough VMs that creating them outlasts the moment of the kill.
const VMS: u32 = 8;
/// `lab up --offline-after-seconds`: the leader calls a node offline after
/// this much silence. Short, so a node the failover lost shows within the
/// test's watch.
const OFFLINE_AFTER_SECONDS: u64 = 5;

fn config() -> String {
    let mut hcl = format!(
        r#"{PROVIDER_BLOCK}
resource "measurelab_virtual_platform" "slice" {{
  name  = "{PLATFORM}"
  nodes = ["n1", "n2"]
}}
"#
    );
    for i in 0..VMS {
        let node = if i % 2 == 0 { "n1" } else { "n2" };
        hcl.push_str(&format!(
            r#"
resource "measurelab_vm" "vm{i}" {{
  name       = "vm{i}"
  platform   = measurelab_virtual_platform.slice.name
  node       = "{node}"
  appliance  = "namespace"
  backend    = "namespace"
  vcpus      = 1
  memory_mib = 32

  timeouts {{
    create = "3m"
    delete = "2m"
  }}
}}
"#
        ));
    }
    hcl
}

#[test]
fn acc_controller_replica_killed_mid_apply() -> anyhow::Result<()> {
    if !acc_enabled("acc_controller_replica_killed_mid_apply") {
        return Ok(());
    }
    // Declared before the lab, so it is dropped after the lab is down.
    let db = measurelab_testbed::pg::database()?;
    let offline_after = OFFLINE_AFTER_SECONDS.to_string();
    let lab = Lab::up_with(
        2,
        &[
            "--controllers",
            "3",
            "--store",
            db.url(),
            "--heartbeat-interval-seconds",
            "1",
            "--offline-after-seconds",
            &offline_after,
        ],
    )?;
    let endpoints: Vec<&str> = lab.endpoint.split(',').collect();
    assert_eq!(endpoints.len(), 3, "lab env: {}", lab.endpoint);
    let client = lab.client()?;
    // Events are numbered in commit order: offline events of this test
    // come after the last one now.
    let first_event = block_on({
        let client = client.clone();
        async move {
            Ok(client
                .list_all::<measurelab_api::http::EventList>("/v1/events")
                .await?
                .last()
                .map_or(0, |event| event.id))
        }
    })?;

    let tf = lab.terraform()?;
    tf.write("main.tf", &config())?;
    tf.init()?;
    let mut apply = tf
        .command(&["apply", "-auto-approve", "-input=false", "-no-color"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;

    // Mid-apply: the platform is made and its VMs are being created.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let vms = block_on({
            let client = client.clone();
            async move { Ok(client.list_vms("").await.unwrap_or_default()) }
        })?;
        if !vms.is_empty() {
            break;
        }
        if let Some(status) = apply.try_wait()? {
            let output = apply.wait_with_output()?;
            anyhow::bail!(
                "the apply ended ({status}) before any VM existed:\n{}",
                describe(&output)
            );
        }
        anyhow::ensure!(Instant::now() < deadline, "no VM within 60 s of apply");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Replica 1 is the first endpoint of every client and agent, and the
    // leader (it started first): the one whose loss costs the most.
    let victim = lab.pid("controller")?;
    anyhow::ensure!(
        apply.try_wait()?.is_none(),
        "the apply finished before the replica was killed: the test must kill mid-apply"
    );
    let killed = std::process::Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()?;
    anyhow::ensure!(killed.success(), "kill -9 {victim} failed");
    let killed_at = Instant::now();

    let output = apply.wait_with_output()?;
    assert!(
        output.status.success(),
        "the apply must complete through the other replicas:\n{}",
        describe(&output)
    );
    eprintln!(
        "apply completed {:.1?} after replica 1 was killed",
        killed_at.elapsed()
    );

    // No duplicates: every VM of the configuration exists once, and is the
    // one Terraform recorded.
    let vms = block_on({
        let client = client.clone();
        async move { Ok(client.list_vms("").await?) }
    })?;
    let mut by_name: BTreeMap<&str, u32> = BTreeMap::new();
    for vm in &vms {
        assert_eq!(vm.platform, PLATFORM, "{vm:?}");
        *by_name.entry(vm.name.as_str()).or_default() += 1;
    }
    let expected: BTreeMap<String, u32> = (0..VMS).map(|i| (format!("vm{i}"), 1)).collect();
    let found: BTreeMap<String, u32> = by_name
        .into_iter()
        .map(|(name, count)| (name.to_string(), count))
        .collect();
    assert_eq!(found, expected);
    let platforms = block_on({
        let client = client.clone();
        async move { Ok(client.list_platforms().await?) }
    })?;
    assert_eq!(
        platforms.iter().filter(|p| p.name == PLATFORM).count(),
        1,
        "{platforms:?}"
    );
    let state = tf.state_json()?;
    let state_ids: Vec<String> = (0..VMS)
        .map(|i| {
            measurelab_acceptance::resource_values(&state, &format!("measurelab_vm.vm{i}"))
                .and_then(|v| v["id"].as_str())
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    for (i, id) in state_ids.iter().enumerate() {
        assert!(
            vms.iter()
                .any(|vm| &vm.id == id && vm.name == format!("vm{i}")),
            "vm{i}: the state's id {id:?} is not the controller's"
        );
    }
    let (code, plan) = tf.plan_exit_code()?;
    assert_eq!(code, 0, "state and controller agree:\n{}", describe(&plan));

    // The nodes stay online: their agents went on to another replica, and
    // the new leader's sweep saw their heartbeats. Watched for twice the
    // offline threshold after the apply.
    let watch_until = Instant::now() + Duration::from_secs(2 * OFFLINE_AFTER_SECONDS);
    while Instant::now() < watch_until {
        for node in lab.nodes()? {
            assert_eq!(node.status, NodeStatus::Online, "{}: {node:?}", node.name);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let events = block_on({
        let client = client.clone();
        async move {
            Ok(client
                .list_all::<measurelab_api::http::EventList>(&format!(
                    "/v1/events?after={first_event}"
                ))
                .await?)
        }
    })?;
    let offline: Vec<_> = events
        .iter()
        .filter(|e| e.reason == "NodeOffline")
        .collect();
    assert!(offline.is_empty(), "nodes went offline: {offline:?}");

    exec_through_each_surviving_replica(&lab, &db, &endpoints[1..], &vms)
}

/// Each node's agent keeps its exec channel on one replica, so of the two
/// survivors one forwards every session for that node to the other
/// (`--advertise-url`, which the lab gives each replica): a `vm exec`
/// through each surviving endpoint alone, on a VM of each node, prints
/// what the command printed in that VM.
fn exec_through_each_surviving_replica(
    lab: &Lab,
    db: &TestDatabase,
    survivors: &[&str],
    vms: &[Vm],
) -> anyhow::Result<()> {
    let nodes = lab.nodes()?;
    // The killed replica's rows stay until each agent attaches again.
    let deadline = Instant::now() + Duration::from_secs(30);
    let holders = loop {
        let holders = exec_channel_holders(db)?;
        let settled = nodes.iter().all(|node| {
            holders
                .get(&node.id)
                .is_some_and(|holder| survivors.contains(&holder.url.as_str()))
        });
        if settled {
            break holders;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "within 30 s, not every node's exec channel is on a surviving replica \
             {survivors:?}: {holders:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };

    let mut forwarded = 0;
    for node in &nodes {
        let vm = vms
            .iter()
            .find(|vm| vm.node == node.name)
            .ok_or_else(|| anyhow::anyhow!("no VM on {}: {vms:?}", node.name))?;
        let holder = &holders[&node.id];
        for endpoint in survivors {
            // Shell-safe, and no other command prints it.
            let port = endpoint.rsplit(':').next().unwrap_or_default();
            let token = format!("exec-{}-via-port-{port}", node.name);
            let output = exec_through(lab, endpoint, &vm.name, &token)?;
            let how = if *endpoint == holder.url {
                "served by the replica holding the channel"
            } else {
                forwarded += 1;
                "forwarded to the replica holding the channel"
            };
            assert!(
                output.status.success(),
                "vm exec {} through {endpoint} ({how}, {}):\n{}",
                vm.name,
                holder.url,
                describe(&output)
            );
            assert_eq!(
                String::from_utf8_lossy(&output.stdout),
                // The namespace backend's guest hostname: ml-NAME-ID8.
                format!(
                    "{token}\nml-{}-{}\n",
                    vm.name,
                    vm.id.get(..8).unwrap_or_default()
                ),
                "vm exec {} through {endpoint} ({how}, {})",
                vm.name,
                holder.url
            );
        }
    }
    // Had a channel moved meanwhile, an exec counted as forwarded might
    // have been served locally.
    assert_eq!(
        exec_channel_holders(db)?,
        holders,
        "the exec channels moved during the execs"
    );
    assert_eq!(forwarded, nodes.len(), "one forwarded exec per node");
    eprintln!(
        "vm exec through each surviving replica: {forwarded} forwarded, channels {holders:?}"
    );
    Ok(())
}

/// A row of `exec_channels`: the replica holding a node's channel.
#[derive(Debug, PartialEq, Eq)]
struct ChannelHolder {
    replica: String,
    /// Its `--advertise-url`; "" for none.
    url: String,
}

/// Node id to the replica holding its exec channel, as the database says.
fn exec_channel_holders(db: &TestDatabase) -> anyhow::Result<BTreeMap<String, ChannelHolder>> {
    db.query("SELECT node_id, replica, coalesce(url, '') FROM exec_channels")?
        .into_iter()
        .map(|row| match <[String; 3]>::try_from(row) {
            Ok([node, replica, url]) => Ok((node, ChannelHolder { replica, url })),
            Err(row) => anyhow::bail!("exec_channels row of {} columns: {row:?}", row.len()),
        })
        .collect()
}

/// `measurelab vm exec PLATFORM/VM -- sh -c 'echo TOKEN; hostname'` as the
/// operator, through `endpoint` alone.
fn exec_through(lab: &Lab, endpoint: &str, vm: &str, token: &str) -> anyhow::Result<Output> {
    let target = format!("{PLATFORM}/{vm}");
    let script = format!("echo {token}; hostname");
    let output = Command::new(lab.binaries.measurelab())
        .args(["vm", "exec", &target, "--", "sh", "-c", &script])
        .envs(lab.env_as(&lab.token))
        .env("MEASURELAB_ENDPOINT", endpoint)
        .stdin(Stdio::null())
        .output()?;
    Ok(output)
}
