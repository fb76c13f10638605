//! The uniform result document: one per run, aggregated by the MSCS from the receivers'
//! reports. Its types are defined once, in `measurelab_api::result`, so the controller,
//! the provider and the programs here read and write the same document; this module
//! re-exports them under the names `mcast` has always used.

pub use measurelab_api::result::{
    ClockSync, ReceiverResult, ReceiverStatus, ResultDocument, ResultSchema, RunConfig, RunKind,
    RunStatus, SourceResult, RESULT_SCHEMA,
};
