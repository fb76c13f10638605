//! `measurelab_tenant`: a tenant of the testbed and its quota. Operator only:
//! the operator gives each research group a tenant, then tokens in it.

use std::collections::HashMap;

use async_trait::async_trait;
use measurelab_api::client::{Client, ClientError};
use serde::{Deserialize, Serialize};
use tf_provider::schema::{
    Attribute, AttributeConstraint, AttributeType, Block, Description, NestedBlock, Schema,
};
use tf_provider::value::Value;
use tf_provider::{AttributePath, Diagnostics};

use super::adapter::{
    holds_shared, id_or_name, known, plan_change, plan_new, AssignedByController, CreateRequest,
    ManagedResource,
};
use crate::access::Role;
use crate::diagnostics::{self, Operation};
use crate::node_model::computed;
use crate::number::Number;
use crate::shared::Shared;
use crate::wire::{self, Quota, Tenant, TenantCreate, TenantPatch};

const KIND: &str = "tenant";

/// The quota limits: (attribute, description).
const LIMITS: [(&str, &str); 6] = [
    (
        "max_platforms",
        "Most virtual platforms the tenant may own.",
    ),
    ("max_vms", "Most VMs, over all its platforms."),
    ("max_vcpus", "Most vCPUs, summed over its VMs."),
    ("max_memory_mib", "Most memory in MiB, summed over its VMs."),
    (
        "max_bandwidth_kbps",
        "Most QoS bandwidth in kbit/s, summed over the policies its VMs use.",
    ),
    (
        "max_program_bytes",
        "Most bytes of uploaded program artifacts.",
    ),
];

/// The `quota` block: every limit optional, unset is unlimited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QuotaBlock {
    /// Platforms.
    pub max_platforms: Value<Number>,
    /// VMs.
    pub max_vms: Value<Number>,
    /// vCPUs.
    pub max_vcpus: Value<Number>,
    /// Memory.
    pub max_memory_mib: Value<Number>,
    /// Bandwidth.
    pub max_bandwidth_kbps: Value<Number>,
    /// Program storage.
    pub max_program_bytes: Value<Number>,
}

impl QuotaBlock {
    fn limits(&self) -> [(&'static str, &Value<Number>); 6] {
        [
            ("max_platforms", &self.max_platforms),
            ("max_vms", &self.max_vms),
            ("max_vcpus", &self.max_vcpus),
            ("max_memory_mib", &self.max_memory_mib),
            ("max_bandwidth_kbps", &self.max_bandwidth_kbps),
            ("max_program_bytes", &self.max_program_bytes),
        ]
    }

    /// The limits as the API sends them; reports each bad one. `None` if any
    /// is bad or unknown.
    fn quota(&self, diags: &mut Diagnostics) -> Option<Quota> {
        let mut parsed = [None; 6];
        let mut complete = true;
        for (slot, (name, value)) in parsed.iter_mut().zip(self.limits()) {
            match value {
                Value::Value(number) => match number.as_whole() {
                    Some(limit) => *slot = Some(limit),
                    None => {
                        complete = false;
                        diagnostics::invalid_value(
                            diags,
                            AttributePath::new("quota").attribute(name),
                            "Invalid quota",
                            format!(
                                "`quota.{name}` is {}; it must be a whole number of at least 0 \
                                 (leave it out for no limit).",
                                serde_json::to_string(number).unwrap_or_default()
                            ),
                        );
                    }
                },
                Value::Unknown => complete = false,
                Value::Null => {}
            }
        }
        let [max_platforms, max_vms, max_vcpus, max_memory_mib, max_bandwidth_kbps, max_program_bytes] =
            parsed;
        complete.then_some(Quota {
            max_platforms,
            max_vms,
            max_vcpus,
            max_memory_mib,
            max_bandwidth_kbps,
            max_program_bytes,
        })
    }

    fn from_quota(quota: &Quota) -> Self {
        let limit = |v: Option<u64>| v.map_or(Value::Null, |v| Value::Value(Number::from(v)));
        QuotaBlock {
            max_platforms: limit(quota.max_platforms),
            max_vms: limit(quota.max_vms),
            max_vcpus: limit(quota.max_vcpus),
            max_memory_mib: limit(quota.max_memory_mib),
            max_bandwidth_kbps: limit(quota.max_bandwidth_kbps),
            max_program_bytes: limit(quota.max_program_bytes),
        }
    }
}

/// Terraform state of one tenant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantState {
    /// Unique name.
    pub name: Value<String>,
    /// Free text.
    pub description: Value<String>,
    /// The `quota` block.
    pub quota: Value<QuotaBlock>,
    /// Controller id.
    pub id: Value<String>,
    /// Creation time.
    pub created_at: Value<String>,
}

impl TenantState {
    fn quota(&self, diags: &mut Diagnostics) -> Option<Quota> {
        match &self.quota {
            Value::Value(block) => block.quota(diags),
            Value::Null => Some(Quota::default()),
            Value::Unknown => None,
        }
    }

    fn refresh_from(&mut self, tenant: &Tenant) {
        self.name = Value::Value(tenant.name.clone());
        // An unset description reads back as "": keep it unset, not a diff.
        if !(tenant.description.is_empty() && self.description.is_null()) {
            self.description = Value::Value(tenant.description.clone());
        }
        self.quota = Value::Value(QuotaBlock::from_quota(&tenant.quota));
        self.id = Value::Value(tenant.id.clone());
        self.created_at = Value::Value(tenant.created_at.clone());
    }
}

/// The controller's tenants, as a Terraform resource.
pub struct Tenants {
    shared: Shared,
}

impl AssignedByController for TenantState {
    fn name(&self) -> &Value<String> {
        &self.name
    }

    fn forget_assigned(&mut self) {
        self.id = Value::Unknown;
        self.created_at = Value::Unknown;
    }
}

#[async_trait]
impl ManagedResource for Tenants {
    type State = TenantState;
    type Object = Tenant;

    const KIND: &'static str = KIND;
    const ROLE: Role = Role::Operator;

    holds_shared!();

    fn schema(&self) -> Schema {
        let quota = Block {
            description: Description::markdown(
                "Limits on what the tenant may own; a limit left out is unlimited. The controller \
                 refuses a create that would exceed one, naming the quota, the request and the \
                 current use. Changes apply in place.",
            ),
            attributes: LIMITS
                .iter()
                .map(|(name, doc)| {
                    let attribute = Attribute {
                        attr_type: AttributeType::Number,
                        description: Description::markdown(*doc),
                        constraint: AttributeConstraint::Optional,
                        ..Default::default()
                    };
                    (name.to_string(), attribute)
                })
                .collect(),
            ..Default::default()
        };
        let attributes = HashMap::from([
            (
                "name".to_string(),
                Attribute {
                    attr_type: AttributeType::String,
                    description: Description::markdown(
                        "Unique name (a DNS label). Tokens and `?tenant=` refer to the tenant by it. \
                         Changing it replaces the tenant, which the controller refuses while the \
                         tenant owns objects.",
                    ),
                    constraint: AttributeConstraint::Required,
                    ..Default::default()
                },
            ),
            (
                "description".to_string(),
                Attribute {
                    attr_type: AttributeType::String,
                    description: Description::markdown("Free text (who the tenant is for)."),
                    constraint: AttributeConstraint::Optional,
                    ..Default::default()
                },
            ),
            (
                "id".to_string(),
                computed(AttributeType::String, "Stable id assigned by the controller."),
            ),
            (
                "created_at".to_string(),
                computed(AttributeType::String, "RFC 3339 creation time."),
            ),
        ]);
        Schema {
            version: 1,
            block: Block {
                description: Description::markdown(
                    "A tenant: a research group's share of the testbed. Its platforms, VMs, QoS \
                     policies, programs, deployments, tasks and results are invisible to other \
                     tenants. Needs an operator token. A tenant that still owns objects cannot be \
                     destroyed.",
                ),
                attributes,
                blocks: HashMap::from([("quota".to_string(), NestedBlock::Group(quota))]),
                ..Default::default()
            },
        }
    }

    fn validate(&self, diags: &mut Diagnostics, state: &TenantState) {
        state.quota(diags);
    }

    async fn plan_create(&self, diags: &mut Diagnostics, proposed: TenantState) -> TenantState {
        proposed.quota(diags);
        plan_new(proposed)
    }

    async fn plan_update(
        &self,
        diags: &mut Diagnostics,
        prior: &TenantState,
        proposed: TenantState,
    ) -> (TenantState, Vec<AttributePath>) {
        proposed.quota(diags);
        plan_change(prior, proposed)
    }

    async fn create(
        &self,
        diags: &mut Diagnostics,
        client: &Client,
        planned: TenantState,
        request: &CreateRequest,
    ) -> Option<TenantState> {
        let quota = planned.quota(diags)?;
        let body = TenantCreate {
            name: known(&planned.name),
            description: planned.description.as_ref_option().cloned(),
            quota: Some(quota),
            request_id: request.request_id(),
        };
        let tenant = request
            .send(diags, || wire::create_tenant(client, &body))
            .await?;
        let mut state = planned;
        state.id = Value::Value(tenant.id.clone());
        state.created_at = Value::Value(tenant.created_at.clone());
        Some(state)
    }

    async fn update(
        &self,
        diags: &mut Diagnostics,
        prior: &TenantState,
        planned: TenantState,
    ) -> Option<TenantState> {
        let quota = planned.quota(diags)?;
        let client = self.shared.client(diags)?;
        // Both sent whole: a removed description or limit is cleared.
        let body = TenantPatch {
            description: Some(known(&planned.description)),
            quota: Some(quota),
            request_id: None,
        };
        match wire::update_tenant(&client, &known(&prior.id), &body).await {
            Ok(tenant) => {
                let mut state = planned;
                state.refresh_from(&tenant);
                Some(state)
            }
            Err(err) => {
                diagnostics::client_error(diags, &err, Operation::Update(KIND));
                None
            }
        }
    }

    fn id(state: &TenantState) -> &Value<String> {
        &state.id
    }

    fn read_key(state: &TenantState) -> String {
        id_or_name(&state.id, &state.name)
    }

    async fn get(client: &Client, key: &str) -> Result<Tenant, ClientError> {
        wire::get_tenant(client, key).await
    }

    async fn delete(client: &Client, id: &str) -> Result<(), ClientError> {
        wire::delete_tenant(client, id).await
    }

    async fn refresh(&self, _client: &Client, state: &mut TenantState, tenant: &Tenant) {
        state.refresh_from(tenant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unset_limit_is_unlimited_and_a_fraction_points_at_its_attribute() {
        let block = QuotaBlock {
            max_vms: Value::Value(Number::Unsigned(4)),
            max_vcpus: Value::Value(Number::Float(1.5)),
            ..Default::default()
        };
        let mut diags = Diagnostics::default();
        assert_eq!(block.quota(&mut diags), None);
        assert_eq!(diags.errors.len(), 1);
        assert_eq!(
            diags.errors[0].attribute,
            AttributePath::new("quota").attribute("max_vcpus")
        );
        let fixed = QuotaBlock {
            max_vcpus: Value::Value(Number::Unsigned(8)),
            ..block
        };
        let mut diags = Diagnostics::default();
        let quota = fixed.quota(&mut diags).expect("valid");
        assert_eq!(quota.max_vms, Some(4));
        assert_eq!(quota.max_vcpus, Some(8));
        assert_eq!(quota.max_platforms, None);
    }

    #[test]
    fn a_read_back_quota_matches_the_configured_block() {
        let configured = QuotaBlock {
            max_platforms: Value::Value(Number::Unsigned(2)),
            ..Default::default()
        };
        let quota = configured
            .quota(&mut Diagnostics::default())
            .expect("valid");
        assert_eq!(QuotaBlock::from_quota(&quota), configured);
    }

    #[test]
    fn an_unset_description_reading_back_empty_stays_unset() {
        let tenant = Tenant {
            id: "t-1".into(),
            name: "demo".into(),
            description: String::new(),
            quota: Quota::default(),
            created_at: "2026-12-05T00:00:00Z".into(),
        };
        let mut state = TenantState::default();
        state.refresh_from(&tenant);
        assert_eq!(state.description, Value::Null);
        assert_eq!(state.id, Value::Value("t-1".into()));
    }
}
