//! Process-wide "stop" signal for long waits.
//!
//! Two things cancel it. `StopProvider`, which Terraform sends on Ctrl-C:
//! the vendored tf-provider (`serve_with_stop`, see provider/vendor) cancels
//! this token before it shuts its server down. And SIGINT itself: Terraform
//! plugins share Terraform's process group, so Ctrl-C in a terminal reaches
//! this process too. Like every go-plugin provider, the plugin does not die
//! on SIGINT; it turns the signal into cancellation of in-flight waits,
//! returns a clear diagnostic without writing state, and lets Terraform shut
//! it down. SIGTERM keeps its default meaning (exit now).
//!
//! A wait also ends when Terraform drops the RPC (tonic drops the handler
//! future), which needs nothing from us beyond keeping waits cancel-safe.

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Start listening for SIGINT; returns the token it cancels.
/// Must be called inside the tokio runtime.
pub fn install() -> std::io::Result<CancellationToken> {
    let token = CancellationToken::new();
    let mut interrupt = signal(SignalKind::interrupt())?;
    let on_signal = token.clone();
    tokio::spawn(async move {
        if interrupt.recv().await.is_some() {
            on_signal.cancel();
        }
    });
    Ok(token)
}
