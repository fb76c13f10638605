//! Durable guest results: a guest's result document is written to
//! `<state>/results/` and fsynced before the guest hears "stored", then
//! posted to the controller until it commits it - across controller outages
//! of any length and agent restarts (the next agent finds the files). The
//! controller deduplicates by the document's `run_id`, so a post repeated
//! after a lost answer stores nothing twice.
//!
//! The spool is bounded ([`SpoolSettings`]): when it is full the guest is
//! told so rather than told "stored".

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use measurelab_backoff::Backoff;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch, Notify};
use tonic::Code;
use uuid::Uuid;

use super::types::{ControlPlane, ReconcileError, SpoolSettings};

/// Why a result was not spooled.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The VM's share of the spool is used up.
    #[error("the node's result spool is full for this VM ({files} results, {bytes} bytes; limits {max_files} results, {max_bytes} bytes per VM); retry later")]
    VmShareFull {
        /// Results of the VM spooled.
        files: usize,
        /// Their bytes.
        bytes: u64,
        /// Limit.
        max_files: usize,
        /// Limit.
        max_bytes: u64,
    },
    /// The spool is at its limit.
    #[error("the node's result spool is full ({files} results, {bytes} bytes; limits {max_files} results, {max_bytes} bytes); retry later")]
    Full {
        /// Results spooled.
        files: usize,
        /// Their bytes.
        bytes: u64,
        /// Limit.
        max_files: usize,
        /// Limit.
        max_bytes: u64,
    },
    /// Writing, syncing or reading a spool file failed.
    #[error("result spool {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// One spooled result, as stored in its file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    vm_id: String,
    task_id: String,
    document_json: String,
}

#[derive(Default, Clone, Copy)]
struct Count {
    files: usize,
    bytes: u64,
}

impl Count {
    fn add(&mut self, bytes: u64) {
        self.files += 1;
        self.bytes += bytes;
    }
    fn sub(&mut self, bytes: u64) {
        self.files = self.files.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes);
    }
}

/// What the spool holds, in all and per VM.
#[derive(Default)]
struct Usage {
    total: Count,
    by_vm: std::collections::HashMap<String, Count>,
}

impl Usage {
    fn add(&mut self, vm: &str, bytes: u64) {
        self.total.add(bytes);
        self.by_vm.entry(vm.to_string()).or_default().add(bytes);
    }
    fn sub(&mut self, vm: &str, bytes: u64) {
        self.total.sub(bytes);
        if let Some(count) = self.by_vm.get_mut(vm) {
            count.sub(bytes);
            if count.files == 0 {
                self.by_vm.remove(vm);
            }
        }
    }
}

/// The VM a spool file belongs to: its name is `<ms>-<vm>-<uuid>.json`.
fn vm_of(path: &Path) -> String {
    path.file_stem()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('-').nth(1))
        .unwrap_or_default()
        .to_string()
}

/// What the controller made of a spooled result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Committed, under this result id.
    Committed(String),
    /// Refused for good, for this reason: posting it again cannot succeed.
    Rejected(String),
    /// The spooled copy could not be read back and was dropped; the
    /// producer may post it again.
    Lost(String),
}

/// The spool directory and what it holds. Cheap to share (`Arc`).
pub struct ResultSpool {
    dir: PathBuf,
    settings: SpoolSettings,
    usage: Mutex<Usage>,
    /// Wakes the poster when a result is spooled.
    spooled: Notify,
    /// Whoever waits to hear the controller's verdict on a spooled file.
    /// Nobody does for files of an earlier agent.
    verdicts: Mutex<std::collections::HashMap<PathBuf, oneshot::Sender<Verdict>>>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl ResultSpool {
    /// Opens (creating) the spool at `dir` and counts what a previous agent
    /// left there. Leftover temporary files of an interrupted write are
    /// removed: their guest was never told "stored".
    pub fn open(dir: &Path, settings: SpoolSettings) -> Result<ResultSpool, SpoolError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut usage = Usage::default();
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let path = entry.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("json") => {
                    usage.add(
                        &vm_of(&path),
                        entry.metadata().map(|m| m.len()).unwrap_or(0),
                    );
                }
                Some("tmp") => {
                    let _ = std::fs::remove_file(&path);
                }
                _ => {}
            }
        }
        if usage.total.files > 0 {
            tracing::info!(
                results = usage.total.files,
                bytes = usage.total.bytes,
                "result spool holds results of an earlier run; re-posting them"
            );
        }
        Ok(ResultSpool {
            dir: dir.to_path_buf(),
            settings,
            usage: Mutex::new(usage),
            spooled: Notify::new(),
            verdicts: Mutex::default(),
        })
    }

    /// Results spooled and not yet committed by the controller.
    pub fn len(&self) -> usize {
        self.lock().total.files
    }

    /// Whether nothing waits for the controller.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Usage> {
        self.usage.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes one result durably (file and directory fsynced). Blocking:
    /// call it from a blocking thread. The receiver hears the controller's
    /// verdict once the poster has one; it may never, while the controller
    /// is out of reach (the result stays spooled all the same).
    pub fn put(
        &self,
        vm_id: Uuid,
        task_id: &str,
        document_json: String,
    ) -> Result<oneshot::Receiver<Verdict>, SpoolError> {
        let body = serde_json::to_vec(&Entry {
            vm_id: vm_id.to_string(),
            task_id: task_id.to_string(),
            document_json,
        })
        .map_err(|e| SpoolError::Io {
            path: self.dir.clone(),
            source: std::io::Error::other(e),
        })?;
        let size = body.len() as u64;
        let vm = vm_id.simple().to_string();
        {
            // Reserve first, so concurrent puts cannot overshoot the cap.
            let mut usage = self.lock();
            let total = usage.total;
            if total.files + 1 > self.settings.max_files
                || total.bytes + size > self.settings.max_bytes
            {
                return Err(SpoolError::Full {
                    files: total.files,
                    bytes: total.bytes,
                    max_files: self.settings.max_files,
                    max_bytes: self.settings.max_bytes,
                });
            }
            let share = u64::from(self.settings.vm_share.max(1));
            let (max_files, max_bytes) = (
                (self.settings.max_files / share as usize).max(1),
                self.settings.max_bytes / share,
            );
            let mine = usage.by_vm.get(&vm).copied().unwrap_or_default();
            if mine.files + 1 > max_files || mine.bytes + size > max_bytes {
                return Err(SpoolError::VmShareFull {
                    files: mine.files,
                    bytes: mine.bytes,
                    max_files,
                    max_bytes,
                });
            }
            usage.add(&vm, size);
        }
        // Time first, so a directory listing sorts oldest first.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let name = format!("{now_ms:016}-{vm}-{}", Uuid::new_v4().simple());
        let done = self.dir.join(format!("{name}.json"));
        // Registered before the file exists, so a poster round that lists it
        // at once still finds whom to tell.
        let (verdict_tx, verdict_rx) = oneshot::channel();
        self.waiting().insert(done.clone(), verdict_tx);
        let written = self.write_durably(&name, &done, &body);
        if written.is_err() {
            self.lock().sub(&vm, size);
            self.waiting().remove(&done);
        }
        written?;
        self.spooled.notify_one();
        Ok(verdict_rx)
    }

    fn waiting(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<PathBuf, oneshot::Sender<Verdict>>>
    {
        self.verdicts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes a posted file and tells its waiter, if any, the verdict.
    fn settle(&self, path: &Path, verdict: Verdict) {
        self.remove(path);
        if let Some(waiter) = self.waiting().remove(path) {
            // The waiter may have stopped waiting; the verdict stands anyway.
            let _ = waiter.send(verdict);
        }
    }

    fn write_durably(&self, name: &str, done: &Path, body: &[u8]) -> Result<(), SpoolError> {
        use std::io::Write;
        let tmp = self.dir.join(format!("{name}.tmp"));
        let done = done.to_path_buf();
        let result = (|| {
            let mut file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
            file.write_all(body).map_err(io_err(&tmp))?;
            file.sync_all().map_err(io_err(&tmp))?;
            std::fs::rename(&tmp, &done).map_err(io_err(&done))?;
            // The rename is durable only once the directory is.
            std::fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(&self.dir))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    fn oldest_first(&self) -> Result<Vec<PathBuf>, SpoolError> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map_err(io_err(&self.dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("json"))
            .collect();
        files.sort();
        Ok(files)
    }

    fn remove(&self, path: &Path) {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        match std::fs::remove_file(path) {
            Ok(()) => self.lock().sub(&vm_of(path), size),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "cannot remove a posted result from the spool")
            }
        }
    }

    /// Posts spooled results, oldest first, until `shutdown`: each file is
    /// removed once the controller committed it (or refused it for good:
    /// an invalid document or a task that is not the VM's will never be
    /// accepted). While the controller is unreachable, retries with backoff
    /// and never gives up.
    pub async fn run(
        self: Arc<Self>,
        control: Arc<dyn ControlPlane>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut backoff = Backoff::new(self.settings.retry_initial, self.settings.retry_cap);
        loop {
            let wait = match self.post_all(control.as_ref()).await {
                Ok(()) => {
                    backoff.reset();
                    None
                }
                Err(()) => Some(backoff.next_delay()),
            };
            tokio::select! {
                _ = async {
                    match wait {
                        Some(delay) => tokio::time::sleep(delay).await,
                        None => self.spooled.notified().await,
                    }
                } => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// One round over the spool; `Err` when the controller could not be
    /// reached (the rest waits for the next round).
    async fn post_all(&self, control: &dyn ControlPlane) -> Result<(), ()> {
        let files = match self.oldest_first() {
            Ok(files) => files,
            Err(err) => {
                tracing::warn!(error = %err, "cannot list the result spool");
                return Err(());
            }
        };
        for path in files {
            let entry: Entry = match tokio::fs::read(&path)
                .await
                .map_err(|e| e.to_string())
                .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
            {
                Ok(entry) => entry,
                Err(err) => {
                    tracing::error!(path = %path.display(), error = %err, "dropping an unreadable spooled result");
                    self.settle(&path, Verdict::Lost(err));
                    continue;
                }
            };
            match control
                .post_result(&entry.vm_id, &entry.task_id, entry.document_json)
                .await
            {
                Ok(result_id) => {
                    tracing::info!(vm = %entry.vm_id, task = %entry.task_id, result = %result_id, "relayed guest result");
                    self.settle(&path, Verdict::Committed(result_id));
                }
                Err(ReconcileError::Controller { status, .. })
                    if refused_for_good(status.code()) =>
                {
                    tracing::warn!(vm = %entry.vm_id, task = %entry.task_id, error = %status.message(),
                        "the controller refused a guest result; dropped from the spool");
                    self.settle(&path, Verdict::Rejected(status.message().to_string()));
                }
                Err(err) => {
                    tracing::warn!(vm = %entry.vm_id, task = %entry.task_id, error = %err,
                        spooled = self.len(), "cannot relay guest result yet; it stays spooled");
                    return Err(());
                }
            }
        }
        Ok(())
    }
}

/// Codes after which a repeat cannot succeed: the document or its task is
/// wrong. Everything else (unreachable, unavailable, not registered, a
/// forgotten node about to register again) is worth another try.
fn refused_for_good(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::PermissionDenied
            | Code::OutOfRange
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One guest filling its share leaves room for the others, and a
    /// reopened spool (an agent restart) counts the shares again.
    #[test]
    fn each_vm_gets_a_share_and_reopening_counts_it() {
        let dir = tempfile::tempdir().unwrap();
        let settings = SpoolSettings {
            max_files: 8,
            vm_share: 4,
            ..SpoolSettings::default()
        };
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let spool = ResultSpool::open(dir.path(), settings.clone()).unwrap();
        spool.put(a, "t", "{}".into()).unwrap();
        spool.put(a, "t", "{}".into()).unwrap();
        assert!(matches!(
            spool.put(a, "t", "{}".into()),
            Err(SpoolError::VmShareFull { max_files: 2, .. })
        ));
        spool.put(b, "t", "{}".into()).unwrap();
        assert_eq!(spool.len(), 3);

        let again = ResultSpool::open(dir.path(), settings).unwrap();
        assert_eq!(again.len(), 3);
        assert!(matches!(
            again.put(a, "t", "{}".into()),
            Err(SpoolError::VmShareFull { .. })
        ));
        again.put(b, "t", "{}".into()).unwrap();
        let files = again.oldest_first().unwrap();
        assert_eq!(files.len(), 4);
        again.remove(&files[0]);
        assert_eq!(again.len(), 3);
    }
}
