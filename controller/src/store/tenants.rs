//! Tenants: the owners of platforms, QoS policies, programs, tasks and
//! results (VMs and deployments belong to their platform's and program's).

use crate::store::sql::{params, Connection, OptionalExtension};
use measurelab_api::http::{Tenant, TenantCreate, TenantPatch};

use super::codec::{from_json, new_id, to_json};
use super::error::StoreError;
use super::resources::TxContext;
use crate::access::{Scope, TenantRef, DEFAULT_TENANT_ID};
use crate::validation;

const MAX_DESCRIPTION: usize = 4096;

/// Tables whose rows a tenant owns directly, with the kind named in messages.
const OWNED: &[(&str, &str)] = &[
    ("platforms", "platform"),
    ("qos_policies", "QoS policy"),
    ("programs", "program"),
    ("tasks", "task"),
];

fn row(r: &crate::store::sql::Row<'_>) -> Result<Tenant, StoreError> {
    let quota: String = r.get(3)?;
    Ok(Tenant {
        id: r.get(0)?,
        name: r.get(1)?,
        description: r.get(2)?,
        quota: from_json("tenants.quota", &quota)?,
        created_at: r.get(4)?,
    })
}

const SELECT: &str = "SELECT id, name, description, quota, created_at FROM tenants";

/// A tenant by id or name.
pub(crate) fn find(conn: &Connection, key: &str) -> Result<Option<Tenant>, StoreError> {
    let mut statement = conn.prepare_cached(&format!(
        "{SELECT} WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC LIMIT 1"
    ))?;
    let mut rows = statement.query([key])?;
    rows.next()?.map(|r| row(&r)).transpose()
}

/// A tenant visible in `scope` (a tenant sees only itself).
pub(crate) fn get(conn: &Connection, scope: &Scope, key: &str) -> Result<Tenant, StoreError> {
    find(conn, key)?
        .filter(|t| scope.sees(&t.id))
        .ok_or_else(|| StoreError::NotFound {
            kind: "tenant",
            id: key.to_string(),
        })
}

pub(crate) fn list(conn: &Connection, scope: &Scope) -> Result<Vec<Tenant>, StoreError> {
    let mut statement = conn.prepare_cached(&format!(
        "{SELECT} WHERE id = ?1 OR ?1 IS NULL ORDER BY name"
    ))?;
    let mut rows = statement.query([scope.tenant_id()])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(row(&r)?);
    }
    Ok(out)
}

/// Names of the tenants with these ids, for messages (ids unknown are left out).
pub(crate) fn names(conn: &Connection, ids: &[String]) -> Result<Vec<String>, StoreError> {
    let mut names = Vec::new();
    for id in ids {
        let name: Option<String> = conn
            .prepare_cached("SELECT name FROM tenants WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?;
        names.extend(name);
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// The conflict an operator's name lookup hits when several tenants use the name.
pub(crate) fn ambiguous(
    conn: &Connection,
    kind: &str,
    key: &str,
    tenant_ids: &[String],
) -> StoreError {
    let names = names(conn, tenant_ids).unwrap_or_default();
    StoreError::conflict(
        None,
        format!(
            "{kind} name {key:?} exists in tenants {}; address it by id or add ?tenant=<tenant>",
            names.join(", ")
        ),
    )
}

/// The tenant a new object goes to: the caller's own, or for the operator
/// the one the body names (default: `default`). A tenant token naming
/// another tenant is refused whether or not that tenant exists.
pub(crate) fn target(
    conn: &Connection,
    caller: Option<&TenantRef>,
    requested: Option<&str>,
) -> Result<TenantRef, StoreError> {
    match (caller, requested) {
        (Some(own), None) => Ok(own.clone()),
        (Some(own), Some(key)) if key == own.id || key == own.name => Ok(own.clone()),
        (Some(own), Some(key)) => Err(StoreError::Forbidden(format!(
            "tenant: this token belongs to tenant {:?} and can only create objects there, not in {key:?}",
            own.name
        ))),
        (None, requested) => {
            let key = requested.unwrap_or(DEFAULT_TENANT_ID);
            let tenant = find(conn, key)?.ok_or_else(|| {
                StoreError::invalid("tenant", format!("no tenant named {key:?} exists"))
            })?;
            Ok(TenantRef {
                id: tenant.id,
                name: tenant.name,
            })
        }
    }
}

fn validate(description: &str) -> Result<(), StoreError> {
    validation::short_text("description", description, MAX_DESCRIPTION)?;
    Ok(())
}

pub(crate) fn create(cx: &mut TxContext<'_>, input: TenantCreate) -> Result<Tenant, StoreError> {
    validation::dns_label("name", &input.name)?;
    let description = input.description.unwrap_or_default();
    validate(&description)?;
    if find(cx.tx, &input.name)?.is_some() {
        return Err(StoreError::conflict(
            Some("name"),
            format!("name: a tenant named {:?} already exists", input.name),
        ));
    }
    let tenant = Tenant {
        id: new_id(),
        name: input.name,
        description,
        quota: input.quota.unwrap_or_default(),
        created_at: cx.now_text(),
    };
    cx.tx
        .prepare_cached(
            "INSERT INTO tenants (id, name, description, quota, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            tenant.id,
            tenant.name,
            tenant.description,
            to_json(&tenant.quota),
            tenant.created_at
        ])?;
    cx.event(
        None,
        "TenantCreated",
        "tenant",
        &tenant.id,
        format!("tenant {} created", tenant.name),
    )?;
    Ok(tenant)
}

pub(crate) fn update(
    cx: &mut TxContext<'_>,
    key: &str,
    patch: TenantPatch,
) -> Result<Tenant, StoreError> {
    let mut tenant = get(cx.tx, &Scope::All, key)?;
    if let Some(description) = patch.description {
        validate(&description)?;
        tenant.description = description;
    }
    if let Some(quota) = patch.quota {
        tenant.quota = quota;
    }
    cx.tx
        .prepare_cached("UPDATE tenants SET description = ?2, quota = ?3 WHERE id = ?1")?
        .execute(params![
            tenant.id,
            tenant.description,
            to_json(&tenant.quota)
        ])?;
    Ok(tenant)
}

/// Delete an empty tenant, its tokens and its result history. Refused
/// while it owns platforms, QoS policies, programs or tasks.
pub(crate) fn delete(cx: &mut TxContext<'_>, key: &str) -> Result<Tenant, StoreError> {
    let tenant = get(cx.tx, &Scope::All, key)?;
    if tenant.id == DEFAULT_TENANT_ID {
        return Err(StoreError::conflict(
            None,
            "tenant default is built in and cannot be deleted",
        ));
    }
    let mut owned = Vec::new();
    for (table, kind) in OWNED {
        let count: i64 = cx.tx.query_row(
            &format!("SELECT COUNT(*) FROM {table} WHERE tenant_id = ?1"),
            [&tenant.id],
            |r| r.get(0),
        )?;
        if count > 0 {
            owned.push(format!("{count} {kind}(s)"));
        }
    }
    if !owned.is_empty() {
        return Err(StoreError::conflict(
            None,
            format!(
                "tenant {} still owns {}; delete them first",
                tenant.name,
                owned.join(", ")
            ),
        ));
    }
    cx.effects.tokens_changed = true;
    cx.tx
        .execute("DELETE FROM api_tokens WHERE tenant_id = ?1", [&tenant.id])?;
    cx.tx
        .execute("DELETE FROM results WHERE tenant_id = ?1", [&tenant.id])?;
    cx.tx
        .execute("DELETE FROM events WHERE tenant_id = ?1", [&tenant.id])?;
    cx.tx
        .execute("DELETE FROM tenants WHERE id = ?1", [&tenant.id])?;
    cx.event(
        None,
        "TenantDeleted",
        "tenant",
        &tenant.id,
        format!(
            "tenant {} deleted with its tokens and result history",
            tenant.name
        ),
    )?;
    Ok(tenant)
}

/// The one object an id-or-name lookup means: an id match wins; several
/// name matches (only possible across tenants, for the operator) are a
/// conflict naming the tenants.
pub(crate) fn pick_one<T>(
    conn: &Connection,
    kind: &str,
    key: &str,
    mut matches: Vec<T>,
    id_and_tenant: impl Fn(&T) -> (&str, &str),
) -> Result<Option<T>, StoreError> {
    if let Some(position) = matches.iter().position(|m| id_and_tenant(m).0 == key) {
        return Ok(Some(matches.swap_remove(position)));
    }
    if matches.len() > 1 {
        let tenants: Vec<String> = matches
            .iter()
            .map(|m| id_and_tenant(m).1.to_string())
            .collect();
        return Err(ambiguous(conn, kind, key, &tenants));
    }
    Ok(matches.pop())
}
