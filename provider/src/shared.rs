//! [`Shared`]: what resources and data sources share with the provider. A
//! leaf, so they take it without importing `provider`, which registers them.

use std::sync::{Arc, RwLock};

use measurelab_api::client::Client;
use tf_provider::Diagnostics;
use tokio_util::sync::CancellationToken;

use crate::access::Whoami;
use crate::catalog::Catalog;
use crate::diagnostics;

/// What `ConfigureProvider` sets up: the client and the lists plan-time
/// checks read through it.
#[derive(Clone)]
struct Configured {
    client: Client,
    catalog: Arc<Catalog>,
    /// Who the token is, for plan-time permission checks; `None` when the
    /// controller could not say (checks are then left to the controller).
    whoami: Option<Arc<Whoami>>,
}

/// What resources share with the provider: the configured client (set once
/// `ConfigureProvider` ran) and the stop signal. Cheap to clone. A std lock is
/// enough because it is never held across an `.await`.
#[derive(Clone)]
pub struct Shared {
    configured: Arc<RwLock<Option<Configured>>>,
    /// Cancelled when Terraform is interrupted; long waits watch it.
    pub stop: CancellationToken,
}

impl Shared {
    /// Not configured yet; long waits stop when `stop` is cancelled.
    pub(crate) fn new(stop: CancellationToken) -> Self {
        Shared {
            configured: Arc::new(RwLock::new(None)),
            stop,
        }
    }

    /// The configured client, or a diagnostic saying the provider is not configured.
    pub fn client(&self, diags: &mut Diagnostics) -> Option<Client> {
        let client = self.configured().map(|c| c.client);
        if client.is_none() {
            diagnostics::not_configured(diags);
        }
        client
    }

    /// The configured client with the node and appliance lists fetched
    /// through it (for optional plan-time checks; no diagnostic).
    pub fn catalog_quiet(&self) -> Option<(Client, Arc<Catalog>)> {
        self.configured().map(|c| (c.client, c.catalog))
    }

    fn configured(&self) -> Option<Configured> {
        self.configured.read().ok().and_then(|guard| guard.clone())
    }

    /// A new client starts with empty lists: a reconfigured provider may
    /// point at another controller.
    pub(crate) fn set_client(&self, client: Client) {
        if let Ok(mut guard) = self.configured.write() {
            *guard = Some(Configured {
                client,
                catalog: Arc::default(),
                whoami: None,
            });
        }
    }

    /// Who the configured client's token is (from `GET /v1/whoami`).
    pub(crate) fn set_whoami(&self, whoami: Whoami) {
        if let Ok(mut guard) = self.configured.write() {
            if let Some(configured) = guard.as_mut() {
                configured.whoami = Some(Arc::new(whoami));
            }
        }
    }

    /// Who the token is, when the controller said at configure.
    pub fn whoami(&self) -> Option<Arc<Whoami>> {
        self.configured().and_then(|c| c.whoami)
    }
}
