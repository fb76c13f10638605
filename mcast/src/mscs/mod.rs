//! The measurement statistics control server (MSCS).
//!
//! It knows its points, runs the periodic round-robin schedule (each run takes the next
//! point as the source and all others as receivers) and submitted tasks, one run at a
//! time, aggregates every run into a [`ResultDocument`](crate::result::ResultDocument),
//! persists schedule position and results atomically ([`state`]), serves them over HTTP
//! ([`api`]) and optionally POSTs each result to a configured URL.
//!
//! Runs are serialised because they share the probe group and port: two concurrent
//! sources on one group would each see the other as foreign sessions and load the same
//! links, which is what is being measured.

pub mod api;
mod engine;
pub mod point_report;
pub mod registry;
pub mod runner;
pub mod state;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tracing::{info, warn};

pub use engine::{
    ApiLimits, CurrentRun, Mscs, MscsConfig, MscsError, PeriodicSchedule, PlatformConfig,
    ProbeDefaults, RegistrationConfig, TaskError,
};
pub use runner::PointEndpoint;

use crate::platform::PlatformClient;

/// Runs the MSCS (scheduler + HTTP API on `listener`) until `shutdown` completes.
pub async fn run(
    config: MscsConfig,
    listener: std::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MscsError> {
    let mscs = Mscs::open(config)?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let scheduler = {
        let mscs = mscs.clone();
        let stop_rx = stop_rx.clone();
        tokio::spawn(async move { mscs.run_scheduler(stop_rx).await })
    };
    let mut platform_loops = Vec::new();
    if let Some(platform) = mscs.config().platform.clone() {
        // Validated in Mscs::open, so this cannot fail here.
        let client =
            PlatformClient::new(&platform.api_url).map_err(|err| MscsError::InvalidConfig {
                field: "platform_api",
                reason: err.to_string(),
            })?;
        info!(api = %platform.api_url, "taking tasks from the platform API");
        let (poller, outbox) = (mscs.clone(), mscs.clone());
        let (poll_client, poll_stop, outbox_stop) =
            (client.clone(), stop_rx.clone(), stop_rx.clone());
        platform_loops.push(tokio::spawn(async move {
            poller
                .run_platform_poll(poll_client, platform.poll_interval, poll_stop)
                .await
        }));
        let (reporter, report_client, report_stop) =
            (mscs.clone(), client.clone(), stop_rx.clone());
        platform_loops.push(tokio::spawn(async move {
            outbox.run_outbox(client, outbox_stop).await
        }));
        platform_loops.push(tokio::spawn(point_report::run(
            reporter,
            report_client,
            report_stop,
        )));
    }
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let limits = mscs.config().api_limits;
    serve_api(listener, api::router(mscs), limits, stop_rx).await;
    let _ = scheduler.await;
    for platform_loop in platform_loops {
        let _ = platform_loop.await;
    }
    Ok(())
}

/// Serves `router` on `listener` until `stop` turns true, within `limits`: axum::serve
/// has no connection cap and no header-read timeout, so one peer on the service network
/// could hold every socket or dribble headers forever.
pub async fn serve_api(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    limits: ApiLimits,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors and the like: pause instead of spinning.
                    warn!(cause = %err, "MSCS API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = async { let _ = stop.wait_for(|stop| *stop).await; } => return,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            warn!(%peer, max = limits.max_connections, "MSCS API connection refused: too many open");
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone().layer(
            axum::middleware::from_fn(move |request, next: axum::middleware::Next| {
                request_with_timeout(request, next, limits.request_timeout)
            }),
        ));
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(err) = served {
                        tracing::debug!(%peer, cause = %err, "MSCS API connection ended");
                    }
                }
                _ = async { let _ = stop.wait_for(|stop| *stop).await; } => {
                    // Finish the request in flight, then close.
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}

async fn request_with_timeout(
    request: axum::extract::Request,
    next: axum::middleware::Next,
    within: Duration,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tokio::time::timeout(within, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (
            axum::http::StatusCode::REQUEST_TIMEOUT,
            axum::Json(serde_json::json!({"error": {
                "code": "request_timeout",
                "message": format!("request not completed within {within:?}"),
                "field": null,
            }})),
        )
            .into_response(),
    }
}
