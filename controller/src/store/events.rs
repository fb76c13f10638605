//! Reading the event journal, scoped: a tenant sees the events about its
//! own objects; events about nodes and the shared catalog (no tenant) are
//! the operator's.

use measurelab_api::http;
use rusqlite::Connection;

use super::error::StoreError;
use crate::access::Scope;

/// Events with id > `after` visible in `scope`, oldest first.
pub(crate) fn events(
    conn: &Connection,
    scope: &Scope,
    after: i64,
    limit: u32,
) -> Result<Vec<http::Event>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT id, time, reason, object_kind, object_id, message FROM events
         WHERE id > ?1 AND (?3 IS NULL OR tenant_id = ?3) ORDER BY id ASC LIMIT ?2",
    )?;
    let events = statement
        .query_map(rusqlite::params![after, limit, scope.tenant_id()], |row| {
            Ok(http::Event {
                id: row.get(0)?,
                time: row.get(1)?,
                reason: row.get(2)?,
                object_kind: row.get(3)?,
                object_id: row.get(4)?,
                message: row.get(5)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(events)
}
