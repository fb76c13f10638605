//! `GET /v1/vms/{id_or_name}/usage`: a VM's guest usage series (CPU, memory,
//! disk, network), from what its guest agent reported with its heartbeats.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::Json;
use measurelab_api::http::VmUsage;
use time::OffsetDateTime;

use super::error::ApiError;
use super::extract::{key, QueryParams};
use super::results::time_param;
use super::state::AppState;
use crate::access::Principal;
use crate::store::{vm_usage, vms};

/// Without `since`, the last hour.
const DEFAULT_WINDOW: time::Duration = time::Duration::hours(1);
/// Without `step`, the range is cut into about this many samples.
const DEFAULT_SAMPLES: i64 = 360;
/// A longer answer needs a coarser `step`.
const MAX_SAMPLES: i64 = 10_000;
const MAX_STEP_SECONDS: i64 = 86_400;

/// The default step: the stored grid, or coarser so the range holds about
/// [`DEFAULT_SAMPLES`], rounded up to whole grid steps.
fn default_step(range_seconds: i64) -> i64 {
    let grid = vm_usage::SAMPLE_STEP_SECONDS;
    let wanted = (range_seconds + DEFAULT_SAMPLES - 1) / DEFAULT_SAMPLES;
    ((wanted + grid - 1) / grid * grid).clamp(grid, MAX_STEP_SECONDS)
}

pub(crate) async fn get(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Json<VmUsage>, ApiError> {
    let key = key(path)?;
    query.only(&["since", "until", "step"])?;
    let until = time_param(&query, "until")?.unwrap_or_else(OffsetDateTime::now_utc);
    let since = time_param(&query, "since")?.unwrap_or(until - DEFAULT_WINDOW);
    if since >= until {
        return Err(ApiError::InvalidField {
            field: "until".into(),
            reason: "must be later than since".into(),
        });
    }
    let (since, until) = (since.unix_timestamp(), until.unix_timestamp());
    let range = (until - since).max(1);
    let step = query.int(
        "step",
        default_step(range),
        vm_usage::SAMPLE_STEP_SECONDS,
        MAX_STEP_SECONDS,
    )?;
    if range / step > MAX_SAMPLES {
        return Err(ApiError::InvalidField {
            field: "step".into(),
            reason: format!(
                "{step} s makes {} samples over the range; at most {MAX_SAMPLES}: use a step of at least {} s",
                range / step,
                (range + MAX_SAMPLES - 1) / MAX_SAMPLES
            ),
        });
    }
    // The same tenant-scoped lookup as every VM route: another tenant's VM
    // is not found, so its usage is never read.
    let scope = principal.scope();
    let (vm_id, rows) = state
        .store()
        .resources()
        .read(move |conn, _| {
            let vm = vms::get(conn, &scope, &key)?;
            // Whole output steps: the first one starts at or before `since`.
            let first = since.div_euclid(step) * step;
            let rows = vm_usage::samples(conn, &vm.id, first, until)?;
            Ok((vm.id, rows))
        })
        .await?;
    Ok(Json(VmUsage {
        vm_id,
        step_seconds: step as u32,
        samples: vm_usage::downsample(&rows, step),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_step_follows_the_range_on_the_grid() {
        assert_eq!(default_step(60), 10);
        assert_eq!(default_step(3600), 10);
        assert_eq!(default_step(86_400), 240);
        assert_eq!(default_step(7 * 86_400), 1680);
        assert_eq!(default_step(i64::from(u32::MAX)), MAX_STEP_SECONDS);
    }
}
