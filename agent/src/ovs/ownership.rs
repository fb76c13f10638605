//! The `external_ids` marks on every row this agent creates: a leaf, so the
//! error type and the driver can both name them.

/// `external_ids` key that marks rows this agent owns.
pub const OWNER_KEY: &str = "measurelab-owner";
/// `external_ids` key telling a VM port from the uplink.
pub const ROLE_KEY: &str = "measurelab-role";
