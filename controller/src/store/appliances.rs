//! Appliances: VM images whose files the operator placed on the nodes.

use measurelab_api::http::{Appliance, ApplianceCreate};
use rusqlite::{params, Connection, OptionalExtension};

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
pub(crate) fn ensure_builtin(conn: &Connection) -> rusqlite::Result<()> {
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
            "INSERT OR IGNORE INTO appliances (id, name, version, arch, os, kernel, initrd, disk,
                                               min_memory_mib, backends, builtin, created_at)
             VALUES (?1, ?2, ?3, 'x86_64', ?4, ?5, ?6, NULL, ?7, ?8, 1, ?9)",
            params![id, name, version, os, kernel, initrd, min_memory, backends, now],
        )?;
    }
    Ok(())
}

const SELECT: &str = "SELECT id, name, version, arch, os, kernel, initrd, disk, min_memory_mib,
                             backends, builtin FROM appliances";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Appliance, String)> {
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
            min_memory_mib: r.get::<_, i64>(8)? as u64,
            backends: Vec::new(),
            builtin: r.get::<_, i64>(10)? != 0,
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
    if input.backends.iter().any(|b| b == "libvirt") {
        absolute_path("kernel", &input.kernel)?;
        absolute_path("initrd", &input.initrd)?;
    } else {
        validation::short_text("kernel", &input.kernel, 1024)?;
        validation::short_text("initrd", &input.initrd, 1024)?;
    }
    if let Some(disk) = &input.disk {
        absolute_path("disk", disk)?;
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
    };
    cx.tx.execute(
        "INSERT INTO appliances (id, name, version, arch, os, kernel, initrd, disk,
                                 min_memory_mib, backends, builtin, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0, ?11)",
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
            cx.now_text()
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
