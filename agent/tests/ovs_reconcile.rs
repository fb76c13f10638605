//! Reconcile against a real OVS: idempotence, repair of hand edits without
//! duplicates, drift correction, orphan collection, and hands off foreign rows.
//! Needs root and openvswitch-switch.

mod ovs_common;

use std::time::Duration;

use anyhow::Result;
use measurelab_agent::ovs::{
    reconcile, teardown, Datapath, OvsError, PolicingSpec, Switch, SwitchAction, UplinkSpec,
};
use measurelab_testbed::{plug_veth, Netns, OvsSandbox};
use ovs_common::*;

#[tokio::test]
async fn reconcile_repairs_hand_edits_and_leaves_foreign_rows_alone() -> Result<()> {
    let pid = std::process::id();
    let owner = format!("node-rc-{pid}");
    let ovs = OvsSandbox::start("agent-rc")?;
    let a = Netns::new(&format!("rc-a-{pid}"))?;
    let b = Netns::new(&format!("rc-b-{pid}"))?;
    let c = Netns::new(&format!("rc-c-{pid}"))?;
    plug_veth(&ovs, "rcp1", &a, "eth0", "10.200.10.1/24")?;
    plug_veth(&ovs, "rcp2", &b, "eth0", "10.200.10.2/24")?;
    plug_veth(&ovs, "rcp3", &c, "eth0", "10.200.10.3/24")?;
    let switch = driver(&ovs).await?;

    let caps = switch.capabilities().await?;
    assert!(
        caps.datapath_types.contains(&"netdev".to_string()),
        "{caps:?}"
    );

    let mut spec = switch_spec(
        &owner,
        "br-rc",
        vec![
            vm_with_rate("rcp1", 10, 50_000_000),
            vm("rcp2", 20),
            vm("rcp3", 10),
        ],
    );
    let first = apply(&switch, &spec).await?;
    assert!(first
        .actions
        .contains(&SwitchAction::CreateBridge(Datapath::Netdev)));
    assert_eq!(ovs.vsctl(&["get", "Port", "rcp2", "tag"])?, "20");
    assert_eq!(
        ovs.vsctl(&["get", "Bridge", "br-rc", "datapath_type"])?,
        "netdev"
    );
    wait_ping(&a, "10.200.10.3", Duration::from_secs(10))?;
    assert!(!pings(&a, "10.200.10.2"), "VLAN 10 reached VLAN 20");
    assert!(
        apply(&switch, &spec).await?.actions.is_empty(),
        "second pass changed something"
    );

    // A foreign port and a foreign QoS row made by hand, untagged.
    ovs.veth_pair("rchand", "rchandp")?;
    ovs.vsctl(&["add-port", "br-rc", "rchand"])?;
    ovs.vsctl(&[
        "create",
        "QoS",
        "type=linux-htb",
        "other_config:max-rate=1000000",
    ])?;
    let foreign_qos_rows = rows(&ovs, "QoS")?;

    // Hand edits: delete one of our ports, retag another. A watcher notices.
    let mut watch = switch.watch().await?;
    let seen = watch.seqno();
    ovs.vsctl(&["del-port", "br-rc", "rcp1"])?;
    ovs.vsctl(&["set", "Port", "rcp2", "tag=99"])?;
    tokio::time::timeout(Duration::from_secs(10), watch.wait_newer_than(seen)).await??;
    assert!(!watch
        .table("Port")
        .values()
        .any(|row| row["name"] == "rcp1"));
    let repair = apply(&switch, &spec).await?;
    assert!(
        repair
            .actions
            .contains(&SwitchAction::AddVmPort(spec.ports[0].clone())),
        "{:?}",
        repair.actions
    );
    assert!(repair.actions.contains(&SwitchAction::SetPortTag {
        port: "rcp2".into(),
        vlan: 20
    }));
    // The deleted port's QoS was left behind unreferenced; it is collected.
    assert!(
        repair
            .actions
            .iter()
            .any(|a| matches!(a, SwitchAction::DeleteQos { .. })),
        "{:?}",
        repair.actions
    );
    assert_eq!(port_rows(&ovs, "rcp1")?, 1, "port duplicated");
    assert_eq!(ovs.vsctl(&["get", "Port", "rcp2", "tag"])?, "20");
    assert_eq!(
        rows(&ovs, "QoS")?,
        foreign_qos_rows,
        "orphan QoS not collected or foreign QoS deleted"
    );
    assert_eq!(rows(&ovs, "Queue")?, 1);
    assert_eq!(port_rows(&ovs, "rchand")?, 1, "foreign port touched");
    wait_ping(&a, "10.200.10.3", Duration::from_secs(10))?;
    assert!(apply(&switch, &spec).await?.actions.is_empty());

    // A hand edit of our QoS is drift too: the policy is rebuilt, not leaked.
    let qos_uuid = ovs.vsctl(&["get", "Port", "rcp1", "qos"])?;
    ovs.vsctl(&["set", "QoS", &qos_uuid, "other_config:max-rate=1000"])?;
    let fix = apply(&switch, &spec).await?;
    assert_eq!(
        fix.actions,
        vec![SwitchAction::SetPortQos {
            port: "rcp1".into(),
            qos: spec.ports[0].qos
        }]
    );
    let qos_uuid = ovs.vsctl(&["get", "Port", "rcp1", "qos"])?;
    assert_eq!(
        ovs.vsctl(&["get", "QoS", &qos_uuid, "other_config:max-rate"])?,
        "\"50000000\""
    );
    assert_eq!(rows(&ovs, "QoS")?, foreign_qos_rows);
    assert_eq!(rows(&ovs, "Queue")?, 1);

    // Removing a port from the desired state removes it; the foreign one stays.
    spec.ports.retain(|p| p.name != "rcp2");
    let shrink = apply(&switch, &spec).await?;
    assert_eq!(
        shrink.actions,
        vec![SwitchAction::RemovePort {
            port: "rcp2".into()
        }]
    );
    assert_eq!(port_rows(&ovs, "rcp2")?, 0);
    assert_eq!(port_rows(&ovs, "rchand")?, 1);

    // A desired name held by a foreign row is refused, with nothing changed.
    let mut grab = spec.clone();
    grab.ports.push(vm("rchand", 30));
    let err = reconcile(&switch, &grab).await.unwrap_err();
    assert!(
        matches!(&err, OvsError::Conflict { name, .. } if name == "rchand"),
        "{err}"
    );
    assert_eq!(ovs.vsctl(&["get", "Port", "rchand", "tag"])?, "[]");

    // Policing cannot work on this kernel; asking for it fails before any change.
    let caps = switch.capabilities().await?;
    let mut police = spec.clone();
    police.ports[0].ingress_policing = Some(PolicingSpec {
        rate_kbps: 10_000,
        burst_kbits: 1_000,
    });
    let outcome = reconcile(&switch, &police).await;
    if caps.ingress_policing.is_available() {
        outcome?;
    } else {
        let err = outcome.unwrap_err();
        assert!(
            matches!(&err, OvsError::Unsupported { field, .. } if field == "ports[0].ingress_policing"),
            "{err}"
        );
        assert_eq!(
            ovs.vsctl(&["get", "Interface", "rcp1", "ingress_policing_rate"])?,
            "0"
        );
    }

    // A single-interface uplink: a trunk port (no tag) marked as ours.
    ovs.veth_pair("rcup", "rcupp")?;
    spec.uplink = Some(UplinkSpec {
        name: "rcup".into(),
        members: vec!["rcup".into()],
        bond: None,
    });
    let up = apply(&switch, &spec).await?;
    assert_eq!(
        up.actions,
        vec![SwitchAction::AddUplink(spec.uplink.clone().unwrap())]
    );
    assert_eq!(ovs.vsctl(&["get", "Port", "rcup", "tag"])?, "[]");
    assert_eq!(ovs.vsctl(&["get", "Port", "rcup", "bond_mode"])?, "[]");
    assert_eq!(
        ovs.vsctl(&["get", "Port", "rcup", "external_ids:measurelab-role"])?,
        "uplink"
    );
    assert!(apply(&switch, &spec).await?.actions.is_empty());

    // Teardown refuses while a foreign port would be collected with the bridge.
    let err = teardown(&switch, &owner, "br-rc").await.unwrap_err();
    assert!(
        matches!(&err, OvsError::Conflict { name, .. } if name == "rchand"),
        "{err}"
    );
    ovs.vsctl(&["del-port", "br-rc", "rchand"])?;
    assert!(teardown(&switch, &owner, "br-rc").await?);
    assert_eq!(ovs.vsctl(&["list-br"])?, "");
    assert_eq!(rows(&ovs, "Queue")?, 0);
    assert_eq!(rows(&ovs, "QoS")?, 1, "only the foreign QoS may remain");
    Ok(())
}

/// VXLAN tunnel ports through the real driver: OVSDB holds exactly the
/// type, options and tag the spec asks for (so a second pass plans nothing:
/// no churn of tunnels every pass), a hand-edited remote_ip is put back, and
/// a tunnel whose platform left is removed while the others stay.
#[tokio::test]
async fn tunnels_converge_and_are_repaired_and_removed() -> Result<()> {
    use measurelab_agent::ovs::TunnelPortSpec;
    use std::net::Ipv4Addr;

    let pid = std::process::id();
    let owner = format!("node-tn-{pid}");
    let ovs = OvsSandbox::start("agent-tn")?;
    let switch = driver(&ovs).await?;
    let local = Ipv4Addr::new(10, 60, 1, 2);
    let to_a = TunnelPortSpec::new(101, local, Ipv4Addr::new(10, 60, 2, 2));
    let to_b = TunnelPortSpec::new(102, local, Ipv4Addr::new(10, 60, 2, 2));
    let mut spec = switch_spec(&owner, "br-tn", vec![]);
    spec.tunnels = vec![to_a.clone(), to_b.clone()];

    apply(&switch, &spec).await?;
    let field = |name: &str, column: &str| -> Result<String> {
        Ok(ovs
            .vsctl(&["get", "Interface", name, column])?
            .trim()
            .to_string())
    };
    assert_eq!(field(&to_a.name, "type")?, "vxlan");
    assert_eq!(
        field(&to_a.name, "options")?,
        r#"{key="101", local_ip="10.60.1.2", remote_ip="10.60.2.2"}"#
    );
    assert_eq!(
        ovs.vsctl(&["get", "Port", &to_b.name, "tag"])?.trim(),
        "102"
    );
    let again = apply(&switch, &spec).await?;
    assert!(again.actions.is_empty(), "{:?}", again.actions);

    ovs.vsctl(&[
        "set",
        "Interface",
        &to_a.name,
        "options:remote_ip=10.60.9.9",
    ])?;
    apply(&switch, &spec).await?;
    assert_eq!(field(&to_a.name, "options:remote_ip")?, r#""10.60.2.2""#);
    assert_eq!(port_rows(&ovs, &to_a.name)?, 1);
    ovs.vsctl(&["set", "Port", &to_b.name, "protected=false"])?;
    apply(&switch, &spec).await?;
    assert_eq!(
        ovs.vsctl(&["get", "Port", &to_b.name, "protected"])?.trim(),
        "true"
    );

    spec.tunnels = vec![to_a.clone()];
    apply(&switch, &spec).await?;
    assert_eq!(port_rows(&ovs, &to_b.name)?, 0);
    assert_eq!(port_rows(&ovs, &to_a.name)?, 1);
    Ok(())
}
