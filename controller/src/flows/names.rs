//! The names nfcapd gives its files, which the prune and the archive both go
//! by: a closed file is named after the start of the interval it holds
//! (`nfcapd.YYYYMMDDhhmm`, or `nfcapd.YYYYMMDDhhmmss` when nfcapd rotates
//! more often than once a minute), in UTC since the collector runs with
//! TZ=UTC; the file a collector is writing is `nfcapd.current.<pid>`.

use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

/// The name of the file a collector writes into: `nfcapd.current.<pid>`.
pub(crate) fn is_current_file(name: &str) -> bool {
    name.strip_prefix("nfcapd.current.")
        .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// A closed file's name after `nfcapd.`: the interval's start to the minute.
const NAME_TO_THE_MINUTE: &[BorrowedFormatItem<'static>] =
    format_description!("[year][month][day][hour][minute]");
/// The same to the second, when nfcapd rotates more often than once a minute.
const NAME_TO_THE_SECOND: &[BorrowedFormatItem<'static>] =
    format_description!("[year][month][day][hour][minute][second]");

/// The start of the interval a closed nfcapd file holds, read from its
/// name: `nfcapd.` and 12 digits (YYYYMMDDhhmm) or 14 (with seconds), UTC.
/// `None` for anything else, `nfcapd.current.<pid>` among them.
pub(crate) fn closed_file_time(name: &str) -> Option<OffsetDateTime> {
    let digits = name.strip_prefix("nfcapd.")?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let format = match digits.len() {
        12 => NAME_TO_THE_MINUTE,
        14 => NAME_TO_THE_SECOND,
        _ => return None,
    };
    PrimitiveDateTime::parse(digits, format)
        .ok()
        .map(PrimitiveDateTime::assume_utc)
}

/// The name nfcapd gives the file that starts at `at`, with seconds when it
/// rotates more often than once a minute.
#[cfg(test)]
pub(crate) fn closed_file_name(at: OffsetDateTime, with_seconds: bool) -> String {
    let format = if with_seconds {
        NAME_TO_THE_SECOND
    } else {
        NAME_TO_THE_MINUTE
    };
    match at.format(format) {
        Ok(digits) => format!("nfcapd.{digits}"),
        Err(e) => panic!("{at} has no nfcapd name: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_as_nfcapd_writes_them_and_nothing_else() {
        assert_eq!(
            closed_file_time("nfcapd.202612070351"),
            Some(time::macros::datetime!(2026-12-07 03:51 UTC))
        );
        // nfcapd 1.7.1 with -t 2 (seen on this machine).
        assert_eq!(
            closed_file_time("nfcapd.20261207035108"),
            Some(time::macros::datetime!(2026-12-07 03:51:08 UTC))
        );
        for name in [
            "nfcapd.current.4242",
            "nfcapd.2026120703",
            "nfcapd.2026120703511",
            "nfcapd.202613070351",
            "nfcapd.202612320351",
            "nfcapd.202612072460",
            "nfcapd.+02612070351",
            "nfcapd.202612070351+0100",
            "nfcapd.202612070351.tmp",
            "nfdump.202612070351",
            ".nfstat",
        ] {
            assert_eq!(closed_file_time(name), None, "{name}");
        }
    }

    #[test]
    fn current_files_are_named_with_a_pid() {
        assert!(is_current_file("nfcapd.current.4242"));
        for name in [
            "nfcapd.current.",
            "nfcapd.current.1x",
            "nfcapd.currentx",
            "nfcapd.202612070351",
        ] {
            assert!(!is_current_file(name), "{name}");
        }
    }
}
