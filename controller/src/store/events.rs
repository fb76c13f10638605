//! Reading the event journal, scoped: a tenant sees the events about its
//! own objects; events about nodes and the shared catalog (no tenant) are
//! the operator's.

use crate::store::sql::Connection;
use measurelab_api::http;

use super::error::StoreError;
use crate::access::Scope;

/// Events with id > `after` visible in `scope`, oldest first.
/// Which slice of the journal a page is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventPage {
    /// The oldest events with a larger id: following the journal.
    After(i64),
    /// The newest events with a smaller id: reading back from the present.
    Before(i64),
}

pub(crate) fn events(
    conn: &Connection,
    scope: &Scope,
    page: EventPage,
    limit: u32,
) -> Result<Vec<http::Event>, StoreError> {
    let (sql, bound) = match page {
        EventPage::After(after) => (
            "SELECT id, time, reason, object_kind, object_id, message FROM events
             WHERE id > ?1 AND (tenant_id = ?3 OR ?3 IS NULL) ORDER BY id ASC LIMIT ?2",
            after,
        ),
        EventPage::Before(before) => (
            "SELECT id, time, reason, object_kind, object_id, message FROM events
             WHERE id < ?1 AND (tenant_id = ?3 OR ?3 IS NULL) ORDER BY id DESC LIMIT ?2",
            before,
        ),
    };
    let mut statement = conn.prepare_cached(sql)?;
    let mut events = statement
        .query_map(
            crate::store::sql::params![bound, limit, scope.tenant_id()],
            |row| {
                Ok(http::Event {
                    id: row.get(0)?,
                    time: row.get(1)?,
                    reason: row.get(2)?,
                    object_kind: row.get(3)?,
                    object_id: row.get(4)?,
                    message: row.get(5)?,
                })
            },
        )?
        .collect::<Result<Vec<_>, _>>()?;
    // A page is always oldest first, whichever end of the journal it came from.
    if matches!(page, EventPage::Before(_)) {
        events.reverse();
    }
    Ok(events)
}
