//! `/v1/join_tokens`: join tokens made by an operator, per node or for any
//! name, single-use or not, with an optional expiry. The data directory's
//! `join.token` keeps working beside them.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use measurelab_api::http::{JoinToken, JoinTokenCreate, JoinTokenCreated, JoinTokenList};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::auth::ensure_operator;
use super::error::ApiError;
use super::extract::QueryParams;
use super::extract::{key, JsonBody};
use super::page::{self, Page};
use super::state::AppState;
use crate::access::Principal;
use crate::store::NewJoinToken;
use crate::validation::{self, FieldError};

/// Longest lifetime a token may be given (ten years): beyond that an expiry
/// is a typo, and `time` would overflow long before.
const MAX_TTL_SECONDS: u64 = 10 * 366 * 24 * 3600;

/// Check the body before anything is stored.
fn validate(body: JoinTokenCreate, now: OffsetDateTime) -> Result<NewJoinToken, FieldError> {
    validation::short_text("description", &body.description, 256)?;
    if let Some(name) = &body.node_name {
        validation::dns_label("node_name", name)?;
    }
    let expires_at = match (&body.expires_at, body.ttl_seconds) {
        (Some(_), Some(_)) => {
            return Err(FieldError::new(
                "ttl_seconds",
                "give either expires_at or ttl_seconds, not both",
            ))
        }
        (Some(text), None) => {
            let at = OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
                FieldError::new(
                    "expires_at",
                    format!("{text:?} is not an RFC 3339 time: {e}"),
                )
            })?;
            if at <= now {
                return Err(FieldError::new(
                    "expires_at",
                    format!("{text} is not in the future"),
                ));
            }
            Some(at)
        }
        (None, Some(ttl)) => {
            if !(1..=MAX_TTL_SECONDS).contains(&ttl) {
                return Err(FieldError::new(
                    "ttl_seconds",
                    format!("is {ttl}; it must be between 1 and {MAX_TTL_SECONDS}"),
                ));
            }
            Some(now + time::Duration::seconds(ttl as i64))
        }
        (None, None) => None,
    };
    Ok(NewJoinToken {
        description: body.description,
        node_name: body.node_name,
        single_use: body.single_use,
        expires_at,
    })
}

pub(crate) async fn create(
    State(state): State<AppState>,
    principal: Principal,
    JsonBody(body): JsonBody<JoinTokenCreate>,
) -> Result<(StatusCode, Json<JoinTokenCreated>), ApiError> {
    ensure_operator(&principal, "creating", "join token", "")?;
    let token = validate(body, OffsetDateTime::now_utc())?;
    let created = state.store().create_join_token(token).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

pub(crate) async fn list(
    State(state): State<AppState>,
    principal: Principal,
    query: QueryParams,
) -> Result<Json<JoinTokenList>, ApiError> {
    ensure_operator(&principal, "listing", "join tokens", "")?;
    query.only(&["limit", "after"])?;
    let page = Page::from_query(&query)?;
    let (join_tokens, next_cursor) = page.apply(state.store().join_tokens().await?, |t| {
        page::newest_first(&t.created_at, &t.id)
    });
    Ok(Json(JoinTokenList {
        join_tokens,
        next_cursor,
    }))
}

pub(crate) async fn get(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<JoinToken>, ApiError> {
    ensure_operator(&principal, "reading", "join token", "")?;
    Ok(Json(state.store().join_token(key(path)?).await?))
}

/// Revoke: the row stays (with `revoked_at`) so the list shows what existed.
pub(crate) async fn revoke(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<JoinToken>, ApiError> {
    ensure_operator(&principal, "revoking", "join token", "")?;
    Ok(Json(state.store().revoke_join_token(key(path)?).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> JoinTokenCreate {
        JoinTokenCreate::default()
    }

    #[test]
    fn expiry_is_one_of_two_fields_and_in_the_future() {
        let now = OffsetDateTime::now_utc();
        let both = JoinTokenCreate {
            expires_at: Some("2999-01-01T00:00:00Z".into()),
            ttl_seconds: Some(60),
            ..body()
        };
        assert_eq!(validate(both, now).unwrap_err().field, "ttl_seconds");
        let past = JoinTokenCreate {
            expires_at: Some("2000-01-01T00:00:00Z".into()),
            ..body()
        };
        assert_eq!(validate(past, now).unwrap_err().field, "expires_at");
        let zero = JoinTokenCreate {
            ttl_seconds: Some(0),
            ..body()
        };
        assert_eq!(validate(zero, now).unwrap_err().field, "ttl_seconds");
        let ttl = JoinTokenCreate {
            ttl_seconds: Some(60),
            ..body()
        };
        assert_eq!(
            validate(ttl, now).unwrap().expires_at,
            Some(now + time::Duration::seconds(60))
        );
        let bad_name = JoinTokenCreate {
            node_name: Some("Not_A_Label".into()),
            ..body()
        };
        assert_eq!(validate(bad_name, now).unwrap_err().field, "node_name");
    }
}
