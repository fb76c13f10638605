//! QoS policies: per-VM bandwidth limits.

use crate::store::sql::{params, Connection};
use measurelab_api::http::{QosPolicy, QosPolicyCreate, QosPolicyPatch, TenantUsage};

use super::codec::new_id;
use super::error::StoreError;
use super::resources::TxContext;
use super::{quotas, tenants};
use crate::access::{Scope, TenantRef};
use crate::placement::quota;
use crate::validation;

/// 100 Gbit/s: anything above is a unit mistake (bit/s given as kbit/s).
const MAX_KBPS: u64 = 100_000_000;
const MAX_BURST_KBYTES: u64 = 16 * 1024 * 1024;

const SELECT: &str = "SELECT id, name, ingress_max_kbps, ingress_min_kbps, ingress_burst_kbytes,
                             egress_max_kbps, egress_min_kbps, egress_burst_kbytes, created_at,
                             tenant_id
                      FROM qos_policies";

fn row(r: &crate::store::sql::Row<'_>) -> crate::store::sql::Result<QosPolicy> {
    let opt = |i: usize| -> crate::store::sql::Result<Option<u64>> {
        Ok(r.get::<Option<i64>>(i)?.map(|v| v as u64))
    };
    Ok(QosPolicy {
        id: r.get(0)?,
        name: r.get(1)?,
        ingress_max_kbps: r.get::<i64>(2)? as u64,
        ingress_min_kbps: opt(3)?,
        ingress_burst_kbytes: opt(4)?,
        egress_max_kbps: opt(5)?,
        egress_min_kbps: opt(6)?,
        egress_burst_kbytes: opt(7)?,
        created_at: r.get(8)?,
        tenant_id: r.get(9)?,
    })
}

pub(crate) fn find(
    conn: &Connection,
    scope: &Scope,
    key: &str,
) -> Result<Option<QosPolicy>, StoreError> {
    let matches = conn
        .prepare_cached(&format!(
            "{SELECT} WHERE (id = ?1 OR name = ?1) AND (tenant_id = ?2 OR ?2 IS NULL)"
        ))?
        .query_map(params![key, scope.tenant_id()], row)?
        .collect::<Result<Vec<_>, _>>()?;
    tenants::pick_one(conn, "QoS policy", key, matches, |q| {
        (q.id.as_str(), q.tenant_id.as_str())
    })
}

pub(crate) fn get(conn: &Connection, scope: &Scope, key: &str) -> Result<QosPolicy, StoreError> {
    find(conn, scope, key)?.ok_or_else(|| StoreError::NotFound {
        kind: "qos_policy",
        id: key.to_string(),
    })
}

pub(crate) fn list(conn: &Connection, scope: &Scope) -> Result<Vec<QosPolicy>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "{SELECT} WHERE tenant_id = ?1 OR ?1 IS NULL ORDER BY name, tenant_id"
        ))?
        .query_map([scope.tenant_id()], row)?
        .collect::<Result<Vec<_>, _>>()?)
}

/// Rates positive and bounded, min <= max per direction.
fn validate(policy: &QosPolicy) -> Result<(), StoreError> {
    let rate = |field: &str, value: Option<u64>| -> Result<(), StoreError> {
        match value {
            Some(0) => Err(StoreError::invalid(
                field,
                "must be greater than 0 (leave it out for no limit)",
            )),
            Some(v) if v > MAX_KBPS => Err(StoreError::invalid(
                field,
                format!("{v} kbit/s is above {MAX_KBPS} kbit/s (100 Gbit/s); rates are in kbit/s"),
            )),
            _ => Ok(()),
        }
    };
    rate("ingress_max_kbps", Some(policy.ingress_max_kbps))?;
    rate("ingress_min_kbps", policy.ingress_min_kbps)?;
    rate("egress_max_kbps", policy.egress_max_kbps)?;
    rate("egress_min_kbps", policy.egress_min_kbps)?;
    for (field, burst) in [
        ("ingress_burst_kbytes", policy.ingress_burst_kbytes),
        ("egress_burst_kbytes", policy.egress_burst_kbytes),
    ] {
        if let Some(b) = burst {
            if b == 0 || b > MAX_BURST_KBYTES {
                return Err(StoreError::invalid(
                    field,
                    format!("{b} is out of range 1..={MAX_BURST_KBYTES} kbytes"),
                ));
            }
        }
    }
    if let Some(min) = policy.ingress_min_kbps {
        if min > policy.ingress_max_kbps {
            return Err(StoreError::invalid(
                "ingress_min_kbps",
                format!(
                    "{min} kbit/s is greater than ingress_max_kbps ({} kbit/s)",
                    policy.ingress_max_kbps
                ),
            ));
        }
    }
    match (policy.egress_min_kbps, policy.egress_max_kbps) {
        (Some(min), Some(max)) if min > max => Err(StoreError::invalid(
            "egress_min_kbps",
            format!("{min} kbit/s is greater than egress_max_kbps ({max} kbit/s)"),
        )),
        (Some(_), None) => Err(StoreError::invalid(
            "egress_min_kbps",
            "needs egress_max_kbps: a guaranteed rate needs a ceiling",
        )),
        _ => Ok(()),
    }
}

fn write(cx: &TxContext<'_>, p: &QosPolicy, insert: bool) -> Result<(), StoreError> {
    let sql = if insert {
        "INSERT INTO qos_policies (id, name, ingress_max_kbps, ingress_min_kbps, ingress_burst_kbytes,
                                   egress_max_kbps, egress_min_kbps, egress_burst_kbytes, created_at,
                                   tenant_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
    } else {
        "UPDATE qos_policies SET name = ?2, ingress_max_kbps = ?3, ingress_min_kbps = ?4,
                ingress_burst_kbytes = ?5, egress_max_kbps = ?6, egress_min_kbps = ?7,
                egress_burst_kbytes = ?8, created_at = ?9
         WHERE id = ?1 AND tenant_id = ?10"
    };
    let opt = |v: Option<u64>| v.map(|v| v as i64);
    cx.tx.prepare_cached(sql)?.execute(params![
        p.id,
        p.name,
        p.ingress_max_kbps as i64,
        opt(p.ingress_min_kbps),
        opt(p.ingress_burst_kbytes),
        opt(p.egress_max_kbps),
        opt(p.egress_min_kbps),
        opt(p.egress_burst_kbytes),
        p.created_at,
        p.tenant_id
    ])?;
    Ok(())
}

pub(crate) fn create(
    cx: &mut TxContext<'_>,
    tenant: &TenantRef,
    input: QosPolicyCreate,
) -> Result<QosPolicy, StoreError> {
    validation::dns_label("name", &input.name)?;
    let policy = QosPolicy {
        id: new_id(),
        name: input.name,
        ingress_max_kbps: input.ingress_max_kbps,
        ingress_min_kbps: input.ingress_min_kbps,
        ingress_burst_kbytes: input.ingress_burst_kbytes,
        egress_max_kbps: input.egress_max_kbps,
        egress_min_kbps: input.egress_min_kbps,
        egress_burst_kbytes: input.egress_burst_kbytes,
        created_at: cx.now_text(),
        tenant_id: tenant.id.clone(),
    };
    validate(&policy)?;
    if find(cx.tx, &Scope::Tenant(tenant.id.clone()), &policy.name)?.is_some() {
        return Err(StoreError::conflict(
            Some("name"),
            format!(
                "name: tenant {} already has a QoS policy named {:?}",
                tenant.name, policy.name
            ),
        ));
    }
    write(cx, &policy, true)?;
    cx.event(
        Some(&policy.tenant_id),
        "QosPolicyCreated",
        "qos_policy",
        &policy.id,
        format!("QoS policy {} created", policy.name),
    )?;
    Ok(policy)
}

/// Nodes hosting VMs that use the policy: their desired state changes with it.
fn nodes_using(cx: &TxContext<'_>, policy_id: &str) -> Result<Vec<(String, String)>, StoreError> {
    Ok(cx
        .tx
        .prepare_cached("SELECT name, node_id FROM vms WHERE qos_policy_id = ?1 ORDER BY name")?
        .query_map([policy_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<Vec<_>, _>>()?)
}

/// Raised ceilings of a policy in use raise every using VM's bandwidth: the
/// growth times the VMs (not being deleted) must fit the tenant's quota.
fn admit_rates(
    cx: &TxContext<'_>,
    before: &QosPolicy,
    after: &QosPolicy,
) -> Result<(), StoreError> {
    let users: i64 = cx.tx.query_row(
        "SELECT COUNT(*) FROM vms WHERE qos_policy_id = ?1 AND deleting = 0",
        [&after.id],
        |r| r.get(0),
    )?;
    if users == 0 {
        return Ok(());
    }
    let field = if after.ingress_max_kbps > before.ingress_max_kbps {
        "ingress_max_kbps"
    } else {
        "egress_max_kbps"
    };
    let fields = quotas::Fields { bandwidth: field };
    let per_vm = |p: &QosPolicy| quota::vm_bandwidth_kbps(p.ingress_max_kbps, p.egress_max_kbps);
    let Some(after_kbps) = per_vm(after) else {
        return quotas::require_bounded_bandwidth(cx, &after.tenant_id, fields, || {
            format!(
                "QoS policy {:?} is used by {users} VM(s) and would have no egress_max_kbps",
                after.name
            )
        });
    };
    let growth = after_kbps.saturating_sub(per_vm(before).unwrap_or(0));
    quotas::admit(
        cx,
        &after.tenant_id,
        &TenantUsage {
            bandwidth_kbps: growth.saturating_mul(users as u64),
            ..TenantUsage::default()
        },
        fields,
    )
}

pub(crate) fn update(
    cx: &mut TxContext<'_>,
    scope: &Scope,
    key: &str,
    patch: QosPolicyPatch,
) -> Result<QosPolicy, StoreError> {
    let before = get(cx.tx, scope, key)?;
    let mut policy = before.clone();
    if let Some(v) = patch.ingress_max_kbps {
        policy.ingress_max_kbps = v;
    }
    if let Some(v) = patch.ingress_min_kbps {
        policy.ingress_min_kbps = v;
    }
    if let Some(v) = patch.ingress_burst_kbytes {
        policy.ingress_burst_kbytes = v;
    }
    if let Some(v) = patch.egress_max_kbps {
        policy.egress_max_kbps = v;
    }
    if let Some(v) = patch.egress_min_kbps {
        policy.egress_min_kbps = v;
    }
    if let Some(v) = patch.egress_burst_kbytes {
        policy.egress_burst_kbytes = v;
    }
    validate(&policy)?;
    if policy != before {
        admit_rates(cx, &before, &policy)?;
        write(cx, &policy, false)?;
        // Every VM using the policy gets a new spec generation.
        cx.tx
            .prepare_cached("UPDATE vms SET generation = generation + 1 WHERE qos_policy_id = ?1")?
            .execute([&policy.id])?;
        for (_, node) in nodes_using(cx, &policy.id)? {
            cx.touch_node(&node)?;
        }
        cx.event(
            Some(&policy.tenant_id),
            "QosPolicyUpdated",
            "qos_policy",
            &policy.id,
            format!("QoS policy {} updated", policy.name),
        )?;
    }
    Ok(policy)
}

pub(crate) fn delete(
    cx: &mut TxContext<'_>,
    scope: &Scope,
    key: &str,
) -> Result<QosPolicy, StoreError> {
    let policy = get(cx.tx, scope, key)?;
    let users = nodes_using(cx, &policy.id)?;
    if !users.is_empty() {
        let names: Vec<String> = users.into_iter().map(|(name, _)| name).collect();
        return Err(StoreError::conflict(
            None,
            format!(
                "QoS policy {} is used by VM(s) {}; change or delete them first",
                policy.name,
                names.join(", ")
            ),
        ));
    }
    cx.tx
        .prepare_cached("DELETE FROM qos_policies WHERE id = ?1")?
        .execute([&policy.id])?;
    cx.event(
        Some(&policy.tenant_id),
        "QosPolicyDeleted",
        "qos_policy",
        &policy.id,
        format!("QoS policy {} deleted", policy.name),
    )?;
    Ok(policy)
}
