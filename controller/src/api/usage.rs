//! `GET /v1/tenants/{id_or_name}/usage`: a tenant's use next to its quota.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::Json;
use measurelab_api::http::TenantUsageReport;

use super::error::ApiError;
use super::extract::key;
use super::state::AppState;
use crate::access::Principal;
use crate::store::{quotas, tenants};

/// Every role of the tenant may read it (a viewer plans within the quota
/// too); another tenant's answers 404 like a missing one.
pub(crate) async fn get(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<TenantUsageReport>, ApiError> {
    let key = key(path)?;
    let scope = principal.scope();
    let report = state
        .store()
        .resources()
        .read(move |conn, _| {
            let tenant = tenants::get(conn, &scope, &key)?;
            Ok(TenantUsageReport {
                usage: quotas::usage(conn, &tenant.id)?,
                tenant_id: tenant.id,
                quota: tenant.quota,
            })
        })
        .await?;
    Ok(Json(report))
}
