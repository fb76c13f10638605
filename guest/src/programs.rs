//! Distributed programs: write the content under
//! `<programs_dir>/<deployment_id>/<program_name>`, verify its SHA-256, make
//! it executable, run it in its own process group, keep bounded tails of its
//! output, report `program_status` on start, on output changes and on exit.
//!
//! The table of runs is the truth: after a reconnect every known run is
//! reported again, and a repeated `run` for a known deployment only re-reports
//! it, so the node agent can resend `run` level-triggered.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use measurelab_api::guest::{
    check_path_component, GuestMessage, ProgramRunState, OUTPUT_TAIL_BYTES,
};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::link::Link;

/// Grace period between SIGTERM and SIGKILL on `stop`.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// A `run` message, unpacked.
pub(crate) struct RunRequest {
    pub deployment_id: String,
    pub program_name: String,
    pub sha256: String,
    pub content_base64: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
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
}

type Run = Arc<Mutex<RunInner>>;

/// The guest's distributed programs.
pub(crate) struct Programs {
    dir: PathBuf,
    link: Arc<Link>,
    vm_id: String,
    platform_api: String,
    // std Mutex: held only for table lookups, never across an await.
    runs: Mutex<HashMap<String, Run>>,
}

impl Programs {
    pub(crate) fn new(dir: PathBuf, link: Arc<Link>, vm_id: String, platform_api: String) -> Self {
        Programs {
            dir,
            link,
            vm_id,
            platform_api,
            runs: Mutex::new(HashMap::new()),
        }
    }

    /// Starts the program in the background; status goes over the channel.
    pub(crate) fn run(self: &Arc<Self>, request: RunRequest) {
        let run = {
            let Ok(mut runs) = self.runs.lock() else {
                return;
            };
            if let Some(existing) = runs.get(&request.deployment_id) {
                tracing::info!(deployment_id = %request.deployment_id, "run repeated; reporting its status");
                self.report(&request.deployment_id, existing);
                return;
            }
            let run: Run = Arc::new(Mutex::new(RunInner {
                status: None,
                exit_code: None,
                failure: None,
                stdout: Tail::default(),
                stderr: Tail::default(),
                pgid: None,
                version: 0,
                reported: 0,
            }));
            runs.insert(request.deployment_id.clone(), run.clone());
            run
        };
        let programs = self.clone();
        tokio::spawn(async move {
            let deployment_id = request.deployment_id.clone();
            if let Err(err) = programs.start(request, &run).await {
                tracing::warn!(%deployment_id, error = %err, "program failed to start");
                if let Ok(mut inner) = run.lock() {
                    inner.status = Some(ProgramRunState::Failed);
                    inner.failure = Some(format!("measurelab-guest-agent: {err}"));
                    inner.version += 1;
                }
                programs.report(&deployment_id, &run);
            }
        });
    }

    async fn start(self: &Arc<Self>, request: RunRequest, run: &Run) -> Result<(), ProgramError> {
        check_path_component("deployment_id", &request.deployment_id)
            .map_err(ProgramError::Invalid)?;
        check_path_component("program_name", &request.program_name)
            .map_err(ProgramError::Invalid)?;
        let expected = request.sha256.to_ascii_lowercase();
        if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ProgramError::Invalid(format!(
                "sha256: {:?} is not 64 hex digits",
                request.sha256
            )));
        }
        let content = base64::engine::general_purpose::STANDARD
            .decode(request.content_base64.trim())
            .map_err(|e| ProgramError::Invalid(format!("content_base64: {e}")))?;
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
        let pgid = run.lock().ok().and_then(|inner| inner.pgid);
        let Some(pgid) = pgid else {
            self.report(deployment_id, &run);
            return;
        };
        tracing::info!(%deployment_id, pgid, "stopping program");
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGTERM);
        tokio::spawn(async move {
            tokio::time::sleep(STOP_GRACE).await;
            let still_running = run.lock().ok().and_then(|inner| inner.pgid) == Some(pgid);
            if still_running {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
        });
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
