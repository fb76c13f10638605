//! The controller's node and appliance lists, fetched once per configured
//! provider for plan-time checks.
//!
//! Terraform plans every resource in the same plugin process, so a plan of N
//! VMs would otherwise ask for the same node N times. Capabilities and
//! appliances do not change in the seconds a plan takes, and a check that
//! reads them a little stale only risks a diagnostic the controller would
//! give anyway at apply (it validates placement again).

use std::sync::Arc;

use measurelab_api::client::{Client, ClientError};
use measurelab_api::http::{Appliance, Node};
use tokio::sync::OnceCell;

/// Lists shared by every resource of one configured provider. Concurrent
/// first callers wait for one fetch; a failed fetch is not kept, so the next
/// caller tries again.
#[derive(Default)]
pub struct Catalog {
    nodes: OnceCell<Arc<Vec<Node>>>,
    appliances: OnceCell<Arc<Vec<Appliance>>>,
}

impl Catalog {
    /// `GET /v1/nodes`, once.
    pub async fn nodes(&self, client: &Client) -> Result<Arc<Vec<Node>>, ClientError> {
        self.nodes
            .get_or_try_init(|| async { client.list_nodes().await.map(Arc::new) })
            .await
            .cloned()
    }

    /// The node named (or with the id) `id_or_name`, as the node list has it.
    pub async fn node(
        &self,
        client: &Client,
        id_or_name: &str,
    ) -> Result<Option<Node>, ClientError> {
        let nodes = self.nodes(client).await?;
        Ok(nodes
            .iter()
            .find(|n| n.name == id_or_name || n.id == id_or_name)
            .cloned())
    }

    /// `GET /v1/appliances`, once.
    pub async fn appliances(&self, client: &Client) -> Result<Arc<Vec<Appliance>>, ClientError> {
        self.appliances
            .get_or_try_init(|| async { client.list_appliances().await.map(Arc::new) })
            .await
            .cloned()
    }
}
