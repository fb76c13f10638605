//! Appliance files the controller stores (`DesiredAppliance.*_sha256`):
//! fetched with `FetchAppliance`, verified against their SHA-256 and cached
//! under `<appliance_dir>/sha256/<digest>` before any VM of the appliance is
//! defined. The desired VM's path is then pointed at the cached copy, so the
//! rest of the loop (and the libvirt backend's appliance-directory check)
//! sees an ordinary node-local appliance.
//!
//! A file whose content does not match its digest is discarded, never
//! renamed into the cache, and every VM that needs it is held back with a
//! `Ready=False` condition naming the file and both digests. The refusal is
//! retried after [`REFETCH_AFTER`], since the operator may repair the
//! controller's copy. A cached file was verified when it was written and is
//! read-only, so it is not hashed again on every pass.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use measurelab_api::node_v1::{DesiredAppliance, DesiredState};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use uuid::Uuid;

use super::plan::{Failure, Job};
use super::types::{ControlPlane, ReconcileError};
use crate::hypervisor::ErrorClass;

/// How long a refused or unfetchable file is not asked for again.
const REFETCH_AFTER: Duration = Duration::from_secs(30);

/// Why an appliance file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ApplianceError {
    /// What arrived is not what the digest promised.
    #[error("{file} of appliance {appliance}: the controller sent content with SHA-256 {actual}, expected {expected}; the file was discarded")]
    Checksum {
        /// Appliance name.
        appliance: String,
        /// `kernel`, `initrd` or `disk`.
        file: &'static str,
        /// The digest in the desired state.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// The digest in the desired state cannot name a file.
    #[error(
        "{file} of appliance {appliance}: {digest:?} is not a SHA-256 (64 lowercase hex digits)"
    )]
    BadDigest {
        /// Appliance name.
        appliance: String,
        /// `kernel`, `initrd` or `disk`.
        file: &'static str,
        /// What the controller sent.
        digest: String,
    },
    /// The controller did not deliver the file.
    #[error("{file} of appliance {appliance}: cannot fetch {digest}: {source}")]
    Fetch {
        /// Appliance name.
        appliance: String,
        /// `kernel`, `initrd` or `disk`.
        file: &'static str,
        /// Its digest.
        digest: String,
        /// The controller's error.
        #[source]
        source: ReconcileError,
    },
    /// The cache cannot be written.
    #[error("appliance cache {path}: {source}")]
    Cache {
        /// File or directory.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The agent was started without an appliance directory.
    #[error("{file} of appliance {appliance} is stored by the controller, but this agent has no appliance directory to cache it in")]
    NoCache {
        /// Appliance name.
        appliance: String,
        /// `kernel`, `initrd` or `disk`.
        file: &'static str,
    },
}

impl ApplianceError {
    /// CamelCase reason of the VM's `Ready=False` condition.
    fn reason(&self) -> &'static str {
        match self {
            ApplianceError::Checksum { .. } => "ApplianceChecksumMismatch",
            ApplianceError::BadDigest { .. } | ApplianceError::NoCache { .. } => "ApplianceRefused",
            ApplianceError::Fetch { .. } | ApplianceError::Cache { .. } => "ApplianceUnavailable",
        }
    }
}

/// A file that could not be used, and when to try it again.
struct Refusal {
    failure: Failure,
    until: Instant,
}

/// The node's verified copies of stored appliance files.
pub(crate) struct ApplianceCache {
    /// `<appliance_dir>/sha256`; `None`: stored files cannot be used here.
    dir: Option<PathBuf>,
    refused: HashMap<String, Refusal>,
    /// The VMs held back by the last [`Self::prepare`], with why.
    held: HashMap<Uuid, Failure>,
}

fn is_digest(value: &str) -> bool {
    value.len() == 64
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl ApplianceCache {
    pub fn new(appliance_dir: Option<&Path>) -> Self {
        ApplianceCache {
            dir: appliance_dir.map(|dir| dir.join("sha256")),
            refused: HashMap::new(),
            held: HashMap::new(),
        }
    }

    /// Makes sure every stored file the desired VMs use is cached, and
    /// points their appliance paths at the cached copies. VMs with a file
    /// that is not (yet) usable are remembered for [`Self::hold_back`].
    pub async fn prepare(&mut self, desired: &mut DesiredState, control: &dyn ControlPlane) {
        self.held.clear();
        for vm in desired.vms.iter_mut().filter(|vm| !vm.deleting) {
            let (Ok(id), Some(appliance)) = (Uuid::parse_str(&vm.id), vm.appliance.as_mut()) else {
                continue;
            };
            if let Err(failure) = self.localize(appliance, control).await {
                self.held.insert(id, failure);
            }
        }
    }

    /// Replaces the hypervisor jobs of held-back VMs by their failure, so
    /// no VM is defined on an appliance file that is missing or refused.
    /// Transient: the VM is retried with backoff, and converges once the
    /// file arrives.
    pub fn hold_back(&self, jobs: &mut [Job]) {
        for job in jobs.iter_mut() {
            if let Job::Converge { spec, .. } = job {
                if let Some(failure) = self.held.get(&spec.id) {
                    *job = Job::Fail {
                        vm: spec.id,
                        failure: failure.clone(),
                        class: ErrorClass::Transient,
                    };
                }
            }
        }
    }

    async fn localize(
        &mut self,
        appliance: &mut DesiredAppliance,
        control: &dyn ControlPlane,
    ) -> Result<(), Failure> {
        let name = appliance.name.clone();
        for (file, digest, path) in [
            ("kernel", &appliance.kernel_sha256, &mut appliance.kernel),
            ("initrd", &appliance.initrd_sha256, &mut appliance.initrd),
            ("disk", &appliance.disk_sha256, &mut appliance.disk),
        ] {
            if digest.is_empty() {
                continue;
            }
            let cached = self.ensure(&name, file, digest, control).await?;
            *path = cached.display().to_string();
        }
        Ok(())
    }

    /// The cached copy of `digest`, fetched and verified if it is not there.
    async fn ensure(
        &mut self,
        appliance: &str,
        file: &'static str,
        digest: &str,
        control: &dyn ControlPlane,
    ) -> Result<PathBuf, Failure> {
        let refuse = |err: ApplianceError| Failure::ready(err.reason(), err.to_string());
        let Some(dir) = self.dir.clone() else {
            return Err(refuse(ApplianceError::NoCache {
                appliance: appliance.into(),
                file,
            }));
        };
        if !is_digest(digest) {
            return Err(refuse(ApplianceError::BadDigest {
                appliance: appliance.into(),
                file,
                digest: digest.into(),
            }));
        }
        let target = dir.join(digest);
        if tokio::fs::try_exists(&target).await.unwrap_or(false) {
            return Ok(target);
        }
        if let Some(refusal) = self.refused.get(digest) {
            if refusal.until > Instant::now() {
                return Err(refusal.failure.clone());
            }
        }
        match fetch_verified(&dir, &target, appliance, file, digest, control).await {
            Ok(()) => {
                self.refused.remove(digest);
                tracing::info!(
                    appliance,
                    file,
                    sha256 = digest,
                    "appliance file fetched and verified"
                );
                Ok(target)
            }
            Err(err) => {
                tracing::warn!(error = %err, "appliance file refused");
                let failure = refuse(err);
                self.refused.insert(
                    digest.to_string(),
                    Refusal {
                        failure: failure.clone(),
                        until: Instant::now() + REFETCH_AFTER,
                    },
                );
                Err(failure)
            }
        }
    }
}

/// Streams file `digest` from the controller into a temporary file while
/// hashing it; renames it to `target` (read-only) only if the digest
/// matches. Nothing of a failed fetch is kept.
async fn fetch_verified(
    dir: &Path,
    target: &Path,
    appliance: &str,
    file: &'static str,
    digest: &str,
    control: &dyn ControlPlane,
) -> Result<(), ApplianceError> {
    let cache = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ApplianceError::Cache { path, source }
    };
    let fetch = |source| ApplianceError::Fetch {
        appliance: appliance.into(),
        file,
        digest: digest.into(),
        source,
    };
    tokio::fs::create_dir_all(dir).await.map_err(cache(dir))?;
    let partial = dir.join(format!(".partial-{}", Uuid::new_v4().simple()));
    let written = async {
        let mut chunks = control.fetch_appliance(digest).await.map_err(fetch)?;
        let mut out = tokio::fs::File::create(&partial)
            .await
            .map_err(cache(&partial))?;
        let mut hasher = Sha256::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(fetch)?;
            hasher.update(&chunk);
            out.write_all(&chunk).await.map_err(cache(&partial))?;
        }
        let actual = hex::encode(hasher.finalize());
        if actual != digest {
            return Err(ApplianceError::Checksum {
                appliance: appliance.into(),
                file,
                expected: digest.into(),
                actual,
            });
        }
        out.sync_all().await.map_err(cache(&partial))?;
        // Shared by every VM of the appliance: nobody writes to it.
        tokio::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o444))
            .await
            .map_err(cache(&partial))
    }
    .await;
    if let Err(err) = written {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(err);
    }
    tokio::fs::rename(&partial, target)
        .await
        .map_err(cache(target))
}
