//! The loop around [`Reconciler::pass`]: when to fetch the desired state,
//! when to run a pass, what to report, and the relay of guest channel
//! traffic to the controller (guests never talk to the controller directly).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use measurelab_api::guest::{AgentMessage, GuestMessage};
use measurelab_api::node_v1::node_service_client::NodeServiceClient;
use measurelab_api::node_v1::{
    DesiredState, DesiredStateRequest, FetchApplianceRequest, FetchProgramRequest, GuestReport,
    LogLine, MscsPoint, MscsPointList, PollTasksRequest, PostResultRequest, ProgramBlob,
    ResourceUsage, StatusAck, StatusReport,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::transport::Channel;
use uuid::Uuid;

use super::engine::Reconciler;
use super::programs::Programs;
use super::relay::{refuse, PollAdmission, RelaySlots};
use super::spool::{ResultSpool, Verdict};

/// How long a guest's result post waits for the controller's verdict
/// before it is told "stored" on the strength of the spool alone; well
/// under the guest's own wait for an answer (10 s).
const VERDICT_WAIT: Duration = Duration::from_secs(2);
use super::types::{ApplianceChunks, ControlPlane, ReconcileError, RESYNC_INTERVAL};
use crate::guest_channel::GuestChannels;
use crate::identity::Identity;
use measurelab_backoff::Backoff;

/// What a guest is told when its request finds no slot in the relay queue
/// (a result, or a task poll that is not coalesced with one in flight).
const RELAY_QUEUE_FULL: &str = "the node agent's relay queue is full; retry later";

/// How long guest events are collected before the resulting pass (many
/// guests saying hello at once cost one pass, not one each).
const DEBOUNCE: Duration = Duration::from_millis(30);
/// How often guest heartbeats, logs and program statuses are sent.
const GUEST_REPORT_PERIOD: Duration = Duration::from_secs(1);
/// How often a pass runs on the last fetched desired state even when nothing
/// was announced: catches hand edits (`ovs-vsctl del-port`, a killed guest)
/// sooner than the desired-state resync.
const LOCAL_PASS_PERIOD: Duration = Duration::from_secs(5);
/// Retry delay after a failed ReportStatus.
const REPORT_RETRY: Duration = Duration::from_secs(2);
/// Guest log lines kept per VM while the controller is unreachable.
const MAX_PENDING_LOG_LINES: usize = 1000;
/// Guest messages the loop keeps aside while it waits (see [`GuestInbox`]);
/// as many as the node-wide queue holds, so memory stays bounded as it was.
/// Past that the loop stops taking messages until its wait ends, and results
/// wait behind the others again: an honest guest sends a message every
/// 2.5 s, so that takes about 250 guests during one 10 s controller call,
/// or 60 during a pass whose four calls all hang.
const HELD_LIMIT: usize = 1024;

/// The relay's shared parts: the bounded job queue, the polls in flight,
/// the result spool (`None` when its directory cannot be used: results are
/// then refused to the guest rather than acknowledged and lost), and what
/// it answers through and relays to.
struct Relay {
    slots: RelaySlots,
    spool: Option<Arc<ResultSpool>>,
    channels: GuestChannels,
    control: Arc<dyn ControlPlane>,
}

/// The node-wide queue of guest messages, and those taken off it while the
/// loop waited. Results and task polls never wait for the loop: while it
/// awaits the controller (up to the RPC timeout per call when the
/// controller hangs) or a pass, they go to the relay at once, so a result
/// is spooled and acknowledged within the guest's wait for an answer. The
/// other messages change the loop's own state; they are held, in order,
/// until the loop is free.
struct GuestInbox {
    events: mpsc::Receiver<(Uuid, GuestMessage)>,
    held: VecDeque<(Uuid, GuestMessage)>,
}

impl GuestInbox {
    /// Awaits `work` while relaying results and task polls and holding the
    /// other guest messages.
    async fn serve_during<T>(&mut self, relay: &Relay, work: impl Future<Output = T>) -> T {
        tokio::pin!(work);
        let mut open = true;
        loop {
            let room = open && self.held.len() < HELD_LIMIT;
            tokio::select! {
                biased;
                done = &mut work => return done,
                event = self.events.recv(), if room => match event {
                    // The loop itself sees the closed queue and ends.
                    None => open = false,
                    Some((vm, message)) if is_relayed(&message) => relay.relay(vm, message),
                    Some(event) => self.held.push_back(event),
                },
            }
        }
    }
}

/// Whether the relay answers `message` without the loop's state.
fn is_relayed(message: &GuestMessage) -> bool {
    matches!(
        message,
        GuestMessage::Result { .. } | GuestMessage::PollTasks
    )
}

/// The controller over gRPC, with the node credentials of the session.
#[derive(Clone)]
pub struct GrpcControlPlane {
    client: NodeServiceClient<Channel>,
    identity: watch::Receiver<Option<Identity>>,
}

impl GrpcControlPlane {
    /// Calls go out as the identity the session currently holds.
    pub fn new(
        client: NodeServiceClient<Channel>,
        identity: watch::Receiver<Option<Identity>>,
    ) -> Self {
        GrpcControlPlane { client, identity }
    }

    fn identity(&self) -> Result<Identity, ReconcileError> {
        self.identity
            .borrow()
            .clone()
            .ok_or(ReconcileError::NotRegistered)
    }
}

fn rpc(call: &'static str) -> impl FnOnce(tonic::Status) -> ReconcileError {
    move |status| ReconcileError::Controller {
        call,
        status: Box::new(status),
    }
}

#[async_trait]
impl ControlPlane for GrpcControlPlane {
    async fn desired_state(&self) -> Result<DesiredState, ReconcileError> {
        let id = self.identity()?;
        let request = DesiredStateRequest {
            node_id: id.node_id,
            node_secret: id.node_secret,
        };
        Ok(self
            .client
            .clone()
            .get_desired_state(request)
            .await
            .map_err(rpc("GetDesiredState"))?
            .into_inner())
    }

    async fn report_status(&self, mut report: StatusReport) -> Result<StatusAck, ReconcileError> {
        let id = self.identity()?;
        report.node_id = id.node_id;
        report.node_secret = id.node_secret;
        Ok(self
            .client
            .clone()
            .report_status(report)
            .await
            .map_err(rpc("ReportStatus"))?
            .into_inner())
    }

    async fn fetch_program(&self, program_id: &str) -> Result<ProgramBlob, ReconcileError> {
        let id = self.identity()?;
        let request = FetchProgramRequest {
            node_id: id.node_id,
            node_secret: id.node_secret,
            program_id: program_id.to_string(),
        };
        Ok(self
            .client
            .clone()
            .fetch_program(request)
            .await
            .map_err(rpc("FetchProgram"))?
            .into_inner())
    }

    async fn fetch_appliance(&self, sha256: &str) -> Result<ApplianceChunks, ReconcileError> {
        let id = self.identity()?;
        let request = FetchApplianceRequest {
            node_id: id.node_id,
            node_secret: id.node_secret,
            sha256: sha256.to_string(),
        };
        let chunks = self
            .client
            .clone()
            .fetch_appliance(request)
            .await
            .map_err(rpc("FetchAppliance"))?
            .into_inner();
        Ok(Box::pin(futures::StreamExt::map(chunks, |chunk| {
            chunk
                .map(|c| c.data)
                .map_err(|status| ReconcileError::Controller {
                    call: "FetchAppliance",
                    status: Box::new(status),
                })
        })))
    }

    async fn post_result(
        &self,
        vm_id: &str,
        task_id: &str,
        document_json: String,
    ) -> Result<String, ReconcileError> {
        let id = self.identity()?;
        let request = PostResultRequest {
            node_id: id.node_id,
            node_secret: id.node_secret,
            vm_id: vm_id.to_string(),
            task_id: task_id.to_string(),
            document_json,
        };
        Ok(self
            .client
            .clone()
            .post_result(request)
            .await
            .map_err(rpc("PostResult"))?
            .into_inner()
            .result_id)
    }

    async fn poll_tasks(&self, vm_id: &str) -> Result<Vec<String>, ReconcileError> {
        let id = self.identity()?;
        let request = PollTasksRequest {
            node_id: id.node_id,
            node_secret: id.node_secret,
            vm_id: vm_id.to_string(),
        };
        Ok(self
            .client
            .clone()
            .poll_tasks(request)
            .await
            .map_err(rpc("PollTasks"))?
            .into_inner()
            .tasks_json)
    }
}

/// The loop's links to the heartbeat session.
pub struct LoopHandles {
    /// The desired generation as the session last heard it, from a heartbeat
    /// answer or a `WatchDesiredState` hint.
    pub desired_generation: watch::Receiver<u64>,
    /// The generation the node converged to, for the next heartbeat.
    pub observed_generation: watch::Sender<u64>,
    /// Becomes true on shutdown.
    pub shutdown: watch::Receiver<bool>,
}

#[derive(Default)]
struct PendingGuest {
    heartbeat_reported_ms: i64,
    logs: Vec<LogLine>,
    /// The MSCS's latest point list not yet reported; a newer one replaces it.
    points: Option<MscsPointList>,
}

fn point_list(points: Vec<measurelab_api::guest::GuestPoint>) -> MscsPointList {
    MscsPointList {
        points: points
            .into_iter()
            .map(|p| MscsPoint {
                name: p.name,
                control_address: p.control_addr,
                data_address: p.data_addr.unwrap_or_default(),
                state: p.state,
                // check_points bounds it far below i64::MAX.
                last_seen_unix_ms: p.last_heartbeat_unix_ms.unwrap_or(0) as i64,
                protocol_version: p.protocol_version.unwrap_or(0),
                origin: p.origin,
            })
            .collect(),
    }
}

fn now_ms() -> i64 {
    crate::logs::now_unix_ms()
}

fn usage_of(resources: &measurelab_api::http::Resources) -> ResourceUsage {
    ResourceUsage {
        cpu_count: resources.cpu_count,
        cpu_used_percent: resources.cpu_used_percent,
        memory_total_bytes: resources.memory_total_bytes,
        memory_used_bytes: resources.memory_used_bytes,
        disk_total_bytes: resources.disk_total_bytes,
        disk_used_bytes: resources.disk_used_bytes,
        network_rx_bytes: resources.network_rx_bytes,
        network_tx_bytes: resources.network_tx_bytes,
    }
}

/// Run the reconcile loop until shutdown. `guest_events` is the receiving
/// end of the channel given to [`Reconciler::new`].
pub async fn run_loop(
    mut reconciler: Reconciler,
    guest_events: mpsc::Receiver<(Uuid, GuestMessage)>,
    control: Arc<dyn ControlPlane>,
    state_dir: std::path::PathBuf,
    mut handles: LoopHandles,
) {
    let mut shutdown = handles.shutdown.clone();
    let mut programs = Programs::new(&state_dir);
    let mut desired: Option<DesiredState> = None;
    let mut fetch_at: Option<Instant> = Some(Instant::now());
    let mut fetch_backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
    let mut pass_at: Option<Instant> = None;
    let mut resync = tokio::time::interval(RESYNC_INTERVAL);
    resync.tick().await;
    let mut guest_tick = tokio::time::interval(GUEST_REPORT_PERIOD);
    let mut pending: HashMap<Uuid, PendingGuest> = HashMap::new();
    let far = || Instant::now() + Duration::from_secs(3600);
    let spool_dir = state_dir.join("results");
    let spool = match ResultSpool::open(&spool_dir, reconciler.config().result_spool.clone()) {
        Ok(spool) => {
            let spool = Arc::new(spool);
            // Re-posts what an earlier agent spooled, too.
            tokio::spawn(spool.clone().run(control.clone(), shutdown.clone()));
            Some(spool)
        }
        Err(err) => {
            tracing::error!(error = %err, "cannot open the result spool; guest results are refused until it works");
            None
        }
    };
    let relay = Relay {
        slots: RelaySlots::new(reconciler.config().relay.queue),
        spool,
        channels: reconciler.channels().clone(),
        control: control.clone(),
    };
    let mut inbox = GuestInbox {
        events: guest_events,
        held: VecDeque::new(),
    };
    crate::metrics::metrics().watch_relay_queue({
        let slots = relay.slots.clone();
        move || slots.depth()
    });

    loop {
        let now = Instant::now();
        if fetch_at.is_some_and(|at| at <= now) {
            match inbox.serve_during(&relay, control.desired_state()).await {
                Ok(state) => {
                    tracing::debug!(
                        generation = state.generation,
                        vms = state.vms.len(),
                        "fetched desired state"
                    );
                    desired = Some(state);
                    fetch_at = None;
                    fetch_backoff.reset();
                    pass_at = Some(Instant::now());
                }
                Err(err) => {
                    let delay = fetch_backoff.next_delay();
                    if !matches!(err, ReconcileError::NotRegistered) {
                        tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "cannot fetch desired state");
                    }
                    fetch_at = Some(Instant::now() + delay);
                }
            }
        }
        if pass_at.is_some_and(|at| at <= Instant::now()) {
            pass_at = None;
            if let Some(state) = desired.as_mut() {
                inbox
                    .serve_during(
                        &relay,
                        reconciler.prepare_appliances(state, control.as_ref()),
                    )
                    .await;
                let state = &*state;
                let started = Instant::now();
                let report = inbox.serve_during(&relay, reconciler.pass(state)).await;
                crate::metrics::metrics().observe_pass(
                    started.elapsed(),
                    report.converged,
                    state.vms.len(),
                    state.generation,
                );
                crate::metrics::metrics().observe_guest_states(
                    report
                        .statuses
                        .iter()
                        .map(|status| status.actual_state.as_str()),
                );
                if !report.actions.is_empty() {
                    tracing::info!(
                        actions = report.actions.len(),
                        converged = report.converged,
                        "reconcile pass changed the node"
                    );
                }
                let distribute = programs.distribute(
                    &state.program_runs,
                    reconciler.channels(),
                    control.as_ref(),
                );
                inbox.serve_during(&relay, distribute).await;
                let observed = if report.converged {
                    state.generation
                } else {
                    *handles.observed_generation.borrow()
                };
                let program_runs = programs.changed();
                if !report.changed.is_empty()
                    || !program_runs.is_empty()
                    || !report.changed_gateways.is_empty()
                {
                    let status = StatusReport {
                        observed_generation: observed,
                        vms: report.changed.clone(),
                        program_runs: program_runs.clone(),
                        gateways: report.changed_gateways.clone(),
                        ..Default::default()
                    };
                    match inbox
                        .serve_during(&relay, control.report_status(status))
                        .await
                    {
                        Ok(ack) => {
                            // Refused items are not sent again: the
                            // controller would refuse them again.
                            note_refused(&ack);
                            reconciler.mark_reported(&report.changed);
                            reconciler.mark_gateways_reported(&report.changed_gateways);
                            programs.mark_reported(&program_runs);
                            if ack.desired_generation != 0
                                && ack.desired_generation != state.generation
                            {
                                fetch_at = Some(Instant::now());
                            }
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "cannot report status");
                            pass_at = Some(Instant::now() + REPORT_RETRY);
                        }
                    }
                }
                if report.converged {
                    crate::metrics::metrics().observe_generation(state.generation);
                    handles.observed_generation.send_if_modified(|g| {
                        let changed = *g != state.generation;
                        *g = state.generation;
                        changed
                    });
                }
                let mut next = Instant::now() + LOCAL_PASS_PERIOD;
                if let Some(delay) = report.next_retry {
                    next = next.min(Instant::now() + delay);
                }
                pass_at = Some(pass_at.map_or(next, |p| p.min(next)));
            }
        }

        let mut schedule = false;
        while let Some((vm, message)) = inbox.held.pop_front() {
            schedule |= handle_guest_message(
                vm,
                message,
                &reconciler,
                &mut programs,
                &mut pending,
                &relay,
            );
        }
        if schedule {
            let at = Instant::now() + DEBOUNCE;
            pass_at = Some(pass_at.map_or(at, |p| p.min(at)));
        }

        let wake_fetch = fetch_at.unwrap_or_else(far);
        let wake_pass = pass_at.unwrap_or_else(far);
        tokio::select! {
            _ = tokio::time::sleep_until(wake_fetch.min(wake_pass)) => {}
            changed = handles.desired_generation.changed() => {
                if changed.is_ok() {
                    let wanted = *handles.desired_generation.borrow();
                    if desired.as_ref().is_none_or(|d| d.generation != wanted) {
                        fetch_at = Some(fetch_at.map_or(Instant::now(), |f| f.min(Instant::now())));
                    }
                }
            }
            _ = resync.tick() => {
                fetch_at = Some(Instant::now());
                reconciler.forget_reported_gateways();
            }
            event = inbox.events.recv() => {
                let Some((vm, message)) = event else { return };
                let schedule = handle_guest_message(vm, message, &reconciler, &mut programs, &mut pending, &relay);
                if schedule {
                    let at = Instant::now() + DEBOUNCE;
                    pass_at = Some(pass_at.map_or(at, |p| p.min(at)));
                }
            }
            _ = guest_tick.tick() => {
                let observed = *handles.observed_generation.borrow();
                let flush = flush_guest_reports(&reconciler, &mut programs, &mut pending, control.as_ref(), observed);
                inbox.serve_during(&relay, flush).await;
            }
            _ = stopped(&mut shutdown) => return,
        }
    }
}

/// Returns whether a pass should follow (statuses may have changed).
fn handle_guest_message(
    vm: Uuid,
    message: GuestMessage,
    reconciler: &Reconciler,
    programs: &mut Programs,
    pending: &mut HashMap<Uuid, PendingGuest>,
    relay: &Relay,
) -> bool {
    match message {
        GuestMessage::Hello { .. } => true,
        // Routed to their sessions by the guest channel; never queued here.
        GuestMessage::Exec { .. } => false,
        GuestMessage::Heartbeat { .. } => {
            pending.entry(vm).or_default();
            // Heard again after a missed deadline: GuestRegistered turns back.
            reconciler.heartbeat_missed_reported(vm)
        }
        GuestMessage::Log { lines } => {
            let entry = pending.entry(vm).or_default();
            let now = now_ms();
            entry.logs.extend(lines.into_iter().map(|message| LogLine {
                timestamp_unix_ms: now,
                level: "info".into(),
                target: "guest".into(),
                message,
            }));
            let excess = entry.logs.len().saturating_sub(MAX_PENDING_LOG_LINES);
            entry.logs.drain(..excess);
            false
        }
        GuestMessage::ProgramStatus {
            deployment_id,
            status,
            exit_code,
            stdout_tail,
            stderr_tail,
        } => {
            programs.on_status(
                vm,
                deployment_id,
                status,
                exit_code,
                stdout_tail,
                stderr_tail,
            );
            false
        }
        GuestMessage::ProgramTransferFailed {
            deployment_id,
            reason,
        } => programs.on_transfer_failed(vm, deployment_id, reason),
        GuestMessage::Result { .. } | GuestMessage::PollTasks => {
            relay.relay(vm, message);
            false
        }
        GuestMessage::Points { points } => {
            // The guest agent checked it, but the guest is not trusted: a list
            // that fails the check is dropped here rather than relayed.
            match measurelab_api::guest::check_points(&points) {
                Ok(()) => pending.entry(vm).or_default().points = Some(point_list(points)),
                Err(err) => {
                    tracing::warn!(vm = %vm, error = %err, "dropped a bad point list from the guest")
                }
            }
            false
        }
    }
}

impl Relay {
    /// Relays a result (to the spool) or a task poll (to the controller)
    /// in a task of its own, within the relay's bounds; other messages are
    /// not the relay's (see [`is_relayed`]).
    fn relay(&self, vm: Uuid, message: GuestMessage) {
        match message {
            GuestMessage::Result {
                ref task_id,
                ref document,
                ref request_id,
            } => {
                let channels = self.channels.clone();
                let Some(spool) = self.spool.clone() else {
                    refuse(
                        vm,
                        &message,
                        "the node agent cannot spool results now; retry later",
                        &channels,
                    );
                    return;
                };
                let Some(slot) = self.slots.slot() else {
                    refuse(vm, &message, RELAY_QUEUE_FULL, &channels);
                    return;
                };
                let (task_id, json, request_id) =
                    (task_id.clone(), document.to_string(), request_id.clone());
                tokio::spawn(async move {
                    let stored =
                        tokio::task::spawn_blocking(move || spool.put(vm, &task_id, json)).await;
                    let (reason, rejected) = match stored {
                        // Durable now. A controller in reach commits or refuses
                        // it within moments: waiting that long lets a program
                        // that posts for a task that is not its platform's hear
                        // so, instead of "stored" for a result that never will be.
                        Ok(Ok(verdict)) => {
                            match tokio::time::timeout(VERDICT_WAIT, verdict).await {
                                Ok(Ok(Verdict::Rejected(reason))) => (Some(reason), true),
                                Ok(Ok(Verdict::Lost(reason))) => (Some(reason), false),
                                // Committed, or spooled until the controller is back.
                                _ => (None, false),
                            }
                        }
                        Ok(Err(err)) => {
                            tracing::warn!(vm = %vm, error = %err, "guest result not spooled");
                            (Some(err.to_string()), false)
                        }
                        Err(err) => (Some(format!("spooling failed: {err}")), false),
                    };
                    // Held until the verdict, so a flooding guest's results wait
                    // in the bounded relay queue rather than beside it.
                    drop(slot);
                    if let Some(request_id) = request_id {
                        let ack = AgentMessage::ResultAck {
                            request_id,
                            stored: reason.is_none(),
                            reason,
                            rejected,
                        };
                        if let Err(err) = channels.send(vm, &ack) {
                            // Stored anyway; the guest times out and may post
                            // again, which the controller's run_id check absorbs.
                            tracing::debug!(vm = %vm, error = %err, "cannot acknowledge a result");
                        }
                    }
                });
            }
            GuestMessage::PollTasks => {
                let channels = self.channels.clone();
                let ticket = match self.slots.poll(vm) {
                    PollAdmission::Go(ticket) => ticket,
                    // The poll at the controller answers this one too.
                    PollAdmission::Coalesced => return,
                    PollAdmission::QueueFull => {
                        refuse(vm, &message, RELAY_QUEUE_FULL, &channels);
                        return;
                    }
                };
                let control = self.control.clone();
                tokio::spawn(async move {
                    let answer = match control.poll_tasks(&vm.to_string()).await {
                        Ok(tasks) => AgentMessage::Tasks {
                            tasks: tasks
                                .iter()
                                .filter_map(|t| serde_json::from_str(t).ok())
                                .collect(),
                        },
                        // Not an empty list: an MSCS takes the list as the
                        // platform's tasks and drops the periodic schedules
                        // missing from it, so every controller outage stopped
                        // its periodic runs until the controller was back. A
                        // refused poll is a failed fetch, which keeps them.
                        Err(err) => {
                            tracing::warn!(vm = %vm, error = %err, "cannot poll tasks for guest");
                            AgentMessage::PollRefused {
                                reason: format!("the controller did not answer: {err}"),
                            }
                        }
                    };
                    if let Err(err) = channels.send(vm, &answer) {
                        tracing::debug!(vm = %vm, error = %err, "cannot answer poll_tasks");
                    }
                    drop(ticket);
                });
            }
            _ => {}
        }
    }
}

/// Logs what the controller refused of a report (one line per report).
fn note_refused(ack: &StatusAck) {
    if let Some(first) = ack.refused.first() {
        tracing::warn!(
            refused = ack.refused.len(),
            first = %first.reason,
            "the controller refused items of a status report; the rest were applied"
        );
    }
}

/// Log bytes one guest report carries at most (all VMs together), the
/// rest waits for the next one: a report stays far below the controller's
/// 4 MiB message limit however much the guests log, so one guest's logs
/// cannot make the report - and every guest's heartbeat in it - fail.
const REPORT_LOG_BYTES: usize = 512 * 1024;
/// Log bytes of one VM in one report, so one guest cannot use all of it.
const REPORT_LOG_BYTES_PER_VM: usize = 64 * 1024;

/// The oldest of `logs` that fit the VM's share and `budget` (at least one
/// line while any budget is left, so a long line never blocks the rest).
fn oldest_within(logs: &[LogLine], budget: &mut usize) -> Vec<LogLine> {
    let mut mine = REPORT_LOG_BYTES_PER_VM.min(*budget);
    let mut taken = Vec::new();
    for line in logs {
        let size = line.message.len() + line.target.len() + 16;
        if size > mine && (!taken.is_empty() || mine == 0) {
            break;
        }
        mine = mine.saturating_sub(size);
        *budget = budget.saturating_sub(size);
        taken.push(line.clone());
    }
    taken
}

async fn flush_guest_reports(
    reconciler: &Reconciler,
    programs: &mut Programs,
    pending: &mut HashMap<Uuid, PendingGuest>,
    control: &dyn ControlPlane,
    observed_generation: u64,
) {
    let mut guests = Vec::new();
    let mut log_budget = REPORT_LOG_BYTES;
    for (vm, entry) in pending.iter() {
        let state = reconciler.channels().state(*vm);
        let heartbeat = state
            .as_ref()
            .map(|s| s.last_heartbeat_unix_ms() as i64)
            .unwrap_or(0);
        if heartbeat == entry.heartbeat_reported_ms
            && entry.logs.is_empty()
            && entry.points.is_none()
        {
            continue;
        }
        guests.push(GuestReport {
            vm_id: vm.to_string(),
            last_heartbeat_unix_ms: heartbeat,
            usage: state.and_then(|s| s.last_usage.as_ref().map(usage_of)),
            logs: oldest_within(&entry.logs, &mut log_budget),
            points: entry.points.clone(),
        });
    }
    let program_runs = programs.changed();
    if guests.is_empty() && program_runs.is_empty() {
        return;
    }
    let report = StatusReport {
        observed_generation,
        guests: guests.clone(),
        program_runs: program_runs.clone(),
        ..Default::default()
    };
    match control.report_status(report).await {
        Ok(ack) => {
            note_refused(&ack);
            programs.mark_reported(&program_runs);
            for sent in guests {
                if let Ok(vm) = Uuid::parse_str(&sent.vm_id) {
                    if let Some(entry) = pending.get_mut(&vm) {
                        entry.heartbeat_reported_ms = sent.last_heartbeat_unix_ms;
                        entry.logs.drain(..sent.logs.len().min(entry.logs.len()));
                        if entry.points == sent.points {
                            entry.points = None;
                        }
                    }
                }
            }
        }
        Err(err) => tracing::debug!(error = %err, "cannot report guest status; will retry"),
    }
    pending.retain(|vm, _| reconciler.channels().is_open(*vm));
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
