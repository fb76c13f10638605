//! `measurelab_platform_points`: the measurement points of one virtual
//! platform as its MSCS last reported them (`GET /v1/platforms/{id}/points`).

use std::collections::HashMap;

use async_trait::async_trait;
use measurelab_api::client::{Client, ClientError};
use measurelab_api::http::{PlatformPoint, PlatformPoints};
use serde::{Deserialize, Serialize};
use tf_provider::schema::{Attribute, AttributeConstraint, AttributeType, Description};
use tf_provider::value::Value;

use super::lookup::{configured, found, Lookup, LookupDataSource};
use super::views::{object_type, Field};
use crate::node_model::computed;
use crate::number::Number;

/// The data source implementation.
pub type PlatformPointsDataSource = LookupDataSource<PlatformPointsLookup>;

/// One point as Terraform shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PointView {
    name: Value<String>,
    control_address: Value<String>,
    data_address: Value<String>,
    state: Value<String>,
    last_seen: Value<String>,
    protocol_version: Value<Number>,
    origin: Value<String>,
}

/// Configuration and result of the data source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlatformPointsState {
    /// Platform name or id.
    pub platform: Value<String>,
    /// When the controller received the list; null: never.
    pub reported_at: Value<String>,
    /// VM whose MSCS reported it.
    pub reported_by: Value<String>,
    /// The points in rotation order.
    pub points: Value<Vec<PointView>>,
}

fn point_fields() -> Vec<Field> {
    let text = || AttributeType::String;
    vec![
        ("name", text(), "Point name, as results name it."),
        (
            "control_address",
            text(),
            "Control listener of the point, `IP:port`.",
        ),
        (
            "data_address",
            text(),
            "Data-plane IPv4 the point sends and joins on; null for a static point (an MSCS \
             `--point` flag) that never registered.",
        ),
        (
            "state",
            text(),
            "`active` (in the MSCS's rotation) or `missing` (it missed its heartbeat deadline and \
             takes no part in runs until it is heard again).",
        ),
        (
            "last_seen",
            text(),
            "RFC 3339 time of the point's last registration or heartbeat; null for a static \
             point that never registered.",
        ),
        (
            "protocol_version",
            AttributeType::Number,
            "Control protocol version the point registered with; null: not known.",
        ),
        ("origin", text(), "`registered` or `static`."),
    ]
}

impl From<&PlatformPoint> for PointView {
    fn from(point: &PlatformPoint) -> Self {
        let text = |v: &str| Value::Value(v.to_string());
        let maybe = |v: &Option<String>| v.as_deref().map_or(Value::Null, text);
        PointView {
            name: text(&point.name),
            control_address: text(&point.control_address),
            data_address: maybe(&point.data_address),
            state: text(&point.state),
            last_seen: maybe(&point.last_seen),
            protocol_version: point
                .protocol_version
                .map_or(Value::Null, |v| Value::Value(Number::from(u64::from(v)))),
            origin: text(&point.origin),
        }
    }
}

/// What was asked and what the controller answered.
pub struct PointsAnswer {
    platform: Value<String>,
    list: PlatformPoints,
}

/// How `measurelab_platform_points` reads a platform's point list.
pub struct PlatformPointsLookup;

#[async_trait]
impl Lookup for PlatformPointsLookup {
    type State = PlatformPointsState;
    type Object = PointsAnswer;

    const KIND: &'static str = "virtual platform";
    const KEY: &'static str = "platform";
    const DESCRIPTION: &'static str =
        "Reads the measurement points of a virtual platform as the platform's MSCS last \
         reported them: each point's addresses, state (`active` or `missing`), last heartbeat \
         and protocol version. Points register with the MSCS and heartbeat; one that misses \
         its deadline turns `missing` and leaves the rotation. The MSCS reports the list on \
         every change and every 30 s, through its guest and node agents; `reported_at` says \
         when the controller received it, so a list from an MSCS that stopped shows its age. \
         Until an MSCS of the platform reports, `points` is empty and `reported_at` null. A \
         tenant token reads its own platforms only.";

    fn attributes() -> HashMap<String, Attribute> {
        HashMap::from([
            (
                "platform".to_string(),
                Attribute {
                    attr_type: AttributeType::String,
                    description: Description::markdown("Name or id of the virtual platform."),
                    constraint: AttributeConstraint::Required,
                    ..Default::default()
                },
            ),
            (
                "reported_at".to_string(),
                computed(
                    AttributeType::String,
                    "RFC 3339 time the controller received the list; null: no MSCS of the \
                     platform reported one yet.",
                ),
            ),
            (
                "reported_by".to_string(),
                computed(
                    AttributeType::String,
                    "Name of the VM whose MSCS reported the list.",
                ),
            ),
            (
                "points".to_string(),
                computed(
                    AttributeType::List(Box::new(object_type(&point_fields()))),
                    "The points in the MSCS's rotation order.",
                ),
            ),
        ])
    }

    async fn find(
        client: &Client,
        config: &PlatformPointsState,
    ) -> Result<Option<PointsAnswer>, ClientError> {
        let list = found(client.platform_points(&configured(&config.platform)).await)?;
        Ok(list.map(|list| PointsAnswer {
            platform: config.platform.clone(),
            list,
        }))
    }

    fn view(answer: &PointsAnswer) -> PlatformPointsState {
        let maybe = |v: &Option<String>| v.clone().map_or(Value::Null, Value::Value);
        PlatformPointsState {
            platform: answer.platform.clone(),
            reported_at: maybe(&answer.list.reported_at),
            reported_by: maybe(&answer.list.reported_by),
            points: Value::Value(answer.list.points.iter().map(PointView::from).collect()),
        }
    }

    fn not_found(config: &PlatformPointsState) -> String {
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
    use axum::extract::Path;
    use axum::http::StatusCode;
    use axum::routing::get;
    use axum::{Json, Router};
    use tf_provider::value::ValueEmpty;
    use tf_provider::{AttributePath, DataSource, Diagnostics};
    use tokio::net::TcpListener;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::shared::Shared;

    /// A fake controller: platform `lab` has an active registered point and a
    /// static one that never registered; anything else is missing.
    async fn platform_points(
        Path(platform): Path<String>,
    ) -> Result<Json<PlatformPoints>, (StatusCode, Json<serde_json::Value>)> {
        if platform != "lab" {
            return Err((
                StatusCode::NOT_FOUND,
                Json(serde_json::json!({"error": {"code": "not_found", "message": "no"}})),
            ));
        }
        Ok(Json(PlatformPoints {
            platform: "p-1".into(),
            reported_at: Some("2026-12-05T21:00:00Z".into()),
            reported_by: Some("mscs".into()),
            points: vec![
                PlatformPoint {
                    name: "p1".into(),
                    control_address: "10.0.0.2:7001".into(),
                    data_address: Some("10.0.0.2".into()),
                    state: "missing".into(),
                    last_seen: Some("2026-12-05T20:59:50Z".into()),
                    protocol_version: Some(2),
                    origin: "registered".into(),
                },
                PlatformPoint {
                    name: "fixed".into(),
                    control_address: "10.0.0.3:7001".into(),
                    data_address: None,
                    state: "active".into(),
                    last_seen: None,
                    protocol_version: None,
                    origin: "static".into(),
                },
            ],
        }))
    }

    async fn read(platform: &str) -> (Option<PlatformPointsState>, Diagnostics) {
        let app = Router::new().route("/v1/platforms/:id/points", get(platform_points));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let shared = Shared::new(CancellationToken::new());
        shared.set_client(Client::new(&url, "token", None).unwrap());
        let source = PlatformPointsDataSource::new(shared);
        let config = PlatformPointsState {
            platform: Value::Value(platform.into()),
            ..Default::default()
        };
        let mut diags = Diagnostics::default();
        let state = source.read(&mut diags, config, ValueEmpty::default()).await;
        (state, diags)
    }

    #[tokio::test]
    async fn points_are_shown_with_nulls_for_what_a_static_point_lacks() {
        let (state, diags) = read("lab").await;
        assert!(diags.errors.is_empty(), "{:?}", diags.errors);
        let state = state.unwrap();
        assert_eq!(state.platform, Value::Value("lab".to_string()));
        assert_eq!(state.reported_by, Value::Value("mscs".to_string()));
        let points = state.points.as_ref_option().unwrap();
        assert_eq!(points.len(), 2);
        assert_eq!(points[0].state, Value::Value("missing".to_string()));
        assert_eq!(points[0].protocol_version, Value::Value(Number::from(2u64)));
        assert_eq!(points[1].data_address, Value::Null);
        assert_eq!(points[1].last_seen, Value::Null);
        assert_eq!(points[1].protocol_version, Value::Null);
    }

    #[tokio::test]
    async fn a_missing_platform_is_an_error_on_platform() {
        let (state, diags) = read("other").await;
        assert_eq!(state, None);
        assert_eq!(diags.errors.len(), 1);
        assert_eq!(diags.errors[0].attribute, AttributePath::new("platform"));
        assert_eq!(diags.errors[0].summary, "No such virtual platform");
    }
}
