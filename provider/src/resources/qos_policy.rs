//! `measurelab_qos_policy`: a bandwidth policy that VMs reference by name.
//! Rates are enforced per VM port by the node agent (OVS `linux-htb` QoS for
//! traffic into the VM; guest-side shaping for traffic out of it).

use std::collections::HashMap;

use async_trait::async_trait;
use measurelab_api::client::{Client, ClientError};
use measurelab_api::http::{QosPolicy, QosPolicyCreate, QosPolicyPatch};
use serde::{Deserialize, Serialize};
use tf_provider::schema::{
    Attribute, AttributeConstraint, AttributeType, Block, Description, Schema,
};
use tf_provider::value::Value;
use tf_provider::{AttributePath, Diagnostics};

use super::adapter::{
    holds_shared, id_or_name, known, plan_change, plan_new, AssignedByController, CreateRequest,
    ManagedResource,
};
use crate::diagnostics::{self, Operation};
use crate::number::Number;
use crate::shared::Shared;

const KIND: &str = "QoS policy";

/// The rate and burst attributes: (name, description, required).
const RATES: [(&str, &str, bool); 6] = [
    (
        "ingress_max_kbps",
        "Ceiling for traffic into the VM, in kbit/s.",
        true,
    ),
    (
        "ingress_min_kbps",
        "Guaranteed rate into the VM, in kbit/s; at most `ingress_max_kbps`.",
        false,
    ),
    (
        "ingress_burst_kbytes",
        "Burst allowance into the VM, in kbytes.",
        false,
    ),
    (
        "egress_max_kbps",
        "Ceiling for traffic out of the VM, in kbit/s. Unset: no limit.",
        false,
    ),
    (
        "egress_min_kbps",
        "Guaranteed rate out of the VM, in kbit/s; at most `egress_max_kbps`.",
        false,
    ),
    (
        "egress_burst_kbytes",
        "Burst allowance out of the VM, in kbytes.",
        false,
    ),
];

/// Terraform state of one policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QosPolicyState {
    /// Unique name.
    pub name: Value<String>,
    /// Ceiling into the VM.
    pub ingress_max_kbps: Value<Number>,
    /// Guaranteed rate into the VM.
    pub ingress_min_kbps: Value<Number>,
    /// Burst into the VM.
    pub ingress_burst_kbytes: Value<Number>,
    /// Ceiling out of the VM.
    pub egress_max_kbps: Value<Number>,
    /// Guaranteed rate out of the VM.
    pub egress_min_kbps: Value<Number>,
    /// Burst out of the VM.
    pub egress_burst_kbytes: Value<Number>,
    /// Controller id.
    pub id: Value<String>,
    /// Creation time.
    pub created_at: Value<String>,
}

/// The rates of a policy as plain optional integers, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Rates {
    ingress_max_kbps: u64,
    ingress_min_kbps: Option<u64>,
    ingress_burst_kbytes: Option<u64>,
    egress_max_kbps: Option<u64>,
    egress_min_kbps: Option<u64>,
    egress_burst_kbytes: Option<u64>,
}

/// A whole, positive number of kbit/s or kbytes; `None` for null or unknown.
fn positive(
    diags: &mut Diagnostics,
    attribute: &'static str,
    value: &Value<Number>,
) -> Option<u64> {
    let Value::Value(number) = value else {
        return None;
    };
    let parsed = match number {
        Number::Unsigned(v) if *v > 0 => Some(*v),
        _ => None,
    };
    if parsed.is_none() {
        diagnostics::invalid_value(
            diags,
            AttributePath::new(attribute),
            "Invalid rate",
            format!(
                "`{attribute}` is {}; it must be a whole number greater than zero.",
                serde_json::to_string(number).unwrap_or_default()
            ),
        );
    }
    parsed
}

impl QosPolicyState {
    /// Validate the rates; reports each bad attribute. `None` if any is bad or
    /// a required one is unknown.
    fn rates(&self, diags: &mut Diagnostics) -> Option<Rates> {
        let errors_before = diags.errors.len();
        let rates = Rates {
            ingress_max_kbps: positive(diags, "ingress_max_kbps", &self.ingress_max_kbps)
                .unwrap_or(0),
            ingress_min_kbps: positive(diags, "ingress_min_kbps", &self.ingress_min_kbps),
            ingress_burst_kbytes: positive(
                diags,
                "ingress_burst_kbytes",
                &self.ingress_burst_kbytes,
            ),
            egress_max_kbps: positive(diags, "egress_max_kbps", &self.egress_max_kbps),
            egress_min_kbps: positive(diags, "egress_min_kbps", &self.egress_min_kbps),
            egress_burst_kbytes: positive(diags, "egress_burst_kbytes", &self.egress_burst_kbytes),
        };
        if let Some(min) = rates.ingress_min_kbps {
            if rates.ingress_max_kbps > 0 && min > rates.ingress_max_kbps {
                diagnostics::invalid_value(
                    diags,
                    AttributePath::new("ingress_min_kbps"),
                    "Guaranteed rate above the ceiling",
                    format!(
                        "`ingress_min_kbps` ({min}) is greater than `ingress_max_kbps` ({}).",
                        rates.ingress_max_kbps
                    ),
                );
            }
        }
        if let (Some(min), Some(max)) = (rates.egress_min_kbps, rates.egress_max_kbps) {
            if min > max {
                diagnostics::invalid_value(
                    diags,
                    AttributePath::new("egress_min_kbps"),
                    "Guaranteed rate above the ceiling",
                    format!("`egress_min_kbps` ({min}) is greater than `egress_max_kbps` ({max})."),
                );
            }
        }
        if rates.egress_min_kbps.is_some()
            && rates.egress_max_kbps.is_none()
            && self.egress_max_kbps.is_null()
        {
            diagnostics::invalid_value(
                diags,
                AttributePath::new("egress_min_kbps"),
                "Guaranteed rate without a ceiling",
                "`egress_min_kbps` needs `egress_max_kbps`.".to_string(),
            );
        }
        let known = self.ingress_max_kbps.is_value();
        (diags.errors.len() == errors_before && known).then_some(rates)
    }

    fn refresh_from(&mut self, policy: &QosPolicy) {
        let number = |v: Option<u64>| v.map(Number::from).map(Value::Value).unwrap_or(Value::Null);
        self.name = Value::Value(policy.name.clone());
        self.id = Value::Value(policy.id.clone());
        self.created_at = Value::Value(policy.created_at.clone());
        self.ingress_max_kbps = Value::Value(Number::from(policy.ingress_max_kbps));
        self.ingress_min_kbps = number(policy.ingress_min_kbps);
        self.ingress_burst_kbytes = number(policy.ingress_burst_kbytes);
        self.egress_max_kbps = number(policy.egress_max_kbps);
        self.egress_min_kbps = number(policy.egress_min_kbps);
        self.egress_burst_kbytes = number(policy.egress_burst_kbytes);
    }
}

/// The controller's QoS policies, as a Terraform resource.
pub struct QosPolicies {
    shared: Shared,
}

impl AssignedByController for QosPolicyState {
    fn name(&self) -> &Value<String> {
        &self.name
    }

    fn forget_assigned(&mut self) {
        self.id = Value::Unknown;
        self.created_at = Value::Unknown;
    }
}

#[async_trait]
impl ManagedResource for QosPolicies {
    type State = QosPolicyState;
    type Object = QosPolicy;

    const KIND: &'static str = KIND;

    holds_shared!();

    fn schema(&self) -> Schema {
        let mut attributes: HashMap<String, Attribute> = RATES
            .iter()
            .map(|(name, description, required)| {
                (
                    name.to_string(),
                    Attribute {
                        attr_type: AttributeType::Number,
                        description: Description::markdown(*description),
                        constraint: if *required {
                            AttributeConstraint::Required
                        } else {
                            AttributeConstraint::Optional
                        },
                        ..Default::default()
                    },
                )
            })
            .collect();
        attributes.insert(
            "name".to_string(),
            Attribute {
                attr_type: AttributeType::String,
                description: Description::markdown(
                    "Unique name (a DNS label: lowercase letters, digits and `-`). VMs refer to the policy \
                     by this name. Changing it replaces the policy.",
                ),
                constraint: AttributeConstraint::Required,
                ..Default::default()
            },
        );
        attributes.insert(
            "id".to_string(),
            crate::node_model::computed(
                AttributeType::String,
                "Stable id assigned by the controller.",
            ),
        );
        attributes.insert(
            "created_at".to_string(),
            crate::node_model::computed(AttributeType::String, "RFC 3339 creation time."),
        );
        Schema {
            version: 1,
            block: Block {
                description: Description::markdown(
                    "A per-VM bandwidth policy. Rates change in place; VMs using the policy pick up the \
                     new rates without a restart. A policy still used by a VM cannot be destroyed.",
                ),
                attributes,
                ..Default::default()
            },
        }
    }

    fn validate(&self, diags: &mut Diagnostics, state: &QosPolicyState) {
        state.rates(diags);
    }

    async fn plan_create(
        &self,
        diags: &mut Diagnostics,
        proposed: QosPolicyState,
    ) -> QosPolicyState {
        proposed.rates(diags);
        plan_new(proposed)
    }

    async fn plan_update(
        &self,
        diags: &mut Diagnostics,
        prior: &QosPolicyState,
        proposed: QosPolicyState,
    ) -> (QosPolicyState, Vec<AttributePath>) {
        proposed.rates(diags);
        plan_change(prior, proposed)
    }

    async fn create(
        &self,
        diags: &mut Diagnostics,
        client: &Client,
        planned: QosPolicyState,
        request: &CreateRequest,
    ) -> Option<QosPolicyState> {
        let rates = planned.rates(diags)?;
        let body = QosPolicyCreate {
            tenant: None,
            name: known(&planned.name),
            ingress_max_kbps: rates.ingress_max_kbps,
            ingress_min_kbps: rates.ingress_min_kbps,
            ingress_burst_kbytes: rates.ingress_burst_kbytes,
            egress_max_kbps: rates.egress_max_kbps,
            egress_min_kbps: rates.egress_min_kbps,
            egress_burst_kbytes: rates.egress_burst_kbytes,
            request_id: request.request_id(),
        };
        let policy = request
            .send(diags, || client.create_qos_policy(&body))
            .await?;
        let mut state = planned;
        state.id = Value::Value(policy.id.clone());
        state.created_at = Value::Value(policy.created_at.clone());
        Some(state)
    }

    async fn update(
        &self,
        diags: &mut Diagnostics,
        prior: &QosPolicyState,
        planned: QosPolicyState,
    ) -> Option<QosPolicyState> {
        let rates = planned.rates(diags)?;
        let client = self.shared.client(diags)?;
        // Send every rate: a removed optional rate is an explicit null (cleared).
        let body = QosPolicyPatch {
            ingress_max_kbps: Some(rates.ingress_max_kbps),
            ingress_min_kbps: Some(rates.ingress_min_kbps),
            ingress_burst_kbytes: Some(rates.ingress_burst_kbytes),
            egress_max_kbps: Some(rates.egress_max_kbps),
            egress_min_kbps: Some(rates.egress_min_kbps),
            egress_burst_kbytes: Some(rates.egress_burst_kbytes),
            request_id: None,
        };
        match client.update_qos_policy(&known(&prior.id), &body).await {
            Ok(policy) => {
                let mut applied = planned.clone();
                applied.refresh_from(&policy);
                if applied != planned {
                    // Store what the controller really has, and say so, rather
                    // than a state that would show a diff on every plan.
                    diagnostics::invalid_value(
                        diags,
                        AttributePath::root(),
                        "The controller did not apply every rate",
                        format!(
                            "After the update the controller reports ingress_max_kbps={}, ingress_min_kbps={:?}, \
                             ingress_burst_kbytes={:?}, egress_max_kbps={:?}, egress_min_kbps={:?}, \
                             egress_burst_kbytes={:?}, which differs from the configuration.\n\nWhat to do: \
                             report this controller bug; as a workaround replace the policy \
                             (`terraform apply -replace=...`).",
                            policy.ingress_max_kbps,
                            policy.ingress_min_kbps,
                            policy.ingress_burst_kbytes,
                            policy.egress_max_kbps,
                            policy.egress_min_kbps,
                            policy.egress_burst_kbytes
                        ),
                    );
                }
                Some(applied)
            }
            Err(err) => {
                diagnostics::client_error(diags, &err, Operation::Update(KIND));
                None
            }
        }
    }

    fn id(state: &QosPolicyState) -> &Value<String> {
        &state.id
    }

    fn read_key(state: &QosPolicyState) -> String {
        id_or_name(&state.id, &state.name)
    }

    async fn get(client: &Client, key: &str) -> Result<QosPolicy, ClientError> {
        client.get_qos_policy(key).await
    }

    async fn delete(client: &Client, id: &str) -> Result<(), ClientError> {
        client.delete_qos_policy(id).await.map(drop)
    }

    async fn refresh(&self, _client: &Client, state: &mut QosPolicyState, policy: &QosPolicy) {
        state.refresh_from(policy);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(max: Number, min: Option<Number>) -> QosPolicyState {
        QosPolicyState {
            name: Value::Value("p".into()),
            ingress_max_kbps: Value::Value(max),
            ingress_min_kbps: min.map(Value::Value).unwrap_or(Value::Null),
            ..Default::default()
        }
    }

    #[test]
    fn accepts_a_plain_ceiling() {
        let mut diags = Diagnostics::default();
        let rates = state(Number::Unsigned(20_000), None).rates(&mut diags);
        assert!(diags.errors.is_empty());
        assert_eq!(rates.map(|r| r.ingress_max_kbps), Some(20_000));
    }

    #[test]
    fn fractional_or_zero_rates_point_at_the_attribute() {
        let mut diags = Diagnostics::default();
        assert!(state(Number::Float(1.5), None).rates(&mut diags).is_none());
        assert_eq!(
            diags.errors[0].attribute,
            AttributePath::new("ingress_max_kbps")
        );
        let mut diags = Diagnostics::default();
        assert!(state(Number::Unsigned(0), None).rates(&mut diags).is_none());
        assert_eq!(
            diags.errors[0].attribute,
            AttributePath::new("ingress_max_kbps")
        );
    }

    #[test]
    fn guarantee_above_ceiling_is_rejected() {
        let mut diags = Diagnostics::default();
        assert!(state(Number::Unsigned(100), Some(Number::Unsigned(200)))
            .rates(&mut diags)
            .is_none());
        assert_eq!(
            diags.errors[0].attribute,
            AttributePath::new("ingress_min_kbps")
        );
    }
}
