//! `GET /v1/platforms/{id_or_name}/flows`: the flows of one platform, from
//! the controller's collector, a page at a time.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use measurelab_api::http::{Flow, FlowList};
use time::OffsetDateTime;

use super::error::ApiError;
use super::extract::{key, QueryParams};
use super::results::time_param;
use super::state::AppState;
use crate::access::Principal;
use crate::flows::archive::{reported_active_timeout, Position};
use crate::flows::records::PlatformQuery;
use crate::flows::FlowError;
use crate::store::platforms;

/// Without `since`, the last hour.
const DEFAULT_WINDOW: time::Duration = time::Duration::hours(1);

/// Records per page without `limit`, and the most a page may ask for (as
/// `GET /v1/results`).
const DEFAULT_LIMIT: i64 = 1000;
const MAX_LIMIT: i64 = 100_000;

pub(crate) async fn list(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    query.only(&["since", "until", "format", "limit", "after"])?;
    let format = query.0.get("format").map(String::as_str).unwrap_or("json");
    if !matches!(format, "csv" | "json") {
        return Err(ApiError::InvalidField {
            field: "format".into(),
            reason: format!("{format:?} is not one of csv, json"),
        });
    }
    let until = time_param(&query, "until")?.unwrap_or_else(OffsetDateTime::now_utc);
    let since = time_param(&query, "since")?.unwrap_or(until - DEFAULT_WINDOW);
    if since >= until {
        return Err(ApiError::InvalidField {
            field: "until".into(),
            reason: "must be later than since".into(),
        });
    }
    let limit = query.int("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)? as usize;
    let after = query.0.get("after").map(|c| decode_cursor(c)).transpose()?;
    // The same tenant-scoped lookup as every other platform route: another
    // tenant's platform is not found, so its flows are never read.
    let scope = principal.scope();
    let platform = state
        .store()
        .resources()
        .read(move |conn, registry| {
            let row = platforms::get(conn, &scope, &key)?;
            let nodes = row
                .node_ids
                .iter()
                .filter_map(|id| registry.by_id(id))
                .filter(|node| !node.management_address.is_empty());
            let exporters = nodes
                .clone()
                .map(|node| (node.management_address.clone(), node.name.clone()))
                .collect::<Vec<_>>();
            // What the nodes run now, the operator's setting or the agent's
            // own: it bounds how late their records reach the collector.
            let active_timeout = nodes
                .filter_map(|node| reported_active_timeout(&node.capabilities.flow_export))
                .max();
            Ok((row, exporters, active_timeout))
        })
        .await?;
    let (row, exporters, active_timeout) = platform;
    if !row.flow_monitoring {
        return Err(ApiError::Conflict {
            field: Some("flow_monitoring".into()),
            message: format!(
                "platform {} has flow_monitoring off, so its traffic is neither exported nor kept; \
                 set flow_monitoring = true",
                row.name
            ),
        });
    }
    let archive = state
        .flows()
        .ok_or_else(|| ApiError::Unavailable(FlowError::NoCollector.to_string()))?;
    let page = archive
        .page(
            &PlatformQuery {
                subnet: row.subnet.clone(),
                vlan: row.vlan_tag,
                exporters,
                since,
                until,
                active_timeout,
            },
            limit,
            after.as_ref(),
        )
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let next_cursor = page.next.as_ref().map(encode_cursor);
    Ok(if format == "csv" {
        (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"measurelab-flows.csv\"",
                ),
            ],
            csv(&page.flows, next_cursor.as_deref()),
        )
            .into_response()
    } else {
        Json(FlowList {
            flows: page.flows,
            next_cursor,
        })
        .into_response()
    })
}

/// A flows cursor: the file a page stopped in (its path under the flow
/// root) and the records of it already read.
fn decode_cursor(cursor: &str) -> Result<Position, ApiError> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| {
            let (skip, file) = text.split_once(':')?;
            Position::new(file.to_string(), skip.parse().ok()?)
        })
        .ok_or_else(|| ApiError::InvalidField {
            field: "after".into(),
            reason: "not a cursor (use next_cursor of the previous page)".into(),
        })
}

fn encode_cursor(position: &Position) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
        "{}:{}",
        position.skip(),
        position.file()
    ))
}

/// One header line, then one line per record; no field can hold a comma
/// (times, addresses, numbers, node names are DNS labels). A page with more
/// after it ends in a `# next_cursor: CURSOR` line, as the export's
/// truncation is a `#` line.
fn csv(flows: &[Flow], next_cursor: Option<&str>) -> String {
    let mut out = String::from(
        "first_seen,last_seen,node,protocol,src_addr,src_port,dst_addr,dst_port,vlan,packets,bytes\n",
    );
    for f in flows {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{}\n",
            f.first_seen,
            f.last_seen,
            f.node,
            f.protocol,
            f.src_addr,
            f.src_port,
            f.dst_addr,
            f.dst_port,
            f.vlan,
            f.packets,
            f.bytes
        ));
    }
    if let Some(cursor) = next_cursor {
        out.push_str(&format!("# next_cursor: {cursor}\n"));
    }
    out
}
