//! `AppState`: what every HTTP handler is given.

use std::sync::Arc;

use super::rate_limit::{RateLimiter, RateLimits};
use crate::exec_forward::ExecForwarder;
use crate::exec_hub::ExecHub;
use crate::flows::archive::FlowArchive;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::version_policy::Version;

/// 1 GiB: a year of hourly runs of a few dozen tasks, in JSON.
pub const DEFAULT_EXPORT_MAX_BYTES: u64 = 1 << 30;

/// Program uploads received at once: each holds up to 64 MiB on disk and,
/// while it is recorded, in memory.
pub const DEFAULT_MAX_CONCURRENT_UPLOADS: usize = 4;
/// 32 MiB: a thousand results of the usual few KiB fit many times over; a
/// page of 4 MiB documents stops at eight.
pub const DEFAULT_RESULTS_PAGE_MAX_BYTES: u64 = 32 << 20;

/// Shared state of the HTTP handlers; cheap to clone.
#[derive(Clone)]
pub(crate) struct AppState {
    inner: Arc<Inner>,
    /// The collector's files; `None` when the controller runs no collector.
    flows: Option<Arc<FlowArchive>>,
    /// Shared with the gRPC server, so one scrape shows both.
    metrics: Arc<Metrics>,
    /// `None`: no rate limits (tests of the router alone).
    rate_limiter: Option<Arc<RateLimiter>>,
    /// Most bytes one `GET /v1/results/export` sends.
    export_max_bytes: u64,
    /// Permits for program uploads being received; one per upload.
    uploads: Arc<tokio::sync::Semaphore>,
    /// The permits `uploads` started with, for the refusal's message.
    max_concurrent_uploads: usize,
    /// Most document bytes one `GET /v1/results` page holds.
    results_page_max_bytes: u64,
    /// `vm exec` sessions, carried over the agents' exec channels.
    exec_hub: ExecHub,
    /// Sessions for agents streaming to another replica.
    exec_forwarder: ExecForwarder,
    /// What providers', CLIs' and guest agents' versions are judged against.
    controller_version: Version,
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
            metrics: Metrics::new(Version::this_build()),
            rate_limiter: None,
            export_max_bytes: DEFAULT_EXPORT_MAX_BYTES,
            uploads: Arc::new(tokio::sync::Semaphore::new(DEFAULT_MAX_CONCURRENT_UPLOADS)),
            max_concurrent_uploads: DEFAULT_MAX_CONCURRENT_UPLOADS,
            results_page_max_bytes: DEFAULT_RESULTS_PAGE_MAX_BYTES,
            exec_hub: ExecHub::default(),
            exec_forwarder: ExecForwarder::default(),
            controller_version: Version::this_build(),
        }
    }

    /// Judge clients' versions against `controller` rather than this build's.
    pub fn judging_clients_against(mut self, controller: Version) -> Self {
        self.controller_version = controller;
        self
    }

    pub fn controller_version(&self) -> Version {
        self.controller_version
    }

    /// Forward exec sessions to other replicas with `forwarder`.
    pub fn with_exec_forwarder(mut self, forwarder: ExecForwarder) -> Self {
        self.exec_forwarder = forwarder;
        self
    }

    pub fn exec_forwarder(&self) -> &ExecForwarder {
        &self.exec_forwarder
    }

    /// Open exec sessions through `hub` (shared with the node API).
    pub fn with_exec_hub(mut self, hub: ExecHub) -> Self {
        self.exec_hub = hub;
        self
    }

    pub fn exec_hub(&self) -> &ExecHub {
        &self.exec_hub
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

    /// Limit requests per token and per source.
    pub fn with_rate_limits(mut self, limits: RateLimits) -> Self {
        self.rate_limiter = Some(Arc::new(RateLimiter::new(limits)));
        self
    }

    /// Cap the bytes of one results export.
    pub fn with_export_max_bytes(mut self, max: u64) -> Self {
        self.export_max_bytes = max;
        self
    }

    pub fn export_max_bytes(&self) -> u64 {
        self.export_max_bytes
    }

    /// Receive at most `max` program uploads at once.
    pub fn with_max_concurrent_uploads(mut self, max: usize) -> Self {
        self.uploads = Arc::new(tokio::sync::Semaphore::new(max));
        self.max_concurrent_uploads = max;
        self
    }

    /// A permit to receive one upload, held until the upload is recorded or
    /// refused; `Err(max)` while `max` uploads are being received already.
    pub fn try_upload_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, usize> {
        self.uploads
            .clone()
            .try_acquire_owned()
            .map_err(|_| self.max_concurrent_uploads)
    }

    /// Cap the document bytes of one results page.
    pub fn with_results_page_max_bytes(mut self, max: u64) -> Self {
        self.results_page_max_bytes = max;
        self
    }

    pub fn results_page_max_bytes(&self) -> u64 {
        self.results_page_max_bytes
    }

    pub fn rate_limiter(&self) -> Option<&RateLimiter> {
        self.rate_limiter.as_deref()
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
