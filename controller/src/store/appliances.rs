//! Appliances: VM images whose files the operator placed on the nodes.

use crate::store::sql::{params, Connection, OptionalExtension};
use measurelab_api::http::{Appliance, ApplianceCreate};

use super::codec::{from_json, new_id, rfc3339, to_json};
use super::error::StoreError;
use super::resources::TxContext;
use crate::validation;

/// The busybox appliance built by `scripts/` and baked with the guest agent.
pub(crate) const TINY: &str = "measurelab-tiny";
/// Pseudo-appliance for the OS-level backend: no kernel, the node's own.
pub(crate) const NAMESPACE: &str = "namespace";
pub(crate) const BACKENDS: &[&str] = &["namespace", "libvirt"];
const ARCHES: &[&str] = &["x86_64", "i686"];

/// Insert the built-in appliances if missing (on every start, so an upgraded
/// controller adds new ones; existing rows are left as they are).
pub(crate) fn ensure_builtin(conn: &Connection) -> crate::store::sql::Result<()> {
    let now = rfc3339(time::OffsetDateTime::now_utc());
    let builtins = [
        (
            "builtin-measurelab-tiny",
            TINY,
            "1",
            "linux-busybox",
            "/var/lib/measurelab/appliances/measurelab-tiny/vmlinuz",
            "/var/lib/measurelab/appliances/measurelab-tiny/initrd.img",
            64_i64,
            r#"["libvirt","namespace"]"#,
        ),
        (
            "builtin-namespace",
            NAMESPACE,
            "1",
            "host-linux",
            "",
            "",
            16_i64,
            r#"["namespace"]"#,
        ),
    ];
    for (id, name, version, os, kernel, initrd, min_memory, backends) in builtins {
        conn.execute(
            "INSERT INTO appliances (id, name, version, arch, os, kernel, initrd, disk,
                                     min_memory_mib, backends, builtin, created_at)
             VALUES (?1, ?2, ?3, 'x86_64', ?4, ?5, ?6, NULL, ?7, ?8, 1, ?9)
             ON CONFLICT DO NOTHING",
            params![id, name, version, os, kernel, initrd, min_memory, backends, now],
        )?;
    }
    Ok(())
}

const SELECT: &str = "SELECT id, name, version, arch, os, kernel, initrd, disk, min_memory_mib,
                             backends, builtin, kernel_sha256, initrd_sha256, disk_sha256
                      FROM appliances";

fn row(r: &crate::store::sql::Row<'_>) -> crate::store::sql::Result<(Appliance, String)> {
    Ok((
        Appliance {
            id: r.get(0)?,
            name: r.get(1)?,
            version: r.get(2)?,
            arch: r.get(3)?,
            os: r.get(4)?,
            kernel: r.get(5)?,
            initrd: r.get(6)?,
            disk: r.get(7)?,
            min_memory_mib: r.get::<i64>(8)? as u64,
            backends: Vec::new(),
            builtin: r.get::<i64>(10)? != 0,
            kernel_sha256: r.get(11)?,
            initrd_sha256: r.get(12)?,
            disk_sha256: r.get(13)?,
        },
        r.get(9)?,
    ))
}

fn finish((mut appliance, backends): (Appliance, String)) -> Result<Appliance, StoreError> {
    appliance.backends = from_json("appliances.backends", &backends)?;
    Ok(appliance)
}

pub(crate) fn find(conn: &Connection, key: &str) -> Result<Option<Appliance>, StoreError> {
    conn.prepare_cached(&format!(
        "{SELECT} WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC LIMIT 1"
    ))?
    .query_row([key], row)
    .optional()?
    .map(finish)
    .transpose()
}

pub(crate) fn get_by_id(conn: &Connection, id: &str) -> Result<Appliance, StoreError> {
    find(conn, id)?.ok_or_else(|| StoreError::Corrupt(format!("appliance {id} is missing")))
}

pub(crate) fn list(conn: &Connection) -> Result<Vec<Appliance>, StoreError> {
    conn.prepare_cached(&format!("{SELECT} ORDER BY name"))?
        .query_map([], row)?
        .map(|r| r.map_err(StoreError::from).and_then(finish))
        .collect()
}

fn absolute_path(field: &str, value: &str) -> Result<(), StoreError> {
    validation::short_text(field, value, 1024)?;
    if !value.starts_with('/') {
        return Err(StoreError::invalid(
            field,
            format!("{value:?} is not an absolute path on the nodes"),
        ));
    }
    Ok(())
}

pub(crate) fn create(
    cx: &mut TxContext<'_>,
    input: ApplianceCreate,
) -> Result<Appliance, StoreError> {
    validation::dns_label("name", &input.name)?;
    validation::short_text("version", &input.version, 64)?;
    validation::short_text("os", &input.os, 128)?;
    if !ARCHES.contains(&input.arch.as_str()) {
        return Err(StoreError::invalid(
            "arch",
            format!("{:?} is not one of {}", input.arch, ARCHES.join(", ")),
        ));
    }
    if input.backends.is_empty() {
        return Err(StoreError::invalid(
            "backends",
            format!("must list at least one of {}", BACKENDS.join(", ")),
        ));
    }
    for (i, backend) in input.backends.iter().enumerate() {
        if !BACKENDS.contains(&backend.as_str()) {
            return Err(StoreError::invalid(
                format!("backends[{i}]"),
                format!("{backend:?} is not one of {}", BACKENDS.join(", ")),
            ));
        }
    }
    let boots = input.backends.iter().any(|b| b == "libvirt");
    for (field, path, digest) in [
        ("kernel", &input.kernel, &input.kernel_sha256),
        ("initrd", &input.initrd, &input.initrd_sha256),
    ] {
        match (digest, boots) {
            (Some(_), _) if !path.is_empty() => {
                return Err(StoreError::invalid(
                    field,
                    format!("give either {field} (a path on the nodes) or {field}_sha256 (an uploaded file), not both"),
                ))
            }
            (Some(_), _) => {}
            (None, true) => absolute_path(field, path)?,
            (None, false) => validation::short_text(field, path, 1024)?,
        }
    }
    match (&input.disk, &input.disk_sha256) {
        (Some(_), Some(_)) => return Err(StoreError::invalid(
            "disk",
            "give either disk (a path on the nodes) or disk_sha256 (an uploaded file), not both",
        )),
        (Some(disk), None) => absolute_path("disk", disk)?,
        _ => {}
    }
    if !(16..=1024 * 1024).contains(&input.min_memory_mib) {
        return Err(StoreError::invalid(
            "min_memory_mib",
            format!("{} is out of range 16..=1048576", input.min_memory_mib),
        ));
    }
    if find(cx.tx, &input.name)?.is_some() {
        return Err(StoreError::conflict(
            Some("name"),
            format!("name: an appliance named {:?} already exists", input.name),
        ));
    }
    let appliance = Appliance {
        id: new_id(),
        name: input.name,
        version: input.version,
        arch: input.arch,
        os: input.os,
        kernel: input.kernel,
        initrd: input.initrd,
        disk: input.disk,
        min_memory_mib: input.min_memory_mib,
        backends: input.backends,
        builtin: false,
        kernel_sha256: input.kernel_sha256,
        initrd_sha256: input.initrd_sha256,
        disk_sha256: input.disk_sha256,
    };
    cx.tx.execute(
        "INSERT INTO appliances (id, name, version, arch, os, kernel, initrd, disk,
                                 min_memory_mib, backends, builtin, created_at,
                                 kernel_sha256, initrd_sha256, disk_sha256)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0, ?11, ?12, ?13, ?14)",
        params![
            appliance.id,
            appliance.name,
            appliance.version,
            appliance.arch,
            appliance.os,
            appliance.kernel,
            appliance.initrd,
            appliance.disk,
            appliance.min_memory_mib as i64,
            to_json(&appliance.backends),
            cx.now_text(),
            appliance.kernel_sha256,
            appliance.initrd_sha256,
            appliance.disk_sha256,
        ],
    )?;
    cx.event(
        None,
        "ApplianceCreated",
        "appliance",
        &appliance.id,
        format!(
            "appliance {} {} registered",
            appliance.name, appliance.version
        ),
    )?;
    Ok(appliance)
}

/// Removes an appliance no VM uses. Its stored files stay: another
/// appliance may name the same content, and nodes keep their verified copies.
pub(crate) fn delete(cx: &mut TxContext<'_>, key: &str) -> Result<Appliance, StoreError> {
    let appliance = find(cx.tx, key)?.ok_or_else(|| StoreError::NotFound {
        kind: "appliance",
        id: key.to_string(),
    })?;
    if appliance.builtin {
        return Err(StoreError::conflict(
            None,
            format!(
                "appliance {} is built in and cannot be deleted",
                appliance.name
            ),
        ));
    }
    let users: Vec<String> = cx
        .tx
        .prepare_cached("SELECT name FROM vms WHERE appliance_id = ?1 ORDER BY name LIMIT 5")?
        .query_map([&appliance.id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    if !users.is_empty() {
        return Err(StoreError::conflict(
            None,
            format!(
                "appliance {} is used by VMs ({}); delete them first",
                appliance.name,
                users.join(", ")
            ),
        ));
    }
    cx.tx
        .execute("DELETE FROM appliances WHERE id = ?1", [&appliance.id])?;
    cx.event(
        None,
        "ApplianceDeleted",
        "appliance",
        &appliance.id,
        format!("appliance {} {} deleted", appliance.name, appliance.version),
    )?;
    Ok(appliance)
}

/// Whether a VM of `node_id` boots an appliance with the stored file
/// `sha256` (what a node may fetch).
pub(crate) fn node_uses_file(
    conn: &Connection,
    node_id: &str,
    sha256: &str,
) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM vms v JOIN appliances a ON a.id = v.appliance_id
             WHERE v.node_id = ?1
               AND ?2 IN (a.kernel_sha256, a.initrd_sha256, a.disk_sha256)
             LIMIT 1",
        )?
        .query_row(params![node_id, sha256], |_| Ok(()))
        .optional()?
        .is_some())
}
