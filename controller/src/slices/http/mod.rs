//! `/v1` handlers of the wave-2 resources and their routes.

mod appliances;
mod platforms;
mod programs;
mod qos_policies;
mod respond;
mod results;
mod tasks;
mod vms;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, MethodRouter};

use crate::api::AppState;
use crate::slices::store::programs::MAX_PROGRAM_BYTES;
use crate::slices::store::tasks::MAX_DOCUMENT_BYTES;

/// Routes under the admin bearer token. Paths use axum's `:param` syntax.
pub(crate) fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        (
            "/v1/platforms",
            get(platforms::list).post(platforms::create),
        ),
        (
            "/v1/platforms/:id_or_name",
            get(platforms::get)
                .patch(platforms::patch)
                .delete(platforms::delete),
        ),
        ("/v1/platforms/:id_or_name/start", post(platforms::start)),
        ("/v1/platforms/:id_or_name/pause", post(platforms::pause)),
        (
            "/v1/qos_policies",
            get(qos_policies::list).post(qos_policies::create),
        ),
        (
            "/v1/qos_policies/:id_or_name",
            get(qos_policies::get)
                .patch(qos_policies::patch)
                .delete(qos_policies::delete),
        ),
        (
            "/v1/appliances",
            get(appliances::list).post(appliances::create),
        ),
        ("/v1/appliances/:id_or_name", get(appliances::get)),
        ("/v1/vms", get(vms::list).post(vms::create)),
        (
            "/v1/vms/:id_or_name",
            get(vms::get).patch(vms::patch).delete(vms::delete),
        ),
        ("/v1/vms/:id_or_name/logs", get(vms::logs)),
        (
            "/v1/programs",
            get(programs::list)
                .post(programs::create)
                // base64 inflates by 4/3; leave room for the JSON around it.
                .layer(DefaultBodyLimit::max(MAX_PROGRAM_BYTES / 3 * 4 + 64 * 1024)),
        ),
        (
            "/v1/programs/:id_or_name",
            get(programs::get).delete(programs::delete),
        ),
        (
            "/v1/deployments",
            get(programs::list_deployments).post(programs::create_deployment),
        ),
        (
            "/v1/deployments/:id_or_name",
            get(programs::get_deployment).delete(programs::delete_deployment),
        ),
        ("/v1/tasks", get(tasks::list).post(tasks::create)),
        (
            "/v1/tasks/:id_or_name",
            get(tasks::get).delete(tasks::delete),
        ),
        (
            "/v1/results",
            get(results::list)
                .post(results::create)
                .layer(DefaultBodyLimit::max(MAX_DOCUMENT_BYTES + 1)),
        ),
        ("/v1/results/latest", get(results::latest)),
        ("/v1/results/export", get(results::export)),
    ]
}
