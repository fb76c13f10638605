//! Per-task control keys: one random secret per measurement task and per comparison
//! run, for the nodes whose service hosts take part (`DesiredState.service_tasks`).
//! Nothing here is ever part of an API answer, an event or a log line.

use rand::RngCore;
use rusqlite::{Connection, OptionalExtension};

use super::error::StoreError;
use super::resources::TxContext;

/// Bytes of a secret (hex-encoded: 64 digits, as the agent's point reads it).
const SECRET_BYTES: usize = 32;

/// Gives `owner_id` (a task or comparison id) a fresh secret.
pub(crate) fn create(cx: &TxContext<'_>, owner_id: &str) -> Result<(), StoreError> {
    let mut secret = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    cx.tx.execute(
        "INSERT INTO control_keys (owner_id, secret, created_at) VALUES (?1, ?2, ?3)",
        rusqlite::params![owner_id, hex::encode(secret), cx.now_text()],
    )?;
    Ok(())
}

/// The secret of `owner_id`, if it has one.
pub(crate) fn of(conn: &Connection, owner_id: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT secret FROM control_keys WHERE owner_id = ?1")?
        .query_row([owner_id], |row| row.get(0))
        .optional()?)
}

/// Forgets the secret of a task or comparison that ended.
pub(crate) fn delete(cx: &TxContext<'_>, owner_id: &str) -> Result<(), StoreError> {
    cx.tx
        .execute("DELETE FROM control_keys WHERE owner_id = ?1", [owner_id])?;
    Ok(())
}
