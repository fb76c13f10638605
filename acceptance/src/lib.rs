//! Acceptance tests live in tests/.
