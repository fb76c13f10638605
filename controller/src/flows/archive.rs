//! Reading a platform's flows out of nfcapd's files with `nfdump`, a page
//! at a time.
//!
//! A request names a time range, and the files read are those whose names
//! say they can hold records of it: nfcapd names each closed file after the
//! start of the interval it collected ([`super::names`]). nfdump's own time
//! filter (`-t`) cannot be used: Open vSwitch's IPFIX states flow times
//! relative to its own start, which nfdump prints as 1970, so `-t` would
//! drop every such record (see [`super::records`] for the time then used).
//!
//! A page reads the chosen files oldest first, one `nfdump -r` each, and
//! stops at the first of: the records asked for, [`PageLimits::max_bytes`]
//! of nfdump's output kept, [`PageLimits::max_files`] files, or
//! [`PageLimits::time_budget`]. Where it stopped is a [`Position`] (a file
//! and the records of it already taken) the next page starts from. Files
//! only ever appear after the newest one (nfcapd closes them in time order)
//! or disappear (the retention prune), so a position stays meaningful
//! between pages.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use measurelab_api::http::Flow;
use time::OffsetDateTime;

use super::names::closed_file_time;
use super::nfdump::Records;
use super::records::{filter, flow_of, PlatformQuery};
use super::{FlowError, MAX_ROTATE_SECONDS};

/// How far a record's last packet and its arrival at the collector may be
/// apart and the record still be found: an exporter sends a flow some
/// seconds after its last packet (Open vSwitch's NetFlow once the datapath
/// flow idles out, about 10 s), and a node's clock may be somewhat off the
/// controller's. Files are chosen by arrival time widened by this on both
/// sides of the range, and after it by [`late_allowance`] when the
/// exporters' active timeout asks for more.
const LATE_RECORD_ALLOWANCE: time::Duration = time::Duration::seconds(60);

/// How long Open vSwitch keeps an idle datapath flow (its default
/// `max-idle`, 10 s), which an export can come after on top of the active
/// timeout.
const DATAPATH_IDLE: time::Duration = time::Duration::seconds(10);

/// The most the late side is widened, whatever a node reports: past it a
/// page's file and byte caps would be spent on files of other hours.
/// Open vSwitch takes IPFIX cache timeouts of up to 4200 s.
const LONGEST_LATE_ALLOWANCE: time::Duration = time::Duration::seconds(4200 + 10);

/// How long after a record's last packet it may reach the collector, given
/// the largest active timeout the platform's nodes export with. Records are
/// matched by their last packet ([`super::records`]), and Open vSwitch's
/// IPFIX cache holds a flow's record until the active timeout after the
/// flow began, so a flow whose packets all came early in that time arrives
/// about the active timeout after its last packet (NetFlow exports sooner,
/// but the same bound covers it), plus the datapath's idle time.
pub(crate) fn late_allowance(active_timeout: Option<time::Duration>) -> time::Duration {
    active_timeout
        .map(|timeout| timeout + DATAPATH_IDLE)
        .unwrap_or(time::Duration::ZERO)
        .clamp(LATE_RECORD_ALLOWANCE, LONGEST_LATE_ALLOWANCE)
}

/// The active timeout in a node's reported flow export
/// (`capabilities.flow_export`, e.g. `ipfix sampling=1/1 active_timeout=600s
/// -> 10.254.0.1:2055`); `None` when it exports nothing or says no timeout.
pub(crate) fn reported_active_timeout(flow_export: &str) -> Option<time::Duration> {
    flow_export
        .split_whitespace()
        .find_map(|word| word.strip_prefix("active_timeout="))
        .and_then(|value| value.strip_suffix('s'))
        .and_then(|seconds| seconds.parse::<u32>().ok())
        .map(|seconds| time::Duration::seconds(i64::from(seconds)))
}

/// The longest a closed file can have collected for: nfcapd rotates at
/// least this often (`--flow-rotate-seconds` is capped at it).
const LONGEST_INTERVAL: time::Duration = time::Duration::seconds(MAX_ROTATE_SECONDS as i64);

/// What one page may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PageLimits {
    /// Bytes of nfdump output of the records a page keeps
    /// (`--flows-page-max-bytes`); a page holds at least one record.
    pub max_bytes: u64,
    /// Files a page reads (`--flows-page-max-files`), one nfdump run each.
    pub max_files: usize,
    /// How long a page reads: once it is over, the nfdump running is killed
    /// and the page ends where it got to.
    pub time_budget: Duration,
}

/// nfcapd's tree (one directory per replica's collector, or one directory);
/// read with nfdump.
#[derive(Debug, Clone)]
pub(crate) struct FlowArchive {
    dir: PathBuf,
    limits: PageLimits,
    nfdump: PathBuf,
}

/// Where a page stopped: in `file` (its path under the archive root), after
/// `skip` of the records nfdump printed for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Position {
    file: String,
    started: OffsetDateTime,
    skip: u64,
}

impl Position {
    /// `None` when `file` does not end in a closed nfcapd file's name.
    pub fn new(file: String, skip: u64) -> Option<Position> {
        let name = file.rsplit('/').next()?;
        let started = closed_file_time(name)?;
        Some(Position {
            file,
            started,
            skip,
        })
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    pub fn skip(&self) -> u64 {
        self.skip
    }

    fn key(&self) -> (OffsetDateTime, &str) {
        (self.started, &self.file)
    }
}

/// One page of a platform's flows.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FlowPage {
    /// Oldest first by first packet.
    pub flows: Vec<Flow>,
    /// Where the next page starts; `None` when the range was read to its end.
    pub next: Option<Position>,
}

/// A closed file of the tree and the arrival times it can hold.
#[derive(Debug, Clone)]
struct ClosedFile {
    path: PathBuf,
    /// Under the root, `/`-separated: the file's name in a [`Position`].
    relative: String,
    started: OffsetDateTime,
    /// The next file's start in its directory, or the longest interval.
    ends: OffsetDateTime,
}

impl ClosedFile {
    fn key(&self) -> (OffsetDateTime, &str) {
        (self.started, &self.relative)
    }

    /// The position after `skip` of its records.
    fn at(&self, skip: u64) -> Position {
        Position {
            file: self.relative.clone(),
            started: self.started,
            skip,
        }
    }

    /// Whether records whose last packet is in `since..=until` can be in it,
    /// when a record may arrive up to `late` after its last packet.
    fn may_hold(&self, since: OffsetDateTime, until: OffsetDateTime, late: time::Duration) -> bool {
        self.started <= until + late && self.ends > since - LATE_RECORD_ALLOWANCE
    }
}

impl FlowArchive {
    pub fn new(dir: PathBuf, limits: PageLimits) -> Self {
        FlowArchive {
            dir,
            limits,
            nfdump: PathBuf::from("nfdump"),
        }
    }

    /// The same archive read with another program than `nfdump` (tests).
    #[cfg(test)]
    fn with_nfdump(mut self, program: PathBuf) -> Self {
        self.nfdump = program;
        self
    }

    /// Up to `limit` of the platform's flow records, from `after` on (the
    /// start of the range without it). An error when nfdump fails, or when
    /// the time budget passed before the page got anywhere.
    pub async fn page(
        &self,
        query: &PlatformQuery,
        limit: usize,
        after: Option<&Position>,
    ) -> Result<FlowPage, FlowError> {
        if query.exporters.is_empty() {
            return Ok(FlowPage {
                flows: Vec::new(),
                next: None,
            });
        }
        let deadline = tokio::time::Instant::now() + self.limits.time_budget;
        let root = self.dir.clone();
        let mut files = tokio::task::spawn_blocking(move || closed_files(&root))
            .await
            .map_err(|e| FlowError::Archive(e.to_string()))?
            .map_err(|e| FlowError::Archive(format!("{}: {e}", self.dir.display())))?;
        let late = late_allowance(query.active_timeout);
        files.retain(|f| f.may_hold(query.since, query.until, late));
        files.sort_by(|a, b| a.key().cmp(&b.key()));
        let first = after.map_or(0, |at| files.partition_point(|f| f.key() < at.key()));
        let filter = filter(query);
        let mut reading = PageRead {
            after,
            flows: Vec::new(),
            kept_bytes: 0,
            limit,
            max_bytes: self.limits.max_bytes,
            progressed: false,
        };
        let mut next = None;
        for (index, file) in files.iter().enumerate().skip(first) {
            if index - first == self.limits.max_files {
                next = Some(file.at(0));
                break;
            }
            let records = Records::start(&self.nfdump, &file.path, &filter)?;
            match reading.file(records, file, query, deadline).await? {
                Stop::EndOfFile => {}
                Stop::Full(at) => {
                    next = Some(at);
                    break;
                }
                // A page that got nowhere would send the client back to
                // where it was, for ever.
                Stop::OutOfTime(_) if !reading.progressed => {
                    return Err(FlowError::Timeout {
                        file: file.path.clone(),
                        budget: self.limits.time_budget,
                    })
                }
                Stop::OutOfTime(at) => {
                    next = Some(at);
                    break;
                }
            }
        }
        let mut flows = reading.flows;
        flows.sort_by(|a, b| a.first_seen.cmp(&b.first_seen));
        Ok(FlowPage { flows, next })
    }
}

/// Why reading a file stopped.
enum Stop {
    /// Its output ended: the page goes on with the next file.
    EndOfFile,
    /// The page is full; the next one starts at this position.
    Full(Position),
    /// The time budget is spent; the next page starts at this position.
    OutOfTime(Position),
}

/// The state of one page being read.
struct PageRead<'a> {
    after: Option<&'a Position>,
    flows: Vec<Flow>,
    /// nfdump's bytes for the records in `flows`.
    kept_bytes: u64,
    limit: usize,
    max_bytes: u64,
    /// Whether the page got past where it started: a record read beyond
    /// `after`, or a file read to its end.
    progressed: bool,
}

impl PageRead<'_> {
    /// Read one file's records into the page.
    async fn file(
        &mut self,
        mut records: Records,
        file: &ClosedFile,
        query: &PlatformQuery,
        deadline: tokio::time::Instant,
    ) -> Result<Stop, FlowError> {
        let skip = match self.after {
            Some(at) if at.key() == file.key() => at.skip(),
            _ => 0,
        };
        // Records of the file read so far, in nfdump's order.
        let mut taken = 0u64;
        loop {
            let next = match tokio::time::timeout_at(deadline, records.next()).await {
                Ok(next) => next?,
                Err(_) => {
                    records.stop().await;
                    // Never behind the start: a page that ran out of time
                    // while skipping the records of the page before.
                    return Ok(Stop::OutOfTime(file.at(taken.max(skip))));
                }
            };
            let Some((record, size)) = next else {
                records.finish().await?;
                self.progressed = true;
                return Ok(Stop::EndOfFile);
            };
            if taken < skip {
                taken += 1;
                continue;
            }
            if let Some(flow) = flow_of(&record, query)? {
                let full = self.flows.len() >= self.limit
                    || (!self.flows.is_empty() && self.kept_bytes + size as u64 > self.max_bytes);
                if full {
                    records.stop().await;
                    return Ok(Stop::Full(file.at(taken)));
                }
                self.kept_bytes += size as u64;
                self.flows.push(flow);
            }
            taken += 1;
            self.progressed = true;
        }
    }
}

/// The closed nfcapd files under `root` at any depth, each with the arrival
/// times it can hold. Symbolic links are not followed, as the prune does not
/// (nothing outside the root is read); a missing root holds nothing.
fn closed_files(root: &Path) -> io::Result<Vec<ClosedFile>> {
    let mut files = Vec::new();
    match std::fs::read_dir(root) {
        Ok(entries) => collect_dir(root, entries, &mut files)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(files)
}

fn collect_dir(
    root: &Path,
    entries: std::fs::ReadDir,
    files: &mut Vec<ClosedFile>,
) -> io::Result<()> {
    let mut here = Vec::new();
    for entry in entries {
        let entry = entry?;
        let kind = entry.file_type()?;
        let path = entry.path();
        if kind.is_dir() {
            collect_dir(root, std::fs::read_dir(&path)?, files)?;
            continue;
        }
        let started = entry
            .file_name()
            .to_str()
            .filter(|_| kind.is_file())
            .and_then(closed_file_time);
        if let Some(started) = started {
            let relative = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            here.push(ClosedFile {
                path,
                relative,
                started,
                ends: started + LONGEST_INTERVAL,
            });
        }
    }
    // nfcapd starts a file where the one before ended.
    here.sort_by_key(|f| f.started);
    for i in 1..here.len() {
        let next_start = here[i].started;
        let before = &mut here[i - 1];
        before.ends = before.ends.min(next_start);
    }
    files.append(&mut here);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::names::closed_file_name;

    fn at(text: &str) -> OffsetDateTime {
        OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap()
    }

    fn query() -> PlatformQuery {
        PlatformQuery {
            subnet: "10.201.3.0/24".into(),
            vlan: 103,
            exporters: vec![("10.254.0.11".into(), "n1".into())],
            since: at("2026-12-05T01:00:00Z"),
            until: at("2026-12-05T02:00:00Z"),
            active_timeout: None,
        }
    }

    /// Files of two collectors, one rotating every minute and one every
    /// five, a gap where the first was down, and what is not a closed
    /// file: a range reads the files whose interval (up to the next file
    /// of their directory) meets it widened by the allowance for late
    /// records, and nothing else.
    #[test]
    fn the_files_read_are_those_whose_names_meet_the_range() {
        let root = tempfile::tempdir().unwrap();
        let (fast, slow) = (root.path().join("c1"), root.path().join("c2"));
        std::fs::create_dir(&fast).unwrap();
        std::fs::create_dir(&slow).unwrap();
        let names = |dir: &Path, times: &[&str]| {
            for time in times {
                std::fs::write(dir.join(closed_file_name(at(time), false)), b"x").unwrap();
            }
        };
        names(
            &fast,
            &[
                "2026-12-05T00:57:00Z",
                // Its records arrived before 00:59, more than the
                // allowance before the range.
                "2026-12-05T00:58:00Z",
                // Up to 01:00: records within the allowance.
                "2026-12-05T00:59:00Z",
                "2026-12-05T01:30:00Z",
                // The collector was down 01:31 to 01:58: the file before
                // reaches at most an hour, to the next file.
                "2026-12-05T01:58:00Z",
                "2026-12-05T02:01:00Z",
                "2026-12-05T02:02:00Z",
            ],
        );
        names(
            &slow,
            &[
                "2026-12-05T00:50:00Z",
                "2026-12-05T00:55:00Z",
                "2026-12-05T02:05:00Z",
            ],
        );
        std::fs::write(fast.join("nfcapd.current.42"), b"x").unwrap();
        std::fs::write(fast.join("nfcapd.202612050130.tmp"), b"x").unwrap();
        let q = query();
        let mut chosen: Vec<String> = closed_files(root.path())
            .unwrap()
            .into_iter()
            .filter(|f| f.may_hold(q.since, q.until, late_allowance(q.active_timeout)))
            .map(|f| f.relative)
            .collect();
        chosen.sort();
        assert_eq!(
            chosen,
            [
                "c1/nfcapd.202612050059",
                "c1/nfcapd.202612050130",
                "c1/nfcapd.202612050158",
                "c1/nfcapd.202612050201",
                // The slow collector's 00:55 file holds up to 02:05.
                "c2/nfcapd.202612050055",
            ]
        );
        assert!(closed_files(&root.path().join("missing"))
            .unwrap()
            .is_empty());
    }

    /// The range 01:00 to 02:00 over a collector rotating every minute:
    /// records are matched by their last packet, and a node exporting IPFIX
    /// with a 600 s active timeout sends a flow's record up to 600 s (and
    /// the datapath's 10 s idle) after it, so the files up to 02:10:10 are
    /// read; the 60 s allowance alone stops at 02:01, and later files and
    /// those before the range stay unread whatever the timeout.
    #[test]
    fn records_sent_an_active_timeout_after_the_range_are_found_and_later_files_are_not_read() {
        let root = tempfile::tempdir().unwrap();
        for time in [
            // Both end (at the next file) by 00:59, a minute before the range.
            "2026-12-05T00:57:00Z",
            "2026-12-05T00:58:00Z",
            "2026-12-05T00:59:00Z",
            "2026-12-05T01:30:00Z",
            "2026-12-05T02:01:00Z",
            "2026-12-05T02:05:00Z",
            // Holds a record whose last packet was at 01:59:30, sent 600 s
            // later.
            "2026-12-05T02:09:00Z",
            "2026-12-05T02:10:00Z",
            "2026-12-05T02:11:00Z",
            "2026-12-05T02:30:00Z",
            "2026-12-05T03:30:00Z",
            "2026-12-05T04:00:00Z",
        ] {
            std::fs::write(root.path().join(closed_file_name(at(time), false)), b"x").unwrap();
        }
        let chosen = |active_timeout: Option<time::Duration>| {
            let q = PlatformQuery {
                active_timeout,
                ..query()
            };
            let mut names: Vec<String> = closed_files(root.path())
                .unwrap()
                .into_iter()
                .filter(|f| f.may_hold(q.since, q.until, late_allowance(q.active_timeout)))
                .map(|f| f.relative)
                .collect();
            names.sort();
            names
        };
        let reported =
            reported_active_timeout("ipfix sampling=1/1 active_timeout=600s -> 10.254.0.1:2055");
        assert_eq!(reported, Some(time::Duration::seconds(600)));
        assert_eq!(
            chosen(reported),
            [
                "nfcapd.202612050059",
                "nfcapd.202612050130",
                "nfcapd.202612050201",
                "nfcapd.202612050205",
                "nfcapd.202612050209",
                "nfcapd.202612050210",
            ]
        );
        // No node reports a timeout (or one under 50 s): the minute's allowance.
        let minute = [
            "nfcapd.202612050059",
            "nfcapd.202612050130",
            "nfcapd.202612050201",
        ];
        assert_eq!(chosen(None), minute);
        assert_eq!(
            chosen(reported_active_timeout(
                "netflow-v5 sampling=1/1 active_timeout=10s -> 10.254.0.1:2055"
            )),
            minute
        );
        assert_eq!(reported_active_timeout(""), None);
        // A timeout past what Open vSwitch takes widens no further than
        // its largest (4200 s and the idle time: up to 03:10:10).
        assert_eq!(
            chosen(reported_active_timeout(
                "ipfix sampling=1/1 active_timeout=4294967295s -> x"
            ))
            .last()
            .map(String::as_str),
            Some("nfcapd.202612050230")
        );
    }

    /// A stand-in for nfdump: a shell script that records its pid and
    /// prints `output` (shell code).
    fn fake_nfdump(dir: &Path, output: &str) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let script = dir.join("nfdump");
        let pid = dir.join("pid");
        std::fs::write(
            &script,
            format!("#!/bin/sh\necho $$ > {}\n{output}\n", pid.display()),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        (script, pid)
    }

    const RECORD: &str = r#"{ "first" : "2026-12-05T01:40:12.345", "last" : "2026-12-05T01:40:13.000", "proto" : 17, "in_packets" : 1, "ip4_router" : "10.254.0.11" },"#;

    /// An archive of one closed file in the query's range, read by `output`.
    fn archive_of(dir: &Path, output: &str, limits: PageLimits) -> (FlowArchive, PathBuf) {
        let root = dir.join("flows");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(
            root.join(closed_file_name(at("2026-12-05T01:40:00Z"), false)),
            b"x",
        )
        .unwrap();
        let (script, pid) = fake_nfdump(dir, output);
        (FlowArchive::new(root, limits).with_nfdump(script), pid)
    }

    const LIMITS: PageLimits = PageLimits {
        max_bytes: 1 << 20,
        max_files: 10,
        time_budget: Duration::from_secs(30),
    };

    /// Whether the process `pid_file` names is gone (killed and reaped).
    fn gone(pid_file: &Path) -> bool {
        let pid = std::fs::read_to_string(pid_file).unwrap();
        !Path::new(&format!("/proc/{}", pid.trim())).exists()
    }

    /// nfdump printing without end is read only as far as the page goes,
    /// then killed; the cursor is the record the page stopped before.
    #[tokio::test]
    async fn endless_output_is_read_to_the_page_and_nfdump_killed() {
        let dir = tempfile::tempdir().unwrap();
        let (archive, pid) = archive_of(
            dir.path(),
            &format!("while :; do echo '{RECORD}'; done"),
            LIMITS,
        );
        let page = archive.page(&query(), 5, None).await.unwrap();
        assert_eq!(page.flows.len(), 5);
        assert_eq!(
            page.next.as_ref().map(|p| (p.file(), p.skip())),
            Some(("nfcapd.202612050140", 5))
        );
        assert!(gone(&pid), "nfdump was left running");

        // The next page skips the five and takes five more.
        let next = archive.page(&query(), 5, page.next.as_ref()).await.unwrap();
        assert_eq!(next.next.map(|p| p.skip()), Some(10));

        // The byte cap: each record is its text without the comma.
        let limits = PageLimits {
            max_bytes: 3 * (RECORD.len() as u64 - 1),
            ..LIMITS
        };
        let dir = tempfile::tempdir().unwrap();
        let (archive, pid) = archive_of(
            dir.path(),
            &format!("while :; do echo '{RECORD}'; done"),
            limits,
        );
        let page = archive.page(&query(), 1000, None).await.unwrap();
        assert_eq!(page.flows.len(), 3);
        assert_eq!(page.next.map(|p| p.skip()), Some(3));
        assert!(gone(&pid), "nfdump was left running");
    }

    /// nfdump that stalls is killed when the page's time is up: a page
    /// that read something ends there with a cursor, one that read nothing
    /// is an error naming the file.
    #[tokio::test]
    async fn stalled_nfdump_is_killed_at_the_time_budget() {
        let limits = PageLimits {
            time_budget: Duration::from_millis(300),
            ..LIMITS
        };
        let dir = tempfile::tempdir().unwrap();
        let (archive, pid) = archive_of(
            dir.path(),
            &format!("echo '{RECORD}'\nexec sleep 30"),
            limits,
        );
        let started = std::time::Instant::now();
        let page = archive.page(&query(), 1000, None).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(page.flows.len(), 1);
        let stopped = page.next.unwrap();
        assert_eq!(stopped.skip(), 1);
        assert!(gone(&pid), "nfdump was left running");

        // From there on nothing comes: an error, not the same cursor again.
        let err = archive
            .page(&query(), 1000, Some(&stopped))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, FlowError::Timeout { file, .. } if file.ends_with("nfcapd.202612050140")),
            "{err:?}"
        );
        assert!(gone(&pid), "nfdump was left running");
    }

    /// A cursor into a file the prune removed since goes on with the next
    /// file; one before every file reads them all.
    #[tokio::test]
    async fn a_cursor_is_a_place_in_the_order_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let (archive, _) = archive_of(dir.path(), &format!("echo '{RECORD}'"), LIMITS);
        let before = Position::new("c9/nfcapd.202612050139".into(), 7).unwrap();
        let page = archive.page(&query(), 10, Some(&before)).await.unwrap();
        assert_eq!((page.flows.len(), page.next), (1, None));
        let after = Position::new("c9/nfcapd.202612050141".into(), 0).unwrap();
        let page = archive.page(&query(), 10, Some(&after)).await.unwrap();
        assert_eq!((page.flows.len(), page.next), (0, None));
        assert_eq!(Position::new("c9/notes.txt".into(), 0), None);
    }

    /// nfdump failing is an error with what it said; failing because its
    /// file vanished after it was listed (pruned) is not.
    #[tokio::test]
    async fn a_failing_nfdump_is_an_error_unless_its_file_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (archive, _) = archive_of(dir.path(), "echo 'disk on fire' >&2; exit 3", LIMITS);
        let err = archive.page(&query(), 10, None).await.unwrap_err();
        assert!(
            matches!(&err, FlowError::Nfdump(said) if said.contains("disk on fire")),
            "{err:?}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("flows/nfcapd.202612050140");
        let (archive, _) = archive_of(
            dir.path(),
            &format!("rm {}; echo 'is not a file' >&2; exit 1", file.display()),
            LIMITS,
        );
        let page = archive.page(&query(), 10, None).await.unwrap();
        assert_eq!((page.flows.len(), page.next), (0, None));
        assert!(!file.exists());
    }
}
