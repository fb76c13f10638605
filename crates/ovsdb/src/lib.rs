//! A domain-free OVSDB (RFC 7047) client: `transact` with per-operation errors,
//! `list_dbs`, `get_schema`, `monitor`, plus a small typed value layer and a
//! monitor-fed cache. Nothing here knows about bridges or ports.
//!
//! # Layout
//! - [`OvsdbClient`] (`client.rs`): one JSON-RPC 1.0 session over a unix or TCP
//!   stream, multiplexing requests by id, answering the server's `echo` probes
//!   and routing `update` notifications to monitors.
//! - `framing.rs`: splits the byte stream into JSON values.
//! - [`ops`]: builders for transaction operations (`insert` with `uuid-name`,
//!   `select`, `update`, `mutate`, `delete`, `wait`, `comment`).
//! - [`value`]: OVSDB atoms and data (`["set",..]`, `["map",..]`, `["uuid",..]`,
//!   `["named-uuid",..]`) and conversions from the wire form.
//! - [`cache`]: an in-memory replica of monitored tables with a change counter.
//! - [`OvsdbError`]: every failure, naming the operation index for op errors.
//!
//! # Why not the `ovsdb-client` crate's transport
//! `ovsdb-client` 0.0.1 hands OVSDB's JSON-RPC 1.0 to jsonrpsee (2.0) through a
//! codec that parses its whole read buffer as one JSON value, so two messages in
//! one read (an `update` followed by a reply, which a monitor plus a transact
//! routinely produces) fail with "trailing characters" and kill the session. Its
//! receiver also deletes the `error` member whenever `result` is present, so
//! RPC-level errors such as "unknown database" arrive as a bare `null`, and it
//! never answers `echo`, so ovsdb-server drops idle TCP sessions. The session
//! here is ours; the crate's `DatabaseSchema` type is reused for `get_schema`.
#![warn(missing_docs)]

pub mod cache;
mod client;
mod error;
mod framing;
pub mod ops;
pub mod value;

pub use cache::MonitorCache;

/// What the fuzz targets (`fuzz/`) reach that the crate keeps private otherwise: the
/// byte-stream framing and the replica's update rule, fed bytes a server could send.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::cache::apply_table_updates;
    pub use crate::framing::Framer;
}
pub use client::{MonitorStream, OvsdbClient};
pub use error::OvsdbError;
pub use ovsdb_client::schema::DatabaseSchema;
