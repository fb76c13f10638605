//! Capability probing against real services: a private OVS (userspace) and
//! libvirt's test driver. Needs root and the openvswitch-switch package.

use measurelab_agent::capabilities::{probe, ProbeTargets};
use measurelab_testbed::OvsSandbox;

#[tokio::test]
async fn probe_reads_datapath_types_from_the_nodes_ovsdb() {
    let ovs = OvsSandbox::start("agentcaps").expect("start OVS sandbox");
    let caps = probe(&ProbeTargets {
        libvirt_uris: vec!["test:///default".into()],
        ovsdb: Some(ovs.db_target()),
    })
    .await;
    // ovs-vswitchd fills Open_vSwitch.datapath_types; userspace OVS always
    // offers "netdev".
    assert!(
        caps.ovs_datapath_types.iter().any(|t| t == "netdev"),
        "datapath types: {:?}",
        caps.ovs_datapath_types
    );
    assert_eq!(caps.libvirt_uris, vec!["test:///default"]);
}

#[tokio::test]
async fn without_ovsdb_no_datapath_types_are_claimed() {
    let caps = probe(&ProbeTargets {
        libvirt_uris: vec![],
        ovsdb: None,
    })
    .await;
    assert!(caps.ovs_datapath_types.is_empty());
    assert!(caps.libvirt_uris.is_empty());
}
