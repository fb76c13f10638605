//! Level-triggered reconcile: re-read the switch, compute the difference to the
//! desired state as a list of actions, apply them in one transaction. Running
//! it again with nothing changed plans nothing, so it is safe at any moment
//! (after an agent restart, or a periodic resync catching hand edits).

use std::collections::{BTreeMap, BTreeSet};

use super::datapath::{choose as choose_datapath, DatapathChoice};
use super::error::OvsError;
use super::spec::{Datapath, IpfixSpec, NetflowSpec, SflowSpec, SwitchSpec, UplinkSpec};
use super::switch::{
    ObservedExport, ObservedPort, ObservedSwitch, PortRole, Switch, SwitchAction,
    SwitchCapabilities,
};

/// How often a plan is rebuilt when the switch changed under us.
const MAX_ATTEMPTS: u32 = 3;

/// What one reconcile did.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconcileReport {
    /// The actions applied (empty: the switch already matched).
    pub actions: Vec<SwitchAction>,
    /// How many observe/apply rounds it took (more than one after a race).
    pub attempts: u32,
}

fn conflict(table: &str, name: &str, owner: &str) -> OvsError {
    OvsError::Conflict {
        table: table.to_string(),
        name: name.to_string(),
        owner: owner.to_string(),
    }
}

fn uplink_matches(observed: &ObservedPort, desired: &UplinkSpec) -> bool {
    let members: BTreeSet<&String> = desired.members.iter().collect();
    let interfaces: BTreeSet<&String> = observed.interfaces.iter().collect();
    let lacp_on = observed.lacp.as_deref() == Some("active");
    match &desired.bond {
        None => members == interfaces && observed.bond_mode.is_none() && !lacp_on,
        Some(bond) => {
            members == interfaces
                && observed.bond_mode.as_deref() == Some(bond.mode.as_str())
                && lacp_on == bond.lacp
        }
    }
}

fn sorted(mut targets: Vec<String>) -> Vec<String> {
    targets.sort();
    targets.dedup();
    targets
}

/// Decide one flow-export row. Foreign rows are left alone when we want none,
/// and are a conflict when we want one.
fn plan_export<T: PartialEq + Clone>(
    table: &str,
    bridge: &str,
    owner: &str,
    desired: Option<&T>,
    observed: Option<&ObservedExport<T>>,
    normalize: impl Fn(T) -> T,
) -> Result<Option<Option<T>>, OvsError> {
    match (desired, observed) {
        (None, None) => Ok(None),
        (None, Some(row)) if row.owned => Ok(Some(None)),
        (None, Some(_)) => Ok(None),
        (Some(_), Some(row)) if !row.owned => Err(conflict(table, bridge, owner)),
        (Some(want), Some(row)) if normalize(want.clone()) == normalize(row.spec.clone()) => {
            Ok(None)
        }
        (Some(want), _) => Ok(Some(Some(want.clone()))),
    }
}

/// The actions that turn `observed` into `spec`. Pure: no I/O.
pub fn plan(spec: &SwitchSpec, observed: &ObservedSwitch) -> Result<Vec<SwitchAction>, OvsError> {
    let owner = &spec.owner;
    let mut actions = Vec::new();
    match &observed.bridge {
        None => actions.push(SwitchAction::CreateBridge(spec.datapath)),
        Some(bridge) if !bridge.owned => return Err(conflict("Bridge", &spec.bridge, owner)),
        // OVS moves every port to the new datapath itself.
        Some(bridge) if Datapath::from_column(&bridge.datapath_type) != Some(spec.datapath) => {
            actions.push(SwitchAction::SetBridgeDatapath(spec.datapath))
        }
        Some(_) => {}
    }

    let foreign: BTreeSet<&String> = observed.foreign_names.iter().collect();
    let mut wanted_names: Vec<&String> = spec.ports.iter().map(|p| &p.name).collect();
    wanted_names.extend(spec.tunnels.iter().map(|t| &t.name));
    if let Some(uplink) = &spec.uplink {
        wanted_names.push(&uplink.name);
        wanted_names.extend(uplink.members.iter());
    }
    if let Some(name) = wanted_names.into_iter().find(|name| foreign.contains(name)) {
        return Err(conflict("Port/Interface", name, owner));
    }

    let ours = |role: PortRole| {
        observed
            .ports
            .iter()
            .filter(move |port| port.owned && port.role == Some(role))
    };

    // VM ports: create missing, fix drift, remove orphans.
    let existing: BTreeMap<&str, &ObservedPort> =
        ours(PortRole::Vm).map(|p| (p.name.as_str(), p)).collect();
    for port in &spec.ports {
        match existing.get(port.name.as_str()) {
            None => actions.push(SwitchAction::AddVmPort(port.clone())),
            Some(seen) => {
                if seen.tag != Some(port.vlan) {
                    actions.push(SwitchAction::SetPortTag {
                        port: port.name.clone(),
                        vlan: port.vlan,
                    });
                }
                let seen_qos = seen.qos.as_ref().map(|q| (q.owned, q.spec));
                let qos_ok = match (&port.qos, seen_qos) {
                    (None, None) => true,
                    (Some(want), Some((true, Some(have)))) => *want == have,
                    _ => false,
                };
                if !qos_ok {
                    actions.push(SwitchAction::SetPortQos {
                        port: port.name.clone(),
                        qos: port.qos,
                    });
                }
                if seen.policing != port.ingress_policing {
                    actions.push(SwitchAction::SetPortPolicing {
                        port: port.name.clone(),
                        policing: port.ingress_policing,
                    });
                }
            }
        }
    }
    let desired_ports: BTreeSet<&str> = spec.ports.iter().map(|p| p.name.as_str()).collect();
    for port in ours(PortRole::Vm) {
        if !desired_ports.contains(port.name.as_str()) {
            actions.push(SwitchAction::RemovePort {
                port: port.name.clone(),
            });
        }
    }

    // Tunnels: replaced as a whole when the VLAN or any option drifted, and
    // removed when their platform (or peer) left this node.
    let existing: BTreeMap<&str, &ObservedPort> = ours(PortRole::Tunnel)
        .map(|p| (p.name.as_str(), p))
        .collect();
    for tunnel in &spec.tunnels {
        match existing.get(tunnel.name.as_str()) {
            None => actions.push(SwitchAction::AddTunnel(tunnel.clone())),
            Some(seen)
                if seen.tag == Some(tunnel.vlan)
                    && seen.tunnel.as_ref().is_some_and(|t| t.matches(tunnel)) => {}
            Some(seen) => {
                actions.push(SwitchAction::RemovePort {
                    port: seen.name.clone(),
                });
                actions.push(SwitchAction::AddTunnel(tunnel.clone()));
            }
        }
    }
    let desired_tunnels: BTreeSet<&str> = spec.tunnels.iter().map(|t| t.name.as_str()).collect();
    for port in ours(PortRole::Tunnel) {
        if !desired_tunnels.contains(port.name.as_str()) {
            actions.push(SwitchAction::RemovePort {
                port: port.name.clone(),
            });
        }
    }

    // Uplink: replaced as a whole when anything about it differs.
    let uplinks: Vec<&ObservedPort> = ours(PortRole::Uplink).collect();
    let uplink_ok = match (&spec.uplink, uplinks.as_slice()) {
        (None, []) => true,
        (Some(want), [have]) => have.name == want.name && uplink_matches(have, want),
        _ => false,
    };
    if !uplink_ok {
        for port in &uplinks {
            actions.push(SwitchAction::RemovePort {
                port: port.name.clone(),
            });
        }
        if let Some(want) = &spec.uplink {
            actions.push(SwitchAction::AddUplink(want.clone()));
        }
    }

    // Leftovers of earlier runs that crashed between steps or of hand edits.
    for qos in &observed.orphan_qos {
        actions.push(SwitchAction::DeleteQos {
            uuid: qos.uuid.clone(),
        });
    }
    for uuid in &observed.orphan_queues {
        actions.push(SwitchAction::DeleteQueue { uuid: uuid.clone() });
    }

    let export = &spec.flow_export;
    if let Some(change) = plan_export(
        "sFlow",
        &spec.bridge,
        owner,
        export.sflow.as_ref(),
        observed.sflow.as_ref(),
        |s: SflowSpec| SflowSpec {
            targets: sorted(s.targets),
            ..s
        },
    )? {
        actions.push(SwitchAction::SetSflow(change));
    }
    if let Some(change) = plan_export(
        "NetFlow",
        &spec.bridge,
        owner,
        export.netflow.as_ref(),
        observed.netflow.as_ref(),
        |s: NetflowSpec| NetflowSpec {
            targets: sorted(s.targets),
            ..s
        },
    )? {
        actions.push(SwitchAction::SetNetflow(change));
    }
    if let Some(change) = plan_export(
        "IPFIX",
        &spec.bridge,
        owner,
        export.ipfix.as_ref(),
        observed.ipfix.as_ref(),
        |s: IpfixSpec| IpfixSpec {
            targets: sorted(s.targets),
            ..s
        },
    )? {
        actions.push(SwitchAction::SetIpfix(change));
    }
    Ok(actions)
}

/// Refuse, before touching anything, what this node cannot do.
fn check_capabilities(spec: &SwitchSpec, caps: &SwitchCapabilities) -> Result<(), OvsError> {
    let pinned = match spec.datapath {
        Datapath::Netdev => DatapathChoice::Netdev,
        Datapath::System => DatapathChoice::System,
    };
    choose_datapath(pinned, caps)?;
    for (i, port) in spec.ports.iter().enumerate() {
        if port.ingress_policing.is_some() && !caps.ingress_policing.is_available() {
            return Err(OvsError::Unsupported {
                field: format!("ports[{i}].ingress_policing"),
                reason: format!(
                    "ingress policing does not work on this node: {}; shape in the guest instead",
                    caps.ingress_policing.reason().unwrap_or("unknown")
                ),
            });
        }
        if port.qos.is_some() && !caps.linux_htb.is_available() {
            return Err(OvsError::Unsupported {
                field: format!("ports[{i}].qos"),
                reason: format!(
                    "linux-htb does not work on this node: {}",
                    caps.linux_htb.reason().unwrap_or("unknown")
                ),
            });
        }
    }
    Ok(())
}

/// Make the switch match `spec`: validate, check capabilities, then observe,
/// plan and apply, rebuilding the plan if the switch changed in between.
pub async fn reconcile(
    switch: &dyn Switch,
    spec: &SwitchSpec,
) -> Result<ReconcileReport, OvsError> {
    spec.validate()?;
    check_capabilities(spec, &switch.capabilities().await?)?;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let observed = switch.observe(&spec.owner, &spec.bridge).await?;
        let actions = plan(spec, &observed)?;
        if actions.is_empty() {
            return Ok(ReconcileReport { actions, attempts });
        }
        match switch
            .apply(&spec.owner, &spec.bridge, &observed, &actions)
            .await
        {
            Ok(()) => {
                tracing::info!(bridge = %spec.bridge, changes = actions.len(), "switch reconciled");
                return Ok(ReconcileReport { actions, attempts });
            }
            Err(err) if err.is_transient() && attempts < MAX_ATTEMPTS => {
                tracing::debug!(cause = %err, attempts, "switch changed during reconcile; replanning");
            }
            Err(err) => return Err(err),
        }
    }
}

/// Remove `owner`'s bridge and everything of ours on it. A missing bridge is
/// success; a foreign one is a conflict.
pub async fn teardown(switch: &dyn Switch, owner: &str, bridge: &str) -> Result<bool, OvsError> {
    let observed = switch.observe(owner, bridge).await?;
    match &observed.bridge {
        None => Ok(false),
        Some(seen) if !seen.owned => Err(conflict("Bridge", bridge, owner)),
        Some(_) => {
            // Deleting the bridge would garbage-collect every port on it.
            if let Some(foreign) = observed.ports.iter().find(|p| !p.owned) {
                return Err(conflict("Port", &foreign.name, owner));
            }
            switch
                .apply(owner, bridge, &observed, &[SwitchAction::DeleteBridge])
                .await?;
            Ok(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::ovs::probe::KernelFeature;
    use crate::ovs::spec::TunnelPortSpec;
    use crate::ovs::spec::{
        BondMode, BondSpec, Datapath, FlowExportSpec, PolicingSpec, QosSpec, VmPortSpec,
    };
    use crate::ovs::switch::{ObservedBridge, ObservedQos, ObservedTunnel};
    use std::net::Ipv4Addr;

    /// An in-memory switch: applies actions to an ObservedSwitch the way OVSDB
    /// would, and records every apply call.
    struct FakeSwitch {
        state: Mutex<ObservedSwitch>,
        applied: Mutex<Vec<Vec<SwitchAction>>>,
        fail_next_apply_with_race: Mutex<bool>,
        policing: KernelFeature,
    }

    impl FakeSwitch {
        fn new(state: ObservedSwitch) -> Self {
            FakeSwitch {
                state: Mutex::new(state),
                applied: Mutex::new(Vec::new()),
                fail_next_apply_with_race: Mutex::new(false),
                policing: KernelFeature::Missing("kernel lacks CONFIG_NET_ACT_POLICE".into()),
            }
        }
    }

    fn port(name: &str, owned: bool, role: Option<PortRole>, tag: Option<u16>) -> ObservedPort {
        ObservedPort {
            uuid: format!("uuid-{name}"),
            name: name.to_string(),
            owned,
            role,
            tag,
            interfaces: vec![name.to_string()],
            bond_mode: None,
            lacp: None,
            qos: None,
            policing: None,
            tunnel: None,
        }
    }

    #[async_trait]
    impl Switch for FakeSwitch {
        async fn capabilities(&self) -> Result<SwitchCapabilities, OvsError> {
            Ok(SwitchCapabilities {
                ovs_version: Some("3.1.0".into()),
                datapath_types: vec!["netdev".into(), "system".into()],
                iface_types: vec![],
                linux_htb: KernelFeature::Available,
                ingress_policing: self.policing.clone(),
                kernel_datapath: KernelFeature::Missing("kernel lacks CONFIG_OPENVSWITCH".into()),
            })
        }

        async fn observe(&self, _owner: &str, _bridge: &str) -> Result<ObservedSwitch, OvsError> {
            Ok(self.state.lock().unwrap().clone())
        }

        async fn apply(
            &self,
            _owner: &str,
            _bridge: &str,
            _observed: &ObservedSwitch,
            actions: &[SwitchAction],
        ) -> Result<(), OvsError> {
            self.applied.lock().unwrap().push(actions.to_vec());
            if std::mem::take(&mut *self.fail_next_apply_with_race.lock().unwrap()) {
                return Err(OvsError::Ovsdb(measurelab_ovsdb::OvsdbError::Operation {
                    index: 0,
                    op: "wait".into(),
                    error: "timed out".into(),
                    details: None,
                }));
            }
            let mut state = self.state.lock().unwrap();
            for action in actions {
                match action {
                    SwitchAction::CreateBridge(datapath) => {
                        state.bridge = Some(ObservedBridge {
                            uuid: "uuid-br".into(),
                            owned: true,
                            port_uuids: vec![],
                            datapath_type: datapath.as_str().into(),
                        })
                    }
                    SwitchAction::SetBridgeDatapath(datapath) => {
                        if let Some(bridge) = state.bridge.as_mut() {
                            bridge.datapath_type = datapath.as_str().into();
                        }
                    }
                    SwitchAction::AddVmPort(spec) => {
                        let mut p = port(&spec.name, true, Some(PortRole::Vm), Some(spec.vlan));
                        p.qos = spec.qos.map(|q| ObservedQos {
                            uuid: format!("qos-{}", spec.name),
                            owned: true,
                            spec: Some(q),
                            queue_uuids: vec![],
                        });
                        p.policing = spec.ingress_policing;
                        state.ports.push(p);
                    }
                    SwitchAction::SetPortTag { port: name, vlan } => {
                        let p = state.ports.iter_mut().find(|p| &p.name == name).unwrap();
                        p.tag = Some(*vlan);
                    }
                    SwitchAction::SetPortQos { port: name, qos } => {
                        let p = state.ports.iter_mut().find(|p| &p.name == name).unwrap();
                        p.qos = qos.map(|q| ObservedQos {
                            uuid: format!("qos-{name}"),
                            owned: true,
                            spec: Some(q),
                            queue_uuids: vec![],
                        });
                    }
                    SwitchAction::SetPortPolicing {
                        port: name,
                        policing,
                    } => {
                        let p = state.ports.iter_mut().find(|p| &p.name == name).unwrap();
                        p.policing = *policing;
                    }
                    SwitchAction::RemovePort { port: name } => {
                        state.ports.retain(|p| &p.name != name)
                    }
                    SwitchAction::AddUplink(spec) => {
                        let mut p = port(&spec.name, true, Some(PortRole::Uplink), None);
                        p.interfaces = spec.members.clone();
                        p.bond_mode = spec.bond.map(|b| b.mode.as_str().to_string());
                        p.lacp = spec.bond.filter(|b| b.lacp).map(|_| "active".to_string());
                        state.ports.push(p);
                    }
                    SwitchAction::AddTunnel(spec) => {
                        let mut p = port(&spec.name, true, Some(PortRole::Tunnel), Some(spec.vlan));
                        p.tunnel = Some(ObservedTunnel {
                            kind: "vxlan".into(),
                            options: crate::ovs::switch::tunnel_options(spec),
                            protected: true,
                        });
                        state.ports.push(p);
                    }
                    SwitchAction::DeleteQos { uuid } => {
                        state.orphan_qos.retain(|q| &q.uuid != uuid)
                    }
                    SwitchAction::DeleteQueue { uuid } => state.orphan_queues.retain(|u| u != uuid),
                    SwitchAction::SetSflow(spec) => {
                        state.sflow = spec.clone().map(|spec| ObservedExport {
                            uuid: "sflow".into(),
                            owned: true,
                            spec,
                        })
                    }
                    SwitchAction::SetNetflow(_) | SwitchAction::SetIpfix(_) => {}
                    SwitchAction::DeleteBridge => *state = ObservedSwitch::default(),
                }
            }
            Ok(())
        }
    }

    fn vm(name: &str, vlan: u16) -> VmPortSpec {
        VmPortSpec {
            name: name.into(),
            vlan,
            qos: None,
            ingress_policing: None,
        }
    }

    fn desired() -> SwitchSpec {
        SwitchSpec {
            owner: "node-1".into(),
            bridge: "br-int".into(),
            uplink: Some(UplinkSpec {
                name: "bond0".into(),
                members: vec!["up0".into(), "up1".into()],
                bond: Some(BondSpec {
                    mode: BondMode::BalanceSlb,
                    lacp: true,
                }),
            }),
            ports: vec![
                VmPortSpec {
                    qos: Some(QosSpec {
                        max_rate_bps: 20_000_000,
                        min_rate_bps: None,
                        burst_bits: None,
                    }),
                    ..vm("vm1", 10)
                },
                vm("vm2", 20),
            ],
            tunnels: vec![],
            flow_export: FlowExportSpec {
                sflow: Some(SflowSpec {
                    targets: vec!["127.0.0.1:6343".into()],
                    sampling: 64,
                    polling_seconds: 10,
                    header_bytes: None,
                    agent: None,
                }),
                ..Default::default()
            },
            datapath: Datapath::Netdev,
        }
    }

    #[tokio::test]
    async fn builds_from_nothing_then_converges() {
        let switch = FakeSwitch::new(ObservedSwitch::default());
        let report = reconcile(&switch, &desired()).await.unwrap();
        let spec = desired();
        assert_eq!(
            report.actions,
            vec![
                SwitchAction::CreateBridge(Datapath::Netdev),
                SwitchAction::AddVmPort(spec.ports[0].clone()),
                SwitchAction::AddVmPort(spec.ports[1].clone()),
                SwitchAction::AddUplink(spec.uplink.clone().unwrap()),
                SwitchAction::SetSflow(spec.flow_export.sflow.clone()),
            ]
        );
        let again = reconcile(&switch, &desired()).await.unwrap();
        assert!(again.actions.is_empty(), "{:?}", again.actions);
        assert_eq!(switch.applied.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn fixes_drift_and_removes_only_owned_orphans() {
        let switch = FakeSwitch::new(ObservedSwitch::default());
        reconcile(&switch, &desired()).await.unwrap();
        {
            let mut state = switch.state.lock().unwrap();
            state
                .ports
                .iter_mut()
                .find(|p| p.name == "vm2")
                .unwrap()
                .tag = Some(99);
            state
                .ports
                .iter_mut()
                .find(|p| p.name == "vm1")
                .unwrap()
                .qos = None;
            state
                .ports
                .push(port("stale", true, Some(PortRole::Vm), Some(10)));
            state.ports.push(port("handmade", false, None, None));
            state.orphan_qos.push(ObservedQos {
                uuid: "qos-orphan".into(),
                owned: true,
                spec: None,
                queue_uuids: vec![],
            });
            state.orphan_queues.push("queue-orphan".into());
        }
        let report = reconcile(&switch, &desired()).await.unwrap();
        assert_eq!(
            report.actions,
            vec![
                SwitchAction::SetPortQos {
                    port: "vm1".into(),
                    qos: desired().ports[0].qos
                },
                SwitchAction::SetPortTag {
                    port: "vm2".into(),
                    vlan: 20
                },
                SwitchAction::RemovePort {
                    port: "stale".into()
                },
                SwitchAction::DeleteQos {
                    uuid: "qos-orphan".into()
                },
                SwitchAction::DeleteQueue {
                    uuid: "queue-orphan".into()
                },
            ]
        );
        let state = switch.state.lock().unwrap();
        assert!(state.ports.iter().any(|p| p.name == "handmade"));
    }

    #[tokio::test]
    async fn changed_bond_is_replaced_whole() {
        let switch = FakeSwitch::new(ObservedSwitch::default());
        reconcile(&switch, &desired()).await.unwrap();
        let mut spec = desired();
        spec.uplink.as_mut().unwrap().bond = Some(BondSpec {
            mode: BondMode::ActiveBackup,
            lacp: false,
        });
        let report = reconcile(&switch, &spec).await.unwrap();
        assert_eq!(
            report.actions,
            vec![
                SwitchAction::RemovePort {
                    port: "bond0".into()
                },
                SwitchAction::AddUplink(spec.uplink.clone().unwrap()),
            ]
        );
        assert!(reconcile(&switch, &spec).await.unwrap().actions.is_empty());
    }

    #[tokio::test]
    async fn foreign_rows_are_conflicts_not_takeovers() {
        let state = ObservedSwitch {
            bridge: Some(ObservedBridge {
                uuid: "b".into(),
                owned: false,
                port_uuids: vec![],
                datapath_type: "netdev".into(),
            }),
            ..Default::default()
        };
        let switch = FakeSwitch::new(state);
        let err = reconcile(&switch, &desired()).await.unwrap_err();
        assert!(
            matches!(&err, OvsError::Conflict { table, .. } if table == "Bridge"),
            "{err}"
        );

        let mut state = ObservedSwitch::default();
        state.foreign_names.push("vm2".into());
        let switch = FakeSwitch::new(state);
        let err = reconcile(&switch, &desired()).await.unwrap_err();
        assert!(
            matches!(&err, OvsError::Conflict { name, .. } if name == "vm2"),
            "{err}"
        );
        assert!(switch.applied.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn policing_request_fails_clearly_and_changes_nothing() {
        let switch = FakeSwitch::new(ObservedSwitch::default());
        let mut spec = desired();
        spec.ports[1].ingress_policing = Some(PolicingSpec {
            rate_kbps: 10_000,
            burst_kbits: 1_000,
        });
        let err = reconcile(&switch, &spec).await.unwrap_err();
        match &err {
            OvsError::Unsupported { field, reason } => {
                assert_eq!(field, "ports[1].ingress_policing");
                assert!(reason.contains("CONFIG_NET_ACT_POLICE"), "{reason}");
            }
            other => panic!("expected Unsupported, got {other}"),
        }
        assert!(switch.applied.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_race_is_replanned() {
        let switch = FakeSwitch::new(ObservedSwitch::default());
        *switch.fail_next_apply_with_race.lock().unwrap() = true;
        let report = reconcile(&switch, &desired()).await.unwrap();
        assert_eq!(report.attempts, 2);
        assert!(reconcile(&switch, &desired())
            .await
            .unwrap()
            .actions
            .is_empty());
    }

    #[tokio::test]
    async fn teardown_removes_our_bridge_only() {
        let switch = FakeSwitch::new(ObservedSwitch::default());
        assert!(!teardown(&switch, "node-1", "br-int").await.unwrap());
        reconcile(&switch, &desired()).await.unwrap();
        assert!(teardown(&switch, "node-1", "br-int").await.unwrap());
        assert!(switch.state.lock().unwrap().bridge.is_none());
    }

    fn tunnel(vlan: u16, peer: u8) -> TunnelPortSpec {
        TunnelPortSpec::new(
            vlan,
            Ipv4Addr::new(10, 60, 1, 2),
            Ipv4Addr::new(10, 60, peer, 2),
        )
    }

    #[tokio::test]
    async fn tunnels_are_added_kept_and_removed_with_their_platform() {
        let switch = FakeSwitch::new(ObservedSwitch::default());
        let mut spec = desired();
        spec.tunnels = vec![tunnel(10, 2), tunnel(10, 3), tunnel(20, 2)];
        let report = reconcile(&switch, &spec).await.unwrap();
        let added: Vec<&str> = report
            .actions
            .iter()
            .filter_map(|a| match a {
                SwitchAction::AddTunnel(t) => Some(t.name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(added, ["vx10-0a3c0202", "vx10-0a3c0302", "vx20-0a3c0202"]);
        // Converged: a second pass (an agent restart) plans nothing.
        assert!(reconcile(&switch, &spec).await.unwrap().actions.is_empty());

        // Platform 20 left the node: its tunnel goes, the others stay.
        spec.tunnels.retain(|t| t.vlan != 20);
        let report = reconcile(&switch, &spec).await.unwrap();
        assert_eq!(
            report.actions,
            vec![SwitchAction::RemovePort {
                port: "vx20-0a3c0202".into()
            }]
        );
    }

    #[tokio::test]
    async fn a_tunnel_with_drifted_options_is_replaced() {
        let switch = FakeSwitch::new(ObservedSwitch::default());
        let mut spec = desired();
        spec.tunnels = vec![tunnel(10, 2)];
        reconcile(&switch, &spec).await.unwrap();
        // Someone edits the remote_ip by hand.
        {
            let mut state = switch.state.lock().unwrap();
            let port = state
                .ports
                .iter_mut()
                .find(|p| p.role == Some(PortRole::Tunnel))
                .unwrap();
            port.tunnel
                .as_mut()
                .unwrap()
                .options
                .insert("remote_ip".into(), "10.60.9.2".into());
        }
        let report = reconcile(&switch, &spec).await.unwrap();
        assert_eq!(
            report.actions,
            vec![
                SwitchAction::RemovePort {
                    port: "vx10-0a3c0202".into()
                },
                SwitchAction::AddTunnel(tunnel(10, 2)),
            ]
        );
    }

    #[tokio::test]
    async fn a_foreign_port_with_a_tunnel_name_is_a_conflict() {
        let mut observed = ObservedSwitch::default();
        observed.foreign_names.push("vx10-0a3c0202".into());
        let switch = FakeSwitch::new(observed);
        let mut spec = desired();
        spec.tunnels = vec![tunnel(10, 2)];
        let err = reconcile(&switch, &spec).await.unwrap_err();
        assert!(
            matches!(err, OvsError::Conflict { ref name, .. } if name == "vx10-0a3c0202"),
            "{err}"
        );
    }
}
