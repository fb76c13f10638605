//! `measurelab node ...` and `measurelab join-token ...`: the operator's side
//! of node identity, spoken to the controller's HTTP API with the operator
//! (admin) token.

use clap::{Args, Subcommand};
use measurelab_api::http::{JoinTokenCreate, NodeStatus};

use crate::api_conn::{runtime, Connection};

#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: NodeCommand,
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// List registered nodes with their operator and reported labels.
    List,
    /// List refused registrations under existing node names, waiting for approval.
    Pending,
    /// Let the node's pending registration through (it gets a new secret).
    Approve {
        /// Node name or id.
        node: String,
    },
    /// Refuse the node's heartbeats and calls from now on.
    Revoke {
        /// Node name or id.
        node: String,
    },
    /// Refuse the node's current certificate (and any older unexpired one)
    /// from now on, without revoking the node; its agent gets a new one by
    /// registering again (restart it, or give it a new join token).
    RevokeCertificate {
        /// Node name or id.
        node: String,
    },
    /// Forget the node (refused while VMs are placed on it).
    Delete {
        /// Node name or id.
        node: String,
    },
}

#[derive(Debug, Args)]
pub struct JoinTokenArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: JoinTokenCommand,
}

#[derive(Debug, Subcommand)]
enum JoinTokenCommand {
    /// Make a join token; prints it once.
    Create {
        /// Only a node of this name may register with it.
        #[arg(long)]
        node: Option<String>,
        /// The first successful registration consumes it.
        #[arg(long)]
        single_use: bool,
        /// Lifetime in seconds.
        #[arg(long, conflicts_with = "expires_at")]
        ttl: Option<u64>,
        /// Expiry as an RFC 3339 time.
        #[arg(long)]
        expires_at: Option<String>,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List join tokens made through the API.
    List,
    /// Revoke a join token.
    Revoke {
        /// Token id.
        id: String,
    },
}

fn or_dash(value: Option<&str>) -> &str {
    value.filter(|v| !v.is_empty()).unwrap_or("-")
}

fn labels(labels: &std::collections::BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn main(args: NodeArgs) -> anyhow::Result<()> {
    let client = args.connection.client()?;
    runtime()?.block_on(async move {
        match args.command {
            NodeCommand::List => {
                println!("{:<20} {:<8} {:<30} REPORTED", "NAME", "STATUS", "LABELS");
                for node in client.list_nodes().await? {
                    let status = match node.status {
                        NodeStatus::Online => "online",
                        NodeStatus::Offline => "offline",
                        NodeStatus::Revoked => "revoked",
                    };
                    println!(
                        "{:<20} {:<8} {:<30} {}",
                        node.name,
                        status,
                        labels(&node.labels),
                        labels(&node.reported_labels)
                    );
                }
            }
            NodeCommand::Pending => {
                let requests = client.registration_requests().await?;
                if requests.is_empty() {
                    println!("no pending registrations");
                }
                for r in requests {
                    println!(
                        "{} (node {}): {} attempt(s), reason {}, last {} from {} (management address {}, agent {}){}",
                        r.name,
                        r.node_id,
                        r.attempts,
                        r.reason,
                        r.last_attempt_at,
                        or_dash(Some(&r.peer_address)),
                        or_dash(Some(&r.management_address)),
                        or_dash(Some(&r.agent_version)),
                        match &r.approved_at {
                            Some(at) => format!(", approved {at}"),
                            None => String::new(),
                        }
                    );
                }
            }
            NodeCommand::Approve { node } => {
                let r = client.approve_node(&node).await?;
                println!(
                    "approved: the next registration of {} ({} refused so far) gets a new secret",
                    r.name, r.attempts
                );
            }
            NodeCommand::Revoke { node } => {
                let n = client.revoke_node(&node).await?;
                println!("revoked node {} ({})", n.name, n.id);
            }
            NodeCommand::RevokeCertificate { node } => {
                let n = client.revoke_node_certificate(&node).await?;
                println!(
                    "revoked the certificates of node {} ({}); it gets a new one when it registers again",
                    n.name, n.id
                );
            }
            NodeCommand::Delete { node } => {
                let n = client.delete_node(&node).await?;
                println!("deleted node {} ({})", n.name, n.id);
            }
        }
        Ok(())
    })
}

pub fn join_token_main(args: JoinTokenArgs) -> anyhow::Result<()> {
    let client = args.connection.client()?;
    runtime()?.block_on(async move {
        match args.command {
            JoinTokenCommand::Create {
                node,
                single_use,
                ttl,
                expires_at,
                description,
            } => {
                let created = client
                    .create_join_token(&JoinTokenCreate {
                        description,
                        node_name: node,
                        single_use,
                        expires_at,
                        ttl_seconds: ttl,
                    })
                    .await?;
                eprintln!(
                    "join token {} created; it is shown only now:",
                    created.join_token.id
                );
                println!("{}", created.secret);
            }
            JoinTokenCommand::List => {
                println!(
                    "{:<36} {:<8} {:<16} {:<6} {:<20} DESCRIPTION",
                    "ID", "STATE", "NODE", "ONCE", "EXPIRES"
                );
                for t in client.list_join_tokens().await? {
                    println!(
                        "{:<36} {:<8} {:<16} {:<6} {:<20} {}",
                        t.id,
                        serde_json::to_value(t.state)?.as_str().unwrap_or("-"),
                        or_dash(t.node_name.as_deref()),
                        if t.single_use { "yes" } else { "no" },
                        or_dash(t.expires_at.as_deref()),
                        t.description
                    );
                }
            }
            JoinTokenCommand::Revoke { id } => {
                let t = client.revoke_join_token(&id).await?;
                println!("revoked join token {}", t.id);
            }
        }
        Ok(())
    })
}
