//! Authentication of `/v1` requests and the permission checks handlers
//! share: every request gets a [`Principal`] (from admin.token or an
//! `mlt_` API token); handlers ask it for the store scope and for 403s.

use crate::store::sql::Connection;
use axum::async_trait;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, Method, Uri};
use axum::middleware::Next;
use axum::response::Response;
use time::OffsetDateTime;

use super::error::ApiError;
use super::state::AppState;
use crate::access::{Principal, Role, Scope, TenantRef};
use crate::store::{api_tokens, constant_time_eq, tenants, StoreError};

/// Id and name the bootstrap `<data_dir>/admin.token` goes by.
const ADMIN_TOKEN_ID: &str = "admin";
const ADMIN_TOKEN_NAME: &str = "admin.token";

/// Middleware: resolve the bearer token to a principal (401 otherwise),
/// apply an operator's `?tenant=` and hand the principal to the handler.
pub(crate) async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(value) = request.headers().get(header::AUTHORIZATION) else {
        return Err(ApiError::Unauthorized(
            "Authorization: missing; send `Authorization: Bearer <token>` (an API token, or the admin token in <data_dir>/admin.token)".into(),
        ));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::Unauthorized("Authorization: must have the form `Bearer <token>`".into())
        })?
        .to_string();
    let mut principal = principal_of(&state, &token)?;
    confine_metrics_token(&principal, request.method(), request.uri())?;
    if let Some((tenant_key, uri)) = take_tenant_param(request.uri()) {
        principal.narrowed_to = Some(narrow(&state, &principal, tenant_key).await?);
        *request.uri_mut() = uri;
    }
    request.extensions_mut().insert(principal);
    Ok(next.run(request).await)
}

/// What a `metrics` token may call. It belongs to no tenant, so the store
/// would give it every tenant's objects: it is stopped here, before any
/// handler, rather than trusted to every handler's role checks.
const METRICS_TOKEN_ROUTES: &[&str] = &["/metrics", "/v1/whoami"];

fn confine_metrics_token(
    principal: &Principal,
    method: &Method,
    uri: &Uri,
) -> Result<(), ApiError> {
    if principal.role != Role::Metrics {
        return Ok(());
    }
    if method == Method::GET && METRICS_TOKEN_ROUTES.contains(&uri.path()) && uri.query().is_none()
    {
        return Ok(());
    }
    Err(ApiError::Forbidden(format!(
        "{method} {}: token {:?} has role metrics, which may only call GET {}",
        uri.path(),
        principal.token_name,
        METRICS_TOKEN_ROUTES.join(" and GET ")
    )))
}

fn principal_of(state: &AppState, token: &str) -> Result<Principal, ApiError> {
    if constant_time_eq(token.as_bytes(), state.admin_token().as_bytes()) {
        return Ok(Principal {
            token_id: ADMIN_TOKEN_ID.into(),
            token_name: ADMIN_TOKEN_NAME.into(),
            role: Role::Operator,
            tenant: None,
            narrowed_to: None,
        });
    }
    if !token.starts_with(api_tokens::TOKEN_PREFIX) {
        return Err(ApiError::Unauthorized(
            "Authorization: wrong admin token".into(),
        ));
    }
    let (entry, touch_due) = state
        .store()
        .tokens()
        .verify(token, OffsetDateTime::now_utc())
        .map_err(|refusal| ApiError::Unauthorized(refusal.to_string()))?;
    if touch_due {
        // Off the request path: the request does not wait for this write,
        // and a failure only leaves last_used_at a little old.
        let store = state.store().clone();
        let id = entry.token.id.clone();
        tokio::spawn(async move {
            if let Err(e) = store
                .resources()
                .transact(move |cx| api_tokens::touch(cx, &id))
                .await
            {
                tracing::warn!(error = %e, "cannot record the last use of an API token");
            }
        });
    }
    Ok(Principal {
        token_id: entry.token.id.clone(),
        token_name: entry.token.name.clone(),
        role: entry.token.role,
        tenant: entry.tenant.clone(),
        narrowed_to: None,
    })
}

/// Split `tenant=<key>` off the query, returning it and the URI without it,
/// so routes that refuse unknown parameters never see it.
fn take_tenant_param(uri: &Uri) -> Option<(String, Uri)> {
    let query = uri.query()?;
    let mut tenant = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix("tenant=") {
            Some(value) if tenant.is_none() => {
                tenant = Some(value.to_string());
                false
            }
            _ => true,
        })
        .collect();
    let tenant = tenant?;
    let path_and_query = if rest.is_empty() {
        uri.path().to_string()
    } else {
        format!("{}?{}", uri.path(), rest.join("&"))
    };
    let uri = Uri::builder().path_and_query(path_and_query).build().ok()?;
    Some((tenant, uri))
}

/// `?tenant=`: the operator looks at one tenant; a tenant token may only name itself.
async fn narrow(
    state: &AppState,
    principal: &Principal,
    key: String,
) -> Result<TenantRef, ApiError> {
    if let Some(own) = &principal.tenant {
        if key == own.id || key == own.name {
            return Ok(own.clone());
        }
        return Err(ApiError::NotFound {
            kind: "tenant",
            id: key,
        });
    }
    let tenant = state
        .store()
        .resources()
        .read(move |conn, _| tenants::get(conn, &Scope::All, &key))
        .await?;
    Ok(TenantRef {
        id: tenant.id,
        name: tenant.name,
    })
}

#[async_trait]
impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            // Only reachable if a route escaped the authentication layer.
            .ok_or_else(|| ApiError::Unauthorized("Authorization: no principal".into()))
    }
}

/// An action that needs at least role `needed`, whatever it acts on.
pub(crate) fn ensure_role(
    principal: &Principal,
    needed: Role,
    action: &str,
    kind: &str,
    name: &str,
) -> Result<(), ApiError> {
    if principal.role >= needed {
        return Ok(());
    }
    Err(ApiError::Forbidden(
        principal.denial(action, kind, name, needed),
    ))
}

/// Whether a scope sees the object a key names, to tell a refused caller's
/// 403 from 404.
pub(crate) type Visible = fn(&Connection, &Scope, &str) -> Result<bool, StoreError>;

/// Changing an existing tenant object: a viewer gets 403 for an object it
/// sees and 404 (as for a missing one) for anything else.
pub(crate) async fn ensure_can_change(
    state: &AppState,
    principal: &Principal,
    action: &'static str,
    kind: &'static str,
    key: &str,
    visible: Visible,
) -> Result<(), ApiError> {
    ensure_role_on(state, principal, Role::Member, action, kind, key, visible).await
}

/// `action` on the object `key` of `kind` by a caller of at least role
/// `needed`. Anyone else gets 403 when its scope sees the object, else
/// 404, so a refusal never confirms that another tenant's object exists.
pub(crate) async fn ensure_role_on(
    state: &AppState,
    principal: &Principal,
    needed: Role,
    action: &'static str,
    kind: &'static str,
    key: &str,
    visible: Visible,
) -> Result<(), ApiError> {
    if principal.role >= needed {
        return Ok(());
    }
    let scope = principal.scope();
    let lookup = key.to_string();
    let seen = state
        .store()
        .resources()
        .read(move |conn, _| visible(conn, &scope, &lookup))
        .await?;
    if seen {
        Err(ApiError::Forbidden(
            principal.denial(action, kind, key, needed),
        ))
    } else {
        Err(ApiError::NotFound {
            kind,
            id: key.to_string(),
        })
    }
}

/// Operator-only actions (nodes, appliances, tenants).
pub(crate) fn ensure_operator(
    principal: &Principal,
    action: &str,
    kind: &str,
    name: &str,
) -> Result<(), ApiError> {
    ensure_role(principal, Role::Operator, action, kind, name)
}

/// The tenant key a create lands in when the body names none: an
/// operator's `?tenant=`, else the caller's own (or `default`).
pub(crate) fn requested_tenant(
    principal: &Principal,
    body_tenant: Option<String>,
) -> Option<String> {
    body_tenant.or_else(|| principal.narrowed_to.as_ref().map(|t| t.id.clone()))
}

/// The scope a create looks up what it references in (platform, program,
/// QoS policy): the caller's, or the tenant the body names.
pub(crate) fn creation_scope(
    conn: &Connection,
    principal: &Principal,
    body_tenant: Option<&str>,
) -> Result<Scope, StoreError> {
    match body_tenant {
        None => Ok(principal.scope()),
        Some(key) => Ok(Scope::Tenant(
            tenants::target(conn, principal.tenant.as_ref(), Some(key))?.id,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_param_is_taken_out_of_the_query() {
        let uri: Uri = "/v1/platforms?tenant=t1&limit=3".parse().unwrap();
        let (tenant, rest) = take_tenant_param(&uri).unwrap();
        assert_eq!(tenant, "t1");
        assert_eq!(rest.to_string(), "/v1/platforms?limit=3");
        let uri: Uri = "/v1/platforms?tenant=t1".parse().unwrap();
        assert_eq!(
            take_tenant_param(&uri).unwrap().1.to_string(),
            "/v1/platforms"
        );
        let uri: Uri = "/v1/platforms?limit=3".parse().unwrap();
        assert!(take_tenant_param(&uri).is_none());
    }
}
