//! The SQL of the writer's batched heartbeat rows ([`heartbeat_update`]),
//! apart from the writer so the database's connection setup can size its
//! statement cache for them without importing the writer.

use std::sync::LazyLock;

/// Rows per heartbeat `UPDATE` (7 parameters each).
pub(crate) const HEARTBEAT_ROWS_PER_STATEMENT: usize = 64;

/// `UPDATE nodes … FROM (rows)` for `rows` heartbeats, in SQL both SQLite
/// and PostgreSQL take: the rows as `SELECT … UNION ALL` (SQLite names no
/// columns of a `VALUES` list), integers cast so PostgreSQL types them.
/// The status is not written: these rows carry only nodes this replica
/// sees online, and an `offline` in the database instead (another
/// replica's sweep, whose notice is on its way) must stand until this
/// replica has reloaded the node, so that its coming back writes the
/// status together with its NodeOnline event.
///
/// The texts are built once: each batch runs one per chunk, and formatting
/// a 64-row text per batch cost as much as running it.
pub(crate) fn heartbeat_update(rows: usize) -> &'static str {
    static TEXTS: LazyLock<Vec<String>> = LazyLock::new(|| {
        (1..=HEARTBEAT_ROWS_PER_STATEMENT)
            .map(heartbeat_update_text)
            .collect()
    });
    &TEXTS[rows - 1]
}

fn heartbeat_update_text(rows: usize) -> String {
    let beats = (0..rows)
        .map(|row| {
            let p = row * 7;
            format!(
                "SELECT ?{} AS id, ?{} AS heard, CAST(?{} AS BIGINT) AS sequence, ?{} AS version, \
                 ?{} AS capabilities, ?{} AS resources, CAST(?{} AS BIGINT) AS observed",
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 5,
                p + 6,
                p + 7
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    format!(
        "UPDATE nodes SET last_heartbeat = beat.heard, \
         last_sequence = beat.sequence, agent_version = beat.version, \
         capabilities = beat.capabilities, resources = beat.resources, \
         observed_generation = beat.observed \
         FROM ({beats}) AS beat WHERE nodes.id = beat.id"
    )
}
