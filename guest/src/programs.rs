//! Distributed programs: write the content under
//! `<programs_dir>/<deployment_id>/<program_name>`, verify its SHA-256, make
//! it executable, run it in its own process group, keep bounded tails of its
//! output, report `program_status` on start, on output changes and on exit.
//!
//! Programs arrive whole in one `run` (older node agents) or in chunks
//! (`program_begin`, `program_chunk`s): a chunked transfer is assembled in
//! memory, bounded by `size` ≤ [`MAX_PROGRAM_BYTES`], and only a whole whose
//! SHA-256 matches is written and run. One that does not add up is reported
//! as `program_transfer_failed` and forgotten, so the node agent sends it
//! again; a transfer that stops making progress for [`TRANSFER_STALL`] is
//! failed the same way, so a lost last chunk is not a hang.
//!
//! The table of runs is the truth: after a reconnect every known run is
//! reported again, and a repeated `run` for a known deployment only re-reports
//! it, so the node agent can resend `run` level-triggered. A `run` (or
//! `program_begin`) of a known deployment whose program, args or env differ
//! replaces it: the old process is stopped as by `stop`, and the new one starts
//! once the old one has exited. That is how a changed environment (a platform's
//! rotated control key) reaches a program that is already running.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use measurelab_api::guest::{
    check_path_component, GuestMessage, ProgramRunState, MAX_PROGRAM_BYTES, OUTPUT_TAIL_BYTES,
    PROGRAM_CHUNK_BYTES,
};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::link::Link;

/// Grace period between SIGTERM and SIGKILL on `stop`.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// A chunked transfer without a new chunk for this long is failed.
pub(crate) const TRANSFER_STALL: Duration = Duration::from_secs(60);

/// A program to run, unpacked from `run` or assembled from chunks.
pub(crate) struct RunRequest {
    pub deployment_id: String,
    pub program_name: String,
    pub sha256: String,
    pub content: Content,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// The program bytes as they arrived.
pub(crate) enum Content {
    /// A whole `run` message's `content_base64`, decoded when it starts.
    Base64(String),
    /// A chunked transfer, already complete and checked against `sha256`.
    Bytes(Vec<u8>),
}

/// A `program_begin`, unpacked.
pub(crate) struct BeginRequest {
    pub deployment_id: String,
    pub program_name: String,
    pub sha256: String,
    pub size: u64,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// A chunked transfer under way.
struct Transfer {
    begin: BeginRequest,
    size: usize,
    data: Vec<u8>,
    hasher: Sha256,
    last_progress: Instant,
}

/// Why a program could not be started (reported as `failed`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProgramError {
    #[error("invalid run request: {0}")]
    Invalid(String),
    #[error("sha256 mismatch: expected {expected}, content has {actual}")]
    Checksum { expected: String, actual: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot start {path}: {source}")]
    Spawn {
        path: String,
        source: std::io::Error,
    },
}

/// Last bytes of a stream.
#[derive(Debug, Default)]
struct Tail {
    bytes: Vec<u8>,
}

impl Tail {
    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
        if self.bytes.len() > OUTPUT_TAIL_BYTES {
            let cut = self.bytes.len() - OUTPUT_TAIL_BYTES;
            self.bytes.drain(..cut);
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

#[derive(Debug)]
struct RunInner {
    /// `None` until the program started or failed.
    status: Option<ProgramRunState>,
    exit_code: Option<i32>,
    failure: Option<String>,
    stdout: Tail,
    stderr: Tail,
    pgid: Option<i32>,
    /// Bumped on every change; `reported` is the version last sent.
    version: u64,
    reported: u64,
    /// What was asked to run ([`fingerprint`]): a request with another one replaces it.
    fingerprint: String,
    /// Where the process is, for a replacement that must wait for it.
    phase: tokio::sync::watch::Sender<Phase>,
}

/// A run's process: being started, running, or gone (exited or never started).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting,
    Running,
    Ended,
}

impl RunInner {
    fn new(fingerprint: String, status: Option<ProgramRunState>) -> Self {
        RunInner {
            status,
            exit_code: None,
            failure: None,
            stdout: Tail::default(),
            stderr: Tail::default(),
            pgid: None,
            version: 0,
            reported: 0,
            fingerprint,
            phase: tokio::sync::watch::Sender::new(if status.is_some() {
                Phase::Ended
            } else {
                Phase::Starting
            }),
        }
    }
}

/// What identifies one request to run: the program, its args and its env.
fn fingerprint(
    program_name: &str,
    sha256: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
) -> String {
    // JSON of a tuple with a BTreeMap: unambiguous and in a stable order.
    let text = serde_json::to_string(&(program_name, sha256.to_ascii_lowercase(), args, env))
        .unwrap_or_default();
    hex::encode(Sha256::digest(text.as_bytes()))
}

type Run = Arc<Mutex<RunInner>>;

/// The guest's distributed programs.
pub(crate) struct Programs {
    dir: PathBuf,
    link: Arc<Link>,
    vm_id: String,
    platform_api: String,
    // std Mutexes: held only for table lookups, never across an await.
    runs: Mutex<HashMap<String, Run>>,
    transfers: Mutex<HashMap<String, Transfer>>,
}

impl Programs {
    pub(crate) fn new(dir: PathBuf, link: Arc<Link>, vm_id: String, platform_api: String) -> Self {
        Programs {
            dir,
            link,
            vm_id,
            platform_api,
            runs: Mutex::new(HashMap::new()),
            transfers: Mutex::new(HashMap::new()),
        }
    }

    /// Starts a chunked transfer (see the module docs). Metadata that can
    /// never work (bad names, digest or size) fails the run for good, as a
    /// bad `run` does; a known deployment only re-reports its status.
    pub(crate) fn begin(self: &Arc<Self>, begin: BeginRequest) {
        let wanted = fingerprint(&begin.program_name, &begin.sha256, &begin.args, &begin.env);
        let known = self
            .runs
            .lock()
            .ok()
            .and_then(|runs| runs.get(&begin.deployment_id).cloned())
            .filter(|run| same_request(run, &wanted));
        if let Ok(mut transfers) = self.transfers.lock() {
            transfers.remove(&begin.deployment_id);
        }
        if let Some(existing) = known {
            tracing::info!(deployment_id = %begin.deployment_id, "program_begin repeated; reporting its status");
            self.report(&begin.deployment_id, &existing);
            return;
        }
        let size = match usize::try_from(begin.size) {
            Ok(size) if begin.size <= MAX_PROGRAM_BYTES => size,
            _ => {
                let err = ProgramError::Invalid(format!(
                    "size: {} bytes is more than the {MAX_PROGRAM_BYTES} a guest accepts",
                    begin.size
                ));
                self.fail_run(&begin.deployment_id, &err);
                return;
            }
        };
        if let Err(err) = check_request(&begin.deployment_id, &begin.program_name, &begin.sha256) {
            self.fail_run(&begin.deployment_id, &err);
            return;
        }
        tracing::info!(deployment_id = %begin.deployment_id, size, "program transfer started");
        let deployment_id = begin.deployment_id.clone();
        let transfer = Transfer {
            begin,
            size,
            // Grown as chunks arrive: the agent's word for the size is not
            // a reason to allocate it up front.
            data: Vec::new(),
            hasher: Sha256::new(),
            last_progress: Instant::now(),
        };
        if size == 0 {
            self.finish(transfer);
        } else if let Ok(mut transfers) = self.transfers.lock() {
            transfers.insert(deployment_id, transfer);
        }
    }

    /// One piece of a transfer; the last one completes it.
    pub(crate) fn chunk(self: &Arc<Self>, deployment_id: &str, offset: u64, data_base64: &str) {
        let Ok(mut transfers) = self.transfers.lock() else {
            return;
        };
        let Some(transfer) = transfers.get_mut(deployment_id) else {
            // Chunks of a known deployment's repeated begin, or of a
            // transfer that already failed: the begin said what to do.
            tracing::debug!(%deployment_id, offset, "chunk without a transfer ignored");
            return;
        };
        let received = transfer.data.len();
        let problem = if offset != received as u64 {
            Some(format!("chunk at offset {offset}, expected {received}"))
        } else {
            match base64::engine::general_purpose::STANDARD.decode(data_base64.trim()) {
                Err(err) => Some(format!("chunk at offset {offset}: data_base64: {err}")),
                Ok(bytes) if bytes.len() > PROGRAM_CHUNK_BYTES => Some(format!(
                    "chunk at offset {offset} has {} bytes, more than {PROGRAM_CHUNK_BYTES}",
                    bytes.len()
                )),
                Ok(bytes) if received + bytes.len() > transfer.size => Some(format!(
                    "chunk at offset {offset} ends at {}, past the size {}",
                    received + bytes.len(),
                    transfer.size
                )),
                Ok(bytes) => {
                    transfer.hasher.update(&bytes);
                    transfer.data.extend_from_slice(&bytes);
                    transfer.last_progress = Instant::now();
                    None
                }
            }
        };
        if let Some(reason) = problem {
            transfers.remove(deployment_id);
            drop(transfers);
            self.transfer_failed(deployment_id, reason);
            return;
        }
        if transfer.data.len() == transfer.size {
            if let Some(done) = transfers.remove(deployment_id) {
                drop(transfers);
                self.finish(done);
            }
        }
    }

    /// Fails transfers that made no progress for [`TRANSFER_STALL`].
    pub(crate) fn expire_transfers(&self) {
        let stalled: Vec<(String, usize, usize)> = match self.transfers.lock() {
            Ok(mut transfers) => {
                let ids: Vec<String> = transfers
                    .iter()
                    .filter(|(_, t)| t.last_progress.elapsed() >= TRANSFER_STALL)
                    .map(|(id, _)| id.clone())
                    .collect();
                ids.into_iter()
                    .filter_map(|id| transfers.remove(&id))
                    .map(|t| (t.begin.deployment_id, t.data.len(), t.size))
                    .collect()
            }
            Err(_) => return,
        };
        for (id, received, size) in stalled {
            self.transfer_failed(
                &id,
                format!(
                    "stalled: no chunk for {} s after {received} of {size} bytes",
                    TRANSFER_STALL.as_secs()
                ),
            );
        }
    }

    /// Checks a complete transfer's digest; runs it only if it matches.
    fn finish(self: &Arc<Self>, transfer: Transfer) {
        let actual = hex::encode(transfer.hasher.finalize());
        let begin = transfer.begin;
        if actual != begin.sha256.to_ascii_lowercase() {
            self.transfer_failed(
                &begin.deployment_id,
                format!(
                    "sha256 mismatch: expected {}, the {} bytes received have {actual}",
                    begin.sha256, transfer.size
                ),
            );
            return;
        }
        self.run(RunRequest {
            deployment_id: begin.deployment_id,
            program_name: begin.program_name,
            sha256: begin.sha256,
            content: Content::Bytes(transfer.data),
            args: begin.args,
            env: begin.env,
        });
    }

    fn transfer_failed(&self, deployment_id: &str, reason: String) {
        tracing::warn!(%deployment_id, %reason, "program transfer failed; nothing run");
        self.link.send(&GuestMessage::ProgramTransferFailed {
            deployment_id: deployment_id.to_string(),
            reason,
        });
    }

    /// Records a run that cannot start, and reports it.
    fn fail_run(&self, deployment_id: &str, err: &ProgramError) {
        tracing::warn!(%deployment_id, error = %err, "program failed to start");
        let mut inner = RunInner::new(String::new(), Some(ProgramRunState::Failed));
        inner.failure = Some(format!("measurelab-guest-agent: {err}"));
        inner.version = 1;
        let run: Run = Arc::new(Mutex::new(inner));
        if let Ok(mut runs) = self.runs.lock() {
            runs.insert(deployment_id.to_string(), run.clone());
        }
        self.report(deployment_id, &run);
    }

    /// Starts the program in the background; status goes over the channel.
    pub(crate) fn run(self: &Arc<Self>, request: RunRequest) {
        let wanted = fingerprint(
            &request.program_name,
            &request.sha256,
            &request.args,
            &request.env,
        );
        let (run, replaced) = {
            let Ok(mut runs) = self.runs.lock() else {
                return;
            };
            let replaced = match runs.get(&request.deployment_id) {
                Some(existing) if same_request(existing, &wanted) => {
                    tracing::info!(deployment_id = %request.deployment_id, "run repeated; reporting its status");
                    self.report(&request.deployment_id, existing);
                    return;
                }
                Some(existing) => {
                    tracing::info!(deployment_id = %request.deployment_id, "run changed (program, args or env); restarting it");
                    Some(existing.clone())
                }
                None => None,
            };
            let run: Run = Arc::new(Mutex::new(RunInner::new(wanted, None)));
            runs.insert(request.deployment_id.clone(), run.clone());
            (run, replaced)
        };
        let programs = self.clone();
        tokio::spawn(async move {
            let deployment_id = request.deployment_id.clone();
            if let Some(old) = replaced {
                // The old process still owns the work directory and the
                // program file: the new one starts only after it is gone.
                // A process still being spawned is waited for first, so it
                // is stopped rather than left running beside the new one.
                if let Some(mut phase) = old.lock().ok().map(|inner| inner.phase.subscribe()) {
                    let _ = phase.wait_for(|phase| *phase != Phase::Starting).await;
                    terminate(&old);
                    let _ = phase.wait_for(|phase| *phase == Phase::Ended).await;
                }
            }
            if let Err(err) = programs.start(request, &run).await {
                tracing::warn!(%deployment_id, error = %err, "program failed to start");
                if let Ok(mut inner) = run.lock() {
                    inner.status = Some(ProgramRunState::Failed);
                    inner.failure = Some(format!("measurelab-guest-agent: {err}"));
                    inner.version += 1;
                    inner.phase.send_replace(Phase::Ended);
                }
                programs.report(&deployment_id, &run);
            }
        });
    }

    async fn start(self: &Arc<Self>, request: RunRequest, run: &Run) -> Result<(), ProgramError> {
        check_request(
            &request.deployment_id,
            &request.program_name,
            &request.sha256,
        )?;
        let expected = request.sha256.to_ascii_lowercase();
        let content = match request.content {
            Content::Base64(text) => base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|e| ProgramError::Invalid(format!("content_base64: {e}")))?,
            Content::Bytes(bytes) => bytes,
        };
        let actual = hex::encode(Sha256::digest(&content));
        if actual != expected {
            return Err(ProgramError::Checksum { expected, actual });
        }
        let workdir = self.dir.join(&request.deployment_id);
        let path = workdir.join(&request.program_name);
        write_executable(&workdir, &path, &content).map_err(|source| ProgramError::Write {
            path: path.display().to_string(),
            source,
        })?;

        let mut command = tokio::process::Command::new(&path);
        command
            .args(&request.args)
            .envs(&request.env)
            .env("MEASURELAB_PLATFORM_API", &self.platform_api)
            .env("MEASURELAB_VM_ID", &self.vm_id)
            .env("MEASURELAB_DEPLOYMENT_ID", &request.deployment_id)
            .current_dir(&workdir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Own process group: `stop` kills the program and its children.
            .process_group(0);
        let mut child = spawn_retrying(&mut command).map_err(|source| ProgramError::Spawn {
            path: path.display().to_string(),
            source,
        })?;
        let pid = child.id().and_then(|p| i32::try_from(p).ok());
        tracing::info!(deployment_id = %request.deployment_id, program = %path.display(), pid, "program started");
        if let Ok(mut inner) = run.lock() {
            inner.status = Some(ProgramRunState::Running);
            inner.pgid = pid;
            inner.version += 1;
            inner.phase.send_replace(Phase::Running);
        }
        self.report(&request.deployment_id, run);

        let stdout = child
            .stdout
            .take()
            .map(|s| tokio::spawn(pump(s, run.clone(), false)));
        let stderr = child
            .stderr
            .take()
            .map(|s| tokio::spawn(pump(s, run.clone(), true)));
        let status = child.wait().await;
        // A background child of the program may hold the pipes open; do not
        // wait for it longer than a moment.
        for pump in [stdout, stderr].into_iter().flatten() {
            let _ = tokio::time::timeout(Duration::from_secs(1), pump).await;
        }
        if let Ok(mut inner) = run.lock() {
            inner.status = Some(ProgramRunState::Exited);
            inner.pgid = None;
            match status {
                Ok(status) => {
                    inner.exit_code = status.code();
                    if let Some(signal) = std::os::unix::process::ExitStatusExt::signal(&status) {
                        inner.stderr.push(
                            format!("\n[measurelab-guest-agent: terminated by signal {signal}]\n")
                                .as_bytes(),
                        );
                    }
                }
                Err(err) => {
                    inner.stderr.push(
                        format!("\n[measurelab-guest-agent: wait failed: {err}]\n").as_bytes(),
                    );
                }
            }
            inner.version += 1;
            inner.phase.send_replace(Phase::Ended);
            tracing::info!(deployment_id = %request.deployment_id, exit_code = ?inner.exit_code, "program exited");
        }
        self.report(&request.deployment_id, run);
        Ok(())
    }

    /// Stops a running program: SIGTERM to its group, SIGKILL after a grace
    /// period. Its exit is reported by the run's own task.
    pub(crate) fn stop(&self, deployment_id: &str) {
        let Some(run) = self
            .runs
            .lock()
            .ok()
            .and_then(|r| r.get(deployment_id).cloned())
        else {
            tracing::warn!(%deployment_id, "stop for an unknown deployment ignored");
            return;
        };
        if !terminate(&run) {
            self.report(deployment_id, &run);
            return;
        }
        tracing::info!(%deployment_id, "stopping program");
    }

    /// Reports every run that has a status (after a reconnect or hello_request).
    pub(crate) fn report_all(&self) {
        for (id, run) in self.snapshot() {
            self.report(&id, &run);
        }
    }

    /// Reports runs whose status or output changed since the last report.
    pub(crate) fn report_changed(&self) {
        for (id, run) in self.snapshot() {
            let changed = run
                .lock()
                .map(|inner| inner.version != inner.reported)
                .unwrap_or(false);
            if changed {
                self.report(&id, &run);
            }
        }
    }

    fn snapshot(&self) -> Vec<(String, Run)> {
        self.runs
            .lock()
            .map(|runs| runs.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    fn report(&self, deployment_id: &str, run: &Run) {
        let Ok(mut inner) = run.lock() else {
            return;
        };
        let Some(status) = inner.status else {
            return;
        };
        let message = GuestMessage::ProgramStatus {
            deployment_id: deployment_id.to_string(),
            status,
            exit_code: inner.exit_code,
            stdout_tail: inner.stdout.text(),
            stderr_tail: match &inner.failure {
                Some(reason) => reason.clone(),
                None => inner.stderr.text(),
            },
        };
        if self.link.send(&message) {
            inner.reported = inner.version;
        }
    }
}

/// Whether `run` was asked for with the request of fingerprint `wanted`.
fn same_request(run: &Run, wanted: &str) -> bool {
    run.lock()
        .map(|inner| inner.fingerprint == wanted)
        .unwrap_or(false)
}

/// SIGTERM to the run's process group, SIGKILL after [`STOP_GRACE`] if it is
/// still there. Returns whether there was a process to stop.
fn terminate(run: &Run) -> bool {
    let Some(pgid) = run.lock().ok().and_then(|inner| inner.pgid) else {
        return false;
    };
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGTERM);
    let run = run.clone();
    tokio::spawn(async move {
        tokio::time::sleep(STOP_GRACE).await;
        let still_running = run.lock().ok().and_then(|inner| inner.pgid) == Some(pgid);
        if still_running {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    });
    true
}

/// The names and digest of a run request are usable.
fn check_request(
    deployment_id: &str,
    program_name: &str,
    sha256: &str,
) -> Result<(), ProgramError> {
    check_path_component("deployment_id", deployment_id).map_err(ProgramError::Invalid)?;
    check_path_component("program_name", program_name).map_err(ProgramError::Invalid)?;
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ProgramError::Invalid(format!(
            "sha256: {sha256:?} is not 64 hex digits"
        )));
    }
    Ok(())
}

async fn pump(mut stream: impl AsyncRead + Unpin, run: Run, is_stderr: bool) {
    let mut buf = vec![0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Ok(mut inner) = run.lock() {
                    if is_stderr {
                        inner.stderr.push(&buf[..n]);
                    } else {
                        inner.stdout.push(&buf[..n]);
                    }
                    inner.version += 1;
                }
            }
        }
    }
}

fn write_executable(dir: &Path, path: &Path, content: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o755)
        .open(path)?;
    file.write_all(content)?;
    file.sync_all()?;
    drop(file);
    // `mode` applies only to a new file.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

/// Another thread's fork can briefly inherit our write fd of the program
/// file (until its exec closes it), so exec may see ETXTBSY: retry a little.
fn spawn_retrying(command: &mut tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    let mut attempts = 0;
    loop {
        match command.spawn() {
            Err(err) if err.raw_os_error() == Some(libc::ETXTBSY) && attempts < 50 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut tail = Tail::default();
        tail.push(&vec![b'a'; OUTPUT_TAIL_BYTES]);
        tail.push(b"xyz");
        assert_eq!(tail.bytes.len(), OUTPUT_TAIL_BYTES);
        assert!(tail.text().ends_with("axyz"));
    }
}
