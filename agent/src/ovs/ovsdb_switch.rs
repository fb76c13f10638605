//! The real [`Switch`]: reads with one multi-`select` transaction and applies a
//! plan as one transaction guarded by a `wait` on the bridge's ports, so a
//! concurrent change (a hand edit, another writer) aborts it cleanly and the
//! reconcile loop replans.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use measurelab_ovsdb::ops::{self, WaitUntil};
use measurelab_ovsdb::value::{self, Atom, Datum};
use measurelab_ovsdb::{MonitorCache, OvsdbClient};
use serde_json::{json, Map, Value};

use super::error::OvsError;
use super::ownership::{OWNER_KEY, ROLE_KEY};
use super::probe::probe_kernel;
use super::spec::{
    IpfixSpec, NetflowSpec, PolicingSpec, QosSpec, SflowSpec, TunnelPortSpec, UplinkSpec,
    VmPortSpec,
};
use super::switch::{
    tunnel_options, ObservedBridge, ObservedExport, ObservedPort, ObservedQos, ObservedSwitch,
    ObservedTunnel, PortRole, Switch, SwitchAction, SwitchCapabilities,
};

const DB: &str = "Open_vSwitch";

type Row = Map<String, Value>;

/// [`Switch`] over an OVSDB connection to the node's own ovsdb-server.
#[derive(Debug, Clone)]
pub struct OvsdbSwitch {
    client: OvsdbClient,
}

impl OvsdbSwitch {
    /// Use an existing connection.
    pub fn new(client: OvsdbClient) -> Self {
        OvsdbSwitch { client }
    }

    /// Connect to `unix:/path/db.sock` or `tcp:host:port`.
    pub async fn connect(target: &str) -> Result<Self, OvsError> {
        Ok(Self::new(OvsdbClient::connect(target).await?))
    }

    /// The underlying client (e.g. for a monitor).
    pub fn client(&self) -> &OvsdbClient {
        &self.client
    }

    /// A live replica of the tables reconcile reads. Its `seqno` goes up on
    /// every change, ours or anyone's, so the agent can reconcile as soon as a
    /// hand edit happens instead of waiting for the periodic resync.
    pub async fn watch(&self) -> Result<MonitorCache, OvsError> {
        Ok(MonitorCache::start(
            &self.client,
            DB,
            &[
                ("Bridge", &["name", "ports", "sflow", "netflow", "ipfix"]),
                (
                    "Port",
                    &[
                        "name",
                        "interfaces",
                        "tag",
                        "qos",
                        "bond_mode",
                        "lacp",
                        "external_ids",
                    ],
                ),
                (
                    "Interface",
                    &["name", "external_ids", "ingress_policing_rate"],
                ),
                ("QoS", &["other_config", "queues", "external_ids"]),
                ("Queue", &["other_config", "external_ids"]),
            ],
        )
        .await?)
    }
}

fn unexpected(what: impl Into<String>) -> OvsError {
    OvsError::Unexpected(what.into())
}

fn row_uuid(row: &Row) -> Result<String, OvsError> {
    match row.get("_uuid").map(Atom::from_json) {
        Some(Ok(Atom::Uuid(uuid))) => Ok(uuid),
        _ => Err(unexpected(format!("row without _uuid: {row:?}"))),
    }
}

fn column<'a>(row: &'a Row, name: &str) -> Result<&'a Value, OvsError> {
    row.get(name)
        .ok_or_else(|| unexpected(format!("row lacks column {name}")))
}

fn string_map(row: &Row, name: &str) -> Result<BTreeMap<String, String>, OvsError> {
    Ok(value::parse_string_map(column(row, name)?)?)
}

fn uuid_set(row: &Row, name: &str) -> Result<Vec<String>, OvsError> {
    Ok(value::parse_uuid_set(column(row, name)?)?)
}

fn optional_atom(row: &Row, name: &str) -> Result<Option<Atom>, OvsError> {
    Ok(Datum::from_json(column(row, name)?)?.as_optional()?)
}

fn optional_int(row: &Row, name: &str) -> Result<Option<i64>, OvsError> {
    Ok(optional_atom(row, name)?.and_then(|atom| atom.as_i64()))
}

fn optional_string(row: &Row, name: &str) -> Result<Option<String>, OvsError> {
    Ok(optional_atom(row, name)?.and_then(|atom| atom.as_str().map(str::to_string)))
}

fn string_set(row: &Row, name: &str) -> Result<Vec<String>, OvsError> {
    let mut strings: Vec<String> = Datum::from_json(column(row, name)?)?
        .as_set()?
        .into_iter()
        .filter_map(|atom| atom.as_str().map(str::to_string))
        .collect();
    strings.sort();
    Ok(strings)
}

/// Rows of a select result keyed by uuid.
fn by_uuid(result: &Value) -> Result<BTreeMap<String, Row>, OvsError> {
    ops::selected_rows(result)?
        .into_iter()
        .map(|row| Ok((row_uuid(&row)?, row)))
        .collect()
}

fn is_owned(row: &Row, owner: &str) -> Result<bool, OvsError> {
    Ok(string_map(row, "external_ids")?
        .get(OWNER_KEY)
        .map(String::as_str)
        == Some(owner))
}

/// `["external_ids", "includes", {owner}]`: every write condition carries it,
/// so even a wrong plan cannot modify a foreign row.
fn owned_by(owner: &str) -> Value {
    json!([
        "external_ids",
        "includes",
        value::string_map([(OWNER_KEY, owner)])
    ])
}

fn owner_ids(owner: &str, role: Option<&str>) -> Value {
    let mut pairs = vec![(OWNER_KEY, owner)];
    if let Some(role) = role {
        pairs.push((ROLE_KEY, role));
    }
    value::string_map(pairs)
}

fn parse_qos(
    qos: &Row,
    queues: &BTreeMap<String, Row>,
    owner: &str,
) -> Result<ObservedQos, OvsError> {
    let uuid = row_uuid(qos)?;
    let queue_map = match Datum::from_json(column(qos, "queues")?)? {
        Datum::Map(pairs) => pairs,
        _ => Vec::new(),
    };
    let queue_uuids: Vec<String> = queue_map
        .iter()
        .filter_map(|(_, v)| v.as_uuid().map(str::to_string))
        .collect();
    let default_queue = queue_map
        .iter()
        .find(|(k, _)| k.as_i64() == Some(0))
        .and_then(|(_, v)| v.as_uuid())
        .and_then(|id| queues.get(id));
    let qos_type = column(qos, "type")?.as_str().unwrap_or_default();
    let config = string_map(qos, "other_config")?;
    let spec = match (
        qos_type,
        config.get("max-rate").and_then(|r| r.parse().ok()),
    ) {
        ("linux-htb", Some(max_rate_bps)) => {
            let queue_config = match default_queue {
                Some(queue) => string_map(queue, "other_config")?,
                None => BTreeMap::new(),
            };
            Some(QosSpec {
                max_rate_bps,
                min_rate_bps: queue_config.get("min-rate").and_then(|r| r.parse().ok()),
                burst_bits: queue_config.get("burst").and_then(|r| r.parse().ok()),
            })
        }
        _ => None,
    };
    Ok(ObservedQos {
        uuid,
        owned: is_owned(qos, owner)?,
        spec,
        queue_uuids,
    })
}

fn referenced_export<T>(
    bridge: &Row,
    column_name: &str,
    rows: &BTreeMap<String, Row>,
    owner: &str,
    parse: impl Fn(&Row) -> Result<T, OvsError>,
) -> Result<Option<ObservedExport<T>>, OvsError> {
    let Some(id) = uuid_set(bridge, column_name)?.into_iter().next() else {
        return Ok(None);
    };
    let row = rows
        .get(&id)
        .ok_or_else(|| unexpected(format!("Bridge.{column_name} points at missing row {id}")))?;
    Ok(Some(ObservedExport {
        uuid: id,
        owned: is_owned(row, owner)?,
        spec: parse(row)?,
    }))
}

fn to_u32(value: Option<i64>) -> u32 {
    value.and_then(|v| u32::try_from(v).ok()).unwrap_or(0)
}

/// Adds the port inserted in this transaction as `port` (a named uuid) to
/// `bridge`'s ports, the last step of every port the agent creates.
fn attach_port(ops_out: &mut Vec<Value>, bridge: &str, port: &str) {
    ops_out.push(ops::mutate(
        "Bridge",
        vec![ops::eq("name", json!(bridge))],
        vec![ops::mutation_insert(
            "ports",
            json!(["set", [value::named_uuid(port)]]),
        )],
    ));
}

fn qos_ops(ops_out: &mut Vec<Value>, owner: &str, qos: &QosSpec) -> String {
    let queue = value::fresh_uuid_name("queue");
    let qos_name = value::fresh_uuid_name("qos");
    let mut queue_config = vec![("max-rate".to_string(), qos.max_rate_bps.to_string())];
    if let Some(min) = qos.min_rate_bps {
        queue_config.push(("min-rate".to_string(), min.to_string()));
    }
    if let Some(burst) = qos.burst_bits {
        queue_config.push(("burst".to_string(), burst.to_string()));
    }
    ops_out.push(ops::insert(
        "Queue",
        json!({
            "other_config": value::string_map(queue_config.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            "external_ids": owner_ids(owner, None),
        }),
        Some(&queue),
    ));
    let max_rate = qos.max_rate_bps.to_string();
    ops_out.push(ops::insert(
        "QoS",
        json!({
            "type": "linux-htb",
            "other_config": value::string_map([("max-rate", max_rate.as_str())]),
            "queues": ["map", [[0, value::named_uuid(&queue)]]],
            "external_ids": owner_ids(owner, None),
        }),
        Some(&qos_name),
    ));
    qos_name
}

/// Delete our QoS row `qos` and our queues it references.
fn delete_qos_ops(ops_out: &mut Vec<Value>, owner: &str, qos: &ObservedQos) {
    if !qos.owned {
        return;
    }
    ops_out.push(ops::delete(
        "QoS",
        vec![ops::uuid_is(&qos.uuid), owned_by(owner)],
    ));
    for queue in &qos.queue_uuids {
        ops_out.push(ops::delete(
            "Queue",
            vec![ops::uuid_is(queue), owned_by(owner)],
        ));
    }
}

/// Drop `port`'s reference to its QoS, then delete our QoS and queues. The
/// update is needed even when the port itself is being garbage-collected:
/// ovsdb-server checks references before it collects garbage.
fn detach_qos_ops(ops_out: &mut Vec<Value>, owner: &str, port: &ObservedPort) {
    if let Some(qos) = &port.qos {
        ops_out.push(ops::update(
            "Port",
            vec![ops::uuid_is(&port.uuid), owned_by(owner)],
            json!({"qos": value::empty_set()}),
        ));
        delete_qos_ops(ops_out, owner, qos);
    }
}

fn policing_columns(policing: Option<PolicingSpec>) -> Value {
    let (rate, burst) = policing.map_or((0, 0), |p| (p.rate_kbps, p.burst_kbits));
    json!({"ingress_policing_rate": rate, "ingress_policing_burst": burst})
}

fn add_port_ops(ops_out: &mut Vec<Value>, owner: &str, bridge: &str, spec: &VmPortSpec) {
    let iface = value::fresh_uuid_name("iface");
    let port = value::fresh_uuid_name("port");
    let mut iface_row = policing_columns(spec.ingress_policing);
    iface_row["name"] = json!(spec.name);
    iface_row["external_ids"] = owner_ids(owner, None);
    ops_out.push(ops::insert("Interface", iface_row, Some(&iface)));
    let qos = match &spec.qos {
        Some(qos) => value::named_uuid(&qos_ops(ops_out, owner, qos)),
        None => value::empty_set(),
    };
    ops_out.push(ops::insert(
        "Port",
        json!({
            "name": spec.name,
            "interfaces": value::named_uuid(&iface),
            "tag": spec.vlan,
            "qos": qos,
            "external_ids": owner_ids(owner, Some("vm")),
        }),
        Some(&port),
    ));
    attach_port(ops_out, bridge, &port);
}

fn add_uplink_ops(ops_out: &mut Vec<Value>, owner: &str, bridge: &str, spec: &UplinkSpec) {
    let mut members = Vec::new();
    for member in &spec.members {
        let iface = value::fresh_uuid_name("uplink_iface");
        ops_out.push(ops::insert(
            "Interface",
            json!({"name": member, "external_ids": owner_ids(owner, None)}),
            Some(&iface),
        ));
        members.push(value::named_uuid(&iface));
    }
    let port = value::fresh_uuid_name("uplink");
    let mut row = json!({
        "name": spec.name,
        "interfaces": ["set", members],
        "external_ids": owner_ids(owner, Some("uplink")),
    });
    if let Some(bond) = &spec.bond {
        row["bond_mode"] = json!(bond.mode.as_str());
        row["lacp"] = json!(if bond.lacp { "active" } else { "off" });
        // Fail over on carrier loss; with LACP, fast PDUs (1 s instead of 30 s)
        // so a replaced or restarted partner is negotiated within seconds.
        let mut config = vec![("bond-detect-mode", "carrier")];
        if bond.lacp {
            config.push(("lacp-time", "fast"));
        }
        row["other_config"] = value::string_map(config);
    }
    ops_out.push(ops::insert("Port", row, Some(&port)));
    attach_port(ops_out, bridge, &port);
}

fn add_tunnel_ops(ops_out: &mut Vec<Value>, owner: &str, bridge: &str, spec: &TunnelPortSpec) {
    let iface = value::fresh_uuid_name("tunnel_iface");
    let options = tunnel_options(spec);
    ops_out.push(ops::insert(
        "Interface",
        json!({
            "name": spec.name,
            "type": "vxlan",
            "options": value::string_map(options.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            "external_ids": owner_ids(owner, None),
        }),
        Some(&iface),
    ));
    let port = value::fresh_uuid_name("tunnel");
    ops_out.push(ops::insert(
        "Port",
        json!({
            "name": spec.name,
            "interfaces": value::named_uuid(&iface),
            // An access port: frames leave the tunnel into the VLAN and only
            // the VLAN's frames enter it, untagged; the VNI carries the VLAN.
            "tag": spec.vlan,
            // Split horizon: the tunnels are a full mesh, so a frame that
            // came in through one must never be flooded out of another, or
            // three nodes already loop every broadcast and multicast forever.
            "protected": true,
            "external_ids": owner_ids(owner, Some("tunnel")),
        }),
        Some(&port),
    ));
    attach_port(ops_out, bridge, &port);
}

/// Insert a flow-export row (or nothing) and point the bridge at it.
fn export_ops(
    ops_out: &mut Vec<Value>,
    bridge: &str,
    column_name: &str,
    table: &str,
    row: Option<Value>,
) {
    let reference = match row {
        Some(row) => {
            let name = value::fresh_uuid_name(table);
            ops_out.push(ops::insert(table, row, Some(&name)));
            value::named_uuid(&name)
        }
        None => value::empty_set(),
    };
    ops_out.push(ops::update(
        "Bridge",
        vec![ops::eq("name", json!(bridge))],
        json!({ column_name: reference }),
    ));
}

fn find_port<'a>(observed: &'a ObservedSwitch, name: &str) -> Result<&'a ObservedPort, OvsError> {
    observed
        .ports
        .iter()
        .find(|p| p.name == name && p.owned)
        .ok_or_else(|| {
            unexpected(format!(
                "planned a change to port {name:?} that is not ours"
            ))
        })
}

#[async_trait]
impl Switch for OvsdbSwitch {
    async fn capabilities(&self) -> Result<SwitchCapabilities, OvsError> {
        let results = self
            .client
            .transact(
                DB,
                vec![ops::select(
                    "Open_vSwitch",
                    vec![],
                    Some(&["ovs_version", "datapath_types", "iface_types"]),
                )],
            )
            .await?;
        let rows = ops::selected_rows(&results[0])?;
        let root = rows
            .first()
            .ok_or_else(|| unexpected("the Open_vSwitch table has no row"))?;
        let kernel = tokio::task::spawn_blocking(probe_kernel)
            .await
            .map_err(|err| unexpected(format!("kernel probe task failed: {err}")))?;
        Ok(SwitchCapabilities {
            ovs_version: optional_string(root, "ovs_version")?,
            datapath_types: string_set(root, "datapath_types")?,
            iface_types: string_set(root, "iface_types")?,
            linux_htb: kernel.linux_htb,
            ingress_policing: kernel.ingress_policing,
            kernel_datapath: kernel.kernel_datapath,
        })
    }

    async fn observe(&self, owner: &str, bridge_name: &str) -> Result<ObservedSwitch, OvsError> {
        let results = self
            .client
            .transact(
                DB,
                vec![
                    ops::select(
                        "Bridge",
                        vec![ops::eq("name", json!(bridge_name))],
                        Some(&[
                            "_uuid",
                            "ports",
                            "external_ids",
                            "sflow",
                            "netflow",
                            "ipfix",
                            "datapath_type",
                        ]),
                    ),
                    ops::select(
                        "Port",
                        vec![],
                        Some(&[
                            "_uuid",
                            "name",
                            "interfaces",
                            "tag",
                            "qos",
                            "bond_mode",
                            "lacp",
                            "protected",
                            "external_ids",
                        ]),
                    ),
                    ops::select(
                        "Interface",
                        vec![],
                        Some(&[
                            "_uuid",
                            "name",
                            "external_ids",
                            "ingress_policing_rate",
                            "ingress_policing_burst",
                            "type",
                            "options",
                        ]),
                    ),
                    ops::select(
                        "QoS",
                        vec![],
                        Some(&["_uuid", "type", "other_config", "queues", "external_ids"]),
                    ),
                    ops::select(
                        "Queue",
                        vec![],
                        Some(&["_uuid", "other_config", "external_ids"]),
                    ),
                    ops::select(
                        "sFlow",
                        vec![],
                        Some(&[
                            "_uuid",
                            "targets",
                            "sampling",
                            "polling",
                            "header",
                            "agent",
                            "external_ids",
                        ]),
                    ),
                    ops::select(
                        "NetFlow",
                        vec![],
                        Some(&["_uuid", "targets", "active_timeout", "external_ids"]),
                    ),
                    ops::select(
                        "IPFIX",
                        vec![],
                        Some(&[
                            "_uuid",
                            "targets",
                            "sampling",
                            "cache_active_timeout",
                            "obs_domain_id",
                            "external_ids",
                        ]),
                    ),
                ],
            )
            .await?;
        let bridges = ops::selected_rows(&results[0])?;
        let ports = by_uuid(&results[1])?;
        let interfaces = by_uuid(&results[2])?;
        let qos_rows = by_uuid(&results[3])?;
        let queues = by_uuid(&results[4])?;

        let mut observed = ObservedSwitch::default();
        for row in ports.values().chain(interfaces.values()) {
            if !is_owned(row, owner)? {
                if let Some(name) = row.get("name").and_then(Value::as_str) {
                    observed.foreign_names.push(name.to_string());
                }
            }
        }
        observed.foreign_names.sort();
        observed.foreign_names.dedup();

        let mut referenced_qos = BTreeSet::new();
        for port in ports.values() {
            referenced_qos.extend(uuid_set(port, "qos")?);
        }
        let mut referenced_queues = BTreeSet::new();
        for qos in qos_rows.values() {
            if let Datum::Map(pairs) = Datum::from_json(column(qos, "queues")?)? {
                referenced_queues.extend(
                    pairs
                        .iter()
                        .filter_map(|(_, v)| v.as_uuid().map(str::to_string)),
                );
            }
        }
        let mut queues_of_orphans = BTreeSet::new();
        for (id, qos) in &qos_rows {
            if !referenced_qos.contains(id) && is_owned(qos, owner)? {
                let orphan = parse_qos(qos, &queues, owner)?;
                queues_of_orphans.extend(orphan.queue_uuids.iter().cloned());
                observed.orphan_qos.push(orphan);
            }
        }
        for (id, queue) in &queues {
            // Queues of an orphan QoS go with it (DeleteQos), not twice.
            if !referenced_queues.contains(id)
                && !queues_of_orphans.contains(id)
                && is_owned(queue, owner)?
            {
                observed.orphan_queues.push(id.clone());
            }
        }

        let Some(bridge) = bridges.first() else {
            return Ok(observed);
        };
        let port_uuids = uuid_set(bridge, "ports")?;
        for port_id in &port_uuids {
            let port = ports.get(port_id).ok_or_else(|| {
                unexpected(format!("Bridge.ports points at missing Port {port_id}"))
            })?;
            let external_ids = string_map(port, "external_ids")?;
            let iface_rows: Vec<&Row> = uuid_set(port, "interfaces")?
                .iter()
                .filter_map(|id| interfaces.get(id))
                .collect();
            let mut iface_names: Vec<String> = iface_rows
                .iter()
                .filter_map(|row| row.get("name").and_then(Value::as_str).map(str::to_string))
                .collect();
            iface_names.sort();
            let policing = match iface_rows.first() {
                Some(iface) => {
                    let rate = column(iface, "ingress_policing_rate")?
                        .as_i64()
                        .unwrap_or(0);
                    let burst = column(iface, "ingress_policing_burst")?
                        .as_i64()
                        .unwrap_or(0);
                    (rate > 0).then(|| PolicingSpec {
                        rate_kbps: u32::try_from(rate).unwrap_or(u32::MAX),
                        burst_kbits: u32::try_from(burst).unwrap_or(u32::MAX),
                    })
                }
                None => None,
            };
            let tunnel = match iface_rows.first() {
                Some(iface) => {
                    let kind = column(iface, "type")?.as_str().unwrap_or_default();
                    // Plain ports are "", "internal", "system", "dpdk"...;
                    // only the tunnel types carry a remote_ip.
                    let options = string_map(iface, "options")?;
                    options.contains_key("remote_ip").then(|| ObservedTunnel {
                        kind: kind.to_string(),
                        options,
                        protected: column(port, "protected")
                            .ok()
                            .and_then(Value::as_bool)
                            .unwrap_or(false),
                    })
                }
                None => None,
            };
            let qos = match uuid_set(port, "qos")?.first() {
                Some(id) => {
                    let row = qos_rows.get(id).ok_or_else(|| {
                        unexpected(format!("Port.qos points at missing QoS {id}"))
                    })?;
                    Some(parse_qos(row, &queues, owner)?)
                }
                None => None,
            };
            observed.ports.push(ObservedPort {
                uuid: port_id.clone(),
                name: column(port, "name")?
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                owned: external_ids.get(OWNER_KEY).map(String::as_str) == Some(owner),
                role: match external_ids.get(ROLE_KEY).map(String::as_str) {
                    Some("vm") => Some(PortRole::Vm),
                    Some("uplink") => Some(PortRole::Uplink),
                    Some("tunnel") => Some(PortRole::Tunnel),
                    _ => None,
                },
                tag: optional_int(port, "tag")?.and_then(|t| u16::try_from(t).ok()),
                interfaces: iface_names,
                bond_mode: optional_string(port, "bond_mode")?,
                lacp: optional_string(port, "lacp")?,
                qos,
                policing,
                tunnel,
            });
        }
        observed.ports.sort_by(|a, b| a.name.cmp(&b.name));

        observed.sflow =
            referenced_export(bridge, "sflow", &by_uuid(&results[5])?, owner, |row| {
                Ok(SflowSpec {
                    targets: string_set(row, "targets")?,
                    sampling: to_u32(optional_int(row, "sampling")?),
                    polling_seconds: to_u32(optional_int(row, "polling")?),
                    header_bytes: optional_int(row, "header")?.map(|h| to_u32(Some(h))),
                    agent: optional_string(row, "agent")?,
                })
            })?;
        observed.netflow =
            referenced_export(bridge, "netflow", &by_uuid(&results[6])?, owner, |row| {
                Ok(NetflowSpec {
                    targets: string_set(row, "targets")?,
                    active_timeout_seconds: column(row, "active_timeout")?.as_i64().unwrap_or(0),
                })
            })?;
        observed.ipfix =
            referenced_export(bridge, "ipfix", &by_uuid(&results[7])?, owner, |row| {
                Ok(IpfixSpec {
                    targets: string_set(row, "targets")?,
                    sampling: to_u32(optional_int(row, "sampling")?),
                    cache_active_timeout_seconds: to_u32(optional_int(
                        row,
                        "cache_active_timeout",
                    )?),
                    obs_domain_id: optional_int(row, "obs_domain_id")?.map(|v| to_u32(Some(v))),
                })
            })?;
        observed.bridge = Some(ObservedBridge {
            uuid: row_uuid(bridge)?,
            owned: is_owned(bridge, owner)?,
            port_uuids,
            datapath_type: column(bridge, "datapath_type")?
                .as_str()
                .unwrap_or_default()
                .to_string(),
        });
        Ok(observed)
    }

    async fn apply(
        &self,
        owner: &str,
        bridge: &str,
        observed: &ObservedSwitch,
        actions: &[SwitchAction],
    ) -> Result<(), OvsError> {
        let mut tx = vec![ops::comment(&format!(
            "measurelab agent {owner}: reconcile {bridge}"
        ))];
        // The plan assumed this exact port list; if anyone changed it since, the
        // whole transaction fails with "timed out" and reconcile replans.
        match &observed.bridge {
            Some(seen) => tx.push(ops::wait(
                "Bridge",
                vec![ops::uuid_is(&seen.uuid)],
                &["ports"],
                WaitUntil::Equal,
                vec![json!({"ports": value::uuid_set(seen.port_uuids.iter().map(String::as_str))})],
                Some(0),
            )),
            None => tx.push(ops::wait(
                "Bridge",
                vec![ops::eq("name", json!(bridge))],
                &["name"],
                WaitUntil::Equal,
                vec![],
                Some(0),
            )),
        }
        let bridge_where = || vec![ops::eq("name", json!(bridge)), owned_by(owner)];
        for action in actions {
            match action {
                SwitchAction::CreateBridge(datapath) => {
                    let iface = value::fresh_uuid_name("bridge_iface");
                    let port = value::fresh_uuid_name("bridge_port");
                    let row = value::fresh_uuid_name("bridge");
                    tx.push(ops::insert(
                        "Interface",
                        json!({"name": bridge, "type": "internal", "external_ids": owner_ids(owner, None)}),
                        Some(&iface),
                    ));
                    tx.push(ops::insert(
                        "Port",
                        json!({"name": bridge, "interfaces": value::named_uuid(&iface),
                               "external_ids": owner_ids(owner, Some("local"))}),
                        Some(&port),
                    ));
                    tx.push(ops::insert(
                        "Bridge",
                        json!({"name": bridge, "ports": value::named_uuid(&port),
                               "datapath_type": datapath.as_str(),
                               "external_ids": owner_ids(owner, None)}),
                        Some(&row),
                    ));
                    tx.push(ops::mutate(
                        "Open_vSwitch",
                        vec![],
                        vec![ops::mutation_insert(
                            "bridges",
                            json!(["set", [value::named_uuid(&row)]]),
                        )],
                    ));
                }
                SwitchAction::SetBridgeDatapath(datapath) => {
                    tx.push(ops::update(
                        "Bridge",
                        bridge_where(),
                        json!({"datapath_type": datapath.as_str()}),
                    ));
                }
                SwitchAction::AddVmPort(spec) => add_port_ops(&mut tx, owner, bridge, spec),
                SwitchAction::SetPortTag { port, vlan } => {
                    tx.push(ops::update(
                        "Port",
                        vec![ops::eq("name", json!(port)), owned_by(owner)],
                        json!({"tag": vlan}),
                    ));
                }
                SwitchAction::SetPortQos { port, qos } => {
                    let seen = find_port(observed, port)?;
                    if let Some(old) = &seen.qos {
                        delete_qos_ops(&mut tx, owner, old);
                    }
                    let reference = match qos {
                        Some(qos) => value::named_uuid(&qos_ops(&mut tx, owner, qos)),
                        None => value::empty_set(),
                    };
                    tx.push(ops::update(
                        "Port",
                        vec![ops::uuid_is(&seen.uuid), owned_by(owner)],
                        json!({"qos": reference}),
                    ));
                }
                SwitchAction::SetPortPolicing { port, policing } => {
                    tx.push(ops::update(
                        "Interface",
                        vec![ops::eq("name", json!(port)), owned_by(owner)],
                        policing_columns(*policing),
                    ));
                }
                SwitchAction::RemovePort { port } => {
                    let seen = find_port(observed, port)?;
                    detach_qos_ops(&mut tx, owner, seen);
                    // Port and its Interfaces are non-root: dropping the reference
                    // lets ovsdb-server garbage-collect them.
                    tx.push(ops::mutate(
                        "Bridge",
                        bridge_where(),
                        vec![ops::mutation_delete(
                            "ports",
                            value::uuid_set([seen.uuid.as_str()]),
                        )],
                    ));
                }
                SwitchAction::AddUplink(spec) => add_uplink_ops(&mut tx, owner, bridge, spec),
                SwitchAction::AddTunnel(spec) => add_tunnel_ops(&mut tx, owner, bridge, spec),
                SwitchAction::DeleteQos { uuid } => {
                    match observed.orphan_qos.iter().find(|q| &q.uuid == uuid) {
                        Some(orphan) => delete_qos_ops(&mut tx, owner, orphan),
                        None => tx.push(ops::delete(
                            "QoS",
                            vec![ops::uuid_is(uuid), owned_by(owner)],
                        )),
                    }
                }
                SwitchAction::DeleteQueue { uuid } => {
                    tx.push(ops::delete(
                        "Queue",
                        vec![ops::uuid_is(uuid), owned_by(owner)],
                    ));
                }
                SwitchAction::SetSflow(spec) => {
                    let row = spec.as_ref().map(|s| {
                        let mut row = json!({
                            "targets": value::set(s.targets.iter().map(String::as_str)),
                            "sampling": s.sampling,
                            "polling": s.polling_seconds,
                            "external_ids": owner_ids(owner, None),
                        });
                        if let Some(header) = s.header_bytes {
                            row["header"] = json!(header);
                        }
                        if let Some(agent) = &s.agent {
                            row["agent"] = json!(agent);
                        }
                        row
                    });
                    export_ops(&mut tx, bridge, "sflow", "sFlow", row);
                }
                SwitchAction::SetNetflow(spec) => {
                    let row = spec.as_ref().map(|s| {
                        json!({
                            "targets": value::set(s.targets.iter().map(String::as_str)),
                            "active_timeout": s.active_timeout_seconds,
                            "external_ids": owner_ids(owner, None),
                        })
                    });
                    export_ops(&mut tx, bridge, "netflow", "NetFlow", row);
                }
                SwitchAction::SetIpfix(spec) => {
                    let row = spec.as_ref().map(|s| {
                        let mut row = json!({
                            "targets": value::set(s.targets.iter().map(String::as_str)),
                            "sampling": s.sampling,
                            "cache_active_timeout": s.cache_active_timeout_seconds,
                            "external_ids": owner_ids(owner, None),
                        });
                        if let Some(domain) = s.obs_domain_id {
                            row["obs_domain_id"] = json!(domain);
                        }
                        row
                    });
                    export_ops(&mut tx, bridge, "ipfix", "IPFIX", row);
                }
                SwitchAction::DeleteBridge => {
                    let seen = observed.bridge.as_ref().ok_or_else(|| {
                        unexpected("planned to delete a bridge that does not exist")
                    })?;
                    for port in observed.ports.iter().filter(|p| p.owned) {
                        detach_qos_ops(&mut tx, owner, port);
                    }
                    tx.push(ops::mutate(
                        "Open_vSwitch",
                        vec![],
                        vec![ops::mutation_delete(
                            "bridges",
                            value::uuid_set([seen.uuid.as_str()]),
                        )],
                    ));
                }
            }
        }
        self.client.transact(DB, tx).await?;
        Ok(())
    }
}
