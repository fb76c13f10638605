//! The point list each platform's MSCS last reported: written from a node's
//! status report (`GuestReport.points`), read by
//! `GET /v1/platforms/{id}/points` and the admin page.
//!
//! The list is guest content relayed by a node agent, so it is checked field
//! by field before it replaces the stored one; a list that fails is dropped
//! whole (never half stored) and does not fail the rest of the report.

use crate::store::sql::{Connection, OptionalExtension};
use measurelab_api::guest::{check_points, GuestPoint, PointListError};
use measurelab_api::http::{PlatformPoint, PlatformPoints};
use measurelab_api::node_v1::MscsPointList;
use time::OffsetDateTime;

use super::codec::{from_json, rfc3339, to_json};
use super::error::StoreError;
use super::vms::VmRow;
use super::TxContext;

/// The proto list as the guest agent checked it, so both ends apply one rule.
fn guest_points(list: &MscsPointList) -> Vec<GuestPoint> {
    list.points
        .iter()
        .map(|p| GuestPoint {
            name: p.name.clone(),
            control_addr: p.control_address.clone(),
            data_addr: (!p.data_address.is_empty()).then(|| p.data_address.clone()),
            origin: p.origin.clone(),
            state: p.state.clone(),
            last_heartbeat_unix_ms: u64::try_from(p.last_seen_unix_ms).ok().filter(|ms| *ms > 0),
            protocol_version: (p.protocol_version > 0).then_some(p.protocol_version),
        })
        .collect()
}

/// Checks `list`; a negative time is refused here because [`GuestPoint`] has
/// no room for it.
pub(crate) fn check(list: &MscsPointList) -> Result<Vec<PlatformPoint>, PointListError> {
    if let Some(i) = list.points.iter().position(|p| p.last_seen_unix_ms < 0) {
        return Err(PointListError {
            field: format!("points[{i}].last_seen_unix_ms"),
            reason: "must not be negative".into(),
        });
    }
    let points = guest_points(list);
    check_points(&points)?;
    Ok(points
        .into_iter()
        .map(|p| PlatformPoint {
            name: p.name,
            control_address: p.control_addr,
            data_address: p.data_addr,
            state: p.state,
            last_seen: p.last_heartbeat_unix_ms.and_then(|ms| {
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                    .ok()
                    .map(rfc3339)
            }),
            protocol_version: p.protocol_version,
            origin: p.origin,
        })
        .collect())
}

/// Replaces the platform's list with the checked `points` reported by `vm`'s MSCS.
pub(crate) fn save(
    cx: &mut TxContext<'_>,
    vm: &VmRow,
    points: &[PlatformPoint],
) -> Result<(), StoreError> {
    cx.tx
        .prepare_cached(
            "INSERT INTO platform_points (platform_id, vm_id, vm_name, reported_at, points)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (platform_id) DO UPDATE SET vm_id = ?2, vm_name = ?3,
               reported_at = ?4, points = ?5",
        )?
        .execute(crate::store::sql::params![
            vm.platform_id,
            vm.id,
            vm.name,
            rfc3339(cx.now),
            to_json(&points)
        ])?;
    Ok(())
}

/// The platform's latest list; an empty one with no time when none was reported.
/// The caller resolved `platform_id` in its tenant scope.
pub(crate) fn get(conn: &Connection, platform_id: &str) -> Result<PlatformPoints, StoreError> {
    let row: Option<(String, String, String)> = conn
        .prepare_cached(
            "SELECT vm_name, reported_at, points FROM platform_points WHERE platform_id = ?1",
        )?
        .query_row([platform_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    Ok(match row {
        Some((vm_name, reported_at, points)) => PlatformPoints {
            platform: platform_id.to_string(),
            reported_at: Some(reported_at),
            reported_by: Some(vm_name),
            points: from_json("platform_points.points", &points)?,
        },
        None => PlatformPoints {
            platform: platform_id.to_string(),
            reported_at: None,
            reported_by: None,
            points: Vec::new(),
        },
    })
}
