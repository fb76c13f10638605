//! Virtual platforms: membership, VLAN and subnet allocation, power state.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use crate::store::sql::{params, Connection, OptionalExtension};
use measurelab_api::http::{
    Platform, PlatformControlKey, PlatformCreate, PlatformGatewaySpec, PlatformPatch,
    PlatformPowerState, TenantUsage,
};

use super::codec::{from_json, new_id, to_json};
use super::error::StoreError;
use super::gateways::{self, GatewayRow, PlatformRef};
use super::registry::Registry;
use super::resources::TxContext;
use super::{control_keys, quotas, tenants};
use crate::access::{Scope, TenantRef};
use crate::{placement, validation};

const MAX_ADMINS: usize = 64;
const MAX_DESCRIPTION: usize = 4096;

/// A platform row plus its member node ids (in the order given).
#[derive(Debug, Clone)]
pub(crate) struct PlatformRow {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub node_ids: Vec<String>,
    pub admins: Vec<String>,
    pub description: String,
    pub vlan_tag: u16,
    pub subnet: String,
    pub gateway: Option<String>,
    pub power_state: PlatformPowerState,
    pub created_at: String,
    pub generation: u64,
    pub flow_monitoring: bool,
    /// The WireGuard gateway, if the platform has one.
    pub wg_gateway: Option<GatewayRow>,
}

impl PlatformRow {
    pub fn to_api(&self, registry: &Registry) -> Platform {
        Platform {
            id: self.id.clone(),
            name: self.name.clone(),
            nodes: self
                .node_ids
                .iter()
                .map(|id| node_name(registry, id))
                .collect(),
            admins: self.admins.clone(),
            description: self.description.clone(),
            vlan_tag: self.vlan_tag,
            subnet: self.subnet.clone(),
            gateway: self.gateway.clone(),
            power_state: self.power_state,
            created_at: self.created_at.clone(),
            tenant_id: self.tenant_id.clone(),
            generation: self.generation,
            flow_monitoring: self.flow_monitoring,
            gateway_spec: self.wg_gateway.as_ref().map(|g| g.spec(registry)),
            gateway_endpoint: self.wg_gateway.as_ref().and_then(|g| g.endpoint(registry)),
            gateway_public_key: self.wg_gateway.as_ref().map(|g| g.public_key.clone()),
            tunnel_network: self.wg_gateway.as_ref().map(|g| g.tunnel_network.clone()),
            gateway_status: self.wg_gateway.as_ref().map(|g| g.status()),
        }
    }

    pub fn as_ref(&self) -> PlatformRef<'_> {
        PlatformRef {
            id: &self.id,
            name: &self.name,
            tenant_id: &self.tenant_id,
            node_ids: &self.node_ids,
        }
    }

    /// Apply a `gateway` of a create or patch body (`None`: remove it), and
    /// point the platform's `gateway` address (every VM's default route) at
    /// it. Returns whether anything changed.
    fn apply_gateway(
        &mut self,
        cx: &mut TxContext<'_>,
        spec: Option<&PlatformGatewaySpec>,
    ) -> Result<bool, StoreError> {
        let before = self.wg_gateway.clone();
        self.wg_gateway = match spec {
            Some(spec) => Some(gateways::set(cx, &self.as_ref(), spec)?),
            None => {
                gateways::remove(cx, &self.as_ref())?;
                None
            }
        };
        let address = match &self.wg_gateway {
            Some(_) => Some(gateways::first_host(self.network()?.0).to_string()),
            None => None,
        };
        if address != self.gateway {
            self.gateway = address;
            // Every VM's desired route changes with it.
            for node in self.node_ids.clone() {
                cx.touch_node(&node)?;
            }
        }
        Ok(before != self.wg_gateway)
    }

    /// Network address of the platform's /24 (or whatever prefix it has).
    pub fn network(&self) -> Result<(Ipv4Addr, u8), StoreError> {
        placement::parse_cidr(&self.subnet)
            .ok_or_else(|| StoreError::Corrupt(format!("platforms.subnet {:?}", self.subnet)))
    }
}

pub(crate) fn node_name(registry: &Registry, id: &str) -> String {
    registry
        .by_id(id)
        .map(|n| n.name.clone())
        .unwrap_or_else(|| id.to_string())
}

const SELECT: &str = "SELECT id, name, admins, description, vlan_tag, subnet, gateway, power_state,
                             created_at, generation, tenant_id, flow_monitoring FROM platforms";

fn row_to_platform(
    conn: &Connection,
    row: &crate::store::sql::Row<'_>,
) -> Result<PlatformRow, StoreError> {
    let id: String = row.get(0)?;
    let admins: String = row.get(2)?;
    let power: String = row.get(7)?;
    let node_ids = conn
        .prepare_cached(
            "SELECT node_id FROM platform_nodes WHERE platform_id = ?1 ORDER BY position",
        )?
        .query_map([&id], |r| r.get::<String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PlatformRow {
        node_ids,
        name: row.get(1)?,
        admins: from_json("platforms.admins", &admins)?,
        description: row.get(3)?,
        vlan_tag: row.get::<i64>(4)? as u16,
        subnet: row.get(5)?,
        gateway: row.get(6)?,
        power_state: PlatformPowerState::parse(&power)
            .ok_or_else(|| StoreError::Corrupt(format!("platforms.power_state {power:?}")))?,
        created_at: row.get(8)?,
        generation: row.get::<i64>(9)? as u64,
        tenant_id: row.get(10)?,
        flow_monitoring: row.get(11)?,
        wg_gateway: gateways::of_platform(conn, &id)?,
        id,
    })
}

/// Look a platform up by id, then by name, among those `scope` sees.
pub(crate) fn find(
    conn: &Connection,
    scope: &Scope,
    key: &str,
) -> Result<Option<PlatformRow>, StoreError> {
    let mut statement = conn.prepare_cached(&format!(
        "{SELECT} WHERE (id = ?1 OR name = ?1) AND (tenant_id = ?2 OR ?2 IS NULL)"
    ))?;
    let mut rows = statement.query(params![key, scope.tenant_id()])?;
    let mut matches = Vec::new();
    while let Some(row) = rows.next()? {
        matches.push(row_to_platform(conn, &row)?);
    }
    tenants::pick_one(conn, "platform", key, matches, |p| {
        (p.id.as_str(), p.tenant_id.as_str())
    })
}

pub(crate) fn get(conn: &Connection, scope: &Scope, key: &str) -> Result<PlatformRow, StoreError> {
    find(conn, scope, key)?.ok_or_else(|| StoreError::NotFound {
        kind: "platform",
        id: key.to_string(),
    })
}

pub(crate) fn list(conn: &Connection, scope: &Scope) -> Result<Vec<PlatformRow>, StoreError> {
    let mut statement = conn.prepare_cached(&format!(
        "{SELECT} WHERE tenant_id = ?1 OR ?1 IS NULL ORDER BY name, tenant_id"
    ))?;
    let mut rows = statement.query([scope.tenant_id()])?;
    let mut platforms = Vec::new();
    while let Some(row) = rows.next()? {
        platforms.push(row_to_platform(conn, &row)?);
    }
    Ok(platforms)
}

/// Platforms the node is a member of.
pub(crate) fn of_node(conn: &Connection, node_id: &str) -> Result<Vec<PlatformRow>, StoreError> {
    let ids = conn
        .prepare_cached("SELECT platform_id FROM platform_nodes WHERE node_id = ?1")?
        .query_map([node_id], |r| r.get::<String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    ids.iter().map(|id| get(conn, &Scope::All, id)).collect()
}

/// Resolve node names or ids to ids, refusing unknown and repeated nodes.
fn resolve_nodes(registry: &Registry, nodes: &[String]) -> Result<Vec<String>, StoreError> {
    let mut ids: Vec<String> = Vec::with_capacity(nodes.len());
    for (i, key) in nodes.iter().enumerate() {
        let field = format!("nodes[{i}]");
        let node = registry.by_id_or_name(key).ok_or_else(|| {
            StoreError::invalid(&field, format!("no node named {key:?} is registered"))
        })?;
        if ids.contains(&node.id) {
            return Err(StoreError::invalid(
                field,
                format!("node {key:?} is listed twice"),
            ));
        }
        ids.push(node.id.clone());
    }
    Ok(ids)
}

fn validate_admins(admins: &[String]) -> Result<(), StoreError> {
    if admins.len() > MAX_ADMINS {
        return Err(StoreError::invalid(
            "admins",
            format!(
                "has {} entries; at most {MAX_ADMINS} are allowed",
                admins.len()
            ),
        ));
    }
    for (i, admin) in admins.iter().enumerate() {
        let field = format!("admins[{i}]");
        if admin.trim().is_empty() {
            return Err(StoreError::invalid(field, "must not be empty"));
        }
        validation::short_text(&field, admin, 256)?;
    }
    Ok(())
}

fn allocate_vlan(cx: &TxContext<'_>) -> Result<u16, StoreError> {
    let used: HashSet<u16> = cx
        .tx
        .prepare_cached("SELECT vlan_tag FROM platforms")?
        .query_map([], |r| r.get::<i64>(0))?
        .map(|r| r.map(|v| v as u16))
        .collect::<Result<_, _>>()?;
    placement::vlan(cx.pools, &used)
}

fn allocate_subnet(cx: &TxContext<'_>) -> Result<String, StoreError> {
    let used: HashSet<String> = cx
        .tx
        .prepare_cached("SELECT subnet FROM platforms")?
        .query_map([], |r| r.get::<String>(0))?
        .collect::<Result<_, _>>()?;
    placement::subnet(cx.pools, &used)
}

pub(crate) fn create(
    cx: &mut TxContext<'_>,
    tenant: &TenantRef,
    input: PlatformCreate,
) -> Result<PlatformRow, StoreError> {
    validation::dns_label("name", &input.name)?;
    let node_ids = resolve_nodes(cx.registry, &input.nodes)?;
    validate_admins(&input.admins)?;
    let description = input.description.unwrap_or_default();
    validation::short_text("description", &description, MAX_DESCRIPTION)?;
    if find(cx.tx, &Scope::Tenant(tenant.id.clone()), &input.name)?.is_some() {
        return Err(StoreError::conflict(
            Some("name"),
            format!(
                "name: tenant {} already has a platform named {:?}",
                tenant.name, input.name
            ),
        ));
    }
    quotas::admit(
        cx,
        &tenant.id,
        &TenantUsage {
            platforms: 1,
            ..TenantUsage::default()
        },
        quotas::Fields::VM,
    )?;
    let vlan_tag = allocate_vlan(cx)?;
    let subnet = allocate_subnet(cx)?;
    let mut row = PlatformRow {
        id: new_id(),
        tenant_id: tenant.id.clone(),
        name: input.name.clone(),
        node_ids,
        admins: input.admins.clone(),
        description,
        vlan_tag,
        subnet,
        gateway: None,
        power_state: PlatformPowerState::Running,
        created_at: cx.now_text(),
        generation: 1,
        flow_monitoring: input.flow_monitoring.unwrap_or(false),
        wg_gateway: None,
    };
    cx.tx
        .prepare_cached(
            "INSERT INTO platforms (id, name, admins, description, vlan_tag, subnet, gateway,
                                    power_state, created_at, generation, tenant_id,
                                    flow_monitoring)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?
        .execute(params![
            row.id,
            row.name,
            to_json(&row.admins),
            row.description,
            row.vlan_tag,
            row.subnet,
            row.gateway,
            row.power_state.as_str(),
            row.created_at,
            row.generation as i64,
            row.tenant_id,
            row.flow_monitoring
        ])?;
    write_members(cx, &row.id, &row.node_ids)?;
    control_keys::create(cx, &row.id)?;
    for node in &row.node_ids {
        cx.touch_node(node)?;
    }
    if let Some(spec) = &input.gateway {
        row.apply_gateway(cx, Some(spec))?;
        save(cx, &row)?;
    }
    cx.event(
        Some(&row.tenant_id),
        "PlatformCreated",
        "platform",
        &row.id,
        format!(
            "platform {} created with VLAN {} and subnet {} on {} node(s)",
            row.name,
            row.vlan_tag,
            row.subnet,
            row.node_ids.len()
        ),
    )?;
    Ok(row)
}

fn write_members(
    cx: &TxContext<'_>,
    platform_id: &str,
    node_ids: &[String],
) -> Result<(), StoreError> {
    cx.tx
        .prepare_cached("DELETE FROM platform_nodes WHERE platform_id = ?1")?
        .execute([platform_id])?;
    for (position, node) in node_ids.iter().enumerate() {
        cx.tx
            .prepare_cached(
                "INSERT INTO platform_nodes (platform_id, node_id, position) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![platform_id, node, position as i64])?;
    }
    Ok(())
}

/// VM names (and their node) of a platform, optionally only on one node.
fn vms_of(cx: &TxContext<'_>, platform_id: &str) -> Result<Vec<(String, String)>, StoreError> {
    Ok(cx
        .tx
        .prepare_cached("SELECT name, node_id FROM vms WHERE platform_id = ?1 ORDER BY name")?
        .query_map([platform_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<Vec<_>, _>>()?)
}

pub(crate) fn update(
    cx: &mut TxContext<'_>,
    scope: &Scope,
    key: &str,
    patch: PlatformPatch,
) -> Result<PlatformRow, StoreError> {
    let mut row = get(cx.tx, scope, key)?;
    let mut changed = false;
    if let Some(nodes) = &patch.nodes {
        let new_ids = resolve_nodes(cx.registry, nodes)?;
        let removed: Vec<String> = row
            .node_ids
            .iter()
            .filter(|id| !new_ids.contains(id))
            .cloned()
            .collect();
        let blocking: Vec<String> = vms_of(cx, &row.id)?
            .into_iter()
            .filter(|(_, node)| removed.contains(node))
            .map(|(name, node)| format!("{name} (on {})", node_name(cx.registry, &node)))
            .collect();
        if !blocking.is_empty() {
            return Err(StoreError::conflict(
                Some("nodes"),
                format!(
                    "nodes: cannot remove a node that still hosts VMs of platform {}: {}; delete those VMs first",
                    row.name,
                    blocking.join(", ")
                ),
            ));
        }
        if new_ids != row.node_ids {
            for node in row.node_ids.iter().chain(new_ids.iter()) {
                cx.touch_node(node)?;
            }
            write_members(cx, &row.id, &new_ids)?;
            row.node_ids = new_ids;
            changed = true;
        }
    }
    if let Some(admins) = patch.admins {
        validate_admins(&admins)?;
        changed |= admins != row.admins;
        row.admins = admins;
    }
    if let Some(description) = patch.description {
        validation::short_text("description", &description, MAX_DESCRIPTION)?;
        changed |= description != row.description;
        row.description = description;
    }
    if let Some(power) = patch.power_state {
        if power != row.power_state {
            set_power_in_place(cx, &mut row, power)?;
            changed = true;
        }
    }
    if let Some(monitoring) = patch.flow_monitoring {
        if monitoring != row.flow_monitoring {
            // The nodes decide from their platforms whether to export at all.
            for node in row.node_ids.clone() {
                cx.touch_node(&node)?;
            }
            row.flow_monitoring = monitoring;
            changed = true;
        }
    }
    if let Some(gateway) = &patch.gateway {
        changed |= row.apply_gateway(cx, gateway.as_ref())?;
    }
    if let Some(gateway) = &row.wg_gateway {
        if !row.node_ids.contains(&gateway.node_id) {
            return Err(StoreError::conflict(
                Some("nodes"),
                format!(
                    "nodes: node {} runs the gateway of platform {}; move the gateway (`gateway.node`) or remove it first",
                    node_name(cx.registry, &gateway.node_id),
                    row.name
                ),
            ));
        }
    }
    if changed {
        row.generation += 1;
        save(cx, &row)?;
    }
    Ok(row)
}

fn set_power_in_place(
    cx: &mut TxContext<'_>,
    row: &mut PlatformRow,
    power: PlatformPowerState,
) -> Result<(), StoreError> {
    row.power_state = power;
    for node in row.node_ids.clone() {
        cx.touch_node(&node)?;
    }
    let (reason, verb) = match power {
        PlatformPowerState::Running => ("PlatformStarted", "started"),
        PlatformPowerState::Paused => ("PlatformPaused", "paused: every VM is suspended"),
    };
    cx.event(
        Some(&row.tenant_id),
        reason,
        "platform",
        &row.id,
        format!("platform {} {verb}", row.name),
    )
}

/// `start` / `pause`.
pub(crate) fn set_power(
    cx: &mut TxContext<'_>,
    scope: &Scope,
    key: &str,
    power: PlatformPowerState,
) -> Result<PlatformRow, StoreError> {
    let mut row = get(cx.tx, scope, key)?;
    if row.power_state != power {
        set_power_in_place(cx, &mut row, power)?;
        row.generation += 1;
        save(cx, &row)?;
    }
    Ok(row)
}

fn save(cx: &TxContext<'_>, row: &PlatformRow) -> Result<(), StoreError> {
    cx.tx
        .prepare_cached(
            "UPDATE platforms SET admins = ?2, description = ?3, power_state = ?4, generation = ?5,
                                  flow_monitoring = ?6, gateway = ?7
             WHERE id = ?1",
        )?
        .execute(params![
            row.id,
            to_json(&row.admins),
            row.description,
            row.power_state.as_str(),
            row.generation as i64,
            row.flow_monitoring,
            row.gateway
        ])?;
    Ok(())
}

/// The control key of platform `key` in `scope`, recording that token
/// `reader` read it (the event names the reader, never the key).
pub(crate) fn read_control_key(
    cx: &mut TxContext<'_>,
    scope: &Scope,
    key: &str,
    reader: &str,
) -> Result<PlatformControlKey, StoreError> {
    let platform = get(cx.tx, scope, key)?;
    let (secret, version) = platform_key(cx.tx, &platform.id)?;
    cx.event(
        Some(&platform.tenant_id),
        "PlatformControlKeyRead",
        "platform",
        &platform.id,
        format!(
            "control key of platform {} read with token {reader}",
            platform.name
        ),
    )?;
    Ok(PlatformControlKey {
        key_id: platform.id.clone(),
        platform: platform.id,
        control_key: secret,
        version,
    })
}

/// The platform's key and its version; every platform gets one at creation (or from
/// migration 0016).
fn platform_key(conn: &Connection, platform_id: &str) -> Result<(String, u32), StoreError> {
    control_keys::versioned(conn, platform_id)?
        .ok_or_else(|| StoreError::Corrupt(format!("platform {platform_id} has no control key")))
}

/// Replaces the platform's control key by `secret`, recorded as a
/// `PlatformControlKeyRotated` event naming the token, never the key. Every program
/// run of the platform carries the new key from the next desired state on, and node
/// agents restart runs whose environment changed, so the old key stops working once
/// the platform's programs have restarted.
pub(crate) fn rotate_control_key(
    cx: &mut TxContext<'_>,
    scope: &Scope,
    key: &str,
    secret: &str,
    rotator: &str,
) -> Result<PlatformControlKey, StoreError> {
    let platform = get(cx.tx, scope, key)?;
    let version = control_keys::rotate(cx, &platform.id, secret)?.ok_or_else(|| {
        StoreError::Corrupt(format!("platform {} has no control key", platform.id))
    })?;
    cx.event(
        Some(&platform.tenant_id),
        "PlatformControlKeyRotated",
        "platform",
        &platform.id,
        format!(
            "control key of platform {} rotated to version {version} with token {rotator}",
            platform.name
        ),
    )?;
    Ok(PlatformControlKey {
        key_id: platform.id.clone(),
        platform: platform.id,
        control_key: secret.to_string(),
        version,
    })
}

pub(crate) fn delete(
    cx: &mut TxContext<'_>,
    scope: &Scope,
    key: &str,
) -> Result<PlatformRow, StoreError> {
    let row = get(cx.tx, scope, key)?;
    let vms = vms_of(cx, &row.id)?;
    if !vms.is_empty() {
        let names: Vec<String> = vms.into_iter().map(|(name, _)| name).collect();
        return Err(StoreError::conflict(
            None,
            format!(
                "platform {} still has VMs: {}; delete them first",
                row.name,
                names.join(", ")
            ),
        ));
    }
    let tasks: Option<String> = cx
        .tx
        .query_row(
            "SELECT name FROM tasks WHERE platform_id = ?1 LIMIT 1",
            [&row.id],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(task) = tasks {
        return Err(StoreError::conflict(
            None,
            format!(
                "platform {} is used by measurement task {task}; delete the task first",
                row.name
            ),
        ));
    }
    cx.tx
        .prepare_cached("DELETE FROM platforms WHERE id = ?1")?
        .execute([&row.id])?;
    control_keys::delete(cx, &row.id)?;
    for node in &row.node_ids {
        cx.touch_node(node)?;
    }
    cx.event(
        Some(&row.tenant_id),
        "PlatformDeleted",
        "platform",
        &row.id,
        format!(
            "platform {} deleted; VLAN {} and subnet {} are free again",
            row.name, row.vlan_tag, row.subnet
        ),
    )?;
    Ok(row)
}
