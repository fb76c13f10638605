//! gRPC `NodeService`: what node agents call.
//!
//! Status codes agents can act on:
//! - `UNAUTHENTICATED` on Register: wrong, expired, used-up or revoked join
//!   token (operator must fix it); on Heartbeat/ShipLogs and the other node
//!   calls: wrong node secret, or the node was revoked (re-register).
//! - `PERMISSION_DENIED` on Register: the name (or id) belongs to an existing
//!   node and the request lacks that node's current secret, the node is
//!   revoked, or a per-node join token names another node. Refusals under an
//!   existing name wait for an operator's approval (`measurelab node approve`).
//! - `NOT_FOUND` on Heartbeat/ShipLogs: the controller does not know the node
//!   id (its database was replaced): re-register with the persisted id.
//! - `INVALID_ARGUMENT`: a field is wrong; the message starts with the field.
//! - `ALREADY_EXISTS` on Register: another node holds the requested name.
//! - `FAILED_PRECONDITION` on Register and Heartbeat: the agent is older
//!   than this controller serves (docs/version-skew.md); upgrade the agent.
//! - `UNAVAILABLE`: the store is failing or shutting down; retry later.

mod error;
mod refusals;
mod skew;
mod workload;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;

use crate::exec_hub::ExecHub;
use measurelab_api::exec::{ExecFrame, MAX_EXEC_LINE_BYTES};
use measurelab_api::http;
use measurelab_api::node_v1::node_service_server::{NodeService, NodeServiceServer};
use measurelab_api::node_v1::{
    self, DesiredState, DesiredStateHint, DesiredStateRequest, FetchApplianceRequest,
    FetchProgramRequest, HeartbeatRequest, HeartbeatResponse, PollTasksRequest, PostResultAck,
    PostResultRequest, ProgramBlob, RegisterRequest, RegisterResponse, RenewCertificateRequest,
    RenewCertificateResponse, ShipLogsRequest, ShipLogsResponse, StatusAck, StatusReport, TaskList,
    WatchDesiredStateRequest,
};
use measurelab_api::node_v1::{ExecDown, ExecUp};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::store::{
    constant_time_eq, parse_issued_join_token, rfc3339, ChannelChange, HeartbeatInput,
    JoinCredential, RegisterInput, ShipLogsInput, Store, StoreError,
};
use crate::validation::{self, FieldError};
use error::RpcError;
pub(crate) use refusals::{RefusalLog, DEFAULT_REPORT_INTERVAL as DEFAULT_REFUSAL_REPORT_INTERVAL};

/// Most log lines accepted in one ShipLogs call.
pub(crate) const MAX_LOG_LINES_PER_CALL: usize = 5_000;
const MAX_LOG_MESSAGE: usize = 16 * 1024;
const LOG_LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace"];
/// How often a WatchDesiredState stream repeats the generation when nothing
/// changed: agents take long silence for a dead connection and reconnect,
/// and a node forgotten meanwhile has its stream ended.
const WATCH_KEEPALIVE: Duration = Duration::from_secs(20);

/// The NodeService implementation.
pub(crate) struct NodeRpc {
    store: Store,
    join_token: String,
    heartbeat_interval_seconds: u32,
    /// Ends the WatchDesiredState streams, which would otherwise hold the
    /// server's graceful shutdown open forever.
    shutdown: CancellationToken,
    /// `IP:PORT` of the controller's flow collector, told to every node.
    flow_collector: Option<String>,
    /// Refused registrations, summed up instead of one event each.
    refusals: Arc<RefusalLog>,
    /// Polled tasks waiting to be marked running (PollTasks only reads).
    running_marks: Arc<workload::RunningMarks>,
    /// Set when gRPC runs over TLS: registrations carry a CSR, and every
    /// other call must present the certificate of the node it is about.
    node_certs: Option<NodeCerts>,
    /// `vm exec` sessions, shared with the HTTP API.
    exec_hub: ExecHub,
    /// This replica's `--advertise-url`, recorded with each exec stream so
    /// the other replicas can forward sessions here.
    advertise_url: Option<String>,
    /// The version-skew policy: too old an agent is refused.
    skew: skew::AgentSkew,
    /// The server's `--grpc-max-response-message-bytes`. tonic refuses a
    /// larger answer with its own message, which does not say which
    /// setting to change; FetchProgram checks first and names it.
    max_response_message_bytes: usize,
}

/// How the controller issues and checks node certificates.
pub(crate) struct NodeCerts {
    pub ca: Arc<crate::tls::Ca>,
    pub lifetime: Duration,
}

impl NodeRpc {
    pub fn new(store: Store, join_token: String, heartbeat_interval: Duration) -> Self {
        NodeRpc {
            store,
            join_token,
            // Agents work in whole seconds; never tell them 0.
            heartbeat_interval_seconds: heartbeat_interval.as_secs().clamp(1, u32::MAX as u64)
                as u32,
            shutdown: CancellationToken::new(),
            flow_collector: None,
            refusals: Arc::default(),
            running_marks: Arc::default(),
            node_certs: None,
            exec_hub: ExecHub::default(),
            advertise_url: None,
            skew: skew::AgentSkew::new(crate::version_policy::Version::this_build()),
            max_response_message_bytes: usize::MAX,
        }
    }

    /// Judge agents' versions against `controller`'s rather than this
    /// build's.
    pub fn judging_agents_against(mut self, controller: crate::version_policy::Version) -> Self {
        self.skew = skew::AgentSkew::new(controller);
        self
    }

    /// The cap the gRPC server puts on answers (`GrpcLimits`).
    pub fn with_max_response_message_bytes(mut self, bytes: usize) -> Self {
        self.max_response_message_bytes = bytes;
        self
    }

    /// Record exec streams with this URL (see `store::exec_channels`).
    pub fn with_advertise_url(mut self, url: Option<String>) -> Self {
        self.advertise_url = url;
        self
    }

    /// Carry the HTTP API's exec sessions over the agents' `ExecChannel`s.
    pub fn with_exec_hub(mut self, hub: ExecHub) -> Self {
        self.exec_hub = hub;
        self
    }

    /// Issue node certificates at registration and require them on every
    /// other call (gRPC over TLS).
    pub fn with_node_certs(mut self, node_certs: Option<NodeCerts>) -> Self {
        self.node_certs = node_certs;
        self
    }

    /// With TLS on, the call must come with a client certificate bound to
    /// `node_id`, unexpired now (not only when the connection was opened)
    /// and not revoked by an operator (`measurelab node
    /// revoke-certificate`); the handshake already verified it against the
    /// CA. A removed or revoked node fails the
    /// node-secret check that follows in each call, so its certificate,
    /// still unexpired, gets it nowhere.
    fn check_peer<T>(&self, request: &Request<T>, node_id: &str) -> Result<(), RpcError> {
        if self.node_certs.is_none() {
            return Ok(());
        }
        let certs = request.peer_certs();
        let Some(leaf) = certs.as_ref().and_then(|certs| certs.first()) else {
            return Err(RpcError::Unauthenticated(
                "client certificate: none presented; this controller requires the node certificate issued at registration on every call but Register".into(),
            ));
        };
        if !crate::tls::cert_names_node(leaf, node_id) {
            return Err(RpcError::PermissionDenied(format!(
                "client certificate: not issued to node {node_id:?}; a node may only call as itself"
            )));
        }
        // A certificate the CA signed always parses; one that does not
        // cannot be checked against the revoked serials, so it is refused.
        let Some(serial) = crate::tls::cert_serial(leaf) else {
            return Err(RpcError::Unauthenticated(
                "client certificate: its serial number does not parse".into(),
            ));
        };
        // The handshake checked the validity period, but a connection
        // outlives it: without this, an agent that never renews would go
        // on calling with an expired certificate until it reconnects.
        match crate::tls::cert_not_after(leaf) {
            Some(not_after) if not_after > OffsetDateTime::now_utc() => {}
            Some(not_after) => {
                return Err(RpcError::Unauthenticated(format!(
                    "client certificate: serial {serial} of node {node_id} expired at {}; \
                     the node gets a new certificate by registering again with its node secret",
                    crate::store::rfc3339(not_after)
                )));
            }
            None => {
                return Err(RpcError::Unauthenticated(
                    "client certificate: its validity period does not parse".into(),
                ));
            }
        }
        if self.store.certificate_revoked(node_id, &serial) {
            return Err(RpcError::Unauthenticated(format!(
                "client certificate: serial {serial} of node {node_id} was revoked by an operator; \
                 the node gets a new certificate by registering again with its node secret \
                 (an agent does so when it restarts) or with a new join token"
            )));
        }
        Ok(())
    }

    /// Remember a certificate just signed, so an operator can revoke it;
    /// unrecorded, it is not handed out.
    async fn issued(&self, node_id: &str, cert: crate::tls::NodeCert) -> Result<String, RpcError> {
        self.store
            .record_certificate(crate::store::IssuedCertificate {
                node_id: node_id.to_string(),
                serial: cert.serial,
                not_after: cert.not_after,
            })
            .await?;
        Ok(cert.pem)
    }

    /// The refusal counter, whose summaries the caller schedules.
    pub fn refusals(&self) -> Arc<RefusalLog> {
        self.refusals.clone()
    }

    /// Tell nodes to export flows to the collector at `address`.
    pub fn with_flow_collector(mut self, address: Option<String>) -> Self {
        self.flow_collector = address;
        self
    }

    /// End the long-lived WatchDesiredState streams when `shutdown` fires.
    pub fn ending_streams_on(mut self, shutdown: CancellationToken) -> Self {
        self.shutdown = shutdown;
        self
    }

    pub fn into_server(self) -> NodeServiceServer<Self> {
        NodeServiceServer::new(self)
    }

    async fn register(
        &self,
        request: RegisterRequest,
        peer_address: String,
    ) -> Result<RegisterResponse, RpcError> {
        let name = request.name.chars().take(63).collect::<String>();
        let join = if constant_time_eq(request.join_token.as_bytes(), self.join_token.as_bytes()) {
            JoinCredential::Default
        } else if let Some(issued) = parse_issued_join_token(&request.join_token) {
            issued
        } else {
            let reason = if request.join_token.is_empty() {
                "no join token"
            } else {
                "wrong join token"
            };
            self.refused_join(&name, &peer_address, reason).await?;
            return Err(RpcError::Unauthenticated(format!("join_token: {reason}")));
        };
        // Before the store changes: a bad CSR must leave nothing half-applied.
        let csr_key = match &self.node_certs {
            Some(_) if request.csr_pem.is_empty() => {
                return Err(RpcError::InvalidArgument {
                    field: "csr_pem".into(),
                    reason: "is empty; this controller serves TLS and issues node certificates from a CSR".into(),
                });
            }
            Some(certs) => Some(certs.ca.check_csr(&request.csr_pem).map_err(csr_refused)?),
            None => None,
        };
        let input = validate_register(request, join, peer_address.clone())?;
        // Before the store changes: a refused agent leaves nothing behind.
        let skew = self.skew.admit(&input.agent_version, || name.clone())?;
        let agent_version = input.agent_version.clone();
        let tunnel_before = self
            .store
            .node(input.node_id.as_deref().unwrap_or(&name))
            .map(|node| node.capabilities.tunnel_address);
        let tunnel_now = input.capabilities.tunnel_address.clone();
        let registered = match self.store.register(input).await {
            Ok(registered) => registered,
            Err(StoreError::JoinTokenRefused(reason)) => {
                self.refused_join(&name, &peer_address, &reason).await?;
                return Err(StoreError::JoinTokenRefused(reason).into());
            }
            Err(e) => return Err(e.into()),
        };
        if !tunnel_now.is_empty() && tunnel_before.as_deref() != Some(tunnel_now.as_str()) {
            // Peers build their tunnels from this address; without a bump
            // they would learn of it only at their next periodic resync.
            let node_id = registered.node_id.clone();
            self.store
                .resources()
                .transact(move |cx| crate::store::tunnels::touch_peers(cx, &node_id))
                .await?;
        }
        let node_cert_pem = match (&self.node_certs, csr_key) {
            (Some(certs), Some(key)) => {
                let cert = certs
                    .ca
                    .sign_node(&key, &registered.node_id, &name, certs.lifetime)
                    .map_err(csr_refused)?;
                self.issued(&registered.node_id, cert).await?
            }
            _ => String::new(),
        };
        self.skew
            .note_served(&registered.node_id, &agent_version, &skew, || name.clone());
        Ok(RegisterResponse {
            node_id: registered.node_id,
            node_secret: registered.node_secret,
            heartbeat_interval_seconds: self.heartbeat_interval_seconds,
            node_cert_pem,
        })
    }

    async fn renew_certificate(
        &self,
        request: RenewCertificateRequest,
    ) -> Result<RenewCertificateResponse, RpcError> {
        let Some(certs) = &self.node_certs else {
            return Err(RpcError::InvalidArgument {
                field: "csr_pem".into(),
                reason: "this controller serves plaintext gRPC and issues no certificates".into(),
            });
        };
        self.store
            .authenticate(&request.node_id, &request.node_secret)?;
        let key = certs.ca.check_csr(&request.csr_pem).map_err(csr_refused)?;
        let name = self
            .store
            .node(&request.node_id)
            .map(|node| node.name)
            .unwrap_or_default();
        let cert = certs
            .ca
            .sign_node(&key, &request.node_id, &name, certs.lifetime)
            .map_err(csr_refused)?;
        let node_cert_pem = self.issued(&request.node_id, cert).await?;
        Ok(RenewCertificateResponse { node_cert_pem })
    }

    /// The refusal is an event because an operator debugging a node that
    /// never shows up looks at the event list first; beyond the first of a
    /// period it is only counted (see [`refusals`]).
    async fn refused_join(&self, name: &str, source: &str, reason: &str) -> Result<(), RpcError> {
        if let Some(event) = self.refusals.note(name, source, reason) {
            self.store.record_event(event).await?;
        }
        Ok(())
    }

    async fn heartbeat(&self, request: HeartbeatRequest) -> Result<HeartbeatResponse, RpcError> {
        let input = validate_heartbeat(request)?;
        self.store
            .authenticate(&input.node_id, &input.node_secret)?;
        let node_name = |node_id: &str| {
            self.store
                .node(node_id)
                .map_or_else(|| node_id.to_string(), |node| node.name)
        };
        let skew = self
            .skew
            .admit(&input.agent_version, || node_name(&input.node_id))?;
        let node_id = input.node_id.clone();
        // Most beats are of supported agents: no copy for them.
        let unsupported = (!matches!(skew, crate::version_policy::Skew::Supported(_)))
            .then(|| input.agent_version.clone());
        self.store.heartbeat(input).await?;
        match unsupported {
            Some(agent_version) => {
                self.skew
                    .note_served(&node_id, &agent_version, &skew, || node_name(&node_id));
            }
            None => self.skew.note_supported(&node_id),
        }
        // The desired state lives in the resource store, whose per-node
        // generation is mirrored in memory: no SQLite read per heartbeat.
        let desired_generation = workload::desired_generation(&self.store, &node_id);
        Ok(HeartbeatResponse {
            heartbeat_interval_seconds: self.heartbeat_interval_seconds,
            desired_generation,
        })
    }

    async fn ship_logs(&self, request: ShipLogsRequest) -> Result<ShipLogsResponse, RpcError> {
        let input = validate_ship_logs(request)?;
        self.store
            .authenticate(&input.node_id, &input.node_secret)?;
        let accepted = self.store.ship_logs(input).await?;
        Ok(ShipLogsResponse {
            accepted: accepted as u32,
        })
    }
}

/// What a WatchDesiredState stream follows.
struct HintSource {
    store: Store,
    node_id: String,
    node_secret: String,
    generation: watch::Receiver<u64>,
    shutdown: CancellationToken,
    sent_first: bool,
}

/// Server-side stream of WatchDesiredState.
pub(crate) type HintStream =
    Pin<Box<dyn Stream<Item = Result<DesiredStateHint, Status>> + Send + 'static>>;

/// The current generation at once, then each change (bursts of commits
/// collapse into their latest generation), plus a repeat every
/// [`WATCH_KEEPALIVE`]. Ends on shutdown; fails when the node's credentials
/// no longer hold.
fn hint_stream(source: HintSource) -> HintStream {
    Box::pin(futures::stream::unfold(Some(source), |state| async move {
        let mut source = state?;
        if source.sent_first {
            tokio::select! {
                changed = source.generation.changed() => changed.ok()?,
                _ = tokio::time::sleep(WATCH_KEEPALIVE) => {
                    if !workload::still_authenticated(&source.store, &source.node_id, &source.node_secret) {
                        let error = RpcError::Unauthenticated(format!(
                            "node_secret: node {} is no longer known with this secret; register again",
                            source.node_id
                        ));
                        return Some((Err(error.into()), None));
                    }
                }
                _ = source.shutdown.cancelled() => return None,
            }
        }
        source.sent_first = true;
        let hint = DesiredStateHint {
            desired_generation: *source.generation.borrow_and_update(),
            keepalive_seconds: WATCH_KEEPALIVE.as_secs() as u32,
        };
        Some((Ok(hint), Some(source)))
    }))
}

#[tonic::async_trait]
impl NodeService for NodeRpc {
    type WatchDesiredStateStream = HintStream;
    type FetchApplianceStream = workload::ApplianceStream;
    type ExecChannelStream = Pin<Box<dyn Stream<Item = Result<ExecDown, Status>> + Send>>;

    async fn exec_channel(
        &self,
        mut request: Request<tonic::Streaming<ExecUp>>,
    ) -> Result<Response<Self::ExecChannelStream>, Status> {
        let first = request
            .get_mut()
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("ExecChannel: no first message"))?;
        self.check_peer(&request, &first.node_id)?;
        workload::authenticate(&self.store, &first.node_id, &first.node_secret)?;
        let node_id = first.node_id;
        let (stream_no, down) = self.exec_hub.attach(&node_id);
        tracing::info!(%node_id, stream = stream_no, "exec channel opened");
        // Recorded before the stream is answered, so a session the agent
        // could take can be forwarded here as soon as it could. A failure
        // costs only forwarding from the other replicas: this one still
        // serves the node, so the stream goes on.
        let attached = ChannelChange::Attached {
            node_id: node_id.clone(),
            stream: stream_no,
            url: self.advertise_url.clone(),
            attached_ms: (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64,
        };
        if let Err(err) = self.store.record_exec_channel(attached).await {
            tracing::warn!(%node_id, %err, "cannot record the exec channel for the other replicas");
        }
        let mut up = request.into_inner();
        let hub = self.exec_hub.clone();
        let store = self.store.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn({
            let node_id = node_id.clone();
            async move {
                loop {
                    let message = tokio::select! {
                        message = up.message() => message,
                        () = shutdown.cancelled() => break,
                    };
                    let Ok(Some(message)) = message else { break };
                    if message.frame_json.len() > MAX_EXEC_LINE_BYTES {
                        tracing::warn!(%node_id, "oversized exec frame from the agent; dropped");
                        continue;
                    }
                    match serde_json::from_slice::<ExecFrame>(&message.frame_json) {
                        // An agent only reports what the guest sent.
                        Ok(
                            frame @ (ExecFrame::Output { .. }
                            | ExecFrame::Credit { .. }
                            | ExecFrame::Exit { .. }),
                        ) => hub.deliver(&node_id, stream_no, &message.session_id, frame),
                        Ok(_) => {
                            tracing::warn!(%node_id, "exec frame of a kind agents do not send; dropped")
                        }
                        Err(err) => {
                            tracing::warn!(%node_id, %err, "exec frame that does not parse; dropped")
                        }
                    }
                }
                hub.detach(&node_id, stream_no);
                tracing::info!(%node_id, stream = stream_no, "exec channel closed");
                let detached = ChannelChange::Detached {
                    node_id: node_id.clone(),
                    stream: stream_no,
                };
                // At shutdown the writer may be gone: the row stays, and
                // forwarding to this replica fails (503) until the agent
                // attaches elsewhere, which replaces it.
                if let Err(err) = store.record_exec_channel(detached).await {
                    tracing::debug!(%node_id, %err, "cannot record the end of the exec channel");
                }
            }
        });
        let shutdown = self.shutdown.clone();
        // Until the hub drops the stream's sender (a newer stream of the
        // node replaced it) or the controller shuts down.
        let frames = futures::stream::unfold(down, move |mut down| {
            let shutdown = shutdown.clone();
            async move {
                tokio::select! {
                    frame = down.recv() => frame.map(|f| (Ok(f), down)),
                    () = shutdown.cancelled() => None,
                }
            }
        });
        Ok(Response::new(Box::pin(frames)))
    }

    async fn fetch_appliance(
        &self,
        request: Request<FetchApplianceRequest>,
    ) -> Result<Response<Self::FetchApplianceStream>, Status> {
        self.check_peer(&request, &request.get_ref().node_id)?;
        Ok(Response::new(
            workload::fetch_appliance(&self.store, request.into_inner()).await?,
        ))
    }

    async fn watch_desired_state(
        &self,
        request: Request<WatchDesiredStateRequest>,
    ) -> Result<Response<Self::WatchDesiredStateStream>, Status> {
        self.check_peer(&request, &request.get_ref().node_id)?;
        let request = request.into_inner();
        let generation = workload::watch_desired_generation(
            &self.store,
            &request.node_id,
            &request.node_secret,
        )?;
        Ok(Response::new(hint_stream(HintSource {
            store: self.store.clone(),
            node_id: request.node_id,
            node_secret: request.node_secret,
            generation,
            shutdown: self.shutdown.clone(),
            sent_first: false,
        })))
    }

    async fn get_desired_state(
        &self,
        request: Request<DesiredStateRequest>,
    ) -> Result<Response<DesiredState>, Status> {
        self.check_peer(&request, &request.get_ref().node_id)?;
        let mut state = workload::desired_state(&self.store, request.into_inner()).await?;
        state.flow_collector = self.flow_collector.clone().unwrap_or_default();
        Ok(Response::new(state))
    }

    async fn report_status(
        &self,
        request: Request<StatusReport>,
    ) -> Result<Response<StatusAck>, Status> {
        self.check_peer(&request, &request.get_ref().node_id)?;
        Ok(Response::new(
            workload::report_status(&self.store, request.into_inner()).await?,
        ))
    }

    async fn fetch_program(
        &self,
        request: Request<FetchProgramRequest>,
    ) -> Result<Response<ProgramBlob>, Status> {
        self.check_peer(&request, &request.get_ref().node_id)?;
        let blob = workload::fetch_program(&self.store, request.into_inner()).await?;
        let size = prost::Message::encoded_len(&blob);
        if size > self.max_response_message_bytes {
            let cap = self.max_response_message_bytes;
            tracing::warn!(
                program = %blob.name,
                size,
                cap,
                "a program is too large for --grpc-max-response-message-bytes"
            );
            return Err(Status::out_of_range(format!(
                "program {:?} ({} bytes) does not fit in this controller's gRPC answers: \
                 {size} bytes with its envelope, over --grpc-max-response-message-bytes {cap}. \
                 The controller's operator must raise that flag above the largest program \
                 (its default, 64 MiB + 1 MiB, fits any)",
                blob.name,
                blob.content.len()
            )));
        }
        Ok(Response::new(blob))
    }

    async fn post_result(
        &self,
        request: Request<PostResultRequest>,
    ) -> Result<Response<PostResultAck>, Status> {
        self.check_peer(&request, &request.get_ref().node_id)?;
        Ok(Response::new(
            workload::post_result(&self.store, request.into_inner()).await?,
        ))
    }

    async fn poll_tasks(
        &self,
        request: Request<PollTasksRequest>,
    ) -> Result<Response<TaskList>, Status> {
        self.check_peer(&request, &request.get_ref().node_id)?;
        Ok(Response::new(
            workload::poll_tasks(&self.store, &self.running_marks, request.into_inner()).await?,
        ))
    }

    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let peer_address = request
            .remote_addr()
            .map(|address| address.to_string())
            .unwrap_or_default();
        Ok(Response::new(
            self.register(request.into_inner(), peer_address).await?,
        ))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        self.check_peer(&request, &request.get_ref().node_id)?;
        Ok(Response::new(self.heartbeat(request.into_inner()).await?))
    }

    async fn ship_logs(
        &self,
        request: Request<ShipLogsRequest>,
    ) -> Result<Response<ShipLogsResponse>, Status> {
        self.check_peer(&request, &request.get_ref().node_id)?;
        Ok(Response::new(self.ship_logs(request.into_inner()).await?))
    }

    async fn renew_certificate(
        &self,
        request: Request<RenewCertificateRequest>,
    ) -> Result<Response<RenewCertificateResponse>, Status> {
        self.check_peer(&request, &request.get_ref().node_id)?;
        Ok(Response::new(
            self.renew_certificate(request.into_inner()).await?,
        ))
    }
}

fn csr_refused(e: crate::tls::CsrError) -> RpcError {
    RpcError::InvalidArgument {
        field: "csr_pem".into(),
        reason: e.0,
    }
}

fn capabilities(
    field: &str,
    c: Option<node_v1::Capabilities>,
) -> Result<http::Capabilities, FieldError> {
    let c = c.unwrap_or_default();
    for (name, list) in [
        ("libvirt_uris", &c.libvirt_uris),
        ("ovs_datapath_types", &c.ovs_datapath_types),
        ("qos_features", &c.qos_features),
        ("service_tools", &c.service_tools),
    ] {
        if list.len() > 64 {
            return Err(FieldError::new(
                format!("{field}.{name}"),
                format!("has {} entries; at most 64 are allowed", list.len()),
            ));
        }
        for (i, item) in list.iter().enumerate() {
            validation::short_text(&format!("{field}.{name}[{i}]"), item, 256)?;
        }
    }
    if !c.service_endpoint.is_empty()
        && c.service_endpoint
            .parse::<std::net::SocketAddrV4>()
            .is_err()
    {
        return Err(FieldError::new(
            format!("{field}.service_endpoint"),
            format!("{:?} is not IPv4:port", c.service_endpoint),
        ));
    }
    validation::short_text(&format!("{field}.flow_export"), &c.flow_export, 256)?;
    validation::short_text(&format!("{field}.datapath"), &c.datapath, 64)?;
    // Peers put this address into their tunnels' remote_ip: anything but a
    // plain unicast IPv4 would make every peer's switch refuse its plan.
    if !c.tunnel_address.is_empty() && !is_unicast(&c.tunnel_address) {
        return Err(FieldError::new(
            format!("{field}.tunnel_address"),
            format!("{:?} is not a unicast IPv4 address", c.tunnel_address),
        ));
    }
    // Researchers' wg-quick configurations carry this address as Endpoint.
    if !c.public_address.is_empty() && !is_unicast(&c.public_address) {
        return Err(FieldError::new(
            format!("{field}.public_address"),
            format!("{:?} is not a unicast IPv4 address", c.public_address),
        ));
    }
    let uplink = c
        .uplink
        .map(|u| uplink_status(&format!("{field}.uplink"), u))
        .transpose()?;
    Ok(http::Capabilities {
        libvirt_uris: c.libvirt_uris,
        namespace_backend: c.namespace_backend,
        ovs_datapath_types: c.ovs_datapath_types,
        qos_features: c.qos_features,
        service_tools: c.service_tools,
        service_endpoint: c.service_endpoint,
        flow_export: c.flow_export,
        uplink,
        datapath: c.datapath,
        tunnel_address: c.tunnel_address,
        control_protocol_version: c.control_protocol_version,
        public_address: c.public_address,
    })
}

/// A plain unicast IPv4 address (what peers can send to).
fn is_unicast(text: &str) -> bool {
    text.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| {
        !(ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback())
    })
}

fn uplink_status(field: &str, u: node_v1::UplinkStatus) -> Result<http::UplinkStatus, FieldError> {
    validation::short_text(&format!("{field}.name"), &u.name, 64)?;
    validation::short_text(&format!("{field}.mode"), &u.mode, 64)?;
    validation::short_text(&format!("{field}.active_member"), &u.active_member, 64)?;
    if u.members.len() > 64 {
        return Err(FieldError::new(
            format!("{field}.members"),
            format!("has {} entries; at most 64 are allowed", u.members.len()),
        ));
    }
    let mut members = Vec::with_capacity(u.members.len());
    for (i, m) in u.members.into_iter().enumerate() {
        validation::short_text(&format!("{field}.members[{i}].name"), &m.name, 64)?;
        members.push(http::UplinkMember {
            name: m.name,
            link_up: m.link_up,
        });
    }
    Ok(http::UplinkStatus {
        name: u.name,
        mode: u.mode,
        members,
        active_member: u.active_member,
    })
}

fn resources(
    field: &str,
    u: Option<node_v1::ResourceUsage>,
) -> Result<http::Resources, FieldError> {
    let u = u.unwrap_or_default();
    if !(u.cpu_used_percent.is_finite() && (0.0..=100.0).contains(&u.cpu_used_percent)) {
        return Err(FieldError::new(
            format!("{field}.cpu_used_percent"),
            format!("is {}; it must be between 0 and 100", u.cpu_used_percent),
        ));
    }
    if u.memory_used_bytes > u.memory_total_bytes {
        return Err(FieldError::new(
            format!("{field}.memory_used_bytes"),
            "is larger than memory_total_bytes",
        ));
    }
    if u.disk_used_bytes > u.disk_total_bytes {
        return Err(FieldError::new(
            format!("{field}.disk_used_bytes"),
            "is larger than disk_total_bytes",
        ));
    }
    Ok(http::Resources {
        cpu_count: u.cpu_count,
        cpu_used_percent: u.cpu_used_percent,
        memory_total_bytes: u.memory_total_bytes,
        memory_used_bytes: u.memory_used_bytes,
        disk_total_bytes: u.disk_total_bytes,
        disk_used_bytes: u.disk_used_bytes,
        network_rx_bytes: u.network_rx_bytes,
        network_tx_bytes: u.network_tx_bytes,
    })
}

fn validate_register(
    r: RegisterRequest,
    join: JoinCredential,
    peer_address: String,
) -> Result<RegisterInput, FieldError> {
    validation::dns_label("name", &r.name)?;
    let node_id = if r.node_id.is_empty() {
        None
    } else {
        validation::node_id("node_id", &r.node_id)?;
        Some(r.node_id)
    };
    validation::short_text("agent_version", &r.agent_version, 64)?;
    validation::short_text("management_address", &r.management_address, 255)?;
    let labels: BTreeMap<String, String> = r.labels.into_iter().collect();
    validation::labels("labels", &labels)?;
    validation::short_text("node_secret", &r.node_secret, 256)?;
    Ok(RegisterInput {
        node_secret: r.node_secret,
        join,
        peer_address,
        name: r.name,
        node_id,
        agent_version: r.agent_version,
        capabilities: capabilities("capabilities", r.capabilities)?,
        resources: resources("usage", r.usage)?,
        labels,
        management_address: r.management_address,
    })
}

fn credentials(node_id: &str, node_secret: &str) -> Result<(), FieldError> {
    if node_id.is_empty() {
        return Err(FieldError::new(
            "node_id",
            "must not be empty; register first",
        ));
    }
    validation::node_id("node_id", node_id)?;
    if node_secret.is_empty() {
        return Err(FieldError::new("node_secret", "must not be empty"));
    }
    Ok(())
}

fn validate_heartbeat(r: HeartbeatRequest) -> Result<HeartbeatInput, FieldError> {
    credentials(&r.node_id, &r.node_secret)?;
    validation::short_text("agent_version", &r.agent_version, 64)?;
    Ok(HeartbeatInput {
        capabilities: capabilities("capabilities", r.capabilities)?,
        resources: resources("usage", r.usage)?,
        node_id: r.node_id,
        node_secret: r.node_secret,
        sequence: r.sequence,
        agent_version: r.agent_version,
        observed_generation: r.observed_generation,
    })
}

fn validate_ship_logs(r: ShipLogsRequest) -> Result<ShipLogsInput, FieldError> {
    credentials(&r.node_id, &r.node_secret)?;
    if r.lines.len() > MAX_LOG_LINES_PER_CALL {
        return Err(FieldError::new(
            "lines",
            format!(
                "has {} lines; send at most {MAX_LOG_LINES_PER_CALL} per call",
                r.lines.len()
            ),
        ));
    }
    let mut lines = Vec::with_capacity(r.lines.len());
    for (i, line) in r.lines.into_iter().enumerate() {
        let time = OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(line.timestamp_unix_ms) * 1_000_000,
        )
        .ok()
        .filter(|t| (1970..=9999).contains(&t.year()))
        .ok_or_else(|| {
            FieldError::new(
                format!("lines[{i}].timestamp_unix_ms"),
                format!(
                    "{} is not a time between 1970 and 9999",
                    line.timestamp_unix_ms
                ),
            )
        })?;
        let level = line.level.to_ascii_lowercase();
        if !LOG_LEVELS.contains(&level.as_str()) {
            return Err(FieldError::new(
                format!("lines[{i}].level"),
                format!("{:?} is not one of {}", line.level, LOG_LEVELS.join(", ")),
            ));
        }
        validation::short_text(&format!("lines[{i}].target"), &line.target, 256)?;
        if line.message.len() > MAX_LOG_MESSAGE {
            return Err(FieldError::new(
                format!("lines[{i}].message"),
                format!(
                    "is {} bytes long; at most {MAX_LOG_MESSAGE} are allowed",
                    line.message.len()
                ),
            ));
        }
        lines.push(http::LogLine {
            time: rfc3339(time),
            level,
            target: line.target,
            message: line.message,
        });
    }
    Ok(ShipLogsInput {
        node_id: r.node_id,
        node_secret: r.node_secret,
        lines,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_register_names_the_field() {
        let request = RegisterRequest {
            join_token: "t".into(),
            name: "Bad_Name".into(),
            ..Default::default()
        };
        let status = Status::from(RpcError::from(
            validate_register(request, JoinCredential::Default, String::new()).unwrap_err(),
        ));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().starts_with("name: "),
            "{}",
            status.message()
        );
    }

    #[test]
    fn cpu_percent_out_of_range_is_rejected() {
        let request = HeartbeatRequest {
            node_id: uuid::Uuid::new_v4().to_string(),
            node_secret: "s".into(),
            usage: Some(node_v1::ResourceUsage {
                cpu_used_percent: f64::NAN,
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = validate_heartbeat(request).unwrap_err();
        assert_eq!(err.field, "usage.cpu_used_percent");
    }

    #[test]
    fn log_level_and_time_are_checked() {
        let request = |level: &str, ms: i64| ShipLogsRequest {
            node_id: uuid::Uuid::new_v4().to_string(),
            node_secret: "s".into(),
            lines: vec![node_v1::LogLine {
                timestamp_unix_ms: ms,
                level: level.into(),
                target: "t".into(),
                message: "m".into(),
            }],
        };
        assert_eq!(
            validate_ship_logs(request("loud", 0)).unwrap_err().field,
            "lines[0].level"
        );
        assert_eq!(
            validate_ship_logs(request("info", -1)).unwrap_err().field,
            "lines[0].timestamp_unix_ms"
        );
        let ok = validate_ship_logs(request("INFO", 1_700_000_000_000)).unwrap();
        assert_eq!(ok.lines[0].time, "2023-11-14T22:13:20Z");
    }
}
