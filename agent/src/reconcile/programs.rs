//! Program distribution: fetch each ProgramRun's program once (cached by
//! sha256 in `<state>/programs/`), send it to the guest as `run`, and relay
//! the guest's `program_status` back.
//!
//! A `run` is sent again whenever the guest reconnects (its connection count
//! moved): the guest agent treats a repeated `run` of a known deployment as
//! "report your status", so this is safe and covers guest agent restarts.
//! It is also sent again when the desired run changed (program, args or env,
//! e.g. a platform's rotated control key): a guest agent since 0.2 restarts
//! a run whose request changed; a 0.1.0 one only re-reports it, and the
//! program keeps the environment it started with.
//!
//! A chunked transfer the guest reports as `program_transfer_failed` (the
//! bytes did not add up to the SHA-256; nothing ran) is sent again on the
//! next pass, up to [`MAX_TRANSFER_ATTEMPTS`] times per run; then the run
//! is reported `failed` with the guest's reason.

use std::collections::HashMap;
use std::path::PathBuf;

use std::sync::Arc;

use measurelab_api::guest::{AgentMessage, ProgramRunState};
use measurelab_api::node_v1::{ProgramRun, ProgramRunStatus};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::types::{ControlPlane, ReconcileError};
use crate::guest_channel::{GuestChannels, ProgramSend};

type RunKey = (String, Uuid);

/// What identifies what a run asks the guest to do: the program, its args and
/// its env (JSON of a sorted env, so the same run always gives the same text).
fn request_of(run: &ProgramRun) -> String {
    let env: std::collections::BTreeMap<_, _> = run.env.iter().collect();
    serde_json::to_string(&(&run.program_id, &run.sha256, &run.args, env)).unwrap_or_default()
}

/// Transfers of one run that may fail before the run is reported failed.
pub(crate) const MAX_TRANSFER_ATTEMPTS: u32 = 3;

pub(crate) struct Programs {
    cache_dir: PathBuf,
    /// Runs sent to a guest: the guest's connection count at the time and
    /// what was sent ([`request_of`]).
    sent: HashMap<RunKey, (u64, String)>,
    latest: HashMap<RunKey, ProgramRunStatus>,
    reported: HashMap<RunKey, ProgramRunStatus>,
    /// Transfers of a run the guest reported failed so far.
    failed_transfers: HashMap<RunKey, u32>,
}

impl Programs {
    pub(crate) fn new(state_dir: &std::path::Path) -> Self {
        Programs {
            cache_dir: state_dir.join("programs"),
            sent: HashMap::new(),
            latest: HashMap::new(),
            reported: HashMap::new(),
            failed_transfers: HashMap::new(),
        }
    }

    /// Content of `run`'s program: from the cache, or fetched and cached.
    async fn content(
        &self,
        run: &ProgramRun,
        control: &dyn ControlPlane,
    ) -> Result<(Vec<u8>, String), ReconcileError> {
        let expected = run.sha256.to_ascii_lowercase();
        let path = self.cache_dir.join(&expected);
        let cache_err = |source| ReconcileError::ProgramCache {
            path: path.clone(),
            source,
        };
        if !expected.is_empty() && expected.chars().all(|c| c.is_ascii_hexdigit()) {
            if let Ok(content) = tokio::fs::read(&path).await {
                if hex::encode(Sha256::digest(&content)) == expected {
                    return Ok((content, String::new()));
                }
            }
        }
        let blob = control.fetch_program(&run.program_id).await?;
        let actual = hex::encode(Sha256::digest(&blob.content));
        if !expected.is_empty() && actual != expected {
            return Err(ReconcileError::ProgramChecksum {
                program_id: run.program_id.clone(),
                expected,
                actual,
            });
        }
        tokio::fs::create_dir_all(&self.cache_dir)
            .await
            .map_err(cache_err)?;
        let final_path = self.cache_dir.join(&actual);
        let tmp = self.cache_dir.join(format!("{actual}.tmp"));
        tokio::fs::write(&tmp, &blob.content)
            .await
            .map_err(cache_err)?;
        tokio::fs::rename(&tmp, &final_path)
            .await
            .map_err(cache_err)?;
        Ok((blob.content, blob.name))
    }

    /// Send `run` for every desired run whose guest is registered and has not
    /// got it on its current connection; `stop` runs no longer desired.
    pub(crate) async fn distribute(
        &mut self,
        runs: &[ProgramRun],
        channels: &GuestChannels,
        control: &dyn ControlPlane,
    ) {
        let mut wanted: Vec<RunKey> = Vec::new();
        for run in runs {
            let Ok(vm) = Uuid::parse_str(&run.vm_id) else {
                continue;
            };
            let key = (run.deployment_id.clone(), vm);
            wanted.push(key.clone());
            let Some(state) = channels.state(vm) else {
                continue;
            };
            let request = request_of(run);
            let current = (state.connections, request);
            if !state.registered || self.sent.get(&key) == Some(&current) {
                continue;
            }
            let (content, fetched_name) = match self.content(run, control).await {
                Ok(found) => found,
                Err(err) => {
                    tracing::warn!(deployment = %run.deployment_id, vm = %vm, error = %err, "cannot get program");
                    if let Some(reason) = run_failure(&err) {
                        self.latest.insert(
                            key.clone(),
                            status(run, "failed", None, String::new(), reason),
                        );
                    }
                    continue;
                }
            };
            let program_name = [run.program_name.as_str(), fetched_name.as_str()]
                .into_iter()
                .find(|n| !n.is_empty())
                .unwrap_or("program")
                .to_string();
            let program = ProgramSend {
                deployment_id: run.deployment_id.clone(),
                program_name,
                content: Arc::new(content),
                args: run.args.clone(),
                env: run.env.clone().into_iter().collect(),
            };
            match channels.send_program(vm, program) {
                Ok(()) => {
                    tracing::info!(deployment = %run.deployment_id, vm = %vm, "program sent to guest");
                    self.sent.insert(key, current);
                }
                Err(err) => tracing::debug!(vm = %vm, error = %err, "cannot send program yet"),
            }
        }
        let stale: Vec<RunKey> = self
            .sent
            .keys()
            .filter(|k| !wanted.contains(k))
            .cloned()
            .collect();
        for key in stale {
            let stop = AgentMessage::Stop {
                deployment_id: key.0.clone(),
            };
            if let Err(err) = channels.send(key.1, &stop) {
                tracing::debug!(vm = %key.1, error = %err, "cannot send stop (guest gone)");
            }
            self.sent.remove(&key);
            self.latest.remove(&key);
            self.reported.remove(&key);
            self.failed_transfers.remove(&key);
        }
    }

    /// The guest of VM `vm` got a corrupt or incomplete program for
    /// `deployment_id` and ran nothing. Returns whether it is sent again
    /// (on the next pass); if not, the run is now `failed`.
    pub(crate) fn on_transfer_failed(
        &mut self,
        vm: Uuid,
        deployment_id: String,
        reason: String,
    ) -> bool {
        let key = (deployment_id, vm);
        if !self.sent.contains_key(&key) {
            // Not a run we are delivering (any more): nothing to retry.
            return false;
        }
        let failures = self.failed_transfers.entry(key.clone()).or_insert(0);
        *failures += 1;
        if *failures < MAX_TRANSFER_ATTEMPTS {
            tracing::warn!(deployment = %key.0, vm = %vm, attempt = *failures, %reason, "program transfer failed in the guest; sending it again");
            self.sent.remove(&key);
            return true;
        }
        tracing::warn!(deployment = %key.0, vm = %vm, %reason, "program transfer failed {MAX_TRANSFER_ATTEMPTS} times; giving up");
        let status = ProgramRunStatus {
            deployment_id: key.0.clone(),
            vm_id: vm.to_string(),
            status: "failed".into(),
            exit_code: None,
            stdout_tail: String::new(),
            stderr_tail: format!(
                "program transfer to the guest failed {MAX_TRANSFER_ATTEMPTS} times; last: {reason}"
            ),
        };
        self.latest.insert(key, status);
        false
    }

    /// A `program_status` from VM `vm`'s guest.
    pub(crate) fn on_status(
        &mut self,
        vm: Uuid,
        deployment_id: String,
        state: ProgramRunState,
        exit_code: Option<i32>,
        stdout_tail: String,
        stderr_tail: String,
    ) {
        // Only runs this agent gave the guest: a guest inventing deployment
        // ids would otherwise grow this map and every report without bound.
        if !self.sent.contains_key(&(deployment_id.clone(), vm)) {
            tracing::debug!(vm = %vm, deployment = %deployment_id.chars().take(64).collect::<String>(),
                "status of a run the guest was not given; ignored");
            return;
        }
        let word = match state {
            ProgramRunState::Running => "running",
            ProgramRunState::Exited => "exited",
            ProgramRunState::Failed => "failed",
        };
        let status = ProgramRunStatus {
            deployment_id: deployment_id.clone(),
            vm_id: vm.to_string(),
            status: word.into(),
            exit_code,
            stdout_tail,
            stderr_tail,
        };
        self.latest.insert((deployment_id, vm), status);
    }

    /// Statuses not yet reported as they are now.
    pub(crate) fn changed(&self) -> Vec<ProgramRunStatus> {
        self.latest
            .iter()
            .filter(|(k, v)| self.reported.get(*k) != Some(*v))
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub(crate) fn mark_reported(&mut self, statuses: &[ProgramRunStatus]) {
        for s in statuses {
            if let Ok(vm) = Uuid::parse_str(&s.vm_id) {
                self.reported
                    .insert((s.deployment_id.clone(), vm), s.clone());
            }
        }
    }
}

/// Why `err` fails the run now instead of leaving it pending for the next
/// pass, or `None` when another fetch may succeed (the controller is down,
/// busy, failing over). Fetching again does not change wrong bytes, nor a
/// program larger than one gRPC answer may be: the controller refuses it
/// with OUT_OF_RANGE naming its `--grpc-max-response-message-bytes`, and
/// tonic refuses an answer over this agent's decode limit with the same
/// code. Without this a researcher's deployment sat pending for ever. A
/// failed run is still fetched on later passes, so it starts once an
/// operator raises the limit.
fn run_failure(err: &ReconcileError) -> Option<String> {
    match err {
        ReconcileError::ProgramChecksum { .. } => Some(err.to_string()),
        ReconcileError::Controller { call, status } if status.code() == tonic::Code::OutOfRange => {
            Some(format!("{call}: {}", status.message()))
        }
        _ => None,
    }
}

fn status(
    run: &ProgramRun,
    word: &str,
    exit_code: Option<i32>,
    stdout_tail: String,
    stderr_tail: String,
) -> ProgramRunStatus {
    ProgramRunStatus {
        deployment_id: run.deployment_id.clone(),
        vm_id: run.vm_id.clone(),
        status: word.into(),
        exit_code,
        stdout_tail,
        stderr_tail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transfer the guest reports broken is sent again on the next pass,
    /// up to the bound; then the run is failed with the guest's reason.
    #[test]
    fn failed_transfers_are_resent_then_reported_failed() {
        let dir = tempfile::tempdir().unwrap();
        let mut programs = Programs::new(dir.path());
        let vm = Uuid::new_v4();
        let key = ("d1".to_string(), vm);
        assert!(
            !programs.on_transfer_failed(vm, "d1".into(), "r".into()),
            "a run never sent is not resent"
        );
        for attempt in 1..MAX_TRANSFER_ATTEMPTS {
            programs.sent.insert(key.clone(), (1, String::new()));
            assert!(programs.on_transfer_failed(vm, "d1".into(), format!("r{attempt}")));
            assert!(!programs.sent.contains_key(&key), "sent again next pass");
            assert!(programs.changed().is_empty());
        }
        programs.sent.insert(key.clone(), (1, String::new()));
        assert!(!programs.on_transfer_failed(vm, "d1".into(), "sha256 mismatch".into()));
        assert!(programs.sent.contains_key(&key), "not sent again");
        let changed = programs.changed();
        assert_eq!(changed.len(), 1, "{changed:?}");
        assert_eq!(changed[0].status, "failed");
        assert!(
            changed[0].stderr_tail.contains("sha256 mismatch"),
            "{changed:?}"
        );
    }
}
