//! `measurelab_tenant_usage`: a tenant's quota and what it uses now, so a
//! configuration can size itself to what is left.

use std::collections::HashMap;

use async_trait::async_trait;
use measurelab_api::client::{Client, ClientError};
use serde::{Deserialize, Serialize};
use tf_provider::schema::{Attribute, AttributeConstraint, AttributeType, Description};
use tf_provider::value::Value;

use super::lookup::{configured, found, Lookup, LookupDataSource};
use super::views::{object_type, Field};
use crate::access::Whoami;
use crate::node_model::computed;
use crate::number::Number;
use crate::wire::{self, Quota, TenantUsage, Usage};

/// The data source implementation.
pub type TenantUsageDataSource = LookupDataSource<UsageLookup>;

/// A tenant's limits; null is unlimited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QuotaView {
    max_platforms: Value<Number>,
    max_vms: Value<Number>,
    max_vcpus: Value<Number>,
    max_memory_mib: Value<Number>,
    max_bandwidth_kbps: Value<Number>,
    max_program_bytes: Value<Number>,
}

/// What a tenant uses.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageView {
    platforms: Value<Number>,
    vms: Value<Number>,
    vcpus: Value<Number>,
    memory_mib: Value<Number>,
    bandwidth_kbps: Value<Number>,
    program_bytes: Value<Number>,
}

/// Configuration and result of the data source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantUsageState {
    /// Tenant name or id; null: the token's own tenant.
    pub tenant: Value<String>,
    /// The tenant's id.
    pub tenant_id: Value<String>,
    /// Its limits.
    pub quota: Value<QuotaView>,
    /// Its use.
    pub usage: Value<UsageView>,
}

fn quota_fields() -> Vec<Field> {
    let number = || AttributeType::Number;
    vec![
        (
            "max_platforms",
            number(),
            "Most platforms; null: unlimited.",
        ),
        ("max_vms", number(), "Most VMs; null: unlimited."),
        ("max_vcpus", number(), "Most vCPUs; null: unlimited."),
        (
            "max_memory_mib",
            number(),
            "Most memory (MiB); null: unlimited.",
        ),
        (
            "max_bandwidth_kbps",
            number(),
            "Most QoS bandwidth (kbit/s); null: unlimited.",
        ),
        (
            "max_program_bytes",
            number(),
            "Most program storage (bytes); null: unlimited.",
        ),
    ]
}

fn usage_fields() -> Vec<Field> {
    let number = || AttributeType::Number;
    vec![
        ("platforms", number(), "Platforms the tenant owns."),
        ("vms", number(), "VMs over its platforms."),
        ("vcpus", number(), "vCPUs summed over its VMs."),
        ("memory_mib", number(), "Memory (MiB) summed over its VMs."),
        (
            "bandwidth_kbps",
            number(),
            "QoS bandwidth (kbit/s) summed over its VMs' policies.",
        ),
        ("program_bytes", number(), "Bytes of its uploaded programs."),
    ]
}

impl From<&Quota> for QuotaView {
    fn from(quota: &Quota) -> Self {
        let limit = |v: Option<u64>| v.map_or(Value::Null, |v| Value::Value(Number::from(v)));
        QuotaView {
            max_platforms: limit(quota.max_platforms),
            max_vms: limit(quota.max_vms),
            max_vcpus: limit(quota.max_vcpus),
            max_memory_mib: limit(quota.max_memory_mib),
            max_bandwidth_kbps: limit(quota.max_bandwidth_kbps),
            max_program_bytes: limit(quota.max_program_bytes),
        }
    }
}

impl From<&Usage> for UsageView {
    fn from(usage: &Usage) -> Self {
        let count = |v: u64| Value::Value(Number::from(v));
        UsageView {
            platforms: count(usage.platforms),
            vms: count(usage.vms),
            vcpus: count(usage.vcpus),
            memory_mib: count(usage.memory_mib),
            bandwidth_kbps: count(usage.bandwidth_kbps),
            program_bytes: count(usage.program_bytes),
        }
    }
}

/// How `measurelab_tenant_usage` finds and shows a tenant's usage.
pub struct UsageLookup;

#[async_trait]
impl Lookup for UsageLookup {
    type State = TenantUsageState;
    type Object = (String, TenantUsage);

    const KIND: &'static str = "tenant";
    const KEY: &'static str = "tenant";
    const DESCRIPTION: &'static str =
        "Reads a tenant's quota and current usage (platforms, VMs, vCPUs, memory, QoS \
         bandwidth, program storage). A tenant token reads its own tenant; an operator token \
         reads any.";

    fn attributes() -> HashMap<String, Attribute> {
        HashMap::from([
            (
                "tenant".to_string(),
                Attribute {
                    attr_type: AttributeType::String,
                    description: Description::markdown(
                        "Name or id of the tenant. Default: the provider token's own tenant \
                         (an operator token, which has none, must set it). Read back as given.",
                    ),
                    constraint: AttributeConstraint::OptionalComputed,
                    ..Default::default()
                },
            ),
            (
                "tenant_id".to_string(),
                computed(AttributeType::String, "Id of the tenant."),
            ),
            (
                "quota".to_string(),
                computed(
                    object_type(&quota_fields()),
                    "The tenant's limits (each null when unlimited).",
                ),
            ),
            (
                "usage".to_string(),
                computed(
                    object_type(&usage_fields()),
                    "What the tenant uses now, in the units of `quota`.",
                ),
            ),
        ])
    }

    async fn find(
        client: &Client,
        config: &TenantUsageState,
    ) -> Result<Option<(String, TenantUsage)>, ClientError> {
        let tenant = match config.tenant.as_ref_option() {
            Some(tenant) => tenant.clone(),
            None => {
                let whoami: Whoami = client
                    .request::<(), _>(reqwest::Method::GET, "/v1/whoami", None)
                    .await?;
                // An operator token has no tenant of its own: nothing to read.
                let Some(own) = whoami.tenant_name.or(whoami.tenant_id) else {
                    return Ok(None);
                };
                own
            }
        };
        let usage = found(wire::tenant_usage(client, &tenant).await)?;
        Ok(usage.map(|usage| (tenant, usage)))
    }

    fn view((tenant, usage): &(String, TenantUsage)) -> TenantUsageState {
        TenantUsageState {
            tenant: Value::Value(tenant.clone()),
            tenant_id: Value::Value(usage.tenant_id.clone()),
            quota: Value::Value(QuotaView::from(&usage.quota)),
            usage: Value::Value(UsageView::from(&usage.usage)),
        }
    }

    fn not_found(config: &TenantUsageState) -> String {
        match config.tenant.as_ref_option() {
            Some(_) => format!(
                "The controller has no tenant named (or with id) {:?} that this token may \
                 see.\n\nWhat to do: check the name (`measurelab tenant list`); a tenant token \
                 sees only its own tenant.",
                configured(&config.tenant)
            ),
            None => "The controller has no usage for the provider token's own tenant; an \
                     operator token has no tenant of its own.\n\nWhat to do: set `tenant` to the \
                     tenant's name or id."
                .to_string(),
        }
    }
}
