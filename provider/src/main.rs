//! `terraform-provider-measurelab`: a tfplugin6 provider for measurelab.
//!
//! # Layout
//! - `provider.rs`: the provider block (endpoint, token, ca_cert).
//! - `shared.rs`: the client the provider configures and every type shares.
//! - `access.rs`: plan-time permission checks from `GET /v1/whoami`.
//! - `catalog.rs`: node and appliance lists fetched once per plan for placement checks.
//! - `diagnostics.rs`: every error a user can see, with what to do next.
//! - `resources/<noun>.rs`, `data_sources/<noun>.rs`: one Terraform type per file.
//! - `node_model.rs`, `number.rs`, `labels.rs`, `timeouts.rs`, `wait.rs`, `cancel.rs`: shared pieces.

mod access;
mod cancel;
mod catalog;
mod data_sources;
mod diagnostics;
mod labels;
mod node_model;
mod number;
mod provider;
mod resources;
mod shared;
mod timeouts;
mod wait;
mod wire;

/// Name Terraform knows the provider by; resource types are `measurelab_<noun>`.
const PROVIDER_NAME: &str = "measurelab";

fn main() -> anyhow::Result<()> {
    // tf-provider appends a Rust backtrace to diagnostics whenever these are set
    // (Terraform users then see stack frames in error messages). Cleared before
    // any thread starts, so the change is not racy.
    std::env::remove_var("RUST_BACKTRACE");
    std::env::remove_var("RUST_LIB_BACKTRACE");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let stop = cancel::install()?;
        tf_provider::serve_with_stop(
            PROVIDER_NAME,
            provider::MeasurelabProvider::new(stop.clone()),
            stop,
        )
        .await
    })
}
