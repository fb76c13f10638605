//! Flow monitoring on the controller: the collector it runs (`collector`) and
//! the per-platform reading of what the collector stored (`archive`).
//!
//! The controller, not each agent, runs the collector: every node exports to
//! one address it learns from its desired state, nfcapd's files are the flow
//! store (no table grows with traffic), and a platform's flows are one
//! `nfdump` query away, over every node at once.

pub(crate) mod archive;
pub(crate) mod collector;

use std::net::SocketAddr;

/// Where the controller's collector listens and how it stores.
#[derive(Debug, Clone)]
pub struct FlowCollectorConfig {
    /// UDP address nodes export NetFlow v5 / IPFIX to (`--flow-collector`).
    pub listen: SocketAddr,
    /// Run the collector inside this network namespace (`/run/netns/NAME`),
    /// like the gRPC listener of a lab controller.
    pub netns: Option<String>,
    /// How often nfcapd closes a file; a flow is queryable only once its
    /// file is closed. Default 60 s.
    pub rotate_seconds: u32,
}

impl FlowCollectorConfig {
    /// A collector on `listen` with the default rotation.
    pub fn new(listen: SocketAddr) -> Self {
        FlowCollectorConfig {
            listen,
            netns: None,
            rotate_seconds: 60,
        }
    }
}

/// Why flows could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// This controller runs no collector.
    #[error("this controller runs no flow collector (start it with --flow-collector IP:PORT)")]
    NoCollector,
    /// nfdump could not be started or failed.
    #[error("nfdump failed: {0}")]
    Nfdump(String),
    /// nfdump's output was not what it documents.
    #[error("cannot parse nfdump output: {0}")]
    Parse(String),
}
