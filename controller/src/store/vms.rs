//! VMs: validation against the platform, node, appliance and QoS policy;
//! MAC, address and port allocation; in-place updates; two-phase delete.

use std::collections::HashSet;

use crate::store::sql::{params, Connection, OptionalExtension};
use measurelab_api::http::{
    Condition, TenantUsage, Vm, VmBackend, VmCreate, VmPatch, VmPowerState,
};

use super::codec::{from_json, new_id, to_json};
use super::error::StoreError;
use super::platforms::{self, node_name, PlatformRow};
use super::registry::{NodeEntry, Registry};
use super::resources::TxContext;
use super::{appliances, qos_policies, quotas, tenants};
use crate::access::Scope;
use crate::placement::overcommit::{self, NodeUse};
use crate::version_policy::Version;
use crate::{guest_agent_skew, placement, validation};

const MAX_VCPUS: u32 = 64;
const MAX_MEMORY_MIB: u64 = 1024 * 1024;
const MAX_DISK_MIB: u64 = 16 * 1024 * 1024;

/// One row of `vms` with the names of what it references.
#[derive(Debug, Clone)]
pub(crate) struct VmRow {
    pub id: String,
    /// The platform's tenant.
    pub tenant_id: String,
    pub name: String,
    pub platform_id: String,
    pub platform_name: String,
    pub node_id: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_mib: u64,
    pub swap_mib: u64,
    pub max_vcpus: Option<u32>,
    pub max_memory_mib: Option<u64>,
    pub appliance_id: String,
    pub appliance_name: String,
    pub qos_policy_id: Option<String>,
    pub qos_policy_name: Option<String>,
    pub power_state: VmPowerState,
    pub backend: VmBackend,
    pub address: String,
    pub mac: String,
    pub port_name: String,
    pub deleting: bool,
    pub actual_state: String,
    pub restart_required: bool,
    pub guest_last_heartbeat: Option<String>,
    /// What the guest agent said in its last hello, as its node agent
    /// reported it; `None` until one does.
    pub guest_agent_version: Option<String>,
    pub conditions: Vec<Condition>,
    pub generation: u64,
    pub observed_generation: u64,
    pub created_at: String,
}

impl VmRow {
    /// The API's view, with the guest agent judged against a controller of
    /// version `controller` (docs/version-skew.md).
    pub fn to_api(&self, registry: &Registry, controller: Version) -> Vm {
        let mut conditions = self.conditions.clone();
        conditions.extend(guest_agent_skew::condition(
            controller,
            self.guest_agent_version.as_deref(),
        ));
        Vm {
            id: self.id.clone(),
            name: self.name.clone(),
            platform: self.platform_name.clone(),
            node: node_name(registry, &self.node_id),
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            disk_mib: self.disk_mib,
            swap_mib: self.swap_mib,
            appliance: self.appliance_name.clone(),
            qos_policy: self.qos_policy_name.clone(),
            power_state: self.power_state,
            backend: self.backend,
            address: self.address.clone(),
            mac: self.mac.clone(),
            actual_state: if self.deleting {
                "deleting".into()
            } else {
                self.actual_state.clone()
            },
            restart_required: self.restart_required,
            pending_restart: self.restart_required,
            max_vcpus: self.max_vcpus,
            max_memory_mib: self.max_memory_mib,
            guest_last_heartbeat: self.guest_last_heartbeat.clone(),
            guest_agent_version: self.guest_agent_version.clone(),
            conditions,
            generation: self.generation,
            observed_generation: self.observed_generation,
            tenant_id: self.tenant_id.clone(),
            created_at: self.created_at.clone(),
        }
    }
}

const SELECT: &str = "SELECT v.id, v.name, v.platform_id, p.name, v.node_id, v.vcpus, v.memory_mib,
        v.disk_mib, v.swap_mib, v.appliance_id, a.name, v.qos_policy_id, q.name, v.power_state,
        v.backend, v.address, v.mac, v.port_name, v.deleting, v.actual_state,
        v.restart_required, v.guest_last_heartbeat, v.conditions, v.generation,
        v.observed_generation, v.created_at, p.tenant_id, v.max_vcpus, v.max_memory_mib,
        v.guest_agent_version
    FROM vms v
    JOIN platforms p ON p.id = v.platform_id
    JOIN appliances a ON a.id = v.appliance_id
    LEFT JOIN qos_policies q ON q.id = v.qos_policy_id";

fn read_row(r: &crate::store::sql::Row<'_>) -> Result<VmRow, StoreError> {
    let power: String = r.get(13)?;
    let backend: String = r.get(14)?;
    let conditions: String = r.get(22)?;
    Ok(VmRow {
        id: r.get(0)?,
        name: r.get(1)?,
        platform_id: r.get(2)?,
        platform_name: r.get(3)?,
        node_id: r.get(4)?,
        vcpus: r.get::<i64>(5)? as u32,
        memory_mib: r.get::<i64>(6)? as u64,
        disk_mib: r.get::<i64>(7)? as u64,
        swap_mib: r.get::<i64>(8)? as u64,
        appliance_id: r.get(9)?,
        appliance_name: r.get(10)?,
        qos_policy_id: r.get(11)?,
        qos_policy_name: r.get(12)?,
        power_state: VmPowerState::parse(&power)
            .ok_or_else(|| StoreError::Corrupt(format!("vms.power_state {power:?}")))?,
        backend: VmBackend::parse(&backend)
            .ok_or_else(|| StoreError::Corrupt(format!("vms.backend {backend:?}")))?,
        address: r.get(15)?,
        mac: r.get(16)?,
        port_name: r.get(17)?,
        deleting: r.get::<i64>(18)? != 0,
        actual_state: r.get(19)?,
        restart_required: r.get::<i64>(20)? != 0,
        guest_last_heartbeat: r.get(21)?,
        conditions: from_json("vms.conditions", &conditions)?,
        generation: r.get::<i64>(23)? as u64,
        observed_generation: r.get::<i64>(24)? as u64,
        created_at: r.get(25)?,
        tenant_id: r.get(26)?,
        max_vcpus: r.get::<Option<i64>>(27)?.map(|v| v as u32),
        max_memory_mib: r.get::<Option<i64>>(28)?.map(|v| v as u64),
        guest_agent_version: r.get(29)?,
    })
}

fn query(
    conn: &Connection,
    filter: &str,
    args: &[&dyn crate::store::sql::ToValue],
) -> Result<Vec<VmRow>, StoreError> {
    let mut statement = conn.prepare_cached(&format!("{SELECT} {filter}"))?;
    let mut rows = statement.query(args)?;
    let mut vms = Vec::new();
    while let Some(row) = rows.next()? {
        vms.push(read_row(&row)?);
    }
    Ok(vms)
}

/// Look a VM up, among those `scope` sees, by id, by `platform/name`, or
/// by a name unique across platforms.
pub(crate) fn find(
    conn: &Connection,
    scope: &Scope,
    key: &str,
) -> Result<Option<VmRow>, StoreError> {
    let tenant = scope.tenant_id();
    if let Some(vm) = query(
        conn,
        "WHERE v.id = ?1 AND (p.tenant_id = ?2 OR ?2 IS NULL)",
        &[&key, &tenant],
    )?
    .pop()
    {
        return Ok(Some(vm));
    }
    if let Some((platform, name)) = key.split_once('/') {
        let matches = query(
            conn,
            "WHERE (p.name = ?1 OR p.id = ?1) AND v.name = ?2 AND (p.tenant_id = ?3 OR ?3 IS NULL)",
            &[&platform, &name, &tenant],
        )?;
        return tenants::pick_one(conn, "VM", key, matches, |v| {
            (v.id.as_str(), v.tenant_id.as_str())
        });
    }
    let mut matches = query(
        conn,
        "WHERE v.name = ?1 AND (p.tenant_id = ?2 OR ?2 IS NULL) ORDER BY p.name",
        &[&key, &tenant],
    )?;
    match matches.len() {
        0 | 1 => Ok(matches.pop()),
        _ => Err(StoreError::conflict(
            None,
            format!(
                "VM name {key:?} exists in platforms {}; address it as <platform>/{key} or by id",
                matches
                    .iter()
                    .map(|v| v.platform_name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

pub(crate) fn get(conn: &Connection, scope: &Scope, key: &str) -> Result<VmRow, StoreError> {
    find(conn, scope, key)?.ok_or_else(|| StoreError::NotFound {
        kind: "vm",
        id: key.to_string(),
    })
}

/// A VM by id whatever its tenant: for the node API, which acts for the system.
pub(crate) fn get_by_id(conn: &Connection, id: &str) -> Result<Option<VmRow>, StoreError> {
    Ok(query(conn, "WHERE v.id = ?1", &[&id])?.pop())
}

/// `GET /v1/vms?platform=&node=` (ids or names).
pub(crate) fn list(
    conn: &Connection,
    registry: &Registry,
    scope: &Scope,
    platform: Option<&str>,
    node: Option<&str>,
) -> Result<Vec<VmRow>, StoreError> {
    let platform_id = match platform {
        Some(key) => match platforms::find(conn, scope, key)? {
            Some(p) => Some(p.id),
            None => return Ok(Vec::new()),
        },
        None => None,
    };
    let node_id = match node {
        Some(key) => match registry.by_id_or_name(key) {
            Some(n) => Some(n.id.clone()),
            None => return Ok(Vec::new()),
        },
        None => None,
    };
    query(
        conn,
        "WHERE (v.platform_id = ?1 OR ?1 IS NULL) AND (v.node_id = ?2 OR ?2 IS NULL)
           AND (p.tenant_id = ?3 OR ?3 IS NULL)
         ORDER BY p.name, v.name",
        &[&platform_id, &node_id, &scope.tenant_id()],
    )
}

/// The guest agent version of every VM whose guest agent has reported
/// one, leaving out VMs being deleted, for
/// `measurelab_vms_by_guest_agent_skew`.
pub(crate) fn guest_agent_versions(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT guest_agent_version FROM vms
          WHERE guest_agent_version IS NOT NULL AND deleting = 0",
    )?;
    let mut rows = statement.query(params![])?;
    let mut versions = Vec::new();
    while let Some(row) = rows.next()? {
        versions.push(row.get(0)?);
    }
    Ok(versions)
}

pub(crate) fn of_node(conn: &Connection, node_id: &str) -> Result<Vec<VmRow>, StoreError> {
    query(conn, "WHERE v.node_id = ?1 ORDER BY v.name", &[&node_id])
}

/// Memory of the node's VMs the agent has not started yet: not in its
/// report of used memory yet, but promised.
fn reserved_memory_mib(
    cx: &TxContext<'_>,
    node_id: &str,
    except_vm: Option<&str>,
) -> Result<u64, StoreError> {
    let reserved: i64 = cx.tx.query_row(
        "SELECT COALESCE(SUM(memory_mib), 0) FROM vms
         WHERE node_id = ?1 AND deleting = 0 AND actual_state = 'pending'
           AND id IS DISTINCT FROM ?2",
        params![node_id, except_vm],
        |r| r.get(0),
    )?;
    Ok(reserved as u64)
}

/// vCPUs and memory of the VMs placed on a node: what its overcommit
/// capacity is measured against. A VM being deleted no longer counts, as in
/// [`reserved_memory_mib`], so replacing a VM does not wait for its teardown.
fn node_use(cx: &TxContext<'_>, node_id: &str) -> Result<NodeUse, StoreError> {
    let (vcpus, memory_mib): (i64, i64) = cx.tx.query_row(
        "SELECT COALESCE(SUM(vcpus), 0), COALESCE(SUM(memory_mib), 0) FROM vms
         WHERE node_id = ?1 AND deleting = 0",
        [node_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(NodeUse {
        vcpus: vcpus as u64,
        memory_mib: memory_mib as u64,
    })
}

/// Refuse `more_vcpus` and `more_mib` for VM `vm` (`platform/name`) unless
/// they fit the node: within its capacity times the operator's overcommit
/// ratios, counting every VM placed there; and, while memory is not
/// overcommitted, within what the agent reports free.
fn check_node_fits(
    cx: &TxContext<'_>,
    vm: &str,
    node: &NodeEntry,
    more_vcpus: u64,
    more_mib: u64,
    pending_self_mib: u64,
    except_vm: Option<&str>,
) -> Result<(), StoreError> {
    if more_mib > 0 && node.overcommit.memory <= 1.0 {
        let reserved = reserved_memory_mib(cx, &node.id, except_vm)?;
        placement::check_memory_fits(
            &node.name,
            &node.resources,
            reserved,
            more_mib + pending_self_mib,
        )?;
    }
    if more_vcpus == 0 && more_mib == 0 {
        return Ok(());
    }
    let in_use = node_use(cx, &node.id)?;
    if more_vcpus > 0 {
        overcommit::check_vcpus(
            vm,
            &node.name,
            &node.resources,
            node.overcommit,
            in_use,
            more_vcpus,
        )?;
    }
    if more_mib > 0 {
        overcommit::check_memory(
            vm,
            &node.name,
            &node.resources,
            node.overcommit,
            in_use,
            more_mib,
        )?;
    }
    Ok(())
}

/// The maxima leave room above the sizes, never below: a VM cannot be
/// given more than it was defined with room for.
fn check_maxima(
    vcpus: u32,
    memory_mib: u64,
    max_vcpus: Option<u32>,
    max_memory_mib: Option<u64>,
) -> Result<(), StoreError> {
    if let Some(max) = max_vcpus {
        if !(vcpus..=MAX_VCPUS).contains(&max) {
            return Err(StoreError::invalid(
                "max_vcpus",
                format!("{max} must be at least vcpus ({vcpus}) and at most {MAX_VCPUS}; raise max_vcpus with vcpus"),
            ));
        }
    }
    if let Some(max) = max_memory_mib {
        if !(memory_mib..=MAX_MEMORY_MIB).contains(&max) {
            return Err(StoreError::invalid(
                "max_memory_mib",
                format!("{max} MiB must be at least memory_mib ({memory_mib} MiB) and at most {MAX_MEMORY_MIB} MiB; raise max_memory_mib with memory_mib"),
            ));
        }
    }
    Ok(())
}

fn check_vcpus(vcpus: u32) -> Result<(), StoreError> {
    if !(1..=MAX_VCPUS).contains(&vcpus) {
        return Err(StoreError::invalid(
            "vcpus",
            format!("{vcpus} is out of range 1..={MAX_VCPUS}"),
        ));
    }
    Ok(())
}

fn allocate_address(cx: &TxContext<'_>, platform: &PlatformRow) -> Result<String, StoreError> {
    let used: HashSet<String> = cx
        .tx
        .prepare_cached("SELECT address FROM vms WHERE platform_id = ?1")?
        .query_map([&platform.id], |r| r.get::<String>(0))?
        .collect::<Result<_, _>>()?;
    placement::address(&platform.name, &platform.subnet, &used)
}

fn allocate_mac(cx: &TxContext<'_>) -> Result<String, StoreError> {
    placement::mac(|mac| {
        let taken: Option<i64> = cx
            .tx
            .query_row("SELECT 1 FROM vms WHERE mac = ?1", [mac], |r| r.get(0))
            .optional()?;
        Ok(taken.is_some())
    })
}

/// OVS port names are interface names: at most 15 characters.
fn port_name(vm_id: &str) -> String {
    let hex: String = vm_id
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(13)
        .collect();
    format!("ml{hex}")
}

/// Create a VM in a platform `scope` sees; it belongs to the platform's tenant.
pub(crate) fn create(
    cx: &mut TxContext<'_>,
    scope: &Scope,
    input: VmCreate,
) -> Result<VmRow, StoreError> {
    validation::dns_label("name", &input.name)?;
    let platform = platforms::find(cx.tx, scope, &input.platform)?.ok_or_else(|| {
        StoreError::invalid(
            "platform",
            format!("no platform named {:?} exists", input.platform),
        )
    })?;
    let node = cx
        .registry
        .by_id_or_name(&input.node)
        .cloned()
        .ok_or_else(|| {
            StoreError::invalid(
                "node",
                format!("no node named {:?} is registered", input.node),
            )
        })?;
    if !platform.node_ids.contains(&node.id) {
        return Err(StoreError::invalid(
            "node",
            format!(
                "node {} is not a member of platform {} (members: {}); add it to the platform first",
                node.name,
                platform.name,
                platform
                    .node_ids
                    .iter()
                    .map(|id| node_name(cx.registry, id))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let appliance = appliances::find(cx.tx, &input.appliance)?.ok_or_else(|| {
        StoreError::invalid(
            "appliance",
            format!(
                "no appliance named {:?} exists (GET /v1/appliances lists them)",
                input.appliance
            ),
        )
    })?;
    let platform_scope = Scope::Tenant(platform.tenant_id.clone());
    let qos =
        match &input.qos_policy {
            Some(key) => Some(qos_policies::find(cx.tx, &platform_scope, key)?.ok_or_else(
                || StoreError::invalid("qos_policy", format!("no QoS policy named {key:?} exists")),
            )?),
            None => None,
        };
    check_vcpus(input.vcpus)?;
    check_maxima(
        input.vcpus,
        input.memory_mib,
        input.max_vcpus,
        input.max_memory_mib,
    )?;
    if input.memory_mib < appliance.min_memory_mib {
        return Err(StoreError::invalid(
            "memory_mib",
            format!(
                "{} MiB is below the minimum of appliance {} ({} MiB)",
                input.memory_mib, appliance.name, appliance.min_memory_mib
            ),
        ));
    }
    if input.memory_mib > MAX_MEMORY_MIB {
        return Err(StoreError::invalid(
            "memory_mib",
            format!("{} MiB is above {MAX_MEMORY_MIB} MiB", input.memory_mib),
        ));
    }
    for (field, value) in [("disk_mib", input.disk_mib), ("swap_mib", input.swap_mib)] {
        if value.unwrap_or(0) > MAX_DISK_MIB {
            return Err(StoreError::invalid(
                field,
                format!("{} MiB is above {MAX_DISK_MIB} MiB", value.unwrap_or(0)),
            ));
        }
    }
    let supported: Vec<VmBackend> = appliance
        .backends
        .iter()
        .filter_map(|b| match b.as_str() {
            "namespace" => Some(VmBackend::Namespace),
            "libvirt" => Some(VmBackend::Libvirt),
            _ => None,
        })
        .collect();
    let backend = match input.backend {
        Some(backend) => {
            if !supported.contains(&backend) {
                return Err(StoreError::invalid(
                    "backend",
                    format!(
                        "appliance {} does not run on the {} backend (it supports {})",
                        appliance.name,
                        backend.as_str(),
                        appliance.backends.join(", ")
                    ),
                ));
            }
            if !placement::has_backend(&node.capabilities, backend) {
                return Err(StoreError::invalid(
                    "backend",
                    format!(
                        "node {} lacks the {} backend (it reports namespace_backend={}, libvirt_uris=[{}])",
                        node.name,
                        backend.as_str(),
                        node.capabilities.namespace_backend,
                        node.capabilities.libvirt_uris.join(", ")
                    ),
                ));
            }
            backend
        }
        None => supported
            .iter()
            .copied()
            .find(|b| placement::has_backend(&node.capabilities, *b))
            .ok_or_else(|| {
                StoreError::invalid(
                    "backend",
                    format!(
                        "node {} has none of the backends appliance {} needs ({}); it reports namespace_backend={}, libvirt_uris=[{}]",
                        node.name,
                        appliance.name,
                        appliance.backends.join(", "),
                        node.capabilities.namespace_backend,
                        node.capabilities.libvirt_uris.join(", ")
                    ),
                )
            })?,
    };
    let vm_key = format!("{}/{}", platform.name, input.name);
    let qos_id = qos.as_ref().map(|q| q.id.as_str());
    let bandwidth = quotas::bandwidth_growth(
        cx,
        &platform.tenant_id,
        &vm_key,
        qos.as_ref().map(|q| q.name.as_str()),
        None,
        quotas::policy_bandwidth(cx.tx, qos_id)?,
    )?;
    quotas::admit(
        cx,
        &platform.tenant_id,
        &TenantUsage {
            vms: 1,
            vcpus: u64::from(input.vcpus),
            memory_mib: input.memory_mib,
            bandwidth_kbps: bandwidth,
            ..TenantUsage::default()
        },
        quotas::Fields::VM,
    )?;
    check_node_fits(
        cx,
        &vm_key,
        &node,
        u64::from(input.vcpus),
        input.memory_mib,
        0,
        None,
    )?;
    let taken: Option<String> = cx
        .tx
        .query_row(
            "SELECT id FROM vms WHERE platform_id = ?1 AND name = ?2",
            params![platform.id, input.name],
            |r| r.get(0),
        )
        .optional()?;
    if taken.is_some() {
        return Err(StoreError::conflict(
            Some("name"),
            format!(
                "name: platform {} already has a VM named {:?}",
                platform.name, input.name
            ),
        ));
    }
    let id = new_id();
    let address = allocate_address(cx, &platform)?;
    let mac = allocate_mac(cx)?;
    let row = VmRow {
        tenant_id: platform.tenant_id.clone(),
        port_name: port_name(&id),
        id,
        name: input.name,
        platform_id: platform.id.clone(),
        platform_name: platform.name.clone(),
        node_id: node.id.clone(),
        vcpus: input.vcpus,
        memory_mib: input.memory_mib,
        disk_mib: input.disk_mib.unwrap_or(0),
        swap_mib: input.swap_mib.unwrap_or(0),
        max_vcpus: input.max_vcpus,
        max_memory_mib: input.max_memory_mib,
        appliance_id: appliance.id.clone(),
        appliance_name: appliance.name.clone(),
        qos_policy_id: qos.as_ref().map(|q| q.id.clone()),
        qos_policy_name: qos.map(|q| q.name),
        power_state: input.power_state,
        backend,
        address,
        mac,
        deleting: false,
        actual_state: "pending".into(),
        restart_required: false,
        guest_last_heartbeat: None,
        guest_agent_version: None,
        conditions: Vec::new(),
        generation: 1,
        observed_generation: 0,
        created_at: cx.now_text(),
    };
    cx.tx
        .prepare_cached(
            "INSERT INTO vms (id, name, platform_id, node_id, vcpus, memory_mib, disk_mib, swap_mib,
                              appliance_id, qos_policy_id, power_state, backend, address, mac,
                              port_name, deleting, actual_state, restart_required, conditions,
                              generation, observed_generation, created_at, max_vcpus,
                              max_memory_mib)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, 0, ?16, 0,
                     '[]', ?17, 0, ?18, ?19, ?20)",
        )?
        .execute(params![
            row.id,
            row.name,
            row.platform_id,
            row.node_id,
            row.vcpus,
            row.memory_mib as i64,
            row.disk_mib as i64,
            row.swap_mib as i64,
            row.appliance_id,
            row.qos_policy_id,
            row.power_state.as_str(),
            row.backend.as_str(),
            row.address,
            row.mac,
            row.port_name,
            row.actual_state,
            row.generation as i64,
            row.created_at,
            row.max_vcpus,
            row.max_memory_mib.map(|m| m as i64)
        ])?;
    cx.touch_node(&node.id)?;
    cx.event(
        Some(&row.tenant_id),
        "VmCreated",
        "vm",
        &row.id,
        format!(
            "VM {}/{} created on node {} ({} backend, {} MiB, address {}, MAC {})",
            row.platform_name,
            row.name,
            node.name,
            row.backend.as_str(),
            row.memory_mib,
            row.address,
            row.mac
        ),
    )?;
    Ok(row)
}

fn immutable(field: &str, same: bool) -> Result<(), StoreError> {
    if same {
        Ok(())
    } else {
        Err(StoreError::invalid(
            field,
            "field cannot change; replace the VM",
        ))
    }
}

pub(crate) fn update(
    cx: &mut TxContext<'_>,
    scope: &Scope,
    key: &str,
    patch: VmPatch,
) -> Result<VmRow, StoreError> {
    let mut vm = get(cx.tx, scope, key)?;
    if let Some(name) = &patch.name {
        immutable("name", *name == vm.name)?;
    }
    if let Some(platform) = &patch.platform {
        immutable(
            "platform",
            *platform == vm.platform_name || *platform == vm.platform_id,
        )?;
    }
    if let Some(node) = &patch.node {
        immutable(
            "node",
            *node == vm.node_id || *node == node_name(cx.registry, &vm.node_id),
        )?;
    }
    if let Some(appliance) = &patch.appliance {
        immutable(
            "appliance",
            *appliance == vm.appliance_name || *appliance == vm.appliance_id,
        )?;
    }
    if let Some(backend) = patch.backend {
        immutable("backend", backend == vm.backend)?;
    }
    if let Some(disk) = patch.disk_mib {
        immutable("disk_mib", disk == vm.disk_mib)?;
    }
    if let Some(swap) = patch.swap_mib {
        immutable("swap_mib", swap == vm.swap_mib)?;
    }
    if vm.deleting {
        return Err(StoreError::conflict(
            None,
            format!(
                "VM {}/{} is being deleted; it cannot change",
                vm.platform_name, vm.name
            ),
        ));
    }
    let mut changes: Vec<String> = Vec::new();
    // Only growth needs room: the current size is already counted on the node.
    let mut more_vcpus = 0;
    let mut more_mib = 0;
    if let Some(vcpus) = patch.vcpus {
        check_vcpus(vcpus)?;
        if vcpus != vm.vcpus {
            more_vcpus = u64::from(vcpus.saturating_sub(vm.vcpus));
            changes.push(format!("vcpus {} -> {vcpus}", vm.vcpus));
            vm.vcpus = vcpus;
        }
    }
    if let Some(memory) = patch.memory_mib {
        if memory != vm.memory_mib {
            let appliance = appliances::get_by_id(cx.tx, &vm.appliance_id)?;
            if memory < appliance.min_memory_mib {
                return Err(StoreError::invalid(
                    "memory_mib",
                    format!(
                        "{memory} MiB is below the minimum of appliance {} ({} MiB)",
                        appliance.name, appliance.min_memory_mib
                    ),
                ));
            }
            if memory > MAX_MEMORY_MIB {
                return Err(StoreError::invalid(
                    "memory_mib",
                    format!("{memory} MiB is above {MAX_MEMORY_MIB} MiB"),
                ));
            }
            more_mib = memory.saturating_sub(vm.memory_mib);
            changes.push(format!("memory_mib {} -> {memory}", vm.memory_mib));
            vm.memory_mib = memory;
        }
    }
    if let Some(max) = patch.max_vcpus {
        if Some(max) != vm.max_vcpus {
            changes.push(format!("max_vcpus -> {max}"));
            vm.max_vcpus = Some(max);
        }
    }
    if let Some(max) = patch.max_memory_mib {
        if Some(max) != vm.max_memory_mib {
            changes.push(format!("max_memory_mib -> {max}"));
            vm.max_memory_mib = Some(max);
        }
    }
    check_maxima(vm.vcpus, vm.memory_mib, vm.max_vcpus, vm.max_memory_mib)?;
    let qos_before = vm.qos_policy_id.clone();
    if let Some(qos) = &patch.qos_policy {
        let (id, name) = match qos {
            Some(key) => {
                let vm_scope = Scope::Tenant(vm.tenant_id.clone());
                let policy = qos_policies::find(cx.tx, &vm_scope, key)?.ok_or_else(|| {
                    StoreError::invalid("qos_policy", format!("no QoS policy named {key:?} exists"))
                })?;
                (Some(policy.id), Some(policy.name))
            }
            None => (None, None),
        };
        if id != vm.qos_policy_id {
            changes.push(format!(
                "qos_policy {} -> {}",
                vm.qos_policy_name.as_deref().unwrap_or("none"),
                name.as_deref().unwrap_or("none")
            ));
            vm.qos_policy_id = id;
            vm.qos_policy_name = name;
        }
    }
    // The tenant's quota first, then the node: the tenant's own limit is
    // what its member can act on.
    let vm_key = format!("{}/{}", vm.platform_name, vm.name);
    let more_kbps = if vm.qos_policy_id != qos_before {
        quotas::bandwidth_growth(
            cx,
            &vm.tenant_id,
            &vm_key,
            vm.qos_policy_name.as_deref(),
            quotas::policy_bandwidth(cx.tx, qos_before.as_deref())?,
            quotas::policy_bandwidth(cx.tx, vm.qos_policy_id.as_deref())?,
        )?
    } else {
        0
    };
    quotas::admit(
        cx,
        &vm.tenant_id,
        &TenantUsage {
            vcpus: more_vcpus,
            memory_mib: more_mib,
            bandwidth_kbps: more_kbps,
            ..TenantUsage::default()
        },
        quotas::Fields::VM,
    )?;
    if more_vcpus > 0 || more_mib > 0 {
        let node = cx.registry.by_id(&vm.node_id).cloned().ok_or_else(|| {
            StoreError::Corrupt(format!("VM {} is on unknown node {}", vm.id, vm.node_id))
        })?;
        // A pending VM's current memory is not in the agent's report yet,
        // and reserved_memory_mib leaves this VM out.
        let pending_self_mib = if vm.actual_state == "pending" {
            vm.memory_mib - more_mib
        } else {
            0
        };
        check_node_fits(
            cx,
            &vm_key,
            &node,
            more_vcpus,
            more_mib,
            pending_self_mib,
            Some(&vm.id),
        )?;
    }
    if let Some(power) = patch.power_state {
        if power != vm.power_state {
            changes.push(format!(
                "power_state {} -> {}",
                vm.power_state.as_str(),
                power.as_str()
            ));
            vm.power_state = power;
        }
    }
    if !changes.is_empty() {
        vm.generation += 1;
        cx.tx
            .prepare_cached(
                "UPDATE vms SET vcpus = ?2, memory_mib = ?3, qos_policy_id = ?4, power_state = ?5,
                                generation = ?6, max_vcpus = ?7, max_memory_mib = ?8 WHERE id = ?1",
            )?
            .execute(params![
                vm.id,
                vm.vcpus,
                vm.memory_mib as i64,
                vm.qos_policy_id,
                vm.power_state.as_str(),
                vm.generation as i64,
                vm.max_vcpus,
                vm.max_memory_mib.map(|m| m as i64)
            ])?;
        cx.touch_node(&vm.node_id)?;
        cx.event(
            Some(&vm.tenant_id),
            "VmUpdated",
            "vm",
            &vm.id,
            format!(
                "VM {}/{}: {}",
                vm.platform_name,
                vm.name,
                changes.join(", ")
            ),
        )?;
    }
    Ok(vm)
}

/// Mark the VM deleting (the node agent tears it down and acks), or remove
/// it at once with `force`.
pub(crate) fn delete(
    cx: &mut TxContext<'_>,
    scope: &Scope,
    key: &str,
    force: bool,
) -> Result<VmRow, StoreError> {
    let mut vm = get(cx.tx, scope, key)?;
    if force {
        remove(cx, &vm, "VmDeleted", "removed at once (force=true); the node agent cleans up what it still runs as an orphan")?;
        vm.deleting = true;
        return Ok(vm);
    }
    if !vm.deleting {
        vm.deleting = true;
        vm.generation += 1;
        cx.tx
            .prepare_cached("UPDATE vms SET deleting = 1, generation = ?2 WHERE id = ?1")?
            .execute(params![vm.id, vm.generation as i64])?;
        cx.touch_node(&vm.node_id)?;
        cx.event(
            Some(&vm.tenant_id),
            "VmDeleting",
            "vm",
            &vm.id,
            format!(
                "VM {}/{} marked for deletion; waiting for node {} to clean up",
                vm.platform_name,
                vm.name,
                node_name(cx.registry, &vm.node_id)
            ),
        )?;
    }
    Ok(vm)
}

/// Drop the row (agent ack or force).
pub(crate) fn remove(
    cx: &mut TxContext<'_>,
    vm: &VmRow,
    reason: &str,
    detail: &str,
) -> Result<(), StoreError> {
    cx.tx
        .prepare_cached("DELETE FROM vms WHERE id = ?1")?
        .execute([&vm.id])?;
    cx.tx
        .prepare_cached("DELETE FROM guest_logs WHERE vm_id = ?1")?
        .execute([&vm.id])?;
    super::vm_usage::forget(cx.tx, &vm.id)?;
    // The point list of an MSCS whose VM is gone describes nothing that runs.
    cx.tx
        .prepare_cached("DELETE FROM platform_points WHERE vm_id = ?1")?
        .execute([&vm.id])?;
    cx.tx
        .prepare_cached(
            "UPDATE program_runs SET status = 'lost', finished_at = ?2
             WHERE vm_id = ?1 AND status IN ('pending', 'running')",
        )?
        .execute(params![vm.id, cx.now_text()])?;
    cx.touch_node(&vm.node_id)?;
    cx.event(
        Some(&vm.tenant_id),
        reason,
        "vm",
        &vm.id,
        format!("VM {}/{} {detail}", vm.platform_name, vm.name),
    )
}

/// What a node agent reported about one VM, checked and cut to size.
pub(crate) struct ReportedStatus<'a> {
    pub actual_state: &'a str,
    pub restart_required: bool,
    pub conditions: &'a [Condition],
    pub observed_generation: u64,
    /// `None`: no guest agent has said hello.
    pub guest_agent_version: Option<&'a str>,
}

/// Store what the node agent reports about one of its VMs.
pub(crate) fn save_status(
    cx: &TxContext<'_>,
    vm: &VmRow,
    status: &ReportedStatus<'_>,
) -> Result<(), StoreError> {
    cx.tx
        .prepare_cached(
            "UPDATE vms SET actual_state = ?2, restart_required = ?3, conditions = ?4,
                            observed_generation = ?5, guest_agent_version = ?6 WHERE id = ?1",
        )?
        .execute(params![
            vm.id,
            status.actual_state,
            status.restart_required as i64,
            to_json(&status.conditions),
            status.observed_generation as i64,
            status.guest_agent_version
        ])?;
    Ok(())
}

pub(crate) fn save_guest_heartbeat(
    cx: &TxContext<'_>,
    vm_id: &str,
    time: &str,
) -> Result<(), StoreError> {
    cx.tx
        .prepare_cached("UPDATE vms SET guest_last_heartbeat = ?2 WHERE id = ?1")?
        .execute(params![vm_id, time])?;
    Ok(())
}
