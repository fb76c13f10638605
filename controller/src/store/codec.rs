//! How values are written to and read from TEXT columns: times as RFC 3339,
//! structured values as JSON, ids as UUIDs.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::error::StoreError;

/// RFC 3339 text of a UTC time, as stored and served.
pub(crate) fn rfc3339(time: OffsetDateTime) -> String {
    // Formatting a UTC OffsetDateTime as RFC 3339 only fails for years
    // outside 0..=9999, which `now_utc` and validated inputs never produce.
    time.format(&Rfc3339)
        .unwrap_or_else(|_| time.unix_timestamp().to_string())
}

pub(crate) fn parse_time(text: &str) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| StoreError::Corrupt(format!("time {text:?}: {e}")))
}

/// JSON text of a value for a TEXT column.
pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Serializing plain data (strings, numbers, maps with string keys) cannot fail.
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

/// Parse the JSON text of `column` (named `table.column` in the error).
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    column: &str,
    text: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
