//! Register + heartbeat loop and the log shipper.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use measurelab_api::node_v1::node_service_client::NodeServiceClient;
use measurelab_api::node_v1::{
    Capabilities, HeartbeatRequest, LogLine, RegisterRequest, RenewCertificateRequest,
    ShipLogsRequest, WatchDesiredStateRequest,
};
use time::format_description::well_known::Rfc3339;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::Code;
use tower_04::discover::Change;

use crate::capabilities::{self, ProbeTargets};
use crate::config::{AgentConfig, AgentError};
use crate::controller_tls::{self, ControllerTlsError, NodeCert};
use crate::identity::{self, Identity};
use crate::logs::{self, LogBuffer};
use crate::reconcile::{
    open_backends, run_loop, Backends, GrpcControlPlane, LazySwitch, LoopHandles, Reconciler,
    ReconcilerConfig,
};
use crate::usage::UsageSampler;
use measurelab_backoff::Backoff;

/// Interval used until the controller tells us its own.
/// Largest gRPC answer accepted: a 64 MiB program plus its envelope.
const MAX_PROGRAM_MESSAGE_BYTES: usize = 64 * 1024 * 1024 + 64 * 1024;
const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// First retry delay after a failure.
const INITIAL_BACKOFF: Duration = Duration::from_millis(250);
/// A refused registration is a configuration problem; retry it slowly so the
/// controller's event log is not flooded, but keep trying so fixing the
/// token on the controller side is enough.
const REFUSED_RETRY_CAP: Duration = Duration::from_secs(30);
/// Per-request deadline; a hung controller counts as unreachable.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often capabilities are re-probed: an operator may install or remove a
/// hypervisor, and ovs-vswitchd fills in datapath types after it starts.
const CAPABILITY_REFRESH: Duration = Duration::from_secs(30);
/// How often the switch's datapath and uplink (bond members, active member)
/// are re-read: a failover should reach the controller within a heartbeat.
const SWITCH_STATUS_POLL: Duration = Duration::from_secs(2);
/// Lines per ShipLogs call.
const LOG_BATCH: usize = 500;
/// How often queued log lines are shipped.
const LOG_SHIP_PERIOD: Duration = Duration::from_secs(1);
const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Longest retry delay of the WatchDesiredState stream after a failure.
const WATCH_RETRY_CAP: Duration = Duration::from_secs(30);
/// A controller without WatchDesiredState (older version) is asked again this
/// rarely: a rolling upgrade may replace it, and heartbeats carry the
/// generation meanwhile.
const WATCH_UNSUPPORTED_RETRY: Duration = Duration::from_secs(300);
/// Silence on the stream longer than this many keepalive periods means the
/// connection is dead.
const WATCH_MISSED_KEEPALIVES: u32 = 3;
/// Used until the controller's first hint says its keepalive period.
const WATCH_DEFAULT_SILENCE: Duration = Duration::from_secs(60);

/// How a call to the controller failed, from the agent's point of view.
#[derive(Debug)]
enum Failure {
    /// Network trouble or the controller is down: retry soon.
    Unreachable(tonic::Status),
    /// The controller does not accept our identity: register again.
    IdentityUnknown(tonic::Status),
    /// The controller refuses the registration itself (join token, name).
    Refused(tonic::Status),
}

fn classify(status: tonic::Status) -> Failure {
    match status.code() {
        Code::Unauthenticated | Code::NotFound => Failure::IdentityUnknown(status),
        Code::PermissionDenied
        | Code::InvalidArgument
        | Code::AlreadyExists
        | Code::FailedPrecondition => Failure::Refused(status),
        _ => Failure::Unreachable(status),
    }
}

pub(crate) async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    std::fs::create_dir_all(&config.state_dir).map_err(|source| AgentError::StateDir {
        path: config.state_dir.clone(),
        source,
    })?;
    let persisted = identity::load(&config.state_dir)?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = shutdown_tx.send(true);
    });

    let metrics_server = match config.metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| AgentError::InvalidConfig {
                    field: "metrics_listen".into(),
                    reason: format!("cannot listen on {addr}: {source}"),
                })?;
            Some(tokio::spawn(crate::metrics::serve(
                listener,
                shutdown_rx.clone(),
            )))
        }
        None => None,
    };
    // Validated in AgentConfig::validate, so this cannot fail here.
    let endpoints = config
        .controller_endpoints()?
        .into_iter()
        .map(|url| match Endpoint::from_shared(url.clone()) {
            Ok(e) => Ok((url, e.connect_timeout(CONNECT_TIMEOUT).timeout(RPC_TIMEOUT))),
            Err(e) => Err(AgentError::InvalidConfig {
                field: "controller".into(),
                reason: format!("{url:?}: {e}"),
            }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ca_pem = if config.controller_tls() {
        match pinned_ca(&config, shutdown_rx.clone()).await? {
            Some(pem) => Some(pem),
            // Shut down while the controller was unreachable.
            None => return Ok(()),
        }
    } else {
        None
    };
    let (channel, controller_channel) = ControllerChannel::new(endpoints, ca_pem)?;
    // FetchProgram answers carry whole programs (the controller accepts up to
    // 64 MiB); tonic's default 4 MiB decode limit refused ordinary binaries.
    let client =
        NodeServiceClient::new(channel).max_decoding_message_size(MAX_PROGRAM_MESSAGE_BYTES);

    let targets = ProbeTargets {
        libvirt_uris: config.libvirt_uris.clone(),
        ovsdb: config.ovsdb.clone(),
    };
    let initial_caps = capabilities::probe(&targets).await;
    tracing::info!(
        libvirt = ?initial_caps.libvirt_uris,
        namespace_backend = initial_caps.namespace_backend,
        ovs = ?initial_caps.ovs_datapath_types,
        tools = ?initial_caps.service_tools,
        "probed capabilities"
    );
    let underlay = config.tunnel_ip.map(crate::underlay::check_and_log);
    // Decided once: guests keep the MTU they were created with, so a later
    // change of the underlay would leave old and new guests disagreeing.
    let guest_mtu = crate::underlay::choose_guest_mtu_and_log(config.guest_mtu, underlay.as_ref());
    let (caps_tx, caps_rx) = watch::channel(initial_caps);
    let refresher = tokio::spawn(refresh_capabilities(targets, caps_tx, shutdown_rx.clone()));
    let (switch_status_tx, switch_status_rx) = watch::channel(SwitchStatus::default());
    let switch_poller = config.ovsdb.clone().map(|target| {
        tokio::spawn(poll_switch_status(
            target,
            config.name.clone(),
            config.bridge.clone(),
            switch_status_tx,
            shutdown_rx.clone(),
        ))
    });

    let (identity_tx, identity_rx) = watch::channel(None::<Identity>);
    let identity_rx_for_reconcile = identity_rx.clone();
    let (interval_tx, interval_rx) = watch::channel(DEFAULT_HEARTBEAT_INTERVAL);
    let shipper = tokio::spawn(ship_logs(
        client.clone(),
        logs::process_buffer(),
        identity_rx,
        interval_rx,
        shutdown_rx.clone(),
    ));

    // The reconcile loop: desired generation in from heartbeats, observed
    // generation out to them.
    let (desired_generation_tx, desired_generation_rx) = watch::channel(0u64);
    let (observed_generation_tx, observed_generation_rx) = watch::channel(0u64);
    // Heartbeats carry the desired generation too; the stream only makes a
    // change known sooner, so losing it costs latency, not correctness.
    let follower = tokio::spawn(follow_desired_state(
        client.clone(),
        identity_tx.subscribe(),
        desired_generation_tx.clone(),
        shutdown_rx.clone(),
    ));
    // One set of guest channels, shared by the reconcile loop (which opens
    // them) and the exec relay (which runs sessions over them).
    let guest_channels = crate::guest_channel::GuestChannels::new();
    let exec_relay = tokio::spawn(crate::exec_relay::follow_exec_channel(
        client.clone(),
        identity_tx.subscribe(),
        guest_channels.clone(),
        shutdown_rx.clone(),
    ));
    let (service_status_tx, service_status_rx) = watch::channel(None);
    let service_host = config.service_host.clone().map(|settings| {
        tokio::spawn(crate::service_host::run(
            settings,
            crate::service_host::ServiceHostContext {
                node_name: config.name.clone(),
                ovsdb: config.ovsdb.clone(),
                bridge: config.bridge.clone(),
                owner: config.name.clone(),
                state_dir: config.state_dir.clone(),
                control: Arc::new(GrpcControlPlane::new(
                    client.clone(),
                    identity_rx_for_reconcile.clone(),
                )),
                desired_generation: desired_generation_rx.clone(),
                shutdown: shutdown_rx.clone(),
                status: service_status_tx,
            },
        ))
    });
    let flow_export_status = crate::reconcile::FlowExportStatus::default();
    let reconciler = tokio::spawn(start_reconcile(
        config.clone(),
        guest_mtu,
        flow_export_status.clone(),
        GrpcControlPlane::new(client.clone(), identity_rx_for_reconcile),
        guest_channels,
        LoopHandles {
            desired_generation: desired_generation_rx,
            observed_generation: observed_generation_tx,
            shutdown: shutdown_rx.clone(),
        },
    ));

    let mut session = Session {
        client,
        channel: controller_channel,
        node_cert: None,
        config,
        desired_generation_tx,
        observed_generation_rx,
        node_id_hint: persisted
            .as_ref()
            .map(|i| i.node_id.clone())
            .unwrap_or_default(),
        secret_hint: persisted.map(|i| i.node_secret).unwrap_or_default(),
        identity: None,
        identity_tx,
        interval: DEFAULT_HEARTBEAT_INTERVAL,
        interval_tx,
        sampler: UsageSampler::new(),
        sequence: 0,
        caps_rx,
        service_status_rx,
        flow_export_status,
        switch_status_rx,
    };
    let result = session.run_until(shutdown_rx).await;
    refresher.abort();
    if let Some(poller) = switch_poller {
        poller.abort();
    }
    follower.abort();
    exec_relay.abort();
    if let Some(server) = metrics_server {
        server.abort();
    }
    // The loop stops itself on shutdown; guests keep running (they are
    // adopted by the next agent).
    let _ = tokio::time::timeout(Duration::from_secs(5), reconciler).await;
    if let Some(service_host) = service_host {
        let _ = tokio::time::timeout(Duration::from_secs(5), service_host).await;
    }
    // Give the shipper a moment to flush the last lines (it stops itself on
    // shutdown after one final attempt).
    let _ = tokio::time::timeout(Duration::from_secs(2), shipper).await;
    result
}

/// The CA to trust: the one pinned earlier, or, on the first connection,
/// the one in the controller's chain whose fingerprint the join bundle
/// names. `None`: shut down while waiting for the controller.
async fn pinned_ca(
    config: &AgentConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Option<String>, AgentError> {
    let pin = config.ca_sha256.as_deref();
    if let Some(pem) = controller_tls::stored_ca(&config.state_dir, pin)? {
        return Ok(Some(pem));
    }
    let Some(pin) = pin else {
        return Err(AgentError::InvalidConfig {
            field: "controller".into(),
            reason: format!(
                "{:?} is https:// but no controller CA is pinned in {}: join with a bundle \
                 (measurelab join-bundle on the controller, then --join-bundle)",
                config.controller,
                config.state_dir.display()
            ),
        });
    };
    let endpoints = config.controller_endpoints()?;
    let mut backoff = Backoff::new(INITIAL_BACKOFF, REFUSED_RETRY_CAP);
    loop {
        // Each endpoint in turn: one answering is enough, they share a CA.
        // A wrong fingerprint is not skipped over: the bundle and that
        // controller disagree, which an operator must see.
        for endpoint in &endpoints {
            match controller_tls::fetch_ca(endpoint, pin).await {
                Ok(pem) => {
                    controller_tls::store_ca(&config.state_dir, &pem)?;
                    tracing::info!(fingerprint = pin, %endpoint, "pinned the controller's CA");
                    return Ok(Some(pem));
                }
                Err(e @ ControllerTlsError::Unreachable { .. }) => {
                    tracing::warn!(error = %e, "controller unreachable");
                }
                Err(e) => return Err(e.into()),
            }
        }
        let delay = backoff.next_delay();
        tracing::warn!(
            retry_in_ms = delay.as_millis() as u64,
            "no controller answered; trying again"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|stop| *stop) => return Ok(None),
        }
    }
}

/// The one channel every part of the agent shares: a balance channel that
/// holds one controller endpoint at a time, so switching it (a new client
/// certificate after registration or renewal, or the next controller after
/// the current one stopped answering) takes effect under every clone of the
/// client at once.
///
/// Only one endpoint is in the balancer, not all of them: tonic's balance
/// channel connects lazily, and a lazy connection whose connect failed
/// still reports ready (tonic 0.12 `Reconnect::poll_ready` stores the error
/// and returns it from the call), so tower's p2c balancer keeps sending a
/// share of the requests to a dead controller
/// (`a_balance_channel_keeps_routing_to_a_dead_endpoint` in tests/session.rs
/// shows it). Failing over in the session instead, when a heartbeat or
/// registration finds the controller unreachable, sends every request to
/// the same controller, a live one once the switch is made.
struct ControllerChannel {
    changes: tokio::sync::mpsc::Sender<Change<u64, Endpoint>>,
    /// Every configured endpoint (URL for logs, endpoint without TLS).
    endpoints: Vec<(String, Endpoint)>,
    /// Index into `endpoints` of the one in the balancer.
    active: usize,
    /// The pinned CA (TLS only).
    ca: Option<Certificate>,
    /// The certificate presented now (TLS, once registered).
    cert: Option<NodeCert>,
    /// Balancer key of the active endpoint.
    generation: u64,
}

fn channel_closed<T>(_: T) -> AgentError {
    AgentError::InvalidConfig {
        field: "controller".into(),
        reason: "the channel's balancer stopped".into(),
    }
}

impl ControllerChannel {
    fn new(
        endpoints: Vec<(String, Endpoint)>,
        ca_pem: Option<String>,
    ) -> Result<(Channel, Self), AgentError> {
        let (channel, changes) = Channel::balance_channel(4);
        let this = ControllerChannel {
            changes,
            endpoints,
            active: 0,
            ca: ca_pem.map(Certificate::from_pem),
            cert: None,
            generation: 0,
        };
        let first = this.endpoint(0)?;
        // A fresh channel has room: the capacity is 4.
        this.changes
            .try_send(Change::Insert(0, first))
            .map_err(channel_closed)?;
        Ok((channel, this))
    }

    fn is_tls(&self) -> bool {
        self.ca.is_some()
    }

    /// URL of the endpoint in use.
    fn active_url(&self) -> &str {
        &self.endpoints[self.active].0
    }

    /// Endpoint `index`, with TLS and the current certificate if any.
    fn endpoint(&self, index: usize) -> Result<Endpoint, AgentError> {
        let endpoint = &self.endpoints[index].1;
        match &self.ca {
            Some(ca) => tls_endpoint(endpoint, ca, self.cert.as_ref()),
            None => Ok(endpoint.clone()),
        }
    }

    /// Put endpoint `index` in the balancer in place of the current one.
    async fn switch_to(&mut self, index: usize) -> Result<(), AgentError> {
        let endpoint = self.endpoint(index)?;
        let next = self.generation + 1;
        // Insert before remove: there is never a moment without endpoint.
        // The balancer takes both before it routes the next request.
        self.changes
            .send(Change::Insert(next, endpoint))
            .await
            .map_err(channel_closed)?;
        self.changes
            .send(Change::Remove(self.generation))
            .await
            .map_err(channel_closed)?;
        self.generation = next;
        self.active = index;
        Ok(())
    }

    /// Connect with `cert` from now on (the old connection is dropped).
    async fn present(&mut self, cert: &NodeCert) -> Result<(), AgentError> {
        if self.ca.is_none() {
            return Ok(());
        }
        self.cert = Some(cert.clone());
        self.switch_to(self.active).await
    }

    /// Connect without a client certificate from now on: an expired one
    /// fails every handshake, Register's too, which needs none.
    async fn withdraw_cert(&mut self) -> Result<(), AgentError> {
        if self.cert.take().is_none() {
            return Ok(());
        }
        self.switch_to(self.active).await
    }

    /// The current controller stopped answering: go on to the next one
    /// (round robin). With one endpoint nothing changes: its connection
    /// reconnects by itself.
    async fn fail_over(&mut self) -> Result<(), AgentError> {
        if self.endpoints.len() < 2 {
            return Ok(());
        }
        let from = self.active_url().to_string();
        self.switch_to((self.active + 1) % self.endpoints.len())
            .await?;
        tracing::warn!(%from, to = %self.active_url(), "controller unreachable; trying the next one");
        Ok(())
    }
}

fn tls_endpoint(
    endpoint: &Endpoint,
    ca: &Certificate,
    cert: Option<&NodeCert>,
) -> Result<Endpoint, AgentError> {
    // tonic is built without root stores: the pinned CA is the only trust.
    let mut tls = ClientTlsConfig::new().ca_certificate(ca.clone());
    if let Some(cert) = cert {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            &cert.cert_pem,
            &cert.key_pem,
        ));
    }
    endpoint
        .clone()
        .tls_config(tls)
        .map_err(|e| AgentError::InvalidConfig {
            field: "controller".into(),
            reason: format!("TLS: {e}"),
        })
}

fn tls_failure(e: impl std::fmt::Display) -> Failure {
    Failure::Refused(tonic::Status::internal(format!("node certificate: {e}")))
}

struct Session {
    client: NodeServiceClient<Channel>,
    channel: ControllerChannel,
    /// The node's current certificate (TLS only).
    node_cert: Option<NodeCert>,
    config: AgentConfig,
    /// Id to ask for when registering: the persisted one, so a restarted or
    /// forgotten node keeps its identity.
    node_id_hint: String,
    /// Secret of the last registration (identity.json): the proof that
    /// lets this agent register again under its name, which the join token
    /// alone does not.
    secret_hint: String,
    identity: Option<Identity>,
    identity_tx: watch::Sender<Option<Identity>>,
    interval: Duration,
    interval_tx: watch::Sender<Duration>,
    sampler: UsageSampler,
    sequence: u64,
    caps_rx: watch::Receiver<Capabilities>,
    /// The service host's endpoint, added to the probed capabilities.
    service_status_rx: watch::Receiver<crate::service_host::ServiceStatus>,
    /// What the switch exports now, set by the reconcile loop.
    flow_export_status: crate::reconcile::FlowExportStatus,
    desired_generation_tx: watch::Sender<u64>,
    observed_generation_rx: watch::Receiver<u64>,
    /// The bridge's datapath and the uplink, from the switch status poll.
    switch_status_rx: watch::Receiver<SwitchStatus>,
}

/// Datapath in use and uplink state, as `Capabilities.datapath` / `.uplink`.
type SwitchStatus = (String, Option<measurelab_api::node_v1::UplinkStatus>);

impl Session {
    async fn run_until(&mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), AgentError> {
        let mut backoff = Backoff::new(INITIAL_BACKOFF, self.interval);
        let mut refused_backoff = Backoff::new(INITIAL_BACKOFF, REFUSED_RETRY_CAP);
        loop {
            let started = Instant::now();
            let registering = self.identity.is_none();
            let outcome = if registering {
                self.register().await
            } else {
                self.heartbeat().await
            };
            let wait = match outcome {
                // Heartbeat at once after registering, so the controller has
                // a heartbeat time and live usage without waiting an interval.
                Ok(()) if registering => Duration::ZERO,
                Ok(()) => {
                    backoff.set_cap(self.interval);
                    backoff.reset();
                    refused_backoff.reset();
                    self.interval.saturating_sub(started.elapsed())
                }
                Err(Failure::Unreachable(status)) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        controller = %self.channel.active_url(),
                        error = %status.message(),
                        code = ?status.code(),
                        retry_in_ms = delay.as_millis() as u64,
                        "controller unreachable"
                    );
                    // The next attempt goes to the next controller; the
                    // backoff still paces attempts, so a list of dead
                    // controllers is not a hot loop.
                    if let Err(e) = self.channel.fail_over().await {
                        tracing::warn!(error = %e, "cannot switch to the next controller");
                    }
                    delay
                }
                Err(Failure::IdentityUnknown(status)) if self.identity.is_some() => {
                    tracing::warn!(
                        error = %status.message(),
                        "controller does not accept this node's identity; registering again"
                    );
                    self.identity = None;
                    let _ = self.identity_tx.send(None);
                    Duration::ZERO
                }
                Err(Failure::IdentityUnknown(status)) | Err(Failure::Refused(status)) => {
                    let delay = refused_backoff.next_delay();
                    // A heartbeat is refused too, e.g. FAILED_PRECONDITION
                    // for an agent older than its controller serves: the
                    // message says what to do, and the slow backoff keeps
                    // the node asking until someone does it.
                    let call = if registering {
                        "registration"
                    } else {
                        "heartbeat"
                    };
                    tracing::error!(
                        name = %self.config.name,
                        error = %status.message(),
                        code = ?status.code(),
                        retry_in_ms = delay.as_millis() as u64,
                        "controller refused {call}"
                    );
                    delay
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                // Announce a new service endpoint at once rather than an
                // interval later: service_host tasks wait for it.
                _ = service_status_changed(&mut self.service_status_rx) => {}
                // A failover (or a member's link change) is told at once.
                _ = switch_status_changed(&mut self.switch_status_rx) => {}
                _ = shutdown.wait_for(|stop| *stop) => {
                    tracing::info!("agent shutting down");
                    return Ok(());
                }
            }
        }
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = self.caps_rx.borrow().clone();
        crate::service_host::annotate(&mut caps, &self.service_status_rx.borrow());
        caps.flow_export = self.flow_export_status.get();
        (caps.datapath, caps.uplink) = self.switch_status_rx.borrow().clone();
        caps.tunnel_address = self
            .config
            .tunnel_ip
            .map(|ip| ip.to_string())
            .unwrap_or_default();
        caps.public_address = self
            .config
            .public_address
            .map(|ip| ip.to_string())
            .unwrap_or_default();
        caps
    }

    fn usage(&mut self) -> Option<measurelab_api::node_v1::ResourceUsage> {
        match self.sampler.sample(&self.config.state_dir) {
            Ok(usage) => Some(usage),
            Err(e) => {
                tracing::warn!(error = %e, "cannot sample resource use");
                None
            }
        }
    }

    async fn register(&mut self) -> Result<(), Failure> {
        // A new key at each registration: it never has to sit on disk.
        let key_and_csr = if self.channel.is_tls() {
            Some(controller_tls::new_key_and_csr(&self.config.name).map_err(tls_failure)?)
        } else {
            None
        };
        let capabilities = Some(self.capabilities());
        let usage = self.usage();
        let request = RegisterRequest {
            join_token: self.config.join_token.clone(),
            name: self.config.name.clone(),
            node_id: self.node_id_hint.clone(),
            agent_version: AGENT_VERSION.to_string(),
            capabilities,
            usage,
            labels: self.config.labels.clone().into_iter().collect(),
            management_address: self.config.management_address.clone(),
            node_secret: self.secret_hint.clone(),
            csr_pem: key_and_csr
                .as_ref()
                .map(|(_, csr)| csr.clone())
                .unwrap_or_default(),
        };
        let response = self
            .client
            .register(request)
            .await
            .map_err(classify)?
            .into_inner();
        if let Some((key_pem, _)) = key_and_csr {
            if response.node_cert_pem.is_empty() {
                return Err(tls_failure(
                    "the controller answered the registration without one",
                ));
            }
            let cert =
                NodeCert::issued(response.node_cert_pem.clone(), key_pem).map_err(tls_failure)?;
            self.channel.present(&cert).await.map_err(tls_failure)?;
            tracing::info!(renew_at = %cert.renew_at, "got a node certificate");
            self.node_cert = Some(cert);
        }
        let identity = Identity {
            node_id: response.node_id,
            node_secret: response.node_secret,
        };
        if let Err(e) = identity::store(&self.config.state_dir, &identity) {
            // Without the file a restart would make a new node; still run,
            // but say so loudly.
            tracing::error!(error = %e, "cannot persist node identity");
        }
        if !self.node_id_hint.is_empty() && self.node_id_hint != identity.node_id {
            tracing::warn!(old = %self.node_id_hint, new = %identity.node_id, "controller assigned a new node id");
        }
        tracing::info!(node_id = %identity.node_id, name = %self.config.name, "registered with the controller");
        self.node_id_hint = identity.node_id.clone();
        self.secret_hint = identity.node_secret.clone();
        self.set_interval(response.heartbeat_interval_seconds);
        self.identity = Some(identity.clone());
        let _ = self.identity_tx.send(Some(identity));
        Ok(())
    }

    async fn heartbeat(&mut self) -> Result<(), Failure> {
        let Some(identity) = self.identity.clone() else {
            return Err(Failure::IdentityUnknown(tonic::Status::unauthenticated(
                "not registered",
            )));
        };
        if self.node_cert.as_ref().is_some_and(NodeCert::expired) {
            return self.register_after_expiry().await;
        }
        self.renew_certificate_if_due(&identity).await;
        self.sequence += 1;
        let capabilities = Some(self.capabilities());
        let usage = self.usage();
        let request = HeartbeatRequest {
            node_id: identity.node_id,
            node_secret: identity.node_secret,
            sequence: self.sequence,
            agent_version: AGENT_VERSION.to_string(),
            capabilities,
            usage,
            observed_generation: *self.observed_generation_rx.borrow(),
        };
        let response = self.client.heartbeat(request).await;
        crate::metrics::metrics().observe_heartbeat(response.is_ok());
        let response = response.map_err(classify)?.into_inner();
        self.set_interval(response.heartbeat_interval_seconds);
        let desired = response.desired_generation;
        self.desired_generation_tx.send_if_modified(|current| {
            let changed = *current != desired;
            *current = desired;
            changed
        });
        Ok(())
    }

    /// The node certificate expired before it could be renewed (the host
    /// was suspended, or the controller unreachable, through the last third
    /// of its life). Every call with it fails the TLS handshake, which
    /// looks like an unreachable controller, so say what happened and get
    /// a new certificate the way a restarted agent does: register again
    /// with the node secret, without a client certificate.
    async fn register_after_expiry(&mut self) -> Result<(), Failure> {
        let expired_at = self
            .node_cert
            .take()
            .and_then(|cert| cert.not_after.format(&Rfc3339).ok())
            .unwrap_or_default();
        tracing::error!(
            %expired_at,
            state_dir = %self.config.state_dir.display(),
            "the node certificate expired at {expired_at} before it could be renewed; \
             registering again with the node secret in identity.json to get a new one. \
             If the controller refuses, re-join this node: give the agent a new join bundle \
             (`measurelab join-bundle` on the controller) and restart it"
        );
        self.identity = None;
        let _ = self.identity_tx.send(None);
        self.channel.withdraw_cert().await.map_err(tls_failure)?;
        self.register().await
    }

    /// Renew the node certificate two thirds into its lifetime. A failure
    /// is only logged: the current certificate still has a third of its
    /// life, and the next heartbeat tries again.
    async fn renew_certificate_if_due(&mut self, identity: &Identity) {
        if !self.node_cert.as_ref().is_some_and(NodeCert::due) {
            return;
        }
        let renewed = async {
            let (key_pem, csr_pem) =
                controller_tls::new_key_and_csr(&self.config.name).map_err(|e| e.to_string())?;
            let response = self
                .client
                .renew_certificate(RenewCertificateRequest {
                    node_id: identity.node_id.clone(),
                    node_secret: identity.node_secret.clone(),
                    csr_pem,
                })
                .await
                .map_err(|status| status.message().to_string())?
                .into_inner();
            NodeCert::issued(response.node_cert_pem, key_pem).map_err(|e| e.to_string())
        };
        match renewed.await {
            Ok(cert) => match self.channel.present(&cert).await {
                Ok(()) => {
                    tracing::info!(renew_at = %cert.renew_at, "renewed the node certificate");
                    self.node_cert = Some(cert);
                }
                Err(e) => tracing::warn!(error = %e, "cannot use the renewed node certificate"),
            },
            Err(e) => tracing::warn!(
                error = %e,
                expires_at = %self
                    .node_cert
                    .as_ref()
                    .and_then(|c| c.not_after.format(&Rfc3339).ok())
                    .unwrap_or_default(),
                "cannot renew the node certificate; trying again at the next heartbeat"
            ),
        }
    }

    fn set_interval(&mut self, seconds: u32) {
        // 0 means an old controller that does not say; keep what we have.
        if seconds == 0 {
            return;
        }
        let interval = Duration::from_secs(u64::from(seconds));
        if interval != self.interval {
            tracing::info!(seconds, "heartbeat interval set by the controller");
            self.interval = interval;
            let _ = self.interval_tx.send(interval);
        }
    }
}

/// Follow WatchDesiredState while registered: each hint sets the desired
/// generation the reconcile loop watches (which then fetches the whole desired
/// state, as for a heartbeat's). Reconnects with backoff when the stream
/// fails or goes silent, and under a new identity after re-registration.
async fn follow_desired_state(
    mut client: NodeServiceClient<Channel>,
    mut identity_rx: watch::Receiver<Option<Identity>>,
    desired_generation_tx: watch::Sender<u64>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(INITIAL_BACKOFF, WATCH_RETRY_CAP);
    loop {
        let Some(identity) = identity::next_identity(&mut identity_rx, &mut shutdown).await else {
            return;
        };
        let request = WatchDesiredStateRequest {
            node_id: identity.node_id.clone(),
            node_secret: identity.node_secret.clone(),
        };
        let retry_in = match client.watch_desired_state(request).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                let mut silence = WATCH_DEFAULT_SILENCE;
                let ended = loop {
                    let next = tokio::select! {
                        next = tokio::time::timeout(silence, stream.message()) => next,
                        _ = identity_rx.changed() => break "the node registered again",
                        _ = shutdown.wait_for(|stop| *stop) => return,
                    };
                    match next {
                        Ok(Ok(Some(hint))) => {
                            backoff.reset();
                            if hint.keepalive_seconds > 0 {
                                silence = Duration::from_secs(u64::from(hint.keepalive_seconds))
                                    * WATCH_MISSED_KEEPALIVES;
                            }
                            let desired = hint.desired_generation;
                            desired_generation_tx.send_if_modified(|current| {
                                let changed = *current != desired;
                                *current = desired;
                                changed
                            });
                        }
                        Ok(Ok(None)) => break "the controller ended the stream",
                        Ok(Err(status)) => {
                            tracing::debug!(error = %status.message(), code = ?status.code(), "desired-state stream failed");
                            break "the stream failed";
                        }
                        Err(_elapsed) => break "no keepalive from the controller",
                    }
                };
                let delay = backoff.next_delay();
                tracing::debug!(
                    why = ended,
                    retry_in_ms = delay.as_millis() as u64,
                    "desired-state stream closed; heartbeats carry the generation meanwhile"
                );
                delay
            }
            Err(status) if status.code() == Code::Unimplemented => {
                tracing::info!("the controller has no WatchDesiredState; new desired state arrives with heartbeats");
                WATCH_UNSUPPORTED_RETRY
            }
            Err(status) => {
                let delay = backoff.next_delay();
                tracing::debug!(error = %status.message(), code = ?status.code(), retry_in_ms = delay.as_millis() as u64, "cannot open the desired-state stream");
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(retry_in) => {}
            // A new identity (re-registration, perhaps with a new controller)
            // is worth trying at once.
            _ = identity_rx.changed() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// Completes when the service host's status changes; never when there is
/// no service host (its sender is gone).
async fn service_status_changed(rx: &mut watch::Receiver<crate::service_host::ServiceStatus>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn switch_status_changed(rx: &mut watch::Receiver<SwitchStatus>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn poll_switch_status(
    target: String,
    owner: String,
    bridge: String,
    status_tx: watch::Sender<SwitchStatus>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let status = capabilities::probe_switch_status(&target, &owner, &bridge).await;
        status_tx.send_if_modified(|current| {
            if *current == status {
                return false;
            }
            tracing::info!(datapath = %status.0, uplink = ?status.1, "switch status changed");
            *current = status;
            true
        });
        tokio::select! {
            _ = tokio::time::sleep(SWITCH_STATUS_POLL) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

async fn refresh_capabilities(
    targets: ProbeTargets,
    caps_tx: watch::Sender<Capabilities>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CAPABILITY_REFRESH) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let caps = capabilities::probe(&targets).await;
        caps_tx.send_if_modified(|current| {
            if *current == caps {
                return false;
            }
            tracing::info!(libvirt = ?caps.libvirt_uris, namespace_backend = caps.namespace_backend,
                ovs = ?caps.ovs_datapath_types, tools = ?caps.service_tools, "capabilities changed");
            *current = caps;
            true
        });
    }
}

async fn ship_logs(
    mut client: NodeServiceClient<Channel>,
    buffer: Arc<LogBuffer>,
    identity_rx: watch::Receiver<Option<Identity>>,
    interval_rx: watch::Receiver<Duration>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(LOG_SHIP_PERIOD, *interval_rx.borrow());
    let mut wait = LOG_SHIP_PERIOD;
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(wait) => false,
            _ = shutdown.wait_for(|stop| *stop) => true,
        };
        backoff.set_cap((*interval_rx.borrow()).max(LOG_SHIP_PERIOD));
        wait = LOG_SHIP_PERIOD;
        let identity = identity_rx.borrow().clone();
        if let Some(identity) = identity {
            while !buffer.is_empty() || buffer.dropped() > 0 {
                match ship_one_batch(&mut client, &buffer, &identity).await {
                    Ok(()) => backoff.reset(),
                    Err(()) => {
                        wait = backoff.next_delay();
                        break;
                    }
                }
            }
        }
        if stopping {
            return;
        }
    }
}

/// Ship one batch; on failure the lines go back into the buffer.
async fn ship_one_batch(
    client: &mut NodeServiceClient<Channel>,
    buffer: &LogBuffer,
    identity: &Identity,
) -> Result<(), ()> {
    let dropped = buffer.take_dropped();
    let mut lines = Vec::new();
    if dropped > 0 {
        lines.push(LogLine {
            timestamp_unix_ms: logs::now_unix_ms(),
            level: "warn".into(),
            target: "measurelab_agent::logs".into(),
            message: format!(
                "{dropped} log lines were dropped while the controller was unreachable"
            ),
        });
    }
    let batch = buffer.take_batch(LOG_BATCH);
    lines.extend(batch.iter().cloned());
    let request = ShipLogsRequest {
        node_id: identity.node_id.clone(),
        node_secret: identity.node_secret.clone(),
        lines,
    };
    match client.ship_logs(request).await {
        Ok(_) => Ok(()),
        Err(_) => {
            // Not logged: the line would land in the very buffer we failed
            // to ship, and heartbeat failures already tell the story.
            buffer.requeue(batch);
            if dropped > 0 {
                buffer.add_dropped(dropped);
            }
            Err(())
        }
    }
}

/// Open the backends and the switch, then run the reconcile loop.
async fn start_reconcile(
    config: AgentConfig,
    guest_mtu: u32,
    flow_export_status: crate::reconcile::FlowExportStatus,
    control: GrpcControlPlane,
    guest_channels: crate::guest_channel::GuestChannels,
    handles: LoopHandles,
) {
    let guest_agent = crate::reconcile::guest_agent_path(config.guest_agent.as_deref());
    let backends: Backends = open_backends(
        &config.state_dir,
        &guest_agent,
        &config.libvirt_uris,
        &config.appliance_dir,
        guest_mtu,
    )
    .await;
    let switch = config
        .ovsdb
        .as_deref()
        .map(|target| Arc::new(LazySwitch::new(target)) as Arc<dyn crate::ovs::Switch>);
    let mut settings = ReconcilerConfig::new(config.state_dir.clone(), &config.name);
    settings.bridge = config.bridge.clone();
    settings.uplink = config.uplink.clone();
    settings.uplink_bond = config.uplink_bond.clone();
    settings.datapath = config.datapath;
    settings.tunnel_ip = config.tunnel_ip;
    settings.service_vlan = config.service_host.as_ref().map(|s| s.vlan);
    settings.wireguard_binary = config.wireguard_binary.clone();
    settings.flow_export = config.flow_export.clone();
    settings.flow_export_status = flow_export_status;
    settings.guest_heartbeat_deadline = config.guest_heartbeat_deadline;
    settings.appliance_dir = Some(config.appliance_dir.clone());
    let (events_tx, events_rx) = tokio::sync::mpsc::channel(1024);
    let reconciler = Reconciler::new(settings, backends, switch, guest_channels, events_tx);
    run_loop(
        reconciler,
        events_rx,
        Arc::new(control),
        config.state_dir.clone(),
        handles,
    )
    .await;
}
