//! `measurelab token ...` and `measurelab tenant ...`: API tokens and
//! tenants over the HTTP API (MEASURELAB_ENDPOINT, MEASURELAB_TOKEN), like
//! the Terraform provider.

use anyhow::bail;
use clap::{Args, Subcommand};
use measurelab_api::http::{ApiToken, ApiTokenCreate, Quota, Role, TenantCreate};

use crate::api_conn::{runtime, Connection};

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token; prints its secret, which is shown only this once.
    Create {
        /// Name, for people and error messages.
        name: String,
        /// operator, owner, member, viewer, or metrics (reads GET /metrics only: for Prometheus).
        #[arg(long, default_value = "member", value_parser = parse_role)]
        role: Role,
        /// Tenant id or name (required unless --role operator or metrics; an owner's default is its own).
        #[arg(long)]
        tenant: Option<String>,
        /// Lifetime in seconds (default: no expiry).
        #[arg(long)]
        ttl_seconds: Option<u64>,
    },
    /// List the tokens the caller may see.
    List,
    /// Revoke a token (by id); it is refused from then on.
    Revoke {
        /// Token id.
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct TenantArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: TenantCommand,
}

#[derive(Debug, Subcommand)]
enum TenantCommand {
    /// Create a tenant (operator).
    Create {
        /// Name (DNS label).
        name: String,
        /// Free text.
        #[arg(long)]
        description: Option<String>,
        /// Most platforms the tenant may have.
        #[arg(long)]
        max_platforms: Option<u64>,
        /// Most VMs.
        #[arg(long)]
        max_vms: Option<u64>,
        /// Most vCPUs over all its VMs.
        #[arg(long)]
        max_vcpus: Option<u64>,
        /// Most memory over all its VMs, MiB.
        #[arg(long)]
        max_memory_mib: Option<u64>,
        /// Most QoS bandwidth over all its VMs, kbit/s.
        #[arg(long)]
        max_bandwidth_kbps: Option<u64>,
        /// Most bytes of uploaded programs.
        #[arg(long)]
        max_program_bytes: Option<u64>,
    },
    /// List tenants (the operator sees all, a tenant token its own).
    List,
    /// Delete a tenant that owns nothing, with its tokens (operator).
    Delete {
        /// Tenant id or name.
        tenant: String,
    },
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text)
        .ok_or_else(|| format!("{text:?} is not one of operator, owner, member, viewer, metrics"))
}

fn token_line(token: &ApiToken) -> String {
    let state = match (&token.revoked_at, &token.expires_at) {
        (Some(at), _) => format!("revoked {at}"),
        (None, Some(at)) => format!("expires {at}"),
        (None, None) => "no expiry".into(),
    };
    format!(
        "{}\t{}\t{}\t{}\t{}\tlast used {}",
        token.id,
        token.name,
        token.role.as_str(),
        token.tenant_id.as_deref().unwrap_or("-"),
        state,
        token.last_used_at.as_deref().unwrap_or("never")
    )
}

pub fn token_main(args: TokenArgs) -> anyhow::Result<()> {
    let client = args.connection.client()?;
    runtime()?.block_on(async move {
        match args.command {
            TokenCommand::Create {
                name,
                role,
                tenant,
                ttl_seconds,
            } => {
                let created = client
                    .create_token(&ApiTokenCreate {
                        name,
                        role,
                        tenant,
                        expires_at: None,
                        ttl_seconds,
                        request_id: None,
                    })
                    .await?;
                if created.secret.is_empty() {
                    bail!("the controller returned no secret for token {}", created.id);
                }
                eprintln!(
                    "token {} ({}) created; the secret below is shown only now:",
                    created.id,
                    created.role.as_str()
                );
                println!("{}", created.secret);
            }
            TokenCommand::List => {
                for token in client.list_tokens().await? {
                    println!("{}", token_line(&token));
                }
            }
            TokenCommand::Revoke { id } => {
                let token = client.revoke_token(&id).await?;
                println!("{}", token_line(&token));
            }
        }
        Ok(())
    })
}

pub fn tenant_main(args: TenantArgs) -> anyhow::Result<()> {
    let client = args.connection.client()?;
    runtime()?.block_on(async move {
        match args.command {
            TenantCommand::Create {
                name,
                description,
                max_platforms,
                max_vms,
                max_vcpus,
                max_memory_mib,
                max_bandwidth_kbps,
                max_program_bytes,
            } => {
                let tenant = client
                    .create_tenant(&TenantCreate {
                        name,
                        description,
                        quota: Some(Quota {
                            max_platforms,
                            max_vms,
                            max_vcpus,
                            max_memory_mib,
                            max_bandwidth_kbps,
                            max_program_bytes,
                        }),
                        request_id: None,
                    })
                    .await?;
                println!("{}\t{}", tenant.id, tenant.name);
            }
            TenantCommand::List => {
                for tenant in client.list_tenants().await? {
                    println!("{}\t{}\t{}", tenant.id, tenant.name, tenant.description);
                }
            }
            TenantCommand::Delete { tenant } => {
                let tenant = client.delete_tenant(&tenant).await?;
                println!("deleted tenant {} ({})", tenant.name, tenant.id);
            }
        }
        Ok(())
    })
}
