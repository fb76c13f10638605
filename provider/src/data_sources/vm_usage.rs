//! `measurelab_vm_usage`: the usage series of one VM's guest (CPU, memory,
//! disk, network), as its guest agent reported it
//! (`GET /v1/vms/{id}/usage`).

use std::collections::HashMap;

use async_trait::async_trait;
use measurelab_api::client::{Client, ClientError};
use measurelab_api::http::{VmUsage, VmUsageSample};
use serde::{Deserialize, Serialize};
use tf_provider::schema::{Attribute, AttributeConstraint, AttributeType, Description};
use tf_provider::value::Value;

use super::lookup::{configured, found, Lookup, LookupDataSource};
use super::views::{object_type, Field};
use crate::node_model::computed;
use crate::number::Number;

/// The data source implementation.
pub type VmUsageDataSource = LookupDataSource<VmUsageLookup>;

/// One sample as Terraform shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageSampleView {
    time: Value<String>,
    cpu_count: Value<Number>,
    cpu_used_percent: Value<Number>,
    memory_total_bytes: Value<Number>,
    memory_used_bytes: Value<Number>,
    disk_total_bytes: Value<Number>,
    disk_used_bytes: Value<Number>,
    network_rx_bytes: Value<Number>,
    network_tx_bytes: Value<Number>,
    network_rx_bytes_per_second: Value<Number>,
    network_tx_bytes_per_second: Value<Number>,
}

/// Configuration and result of the data source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VmUsageState {
    /// VM name or id.
    pub vm: Value<String>,
    /// RFC 3339 start of the range; null: an hour before `until`.
    pub since: Value<String>,
    /// RFC 3339 end of the range; null: now.
    pub until: Value<String>,
    /// Seconds per sample; null: the controller's choice.
    pub step_seconds: Value<Number>,
    /// The samples, oldest first.
    pub samples: Value<Vec<UsageSampleView>>,
    /// Highest `cpu_used_percent` of the samples.
    pub max_cpu_used_percent: Value<Number>,
    /// Highest `memory_used_bytes` of the samples.
    pub max_memory_used_bytes: Value<Number>,
}

fn sample_fields() -> Vec<Field> {
    let number = || AttributeType::Number;
    vec![
        ("time", AttributeType::String, "RFC 3339 start of the step."),
        ("cpu_count", number(), "CPUs the guest sees."),
        (
            "cpu_used_percent",
            number(),
            "Busy CPU time over all CPUs, 0 to 100, averaged over the step.",
        ),
        ("memory_total_bytes", number(), "Memory the guest sees."),
        (
            "memory_used_bytes",
            number(),
            "Memory in use (total minus available).",
        ),
        (
            "disk_total_bytes",
            number(),
            "Size of the guest's root filesystem.",
        ),
        (
            "disk_used_bytes",
            number(),
            "Used on the guest's root filesystem.",
        ),
        (
            "network_rx_bytes",
            number(),
            "Bytes received on all interfaces but loopback since the guest started.",
        ),
        (
            "network_tx_bytes",
            number(),
            "Bytes sent on all interfaces but loopback since the guest started.",
        ),
        (
            "network_rx_bytes_per_second",
            number(),
            "Receive rate since the previous step; null for the first step and after the \
             guest restarted.",
        ),
        (
            "network_tx_bytes_per_second",
            number(),
            "Send rate since the previous step; null as for the receive rate.",
        ),
    ]
}

impl From<&VmUsageSample> for UsageSampleView {
    fn from(s: &VmUsageSample) -> Self {
        let number = |v: u64| Value::Value(Number::from(v));
        let real = |v: f64| Value::Value(Number::from(v));
        let rate = |v: Option<f64>| v.map_or(Value::Null, real);
        UsageSampleView {
            time: Value::Value(s.time.clone()),
            cpu_count: number(s.cpu_count.into()),
            cpu_used_percent: real(s.cpu_used_percent),
            memory_total_bytes: number(s.memory_total_bytes),
            memory_used_bytes: number(s.memory_used_bytes),
            disk_total_bytes: number(s.disk_total_bytes),
            disk_used_bytes: number(s.disk_used_bytes),
            network_rx_bytes: number(s.network_rx_bytes),
            network_tx_bytes: number(s.network_tx_bytes),
            network_rx_bytes_per_second: rate(s.network_rx_bytes_per_second),
            network_tx_bytes_per_second: rate(s.network_tx_bytes_per_second),
        }
    }
}

/// What was asked (read back as configured) and what the controller answered.
pub struct VmUsageAnswer {
    config: VmUsageState,
    usage: VmUsage,
}

/// How `measurelab_vm_usage` reads a VM's usage.
pub struct VmUsageLookup;

fn optional(name: &str, attr_type: AttributeType, doc: &'static str) -> (String, Attribute) {
    (
        name.to_string(),
        Attribute {
            attr_type,
            description: Description::markdown(doc),
            constraint: AttributeConstraint::Optional,
            ..Default::default()
        },
    )
}

#[async_trait]
impl Lookup for VmUsageLookup {
    type State = VmUsageState;
    type Object = VmUsageAnswer;

    const KIND: &'static str = "VM";
    const KEY: &'static str = "vm";
    const DESCRIPTION: &'static str =
        "Reads the usage series of a VM's guest: CPU, memory, disk and network, as the guest \
         agent measured them and sent them with its heartbeats. The controller keeps one \
         sample per VM per 10 s for its retention window (`--usage-retention-hours`, default \
         24). A tenant token reads its own VMs only.";

    fn attributes() -> HashMap<String, Attribute> {
        HashMap::from([
            (
                "vm".to_string(),
                Attribute {
                    attr_type: AttributeType::String,
                    description: Description::markdown("Name or id of the VM."),
                    constraint: AttributeConstraint::Required,
                    ..Default::default()
                },
            ),
            optional(
                "since",
                AttributeType::String,
                "RFC 3339 start of the range. Default: an hour before `until`.",
            ),
            optional(
                "until",
                AttributeType::String,
                "RFC 3339 end of the range. Default: the time of the read, so the samples \
                 change from one plan to the next.",
            ),
            (
                "step_seconds".to_string(),
                Attribute {
                    attr_type: AttributeType::Number,
                    description: Description::markdown(
                        "Seconds per sample, 10 to 86400: CPU is averaged and the rest taken \
                         from the last report in each step. Default: the range in about 360 \
                         samples, on whole 10 s steps; read back as the controller chose it.",
                    ),
                    constraint: AttributeConstraint::OptionalComputed,
                    ..Default::default()
                },
            ),
            (
                "samples".to_string(),
                computed(
                    AttributeType::List(Box::new(object_type(&sample_fields()))),
                    "The samples, oldest first; steps without a report are left out.",
                ),
            ),
            (
                "max_cpu_used_percent".to_string(),
                computed(
                    AttributeType::Number,
                    "Highest `cpu_used_percent` of the samples (null without samples).",
                ),
            ),
            (
                "max_memory_used_bytes".to_string(),
                computed(
                    AttributeType::Number,
                    "Highest `memory_used_bytes` of the samples (null without samples).",
                ),
            ),
        ])
    }

    async fn find(
        client: &Client,
        config: &VmUsageState,
    ) -> Result<Option<VmUsageAnswer>, ClientError> {
        // A step Terraform cannot hold as u32 is passed as 0, which the
        // controller refuses naming `step`.
        let step = config.step_seconds.as_ref_option().map(|n| {
            n.as_whole()
                .and_then(|s| u32::try_from(s).ok())
                .unwrap_or(0)
        });
        let usage = found(
            client
                .vm_usage(
                    &configured(&config.vm),
                    config.since.as_ref_option().map(String::as_str),
                    config.until.as_ref_option().map(String::as_str),
                    step,
                )
                .await,
        )?;
        Ok(usage.map(|usage| VmUsageAnswer {
            config: config.clone(),
            usage,
        }))
    }

    fn view(answer: &VmUsageAnswer) -> VmUsageState {
        let samples = &answer.usage.samples;
        let max_cpu = samples
            .iter()
            .map(|s| s.cpu_used_percent)
            .reduce(f64::max)
            .map_or(Value::Null, |v| Value::Value(Number::from(v)));
        let max_memory = samples
            .iter()
            .map(|s| s.memory_used_bytes)
            .max()
            .map_or(Value::Null, |v| Value::Value(Number::from(v)));
        VmUsageState {
            vm: answer.config.vm.clone(),
            since: answer.config.since.clone(),
            until: answer.config.until.clone(),
            step_seconds: Value::Value(Number::from(answer.usage.step_seconds)),
            samples: Value::Value(samples.iter().map(UsageSampleView::from).collect()),
            max_cpu_used_percent: max_cpu,
            max_memory_used_bytes: max_memory,
        }
    }

    fn not_found(config: &VmUsageState) -> String {
        format!(
            "The controller has no VM named (or with id) {:?} that this token may see.\n\n\
             What to do: check the name (the `measurelab_vms` data source lists them); a \
             tenant token sees only its own tenant's VMs.",
            configured(&config.vm)
        )
    }
}

#[cfg(test)]
mod tests {
    use axum::extract::{Path, Query};
    use axum::http::StatusCode;
    use axum::routing::get;
    use axum::{Json, Router};
    use tf_provider::value::ValueEmpty;
    use tf_provider::{AttributePath, DataSource, Diagnostics};
    use tokio::net::TcpListener;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::shared::Shared;

    fn sample(time: &str, cpu: f64, memory: u64, rate: Option<f64>) -> VmUsageSample {
        VmUsageSample {
            time: time.into(),
            cpu_count: 1,
            cpu_used_percent: cpu,
            memory_total_bytes: 64 << 20,
            memory_used_bytes: memory,
            disk_total_bytes: 0,
            disk_used_bytes: 0,
            network_rx_bytes: 1000,
            network_tx_bytes: 10,
            network_rx_bytes_per_second: rate,
            network_tx_bytes_per_second: rate,
        }
    }

    /// A fake controller: VM `g` has two samples, but only for the step and
    /// range the configuration names; anything else is missing.
    async fn vm_usage(
        Path(vm): Path<String>,
        Query(query): Query<HashMap<String, String>>,
    ) -> Result<Json<VmUsage>, (StatusCode, Json<serde_json::Value>)> {
        let asked = |k: &str| query.get(k).map(String::as_str);
        if vm == "g"
            && asked("step") == Some("60")
            && asked("since") == Some("2026-12-05T00:00:00Z")
            && asked("until").is_none()
        {
            return Ok(Json(VmUsage {
                vm_id: "id-g".into(),
                step_seconds: 60,
                samples: vec![
                    sample("2026-12-05T00:00:00Z", 12.5, 5 << 20, None),
                    sample("2026-12-05T00:01:00Z", 50.0, 4 << 20, Some(2.5)),
                ],
            }));
        }
        Err((
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": {"code": "not_found", "message": "no"}})),
        ))
    }

    async fn read(vm: &str) -> (Option<VmUsageState>, Diagnostics) {
        let app = Router::new().route("/v1/vms/:id/usage", get(vm_usage));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let shared = Shared::new(CancellationToken::new());
        shared.set_client(Client::new(&url, "token", None).unwrap());
        let source = VmUsageDataSource::new(shared);
        let config = VmUsageState {
            vm: Value::Value(vm.into()),
            since: Value::Value("2026-12-05T00:00:00Z".into()),
            step_seconds: Value::Value(Number::from(60u32)),
            ..Default::default()
        };
        let mut diags = Diagnostics::default();
        let state = source.read(&mut diags, config, ValueEmpty::default()).await;
        (state, diags)
    }

    #[tokio::test]
    async fn samples_are_shown_with_their_maxima_and_missing_rates_as_null() {
        let (state, diags) = read("g").await;
        assert!(diags.errors.is_empty(), "{:?}", diags.errors);
        let state = state.unwrap();
        let samples = state.samples.as_ref_option().unwrap();
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].network_rx_bytes_per_second, Value::Null);
        assert_eq!(
            samples[1].network_rx_bytes_per_second,
            Value::Value(Number::from(2.5))
        );
        assert_eq!(state.max_cpu_used_percent, Value::Value(Number::from(50.0)));
        assert_eq!(
            state.max_memory_used_bytes,
            Value::Value(Number::from(5u64 << 20))
        );
        assert_eq!(state.step_seconds, Value::Value(Number::from(60u32)));
        assert_eq!(state.until, Value::Null);
    }

    #[tokio::test]
    async fn a_missing_vm_is_an_error_on_vm() {
        let (state, diags) = read("other").await;
        assert_eq!(state, None);
        assert_eq!(diags.errors.len(), 1);
        assert_eq!(diags.errors[0].attribute, AttributePath::new("vm"));
        assert_eq!(diags.errors[0].summary, "No such VM");
    }
}
