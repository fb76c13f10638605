//! Advisory lock keys. Advisory locks are one 64-bit key space per database,
//! shared with anything else that uses them there; the top four bytes spell
//! "mlab" to stay clear of other users.

/// Held for the rest of a write transaction ([`PgDriver::write_lock`](super::PgDriver::write_lock)).
pub(crate) const WRITE: i64 = 0x6d6c_6162_0000_0001;
/// Held by the leader's session ([`Leadership`](super::Leadership)).
pub(crate) const LEADER: i64 = 0x6d6c_6162_0000_0002;
/// Held while migrations run ([`PgDriver::migrate`](super::PgDriver::migrate)).
pub(crate) const MIGRATE: i64 = 0x6d6c_6162_0000_0003;
