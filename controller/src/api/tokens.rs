//! `/v1/tokens`: API tokens. The secret is in the create response only;
//! the store keeps a digest, and a replayed create (same request_id) gets
//! the token without it.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Json;
use measurelab_api::http::{ApiToken, ApiTokenCreate, ApiTokenCreated, ApiTokenList, Role};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::error::ApiError;
use super::extract::{key, JsonBody, QueryParams};
use super::idempotency::{answer, stored, Idempotent};
use super::page::{self, Page};
use super::state::AppState;
use crate::access::{Principal, Scope, TenantRef};
use crate::store::api_tokens::{self, NewToken};
use crate::store::{tenants, StoreError};

/// Longest lifetime `ttl_seconds` accepts (ten years).
const MAX_TTL_SECONDS: u64 = 10 * 365 * 86400;

/// Which tokens the caller may see: the operator all, an owner its
/// tenant's, members and viewers only their own (a metrics token never
/// gets here: the authentication layer confines it to /metrics).
fn visibility(principal: &Principal) -> (Scope, Option<String>) {
    match principal.role {
        Role::Operator | Role::Owner => (principal.scope(), None),
        Role::Member | Role::Viewer | Role::Metrics => {
            (principal.scope(), Some(principal.token_id.clone()))
        }
    }
}

fn expiry(input: &ApiTokenCreate, now: OffsetDateTime) -> Result<Option<OffsetDateTime>, ApiError> {
    match (&input.expires_at, input.ttl_seconds) {
        (Some(_), Some(_)) => Err(ApiError::InvalidField {
            field: "ttl_seconds".into(),
            reason: "give either expires_at or ttl_seconds, not both".into(),
        }),
        (Some(text), None) => OffsetDateTime::parse(text, &Rfc3339)
            .map(Some)
            .map_err(|e| ApiError::InvalidField {
                field: "expires_at".into(),
                reason: format!("{text:?} is not an RFC 3339 time: {e}"),
            }),
        (None, Some(ttl)) if ttl == 0 || ttl > MAX_TTL_SECONDS => Err(ApiError::InvalidField {
            field: "ttl_seconds".into(),
            reason: format!("{ttl} is out of range 1..={MAX_TTL_SECONDS}"),
        }),
        (None, Some(ttl)) => Ok(Some(now + time::Duration::seconds(ttl as i64))),
        (None, None) => Ok(None),
    }
}

/// The tenant of a new token, after the caller's right to create it.
fn token_tenant(
    conn: &crate::store::sql::Connection,
    principal: &Principal,
    input: &ApiTokenCreate,
) -> Result<Option<TenantRef>, StoreError> {
    let denied = |needed: Role| {
        StoreError::Forbidden(principal.denial("creating", "token", &input.name, needed))
    };
    match principal.role {
        Role::Operator => match (input.role.tenant_refusal(), &input.tenant) {
            (Some(_), None) => Ok(None),
            (Some(refusal), Some(_)) => Err(StoreError::invalid(
                "tenant",
                format!("{refusal}; leave tenant out"),
            )),
            (None, None) => Err(StoreError::invalid(
                "tenant",
                "is required for an owner, member or viewer token",
            )),
            (None, Some(key)) => tenants::target(conn, None, Some(key)).map(Some),
        },
        Role::Owner if input.role.is_global() => Err(denied(Role::Operator)),
        Role::Owner => {
            tenants::target(conn, principal.tenant.as_ref(), input.tenant.as_deref()).map(Some)
        }
        Role::Member | Role::Viewer | Role::Metrics => Err(denied(Role::Owner)),
    }
}

pub(crate) async fn create(
    State(state): State<AppState>,
    principal: Principal,
    JsonBody(input): JsonBody<ApiTokenCreate>,
) -> Result<Response, ApiError> {
    let expires_at = expiry(&input, OffsetDateTime::now_utc())?;
    let (id, secret) = api_tokens::new_secret();
    let token_id = id.clone();
    let digest_source = secret.clone();
    let result = state
        .store()
        .resources()
        .mutate(
            principal.idempotency_key(input.request_id.clone()),
            "POST /v1/tokens".into(),
            move |cx| {
                let tenant = token_tenant(cx.tx, &principal, &input)?;
                let token = api_tokens::create(
                    cx,
                    &token_id,
                    &digest_source,
                    NewToken {
                        name: input.name,
                        role: input.role,
                        tenant,
                        expires_at,
                    },
                )?;
                // Recorded without the secret: a replay must not reveal it.
                Ok(stored(201, &created(token, String::new())))
            },
        )
        .await?;
    state.store().reload_tokens().await?;
    let fresh = result.text_field("id") == Some(id.as_str());
    Ok(answer(if fresh {
        result.with_unrecorded("secret", api_tokens::bearer(&id, &secret))
    } else {
        result
    }))
}

fn created(token: ApiToken, secret: String) -> ApiTokenCreated {
    ApiTokenCreated {
        id: token.id,
        name: token.name,
        role: token.role,
        tenant_id: token.tenant_id,
        created_at: token.created_at,
        expires_at: token.expires_at,
        last_used_at: token.last_used_at,
        revoked_at: token.revoked_at,
        secret,
    }
}

pub(crate) async fn list(
    State(state): State<AppState>,
    principal: Principal,
    query: QueryParams,
) -> Result<Json<ApiTokenList>, ApiError> {
    query.only(&["limit", "after"])?;
    let page = Page::from_query(&query)?;
    let (scope, only) = visibility(&principal);
    let tokens = state
        .store()
        .resources()
        .read(move |conn, _| api_tokens::list(conn, &scope, only.as_deref()))
        .await?;
    let (tokens, next_cursor) = page.apply(tokens, |item| {
        page::oldest_first(&item.created_at, &item.id)
    });
    Ok(Json(ApiTokenList {
        tokens,
        next_cursor,
    }))
}

pub(crate) async fn get(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ApiToken>, ApiError> {
    let key = key(path)?;
    let (scope, only) = visibility(&principal);
    if only.as_ref().is_some_and(|own| *own != key) {
        return Err(ApiError::NotFound {
            kind: "token",
            id: key,
        });
    }
    Ok(Json(
        state
            .store()
            .resources()
            .read(move |conn, _| api_tokens::get(conn, &scope, &key))
            .await?,
    ))
}

/// Revoke (the row stays with revoked_at). Any token may revoke itself;
/// an owner revokes its tenant's tokens, the operator any.
pub(crate) async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    query.only(&["request_id"])?;
    let (scope, only) = visibility(&principal);
    if only.as_ref().is_some_and(|own| *own != key) {
        return Err(ApiError::NotFound {
            kind: "token",
            id: key,
        });
    }
    let route = format!("DELETE /v1/tokens/{key}");
    let result = state
        .store()
        .resources()
        .mutate(
            principal.idempotency_key(query.0.get("request_id").cloned()),
            route,
            move |cx| Ok(stored(200, &api_tokens::revoke(cx, &scope, &key)?)),
        )
        .await?;
    state.store().reload_tokens().await?;
    Ok(answer(result))
}
