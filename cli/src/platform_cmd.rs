//! `measurelab platform show NAME`: the platform and how its gateway stands;
//! `measurelab platform control-key [--rotate]`: the key of a platform's MSCS and
//! measurement points, for calling the MSCS's API
//! (`Authorization: Bearer $(measurelab platform control-key NAME)`).

use clap::{Args, Subcommand};
use measurelab_api::http::Platform;

use crate::api_conn::{runtime, Connection};

#[derive(Debug, Args)]
pub struct PlatformArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: PlatformCommand,
}

#[derive(Debug, Subcommand)]
enum PlatformCommand {
    /// Show the platform: nodes, subnet and its WireGuard gateway (where,
    /// endpoint, and whether it is ready, pending or failed, with the
    /// reason its node gave).
    Show {
        /// Platform name or id.
        platform: String,
    },
    /// Print the platform's control key (64 hex digits, alone on stdout),
    /// the one the controller gives every program of the platform as
    /// MEASURELAB_CONTROL_KEY. Owner or member token; each read is recorded
    /// as an event.
    ///
    /// With --rotate, first replace it by a fresh one and print that: node
    /// agents restart the platform's programs with the new key, and the old
    /// one is refused once they have.
    ControlKey {
        /// Platform name or id.
        platform: String,
        /// Replace the key first (recorded as a PlatformControlKeyRotated event).
        #[arg(long)]
        rotate: bool,
    },
}

pub fn main(args: PlatformArgs) -> anyhow::Result<()> {
    let client = args.connection.client()?;
    runtime()?.block_on(async move {
        match args.command {
            PlatformCommand::Show { platform } => {
                print!("{}", show(&client.get_platform(&platform).await?));
                Ok(())
            }
            PlatformCommand::ControlKey { platform, rotate } => {
                let key = if rotate {
                    client.rotate_platform_control_key(&platform, None).await?
                } else {
                    client.platform_control_key(&platform).await?
                };
                println!("{}", key.control_key);
                Ok(())
            }
        }
    })
}

/// `name: value` lines; the gateway's only when it has one.
fn show(platform: &Platform) -> String {
    let mut text = format!(
        "name: {}\nid: {}\nnodes: {}\nvlan: {}\nsubnet: {}\n",
        platform.name,
        platform.id,
        platform.nodes.join(","),
        platform.vlan_tag,
        platform.subnet
    );
    let Some(spec) = &platform.gateway_spec else {
        text.push_str("gateway: none\n");
        return text;
    };
    text.push_str(&format!(
        "gateway: node {} port {}\ngateway endpoint: {}\ngateway public key: {}\ntunnel network: {}\n",
        spec.node,
        spec.listen_port,
        platform
            .gateway_endpoint
            .as_deref()
            .unwrap_or("- (the node reports no public address)"),
        platform.gateway_public_key.as_deref().unwrap_or("-"),
        platform.tunnel_network.as_deref().unwrap_or("-"),
    ));
    match &platform.gateway_status {
        Some(status) if status.message.is_empty() => {
            text.push_str(&format!("gateway state: {}\n", status.state.as_str()))
        }
        Some(status) => text.push_str(&format!(
            "gateway state: {} ({})\n",
            status.state.as_str(),
            status.message
        )),
        // A controller from before gateway states.
        None => text.push_str("gateway state: unknown\n"),
    }
    text
}

#[cfg(test)]
mod tests {
    use measurelab_api::http::{
        GatewayState, PlatformGatewaySpec, PlatformGatewayStatus, PlatformPowerState,
    };

    use super::*;

    fn platform() -> Platform {
        Platform {
            id: "p-1".into(),
            name: "lab".into(),
            nodes: vec!["n1".into(), "n2".into()],
            admins: Vec::new(),
            description: String::new(),
            vlan_tag: 101,
            subnet: "10.20.1.0/24".into(),
            gateway: None,
            power_state: PlatformPowerState::Running,
            created_at: "2026-12-06T00:00:00Z".into(),
            tenant_id: "t".into(),
            generation: 1,
            flow_monitoring: false,
            gateway_spec: None,
            gateway_endpoint: None,
            gateway_public_key: None,
            tunnel_network: None,
            gateway_status: None,
        }
    }

    #[test]
    fn the_gateway_state_and_the_nodes_reason_are_shown() {
        assert!(show(&platform()).ends_with("gateway: none\n"));
        let mut with_gateway = platform();
        with_gateway.gateway_spec = Some(PlatformGatewaySpec {
            node: "n1".into(),
            listen_port: 51820,
        });
        with_gateway.gateway_endpoint = Some("198.51.100.11:51820".into());
        with_gateway.gateway_status = Some(PlatformGatewayStatus {
            state: GatewayState::Failed,
            message: "listen port 51820 is already in use on this node".into(),
        });
        let text = show(&with_gateway);
        assert!(
            text.contains("gateway: node n1 port 51820\ngateway endpoint: 198.51.100.11:51820\n")
                && text.ends_with(
                    "gateway state: failed (listen port 51820 is already in use on this node)\n"
                ),
            "{text}"
        );
        with_gateway.gateway_status = Some(PlatformGatewayStatus {
            state: GatewayState::Ready,
            message: String::new(),
        });
        assert!(show(&with_gateway).ends_with("gateway state: ready\n"));
    }
}
