//! Wave 2 of the controller: virtual platforms (the paper's slices), QoS
//! policies, appliances, VMs, program distribution, measurement tasks and
//! results, and the node-facing side of all of it (desired state, status
//! reports).
//!
//! # Layout
//! - `store/`: SQLite tables of migration 0003, one transaction per request.
//! - `http/`: the `/v1` handlers and their routes.
//! - `rpc`: the NodeService calls GetDesiredState, ReportStatus,
//!   FetchProgram, PostResult and PollTasks.

pub(crate) mod http;
pub(crate) mod rpc;
pub(crate) mod store;
