//! `measurelab platform control-key [--rotate]`: the key of a platform's MSCS and
//! measurement points, for calling the MSCS's API
//! (`Authorization: Bearer $(measurelab platform control-key NAME)`).

use clap::{Args, Subcommand};

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
