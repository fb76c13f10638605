//! The last release's `measurelab` and `measurelab-guest-agent`, built from
//! git history for the mixed-version tests (docs/version-skew.md).
//!
//! `compat/released/RELEASE` names the release's version and commit. The
//! commit's tree is taken with `git archive` (no checkout, so the work tree
//! is untouched) into `<target>/released/<commit>/src` and built there with
//! its own `Cargo.lock` (`--locked`) into `<target>/released/<commit>/target`,
//! a target dir of its own: the release's crates share names and paths with
//! this tree's, and a build in the main target dir would wait on the lock of
//! the `cargo` that runs the tests. Both dirs are keyed by the commit, so a
//! second run finds the binaries built and cargo only checks them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};

use crate::{describe, workspace_root};

/// The file naming the last release, relative to the workspace root.
pub const RELEASE_FILE: &str = "compat/released/RELEASE";

/// The packages holding the node agent (a `measurelab` subcommand) and the
/// guest agent.
const PACKAGES: [&str; 2] = ["measurelab", "measurelab-guest"];

/// The release's binaries the tests run; the node agent starts the guest
/// agent from beside its own executable, so they share one directory.
pub const BINARIES: [&str; 2] = ["measurelab", "measurelab-guest-agent"];

/// One release, as `compat/released/RELEASE` records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// `X.Y.Z`; the release's tag is `vX.Y.Z`.
    pub version: String,
    /// The full hash of the commit the release was built from.
    pub commit: String,
}

impl Release {
    /// The release recorded in the workspace's `compat/released/RELEASE`.
    pub fn recorded() -> anyhow::Result<Release> {
        let path = workspace_root().join(RELEASE_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Release::parse(&text).with_context(|| format!("{}", path.display()))
    }

    /// Parse `key = value` lines (`#` starts a comment): `version` and
    /// `commit`, both required.
    pub fn parse(text: &str) -> anyhow::Result<Release> {
        let (mut version, mut commit) = (None, None);
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                bail!("line {}: expected `key = value`, got {line:?}", number + 1);
            };
            let value = value.trim().to_string();
            match key.trim() {
                "version" => version = Some(value),
                "commit" => commit = Some(value),
                other => bail!("line {}: unknown key {other:?}", number + 1),
            }
        }
        let version = version.context("version: missing")?;
        let commit = commit.context("commit: missing")?;
        let parts: Vec<&str> = version.split('.').collect();
        if parts.len() != 3 || parts.iter().any(|p| p.parse::<u64>().is_err()) {
            bail!("version: {version:?} is not X.Y.Z");
        }
        if commit.len() != 40 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("commit: {commit:?} is not a full 40-hex commit hash");
        }
        Ok(Release { version, commit })
    }

    /// The directory holding the release's [`BINARIES`], built on first use.
    ///
    /// Fails, naming the commit, when this clone does not have it (a shallow
    /// clone): the mixed-version tests need the release's history.
    pub fn binaries(&self) -> anyhow::Result<PathBuf> {
        let root = workspace_root();
        let present = Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(["cat-file", "-e", &format!("{}^{{commit}}", self.commit)])
            .stderr(Stdio::null())
            .status()
            .context("running git cat-file")?;
        if !present.success() {
            bail!(
                "release {} is commit {} ({RELEASE_FILE}), which this clone ({}) does not have; \
                 the mixed-version tests build it from history: fetch it \
                 (`git fetch --unshallow`, or `git fetch origin {}`)",
                self.version,
                self.commit,
                root.display(),
                self.commit
            );
        }
        let cache = target_root().join("released").join(&self.commit);
        let src = cache.join("src");
        if !src.join("Cargo.lock").is_file() {
            self.extract(&cache, &src)?;
        }
        let target = cache.join("target");
        let started = Instant::now();
        // Two tests asking at once: the second `cargo build` waits on the
        // first's lock on `target` ("Blocking waiting for file lock") and then
        // finds everything built, so the release is built once.
        let output = measurelab_testbed::cargo::command()
            .current_dir(&src)
            .args(["build", "--locked"])
            .args(PACKAGES.iter().flat_map(|p| ["-p", p]))
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("CARGO_BUILD_TARGET_DIR")
            .stdin(Stdio::null())
            .output()
            .context("running cargo build for the release")?;
        if !output.status.success() {
            bail!(
                "building release {} ({}) in {} failed:\n{}",
                self.version,
                self.commit,
                src.display(),
                describe(&output)
            );
        }
        eprintln!(
            "release {} ({}): binaries built or checked in {:.1?}",
            self.version,
            &self.commit[..12],
            started.elapsed()
        );
        let dir = target.join("debug");
        for binary in BINARIES {
            anyhow::ensure!(
                dir.join(binary).is_file(),
                "release {}: cargo built no {}",
                self.version,
                dir.join(binary).display()
            );
        }
        Ok(dir)
    }

    /// `git archive` of the commit into `src`, through a private directory
    /// renamed into place, so a concurrent or interrupted extraction never
    /// leaves a half tree where a later run would build it.
    fn extract(&self, cache: &Path, src: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
        let staging = tempfile::Builder::new()
            .prefix("src-")
            .tempdir_in(cache)
            .with_context(|| format!("creating a directory in {}", cache.display()))?;
        let mut archive = Command::new("git")
            .arg("-C")
            .arg(workspace_root())
            .args(["archive", "--format=tar", &self.commit])
            .stdout(Stdio::piped())
            .spawn()
            .context("running git archive")?;
        let tar_input = archive.stdout.take().context("git archive's stdout")?;
        let untar = Command::new("tar")
            .arg("-x")
            .arg("-C")
            .arg(staging.path())
            .stdin(tar_input)
            .status()
            .context("running tar -x")?;
        let archived = archive.wait().context("waiting for git archive")?;
        anyhow::ensure!(
            archived.success() && untar.success(),
            "git archive {} | tar -x failed ({archived}, {untar})",
            self.commit
        );
        match std::fs::rename(staging.path(), src) {
            Ok(()) => {
                // Renamed away: nothing left for the guard to remove.
                let _ = staging.keep();
                Ok(())
            }
            // Another run put its tree there first; the commit's tree is the same.
            Err(_) if src.join("Cargo.lock").is_file() => Ok(()),
            Err(err) => Err(err).with_context(|| format!("moving the tree to {}", src.display())),
        }
    }
}

/// `$CARGO_TARGET_DIR`, or the workspace's `target`.
fn target_root() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The recorded commit is the one whose wire contract `xtask compat`
    /// holds this tree to, so the tests build the release the contract is.
    #[test]
    fn the_recorded_commit_released_the_contract() {
        let release = Release::recorded().unwrap();
        for (at_commit, released) in [
            ("crates/api/proto/node.proto", "compat/released/node.proto"),
            ("controller/openapi.json", "compat/released/openapi.json"),
        ] {
            let shown = Command::new("git")
                .arg("-C")
                .arg(workspace_root())
                .args(["show", &format!("{}:{at_commit}", release.commit)])
                .output()
                .unwrap();
            assert!(shown.status.success(), "{}", describe(&shown));
            let frozen = std::fs::read(workspace_root().join(released)).unwrap();
            assert!(
                shown.stdout == frozen,
                "{released} differs from {at_commit} at {}",
                release.commit
            );
        }
    }

    /// A clone without the commit (a shallow one) fails, naming the commit,
    /// before anything is extracted or built.
    #[test]
    fn a_missing_commit_is_named() {
        let release = Release {
            version: "0.0.1".into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
        };
        let err = release.binaries().unwrap_err();
        let message = format!("{err:#}");
        assert!(
            message.starts_with(
                "release 0.0.1 is commit 0123456789abcdef0123456789abcdef01234567 \
                 (compat/released/RELEASE), which this clone"
            ),
            "{message}"
        );
        assert!(!target_root()
            .join("released")
            .join(&release.commit)
            .exists());
    }

    #[test]
    fn parse_reads_keys_and_skips_comments() {
        let release = Release::parse(
            "# a comment\nversion = 1.2.3\n\ncommit = 64e1e0e975f1fd34d5121827fa4fbe5601222fb0\n",
        )
        .unwrap();
        assert_eq!(
            release,
            Release {
                version: "1.2.3".into(),
                commit: "64e1e0e975f1fd34d5121827fa4fbe5601222fb0".into()
            }
        );
    }

    #[test]
    fn parse_names_the_bad_field() {
        let short = Release::parse("version = 0.1.0\ncommit = 64e1e0e\n").unwrap_err();
        assert!(format!("{short:#}").starts_with("commit:"), "{short:#}");
        let version =
            Release::parse("version = 0.1\ncommit = 64e1e0e975f1fd34d5121827fa4fbe5601222fb0\n")
                .unwrap_err();
        assert!(
            format!("{version:#}").starts_with("version:"),
            "{version:#}"
        );
        let missing =
            Release::parse("commit = 64e1e0e975f1fd34d5121827fa4fbe5601222fb0\n").unwrap_err();
        assert_eq!(format!("{missing:#}"), "version: missing");
        let unknown = Release::parse("tag = v0.1.0\n").unwrap_err();
        assert!(
            format!("{unknown:#}").contains("unknown key \"tag\""),
            "{unknown:#}"
        );
    }
}
