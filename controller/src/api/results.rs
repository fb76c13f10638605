//! `/v1/results`: stored result documents, history by time range, export.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::Response;
use axum::Json;
use measurelab_api::http::{ResultList, ResultRecord};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::auth::ensure_can_change;
use super::error::ApiError;
use super::extract::{decode_json, QueryParams};
use super::idempotency::{answer, stored, Idempotent};
use super::state::AppState;
use crate::access::{Principal, Scope};
use crate::store::tasks::{self, ResultQuery, MAX_DOCUMENT_BYTES};
use crate::store::StoreError;

const MAX_LIMIT: i64 = 100_000;

/// The mcast result document with its `task_id` (or `?task=`).
/// Whether `scope` sees the task (for 403 versus 404).
fn task_visible(
    conn: &crate::store::sql::Connection,
    scope: &Scope,
    key: &str,
) -> Result<bool, StoreError> {
    Ok(tasks::find(conn, scope, key)?.is_some())
}

pub(crate) async fn create(
    State(state): State<AppState>,
    principal: Principal,
    query: QueryParams,
    body: Bytes,
) -> Result<Response, ApiError> {
    query.only(&["task", "request_id"])?;
    if body.len() > MAX_DOCUMENT_BYTES {
        return Err(ApiError::PayloadTooLarge {
            limit: MAX_DOCUMENT_BYTES,
        });
    }
    let document: serde_json::Value = decode_json(&body)?;
    let task = match (
        query.0.get("task"),
        document.get("task_id").and_then(|v| v.as_str()),
    ) {
        (Some(task), _) => task.clone(),
        (None, Some(task)) => task.to_string(),
        (None, None) => {
            return Err(ApiError::InvalidField {
                field: "task_id".into(),
                reason: "missing: the document needs \"task_id\" (or pass ?task=)".into(),
            })
        }
    };
    ensure_can_change(
        &state,
        &principal,
        "posting a result to",
        "task",
        &task,
        task_visible,
    )
    .await?;
    let scope = principal.scope();
    let result = state
        .store()
        .resources()
        .mutate(
            principal.idempotency_key(query.0.get("request_id").cloned()),
            "POST /v1/results".into(),
            move |cx| {
                let (record, created) = tasks::insert_result(cx, &scope, &task, document)?;
                Ok(stored(if created { 201 } else { 200 }, &record))
            },
        )
        .await?;
    Ok(answer(result))
}

pub(crate) fn time_param(
    query: &QueryParams,
    name: &str,
) -> Result<Option<OffsetDateTime>, ApiError> {
    query
        .0
        .get(name)
        .map(|text| {
            OffsetDateTime::parse(text, &Rfc3339).map_err(|e| ApiError::InvalidField {
                field: name.into(),
                reason: format!("{text:?} is not an RFC 3339 time: {e}"),
            })
        })
        .transpose()
}

fn result_query(query: &QueryParams, default_limit: i64) -> Result<ResultQuery, ApiError> {
    let since = time_param(query, "since")?;
    let until = time_param(query, "until")?;
    if let (Some(s), Some(u)) = (since, until) {
        if s >= u {
            return Err(ApiError::InvalidField {
                field: "until".into(),
                reason: "must be later than since".into(),
            });
        }
    }
    Ok(ResultQuery {
        task: query.0.get("task").cloned(),
        since,
        until,
        limit: query.int("limit", default_limit, 1, MAX_LIMIT)? as u32,
        before: query.0.get("after").map(|c| result_cursor(c)).transpose()?,
    })
}

/// A results cursor: the position of the oldest result of the page before
/// (pages go back in time from the newest).
fn result_cursor(cursor: &str) -> Result<(i64, i64), ApiError> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| {
            let (ms, seq) = text.split_once(':')?;
            Some((ms.parse().ok()?, seq.parse().ok()?))
        })
        .ok_or_else(|| ApiError::InvalidField {
            field: "after".into(),
            reason: "not a cursor (use next_cursor of the previous page)".into(),
        })
}

fn encode_result_cursor((ms, seq): (i64, i64)) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{ms}:{seq}"))
}

/// A page is the newest `limit` results before the cursor, cut short at
/// `--results-page-max-bytes` of documents; either way `next_cursor` leads
/// on to the rest. Read on a connection of its own, like the export: a page
/// of 4 MiB documents takes long enough that holding the registry lock for
/// it would hold up the store writer's acks, heartbeats among them.
pub(crate) async fn list(
    State(state): State<AppState>,
    principal: Principal,
    query: QueryParams,
) -> Result<Json<ResultList>, ApiError> {
    query.only(&["task", "since", "until", "limit", "after"])?;
    let mut q = result_query(&query, 1000)?;
    let limit = q.limit as usize;
    // One more than the page: whether an older page exists.
    q.limit += 1;
    let scope = principal.scope();
    let max_bytes = state.results_page_max_bytes();
    let read = state
        .store()
        .resources()
        .read_apart(move |conn| tasks::results_at(&conn, &scope, &q, max_bytes))
        .await?;
    let mut results = read.results;
    let more = if results.len() > limit {
        results.remove(0);
        true
    } else {
        read.cut_at_bytes
    };
    let next_cursor = if more {
        results.first().map(|(_, at)| encode_result_cursor(*at))
    } else {
        None
    };
    Ok(Json(ResultList {
        results: results.into_iter().map(|(record, _)| record).collect(),
        next_cursor,
    }))
}

pub(crate) async fn latest(
    State(state): State<AppState>,
    principal: Principal,
    query: QueryParams,
) -> Result<Json<ResultRecord>, ApiError> {
    query.only(&["task"])?;
    let task = query.0.get("task").cloned();
    let scope = principal.scope();
    Ok(Json(
        state
            .store()
            .resources()
            .read(move |conn, _| tasks::latest(conn, &scope, task.as_deref()))
            .await?,
    ))
}

/// Results read per batch of an export: documents are up to 4 MiB, so a
/// batch is at most 128 MiB and typically a few hundred KiB.
const EXPORT_BATCH: u32 = 32;

/// One call for a whole range: CSV (one row per receiver per run) or JSON.
///
/// Streamed: a blocking task reads the results in batches on a read-only
/// connection of its own (neither the shared connection nor the node
/// registry is held, so heartbeats and other requests go on) and hands each
/// batch's bytes to the response as the client takes them. At
/// `--export-max-bytes` the export stops with a trailer saying so: the JSON
/// closes its array and adds `"truncated"`, the CSV ends with a `# truncated`
/// line.
pub(crate) async fn export(
    State(state): State<AppState>,
    principal: Principal,
    query: QueryParams,
) -> Result<Response, ApiError> {
    query.only(&["task", "since", "until", "limit", "format"])?;
    let format = query.0.get("format").map(String::as_str).unwrap_or("json");
    let csv = match format {
        "csv" => true,
        "json" => false,
        _ => {
            return Err(ApiError::InvalidField {
                field: "format".into(),
                reason: format!("{format:?} is not one of csv, json"),
            })
        }
    };
    let q = result_query(&query, MAX_LIMIT)?;
    let scope = principal.scope();
    // The plan first, so an unknown task is a 404 rather than a cut stream.
    let (conn, plan) = state
        .store()
        .resources()
        .read_apart(move |conn| {
            let plan = tasks::export_plan(&conn, &scope, &q)?;
            Ok((conn, plan))
        })
        .await?;
    let max_bytes = state.export_max_bytes();
    let (chunks, body) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    tokio::task::spawn_blocking(move || stream_export(conn, plan, csv, max_bytes, chunks));
    let body = axum::body::Body::from_stream(futures::stream::unfold(body, |mut body| async {
        body.recv().await.map(|chunk| (chunk, body))
    }));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    if csv {
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/csv; charset=utf-8"),
        );
        headers.insert(
            header::CONTENT_DISPOSITION,
            header::HeaderValue::from_static("attachment; filename=\"measurelab-results.csv\""),
        );
    } else {
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
    }
    Ok(response)
}

/// Reads `plan`'s results batch by batch and sends their bytes until the end,
/// the byte cap, or the client going away.
fn stream_export(
    conn: crate::store::sql::Connection,
    mut plan: tasks::ExportPlan,
    csv: bool,
    max_bytes: u64,
    chunks: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let send = |bytes: Vec<u8>| chunks.blocking_send(Ok(Bytes::from(bytes))).is_ok();
    let mut sent: u64 = 0;
    let mut first = true;
    let opening = if csv {
        tasks::csv_header().into_bytes()
    } else {
        b"{\"results\":[".to_vec()
    };
    sent += opening.len() as u64;
    if !send(opening) {
        return;
    }
    loop {
        let batch = match tasks::export_batch(&conn, &mut plan, EXPORT_BATCH) {
            Ok(batch) => batch,
            Err(err) => {
                tracing::error!(error = %err, "results export failed mid-stream");
                // An error in the body makes the server abort the response,
                // so the client sees a cut transfer, not a short export.
                let _ = chunks.blocking_send(Err(std::io::Error::other(err.to_string())));
                return;
            }
        };
        if batch.is_empty() {
            break;
        }
        let mut bytes = Vec::new();
        if csv {
            bytes.extend_from_slice(tasks::csv_rows(&batch).as_bytes());
        } else {
            for record in &batch {
                if !first {
                    bytes.push(b',');
                }
                first = false;
                // A stored record always serializes.
                if let Err(err) = serde_json::to_writer(&mut bytes, record) {
                    tracing::error!(error = %err, "result left out of the export");
                }
            }
        }
        if sent + bytes.len() as u64 > max_bytes {
            let trailer = if csv {
                format!(
                    "# truncated: the export reached --export-max-bytes ({max_bytes} bytes); narrow it with since/until/task/limit\r\n"
                )
            } else {
                format!(
                    "],\"truncated\":{{\"max_bytes\":{max_bytes},\"message\":\"the export reached --export-max-bytes; narrow it with since/until/task/limit\"}}}}"
                )
            };
            let _ = send(trailer.into_bytes());
            return;
        }
        sent += bytes.len() as u64;
        if !send(bytes) {
            return;
        }
    }
    if !csv {
        let _ = send(b"]}".to_vec());
    }
}
