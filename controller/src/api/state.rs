//! `AppState`: what every HTTP handler is given.

use std::sync::Arc;

use crate::store::Store;

/// Shared state of the HTTP handlers; cheap to clone.
#[derive(Clone)]
pub(crate) struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    admin_token: String,
}

impl AppState {
    pub fn new(store: Store, admin_token: String) -> Self {
        AppState {
            inner: Arc::new(Inner { store, admin_token }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The bearer token every `/v1` request must carry.
    pub fn admin_token(&self) -> &str {
        &self.inner.admin_token
    }
}
