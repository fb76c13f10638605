//! Cursor pagination of the list routes (`?limit=&after=`; docs/pagination.md).
//!
//! A cursor is the position key of the last item of a page, base64url
//! encoded so clients treat it as opaque. Keys are built from the list's
//! documented order plus the item's id, so they are unique and a page starts
//! right after its cursor even if that item was deleted meanwhile: nothing is
//! skipped or repeated.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::error::ApiError;
use super::extract::QueryParams;

/// Largest page, and the page size when `limit` is not given: lists shorter
/// than this read as before pagination existed.
pub(crate) const MAX_PAGE: i64 = 1000;

/// The page a request asks for.
pub(crate) struct Page {
    limit: usize,
    after: Option<String>,
}

impl Page {
    /// `?limit=` (1..=1000, default 1000) and `?after=` (a cursor).
    pub fn from_query(query: &QueryParams) -> Result<Page, ApiError> {
        let limit = query.int("limit", MAX_PAGE, 1, MAX_PAGE)? as usize;
        let after = query
            .0
            .get("after")
            .map(|cursor| {
                URL_SAFE_NO_PAD
                    .decode(cursor)
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .ok_or_else(|| ApiError::InvalidField {
                        field: "after".into(),
                        reason: "not a cursor (use next_cursor of the previous page)".into(),
                    })
            })
            .transpose()?;
        Ok(Page { limit, after })
    }

    /// The page of `items` after the cursor, ordered by `key`, and the
    /// cursor of the next page when more items follow.
    pub fn apply<T>(&self, items: Vec<T>, key: impl Fn(&T) -> String) -> (Vec<T>, Option<String>) {
        let mut keyed: Vec<(String, T)> = items
            .into_iter()
            .map(|item| (key(&item), item))
            .filter(|(key, _)| self.after.as_ref().is_none_or(|after| key > after))
            .collect();
        // The store's order already is the key's, except perhaps among equal
        // names; sorting makes pages consistent whatever it was.
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        let more = keyed.len() > self.limit;
        keyed.truncate(self.limit);
        let next = more
            .then(|| keyed.last().map(|(key, _)| URL_SAFE_NO_PAD.encode(key)))
            .flatten();
        (keyed.into_iter().map(|(_, item)| item).collect(), next)
    }
}

/// The key of a list ordered by `name` (ties by id).
pub(crate) fn by_name(name: &str, id: &str) -> String {
    format!("{name}\u{0}{id}")
}

/// The key of a list ordered by `time` (RFC 3339), oldest first.
pub(crate) fn oldest_first(time: &str, id: &str) -> String {
    format!("{:040}\u{0}{id}", nanos(time))
}

/// The key of a list ordered by `time` (RFC 3339), newest first.
pub(crate) fn newest_first(time: &str, id: &str) -> String {
    format!("{:040}\u{0}{id}", u128::MAX / 2 - nanos(time))
}

/// Nanoseconds since a point before any time the store writes; an
/// unparsable time (none is stored) sorts first.
fn nanos(time: &str) -> u128 {
    let since_epoch = OffsetDateTime::parse(time, &Rfc3339)
        .map(OffsetDateTime::unix_timestamp_nanos)
        .unwrap_or(i128::MIN / 2);
    // Shifted into u128 so the zero-padded decimal sorts as the number does.
    (since_epoch - i128::MIN / 2) as u128
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn page(params: &[(&str, &str)]) -> Page {
        let map: HashMap<String, String> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Page::from_query(&QueryParams(map)).unwrap()
    }

    #[test]
    fn pages_cover_the_list_once_even_when_the_cursor_item_goes() {
        let mut items: Vec<String> = (0..25).map(|i| format!("n{i:02}")).collect();
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut params = vec![("limit", "10")];
            if let Some(after) = &cursor {
                params.push(("after", after));
            }
            let (got, next) = page(&params).apply(items.clone(), |n| by_name(n, "id"));
            // The last item of the page is deleted before the next call.
            if let Some(last) = got.last() {
                items.retain(|n| n != last);
            }
            seen.extend(got);
            match next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let want: Vec<String> = (0..25).map(|i| format!("n{i:02}")).collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn time_keys_sort_as_the_times_do() {
        let early = "2026-01-01T00:00:00Z";
        let later = "2026-01-01T00:00:00.5Z";
        assert!(oldest_first(early, "b") < oldest_first(later, "a"));
        assert!(newest_first(later, "b") < newest_first(early, "a"));
    }

    #[test]
    fn a_bad_cursor_names_the_parameter() {
        let map = HashMap::from([("after".to_string(), "%%%".to_string())]);
        match Page::from_query(&QueryParams(map)) {
            Err(ApiError::InvalidField { field, .. }) => assert_eq!(field, "after"),
            other => panic!("{:?}", other.err()),
        }
    }
}
