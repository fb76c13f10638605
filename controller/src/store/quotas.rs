//! Tenant usage summed from the tables, and the quota check every growing
//! write runs inside its own transaction (so two racing creates cannot both
//! slip under a limit: `BEGIN IMMEDIATE` serializes them).

use crate::store::sql::{Connection, OptionalExtension};
use measurelab_api::http::{Quota, TenantUsage};

use super::codec::from_json;
use super::error::StoreError;
use super::resources::TxContext;
use crate::placement::quota::{self, Limit, QuotaError};

/// What `tenant_id` uses now. VMs being deleted no longer count, as on
/// nodes: replacing a VM does not wait for its teardown.
pub(crate) fn usage(conn: &Connection, tenant_id: &str) -> Result<TenantUsage, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT
           (SELECT COUNT(*) FROM platforms WHERE tenant_id = ?1),
           (SELECT COUNT(*) FROM vms v JOIN platforms p ON p.id = v.platform_id
              WHERE p.tenant_id = ?1 AND v.deleting = 0),
           (SELECT COALESCE(SUM(v.vcpus), 0) FROM vms v JOIN platforms p ON p.id = v.platform_id
              WHERE p.tenant_id = ?1 AND v.deleting = 0),
           (SELECT COALESCE(SUM(v.memory_mib), 0) FROM vms v JOIN platforms p ON p.id = v.platform_id
              WHERE p.tenant_id = ?1 AND v.deleting = 0),
           (SELECT COALESCE(SUM(q.ingress_max_kbps + COALESCE(q.egress_max_kbps, 0)), 0)
              FROM vms v JOIN platforms p ON p.id = v.platform_id
              JOIN qos_policies q ON q.id = v.qos_policy_id
              WHERE p.tenant_id = ?1 AND v.deleting = 0),
           (SELECT COALESCE(SUM(size_bytes), 0) FROM programs WHERE tenant_id = ?1)",
    )?;
    let figures: [i64; 6] = statement.query_row([tenant_id], |r| {
        Ok([
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
        ])
    })?;
    let [platforms, vms, vcpus, memory_mib, bandwidth_kbps, program_bytes] =
        figures.map(|figure| figure.max(0) as u64);
    Ok(TenantUsage {
        platforms,
        vms,
        vcpus,
        memory_mib,
        bandwidth_kbps,
        program_bytes,
    })
}

/// The tenant's name and quota.
fn quota_of(conn: &Connection, tenant_id: &str) -> Result<(String, Quota), StoreError> {
    let found: Option<(String, String)> = conn
        .query_row(
            "SELECT name, quota FROM tenants WHERE id = ?1",
            [tenant_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (name, quota) =
        found.ok_or_else(|| StoreError::Corrupt(format!("unknown tenant {tenant_id}")))?;
    Ok((name, from_json("tenants.quota", &quota)?))
}

/// Which request field a refused limit points at. Counts of objects point at
/// none: no single value is wrong.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fields {
    pub bandwidth: &'static str,
}

impl Fields {
    /// VM create and patch: the bandwidth comes with the QoS policy.
    pub const VM: Fields = Fields {
        bandwidth: "qos_policy",
    };

    fn of(self, limit: Limit) -> Option<String> {
        match limit {
            Limit::Platforms | Limit::Vms => None,
            Limit::Vcpus => Some("vcpus".into()),
            Limit::MemoryMib => Some("memory_mib".into()),
            Limit::BandwidthKbps => Some(self.bandwidth.into()),
            Limit::ProgramBytes => Some("content_base64".into()),
        }
    }
}

fn refusal(error: QuotaError, fields: Fields) -> StoreError {
    StoreError::QuotaExceeded {
        field: fields.of(error.limit()),
        message: error.to_string(),
    }
}

/// Refuse `delta` unless it fits `tenant_id`'s quota on top of its use.
pub(crate) fn admit(
    cx: &TxContext<'_>,
    tenant_id: &str,
    delta: &TenantUsage,
    fields: Fields,
) -> Result<(), StoreError> {
    let (name, quota) = quota_of(cx.tx, tenant_id)?;
    if quota == Quota::default() {
        return Ok(());
    }
    let in_use = usage(cx.tx, tenant_id)?;
    quota::admit(&name, &quota, &in_use, delta).map_err(|e| refusal(e, fields))
}

/// Refuse a VM whose bandwidth has no ceiling (`what` says which) while
/// `tenant_id`'s bandwidth is limited.
pub(crate) fn require_bounded_bandwidth(
    cx: &TxContext<'_>,
    tenant_id: &str,
    fields: Fields,
    what: impl FnOnce() -> String,
) -> Result<(), StoreError> {
    let (name, quota) = quota_of(cx.tx, tenant_id)?;
    quota::require_bounded_bandwidth(&name, &quota, what).map_err(|e| refusal(e, fields))
}

/// A VM's bandwidth under QoS policy `policy_id`: `None` when it has no
/// ceiling (no policy, or a policy without an egress ceiling).
pub(crate) fn policy_bandwidth(
    conn: &Connection,
    policy_id: Option<&str>,
) -> Result<Option<u64>, StoreError> {
    let Some(policy_id) = policy_id else {
        return Ok(None);
    };
    let rates: Option<(i64, Option<i64>)> = conn
        .query_row(
            "SELECT ingress_max_kbps, egress_max_kbps FROM qos_policies WHERE id = ?1",
            [policy_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(rates.and_then(|(ingress, egress)| {
        quota::vm_bandwidth_kbps(ingress.max(0) as u64, egress.map(|e| e.max(0) as u64))
    }))
}

/// Admit a VM's bandwidth `bandwidth` (from [`policy_bandwidth`]) in place of
/// `before`: refused when unbounded under a bandwidth quota, otherwise the
/// growth joins `delta` for [`admit`].
pub(crate) fn bandwidth_growth(
    cx: &TxContext<'_>,
    tenant_id: &str,
    vm: &str,
    policy_name: Option<&str>,
    before: Option<u64>,
    bandwidth: Option<u64>,
) -> Result<u64, StoreError> {
    match bandwidth {
        Some(kbps) => Ok(kbps.saturating_sub(before.unwrap_or(0))),
        None => {
            require_bounded_bandwidth(cx, tenant_id, Fields::VM, || match policy_name {
                Some(policy) => {
                    format!("VM {vm:?} uses QoS policy {policy:?}, which has no egress_max_kbps")
                }
                None => format!("VM {vm:?} has no qos_policy"),
            })?;
            Ok(0)
        }
    }
}
