//! The HTTP API client of the operator commands: the same transport rules
//! as the Terraform provider (`ca_cert` is the only trust when given;
//! plaintext only to loopback unless `--insecure`).

use anyhow::Context;
use measurelab_api::client::Client;

/// Read `--ca-cert`: PEM text or a path to a PEM file.
pub fn read_ca_cert(value: &str) -> anyhow::Result<Vec<u8>> {
    if value.trim_start().starts_with("-----BEGIN") {
        return Ok(value.as_bytes().to_vec());
    }
    std::fs::read(value)
        .with_context(|| format!("--ca-cert: {value} is neither PEM text nor a readable file"))
}

/// A client for `endpoint`, refusing plaintext to a non-loopback host
/// unless `insecure`.
pub fn client(
    endpoint: &str,
    token: &str,
    ca_cert: Option<&str>,
    insecure: bool,
) -> anyhow::Result<Client> {
    measurelab_api::client::check_transport(endpoint, insecure)
        .map_err(|reason| anyhow::anyhow!("--endpoint: {reason} (--insecure)"))?;
    let ca = ca_cert.map(read_ca_cert).transpose()?;
    Client::new(endpoint, token, ca.as_deref()).context("--ca-cert")
}
