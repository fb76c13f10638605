//! `measurelab`: one binary for the controller, the node agent and the local
//! lab. The binary only parses flags, binds sockets and sets up logging; the
//! work happens in `measurelab-controller` and `measurelab-agent`.

use clap::{Parser, Subcommand};

mod agent_cmd;
mod controller_cmd;
mod lab;
mod tfrc;

#[derive(Debug, Parser)]
#[command(
    name = "measurelab",
    version,
    about = "Virtualization-based network measurement platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controller (physical platform server).
    Controller(controller_cmd::ControllerArgs),
    /// Run a node agent.
    Agent(agent_cmd::AgentArgs),
    /// Manage a local lab of namespaces, OVS switches, a controller and agents.
    Lab(lab::LabArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Controller(args) => controller_cmd::main(args),
        Command::Agent(args) => agent_cmd::main(args),
        Command::Lab(args) => lab::main(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

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
