//! Flow monitoring through the agent's driver: sFlow, NetFlow and IPFIX rows on
//! the bridge make ovs-vswitchd export the test's own flows to real collectors
//! (pmacct's sfacctd, nfdump's nfcapd), which decode them. Needs root,
//! openvswitch-switch, pmacct and nfdump.

mod ovs_common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use measurelab_agent::ovs::{IpfixSpec, NetflowSpec, SflowSpec, SwitchAction, SwitchSpec};
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

/// Run `nfcapd -E` (prints each decoded record) in the switch namespace, make
/// the bridge export with `export`, ping 10.200.41.1 -> .2 until nfcapd prints
/// that flow, then remove the export again.
async fn nfcapd_sees_the_flow(
    tag: &str,
    export: impl Fn(&mut SwitchSpec, bool),
    table: &str,
) -> Result<()> {
    let pid = std::process::id();
    let ovs = OvsSandbox::start(&format!("agent-{tag}"))?;
    let a = Netns::new(&format!("{tag}-a-{pid}"))?;
    let b = Netns::new(&format!("{tag}-b-{pid}"))?;
    plug_veth(&ovs, &format!("{tag}a"), &a, "eth0", "10.200.41.1/24")?;
    plug_veth(&ovs, &format!("{tag}b"), &b, "eth0", "10.200.41.2/24")?;
    let work = tempfile::tempdir()?;
    let output = work.path().join("nfcapd.out");
    let collector = Collector(
        ovs.netns()
            .command("nfcapd")
            .args(["-E", "-b", "127.0.0.1", "-p", "2055", "-t", "3600", "-w"])
            .arg(work.path())
            .stdout(std::fs::File::create(&output)?)
            .stderr(Stdio::null())
            .spawn()?,
    );

    let switch = driver(&ovs).await?;
    let bridge = format!("br-{tag}");
    let mut spec = switch_spec(
        &format!("node-{tag}-{pid}"),
        &bridge,
        vec![vm(&format!("{tag}a"), 10), vm(&format!("{tag}b"), 10)],
    );
    export(&mut spec, true);
    apply(&switch, &spec).await?;
    assert!(
        apply(&switch, &spec).await?.actions.is_empty(),
        "{table} row not read back as equal"
    );
    wait_ping(&a, "10.200.41.2", Duration::from_secs(10))?;

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        a.run(&["ping", "-c", "20", "-i", "0.05", "10.200.41.2"])?;
        let text = std::fs::read_to_string(&output).unwrap_or_default();
        if text.contains("10.200.41.1") && text.contains("10.200.41.2") {
            let excerpt: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("10.200.41."))
                .take(4)
                .collect();
            eprintln!("nfcapd decoded {table} records: {excerpt:?}");
            break;
        }
        if Instant::now() > deadline {
            bail!("no {table} record of 10.200.41.1 -> .2 reached nfcapd; it printed:\n{text}");
        }
    }
    drop(collector);

    export(&mut spec, false);
    apply(&switch, &spec).await?;
    assert_eq!(rows(&ovs, table)?, 0, "{table} row left behind");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn netflow_records_reach_nfcapd() -> Result<()> {
    nfcapd_sees_the_flow(
        "nf",
        |spec, on| {
            spec.flow_export.netflow = on.then(|| NetflowSpec {
                targets: vec!["127.0.0.1:2055".to_string()],
                active_timeout_seconds: 1,
            })
        },
        "NetFlow",
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn ipfix_records_reach_nfcapd() -> Result<()> {
    nfcapd_sees_the_flow(
        "ipx",
        |spec, on| {
            spec.flow_export.ipfix = on.then(|| IpfixSpec {
                targets: vec!["127.0.0.1:2055".to_string()],
                sampling: 1,
                cache_active_timeout_seconds: 1,
                obs_domain_id: Some(7),
            })
        },
        "IPFIX",
    )
    .await
}
