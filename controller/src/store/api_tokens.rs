//! API tokens: `mlt_<id>_<secret>`. The table keeps a digest of the secret;
//! an in-memory book of the tokens answers every request's verification
//! without touching SQLite, and is reloaded after each token change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::store::sql::{params, Connection};
use measurelab_api::http::{ApiToken, Role};
use rand::RngCore;
use time::OffsetDateTime;

use super::codec::{new_id, parse_time};
use super::error::StoreError;
use super::nodes::{constant_time_eq, secret_digest};
use super::resources::TxContext;
use crate::access::{Scope, TenantRef};
use crate::validation;

/// Prefix of every API token, so a leaked one is recognisable (and greppable).
pub(crate) const TOKEN_PREFIX: &str = "mlt_";
/// `last_used_at` is written at most this often per token.
const LAST_USED_EVERY: Duration = Duration::from_secs(60);
const MAX_NAME: usize = 128;

/// A token as the book holds it.
#[derive(Debug)]
pub(crate) struct TokenEntry {
    pub token: ApiToken,
    pub tenant: Option<TenantRef>,
    digest: String,
    expires: Option<OffsetDateTime>,
    /// When `last_used_at` was last written (by this process).
    last_written: Mutex<Option<Instant>>,
}

/// Why a presented token is refused (each becomes a 401 with this text).
#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenRefusal {
    #[error("Authorization: malformed API token; expected mlt_<id>_<secret>")]
    Malformed,
    #[error("Authorization: unknown API token")]
    Unknown,
    #[error("Authorization: wrong secret for API token {0:?}")]
    WrongSecret(String),
    #[error("Authorization: API token {name:?} was revoked at {at}")]
    Revoked { name: String, at: String },
    #[error("Authorization: API token {name:?} expired at {at}")]
    Expired { name: String, at: String },
}

/// The in-memory book; cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct TokenBook {
    entries: Arc<RwLock<HashMap<String, Arc<TokenEntry>>>>,
}

const SELECT: &str = "SELECT k.id, k.name, k.role, k.tenant_id, k.created_at, k.expires_at,
        k.last_used_at, k.revoked_at, k.secret_digest, t.name
    FROM api_tokens k LEFT JOIN tenants t ON t.id = k.tenant_id";

fn parse_role(text: &str) -> Result<Role, StoreError> {
    Role::parse(text).ok_or_else(|| StoreError::Corrupt(format!("api_tokens.role {text:?}")))
}

fn read_entry(r: &crate::store::sql::Row<'_>) -> Result<TokenEntry, StoreError> {
    let role: String = r.get(2)?;
    let expires_at: Option<String> = r.get(5)?;
    let tenant_id: Option<String> = r.get(3)?;
    let tenant_name: Option<String> = r.get(9)?;
    Ok(TokenEntry {
        expires: expires_at.as_deref().map(parse_time).transpose()?,
        tenant: tenant_id
            .clone()
            .zip(tenant_name)
            .map(|(id, name)| TenantRef { id, name }),
        token: ApiToken {
            id: r.get(0)?,
            name: r.get(1)?,
            role: parse_role(&role)?,
            tenant_id,
            created_at: r.get(4)?,
            expires_at,
            last_used_at: r.get(6)?,
            revoked_at: r.get(7)?,
        },
        digest: r.get(8)?,
        last_written: Mutex::new(None),
    })
}

impl TokenBook {
    /// Replace the book with what the table holds now.
    pub fn reload(&self, conn: &Connection) -> Result<(), StoreError> {
        let mut statement = conn.prepare_cached(SELECT)?;
        let mut rows = statement.query([])?;
        let mut fresh = HashMap::new();
        while let Some(r) = rows.next()? {
            let entry = read_entry(&r)?;
            fresh.insert(entry.token.id.clone(), Arc::new(entry));
        }
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        // Keep the throttle of tokens that survive, so a reload does not
        // cause a burst of last_used_at writes.
        for (id, entry) in &fresh {
            if let Some(old) = entries.get(id) {
                let written = *old.last_written.lock().unwrap_or_else(|e| e.into_inner());
                *entry.last_written.lock().unwrap_or_else(|e| e.into_inner()) = written;
            }
        }
        *entries = fresh;
        Ok(())
    }

    /// Check `mlt_<id>_<secret>`; on success also say whether `last_used_at`
    /// is due for a write (at most once a minute per token).
    pub fn verify(
        &self,
        bearer: &str,
        now: OffsetDateTime,
    ) -> Result<(Arc<TokenEntry>, bool), TokenRefusal> {
        let rest = bearer
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenRefusal::Malformed)?;
        let (id, secret) = rest.rsplit_once('_').ok_or(TokenRefusal::Malformed)?;
        let entry = self
            .entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or(TokenRefusal::Unknown)?;
        if !constant_time_eq(secret_digest(secret).as_bytes(), entry.digest.as_bytes()) {
            return Err(TokenRefusal::WrongSecret(entry.token.name.clone()));
        }
        if let Some(at) = &entry.token.revoked_at {
            return Err(TokenRefusal::Revoked {
                name: entry.token.name.clone(),
                at: at.clone(),
            });
        }
        if let (Some(expires), Some(at)) = (entry.expires, &entry.token.expires_at) {
            if expires <= now {
                return Err(TokenRefusal::Expired {
                    name: entry.token.name.clone(),
                    at: at.clone(),
                });
            }
        }
        let due = {
            let mut written = entry.last_written.lock().unwrap_or_else(|e| e.into_inner());
            let due = written.is_none_or(|at| at.elapsed() >= LAST_USED_EVERY);
            if due {
                *written = Some(Instant::now());
            }
            due
        };
        Ok((entry, due))
    }
}

/// What a new token is, once validated by the API layer's permission check.
#[derive(Debug, Clone)]
pub(crate) struct NewToken {
    pub name: String,
    pub role: Role,
    pub tenant: Option<TenantRef>,
    pub expires_at: Option<OffsetDateTime>,
}

/// A fresh id and secret; the caller shows the secret once, the store keeps its digest.
pub(crate) fn new_secret() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    (new_id(), hex::encode(bytes))
}

/// The bearer text of a token.
pub(crate) fn bearer(id: &str, secret: &str) -> String {
    format!("{TOKEN_PREFIX}{id}_{secret}")
}

pub(crate) fn create(
    cx: &mut TxContext<'_>,
    id: &str,
    secret: &str,
    input: NewToken,
) -> Result<ApiToken, StoreError> {
    if input.name.trim().is_empty() {
        return Err(StoreError::invalid("name", "must not be empty"));
    }
    validation::short_text("name", &input.name, MAX_NAME)?;
    if let Some(expires) = input.expires_at {
        if expires <= cx.now {
            return Err(StoreError::invalid("expires_at", "must be in the future"));
        }
    }
    let token = ApiToken {
        id: id.to_string(),
        name: input.name,
        role: input.role,
        tenant_id: input.tenant.as_ref().map(|t| t.id.clone()),
        created_at: cx.now_text(),
        expires_at: input.expires_at.map(super::codec::rfc3339),
        last_used_at: None,
        revoked_at: None,
    };
    cx.effects.tokens_changed = true;
    cx.tx
        .prepare_cached(
            "INSERT INTO api_tokens (id, name, tenant_id, role, secret_digest, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            token.id,
            token.name,
            token.tenant_id,
            token.role.as_str(),
            secret_digest(secret),
            token.created_at,
            token.expires_at
        ])?;
    cx.event(
        token.tenant_id.as_deref(),
        "TokenCreated",
        "token",
        &token.id,
        format!(
            "API token {} created with role {}",
            token.name,
            token.role.as_str()
        ),
    )?;
    Ok(token)
}

fn api_token(r: &crate::store::sql::Row<'_>) -> Result<ApiToken, StoreError> {
    Ok(read_entry(r)?.token)
}

/// Tokens visible in `scope`; `only` narrows to one token id (a member or
/// viewer sees only itself).
pub(crate) fn list(
    conn: &Connection,
    scope: &Scope,
    only: Option<&str>,
) -> Result<Vec<ApiToken>, StoreError> {
    let mut statement = conn.prepare_cached(&format!(
        "{SELECT} WHERE (k.tenant_id = ?1 OR ?1 IS NULL) AND (k.id = ?2 OR ?2 IS NULL)
         ORDER BY k.created_at, k.id"
    ))?;
    let mut rows = statement.query(params![scope.tenant_id(), only])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(api_token(&r)?);
    }
    Ok(out)
}

/// One token visible in `scope`.
pub(crate) fn get(conn: &Connection, scope: &Scope, id: &str) -> Result<ApiToken, StoreError> {
    list(conn, scope, Some(id))?
        .pop()
        .ok_or_else(|| StoreError::NotFound {
            kind: "token",
            id: id.to_string(),
        })
}

/// Revoke: the row stays, with revoked_at, so the token's history is kept.
pub(crate) fn revoke(
    cx: &mut TxContext<'_>,
    scope: &Scope,
    id: &str,
) -> Result<ApiToken, StoreError> {
    let mut token = get(cx.tx, scope, id)?;
    if token.revoked_at.is_none() {
        let now = cx.now_text();
        cx.effects.tokens_changed = true;
        cx.tx
            .prepare_cached("UPDATE api_tokens SET revoked_at = ?2 WHERE id = ?1")?
            .execute(params![token.id, now])?;
        cx.event(
            token.tenant_id.as_deref(),
            "TokenRevoked",
            "token",
            &token.id,
            format!("API token {} revoked", token.name),
        )?;
        token.revoked_at = Some(now);
    }
    Ok(token)
}

/// Record that a token was used (throttled by [`TokenBook::verify`]).
pub(crate) fn touch(cx: &TxContext<'_>, id: &str) -> Result<(), StoreError> {
    cx.tx
        .prepare_cached("UPDATE api_tokens SET last_used_at = ?2 WHERE id = ?1")?
        .execute(params![id, cx.now_text()])?;
    Ok(())
}
