//! The newest result of each task, for the metrics endpoint's per-receiver
//! series. Reads through `tasks.last_result_id`, so a scrape costs one row
//! per task however many runs are stored.

use crate::store::sql::{params, Connection};

use super::StoreError;

/// A task's newest run, as stored.
pub(crate) struct LatestRun {
    pub tenant: String,
    pub task: String,
    pub started_ms: i64,
    pub document: String,
}

/// At most `limit` tasks, those with the newest runs first.
pub(crate) fn latest_per_task(
    conn: &Connection,
    limit: usize,
) -> Result<Vec<LatestRun>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT tn.name, t.name, r.started_ms, r.document
           FROM tasks t
           JOIN tenants tn ON tn.id = t.tenant_id
           JOIN results r ON r.id = t.last_result_id
          ORDER BY r.started_ms DESC
          LIMIT ?1",
    )?;
    let rows = statement.query_map(params![limit as i64], |row| {
        Ok(LatestRun {
            tenant: row.get(0)?,
            task: row.get(1)?,
            started_ms: row.get(2)?,
            document: row.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
