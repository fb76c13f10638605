//! Helpers shared by the agent's real-OVS tests (`ovs_*.rs`). OVS is configured
//! only through the agent's driver; ovs-vsctl appears only to inspect state or
//! to simulate a hand edit.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use measurelab_agent::ovs::{
    reconcile, FlowExportSpec, OvsdbSwitch, QosSpec, ReconcileReport, SwitchSpec, VmPortSpec,
};
use measurelab_testbed::{Netns, OvsSandbox};

pub fn vm(name: &str, vlan: u16) -> VmPortSpec {
    VmPortSpec {
        name: name.to_string(),
        vlan,
        qos: None,
        ingress_policing: None,
    }
}

pub fn vm_with_rate(name: &str, vlan: u16, max_rate_bps: u64) -> VmPortSpec {
    VmPortSpec {
        qos: Some(QosSpec {
            max_rate_bps,
            min_rate_bps: None,
            burst_bits: None,
        }),
        ..vm(name, vlan)
    }
}

pub fn switch_spec(owner: &str, bridge: &str, ports: Vec<VmPortSpec>) -> SwitchSpec {
    SwitchSpec {
        owner: owner.to_string(),
        bridge: bridge.to_string(),
        uplink: None,
        ports,
        flow_export: FlowExportSpec::default(),
    }
}

pub async fn driver(ovs: &OvsSandbox) -> Result<OvsdbSwitch> {
    Ok(OvsdbSwitch::connect(&ovs.db_target()).await?)
}

pub async fn apply(switch: &OvsdbSwitch, spec: &SwitchSpec) -> Result<ReconcileReport> {
    Ok(reconcile(switch, spec).await?)
}

/// Number of Port rows called `name` (anywhere).
pub fn port_rows(ovs: &OvsSandbox, name: &str) -> Result<usize> {
    let out = ovs.vsctl(&[
        "--bare",
        "--columns=_uuid",
        "find",
        "Port",
        &format!("name={name}"),
    ])?;
    Ok(out.lines().filter(|l| !l.trim().is_empty()).count())
}

pub fn rows(ovs: &OvsSandbox, table: &str) -> Result<usize> {
    let out = ovs.vsctl(&["--bare", "--columns=_uuid", "list", table])?;
    Ok(out.lines().filter(|l| !l.trim().is_empty()).count())
}

pub fn pings(from: &Netns, to_ip: &str) -> bool {
    from.command("ping")
        .args(["-c", "2", "-i", "0.2", "-W", "1", to_ip])
        .output()
        .map(|out| out.status.success())
        .unwrap_or(false)
}

/// Ping until it answers (ovs-vswitchd applies the database asynchronously).
pub fn wait_ping(from: &Netns, to_ip: &str, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while !pings(from, to_ip) {
        if Instant::now() > deadline {
            bail!("{} cannot reach {to_ip} within {within:?}", from.name());
        }
    }
    Ok(())
}
