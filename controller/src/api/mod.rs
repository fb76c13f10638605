//! Public HTTP/JSON API (`/v1`), health check and the admin page.
//!
//! Handlers only translate HTTP into store calls; every failure leaves
//! through [`ApiError`], so all 4xx/5xx bodies have one shape.

mod admin_page;
mod appliances;
mod auth;
mod change;
mod client_version;
mod error;
mod exec;
mod extract;
mod field_validation;
mod flows;
mod idempotency;
mod join_tokens;
mod metrics_endpoint;
mod nodes;
mod outputs;
mod page;
mod peers;
mod platforms;
mod programs;
mod qos_policies;
pub(crate) mod rate_limit;
mod results;
mod scoped;
mod security_headers;
mod state;
mod tasks;
mod tenants;
mod tokens;
mod usage;
mod vm_usage;
mod vms;

use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::{header, Method, Uri};
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::{get, post, put, MethodRouter};
use axum::{Json, Router};

pub use error::ApiError;
use extract::MAX_BODY_BYTES;
pub(crate) use state::AppState;
pub use state::{
    DEFAULT_EXPORT_MAX_BYTES, DEFAULT_MAX_CONCURRENT_UPLOADS, DEFAULT_RESULTS_PAGE_MAX_BYTES,
};

use crate::store::programs::MAX_PROGRAM_BYTES;
use crate::store::tasks::MAX_DOCUMENT_BYTES;

/// Routes served without authentication. Paths use axum's `:param` syntax.
fn public_routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![("/", get(admin_page::serve)), ("/healthz", get(healthz))]
}

/// Routes that need a bearer token (admin.token or an API token).
fn v1_routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/v1/openapi.json", get(openapi)),
        ("/metrics", get(metrics_endpoint::serve)),
        ("/v1/whoami", get(tenants::whoami)),
        ("/v1/tenants", get(tenants::list).post(tenants::create)),
        (
            "/v1/tenants/:id_or_name",
            get(tenants::get)
                .patch(tenants::patch)
                .delete(tenants::delete),
        ),
        ("/v1/tenants/:id_or_name/usage", get(usage::get)),
        ("/v1/tokens", get(tokens::list).post(tokens::create)),
        (
            "/v1/tokens/:id_or_name",
            get(tokens::get).delete(tokens::delete),
        ),
        ("/v1/nodes", get(nodes::list)),
        (
            "/v1/nodes/:id_or_name",
            get(nodes::get).patch(nodes::patch).delete(nodes::delete),
        ),
        ("/v1/nodes/:id_or_name/logs", get(nodes::logs)),
        ("/v1/nodes/:id_or_name/approve", post(nodes::approve)),
        ("/v1/nodes/:id_or_name/revoke", post(nodes::revoke)),
        (
            "/v1/nodes/:id_or_name/certificate/revoke",
            post(nodes::revoke_certificate),
        ),
        (
            "/v1/registration_requests",
            get(nodes::registration_requests),
        ),
        (
            "/v1/join_tokens",
            get(join_tokens::list).post(join_tokens::create),
        ),
        (
            "/v1/join_tokens/:id",
            get(join_tokens::get).delete(join_tokens::revoke),
        ),
        ("/v1/events", get(nodes::events)),
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
        ("/v1/platforms/:id_or_name/flows", get(flows::list)),
        ("/v1/platforms/:id_or_name/points", get(platforms::points)),
        (
            "/v1/platforms/:id_or_name/peers",
            get(peers::list).post(peers::create),
        ),
        (
            "/v1/platforms/:id_or_name/peers/:peer",
            get(peers::get).delete(peers::delete),
        ),
        (
            "/v1/platforms/:id_or_name/control-key",
            get(platforms::control_key),
        ),
        (
            "/v1/platforms/:id_or_name/control-key/rotate",
            post(platforms::rotate_control_key),
        ),
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
        (
            "/v1/appliances/:id_or_name",
            get(appliances::get).delete(appliances::delete),
        ),
        (
            "/v1/appliance_files/:sha256",
            // The handler streams the body and enforces its own limit.
            put(appliances::upload_file)
                .layer(DefaultBodyLimit::disable())
                .layer(middleware::from_fn(lift_request_timeout)),
        ),
        ("/v1/vms", get(vms::list).post(vms::create)),
        (
            "/v1/vms/:id_or_name",
            get(vms::get).patch(vms::patch).delete(vms::delete),
        ),
        ("/v1/vms/:id_or_name/logs", get(vms::logs)),
        (
            "/v1/vms/:id_or_name/exec",
            // Upgraded to a stream; the stream has its own bounds.
            post(exec::exec),
        ),
        ("/v1/vms/:id_or_name/usage", get(vm_usage::get)),
        (
            "/v1/programs",
            get(programs::list)
                .post(programs::create.layer(middleware::from_fn(lift_request_timeout)))
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
            get(programs::get_deployment)
                .patch(programs::patch_deployment)
                .delete(programs::delete_deployment),
        ),
        ("/v1/deployments/:id_or_name/outputs", get(outputs::list)),
        (
            "/v1/deployments/:id_or_name/outputs/:output",
            // Streams the file: bounded by progress (the idle timeout), not
            // by the request timeout.
            get(outputs::download).layer(middleware::from_fn(lift_request_timeout)),
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

/// Every path the router serves, for the OpenAPI completeness test.
#[cfg(test)]
pub(crate) fn served_paths() -> Vec<&'static str> {
    public_routes()
        .into_iter()
        .chain(v1_routes())
        .map(|(path, _)| path)
        .collect()
}

pub(crate) fn router(state: AppState) -> Router {
    let mut v1 = Router::new();
    for (path, route) in v1_routes() {
        v1 = v1.route(path, route.fallback(method_not_allowed));
    }
    // Outermost first: a rate-limited request costs no token lookup, and an
    // anonymous caller learns nothing about field validation or the
    // controller's version.
    let v1 = v1
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            client_version::warn_skewed,
        ))
        .route_layer(middleware::from_fn(field_validation::scope))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .route_layer(middleware::from_fn_with_state(state.clone(), rate_limited));
    let mut app = Router::new();
    for (path, route) in public_routes() {
        app = app.route(path, route.fallback(method_not_allowed));
    }
    app.merge(v1)
        .fallback(no_route)
        // Layered on the router, so each route's MatchedPath is known.
        .layer(middleware::from_fn_with_state(
            state.metrics().clone(),
            crate::metrics::observe_http,
        ))
        .layer(middleware::map_response(security_headers::add))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Middleware: spend a token of the request's source and bearer token.
async fn rate_limited(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Result<axum::response::Response, ApiError> {
    if let Some(limiter) = state.rate_limiter() {
        if forwarded_by_a_replica(&state, &request) {
            // Charged at the replica the client reached; charged again
            // here, it would be to that replica's address, which all its
            // forwarded clients share.
            return Ok(next.run(request).await);
        }
        // Absent only when the router is served without the bounded
        // listener (unit tests): then only the token is limited.
        let source = request
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|axum::extract::ConnectInfo(peer)| peer.ip());
        let token = request
            .headers()
            .get(header::AUTHORIZATION)
            .map(|value| value.as_bytes());
        limiter.check(source, token)?;
    }
    Ok(next.run(request).await)
}

/// Whether `request` carries another replica's proof that it forwarded it
/// (`forward_proof`).
fn forwarded_by_a_replica(state: &AppState, request: &axum::extract::Request) -> bool {
    let (Some(key), Some(mark)) = (
        state.exec_forwarder().key(),
        request.headers().get(crate::exec_forward::FORWARDED_HEADER),
    ) else {
        return false;
    };
    let path_and_query = request.uri().path_and_query().map_or("", |p| p.as_str());
    let proven = key.verifies(
        mark,
        request.method(),
        path_and_query,
        request.headers(),
        std::time::SystemTime::now(),
    );
    if !proven {
        tracing::debug!(path = request.uri().path(), "a request marked as forwarded carries no valid replica proof; rate-limited as any other");
    }
    proven
}

/// Uploads (appliance images up to 16 GiB, programs up to 64 MiB) take as
/// long as the link needs: they are bounded by progress (the listener's idle
/// timeout between bytes) instead of the request timeout.
async fn lift_request_timeout(
    request: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    // Absent only when the router is served without the bounded listener
    // (unit tests).
    if let Some(timeout) = request
        .extensions()
        .get::<measurelab_httpserve::RequestTimeout>()
    {
        timeout.lift();
    }
    next.run(request).await
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::json(),
    )
}

async fn no_route(uri: Uri) -> ApiError {
    ApiError::NoRoute(uri.path().to_string())
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    /// `/v1/nodes/:id_or_name` -> `/v1/nodes/{id_or_name}` (OpenAPI syntax).
    fn openapi_path(axum_path: &str) -> String {
        axum_path
            .split('/')
            .map(|segment| match segment.strip_prefix(':') {
                Some(param) => format!("{{{param}}}"),
                None => segment.to_string(),
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    const METHODS: &[&str] = &["GET", "PUT", "POST", "PATCH", "DELETE"];

    /// Start the real router and ask it, path by path and method by method,
    /// what it serves; every served (path, method) must be documented and
    /// every documented one must be served.
    #[tokio::test]
    async fn every_served_route_is_in_the_openapi_document() {
        let doc: serde_json::Value = serde_json::from_str(crate::openapi::json()).unwrap();
        let documented = doc["paths"].as_object().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = Store::open(dir.path(), true).unwrap();
        let app = router(AppState::new(store.clone(), "tok".into()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let client = reqwest::Client::new();

        let served = served_paths();
        for path in &served {
            let doc_path = openapi_path(path);
            let Some(doc_ops) = documented.get(&doc_path) else {
                panic!("route {path} is served but {doc_path} is not in openapi.json");
            };
            let concrete = path.replace(":id_or_name", "no-such-node");
            for method in METHODS {
                let response = client
                    .request(method.parse().unwrap(), format!("http://{addr}{concrete}"))
                    .bearer_auth("tok")
                    .header("content-type", "application/json")
                    .body("{\"labels\":{}}")
                    .send()
                    .await
                    .unwrap();
                let is_served = response.status() != 405;
                let is_documented = doc_ops.get(method.to_lowercase()).is_some();
                assert_eq!(
                    is_served, is_documented,
                    "{method} {path}: served={is_served}, documented={is_documented}"
                );
            }
        }
        for doc_path in documented.keys() {
            assert!(
                served.iter().any(|p| &openapi_path(p) == doc_path),
                "{doc_path} is documented but not served"
            );
        }
        server.abort();
        store.stop_writer().await;
        writer.join().await;
    }

    #[test]
    fn openapi_document_references_resolve() {
        let text = crate::openapi::json();
        let doc: serde_json::Value = serde_json::from_str(text).unwrap();
        for (index, _) in text.match_indices("\"$ref\": \"#/components/") {
            let rest = &text[index + "\"$ref\": \"#/".len()..];
            let reference = &rest[..rest.find('"').unwrap()];
            let mut node = &doc;
            for segment in reference.split('/') {
                node = &node[segment];
            }
            assert!(!node.is_null(), "unresolved $ref #/{reference}");
        }
    }
}
