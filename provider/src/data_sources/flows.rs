//! `measurelab_flows`: the flow records of one virtual platform, from the
//! controller's collector (`GET /v1/platforms/{id}/flows`).

use std::collections::HashMap;

use async_trait::async_trait;
use measurelab_api::client::{Client, ClientError};
use measurelab_api::http::Flow;
use serde::{Deserialize, Serialize};
use tf_provider::schema::{Attribute, AttributeConstraint, AttributeType, Description};
use tf_provider::value::Value;

use super::lookup::{configured, found, Lookup, LookupDataSource};
use super::views::{object_type, Field};
use crate::node_model::computed;
use crate::number::Number;

/// The data source implementation.
pub type FlowsDataSource = LookupDataSource<FlowsLookup>;

/// One flow record as Terraform shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowView {
    first_seen: Value<String>,
    last_seen: Value<String>,
    node: Value<String>,
    protocol: Value<Number>,
    src_addr: Value<String>,
    src_port: Value<Number>,
    dst_addr: Value<String>,
    dst_port: Value<Number>,
    vlan: Value<Number>,
    packets: Value<Number>,
    bytes: Value<Number>,
}

/// Configuration and result of the data source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowsState {
    /// Platform name or id.
    pub platform: Value<String>,
    /// RFC 3339 start of the range; null: an hour before `until`.
    pub since: Value<String>,
    /// RFC 3339 end of the range; null: now.
    pub until: Value<String>,
    /// The records, oldest first.
    pub flows: Value<Vec<FlowView>>,
    /// Sum of the records' packets.
    pub total_packets: Value<Number>,
    /// Sum of the records' bytes.
    pub total_bytes: Value<Number>,
}

fn flow_fields() -> Vec<Field> {
    let text = || AttributeType::String;
    let number = || AttributeType::Number;
    vec![
        (
            "first_seen",
            text(),
            "RFC 3339 time of the record's first packet.",
        ),
        (
            "last_seen",
            text(),
            "RFC 3339 time of the record's last packet.",
        ),
        ("node", text(), "Node whose switch exported the record."),
        (
            "protocol",
            number(),
            "IP protocol number (1 ICMP, 6 TCP, 17 UDP).",
        ),
        ("src_addr", text(), "Source address."),
        ("src_port", number(), "Source port (ICMP: 0)."),
        ("dst_addr", text(), "Destination address."),
        (
            "dst_port",
            number(),
            "Destination port (ICMP: type * 256 + code).",
        ),
        ("vlan", number(), "The platform's VLAN."),
        (
            "packets",
            number(),
            "Packets as exported (with sampling 1 in N, about 1/N of them).",
        ),
        (
            "bytes",
            number(),
            "Bytes as exported; Open vSwitch counts whole Ethernet frames.",
        ),
    ]
}

impl From<&Flow> for FlowView {
    fn from(flow: &Flow) -> Self {
        let text = |v: &str| Value::Value(v.to_string());
        let number = |v: u64| Value::Value(Number::from(v));
        FlowView {
            first_seen: text(&flow.first_seen),
            last_seen: text(&flow.last_seen),
            node: text(&flow.node),
            protocol: number(flow.protocol.into()),
            src_addr: text(&flow.src_addr),
            src_port: number(flow.src_port.into()),
            dst_addr: text(&flow.dst_addr),
            dst_port: number(flow.dst_port.into()),
            vlan: number(flow.vlan.into()),
            packets: number(flow.packets),
            bytes: number(flow.bytes),
        }
    }
}

/// What was asked (read back as configured) and what the controller answered.
pub struct FlowsAnswer {
    config: FlowsState,
    flows: Vec<Flow>,
}

/// How `measurelab_flows` reads a platform's flows.
pub struct FlowsLookup;

fn key(name: &str, constraint: AttributeConstraint, doc: &'static str) -> (String, Attribute) {
    (
        name.to_string(),
        Attribute {
            attr_type: AttributeType::String,
            description: Description::markdown(doc),
            constraint,
            ..Default::default()
        },
    )
}

#[async_trait]
impl Lookup for FlowsLookup {
    type State = FlowsState;
    type Object = FlowsAnswer;

    const KIND: &'static str = "virtual platform";
    const KEY: &'static str = "platform";
    const DESCRIPTION: &'static str =
        "Reads the flow records of a virtual platform whose `flow_monitoring` is on: what its \
         nodes' switches exported (NetFlow v5, IPFIX or sFlow, as each node's `flow_export` \
         says) and the controller's collector kept, filtered to the platform's subnet and \
         member nodes. A tenant token reads its own platforms only. The read fails while the \
         platform's `flow_monitoring` is off or when the controller runs no collector.";

    fn attributes() -> HashMap<String, Attribute> {
        HashMap::from([
            key(
                "platform",
                AttributeConstraint::Required,
                "Name or id of the virtual platform.",
            ),
            key(
                "since",
                AttributeConstraint::Optional,
                "RFC 3339 time; records whose last packet is at or after it. Default: an hour \
                 before `until`. The controller reads the collector's files whose names say \
                 they cover the range, page by page; the data source reads every page.",
            ),
            key(
                "until",
                AttributeConstraint::Optional,
                "RFC 3339 time; records whose last packet is at or before it. Default: the time \
                 of the read, so the records change from one plan to the next.",
            ),
            (
                "flows".to_string(),
                computed(
                    AttributeType::List(Box::new(object_type(&flow_fields()))),
                    "The records, oldest first.",
                ),
            ),
            (
                "total_packets".to_string(),
                computed(AttributeType::Number, "Sum of the records' `packets`."),
            ),
            (
                "total_bytes".to_string(),
                computed(AttributeType::Number, "Sum of the records' `bytes`."),
            ),
        ])
    }

    async fn find(
        client: &Client,
        config: &FlowsState,
    ) -> Result<Option<FlowsAnswer>, ClientError> {
        let flows = found(
            client
                .platform_flows(
                    &configured(&config.platform),
                    config.since.as_ref_option().map(String::as_str),
                    config.until.as_ref_option().map(String::as_str),
                )
                .await,
        )?;
        Ok(flows.map(|flows| FlowsAnswer {
            config: config.clone(),
            flows,
        }))
    }

    fn view(answer: &FlowsAnswer) -> FlowsState {
        let sum = |of: fn(&Flow) -> u64| {
            Value::Value(Number::from(answer.flows.iter().map(of).sum::<u64>()))
        };
        FlowsState {
            platform: answer.config.platform.clone(),
            since: answer.config.since.clone(),
            until: answer.config.until.clone(),
            flows: Value::Value(answer.flows.iter().map(FlowView::from).collect()),
            total_packets: sum(|f| f.packets),
            total_bytes: sum(|f| f.bytes),
        }
    }

    fn not_found(config: &FlowsState) -> String {
        format!(
            "The controller has no virtual platform named (or with id) {:?} that this token may \
             see.\n\nWhat to do: check the name (the `measurelab_virtual_platforms` data source \
             lists them); a tenant token sees only its own tenant's platforms.",
            configured(&config.platform)
        )
    }
}

#[cfg(test)]
mod tests {
    use axum::extract::{Path, Query};
    use axum::http::StatusCode;
    use axum::routing::get;
    use axum::{Json, Router};
    use measurelab_api::http::FlowList;
    use tf_provider::value::ValueEmpty;
    use tf_provider::{AttributePath, DataSource, Diagnostics};
    use tokio::net::TcpListener;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::shared::Shared;

    fn flow(src: &str, packets: u64, bytes: u64) -> Flow {
        Flow {
            first_seen: "2026-12-05T01:00:00Z".into(),
            last_seen: "2026-12-05T01:00:01Z".into(),
            node: "n1".into(),
            protocol: 1,
            src_addr: src.into(),
            src_port: 0,
            dst_addr: "10.10.0.3".into(),
            dst_port: 2048,
            vlan: 100,
            packets,
            bytes,
        }
    }

    /// A fake controller: platform `lab` has two records, one per page, but
    /// only when the range the provider sends is the configured one; `off`
    /// has monitoring off (409); anything else is missing.
    async fn platform_flows(
        Path(platform): Path<String>,
        Query(query): Query<HashMap<String, String>>,
    ) -> Result<Json<FlowList>, (StatusCode, Json<serde_json::Value>)> {
        match platform.as_str() {
            "lab"
                if query.get("since").map(String::as_str) == Some("2026-12-05T00:00:00Z")
                    && !query.contains_key("until") =>
            {
                Ok(Json(match query.get("after").map(String::as_str) {
                    None => FlowList {
                        flows: vec![flow("10.10.0.2", 5, 490)],
                        next_cursor: Some("page-2".into()),
                    },
                    Some("page-2") => FlowList {
                        flows: vec![flow("10.10.0.3", 5, 490)],
                        next_cursor: None,
                    },
                    Some(other) => panic!("cursor {other:?} was never given"),
                }))
            }
            "off" => Err((
                StatusCode::CONFLICT,
                Json(serde_json::json!({"error": {"code": "conflict",
                    "message": "platform off has flow_monitoring off"}})),
            )),
            _ => Err((
                StatusCode::NOT_FOUND,
                Json(serde_json::json!({"error": {"code": "not_found", "message": "no"}})),
            )),
        }
    }

    async fn read(platform: &str) -> (Option<FlowsState>, Diagnostics) {
        let app = Router::new().route("/v1/platforms/:id/flows", get(platform_flows));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let shared = Shared::new(CancellationToken::new());
        shared.set_client(Client::new(&url, "token", None).unwrap());
        let source = FlowsDataSource::new(shared);
        let config = FlowsState {
            platform: Value::Value(platform.into()),
            since: Value::Value("2026-12-05T00:00:00Z".into()),
            ..Default::default()
        };
        let mut diags = Diagnostics::default();
        let state = source.read(&mut diags, config, ValueEmpty::default()).await;
        (state, diags)
    }

    #[tokio::test]
    async fn records_of_every_page_are_shown_with_their_totals_and_the_range_as_configured() {
        let (state, diags) = read("lab").await;
        assert!(diags.errors.is_empty(), "{:?}", diags.errors);
        let state = state.unwrap();
        let flows = state.flows.as_ref_option().unwrap();
        assert_eq!(flows.len(), 2);
        assert_eq!(flows[0].src_addr, Value::Value("10.10.0.2".to_string()));
        assert_eq!(flows[1].src_addr, Value::Value("10.10.0.3".to_string()));
        assert_eq!(flows[0].dst_port, Value::Value(Number::from(2048u64)));
        assert_eq!(state.total_packets, Value::Value(Number::from(10u64)));
        assert_eq!(state.total_bytes, Value::Value(Number::from(980u64)));
        assert_eq!(state.until, Value::Null);
    }

    #[tokio::test]
    async fn a_missing_platform_is_an_error_on_platform() {
        let (state, diags) = read("other").await;
        assert_eq!(state, None);
        assert_eq!(diags.errors.len(), 1);
        assert_eq!(diags.errors[0].attribute, AttributePath::new("platform"));
        assert_eq!(diags.errors[0].summary, "No such virtual platform");
    }

    #[tokio::test]
    async fn monitoring_off_passes_the_controllers_reason_on() {
        let (state, diags) = read("off").await;
        assert_eq!(state, None);
        assert_eq!(diags.errors.len(), 1);
        assert!(
            diags.errors[0].detail.contains("flow_monitoring off"),
            "{:?}",
            diags.errors[0]
        );
    }
}
