//! Multicast measurement programs: measurement points and the measurement statistics
//! control server (MSCS) of Cao & He's multicast measurement system.
//!
//! One point is the multicast source, the others receive; receivers compute RFC-named
//! statistics and report to the MSCS, which aggregates one run into one
//! [`result::ResultDocument`] (`measurelab.mcast.result/v1`).
//!
//! # Layout
//! - [`wire`]: the probe format (magic, version, session, sequence, send time, padding).
//! - [`metrics`]: streaming, memory-bounded loss/duplicate/reordering/delay/IPDV/PDV/jitter.
//! - [`sender`]: precisely paced multicast source.
//! - [`receiver`]: ASM/SSM receiver with kernel receive timestamps.
//! - [`protocol`]: line-JSON control protocol between MSCS and points.
//! - [`point`]: `mcast-point serve`, a point driven by the MSCS.
//! - [`registration`]: a point's registration with its MSCS and its heartbeat.
//! - [`probe_log`]: a receiver's per-probe receipts and delays, for tree inference.
//! - [`result`]: the result document.
//! - [`mscs`]: schedule, tasks, aggregation, durable state, HTTP API.
//! - [`platform`]: controller task objects and the client of the guest agent's local
//!   platform API (`mcast-mscs --platform-api`).
//! - [`service`]: one measurement over running points without an MSCS process, and an
//!   in-process point, for the node agent's service host.
//! - Binaries: `mcast-point` (send / recv / serve), `mcast-mscs`, `mcast-bench`.
#![warn(missing_docs)]

pub mod auth;
pub mod metrics;
pub mod mscs;
pub mod platform;
pub mod point;
pub mod probe_log;
pub mod protocol;
pub mod receiver;
pub mod registration;
pub mod result;
pub mod sender;
pub mod service;
pub mod wire;
