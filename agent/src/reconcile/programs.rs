//! Program distribution: fetch each ProgramRun's program once (cached by
//! sha256 in `<state>/programs/`), send it to the guest as `run`, and relay
//! the guest's `program_status` back.
//!
//! A `run` is sent again whenever the guest reconnects (its connection count
//! moved): the guest agent treats a repeated `run` of a known deployment as
//! "report your status", so this is safe and covers guest agent restarts.

use std::collections::HashMap;
use std::path::PathBuf;

use base64::Engine as _;
use measurelab_api::guest::{AgentMessage, ProgramRunState};
use measurelab_api::node_v1::{ProgramRun, ProgramRunStatus};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::types::{ControlPlane, ReconcileError};
use crate::guest_channel::GuestChannels;

type RunKey = (String, Uuid);

pub(crate) struct Programs {
    cache_dir: PathBuf,
    /// Runs sent to a guest, with the guest's connection count at the time.
    sent: HashMap<RunKey, u64>,
    latest: HashMap<RunKey, ProgramRunStatus>,
    reported: HashMap<RunKey, ProgramRunStatus>,
}

impl Programs {
    pub(crate) fn new(state_dir: &std::path::Path) -> Self {
        Programs {
            cache_dir: state_dir.join("programs"),
            sent: HashMap::new(),
            latest: HashMap::new(),
            reported: HashMap::new(),
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
            if !state.registered || self.sent.get(&key) == Some(&state.connections) {
                continue;
            }
            let (content, fetched_name) = match self.content(run, control).await {
                Ok(found) => found,
                Err(err) => {
                    tracing::warn!(deployment = %run.deployment_id, vm = %vm, error = %err, "cannot get program");
                    if matches!(err, ReconcileError::ProgramChecksum { .. }) {
                        self.latest.insert(
                            key.clone(),
                            status(run, "failed", None, String::new(), err.to_string()),
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
            let message = AgentMessage::Run {
                deployment_id: run.deployment_id.clone(),
                program_name,
                sha256: hex::encode(Sha256::digest(&content)),
                content_base64: base64::engine::general_purpose::STANDARD.encode(&content),
                args: run.args.clone(),
                env: run.env.clone().into_iter().collect(),
            };
            match channels.send(vm, &message) {
                Ok(()) => {
                    tracing::info!(deployment = %run.deployment_id, vm = %vm, "program sent to guest");
                    self.sent.insert(key, state.connections);
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
        }
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
