//! `measurelab`: one binary for the controller, the node agent and the local
//! lab. The binary only parses flags, binds sockets and sets up logging; the
//! work happens in `measurelab-controller` and `measurelab-agent`.

use clap::{Parser, Subcommand};

mod access_cmd;
mod agent_cmd;
mod api_conn;
mod controller_cmd;
mod daemon;
mod deployment_cmd;
mod lab;
mod landing;
mod node_cmd;
mod platform_cmd;
mod tfrc;
mod tunnel_cmd;
mod vm_cmd;

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
    // Boxed, like the agent's: their many flags make them far larger than
    // the other commands.
    Controller(Box<controller_cmd::ControllerArgs>),
    /// Run a node agent.
    Agent(Box<agent_cmd::AgentArgs>),
    /// Manage a local lab of namespaces, OVS switches, a controller and agents.
    Lab(lab::LabArgs),
    /// Create, list and revoke API tokens.
    Token(access_cmd::TokenArgs),
    /// Create, list and delete tenants (operator).
    Tenant(access_cmd::TenantArgs),
    /// Operator: list, approve, revoke and delete nodes.
    Node(node_cmd::NodeArgs),
    /// Operator: make, list and revoke join tokens.
    JoinToken(node_cmd::JoinTokenArgs),
    /// Operator: print a join bundle (endpoint, CA fingerprint, join token)
    /// for `measurelab agent --join-bundle`.
    JoinBundle(controller_cmd::JoinBundleArgs),
    /// Run commands in a VM and copy files in and out (tenant token).
    Vm(vm_cmd::VmArgs),
    /// List and download a deployment's output files (tenant token).
    Deployment(deployment_cmd::DeploymentArgs),
    /// A WireGuard tunnel to a platform gateway, in userspace (no kernel
    /// module, no `wg` tools): up from a wg-quick file, down.
    Tunnel(tunnel_cmd::TunnelArgs),
    /// Show a platform and its gateway state; read its control key (tenant token).
    Platform(platform_cmd::PlatformArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let code = run(cli.command);
    api_conn::print_controller_warnings();
    code
}

fn run(command: Command) -> std::process::ExitCode {
    let result = match command {
        // Exits with the remote command's code, not just success/failure.
        Command::Vm(args) => return vm_cmd::main(args),
        Command::Controller(args) => controller_cmd::main(*args),
        Command::Agent(args) => agent_cmd::main(*args),
        Command::Lab(args) => lab::main(args),
        Command::Token(args) => access_cmd::token_main(args),
        Command::Tenant(args) => access_cmd::tenant_main(args),
        Command::Node(args) => node_cmd::main(args),
        Command::JoinToken(args) => node_cmd::join_token_main(args),
        Command::JoinBundle(args) => controller_cmd::join_bundle_main(args),
        Command::Deployment(args) => deployment_cmd::main(args),
        Command::Tunnel(args) => tunnel_cmd::main(args),
        Command::Platform(args) => platform_cmd::main(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
