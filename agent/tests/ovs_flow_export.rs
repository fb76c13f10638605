//! Flow monitoring through the agent's driver: an sFlow row on the bridge makes
//! ovs-vswitchd send samples that a real collector (pmacct's sfacctd) decodes
//! into the test's own flows. Needs root, openvswitch-switch and pmacct.

mod ovs_common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use measurelab_agent::ovs::{SflowSpec, SwitchAction};
use measurelab_testbed::{plug_veth, Netns, OvsSandbox};
use ovs_common::*;

/// Kills the collector even when an assertion fails first.
struct Collector(Child);

impl Drop for Collector {
    fn drop(&mut self) {
        // sfacctd ignores SIGTERM while its plugin is running; the namespace
        // drop kills any plugin child left.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sflow_samples_reach_sfacctd() -> Result<()> {
    let pid = std::process::id();
    let ovs = OvsSandbox::start("agent-sflow")?;
    let a = Netns::new(&format!("sf-a-{pid}"))?;
    let b = Netns::new(&format!("sf-b-{pid}"))?;
    plug_veth(&ovs, "sfa", &a, "eth0", "10.200.40.1/24")?;
    plug_veth(&ovs, "sfb", &b, "eth0", "10.200.40.2/24")?;

    // The collector listens on the switch namespace's loopback, where
    // ovs-vswitchd runs: nothing leaves the test's namespaces.
    let work = tempfile::tempdir()?;
    let flows = work.path().join("flows.json");
    let config = work.path().join("sfacctd.conf");
    std::fs::write(
        &config,
        format!(
            "daemonize: false\nsfacctd_ip: 127.0.0.1\nsfacctd_port: 6343\nplugins: print\n\
             print_output: json\nprint_refresh_time: 1\nprint_output_file: {}\n\
             print_output_file_append: true\naggregate: src_host, dst_host, proto\n",
            flows.display()
        ),
    )?;
    let _collector = Collector(
        ovs.netns()
            .command("sfacctd")
            .arg("-f")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );

    let switch = driver(&ovs).await?;
    let mut spec = switch_spec(
        &format!("node-sf-{pid}"),
        "br-sf",
        vec![vm("sfa", 10), vm("sfb", 10)],
    );
    let sflow = SflowSpec {
        targets: vec!["127.0.0.1:6343".to_string()],
        sampling: 1,
        polling_seconds: 1,
        header_bytes: Some(128),
        agent: Some("lo".to_string()),
    };
    spec.flow_export.sflow = Some(sflow.clone());
    let report = apply(&switch, &spec).await?;
    assert!(report
        .actions
        .contains(&SwitchAction::SetSflow(Some(sflow))));
    assert!(
        apply(&switch, &spec).await?.actions.is_empty(),
        "sFlow row not read back as equal"
    );
    wait_ping(&a, "10.200.40.2", Duration::from_secs(10))?;

    let deadline = Instant::now() + Duration::from_secs(20);
    let record = loop {
        a.run(&["ping", "-c", "10", "-i", "0.05", "10.200.40.2"])?;
        let text = std::fs::read_to_string(&flows).unwrap_or_default();
        let found = text
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|r| r["ip_src"] == "10.200.40.1" && r["ip_dst"] == "10.200.40.2");
        if let Some(record) = found {
            break record;
        }
        if Instant::now() > deadline {
            bail!("no sFlow sample of 10.200.40.1 -> 10.200.40.2 reached sfacctd; collector wrote:\n{text}");
        }
    };
    eprintln!("sfacctd decoded: {record}");
    assert_eq!(record["ip_proto"], "icmp");
    assert!(record["packets"].as_u64().unwrap_or(0) >= 1);

    // Removing the export drops the row (it is garbage-collected with the reference).
    spec.flow_export.sflow = None;
    assert_eq!(
        apply(&switch, &spec).await?.actions,
        vec![SwitchAction::SetSflow(None)]
    );
    assert_eq!(ovs.vsctl(&["get", "Bridge", "br-sf", "sflow"])?, "[]");
    assert_eq!(rows(&ovs, "sFlow")?, 0);
    Ok(())
}
