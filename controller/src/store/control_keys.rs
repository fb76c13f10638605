//! Control keys: one random secret per measurement task and per comparison run, for
//! the nodes whose service hosts take part (`DesiredState.service_tasks`), and one per
//! platform, for the MSCS and points its programs run (`ProgramRun.env`). Nothing here
//! is ever part of an event or a log line; only a platform's key is ever part of an API
//! answer, and only of `GET /v1/platforms/{id}/control-key`.

use std::collections::BTreeMap;

use crate::store::sql::{Connection, OptionalExtension};
use rand::RngCore;

use super::error::StoreError;
use super::resources::TxContext;

/// Bytes of a secret (hex-encoded: 64 digits, as the agent's point reads it).
const SECRET_BYTES: usize = 32;

/// A fresh secret, hex-encoded.
pub(crate) fn new_secret() -> String {
    let mut secret = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    hex::encode(secret)
}

/// Gives `owner_id` (a task, comparison or platform id) a fresh secret.
pub(crate) fn create(cx: &TxContext<'_>, owner_id: &str) -> Result<(), StoreError> {
    cx.tx.execute(
        "INSERT INTO control_keys (owner_id, secret, created_at) VALUES (?1, ?2, ?3)",
        crate::store::sql::params![owner_id, new_secret(), cx.now_text()],
    )?;
    Ok(())
}

/// The secret of `owner_id`, if it has one.
pub(crate) fn of(conn: &Connection, owner_id: &str) -> Result<Option<String>, StoreError> {
    Ok(versioned(conn, owner_id)?.map(|(secret, _)| secret))
}

/// The secret of `owner_id` with its version (1 for the first, one more per rotation).
pub(crate) fn versioned(
    conn: &Connection,
    owner_id: &str,
) -> Result<Option<(String, u32)>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT secret, version FROM control_keys WHERE owner_id = ?1")?
        .query_row([owner_id], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?)
}

/// Replaces the secret of `owner_id` by `secret` (from [`new_secret`]); the old one
/// is forgotten. Returns the new version, or `None` when `owner_id` has no key.
pub(crate) fn rotate(
    cx: &TxContext<'_>,
    owner_id: &str,
    secret: &str,
) -> Result<Option<u32>, StoreError> {
    Ok(cx
        .tx
        .prepare_cached(
            "UPDATE control_keys SET secret = ?2, version = version + 1, created_at = ?3 \
             WHERE owner_id = ?1 RETURNING version",
        )?
        .query_row(
            crate::store::sql::params![owner_id, secret, cx.now_text()],
            |row| row.get(0),
        )
        .optional()?)
}

/// Forgets the secret of a task or comparison that ended.
pub(crate) fn delete(cx: &TxContext<'_>, owner_id: &str) -> Result<(), StoreError> {
    cx.tx
        .execute("DELETE FROM control_keys WHERE owner_id = ?1", [owner_id])?;
    Ok(())
}

/// Variable `mcast-mscs` and `mcast-point` read their key from.
pub(crate) const KEY_ENV: &str = "MEASURELAB_CONTROL_KEY";
/// Variable naming the key (the `task` of every signed order).
pub(crate) const KEY_ID_ENV: &str = "MEASURELAB_CONTROL_KEY_ID";

/// `env` of a program run of platform `platform_id` with the platform's key added.
/// A deployment that sets `MEASURELAB_CONTROL_KEY` itself keeps its own key and the
/// id it chose (or the programs' default): the tenant's override wins, and a key
/// of the tenant's is never paired with the platform's id.
pub(crate) fn with_platform_key(
    mut env: BTreeMap<String, String>,
    platform_id: &str,
    secret: Option<String>,
) -> BTreeMap<String, String> {
    if env.contains_key(KEY_ENV) {
        return env;
    }
    let Some(secret) = secret else {
        return env;
    };
    env.insert(KEY_ENV.into(), secret);
    env.entry(KEY_ID_ENV.into())
        .or_insert_with(|| platform_id.to_string());
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_platform_key_is_added_under_the_platform_id() {
        let out = with_platform_key(env(&[("A", "1")]), "p1", Some("ab".into()));
        assert_eq!(out, env(&[("A", "1"), (KEY_ENV, "ab"), (KEY_ID_ENV, "p1")]));
    }

    #[test]
    fn a_tenant_key_wins_and_keeps_its_own_id() {
        let own = env(&[(KEY_ENV, "cd")]);
        assert_eq!(with_platform_key(own.clone(), "p1", Some("ab".into())), own);
    }

    #[test]
    fn a_tenant_id_is_kept_with_the_platform_key() {
        let out = with_platform_key(env(&[(KEY_ID_ENV, "mine")]), "p1", Some("ab".into()));
        assert_eq!(out, env(&[(KEY_ENV, "ab"), (KEY_ID_ENV, "mine")]));
    }
}
