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
use tokio::sync::watch;
use tracing::info;

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
/// could hold every socket or dribble headers forever. The accept loop is the
/// workspace's shared one (`measurelab-httpserve`), also used by the controller.
pub async fn serve_api(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    limits: ApiLimits,
    mut stop: watch::Receiver<bool>,
) {
    let limits = measurelab_httpserve::Limits {
        max_connections: limits.max_connections,
        // The service network is the MSCS's own: the overall cap is the bound.
        max_connections_per_source: limits.max_connections,
        header_read_timeout: limits.header_read_timeout,
        // As before: a connection has header_read_timeout from going idle to
        // a complete head.
        idle_timeout: limits.header_read_timeout,
        request_timeout: limits.request_timeout,
    };
    measurelab_httpserve::serve(
        listener,
        measurelab_httpserve::plain,
        router,
        limits,
        async move {
            let _ = stop.wait_for(|stop| *stop).await;
        },
    )
    .await;
}
