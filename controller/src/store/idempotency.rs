//! SQL of the `idempotency` table: what the HTTP API recorded under a
//! request_id. The store keeps the record as it was given; what it means
//! (route check, replay) is decided by `api::idempotency`.

use crate::store::sql::{params, Connection, OptionalExtension};

use super::error::StoreError;
use super::resources::TxContext;

/// One recorded response, column for column.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    /// What the request_id was used for (`METHOD path`).
    pub route: String,
    /// The response code the API chose.
    pub status: u16,
    /// The response body (JSON text).
    pub body: String,
}

/// The record kept under `request_id`, if any.
pub(crate) fn find(conn: &Connection, request_id: &str) -> Result<Option<Record>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT route, status, body FROM idempotency WHERE request_id = ?1",
            [request_id],
            |row| {
                Ok(Record {
                    route: row.get(0)?,
                    status: row.get::<i64>(1)? as u16,
                    body: row.get(2)?,
                })
            },
        )
        .optional()?)
}

/// Keep `record` under `request_id`, in the transaction of the request it
/// answers, so the change and its record commit together.
pub(crate) fn insert(
    cx: &TxContext<'_>,
    request_id: &str,
    record: &Record,
) -> Result<(), StoreError> {
    cx.tx
        .prepare_cached(
            "INSERT INTO idempotency (request_id, route, status, body, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            request_id,
            record.route,
            record.status,
            record.body,
            cx.now_text()
        ])?;
    Ok(())
}
