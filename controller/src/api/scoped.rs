//! Reads in the caller's scope, which is all the store needs to hide other
//! tenants' objects: one object by the key in the path, or a page of a list.

use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::Json;

use super::error::ApiError;
use super::extract::{key, QueryParams};
use super::page::Page;
use super::state::AppState;
use crate::access::{Principal, Scope};
use crate::store::sql::Connection;
use crate::store::{Registry, StoreError};

/// The object `read` finds for the path's key.
pub(crate) async fn read_one<T: Send + 'static>(
    state: &AppState,
    principal: &Principal,
    path: Result<Path<String>, PathRejection>,
    read: impl FnOnce(&Connection, &Registry, &Scope, &str) -> Result<T, StoreError> + Send + 'static,
) -> Result<Json<T>, ApiError> {
    let key = key(path)?;
    let scope = principal.scope();
    let object = state
        .store()
        .resources()
        .read(move |conn, registry| read(conn, registry, &scope, &key))
        .await?;
    Ok(Json(object))
}

/// The page `?limit=&after=` (the only parameters accepted) asks for of the
/// list `read` gives, ordered by the key `order` makes of an item, and the
/// next page's cursor.
pub(crate) async fn read_page<T: Send + 'static>(
    state: &AppState,
    principal: &Principal,
    query: &QueryParams,
    read: impl FnOnce(&Connection, &Registry, &Scope) -> Result<Vec<T>, StoreError> + Send + 'static,
    order: impl Fn(&T) -> String,
) -> Result<(Vec<T>, Option<String>), ApiError> {
    query.only(&["limit", "after"])?;
    let page = Page::from_query(query)?;
    let scope = principal.scope();
    let items = state
        .store()
        .resources()
        .read(move |conn, registry| read(conn, registry, &scope))
        .await?;
    Ok(page.apply(items, order))
}
