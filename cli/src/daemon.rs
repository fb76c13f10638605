//! What the long-running subcommands (`controller`, `agent`) share: console
//! logging and waiting for the signal that stops them. A leaf, so those
//! subcommands need nothing from `main.rs`.

/// Wait for SIGTERM or Ctrl-C.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        // Without a SIGTERM handler Ctrl-C still works; SIGTERM then kills
        // the process the default way.
        Err(e) => {
            tracing::warn!(error = %e, "cannot install a SIGTERM handler");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutdown requested");
}

/// Console logging to stderr, filtered by RUST_LOG (default info).
pub(crate) fn console_layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use std::io::IsTerminal;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Lab daemons log to files; colour codes would only clutter them.
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(filter)
}
