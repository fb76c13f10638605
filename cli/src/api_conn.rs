//! The HTTP API client of the operator commands: the same transport rules
//! as the Terraform provider (`ca_cert` is the only trust when given;
//! plaintext only to loopback unless `--insecure`).

use anyhow::Context;
use clap::Args;
use measurelab_api::client::Client;

/// Where the controller is and which token to use: the flags every command
/// that speaks the HTTP API shares.
#[derive(Debug, Args)]
pub struct Connection {
    /// Controller HTTP endpoint; replicas as one list separated by commas
    /// (the next is tried when a connection is refused).
    #[arg(
        long,
        env = "MEASURELAB_ENDPOINT",
        default_value = "http://127.0.0.1:7070"
    )]
    endpoint: String,
    /// Bearer token: an API token, or the operator's admin.token
    /// (`DATA_DIR/admin.token`) for the operator commands.
    #[arg(long, env = "MEASURELAB_TOKEN", hide_env_values = true)]
    token: String,
    /// The controller's CA (PEM text or file; `DATA_DIR/ca.pem`), the only
    /// CA trusted for an https:// endpoint.
    #[arg(long, env = "MEASURELAB_CA_CERT")]
    ca_cert: Option<String>,
    /// Allow plaintext http:// to a host that is not loopback (the token
    /// then crosses the network in clear).
    #[arg(long, env = "MEASURELAB_INSECURE")]
    insecure: bool,
}

impl Connection {
    /// The API client these flags describe. The token is trimmed: one read
    /// from a file (`admin.token`) may carry its trailing newline.
    pub fn client(&self) -> anyhow::Result<Client> {
        client(
            &self.endpoint,
            self.token.trim(),
            self.ca_cert.as_deref(),
            self.insecure,
        )
    }
}

/// The runtime the API commands block on: one thread is plenty for a
/// handful of requests.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Read `--ca-cert`: PEM text or a path to a PEM file.
fn read_ca_cert(value: &str) -> anyhow::Result<Vec<u8>> {
    if value.trim_start().starts_with("-----BEGIN") {
        return Ok(value.as_bytes().to_vec());
    }
    std::fs::read(value)
        .with_context(|| format!("--ca-cert: {value} is neither PEM text nor a readable file"))
}

/// A client for `endpoint`, refusing plaintext to a non-loopback host
/// unless `insecure`.
fn client(
    endpoint: &str,
    token: &str,
    ca_cert: Option<&str>,
    insecure: bool,
) -> anyhow::Result<Client> {
    measurelab_api::client::check_transport(endpoint, insecure)
        .map_err(|reason| anyhow::anyhow!("--endpoint: {reason} (--insecure)"))?;
    let ca = ca_cert.map(read_ca_cert).transpose()?;
    let client = Client::new(endpoint, token, ca.as_deref())
        .context("--ca-cert")?
        .identifying_as("cli");
    ISSUED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(client.clone());
    Ok(client)
}

/// The clients this process made (a clone shares the warnings its
/// original keeps), so `main` can show the controller's warnings once the
/// command is over, whatever the command and however it ended.
static ISSUED: std::sync::Mutex<Vec<Client>> = std::sync::Mutex::new(Vec::new());

/// Print on stderr, once each, the warnings the controller answered this
/// process's requests with: today a CLI version outside its version-skew
/// policy (docs/version-skew.md), which the Terraform provider shows as a
/// warning diagnostic.
pub fn print_controller_warnings() {
    let clients = std::mem::take(&mut *ISSUED.lock().unwrap_or_else(|e| e.into_inner()));
    let mut shown = std::collections::BTreeSet::new();
    for warning in clients.iter().flat_map(Client::take_warnings) {
        if shown.insert(warning.clone()) {
            eprintln!("warning: {warning}");
        }
    }
}
