//! The lab's demo tenant: `lab up` makes tenant `demo` with an owner and a
//! member token, through the API with the operator token, so examples and
//! scripts run as a researcher would (`lab env` prints the member token).
//!
//! The secrets are shown once by the controller, so they are kept in
//! `DIR/tenant/demo-<role>.token` (mode 0600). A second `up` reuses a stored
//! token that still works and makes a new one when it was revoked, expired or
//! belongs to a controller that has since been recreated.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use measurelab_api::client::{Client, ClientError};
use serde::Deserialize;
use serde_json::json;

use super::sys::write_private;

/// Name of the tenant `lab up` creates.
pub const DEMO_TENANT: &str = "demo";
/// Roles `lab up` keeps a token of, in the demo tenant.
const ROLES: [&str; 2] = ["owner", "member"];
/// The role `lab env` prints by default.
pub const DEFAULT_ROLE: &str = "member";

/// `GET /v1/whoami`, the parts checked here.
#[derive(Debug, Deserialize)]
struct Whoami {
    role: String,
    #[serde(default)]
    tenant_name: Option<String>,
}

/// `POST /v1/tokens`'s answer, the part kept.
#[derive(Debug, Deserialize)]
struct CreatedToken {
    secret: String,
}

/// Directory holding the demo tenant's token files.
pub fn tokens_dir(lab_dir: &Path) -> PathBuf {
    lab_dir.join("tenant")
}

/// File holding the demo tenant's token of `role`.
pub fn token_file(lab_dir: &Path, role: &str) -> PathBuf {
    tokens_dir(lab_dir).join(format!("{DEMO_TENANT}-{role}.token"))
}

/// The stored token of `role`, or an error saying how to get one.
pub fn stored_token(lab_dir: &Path, role: &str) -> anyhow::Result<String> {
    let path = token_file(lab_dir, role);
    let token = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}; run `measurelab lab up` again to create the {DEMO_TENANT} tenant's tokens",
            path.display()
        )
    })?;
    Ok(token.trim().to_string())
}

/// Make sure tenant `demo` exists and each of its lab tokens works; returns
/// what was created (for `up`'s summary).
pub async fn ensure_demo_tenant(
    endpoint: &str,
    operator: &Client,
    lab_dir: &Path,
    ca_pem: Option<&[u8]>,
) -> anyhow::Result<Vec<String>> {
    let mut created = Vec::new();
    let tenant_path = format!("/v1/tenants/{DEMO_TENANT}");
    match operator
        .request::<(), serde_json::Value>(reqwest::Method::GET, &tenant_path, None)
        .await
    {
        Ok(_) => {}
        Err(err) if err.is_not_found() => {
            let body = json!({
                "name": DEMO_TENANT,
                "description": "the lab's demo tenant (measurelab lab up)",
            });
            operator
                .request::<_, serde_json::Value>(reqwest::Method::POST, "/v1/tenants", Some(&body))
                .await
                .with_context(|| format!("cannot create tenant {DEMO_TENANT}"))?;
            created.push(format!("tenant {DEMO_TENANT}"));
        }
        Err(err) => {
            return Err(err).with_context(|| format!("cannot look up tenant {DEMO_TENANT}"))
        }
    }
    std::fs::create_dir_all(tokens_dir(lab_dir))
        .with_context(|| format!("cannot create {}", tokens_dir(lab_dir).display()))?;
    for role in ROLES {
        let path = token_file(lab_dir, role);
        if let Ok(token) = std::fs::read_to_string(&path) {
            if still_works(endpoint, token.trim(), role, ca_pem).await? {
                continue;
            }
        }
        let secret = create_token(operator, role).await?;
        // The old file holds a dead token: replace it, still never readable by others.
        let _ = std::fs::remove_file(&path);
        write_private(&path, &secret)?;
        created.push(format!("{DEMO_TENANT} {role} token"));
    }
    Ok(created)
}

/// Whether a stored token is still the demo tenant's token of `role`. A
/// refused token (revoked, expired, from an earlier controller) is not; any
/// other failure is an error, so a passing hiccup does not rotate tokens.
async fn still_works(
    endpoint: &str,
    token: &str,
    role: &str,
    ca_pem: Option<&[u8]>,
) -> anyhow::Result<bool> {
    let client = Client::new(endpoint, token, ca_pem)?.identifying_as("cli");
    match client
        .request::<(), Whoami>(reqwest::Method::GET, "/v1/whoami", None)
        .await
    {
        Ok(whoami) => Ok(whoami.role == role && whoami.tenant_name.as_deref() == Some(DEMO_TENANT)),
        Err(ClientError::Api { status: 401, .. }) => Ok(false),
        Err(err) => Err(err).context("cannot check the stored demo tenant token"),
    }
}

/// A new token of `role` in the demo tenant; its secret.
async fn create_token(operator: &Client, role: &str) -> anyhow::Result<String> {
    let body = json!({
        "name": format!("lab-{DEMO_TENANT}-{role}"),
        "role": role,
        "tenant": DEMO_TENANT,
    });
    let created: CreatedToken = operator
        .request(reqwest::Method::POST, "/v1/tokens", Some(&body))
        .await
        .with_context(|| format!("cannot create the {DEMO_TENANT} tenant's {role} token"))?;
    if created.secret.trim().is_empty() {
        bail!("the controller answered POST /v1/tokens without a secret");
    }
    Ok(created.secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_live_under_the_lab_dir_by_role() {
        let dir = Path::new("/var/lib/measurelab/lab/mlab");
        assert_eq!(
            token_file(dir, "member"),
            Path::new("/var/lib/measurelab/lab/mlab/tenant/demo-member.token")
        );
        let missing =
            stored_token(Path::new("/nonexistent-lab"), "member").expect_err("no token stored");
        assert!(
            format!("{missing:#}").contains("measurelab lab up"),
            "{missing:#}"
        );
    }
}
