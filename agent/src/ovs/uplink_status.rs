//! What the switch runs now for the node's capabilities: the bridge's
//! datapath and the uplink with each member's link and the member a bond
//! sends on. Read from the rows ovs-vswitchd keeps current (`link_state`,
//! `bond_active_slave`), so a failover shows within one poll.

use std::collections::BTreeMap;

use measurelab_ovsdb::ops;
use measurelab_ovsdb::value::{self, Atom, Datum};
use measurelab_ovsdb::OvsdbClient;
use serde_json::{json, Map, Value};

use super::error::OvsError;
use super::ownership::{OWNER_KEY, ROLE_KEY};

type Row = Map<String, Value>;

/// One member interface of the uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkMemberStatus {
    /// Interface name.
    pub name: String,
    /// `link_state` is `up`.
    pub link_up: bool,
}

/// The uplink port as the switch runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkStatus {
    /// Port name (the bond's, or the single interface's).
    pub name: String,
    /// `single`, `active-backup`, `balance-slb` or `lacp`.
    pub mode: String,
    /// Members, sorted by name.
    pub members: Vec<UplinkMemberStatus>,
    /// The member the bond sends on now; `None` for a single interface or
    /// while no member is up.
    pub active_member: Option<String>,
}

/// The bridge's datapath and uplink.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwitchStatus {
    /// `datapath_type` of the bridge (`system` for OVS's empty default);
    /// `None` while the bridge does not exist.
    pub datapath: Option<String>,
    /// Our uplink port on the bridge, if any.
    pub uplink: Option<UplinkStatus>,
}

fn unexpected(what: String) -> OvsError {
    OvsError::Unexpected(what)
}

fn text(row: &Row, name: &str) -> String {
    row.get(name)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// An optional string column (a set of zero or one string).
fn optional_text(row: &Row, name: &str) -> Result<Option<String>, OvsError> {
    let Some(column) = row.get(name) else {
        return Ok(None);
    };
    Ok(Datum::from_json(column)?
        .as_optional()?
        .and_then(|atom| atom.as_str().map(str::to_string)))
}

fn uuid_of(row: &Row) -> Option<String> {
    match row.get("_uuid").map(Atom::from_json) {
        Some(Ok(Atom::Uuid(id))) => Some(id),
        _ => None,
    }
}

/// Read `owner`'s bridge `bridge` and its uplink port.
pub async fn read(
    client: &OvsdbClient,
    owner: &str,
    bridge: &str,
) -> Result<SwitchStatus, OvsError> {
    let results = client
        .transact(
            "Open_vSwitch",
            vec![
                ops::select(
                    "Bridge",
                    vec![ops::eq("name", json!(bridge))],
                    Some(&["ports", "datapath_type"]),
                ),
                ops::select(
                    "Port",
                    vec![],
                    Some(&[
                        "_uuid",
                        "name",
                        "interfaces",
                        "bond_mode",
                        "lacp",
                        "bond_active_slave",
                        "external_ids",
                    ]),
                ),
                ops::select(
                    "Interface",
                    vec![],
                    Some(&["_uuid", "name", "link_state", "mac_in_use"]),
                ),
            ],
        )
        .await?;
    let bridges = ops::selected_rows(&results[0])?;
    let Some(bridge_row) = bridges.first() else {
        return Ok(SwitchStatus::default());
    };
    let datapath = match text(bridge_row, "datapath_type").as_str() {
        "" => "system".to_string(),
        other => other.to_string(),
    };
    let bridge_ports = value::parse_uuid_set(
        bridge_row
            .get("ports")
            .ok_or_else(|| unexpected("Bridge row lacks ports".into()))?,
    )?;
    let interfaces: BTreeMap<String, Row> = ops::selected_rows(&results[2])?
        .into_iter()
        .filter_map(|row| Some((uuid_of(&row)?, row)))
        .collect();
    let uplink = ops::selected_rows(&results[1])?
        .into_iter()
        .filter(|port| uuid_of(port).is_some_and(|id| bridge_ports.contains(&id)))
        .find(|port| {
            let ids = port
                .get("external_ids")
                .and_then(|v| value::parse_string_map(v).ok())
                .unwrap_or_default();
            ids.get(OWNER_KEY).map(String::as_str) == Some(owner)
                && ids.get(ROLE_KEY).map(String::as_str) == Some("uplink")
        });
    let uplink = match uplink {
        Some(port) => Some(uplink_of(&port, &interfaces)?),
        None => None,
    };
    Ok(SwitchStatus {
        datapath: Some(datapath),
        uplink,
    })
}

fn uplink_of(port: &Row, interfaces: &BTreeMap<String, Row>) -> Result<UplinkStatus, OvsError> {
    let member_ids = value::parse_uuid_set(
        port.get("interfaces")
            .ok_or_else(|| unexpected("Port row lacks interfaces".into()))?,
    )?;
    let active_mac = optional_text(port, "bond_active_slave")?;
    let mut members = Vec::new();
    let mut active_member = None;
    for id in &member_ids {
        let Some(iface) = interfaces.get(id) else {
            continue;
        };
        let name = text(iface, "name");
        let link_up = optional_text(iface, "link_state")?.as_deref() == Some("up");
        let mac = optional_text(iface, "mac_in_use")?;
        if member_ids.len() > 1 && link_up && mac.is_some() && mac == active_mac {
            active_member = Some(name.clone());
        }
        members.push(UplinkMemberStatus { name, link_up });
    }
    members.sort_by(|a, b| a.name.cmp(&b.name));
    let lacp = optional_text(port, "lacp")?;
    let mode = match (optional_text(port, "bond_mode")?, lacp.as_deref()) {
        (_, Some("active")) => "lacp".to_string(),
        (Some(mode), _) => mode,
        // OVS bonds default to active-backup.
        (None, _) if members.len() > 1 => "active-backup".to_string(),
        (None, _) => "single".to_string(),
    };
    Ok(UplinkStatus {
        name: text(port, "name"),
        mode,
        members,
        active_member,
    })
}
