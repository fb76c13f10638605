//! The provider block: where the controller is and how to authenticate.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use measurelab_api::client::Client;
use serde::{Deserialize, Serialize};
use tf_provider::map;
use tf_provider::schema::{
    Attribute, AttributeConstraint, AttributeType, Block, Description, Schema,
};
use tf_provider::value::{Value, ValueEmpty};
use tf_provider::{AttributePath, Diagnostics, DynamicDataSource, DynamicResource, Provider};
use tokio_util::sync::CancellationToken;

use crate::access::Whoami;
use crate::data_sources::DeploymentOutputsDataSource;
use crate::data_sources::FlowsDataSource;
use crate::data_sources::PlatformPointsDataSource;
use crate::data_sources::TenantUsageDataSource;
use crate::data_sources::VmUsageDataSource;
use crate::data_sources::{
    AppliancesDataSource, NodeDataSource, NodesDataSource, ResultsDataSource,
};
use crate::data_sources::{
    MeasurementTaskDataSource, MeasurementTasksDataSource, VirtualPlatformDataSource,
    VirtualPlatformsDataSource, VmDataSource, VmsDataSource,
};
use crate::diagnostics;
use crate::resources::{ApiTokenResource, ApplianceResource, TenantResource};
use crate::resources::{
    DeploymentResource, MeasurementNodeResource, MeasurementTaskResource, PlatformPeerResource,
    ProgramResource, QosPolicyResource, VirtualPlatformResource, VmResource,
};
// Public so a resource still naming `crate::provider::Shared` compiles while
// branches merge; new code imports `crate::shared`, which keeps edges one way.
pub use crate::shared::Shared;

/// Environment variable that sets `endpoint` when the block does not.
pub const ENV_ENDPOINT: &str = "MEASURELAB_ENDPOINT";
/// Environment variable that sets `token` when the block does not.
pub const ENV_TOKEN: &str = "MEASURELAB_TOKEN";
/// Environment variable that sets `ca_cert` when the block does not.
pub const ENV_CA_CERT: &str = "MEASURELAB_CA_CERT";

/// Environment variable that sets `insecure` when the block does not.
pub const ENV_INSECURE: &str = "MEASURELAB_INSECURE";

/// Provider block contents.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProviderConfig {
    /// Controller base URL.
    pub endpoint: Value<String>,
    /// Bearer token.
    pub token: Value<String>,
    /// PEM CA certificate (text or path).
    pub ca_cert: Value<String>,
    /// Allow plaintext `http://` to a host that is not loopback.
    pub insecure: Value<bool>,
}

/// The measurelab provider.
pub struct MeasurelabProvider {
    shared: Shared,
}

impl MeasurelabProvider {
    /// A provider whose long waits stop when `stop` is cancelled.
    pub fn new(stop: CancellationToken) -> Self {
        MeasurelabProvider {
            shared: Shared::new(stop),
        }
    }
}

fn setting(description: &str, sensitive: bool) -> Attribute {
    Attribute {
        attr_type: AttributeType::String,
        description: Description::markdown(description),
        constraint: AttributeConstraint::Optional,
        sensitive,
        ..Default::default()
    }
}

/// Resolve one setting: the block wins, then the environment. Unknown (a value
/// computed during apply) is reported as unresolvable.
fn resolve(value: &Value<String>, env: &str) -> Result<Option<String>, ()> {
    match value {
        Value::Value(text) if !text.trim().is_empty() => Ok(Some(text.trim().to_string())),
        Value::Unknown => Err(()),
        _ => Ok(std::env::var(env)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| v.trim().to_string())),
    }
}

/// `insecure`: the block wins, then `MEASURELAB_INSECURE`; unknown is `Err`.
fn resolve_insecure(value: &Value<bool>) -> Result<bool, ()> {
    match value {
        Value::Value(insecure) => Ok(*insecure),
        Value::Unknown => Err(()),
        _ => Ok(std::env::var(ENV_INSECURE)
            .is_ok_and(|v| matches!(v.trim(), "1" | "true" | "TRUE" | "True"))),
    }
}

/// Report a plaintext endpoint that is not loopback (unless `insecure`);
/// `true` when it was refused.
fn refuse_plaintext(diags: &mut Diagnostics, endpoint: &str, insecure: bool) -> bool {
    match measurelab_api::client::check_transport(endpoint, insecure) {
        Ok(()) => false,
        Err(reason) => {
            diagnostics::invalid_value(
                diags,
                AttributePath::new("endpoint"),
                "Plaintext controller endpoint",
                format!(
                    "`endpoint` {reason}.\n\nWhat to do: use the controller's https:// address \
                     with `ca_cert`, or set `insecure = true` in the provider block."
                ),
            );
            true
        }
    }
}

/// `ca_cert` may be PEM text or a path to a PEM file.
fn load_ca_cert(diags: &mut Diagnostics, value: &str) -> Option<Vec<u8>> {
    if value.starts_with("-----BEGIN") {
        return Some(value.as_bytes().to_vec());
    }
    match std::fs::read(value) {
        Ok(bytes) => Some(bytes),
        Err(err) => {
            diagnostics::invalid_value(
                diags,
                AttributePath::new("ca_cert"),
                "Cannot read the CA certificate",
                format!(
                    "`ca_cert` is neither PEM text (starting with -----BEGIN) nor a readable file: \
                     {value}: {err}.\n\nWhat to do: give the PEM text or the path to a PEM file."
                ),
            );
            None
        }
    }
}

/// Check that `endpoints` is an http(s) URL with a host, or several
/// separated by commas (controller replicas).
pub fn check_endpoint(endpoints: &str) -> Result<(), String> {
    measurelab_api::client::split_endpoints(endpoints)?
        .iter()
        .try_for_each(|endpoint| check_one_endpoint(endpoint))
}

fn check_one_endpoint(endpoint: &str) -> Result<(), String> {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .ok_or_else(|| format!("{endpoint:?} must start with http:// or https://"))?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        return Err(format!("{endpoint:?} has no host"));
    }
    Ok(())
}

/// How long configure waits for `GET /v1/whoami`: every Terraform command
/// configures the provider, and a silent controller must not stall them all.
const WHOAMI_TIMEOUT: Duration = Duration::from_secs(5);

/// Who the token is, for plan-time permission checks. `None` when the
/// controller cannot say (unreachable, a bad token, an older controller):
/// the checks are then skipped and the first real call reports the problem
/// with its usual diagnostic.
async fn who_is(client: &Client) -> Option<Whoami> {
    let asked = client.request::<(), Whoami>(reqwest::Method::GET, "/v1/whoami", None);
    tokio::time::timeout(WHOAMI_TIMEOUT, asked).await.ok()?.ok()
}

#[async_trait]
impl Provider for MeasurelabProvider {
    type Config<'a> = ProviderConfig;
    type MetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        Some(Schema {
            version: 1,
            block: Block {
                description: Description::markdown(
                    "The measurelab provider drives a measurelab network measurement platform through \
                     its controller's HTTP API. Every setting can \
                     also come from the environment; for a lab, `export $(measurelab lab env)` sets them all.",
                ),
                attributes: map! {
                    "endpoint" => setting(
                        "Base URL of the controller's HTTP API, for example `http://127.0.0.1:7070`. \
                         Controller replicas sharing one PostgreSQL store go in as one list separated \
                         by commas (`https://c1:7070,https://c2:7070`): the provider sends to the one \
                         that last answered and goes on to the next when a connection is refused or \
                         not made within 5 s. Defaults to the `MEASURELAB_ENDPOINT` environment variable.",
                        false,
                    ),
                    "token" => setting(
                        "Bearer token for the controller's `/v1` API: an API token (`mlt_...`, from \
                         `measurelab token create` or `measurelab_api_token`) or the controller's \
                         operator `admin.token`. Plans that need a role the token lacks fail at plan. \
                         Defaults to the `MEASURELAB_TOKEN` environment variable.",
                        true,
                    ),
                    "ca_cert" => setting(
                        "CA certificate that signs the controller's TLS certificate (the controller's \
                         `ca.pem`), as PEM text or a path to a PEM file. When given it is the only CA \
                         trusted: the public web CAs are not. Defaults to the `MEASURELAB_CA_CERT` \
                         environment variable.",
                        false,
                    ),
                    "insecure" => Attribute {
                        attr_type: AttributeType::Bool,
                        description: Description::markdown(
                            "Allow a plaintext `http://` endpoint on a host that is not loopback. \
                             Off by default: the token and every request would cross the network \
                             unencrypted; use `https://` with `ca_cert` instead. Defaults to the \
                             `MEASURELAB_INSECURE` environment variable (`true`/`false`).",
                        ),
                        constraint: AttributeConstraint::Optional,
                        ..Default::default()
                    },
                },
                ..Default::default()
            },
        })
    }

    async fn validate<'a>(&self, diags: &mut Diagnostics, config: Self::Config<'a>) -> Option<()> {
        if let Value::Value(endpoint) = &config.endpoint {
            if let Err(reason) = check_endpoint(endpoint.trim()) {
                diagnostics::invalid_value(
                    diags,
                    AttributePath::new("endpoint"),
                    "Invalid controller endpoint",
                    format!("{reason}.\n\nWhat to do: write it like http://127.0.0.1:7070 (several replicas: separate them with commas)."),
                );
            } else if let Ok(insecure) = resolve_insecure(&config.insecure) {
                refuse_plaintext(diags, endpoint.trim(), insecure);
            }
        }
        Some(())
    }

    async fn configure<'a>(
        &self,
        diags: &mut Diagnostics,
        _terraform_version: String,
        config: Self::Config<'a>,
    ) -> Option<()> {
        let (Ok(endpoint), Ok(token), Ok(ca_cert)) = (
            resolve(&config.endpoint, ENV_ENDPOINT),
            resolve(&config.token, ENV_TOKEN),
            resolve(&config.ca_cert, ENV_CA_CERT),
        ) else {
            // Values known only after apply: leave the client unset; resources
            // report "not configured" if they are used before that.
            return Some(());
        };
        let Some(endpoint) = endpoint else {
            diagnostics::missing_setting(
                diags,
                "endpoint",
                ENV_ENDPOINT,
                "set `endpoint` in the provider block or export MEASURELAB_ENDPOINT \
                 (`export $(measurelab lab env)` for a lab).",
            );
            return Some(());
        };
        if let Err(reason) = check_endpoint(&endpoint) {
            diagnostics::invalid_value(
                diags,
                AttributePath::new("endpoint"),
                "Invalid controller endpoint",
                format!("{reason}.\n\nWhat to do: write it like http://127.0.0.1:7070 (several replicas: separate them with commas)."),
            );
            return Some(());
        }
        let Ok(insecure) = resolve_insecure(&config.insecure) else {
            return Some(());
        };
        if refuse_plaintext(diags, &endpoint, insecure) {
            return Some(());
        }
        let Some(token) = token else {
            diagnostics::missing_setting(
                diags,
                "token",
                ENV_TOKEN,
                "set `token` in the provider block or export MEASURELAB_TOKEN (the controller's \
                 admin.token; `measurelab lab env` prints it for a lab).",
            );
            return Some(());
        };
        let ca_pem = match ca_cert {
            Some(value) => Some(load_ca_cert(diags, &value)?),
            None => None,
        };
        match Client::new(&endpoint, &token, ca_pem.as_deref()) {
            Ok(client) => {
                let client = client.identifying_as("provider");
                let whoami = who_is(&client).await;
                // The first answer carries the controller's word on this
                // provider's version (docs/version-skew.md): said once per
                // run rather than on every resource.
                diagnostics::controller_warnings(diags, &endpoint, client.take_warnings());
                self.shared.set_client(client);
                if let Some(whoami) = whoami {
                    self.shared.set_whoami(whoami);
                }
            }
            Err(err) => diagnostics::invalid_value(
                diags,
                AttributePath::new(if ca_pem.is_some() {
                    "ca_cert"
                } else {
                    "endpoint"
                }),
                "Invalid provider configuration",
                format!("{err}.\n\nWhat to do: fix the value and run the command again."),
            ),
        }
        Some(())
    }

    fn get_resources(
        &self,
        _diags: &mut Diagnostics,
    ) -> Option<HashMap<String, Box<dyn DynamicResource>>> {
        Some(map! {
            "measurement_node" => MeasurementNodeResource::new(self.shared.clone()),
            "qos_policy" => QosPolicyResource::new(self.shared.clone()),
            "virtual_platform" => VirtualPlatformResource::new(self.shared.clone()),
            "platform_peer" => PlatformPeerResource::new(self.shared.clone()),
            "vm" => VmResource::new(self.shared.clone()),
            "program" => ProgramResource::new(self.shared.clone()),
            "deployment" => DeploymentResource::new(self.shared.clone()),
            "measurement_task" => MeasurementTaskResource::new(self.shared.clone()),
            "tenant" => TenantResource::new(self.shared.clone()),
            "api_token" => ApiTokenResource::new(self.shared.clone()),
            "appliance" => ApplianceResource::new(self.shared.clone()),
        })
    }

    fn get_data_sources(
        &self,
        _diags: &mut Diagnostics,
    ) -> Option<HashMap<String, Box<dyn DynamicDataSource>>> {
        Some(map! {
            "nodes" => NodesDataSource::new(self.shared.clone()),
            "node" => NodeDataSource::new(self.shared.clone()),
            "appliances" => AppliancesDataSource::new(self.shared.clone()),
            "results" => ResultsDataSource::new(self.shared.clone()),
            "virtual_platform" => VirtualPlatformDataSource::new(self.shared.clone()),
            "virtual_platforms" => VirtualPlatformsDataSource::new(self.shared.clone()),
            "vm" => VmDataSource::new(self.shared.clone()),
            "vms" => VmsDataSource::new(self.shared.clone()),
            "measurement_task" => MeasurementTaskDataSource::new(self.shared.clone()),
            "measurement_tasks" => MeasurementTasksDataSource::new(self.shared.clone()),
            "tenant_usage" => TenantUsageDataSource::new(self.shared.clone()),
            "flows" => FlowsDataSource::new(self.shared.clone()),
            "vm_usage" => VmUsageDataSource::new(self.shared.clone()),
            "platform_points" => PlatformPointsDataSource::new(self.shared.clone()),
            "deployment_outputs" => DeploymentOutputsDataSource::new(self.shared.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn configure_names_the_provider_and_shows_the_controllers_warnings() {
        use axum::http::{header, HeaderMap};
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<String>();
        let app = axum::Router::new().route(
            "/v1/whoami",
            axum::routing::get(move |headers: HeaderMap| {
                let agent = headers
                    .get(header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let _ = seen_tx.send(agent);
                async {
                    (
                        [(
                            header::WARNING,
                            "299 - \"measurelab-provider 0.1.0 is older than this controller\"",
                        )],
                        "{}",
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let provider = MeasurelabProvider::new(CancellationToken::new());
        let mut diags = Diagnostics::default();
        let config = ProviderConfig {
            endpoint: Value::Value(url.clone()),
            token: Value::Value("t".into()),
            ca_cert: Value::Null,
            insecure: Value::Null,
        };
        provider
            .configure(&mut diags, String::new(), config)
            .await
            .unwrap();
        assert_eq!(
            seen.recv().await.unwrap(),
            format!("measurelab-provider/{}", env!("CARGO_PKG_VERSION"))
        );
        assert!(diags.errors.is_empty(), "{:?}", diags.errors);
        assert_eq!(diags.warnings.len(), 1, "{:?}", diags.warnings);
        let warning = &diags.warnings[0];
        assert!(warning.summary.contains(&url), "{}", warning.summary);
        assert!(
            warning
                .detail
                .starts_with("measurelab-provider 0.1.0 is older than this controller"),
            "{}",
            warning.detail
        );
    }

    #[test]
    fn endpoint_must_be_http_url() {
        assert!(check_endpoint("http://127.0.0.1:7070").is_ok());
        assert!(check_endpoint("https://ctl.example/").is_ok());
        assert!(check_endpoint("127.0.0.1:7070").is_err());
        assert!(check_endpoint("http://").is_err());
        // Replicas: every entry is checked, and an empty one is named.
        assert!(check_endpoint("https://c1:7070, https://c2:7070").is_ok());
        let err = check_endpoint("https://c1:7070,c2:7070").unwrap_err();
        assert!(err.contains("\"c2:7070\" must start with http"), "{err}");
        let err = check_endpoint("https://c1:7070,").unwrap_err();
        assert!(err.contains("empty entry"), "{err}");
    }

    #[test]
    fn plaintext_to_a_remote_host_is_refused_unless_insecure() {
        let mut diags = Diagnostics::default();
        assert!(!refuse_plaintext(
            &mut diags,
            "http://127.0.0.1:7070",
            false
        ));
        assert!(!refuse_plaintext(
            &mut diags,
            "https://10.0.0.1:7070",
            false
        ));
        assert!(!refuse_plaintext(&mut diags, "http://10.0.0.1:7070", true));
        assert!(diags.errors.is_empty());
        assert!(refuse_plaintext(&mut diags, "http://10.0.0.1:7070", false));
        let error = format!("{:?}", diags.errors);
        assert!(
            error.contains("endpoint")
                && error.contains("not loopback")
                && error.contains("insecure"),
            "{error}"
        );
    }

    #[test]
    fn block_wins_over_environment() {
        std::env::set_var("MEASURELAB_TEST_ENDPOINT", "http://from-env:1");
        let from_block = Value::Value("http://from-block:1".to_string());
        assert_eq!(
            resolve(&from_block, "MEASURELAB_TEST_ENDPOINT"),
            Ok(Some("http://from-block:1".into()))
        );
        assert_eq!(
            resolve(&Value::Null, "MEASURELAB_TEST_ENDPOINT"),
            Ok(Some("http://from-env:1".into()))
        );
        assert_eq!(
            resolve(&Value::Unknown, "MEASURELAB_TEST_ENDPOINT"),
            Err(())
        );
    }
}
