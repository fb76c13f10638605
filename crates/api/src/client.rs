//! Typed HTTP client for the public API.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::http::{ErrorBody, EventList, LogList, Node, NodeList, NodePatch};

/// Errors from the public API client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The controller could not be reached at all.
    #[error("cannot reach the measurelab controller at {endpoint}: {source}")]
    Unreachable {
        /// Endpoint that was tried.
        endpoint: String,
        /// Underlying transport error.
        source: reqwest::Error,
    },
    /// The controller answered with an error body.
    #[error("controller refused the request ({status}, {code}): {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Stable error code.
        code: String,
        /// Message from the controller.
        message: String,
        /// Offending field, if any.
        field: Option<String>,
    },
    /// The controller answered with something that is not the expected JSON.
    #[error("unexpected response from the controller: {0}")]
    Decode(String),
    /// The client could not be configured (bad CA certificate, bad endpoint).
    #[error("invalid client configuration: {0}")]
    Config(String),
}

impl ClientError {
    /// True for a 404 from the controller.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Api { status: 404, .. })
    }
}

/// Client for `/v1/`.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    endpoint: String,
    token: String,
}

impl Client {
    /// Build a client for `endpoint` (e.g. `http://127.0.0.1:7070`), with an
    /// optional PEM CA certificate for TLS endpoints.
    pub fn new(endpoint: &str, token: &str, ca_cert_pem: Option<&[u8]>) -> Result<Self, ClientError> {
        let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60));
        if let Some(pem) = ca_cert_pem {
            let cert = reqwest::Certificate::from_pem(pem)
                .map_err(|e| ClientError::Config(format!("ca_cert is not a PEM certificate: {e}")))?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Config(e.to_string()))?;
        Ok(Client {
            http,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token: token.to_string(),
        })
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Send a request with an optional JSON body and decode the JSON answer.
    pub async fn request<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{}", self.endpoint, path);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|source| ClientError::Unreachable {
            endpoint: self.endpoint.clone(),
            source,
        })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => ClientError::Api {
                    status: status.as_u16(),
                    code: body.error.code,
                    message: body.error.message,
                    field: body.error.field,
                },
                Err(_) => ClientError::Api {
                    status: status.as_u16(),
                    code: "unknown".into(),
                    message: String::from_utf8_lossy(&bytes).into_owned(),
                    field: None,
                },
            });
        }
        let bytes = if bytes.is_empty() { &b"null"[..] } else { &bytes[..] };
        serde_json::from_slice(bytes).map_err(|e| ClientError::Decode(format!("{path}: {e}")))
    }

    /// `GET /v1/nodes`.
    pub async fn list_nodes(&self) -> Result<Vec<Node>, ClientError> {
        let list: NodeList = self.request::<(), _>(reqwest::Method::GET, "/v1/nodes", None).await?;
        Ok(list.nodes)
    }

    /// `GET /v1/nodes/{id_or_name}`.
    pub async fn get_node(&self, id_or_name: &str) -> Result<Node, ClientError> {
        self.request::<(), _>(reqwest::Method::GET, &format!("/v1/nodes/{id_or_name}"), None)
            .await
    }

    /// `GET /v1/nodes/{id_or_name}/logs`.
    pub async fn node_logs(&self, id_or_name: &str) -> Result<LogList, ClientError> {
        self.request::<(), _>(reqwest::Method::GET, &format!("/v1/nodes/{id_or_name}/logs"), None)
            .await
    }

    /// `GET /v1/events?after=`.
    pub async fn events(&self, after: i64) -> Result<EventList, ClientError> {
        self.request::<(), _>(reqwest::Method::GET, &format!("/v1/events?after={after}"), None)
            .await
    }

    /// `PATCH /v1/nodes/{id_or_name}`: replace the node's labels.
    pub async fn set_node_labels(
        &self,
        id_or_name: &str,
        labels: std::collections::BTreeMap<String, String>,
    ) -> Result<Node, ClientError> {
        self.request(
            reqwest::Method::PATCH,
            &format!("/v1/nodes/{id_or_name}"),
            Some(&NodePatch { labels }),
        )
        .await
    }
}
