//! The provider's wire expectations against the controller's published
//! contract: every request the provider sends and every response it decodes
//! is checked against the live `/v1/openapi.json`.

use measurelab_acceptance::{acc_enabled, block_on, Lab};
use serde_json::{json, Value};

async fn call(
    lab: &Lab,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Value)> {
    let client = lab.http_client()?;
    let mut request = client
        .request(method, format!("{}{path}", lab.endpoint))
        .bearer_auth(&lab.token);
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await?))
}

fn assert_conforms(document: &Value, schema: &str, body: &Value, what: &str) {
    let found = measurelab_conformance::violations(document, schema, body)
        .unwrap_or_else(|error| panic!("{what}: {error}"));
    assert!(
        found.is_empty(),
        "{what} does not match {schema}: {found:#?}\n{body:#}"
    );
}

#[test]
fn acc_openapi_node_contract() -> anyhow::Result<()> {
    if !acc_enabled("acc_openapi_node_contract") {
        return Ok(());
    }
    let lab = Lab::up(2)?;
    block_on(async {
        let (status, document) = call(&lab, reqwest::Method::GET, "/v1/openapi.json", None).await?;
        assert_eq!(status, 200);

        let (status, list) = call(&lab, reqwest::Method::GET, "/v1/nodes", None).await?;
        assert_eq!(status, 200);
        assert_conforms(&document, "NodeList", &list, "GET /v1/nodes");

        // Exactly the body the provider sends (Client::set_node_labels).
        let patch = serde_json::to_value(measurelab_api::http::NodePatch {
            labels: [("role".to_string(), "probe".to_string())].into(),
            flow_export: None,
            cpu_overcommit: None,
            memory_overcommit: None,
        })?;
        assert_conforms(&document, "NodePatch", &patch, "the provider's PATCH body");
        let (status, node) =
            call(&lab, reqwest::Method::PATCH, "/v1/nodes/n1", Some(&patch)).await?;
        assert_eq!(status, 200, "{node}");
        assert_conforms(&document, "Node", &node, "PATCH /v1/nodes/n1");
        // The provider decodes the same body into its typed Node.
        let typed: measurelab_api::http::Node = serde_json::from_value(node.clone())?;
        assert_eq!(typed.labels.get("role").map(String::as_str), Some("probe"));

        let (status, node) = call(&lab, reqwest::Method::GET, "/v1/nodes/n1", None).await?;
        assert_eq!(status, 200);
        assert_conforms(&document, "Node", &node, "GET /v1/nodes/n1");

        // Errors the provider turns into diagnostics: a bad label and a missing node.
        let bad = json!({"labels": {"bad key": "x"}});
        let (status, error) =
            call(&lab, reqwest::Method::PATCH, "/v1/nodes/n1", Some(&bad)).await?;
        assert!((400..500).contains(&status), "{status} {error}");
        assert_conforms(&document, "ErrorBody", &error, "a rejected PATCH");
        assert_eq!(
            error["error"]["field"], "labels.bad key",
            "the provider maps this onto labels[\"bad key\"]"
        );
        let (status, error) = call(&lab, reqwest::Method::GET, "/v1/nodes/n77", None).await?;
        assert_eq!(status, 404);
        assert_conforms(&document, "ErrorBody", &error, "a 404");
        Ok(())
    })
}
