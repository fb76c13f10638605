//! Operator calls of node identity: approve, revoke and delete nodes, list
//! refused registrations, and make, list and revoke join tokens.

use super::{url_component, Client, ClientError};
use crate::http::{
    JoinToken, JoinTokenCreate, JoinTokenCreated, JoinTokenList, Node, RegistrationRequest,
    RegistrationRequestList,
};

impl Client {
    /// `POST /v1/nodes/{id_or_name}/approve`.
    pub async fn approve_node(&self, id_or_name: &str) -> Result<RegistrationRequest, ClientError> {
        self.request::<(), _>(
            reqwest::Method::POST,
            &format!("/v1/nodes/{}/approve", url_component(id_or_name)),
            None,
        )
        .await
    }

    /// `POST /v1/nodes/{id_or_name}/revoke`.
    pub async fn revoke_node(&self, id_or_name: &str) -> Result<Node, ClientError> {
        self.request::<(), _>(
            reqwest::Method::POST,
            &format!("/v1/nodes/{}/revoke", url_component(id_or_name)),
            None,
        )
        .await
    }

    /// `POST /v1/nodes/{id_or_name}/certificate/revoke`.
    pub async fn revoke_node_certificate(&self, id_or_name: &str) -> Result<Node, ClientError> {
        self.request::<(), _>(
            reqwest::Method::POST,
            &format!("/v1/nodes/{}/certificate/revoke", url_component(id_or_name)),
            None,
        )
        .await
    }

    /// `DELETE /v1/nodes/{id_or_name}`.
    pub async fn delete_node(&self, id_or_name: &str) -> Result<Node, ClientError> {
        self.request::<(), _>(
            reqwest::Method::DELETE,
            &format!("/v1/nodes/{}", url_component(id_or_name)),
            None,
        )
        .await
    }

    /// `GET /v1/registration_requests`.
    pub async fn registration_requests(&self) -> Result<Vec<RegistrationRequest>, ClientError> {
        self.list_all::<RegistrationRequestList>("/v1/registration_requests")
            .await
    }

    /// `POST /v1/join_tokens`.
    pub async fn create_join_token(
        &self,
        body: &JoinTokenCreate,
    ) -> Result<JoinTokenCreated, ClientError> {
        self.request(reqwest::Method::POST, "/v1/join_tokens", Some(body))
            .await
    }

    /// `GET /v1/join_tokens`.
    pub async fn list_join_tokens(&self) -> Result<Vec<JoinToken>, ClientError> {
        self.list_all::<JoinTokenList>("/v1/join_tokens").await
    }

    /// `DELETE /v1/join_tokens/{id}`: revoke.
    pub async fn revoke_join_token(&self, id: &str) -> Result<JoinToken, ClientError> {
        self.request::<(), _>(
            reqwest::Method::DELETE,
            &format!("/v1/join_tokens/{}", url_component(id)),
            None,
        )
        .await
    }
}
