//! `AppState`: what every HTTP handler is given.

use std::sync::Arc;

use crate::flows::archive::FlowArchive;
use crate::metrics::Metrics;
use crate::store::Store;

/// Shared state of the HTTP handlers; cheap to clone.
#[derive(Clone)]
pub(crate) struct AppState {
    inner: Arc<Inner>,
    /// The collector's files; `None` when the controller runs no collector.
    flows: Option<Arc<FlowArchive>>,
    /// Shared with the gRPC server, so one scrape shows both.
    metrics: Arc<Metrics>,
}

struct Inner {
    store: Store,
    admin_token: String,
}

impl AppState {
    pub fn new(store: Store, admin_token: String) -> Self {
        AppState {
            inner: Arc::new(Inner { store, admin_token }),
            flows: None,
            metrics: Metrics::new(),
        }
    }

    /// Record into `metrics` (the process's, shared with the node API).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Serve platform flows from the collector's `archive`.
    pub fn with_flows(mut self, archive: Option<FlowArchive>) -> Self {
        self.flows = archive.map(Arc::new);
        self
    }

    pub fn flows(&self) -> Option<&FlowArchive> {
        self.flows.as_deref()
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The bearer token every `/v1` request must carry.
    pub fn admin_token(&self) -> &str {
        &self.inner.admin_token
    }
}
