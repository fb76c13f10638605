//! `measurelab_api_token`: a named API token. The controller shows the secret
//! once, at create, and keeps only its digest; a token cannot be changed, so
//! every attribute change replaces it, and replacing it is how it rotates
//! (the old secret is revoked when the old token is destroyed).

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use measurelab_api::client::{Client, ClientError};
use serde::{Deserialize, Serialize};
use tf_provider::schema::{
    Attribute, AttributeConstraint, AttributeType, Block, Description, Schema,
};
use tf_provider::value::Value;
use tf_provider::{AttributePath, Diagnostics};

use super::adapter::{holds_shared, known, CreateRequest, ManagedResource};
use crate::access::{parse_role, Requirement, Role};
use crate::diagnostics;
use crate::node_model::computed;
use crate::shared::Shared;
use crate::timeouts;
use crate::wire::{self, ApiToken, ApiTokenCreate, ApiTokenCreated};

const KIND: &str = "API token";

/// Terraform state of one token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApiTokenState {
    /// Name.
    pub name: Value<String>,
    /// `owner`, `member`, `viewer`, `operator` or `metrics`.
    pub role: Value<String>,
    /// Tenant id or name, as configured.
    pub tenant: Value<String>,
    /// Expiry (RFC 3339); computed from `ttl` when that is set.
    pub expires_at: Value<String>,
    /// Lifetime from create, as a duration string.
    pub ttl: Value<String>,
    /// Arbitrary values whose change replaces (rotates) the token.
    pub keepers: Value<BTreeMap<String, String>>,
    /// Controller id.
    pub id: Value<String>,
    /// The tenant's id.
    pub tenant_id: Value<String>,
    /// Creation time.
    pub created_at: Value<String>,
    /// The bearer token, known only to the apply that created it.
    pub secret: Value<String>,
}

/// The attributes whose change replaces the token: all the configured ones.
const CONFIGURED: [&str; 6] = ["name", "role", "tenant", "expires_at", "ttl", "keepers"];

impl ApiTokenState {
    fn configured(&self, attribute: &str) -> serde_json::Value {
        serde_json::to_value(self)
            .ok()
            .and_then(|mut v| v.get_mut(attribute).map(serde_json::Value::take))
            .unwrap_or_default()
    }

    /// The role, validated; `None` (with a diagnostic if bad) when unusable.
    fn role(&self, diags: &mut Diagnostics) -> Option<Role> {
        let text = self.role.as_ref_option()?;
        let role = parse_role(text);
        if role.is_none() {
            diagnostics::invalid_value(
                diags,
                AttributePath::new("role"),
                "Invalid role",
                format!(
                    "`role` is {text:?}; it must be one of owner, member, viewer (in a tenant), \
                     operator or metrics (global)."
                ),
            );
        }
        role
    }

    /// The lifetime in seconds from `ttl`, validated.
    fn ttl_seconds(&self, diags: &mut Diagnostics) -> Result<Option<u64>, ()> {
        let Some(text) = self.ttl.as_ref_option() else {
            return Ok(None);
        };
        match timeouts::parse_duration(text) {
            Ok(duration) => Ok(Some(duration.as_secs())),
            Err(err) => {
                diagnostics::invalid_value(
                    diags,
                    AttributePath::new("ttl"),
                    "Invalid token lifetime",
                    format!("`ttl`: {err}."),
                );
                Err(())
            }
        }
    }

    fn validate(&self, diags: &mut Diagnostics) {
        let role = self.role(diags);
        // A ttl computes expires_at, so only a configured (not computed) pair conflicts.
        let _ = self.ttl_seconds(diags);
        match (role.map(|role| (role, role.tenant_refusal())), &self.tenant) {
            (Some((role, Some(refusal))), Value::Value(tenant)) => diagnostics::invalid_value(
                diags,
                AttributePath::new("tenant"),
                "Unexpected tenant",
                format!(
                    "`tenant` is {tenant:?}, but {refusal}: role {} is global.\n\nWhat \
                         to do: remove `tenant`, or choose owner, member or viewer.",
                    role.as_str()
                ),
            ),
            (Some((role, None)), Value::Null) => diagnostics::invalid_value(
                diags,
                AttributePath::new("tenant"),
                "Missing tenant",
                format!(
                    "`role` is {}, a role within a tenant, but `tenant` is not set.\n\nWhat to do: \
                     set `tenant` to the tenant's name or id.",
                    role.as_str()
                ),
            ),
            _ => {}
        }
    }

    fn refresh_from(&mut self, token: &ApiToken) {
        self.id = Value::Value(token.id.clone());
        self.name = Value::Value(token.name.clone());
        self.role = Value::Value(token.role.as_str().to_string());
        self.tenant_id = token.tenant_id.clone().map_or(Value::Null, Value::Value);
        self.created_at = Value::Value(token.created_at.clone());
        // A token's expiry never changes: keep the configured spelling of it.
        if !self.expires_at.is_value() {
            self.expires_at = token.expires_at.clone().map_or(Value::Null, Value::Value);
        }
        if self.tenant.is_null() {
            self.tenant = self.tenant_id.clone();
        }
    }
}

/// The token a create answered, without its secret.
fn token_of(created: ApiTokenCreated) -> ApiToken {
    ApiToken {
        id: created.id,
        name: created.name,
        role: created.role,
        tenant_id: created.tenant_id,
        created_at: created.created_at,
        expires_at: created.expires_at,
        last_used_at: created.last_used_at,
        revoked_at: created.revoked_at,
    }
}

/// The controller's API tokens, as a Terraform resource.
pub struct ApiTokens {
    shared: Shared,
}

fn optional(attr_type: AttributeType, description: &str) -> Attribute {
    Attribute {
        attr_type,
        description: Description::markdown(description),
        constraint: AttributeConstraint::Optional,
        ..Default::default()
    }
}

#[async_trait]
impl ManagedResource for ApiTokens {
    type State = ApiTokenState;
    type Object = ApiToken;

    const KIND: &'static str = KIND;
    const ROLE: Role = Role::Owner;

    holds_shared!();

    fn schema(&self) -> Schema {
        let attributes = HashMap::from([
            (
                "name".to_string(),
                Attribute {
                    constraint: AttributeConstraint::Required,
                    ..optional(
                        AttributeType::String,
                        "Name of the token (what `GET /v1/whoami` and permission errors call it).",
                    )
                },
            ),
            (
                "role".to_string(),
                Attribute {
                    constraint: AttributeConstraint::Required,
                    ..optional(
                        AttributeType::String,
                        "`owner` (the tenant's tokens and everything a member may), `member` \
                         (creates and changes platforms, VMs, QoS policies, programs, deployments \
                         and tasks), `viewer` (reads only), `operator` (global; needs an operator \
                         token) or `metrics` (global, reads `GET /metrics` only: a Prometheus \
                         scraper's token; needs an operator token).",
                    )
                },
            ),
            (
                "tenant".to_string(),
                optional(
                    AttributeType::String,
                    "Name or id of the tenant the token acts in; required unless `role` is \
                     `operator` or `metrics`. An owner token may create tokens in its own tenant only.",
                ),
            ),
            (
                "expires_at".to_string(),
                Attribute {
                    constraint: AttributeConstraint::OptionalComputed,
                    ..optional(
                        AttributeType::String,
                        "When the token stops working (RFC 3339). Computed from `ttl` when that is \
                         set; unset: never.",
                    )
                },
            ),
            (
                "ttl".to_string(),
                optional(
                    AttributeType::String,
                    "Lifetime from create, as a duration such as `\"720h\"`; sets `expires_at`. \
                     An expired token is refused by the controller: replace it to get a new one.",
                ),
            ),
            (
                "keepers".to_string(),
                optional(
                    AttributeType::Map(Box::new(AttributeType::String)),
                    "Arbitrary values; changing any of them replaces (rotates) the token, e.g. \
                     `{ rotation = \"2026-12\" }`.",
                ),
            ),
            (
                "id".to_string(),
                computed(AttributeType::String, "Token id assigned by the controller."),
            ),
            (
                "tenant_id".to_string(),
                computed(AttributeType::String, "Id of the token's tenant; null for operator and metrics tokens."),
            ),
            (
                "created_at".to_string(),
                computed(AttributeType::String, "RFC 3339 creation time."),
            ),
            (
                "secret".to_string(),
                Attribute {
                    sensitive: true,
                    ..computed(
                        AttributeType::String,
                        "The bearer token (`mlt_<id>_<secret>`), for a provider block or \
                         MEASURELAB_TOKEN. The controller shows it only once, so it is known only \
                         in the state of the apply that created the token (null after import).",
                    )
                },
            ),
        ]);
        Schema {
            version: 1,
            block: Block {
                description: Description::markdown(
                    "An API token of a tenant (or an operator token). Tokens cannot be changed: \
                     every change of an argument replaces the token, and that is how a token is \
                     rotated (`terraform apply -replace=...` or a new `keepers` value): the new \
                     secret works at once, the old one is revoked when the old token is destroyed. \
                     Needs an owner token of the tenant, or an operator token.",
                ),
                attributes,
                ..Default::default()
            },
        }
    }

    fn validate(&self, diags: &mut Diagnostics, state: &ApiTokenState) {
        state.validate(diags);
    }

    async fn plan_create(&self, diags: &mut Diagnostics, proposed: ApiTokenState) -> ApiTokenState {
        proposed.validate(diags);
        let mut state = proposed;
        state.id = Value::Unknown;
        state.tenant_id = Value::Unknown;
        state.created_at = Value::Unknown;
        state.secret = Value::Unknown;
        if state.ttl.is_value() || state.expires_at.is_unknown() {
            state.expires_at = Value::Unknown;
        }
        state
    }

    async fn plan_update(
        &self,
        diags: &mut Diagnostics,
        prior: &ApiTokenState,
        proposed: ApiTokenState,
    ) -> (ApiTokenState, Vec<AttributePath>) {
        proposed.validate(diags);
        let replace: Vec<AttributePath> = CONFIGURED
            .iter()
            .filter(|name| prior.configured(name) != proposed.configured(name))
            .map(|name| AttributePath::new(*name))
            .collect();
        if replace.is_empty() {
            return (proposed, replace);
        }
        let mut state = self.plan_create(diags, proposed).await;
        // An expiry computed from a `ttl` that is now removed is not a
        // configured one: the new token does not expire.
        if prior.ttl.is_value() && state.ttl.is_null() && state.expires_at == prior.expires_at {
            state.expires_at = Value::Null;
        }
        (state, replace)
    }

    async fn create(
        &self,
        diags: &mut Diagnostics,
        client: &Client,
        planned: ApiTokenState,
        request: &CreateRequest,
    ) -> Option<ApiTokenState> {
        let ttl_seconds = planned.ttl_seconds(diags).ok()?;
        let role = planned.role(diags)?;
        let body = ApiTokenCreate {
            name: known(&planned.name),
            role,
            tenant: planned.tenant.as_ref_option().cloned(),
            expires_at: if ttl_seconds.is_some() {
                None
            } else {
                planned.expires_at.as_ref_option().cloned()
            },
            ttl_seconds,
            request_id: request.request_id(),
        };
        let created = request
            .send(diags, || wire::create_token(client, &body))
            .await?;
        let mut state = planned;
        if ttl_seconds.is_some() || !state.expires_at.is_value() {
            state.expires_at = Value::Null;
        }
        let secret = created.secret.clone();
        state.refresh_from(&token_of(created));
        state.secret = Value::Value(secret);
        Some(state)
    }

    fn id(state: &ApiTokenState) -> &Value<String> {
        &state.id
    }

    async fn get(client: &Client, key: &str) -> Result<ApiToken, ClientError> {
        wire::get_token(client, key).await
    }

    async fn delete(client: &Client, id: &str) -> Result<(), ClientError> {
        wire::revoke_token(client, id).await
    }

    /// A revoked token is gone for Terraform: the next plan creates a new one.
    fn is_gone(token: &ApiToken) -> bool {
        token.revoked_at.is_some()
    }

    async fn refresh(&self, _client: &Client, state: &mut ApiTokenState, token: &ApiToken) {
        state.refresh_from(token);
    }

    fn requirement(state: &ApiTokenState) -> Requirement {
        if matches!(
            state.role.as_ref_option().map(String::as_str),
            Some("operator" | "metrics")
        ) {
            return Requirement::role(Role::Operator);
        }
        Requirement {
            role: Role::Owner,
            tenant: state.tenant.as_ref_option().cloned(),
        }
    }

    fn import_not_found(id: &str) -> String {
        format!(
            "The controller has no API token with id {id:?} that this token may see.\n\nWhat to \
             do: import by the token's id (`measurelab token list`); its secret stays unknown, \
             so replace it to get one."
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(role: &str, tenant: Option<&str>) -> ApiTokenState {
        ApiTokenState {
            name: Value::Value("ci".into()),
            role: Value::Value(role.into()),
            tenant: tenant.map_or(Value::Null, |t| Value::Value(t.into())),
            ..Default::default()
        }
    }

    fn errors_on(state: &ApiTokenState) -> Vec<AttributePath> {
        let mut diags = Diagnostics::default();
        state.validate(&mut diags);
        diags.errors.into_iter().map(|d| d.attribute).collect()
    }

    #[test]
    fn a_tenant_role_needs_a_tenant_and_an_operator_has_none() {
        assert!(errors_on(&state("member", Some("demo"))).is_empty());
        assert!(errors_on(&state("operator", None)).is_empty());
        assert_eq!(
            errors_on(&state("member", None)),
            vec![AttributePath::new("tenant")]
        );
        assert_eq!(
            errors_on(&state("operator", Some("demo"))),
            vec![AttributePath::new("tenant")]
        );
        let mut diags = Diagnostics::default();
        state("operator", Some("demo")).validate(&mut diags);
        assert!(
            diags.errors[0]
                .detail
                .contains("but an operator token belongs to no tenant: role operator is global"),
            "the controller's words (Role::tenant_refusal): {}",
            diags.errors[0].detail
        );
        assert!(errors_on(&state("metrics", None)).is_empty());
        assert_eq!(
            errors_on(&state("metrics", Some("demo"))),
            vec![AttributePath::new("tenant")]
        );
        assert_eq!(
            errors_on(&state("admin", Some("demo"))),
            vec![AttributePath::new("role")]
        );
    }

    #[tokio::test]
    async fn every_argument_change_replaces_and_hides_the_new_secret() {
        let tokens = ApiTokens::new(Shared::new(Default::default()));
        let mut prior = state("member", Some("demo"));
        prior.id = Value::Value("tok1".into());
        prior.secret = Value::Value("mlt_tok1_aaaa".into());
        let mut diags = Diagnostics::default();
        let (same, replace) = tokens.plan_update(&mut diags, &prior, prior.clone()).await;
        assert!(replace.is_empty());
        assert_eq!(same.secret, prior.secret, "no change keeps the secret");

        let mut rotated = prior.clone();
        rotated.keepers = Value::Value(BTreeMap::from([("rotation".into(), "2".into())]));
        let (planned, replace) = tokens.plan_update(&mut diags, &prior, rotated).await;
        assert_eq!(replace, vec![AttributePath::new("keepers")]);
        assert!(planned.secret.is_unknown() && planned.id.is_unknown());

        let (_, replace) = tokens
            .plan_update(&mut diags, &prior, state("viewer", Some("demo")))
            .await;
        assert_eq!(replace, vec![AttributePath::new("role")]);
        assert!(diags.errors.is_empty(), "{:?}", diags.errors);
    }

    #[test]
    fn tokens_need_an_owner_of_their_tenant_and_operator_tokens_an_operator() {
        assert_eq!(
            ApiTokens::requirement(&state("viewer", Some("t2"))),
            Requirement {
                role: Role::Owner,
                tenant: Some("t2".into())
            }
        );
        assert_eq!(
            ApiTokens::requirement(&state("operator", None)).role,
            Role::Operator
        );
    }
}
