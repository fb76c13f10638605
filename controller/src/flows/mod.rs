//! Flow monitoring on the controller: the collector it runs (`collector`),
//! the per-platform reading of what the collector stored (`archive`, which
//! runs `nfdump` and keeps a platform's `records`), and the deletion of
//! stored files past the flow retention (`prune`); both go by the times in
//! nfcapd's file `names`.
//!
//! The controller, not each agent, runs the collector: every node exports to
//! one address it learns from its desired state, nfcapd's files are the flow
//! store (no table grows with traffic), and a platform's flows are one
//! `nfdump` query away, over every node at once.

pub(crate) mod archive;
pub(crate) mod collector;
mod names;
mod nfdump;
pub(crate) mod prune;
pub(crate) mod records;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The longest rotation interval the controller lets nfcapd use
/// (`--flow-rotate-seconds`): the flow prune takes a `nfcapd.current.*`
/// file untouched for longer than the retention and this for a dead
/// collector's (see `prune`).
pub const MAX_ROTATE_SECONDS: u32 = 3600;

/// Bytes of nfdump output one `GET /v1/platforms/{id}/flows` page keeps
/// (`--flows-page-max-bytes`): nfdump prints a record in about 500 bytes,
/// so 32 MiB is some 60 000 records, past the most a page asks for.
pub const DEFAULT_FLOWS_PAGE_MAX_BYTES: u64 = 32 << 20;

/// Files one flows page reads, one nfdump run each
/// (`--flows-page-max-files`): 1000 runs take a few seconds, and cover
/// over 16 hours of one collector rotating every minute.
pub const DEFAULT_FLOWS_PAGE_MAX_FILES: u32 = 1000;

/// Where the controller's collector listens and how it stores.
#[derive(Debug, Clone)]
pub struct FlowCollectorConfig {
    /// UDP address nodes export NetFlow v5 / IPFIX to (`--flow-collector`).
    pub listen: SocketAddr,
    /// Run the collector inside this network namespace (`/run/netns/NAME`),
    /// like the gRPC listener of a lab controller.
    pub netns: Option<String>,
    /// How often nfcapd closes a file; a flow is queryable only once its
    /// file is closed. Default 60 s, at most [`MAX_ROTATE_SECONDS`].
    pub rotate_seconds: u32,
}

impl FlowCollectorConfig {
    /// A collector on `listen` with the default rotation.
    pub fn new(listen: SocketAddr) -> Self {
        FlowCollectorConfig {
            listen,
            netns: None,
            rotate_seconds: 60,
        }
    }
}

/// Where flows are written and read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FlowDirs {
    /// The tree the archive reads (`nfdump -R` descends into
    /// sub-directories and skips the `nfcapd.current.*` file a running
    /// collector is writing, so other replicas' live files do no harm).
    pub archive: PathBuf,
    /// Where this controller's nfcapd writes; `None` without a collector.
    pub collector: Option<PathBuf>,
}

impl FlowDirs {
    /// Without a flow root (`--flow-dir`): `<data_dir>/flows`, read and
    /// written as one directory, as before replicas. With one: the root is
    /// read whole, and the collector writes into a sub-directory named
    /// after this host and its listen address ([`collector_subdir`]).
    ///
    /// The root is created here, before anything else starts, so a root
    /// that cannot be made stops the start with the flag's name in the
    /// error instead of a collector restarting forever.
    pub fn resolve(
        data_dir: &Path,
        flow_dir: Option<&Path>,
        collector: Option<&FlowCollectorConfig>,
    ) -> Result<FlowDirs, FlowDirError> {
        let Some(root) = flow_dir else {
            let dir = data_dir.join("flows");
            return Ok(FlowDirs {
                collector: collector.map(|_| dir.clone()),
                archive: dir,
            });
        };
        let host = match collector {
            Some(_) => {
                std::fs::read_to_string(HOSTNAME_FILE).map_err(|source| FlowDirError::HostName {
                    file: HOSTNAME_FILE,
                    source,
                })?
            }
            None => String::new(),
        };
        Self::under_root(root, collector, host.trim())
    }

    /// [`FlowDirs::resolve`] with a root, `host` naming this machine.
    fn under_root(
        root: &Path,
        collector: Option<&FlowCollectorConfig>,
        host: &str,
    ) -> Result<FlowDirs, FlowDirError> {
        if root.as_os_str().is_empty() {
            return Err(FlowDirError::Empty);
        }
        // nfdump -R reads "DIR/FILE1:FILE2" as a range of files, so a
        // colon anywhere in the path would be misread.
        if root.to_string_lossy().contains(':') {
            return Err(FlowDirError::Colon {
                root: root.to_path_buf(),
            });
        }
        std::fs::create_dir_all(root).map_err(|source| FlowDirError::Create {
            root: root.to_path_buf(),
            source,
        })?;
        Ok(FlowDirs {
            archive: root.to_path_buf(),
            collector: collector.map(|c| root.join(collector_subdir(host, c.listen))),
        })
    }
}

/// Why the flow root (`--flow-dir`) cannot be used. Each message starts
/// with the flag, as the operator wrote it there (or in
/// `MEASURELAB_FLOW_DIR`, which the CLI reads into the same flag).
#[derive(Debug, thiserror::Error)]
pub enum FlowDirError {
    /// The root is the empty path.
    #[error("--flow-dir: must not be empty")]
    Empty,
    /// nfdump reads `DIR/FILE1:FILE2` in `-R` as a range of files.
    #[error(
        "--flow-dir {}: must not contain ':' (nfdump reads it as a file range)",
        root.display()
    )]
    Colon {
        /// The root given.
        root: PathBuf,
    },
    /// The root does not exist and cannot be made.
    #[error("--flow-dir {}: cannot create it: {source}", root.display())]
    Create {
        /// The root given.
        root: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The collector's sub-directory is named after the host
    /// ([`collector_subdir`]), and the host name cannot be read.
    #[error("--flow-dir: cannot read the host name from {file} (it names this replica's sub-directory): {source}")]
    HostName {
        /// The file read, [`HOSTNAME_FILE`].
        file: &'static str,
        /// Cause.
        source: std::io::Error,
    },
}

/// The kernel's host name (the controller runs on Linux only: nsenter,
/// /run/netns); readable under the unit's ProtectKernelTunables=.
const HOSTNAME_FILE: &str = "/proc/sys/kernel/hostname";

/// The sub-directory of a shared flow root one replica's collector writes
/// into, e.g. `c1.example.org-10.254.0.1-2055`.
///
/// Stable, so a restarted replica continues its own directory (a random
/// name per start would leave one behind at every restart), and distinct
/// between replicas running at once, since two collectors in one directory
/// would write files of the same names (`nfcapd.YYYYMMDDhhmm`) over each
/// other. The listen address alone is not distinct: replicas on two hosts
/// may both listen on `0.0.0.0:2055`. The host name alone is not either:
/// the replicas of a lab share one host (on ports of their own). Together
/// they are, as one host cannot bind one address twice. A host renamed, or
/// a container recreated under a new name, starts a new directory; the
/// archive reads the whole root, so the old one's flows stay in view.
/// Characters other than letters, digits, `.` and `-` become `_`: IPv6
/// colons especially, which nfdump reads in `-R` as a file range.
pub(crate) fn collector_subdir(host: &str, listen: SocketAddr) -> String {
    let name = format!("{host}-{}-{}", listen.ip(), listen.port());
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Why flows could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// This controller runs no collector.
    #[error("this controller runs no flow collector (start it with --flow-collector IP:PORT)")]
    NoCollector,
    /// nfdump could not be started or failed.
    #[error("nfdump failed: {0}")]
    Nfdump(String),
    /// nfdump's output was not what it documents.
    #[error("cannot parse nfdump output: {0}")]
    Parse(String),
    /// The flow tree cannot be listed.
    #[error("cannot list the flow files: {0}")]
    Archive(String),
    /// A page's time got used up before it read anything (a page that gets
    /// somewhere ends early with a cursor instead).
    #[error(
        "nfdump read nothing of {} within {budget:?} (half the HTTP request timeout); nfdump was stopped",
        file.display()
    )]
    Timeout {
        /// The file being read.
        file: PathBuf,
        /// The time budget of a page.
        budget: std::time::Duration,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collector(listen: &str) -> FlowCollectorConfig {
        FlowCollectorConfig::new(listen.parse().unwrap())
    }

    #[test]
    fn without_a_root_the_collector_writes_where_the_archive_reads() {
        let dirs = FlowDirs::resolve(
            Path::new("/var/lib/measurelab"),
            None,
            Some(&collector("10.254.0.1:2055")),
        )
        .unwrap();
        assert_eq!(dirs.archive, Path::new("/var/lib/measurelab/flows"));
        assert_eq!(dirs.collector.as_deref(), Some(dirs.archive.as_path()));
    }

    #[test]
    fn replicas_on_one_root_write_apart_and_read_the_same_tree() {
        let root = tempfile::tempdir().unwrap();
        let shared = root.path().join("flows");
        let dirs = |host: &str, listen: &str| {
            FlowDirs::under_root(&shared, Some(&collector(listen)), host).unwrap()
        };
        // A lab: one host, a port per replica. Real hosts: one wildcard
        // address on each. IPv6.
        let all = [
            dirs("lab", "10.254.0.1:2055"),
            dirs("lab", "10.254.0.1:2056"),
            dirs("c1", "0.0.0.0:2055"),
            dirs("c2", "0.0.0.0:2055"),
            dirs("c3", "[fd00::1]:2055"),
        ];
        assert!(shared.is_dir(), "the root is created at start");
        let mut collectors = Vec::new();
        for d in &all {
            assert_eq!(d.archive, shared);
            let dir = d.collector.clone().unwrap();
            assert_eq!(dir.parent(), Some(shared.as_path()));
            assert!(!dir.to_string_lossy().contains(':'), "{}", dir.display());
            assert!(!collectors.contains(&dir), "{} twice", dir.display());
            collectors.push(dir);
        }
        // A restarted replica continues its own directory.
        assert_eq!(
            dirs("c1", "0.0.0.0:2055").collector.as_ref(),
            Some(&collectors[2])
        );
    }

    #[test]
    fn a_root_that_cannot_be_used_names_the_flag() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let under_a_file = file.path().join("flows");
        let err = FlowDirs::resolve(Path::new("/a"), Some(&under_a_file), None).unwrap_err();
        assert!(
            matches!(&err, FlowDirError::Create { root, .. } if *root == under_a_file),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with(&format!(
                "--flow-dir {}: cannot create it: ",
                under_a_file.display()
            )),
            "{err}"
        );
        let err =
            FlowDirs::resolve(Path::new("/a"), Some(Path::new("/srv/a:b")), None).unwrap_err();
        assert!(matches!(err, FlowDirError::Colon { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "--flow-dir /srv/a:b: must not contain ':' (nfdump reads it as a file range)"
        );
        let err = FlowDirs::resolve(Path::new("/a"), Some(Path::new("")), None).unwrap_err();
        assert!(matches!(err, FlowDirError::Empty), "{err:?}");
        assert_eq!(err.to_string(), "--flow-dir: must not be empty");
    }
}
