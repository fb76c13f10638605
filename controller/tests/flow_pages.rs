//! `GET /v1/platforms/{id}/flows` reads a bounded part of the flow archive:
//! the files whose names say they cover the time range, a page at a time,
//! each page capped in records, bytes and files with a cursor to read on.
//! The archive is made of real nfcapd files (written by nfcapd, split with
//! nfdump), read by the real nfdump.

mod common;

use std::net::Ipv4Addr;
use std::path::PathBuf;

use common::nfcapd::{nfcapd_name, unix_now, write_nfcapd_files, V5Flow};
use common::TestController;
use measurelab_controller::ControllerConfig;
use reqwest::Method;
use serde_json::Value;

/// A controller reading a flow archive in a temporary directory (no
/// collector of its own, as a replica on a shared root), with node n1
/// exporting from 127.0.0.1 and platform `watched` on it.
struct Watched {
    controller: TestController,
    /// The platform's flows path.
    path: String,
    /// Its subnet's first three octets.
    net: [u8; 3],
    /// The archive.
    root: PathBuf,
    /// Where nfcapd writes the files before they go into the archive.
    scratch: tempfile::TempDir,
    _data_and_archive: (tempfile::TempDir, tempfile::TempDir),
}

/// [`Watched`], the controller's settings changed by `tweak`.
async fn watched_platform(tweak: impl FnOnce(&mut ControllerConfig)) -> Watched {
    let (data, archive, scratch) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let root = archive.path().join("flows");
    let flow_dir = root.clone();
    let controller = TestController::start_with(data.path(), move |config| {
        config.flow_dir = Some(flow_dir);
        tweak(config);
    })
    .await;
    let mut request = common::register_request(&controller.join_token, "n1", "");
    request.management_address = "127.0.0.1".into();
    controller.grpc().await.register(request).await.unwrap();
    let platform = controller
        .create(
            "/v1/platforms",
            serde_json::json!({"name": "watched", "nodes": ["n1"], "flow_monitoring": true}),
        )
        .await;
    let subnet: Ipv4Addr = platform["subnet"]
        .as_str()
        .and_then(|s| s.split('/').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no subnet in {platform}"));
    let [a, b, c, _] = subnet.octets();
    let path = format!("/v1/platforms/{}/flows", platform["id"].as_str().unwrap());
    Watched {
        controller,
        path,
        net: [a, b, c],
        root,
        scratch,
        _data_and_archive: (data, archive),
    }
}

/// A flow of the platform from .10 to .11, told apart by `src_port`,
/// exported at `exported_at`.
fn flow(net: [u8; 3], src_port: u16, exported_at: u32) -> V5Flow {
    let [a, b, c] = net;
    V5Flow {
        src: Ipv4Addr::new(a, b, c, 10),
        dst: Ipv4Addr::new(a, b, c, 11),
        src_port,
        dst_port: 9000,
        packets: 3,
        exported_at,
    }
}

fn ports(body: &Value) -> Vec<u64> {
    body["flows"]
        .as_array()
        .unwrap_or_else(|| panic!("no flows in {body}"))
        .iter()
        .map(|f| f["src_port"].as_u64().unwrap())
        .collect()
}

fn rfc3339(unix: u32) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix.into())
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// A file is read when the time in its name is in the range, and only then:
/// the file named three hours ago holds a record timed ten minutes ago,
/// which the default range (the last hour) would keep if the file were
/// read. A range around three hours ago reads that file, and keeps its
/// record of that time.
#[tokio::test]
async fn a_range_reads_only_the_files_its_times_name() {
    let Watched {
        controller,
        path,
        net,
        root,
        scratch,
        _data_and_archive,
    } = watched_platform(|_| {}).await;
    let now = unix_now();
    let ago = |minutes: u32| now - minutes * 60;
    let collector = root.join("c1-0.0.0.0-2055");
    write_nfcapd_files(
        scratch.path(),
        &[
            (
                collector.join(nfcapd_name(ago(180))),
                vec![flow(net, 5001, ago(10)), flow(net, 5004, ago(180) + 30)],
            ),
            (
                collector.join(nfcapd_name(ago(30))),
                vec![flow(net, 5002, ago(30) + 30)],
            ),
            (
                collector.join(nfcapd_name(ago(5))),
                vec![flow(net, 5003, ago(5) + 30)],
            ),
        ],
    );

    let body = controller.expect(Method::GET, &path, None, 200).await;
    assert_eq!(ports(&body), vec![5002, 5003], "{body}");
    assert_eq!(body.get("next_cursor"), None, "{body}");

    let three_hours_ago = format!(
        "{path}?since={}&until={}",
        rfc3339(ago(240)),
        rfc3339(ago(120))
    );
    let body = controller
        .expect(Method::GET, &three_hours_ago, None, 200)
        .await;
    assert_eq!(ports(&body), vec![5004], "{body}");
    controller.stop().await;
}

/// Five records in three files of two collectors' directories.
fn five_records(root: &std::path::Path, net: [u8; 3]) -> Vec<(PathBuf, Vec<V5Flow>)> {
    let now = unix_now();
    let ago = |minutes: u32| now - minutes * 60;
    let (c1, c2) = (root.join("c1-0.0.0.0-2055"), root.join("c2-0.0.0.0-2055"));
    vec![
        (
            c1.join(nfcapd_name(ago(50))),
            vec![flow(net, 6001, ago(50) + 10), flow(net, 6002, ago(50) + 20)],
        ),
        (
            c2.join(nfcapd_name(ago(40))),
            vec![flow(net, 6003, ago(40) + 10), flow(net, 6004, ago(40) + 20)],
        ),
        (
            c1.join(nfcapd_name(ago(30))),
            vec![flow(net, 6005, ago(30) + 10)],
        ),
    ]
}

/// Follow `next_cursor` from `first`; the source ports of each page.
async fn pages(controller: &TestController, first: &str) -> Vec<Vec<u64>> {
    let mut pages = Vec::new();
    let mut page = first.to_string();
    loop {
        let (status, body) = controller.call(Method::GET, &page, None).await;
        assert_eq!(status, 200, "{page}: {body}");
        pages.push(ports(&body));
        let Some(cursor) = body["next_cursor"].as_str() else {
            return pages;
        };
        assert!(pages.len() < 10, "pages without end: {pages:?}");
        let join = if first.contains('?') { '&' } else { '?' };
        page = format!("{first}{join}after={cursor}");
    }
}

/// `limit` ends a page inside a file, and its cursor goes on from the next
/// record of that file: every record once, in the files' order. CSV says
/// the same cursor in a last `#` line.
#[tokio::test]
async fn a_page_ends_at_its_limit_and_its_cursor_reads_on() {
    let Watched {
        controller,
        path,
        net,
        root,
        scratch,
        _data_and_archive,
    } = watched_platform(|_| {}).await;
    write_nfcapd_files(scratch.path(), &five_records(&root, net));

    assert_eq!(
        pages(&controller, &format!("{path}?limit=3")).await,
        vec![vec![6001, 6002, 6003], vec![6004, 6005]]
    );

    let csv = controller
        .expect(
            Method::GET,
            &format!("{path}?limit=3&format=csv"),
            None,
            200,
        )
        .await;
    let csv = csv.as_str().unwrap_or_default().to_string();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 5, "{csv}");
    let cursor = lines[4]
        .strip_prefix("# next_cursor: ")
        .unwrap_or_else(|| panic!("no cursor line in {csv}"));
    let body = controller
        .expect(
            Method::GET,
            &format!("{path}?limit=3&after={cursor}"),
            None,
            200,
        )
        .await;
    assert_eq!(ports(&body), vec![6004, 6005], "{body}");
    controller.stop().await;
}

/// `--flows-page-max-bytes` of 1024 holds two of nfdump's records (about
/// 480 bytes each), `--flows-page-max-files` of 1 one file: either way the
/// pages are short, and the cursors lead through every record.
#[tokio::test]
async fn a_page_ends_at_the_byte_and_file_caps_and_its_cursor_reads_on() {
    for (cap, tweak, expected) in [
        (
            "bytes",
            (|config: &mut ControllerConfig| config.flows_page_max_bytes = 1024)
                as fn(&mut ControllerConfig),
            vec![vec![6001, 6002], vec![6003, 6004], vec![6005]],
        ),
        (
            "files",
            |config: &mut ControllerConfig| config.flows_page_max_files = 1,
            vec![vec![6001, 6002], vec![6003, 6004], vec![6005]],
        ),
    ] {
        let Watched {
            controller,
            path,
            net,
            root,
            scratch,
            _data_and_archive,
        } = watched_platform(tweak).await;
        write_nfcapd_files(scratch.path(), &five_records(&root, net));
        assert_eq!(pages(&controller, &path).await, expected, "cap on {cap}");
        controller.stop().await;
    }
}

/// Bad paging parameters are refused naming the parameter, before the
/// archive is read.
#[tokio::test]
async fn bad_paging_parameters_name_the_parameter() {
    use base64::Engine;
    // Bound by name: what a pattern leaves out is dropped, temp dirs and all.
    let Watched {
        controller,
        path,
        _data_and_archive,
        ..
    } = watched_platform(|_| {}).await;
    let not_a_file = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("3:c1/notes.txt");
    for (query, field, reason) in [
        ("limit=0", "limit", "out of range 1..=100000"),
        ("limit=many", "limit", "not an integer"),
        ("after=%21%21", "after", "not a cursor"),
        (&format!("after={not_a_file}"), "after", "not a cursor"),
        ("since=yesterday", "since", "not an RFC 3339 time"),
        (
            "since=2026-12-05T02:00:00Z&until=2026-12-05T01:00:00Z",
            "until",
            "later than since",
        ),
        ("page=2", "page", "unknown query parameter"),
    ] {
        let (status, body) = controller
            .call(Method::GET, &format!("{path}?{query}"), None)
            .await;
        assert_eq!(status, 422, "{query}: {body}");
        assert_eq!(body["error"]["field"], field, "{query}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(reason)),
            "{query}: {body}"
        );
    }
    controller.stop().await;
}
