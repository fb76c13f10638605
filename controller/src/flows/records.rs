//! Which of nfdump's records are a platform's, and their form in the API.
//!
//! Which records are a platform's: Open vSwitch exports a VM's traffic as it
//! enters the switch on the VM's access port, untagged, so the VLAN is not in
//! the record. What identifies the platform instead is what the controller
//! allocated to it alone: its subnet (every VM address comes from it) seen
//! on one of its member nodes (the exporter address is the node's
//! management address). Platforms are VLAN-isolated, so another platform's
//! guests cannot reach these addresses; a guest that forges a source address
//! of another platform's subnet can only add records to that platform's
//! view, never read its traffic.

use measurelab_api::http::Flow;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, PrimitiveDateTime};

use super::FlowError;

/// The flows of one platform, over a time range.
#[derive(Debug, Clone)]
pub(crate) struct PlatformQuery {
    /// The platform's subnet, e.g. `10.201.3.0/24`.
    pub subnet: String,
    /// Its VLAN (reported with every record).
    pub vlan: u16,
    /// (management address, node name) of each member node.
    pub exporters: Vec<(String, String)>,
    /// Records whose last packet is at or after this time.
    pub since: OffsetDateTime,
    /// ... and at or before this time.
    pub until: OffsetDateTime,
    /// The largest active timeout the member nodes report exporting with
    /// (`capabilities.flow_export`); `None` when none reports one.
    pub active_timeout: Option<time::Duration>,
}

/// The nfdump filter: the platform's subnet on one of its nodes. Built only
/// from values the controller allocated or validated (addresses, a CIDR).
pub(crate) fn filter(query: &PlatformQuery) -> String {
    let routers: Vec<String> = query
        .exporters
        .iter()
        .map(|(address, _)| format!("router ip {address}"))
        .collect();
    format!("({}) and net {}", routers.join(" or "), query.subnet)
}

/// One record of `nfdump -o json` as the API shows it; `None` when its last
/// packet falls outside the query's range.
pub(crate) fn flow_of(
    record: &serde_json::Value,
    query: &PlatformQuery,
) -> Result<Option<Flow>, FlowError> {
    let text_of = |key: &str| record.get(key).and_then(|v| v.as_str());
    let number = |key: &str| record.get(key).and_then(|v| v.as_u64()).unwrap_or(0);
    let (first, last) = record_times(record)?;
    if last < query.since || last > query.until {
        return Ok(None);
    }
    let router = text_of("ip4_router")
        .or_else(|| text_of("ip6_router"))
        .unwrap_or("");
    let node = query
        .exporters
        .iter()
        .find(|(address, _)| address == router)
        .map(|(_, name)| name.clone())
        .unwrap_or_else(|| router.to_string());
    let address = |v4: &str, v6: &str| {
        text_of(v4)
            .or_else(|| text_of(v6))
            .unwrap_or_default()
            .to_string()
    };
    Ok(Some(Flow {
        first_seen: rfc3339(first),
        last_seen: rfc3339(last),
        node,
        protocol: number("proto") as u8,
        src_addr: address("src4_addr", "src6_addr"),
        src_port: number("src_port") as u16,
        dst_addr: address("dst4_addr", "dst6_addr"),
        // ICMP has no ports: NetFlow's convention puts type and code there.
        dst_port: match number("proto") {
            1 | 58 => (number("icmp_type") * 256 + number("icmp_code")) as u16,
            _ => number("dst_port") as u16,
        },
        vlan: query.vlan,
        packets: number("in_packets"),
        bytes: number("in_bytes"),
    }))
}

/// Oldest first/last-seen time taken at face value: anything earlier is an
/// exporter clock nfdump could not place.
const PLAUSIBLE_SINCE_UNIX: i64 = 946_684_800; // 2000-01-01

/// First and last packet of a record. Open vSwitch's IPFIX states flow times
/// relative to its own start, which nfdump 1.7 prints as times in 1970; the
/// collector's arrival time (`received`) then stands in for the last packet
/// and the record's duration is kept.
fn record_times(record: &serde_json::Value) -> Result<(OffsetDateTime, OffsetDateTime), FlowError> {
    let time_of = |key: &str| {
        record
            .get(key)
            .and_then(|v| v.as_str())
            .map(nfdump_time)
            .transpose()
    };
    let first = time_of("first")?;
    let last = time_of("last")?;
    let received = time_of("received")?;
    match (first, last, received) {
        (Some(first), Some(last), _) if first.unix_timestamp() >= PLAUSIBLE_SINCE_UNIX => {
            Ok((first, last))
        }
        (Some(first), Some(last), Some(received)) => Ok((received - (last - first), received)),
        (_, _, Some(received)) => Ok((received, received)),
        _ => Err(FlowError::Parse(format!("record without times: {record}"))),
    }
}

/// nfdump prints `2026-12-05T01:40:12.345` in the zone of TZ (UTC here).
fn nfdump_time(text: &str) -> Result<OffsetDateTime, FlowError> {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond]"
    );
    PrimitiveDateTime::parse(text, &format)
        .map(PrimitiveDateTime::assume_utc)
        .map_err(|e| FlowError::Parse(format!("time {text:?}: {e}")))
}

fn rfc3339(time: OffsetDateTime) -> String {
    time.format(&Rfc3339)
        .unwrap_or_else(|_| time.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query() -> PlatformQuery {
        PlatformQuery {
            subnet: "10.201.3.0/24".into(),
            vlan: 103,
            exporters: vec![("10.254.0.11".into(), "n1".into())],
            since: OffsetDateTime::UNIX_EPOCH,
            until: OffsetDateTime::now_utc(),
            active_timeout: None,
        }
    }

    fn record(text: &str) -> serde_json::Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn filter_names_router_and_subnet() {
        let mut q = query();
        q.exporters.push(("10.254.0.12".into(), "n2".into()));
        assert_eq!(
            filter(&q),
            "(router ip 10.254.0.11 or router ip 10.254.0.12) and net 10.201.3.0/24"
        );
    }

    #[test]
    fn records_become_flows_and_those_outside_the_range_are_dropped() {
        let early = record(
            r#"{ "type" : "FLOW", "first" : "2026-12-05T01:40:12.345", "last" : "2026-12-05T01:40:13.000",
  "proto" : 1, "src4_addr" : "10.201.3.10", "dst4_addr" : "10.201.3.11", "src_port" : 0,
  "dst_port" : 2048, "in_packets" : 10, "in_bytes" : 1280, "ip4_router" : "10.254.0.11" }"#,
        );
        let late = record(
            r#"{ "type" : "FLOW", "first" : "2026-12-05T02:40:12.345", "last" : "2026-12-05T02:40:13.000",
  "proto" : 1, "src4_addr" : "10.201.3.10", "dst4_addr" : "10.201.3.11", "src_port" : 0,
  "dst_port" : 2048, "in_packets" : 1, "in_bytes" : 128, "ip4_router" : "10.254.0.11" }"#,
        );
        let mut q = query();
        q.until = nfdump_time("2026-12-05T02:00:00.000").unwrap();
        assert_eq!(flow_of(&late, &q).unwrap(), None);
        let flow = flow_of(&early, &q).unwrap().unwrap();
        assert_eq!(flow.node, "n1");
        assert_eq!(flow.bytes, 1280);
        assert_eq!(flow.packets, 10);
        assert_eq!(flow.vlan, 103);
        assert_eq!(flow.first_seen, "2026-12-05T01:40:12.345Z");
    }

    #[test]
    fn exporter_relative_times_fall_back_to_arrival() {
        let relative = record(
            r#"{ "first" : "1970-01-01T00:13:38.000", "last" : "1970-01-01T00:13:39.000",
  "received" : "2026-12-05T01:55:41.181", "proto" : 1, "icmp_type" : 8, "icmp_code" : 0,
  "in_packets" : 2, "in_bytes" : 256, "ip4_router" : "10.254.0.11" }"#,
        );
        let flow = flow_of(&relative, &query()).unwrap().unwrap();
        assert_eq!(flow.last_seen, "2026-12-05T01:55:41.181Z");
        assert_eq!(flow.first_seen, "2026-12-05T01:55:40.181Z");
        assert_eq!(flow.dst_port, 8 * 256);
    }

    #[test]
    fn a_record_without_times_is_a_parse_error() {
        let err = flow_of(&record(r#"{ "proto" : 1 }"#), &query()).unwrap_err();
        assert!(matches!(err, FlowError::Parse(_)), "{err:?}");
    }
}
