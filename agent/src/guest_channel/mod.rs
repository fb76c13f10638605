//! Node-agent side of the guest channel ([`measurelab_api::guest`]): one
//! newline-delimited JSON stream per VM.
//!
//! - Namespace guests: [`GuestChannels::open_unix`] listens on
//!   `<agent state>/guests/<vm_id>/channel.sock` ([`channel_socket_path`]);
//!   the guest agent connects to it (`MEASURELAB_CHANNEL`). The socket takes
//!   the owner of its directory, mode 0600: the namespace backend gives that
//!   directory to the guest's own uid (mode 0700), so no other guest can
//!   reach it. While a guest is registered on the socket, a second
//!   connection is refused (and logged), never displacing it; one that
//!   comes while the current connection has not said hello replaces it (a
//!   restarted guest agent whose old connection is not torn down yet).
//! - QEMU/Xen guests: libvirt binds that path for the VM's virtio-serial
//!   port (QEMU) or PV channel (Xen) (`GuestSpec::channel_socket`);
//!   [`GuestChannels::connect_serial`] connects to it, and keeps
//!   reconnecting while the VM is down, and on every connect asks the guest
//!   for a fresh `hello` (`hello_request`), because a guest on a serial
//!   line sees no connect event.
//!
//! Programs go out through [`GuestChannels::send_program`]: to a guest that
//! announced [`FEATURE_PROGRAM_CHUNKS`] as `program_begin` and chunks of
//! [`PROGRAM_CHUNK_BYTES`], encoded one at a time by the connection's
//! writer as the stream takes them (a 15 MB program is never 20 MB of
//! queued lines); to an older guest as one `run` line.
//!
//! Inbound messages arrive on a bounded per-VM [`mpsc::Receiver`] returned
//! by `open_unix`/`connect_serial`. `hello` and `heartbeat` also update the
//! per-VM [`GuestChannelState`] (registered, last heartbeat, usage), which
//! the reconcile loop reads for the `GuestRegistered` condition and the
//! `GuestReport`. Lines that do not parse are logged and skipped.
//!
//! The agent restarting is fine: state here is rebuilt from the guests'
//! next hello/heartbeat; the guest agent reconnects with backoff.
//!
//! Every method must be called inside a tokio runtime. Dropping the last
//! clone of [`GuestChannels`] stops every channel task.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use measurelab_api::exec::{ExecFrame, ExecOpen, FEATURE_EXEC, FEATURE_EXEC_STAT};
use measurelab_api::guest::{
    encode_line, AgentMessage, GuestMessage, LineFramer, FEATURE_PROGRAM_CHUNKS,
    MAX_GUEST_LINE_BYTES, OUTPUT_TAIL_BYTES, PROGRAM_CHUNK_BYTES,
};
use measurelab_api::http::Resources;
use measurelab_backoff::Backoff;

mod exec_routes;
use exec_routes::{ExecRoutes, Routed};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Inbound messages buffered per VM before the reader waits for the consumer.
pub const INBOUND_QUEUE: usize = 256;
/// Outbound messages (a program counts as one) queued per connection before
/// [`GuestChannels::send`] says [`GuestChannelError::QueueFull`].
pub const OUTBOUND_QUEUE: usize = 64;
/// Longest unix socket path Linux accepts (`sun_path` is 108 bytes with NUL).
const MAX_SOCKET_PATH: usize = 107;
const SERIAL_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest program output tail relayed per stream: what an honest guest
/// sends at most ([`OUTPUT_TAIL_BYTES`]). A hostile guest's longer tail is
/// cut here, so it cannot make the node's ReportStatus too large for the
/// controller and wedge the statuses of every VM on the node.
pub const RELAYED_TAIL_BYTES: usize = OUTPUT_TAIL_BYTES;
/// Longest guest log line relayed.
pub const RELAYED_LOG_LINE_BYTES: usize = 4 * 1024;
/// Most log lines relayed from one `log` message (the guest agent sends 200).
pub const RELAYED_LOG_LINES_PER_MESSAGE: usize = 200;
const SERIAL_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// `<state_dir>/guests/<vm_id>/channel.sock`: where the channel of a VM lives.
pub fn channel_socket_path(state_dir: &Path, vm_id: Uuid) -> PathBuf {
    state_dir
        .join("guests")
        .join(vm_id.to_string())
        .join("channel.sock")
}

/// Errors of the guest channel module.
#[derive(Debug, thiserror::Error)]
pub enum GuestChannelError {
    /// `open_unix`/`connect_serial` for a VM whose channel is already open.
    #[error("guest channel of VM {vm_id} is already open")]
    AlreadyOpen {
        /// The VM.
        vm_id: Uuid,
    },
    /// No channel was opened for this VM.
    #[error("no guest channel for VM {vm_id}")]
    UnknownVm {
        /// The VM.
        vm_id: Uuid,
    },
    /// The channel exists but no guest is connected right now.
    #[error("guest of VM {vm_id} is not connected")]
    NotConnected {
        /// The VM.
        vm_id: Uuid,
    },
    /// The guest is connected but not reading fast enough.
    #[error("outbound queue of VM {vm_id} is full")]
    QueueFull {
        /// The VM.
        vm_id: Uuid,
    },
    /// The socket path is unusable.
    #[error("guest channel socket {path}: {reason}")]
    InvalidPath {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Creating the directory or binding the socket failed.
    #[error("guest channel socket {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The guest agent predates `vm exec` (or, for `stat`, program
    /// output files).
    #[error("the guest agent of VM {vm_id} (version {agent_version:?}) does not support {feature}; update the appliance's guest agent")]
    ExecUnsupported {
        /// The VM.
        vm_id: Uuid,
        /// What the guest said it runs.
        agent_version: String,
        /// The hello feature it lacks.
        feature: &'static str,
    },
    /// The VM has the most exec sessions open that it may.
    #[error("VM {vm_id} has {max} exec sessions open already", max = exec_routes::MAX_SESSIONS_PER_VM)]
    TooManySessions {
        /// The VM.
        vm_id: Uuid,
    },
    /// A message could not be encoded (cannot happen for our types).
    #[error("cannot encode message: {0}")]
    Encode(#[from] serde_json::Error),
}

/// How a VM's channel is carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelKind {
    /// We listen on a unix socket (namespace guests).
    Unix,
    /// We connect to libvirt's socket of the guest's virtio-serial port,
    /// PV channel or serial port (QEMU/Xen guests).
    Serial,
}

/// What the node agent knows about one VM's guest agent.
#[derive(Clone, Debug, PartialEq)]
pub struct GuestChannelState {
    /// How the channel is carried.
    pub kind: ChannelKind,
    /// The socket path.
    pub path: PathBuf,
    /// A byte stream to the guest is up right now (for serial: libvirt's
    /// socket is connected; the guest may still be booting).
    pub connected: bool,
    /// The guest said `hello` with the right vm_id on the current connection.
    pub registered: bool,
    /// `agent_version` from the last valid hello.
    pub agent_version: Option<String>,
    /// `features` from the last valid hello.
    pub features: Vec<String>,
    /// When the last valid hello arrived.
    pub last_hello: Option<SystemTime>,
    /// When the last heartbeat arrived (kept across reconnects).
    pub last_heartbeat: Option<SystemTime>,
    /// Usage from the last heartbeat.
    pub last_usage: Option<Resources>,
    /// Connections seen since the channel was opened.
    pub connections: u64,
    /// Last protocol problem (bad line, hello for another VM), for conditions.
    pub last_error: Option<String>,
}

impl GuestChannelState {
    /// When the guest was last heard from: its last heartbeat or hello.
    pub fn last_heard(&self) -> Option<SystemTime> {
        self.last_heartbeat.max(self.last_hello)
    }

    /// The guest takes programs in chunks ([`FEATURE_PROGRAM_CHUNKS`]).
    pub fn program_chunks(&self) -> bool {
        self.features.iter().any(|f| f == FEATURE_PROGRAM_CHUNKS)
    }

    /// `last_heartbeat` as Unix milliseconds (for `GuestReport`), 0 if none.
    pub fn last_heartbeat_unix_ms(&self) -> u64 {
        self.last_heartbeat
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// Per-VM data shared between the API and the channel's tasks.
struct Shared {
    vm_id: Uuid,
    // std Mutexes: held only to read or swap, never across an await.
    state: Mutex<GuestChannelState>,
    /// Writer of the current connection, tagged with its connection number so
    /// a finished old connection does not clear a newer one.
    writer: Mutex<Option<(u64, mpsc::Sender<Outbound>)>>,
    inbound: mpsc::Sender<GuestMessage>,
    /// Exec sessions open on this channel.
    execs: ExecRoutes,
}

struct VmChannel {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Registry {
    vms: Mutex<HashMap<Uuid, VmChannel>>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Ok(vms) = self.vms.get_mut() {
            for (_, channel) in vms.drain() {
                channel.task.abort();
                if channel.shared.kind() == ChannelKind::Unix {
                    let _ = std::fs::remove_file(channel.shared.path());
                }
            }
        }
    }
}

/// One item of a connection's outbound queue.
enum Outbound {
    /// An encoded message line.
    Line(Vec<u8>),
    /// A program, written as `program_begin` and its chunks.
    Program(ProgramSend),
}

/// A program to deliver (see [`GuestChannels::send_program`]).
#[derive(Clone, Debug)]
pub struct ProgramSend {
    /// Deployment id.
    pub deployment_id: String,
    /// File name in the guest.
    pub program_name: String,
    /// The content; shared, since every VM of a deployment gets the same.
    pub content: Arc<Vec<u8>>,
    /// Arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: std::collections::BTreeMap<String, String>,
}

impl ProgramSend {
    fn sha256(&self) -> String {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(self.content.as_slice()))
    }

    /// The whole program as one `run` (guests without chunks).
    fn as_run(&self) -> AgentMessage {
        AgentMessage::Run {
            deployment_id: self.deployment_id.clone(),
            program_name: self.program_name.clone(),
            sha256: self.sha256(),
            content_base64: base64::engine::general_purpose::STANDARD.encode(&*self.content),
            args: self.args.clone(),
            env: self.env.clone(),
        }
    }

    fn begin(&self) -> AgentMessage {
        AgentMessage::ProgramBegin {
            deployment_id: self.deployment_id.clone(),
            program_name: self.program_name.clone(),
            sha256: self.sha256(),
            size: self.content.len() as u64,
            args: self.args.clone(),
            env: self.env.clone(),
        }
    }

    fn chunk(&self, offset: usize) -> AgentMessage {
        let end = (offset + PROGRAM_CHUNK_BYTES).min(self.content.len());
        AgentMessage::ProgramChunk {
            deployment_id: self.deployment_id.clone(),
            offset: offset as u64,
            data_base64: base64::engine::general_purpose::STANDARD
                .encode(&self.content[offset..end]),
        }
    }
}

/// The guest channels of every VM on this node. Cheap to clone.
#[derive(Clone, Default)]
pub struct GuestChannels {
    registry: Arc<Registry>,
}

impl GuestChannels {
    /// No channels yet.
    pub fn new() -> Self {
        GuestChannels::default()
    }

    /// Listens on `path` for VM `vm_id`'s guest agent (namespace guests).
    /// Creates the parent directory (mode 0700) and replaces a stale socket
    /// file; the socket gets the directory's owner and mode 0600.
    pub fn open_unix(
        &self,
        vm_id: Uuid,
        path: &Path,
    ) -> Result<mpsc::Receiver<GuestMessage>, GuestChannelError> {
        check_socket_path(path)?;
        let mut vms = self.lock();
        if vms.contains_key(&vm_id) {
            return Err(GuestChannelError::AlreadyOpen { vm_id });
        }
        let io_err = |source| GuestChannelError::Io {
            path: path.to_path_buf(),
            source,
        };
        let parent = path
            .parent()
            .ok_or_else(|| GuestChannelError::InvalidPath {
                path: path.to_path_buf(),
                reason: "has no parent directory".into(),
            })?;
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(io_err)?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }
        let listener = tokio::net::UnixListener::bind(path).map_err(io_err)?;
        give_to_directory_owner(path, parent).map_err(io_err)?;
        let (shared, inbound) = Shared::new(vm_id, ChannelKind::Unix, path);
        let task = tokio::spawn(serve_unix(listener, shared.clone()));
        vms.insert(vm_id, VmChannel { shared, task });
        Ok(inbound)
    }

    /// Connects to libvirt's serial socket at `path` for VM `vm_id` (QEMU/Xen
    /// guests), now and again whenever the connection drops. Creates the
    /// parent directory (libvirt only binds the socket); call it before
    /// `define`.
    pub fn connect_serial(
        &self,
        vm_id: Uuid,
        path: &Path,
    ) -> Result<mpsc::Receiver<GuestMessage>, GuestChannelError> {
        check_socket_path(path)?;
        let mut vms = self.lock();
        if vms.contains_key(&vm_id) {
            return Err(GuestChannelError::AlreadyOpen { vm_id });
        }
        // libvirt binds the socket but does not create its directory; make
        // it here so define cannot fail on a missing parent.
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| GuestChannelError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let (shared, inbound) = Shared::new(vm_id, ChannelKind::Serial, path);
        let task = tokio::spawn(connect_serial_loop(path.to_path_buf(), shared.clone()));
        vms.insert(vm_id, VmChannel { shared, task });
        Ok(inbound)
    }

    /// Queues `message` for VM `vm_id`'s guest. Never waits: a missing guest
    /// is [`GuestChannelError::NotConnected`] (retry on the next reconcile).
    pub fn send(&self, vm_id: Uuid, message: &AgentMessage) -> Result<(), GuestChannelError> {
        self.enqueue(vm_id, Outbound::Line(encode_line(message)?))
    }

    /// Queues a program for VM `vm_id`'s guest: chunked if the guest said it
    /// takes chunks, else one `run` line. Never waits, as [`Self::send`].
    pub fn send_program(&self, vm_id: Uuid, program: ProgramSend) -> Result<(), GuestChannelError> {
        let chunks = self.state(vm_id).is_some_and(|s| s.program_chunks());
        let item = if chunks {
            Outbound::Program(program)
        } else {
            Outbound::Line(encode_line(&program.as_run())?)
        };
        self.enqueue(vm_id, item)
    }

    /// Opens an exec or copy session in VM `vm_id`'s guest. Refused when no
    /// guest is registered, when it does not announce [`FEATURE_EXEC`]
    /// (older guest agents), or when the VM has too many sessions open.
    pub async fn open_exec(
        &self,
        vm_id: Uuid,
        session: &str,
        open: ExecOpen,
    ) -> Result<ExecSession, GuestChannelError> {
        let shared = self.shared(vm_id)?;
        let state = shared
            .with_state(|s| s.clone())
            .ok_or(GuestChannelError::NotConnected { vm_id })?;
        if !state.registered {
            return Err(GuestChannelError::NotConnected { vm_id });
        }
        let needs = match open {
            ExecOpen::Stat { .. } => FEATURE_EXEC_STAT,
            _ => FEATURE_EXEC,
        };
        if !state.features.iter().any(|f| f == needs) {
            return Err(GuestChannelError::ExecUnsupported {
                vm_id,
                agent_version: state.agent_version.unwrap_or_default(),
                feature: needs,
            });
        }
        let frames = shared
            .execs
            .insert(session)
            .ok_or(GuestChannelError::TooManySessions { vm_id })?;
        let session = ExecSession {
            shared,
            id: session.to_string(),
            frames,
            ended: false,
        };
        session.send(ExecFrame::Open { open }).await?;
        Ok(session)
    }

    fn shared(&self, vm_id: Uuid) -> Result<Arc<Shared>, GuestChannelError> {
        self.lock()
            .get(&vm_id)
            .map(|c| c.shared.clone())
            .ok_or(GuestChannelError::UnknownVm { vm_id })
    }

    fn enqueue(&self, vm_id: Uuid, item: Outbound) -> Result<(), GuestChannelError> {
        let shared = self.shared(vm_id)?;
        let writer = shared
            .writer()
            .ok_or(GuestChannelError::NotConnected { vm_id })?;
        writer.try_send(item).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => GuestChannelError::QueueFull { vm_id },
            mpsc::error::TrySendError::Closed(_) => GuestChannelError::NotConnected { vm_id },
        })
    }

    /// What is known about VM `vm_id`'s guest, or `None` without a channel.
    pub fn state(&self, vm_id: Uuid) -> Option<GuestChannelState> {
        let shared = self.lock().get(&vm_id).map(|c| c.shared.clone())?;
        let state = shared.state.lock().ok()?.clone();
        Some(state)
    }

    /// Whether a channel is open for `vm_id`.
    pub fn is_open(&self, vm_id: Uuid) -> bool {
        self.lock().contains_key(&vm_id)
    }

    /// VMs with an open channel.
    pub fn vm_ids(&self) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = self.lock().keys().copied().collect();
        ids.sort();
        ids
    }

    /// Closes VM `vm_id`'s channel: drops the connection, stops its task,
    /// removes our unix socket file. The inbound receiver then ends. Closing
    /// an unknown VM does nothing (idempotent for cleanup).
    pub fn close(&self, vm_id: Uuid) {
        let Some(channel) = self.lock().remove(&vm_id) else {
            return;
        };
        channel.task.abort();
        if channel.shared.kind() == ChannelKind::Unix {
            let _ = std::fs::remove_file(channel.shared.path());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, VmChannel>> {
        // A panic while holding this lock leaves plain data behind; keep going.
        self.registry
            .vms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Hands the socket at `path` to the owner of `dir` with mode 0600: who
/// may open the directory is who may connect.
fn give_to_directory_owner(path: &Path, dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let owner = std::fs::metadata(dir)?;
    std::os::unix::fs::chown(path, Some(owner.uid()), Some(owner.gid()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

fn check_socket_path(path: &Path) -> Result<(), GuestChannelError> {
    let invalid = |reason: String| GuestChannelError::InvalidPath {
        path: path.to_path_buf(),
        reason,
    };
    if !path.is_absolute() {
        return Err(invalid("must be an absolute path".into()));
    }
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(invalid(format!(
            "is {len} bytes; unix socket paths are limited to {MAX_SOCKET_PATH}"
        )));
    }
    Ok(())
}

impl Shared {
    fn new(
        vm_id: Uuid,
        kind: ChannelKind,
        path: &Path,
    ) -> (Arc<Shared>, mpsc::Receiver<GuestMessage>) {
        let (inbound, receiver) = mpsc::channel(INBOUND_QUEUE);
        let shared = Arc::new(Shared {
            vm_id,
            state: Mutex::new(GuestChannelState {
                kind,
                path: path.to_path_buf(),
                connected: false,
                registered: false,
                agent_version: None,
                features: Vec::new(),
                last_hello: None,
                last_heartbeat: None,
                last_usage: None,
                connections: 0,
                last_error: None,
            }),
            writer: Mutex::new(None),
            inbound,
            execs: ExecRoutes::default(),
        });
        (shared, receiver)
    }

    fn kind(&self) -> ChannelKind {
        self.with_state(|s| s.kind).unwrap_or(ChannelKind::Unix)
    }

    fn path(&self) -> PathBuf {
        self.with_state(|s| s.path.clone()).unwrap_or_default()
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut GuestChannelState) -> T) -> Option<T> {
        self.state.lock().ok().map(|mut s| f(&mut s))
    }

    fn writer(&self) -> Option<mpsc::Sender<Outbound>> {
        self.writer
            .lock()
            .ok()
            .and_then(|w| w.as_ref().map(|(_, tx)| tx.clone()))
    }
}

/// One exec or copy session in a guest (see [`GuestChannels::open_exec`]).
/// Dropping it before the guest's exit frame kills the session in the guest.
pub struct ExecSession {
    shared: Arc<Shared>,
    id: String,
    frames: mpsc::Receiver<ExecFrame>,
    ended: bool,
}

impl ExecSession {
    /// The session id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Sends a frame to the guest, waiting for room in the channel's queue
    /// (stdin data is bounded by the guest's window, so this never waits
    /// long on a healthy guest). Credits are also counted here: they are
    /// what lets the guest send more output.
    pub async fn send(&self, frame: ExecFrame) -> Result<(), GuestChannelError> {
        let vm_id = self.shared.vm_id;
        if let ExecFrame::Credit { bytes } = frame {
            self.shared.execs.grant(&self.id, bytes);
        }
        let line = encode_line(&AgentMessage::Exec {
            session: self.id.clone(),
            frame,
        })?;
        let writer = self
            .shared
            .writer()
            .ok_or(GuestChannelError::NotConnected { vm_id })?;
        writer
            .send(Outbound::Line(line))
            .await
            .map_err(|_| GuestChannelError::NotConnected { vm_id })
    }

    /// The next frame from the guest; `None` once the session ended (after
    /// its exit frame, or when it was dropped for breaking its bounds).
    pub async fn recv(&mut self) -> Option<ExecFrame> {
        if self.ended {
            return None;
        }
        let frame = self.frames.recv().await;
        if matches!(frame, None | Some(ExecFrame::Exit { .. })) {
            self.ended = true;
        }
        frame
    }
}

impl Drop for ExecSession {
    fn drop(&mut self) {
        self.shared.execs.remove(&self.id);
        if !self.ended {
            let kill = AgentMessage::Exec {
                session: self.id.clone(),
                frame: ExecFrame::Kill,
            };
            if let (Some(writer), Ok(line)) = (self.shared.writer(), encode_line(&kill)) {
                let _ = writer.try_send(Outbound::Line(line));
            }
        }
    }
}

/// Aborts a spawned task when dropped, so aborting the parent task also
/// stops the connection it owns.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn serve_unix(listener: tokio::net::UnixListener, shared: Arc<Shared>) {
    let mut current: Option<AbortOnDrop> = None;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let live = current.as_ref().is_some_and(|c| !c.0.is_finished());
                if live && shared.with_state(|s| s.registered).unwrap_or(false) {
                    // Never displace a registered guest: whoever else got at
                    // the socket would receive its programs and tasks.
                    let peer = stream
                        .peer_cred()
                        .map(|c| format!("pid {:?} uid {}", c.pid(), c.uid()))
                        .unwrap_or_else(|_| "unknown peer".into());
                    note_error(
                        &shared,
                        format!(
                            "refused a second connection ({peer}) while the guest is registered"
                        ),
                    );
                    drop(stream);
                    continue;
                }
                if current.take().is_some() {
                    tracing::info!(vm_id = %shared.vm_id, "guest reconnected; replacing the old connection");
                }
                let (reader, writer) = stream.into_split();
                current = Some(AbortOnDrop(tokio::spawn(session(
                    Box::new(reader),
                    Box::new(writer),
                    shared.clone(),
                    false,
                ))));
            }
            Err(err) => {
                tracing::warn!(vm_id = %shared.vm_id, %err, "accept on guest channel failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connect_serial_loop(path: PathBuf, shared: Arc<Shared>) {
    let mut backoff = Backoff::new(SERIAL_BACKOFF_MIN, SERIAL_BACKOFF_MAX).without_jitter();
    let mut last_error = String::new();
    loop {
        match tokio::net::UnixStream::connect(&path).await {
            Ok(stream) => {
                last_error.clear();
                backoff.reset();
                let (reader, writer) = stream.into_split();
                session(Box::new(reader), Box::new(writer), shared.clone(), true).await;
            }
            Err(err) => {
                // The socket appears when QEMU starts; say so once, not every retry.
                let text = err.to_string();
                if text != last_error {
                    tracing::debug!(vm_id = %shared.vm_id, path = %path.display(), error = %text, "serial channel not available yet");
                    last_error = text;
                }
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// One connection: a writer fed by `send`, a reader feeding `inbound`.
async fn session(
    mut reader: Box<dyn AsyncRead + Unpin + Send>,
    mut writer: Box<dyn AsyncWrite + Unpin + Send>,
    shared: Arc<Shared>,
    request_hello: bool,
) {
    let (tx, mut rx) = mpsc::channel::<Outbound>(OUTBOUND_QUEUE);
    let connection = shared
        .with_state(|s| {
            s.connections += 1;
            s.connected = true;
            s.registered = false;
            s.connections
        })
        .unwrap_or(0);
    let hello_request = encode_line(&AgentMessage::HelloRequest).ok();
    if request_hello {
        if let Some(line) = &hello_request {
            let _ = tx.try_send(Outbound::Line(line.clone()));
        }
    }
    // Weak, so the writer still ends when the slot's sender goes away.
    let ask_again = tx.downgrade();
    if let Ok(mut slot) = shared.writer.lock() {
        *slot = Some((connection, tx));
    }
    tracing::info!(vm_id = %shared.vm_id, connection, "guest channel connected");

    let write_side = async {
        while let Some(item) = rx.recv().await {
            let result = match item {
                Outbound::Line(line) => write_line(&mut writer, &line).await,
                Outbound::Program(program) => write_program(&mut writer, &program).await,
            };
            if let Err(reason) = result {
                return reason;
            }
        }
        "writer closed".to_string()
    };
    let read_side = async {
        let mut framer = LineFramer::new(MAX_GUEST_LINE_BYTES);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) => return "guest closed the channel".to_string(),
                Ok(n) => n,
                Err(err) => return format!("read failed: {err}"),
            };
            for line in framer.push(&buf[..n]) {
                let message = match line {
                    Ok(line) => parse_line(&line, &shared),
                    Err(err) => {
                        note_error(&shared, format!("skipped a line: {err}"));
                        None
                    }
                };
                // Registration is level-triggered: a guest that heartbeats
                // but never got its hello through (on a serial line the
                // tty's echo of our request can run into it, unterminated)
                // is asked again, so it cannot stay unregistered for good.
                if matches!(message, Some(GuestMessage::Heartbeat { .. }))
                    && !shared.with_state(|s| s.registered).unwrap_or(true)
                {
                    if let (Some(line), Some(tx)) = (&hello_request, ask_again.upgrade()) {
                        let _ = tx.try_send(Outbound::Line(line.clone()));
                    }
                }
                if let Some(message) = message {
                    // The consumer may have dropped its receiver; state above
                    // is still kept up to date.
                    let _ = shared.inbound.send(message).await;
                }
            }
        }
    };
    let reason = tokio::select! {
        reason = write_side => reason,
        reason = read_side => reason,
    };
    tracing::info!(vm_id = %shared.vm_id, connection, %reason, "guest channel disconnected");
    // The guest ends its sessions when the connection drops; so do we.
    shared
        .execs
        .fail_all(&format!("the guest channel disconnected: {reason}"));
    if let Ok(mut slot) = shared.writer.lock() {
        if slot.as_ref().is_some_and(|(n, _)| *n == connection) {
            *slot = None;
            shared.with_state(|s| {
                s.connected = false;
                s.registered = false;
            });
        }
    }
}

async fn write_line(
    writer: &mut Box<dyn AsyncWrite + Unpin + Send>,
    line: &[u8],
) -> Result<(), String> {
    writer
        .write_all(line)
        .await
        .map_err(|err| format!("write failed: {err}"))?;
    writer
        .flush()
        .await
        .map_err(|err| format!("flush failed: {err}"))
}

/// `program_begin`, then each chunk encoded only when the previous one is
/// written, so memory stays at one chunk line whatever the program's size.
async fn write_program(
    writer: &mut Box<dyn AsyncWrite + Unpin + Send>,
    program: &ProgramSend,
) -> Result<(), String> {
    let encode = |message: &AgentMessage| {
        encode_line(message).map_err(|err| format!("cannot encode a program message: {err}"))
    };
    write_line(writer, &encode(&program.begin())?).await?;
    for offset in (0..program.content.len()).step_by(PROGRAM_CHUNK_BYTES) {
        write_line(writer, &encode(&program.chunk(offset))?).await?;
    }
    Ok(())
}

/// Parses one line and updates the state; `None` for lines to skip.
fn parse_line(line: &[u8], shared: &Shared) -> Option<GuestMessage> {
    let message: GuestMessage = match serde_json::from_slice(line) {
        Ok(message) => message,
        Err(err) => {
            let preview: String = String::from_utf8_lossy(line).chars().take(120).collect();
            note_error(
                shared,
                format!("skipped a line that does not parse ({err}): {preview}"),
            );
            return None;
        }
    };
    match &message {
        GuestMessage::Hello {
            vm_id,
            agent_version,
            features,
        } => {
            if Uuid::parse_str(vm_id).ok() != Some(shared.vm_id) {
                note_error(
                    shared,
                    format!(
                        "hello from vm_id {vm_id:?} on the channel of VM {}; ignored",
                        shared.vm_id
                    ),
                );
                return None;
            }
            shared.with_state(|s| {
                s.registered = true;
                s.agent_version = Some(agent_version.clone());
                s.features = features.clone();
                s.last_hello = Some(SystemTime::now());
                s.last_error = None;
            });
            tracing::info!(vm_id = %shared.vm_id, %agent_version, "guest registered");
        }
        GuestMessage::Heartbeat { usage } => {
            shared.with_state(|s| {
                s.last_heartbeat = Some(SystemTime::now());
                s.last_usage = Some(usage.clone());
            });
        }
        GuestMessage::Exec { .. } => {
            // Only a registered guest has sessions: they are opened after
            // its hello, and a reconnect ends them.
            let GuestMessage::Exec { session, frame } = message else {
                return None;
            };
            if let Routed::Violation(reason) = shared.execs.route(&session, frame) {
                note_error(shared, format!("exec session {session}: {reason}"));
                let kill = AgentMessage::Exec {
                    session,
                    frame: ExecFrame::Kill,
                };
                if let (Some(writer), Ok(line)) = (shared.writer(), encode_line(&kill)) {
                    let _ = writer.try_send(Outbound::Line(line));
                }
            }
            return None;
        }
        _ => {}
    }
    Some(bound_message(message))
}

/// Cuts what a guest sends to the sizes the relay forwards: output tails to
/// their last [`RELAYED_TAIL_BYTES`], log lines to [`RELAYED_LOG_LINE_BYTES`]
/// and [`RELAYED_LOG_LINES_PER_MESSAGE`] lines. Every cut is marked, so a
/// reader of the tail or log knows it is not the whole text.
pub fn bound_message(message: GuestMessage) -> GuestMessage {
    match message {
        GuestMessage::ProgramStatus {
            deployment_id,
            status,
            exit_code,
            stdout_tail,
            stderr_tail,
        } => GuestMessage::ProgramStatus {
            deployment_id,
            status,
            exit_code,
            stdout_tail: keep_tail(stdout_tail, RELAYED_TAIL_BYTES),
            stderr_tail: keep_tail(stderr_tail, RELAYED_TAIL_BYTES),
        },
        GuestMessage::Log { mut lines } => {
            let excess = lines.len().saturating_sub(RELAYED_LOG_LINES_PER_MESSAGE);
            if excess > 0 {
                lines.truncate(RELAYED_LOG_LINES_PER_MESSAGE - 1);
                lines.push(format!(
                    "[{} more lines of this message dropped by the node agent]",
                    excess + 1
                ));
            }
            GuestMessage::Log {
                lines: lines
                    .into_iter()
                    .map(|line| keep_head(line, RELAYED_LOG_LINE_BYTES))
                    .collect(),
            }
        }
        other => other,
    }
}

/// The last bytes of `text` within `max` bytes in all, starting at a char
/// boundary, after a marker saying how much was cut.
pub fn keep_tail(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let marker = format!("[{} bytes cut by the node agent]\n", text.len());
    let budget = max.saturating_sub(marker.len());
    let mut start = text.len() - budget;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    marker + &text[start..]
}

/// The first bytes of `text` within `max` bytes in all, ending at a char
/// boundary, followed by a marker saying it was cut.
pub fn keep_head(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let marker = format!(" [cut by the node agent from {} bytes]", text.len());
    let mut end = max.saturating_sub(marker.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut head = text;
    head.truncate(end);
    head + &marker
}

fn note_error(shared: &Shared, error: String) {
    tracing::warn!(vm_id = %shared.vm_id, %error, "guest channel");
    shared.with_state(|s| s.last_error = Some(error));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm() -> Uuid {
        Uuid::parse_str("6f1c2a3b-4d5e-4f60-8172-8394a5b6c7d8").unwrap()
    }

    #[test]
    fn tails_and_log_lines_are_cut_at_char_boundaries_and_marked() {
        let big = "é".repeat(3 * 1024 * 1024);
        let message = bound_message(GuestMessage::ProgramStatus {
            deployment_id: "d".into(),
            status: measurelab_api::guest::ProgramRunState::Running,
            exit_code: None,
            stdout_tail: big.clone() + "end",
            stderr_tail: "short".into(),
        });
        let GuestMessage::ProgramStatus {
            stdout_tail,
            stderr_tail,
            ..
        } = message
        else {
            panic!("not a status")
        };
        assert!(
            stdout_tail.len() <= RELAYED_TAIL_BYTES,
            "{}",
            stdout_tail.len()
        );
        assert!(stdout_tail.starts_with("[6291459 bytes cut by the node agent]\n"));
        assert!(stdout_tail.ends_with("éend"));
        assert_eq!(stderr_tail, "short");

        let mut lines = vec![big; 2];
        lines.extend((0..300).map(|i| format!("line {i}")));
        let GuestMessage::Log { lines } = bound_message(GuestMessage::Log { lines }) else {
            panic!("not a log")
        };
        assert_eq!(lines.len(), RELAYED_LOG_LINES_PER_MESSAGE);
        assert!(lines[0].len() <= RELAYED_LOG_LINE_BYTES);
        assert!(lines[0].ends_with(" [cut by the node agent from 6291456 bytes]"));
        assert!(lines[0].starts_with('é'));
        assert_eq!(
            lines.last().unwrap(),
            "[103 more lines of this message dropped by the node agent]"
        );
    }

    #[test]
    fn socket_path_follows_the_contract() {
        assert_eq!(
            channel_socket_path(Path::new("/var/lib/a"), vm()),
            PathBuf::from("/var/lib/a/guests/6f1c2a3b-4d5e-4f60-8172-8394a5b6c7d8/channel.sock")
        );
    }

    #[tokio::test]
    async fn bad_paths_are_rejected_naming_the_path() {
        let channels = GuestChannels::new();
        let long = PathBuf::from(format!("/tmp/{}", "x".repeat(120)));
        for path in [PathBuf::from("rel/channel.sock"), long] {
            match channels.open_unix(vm(), &path) {
                Err(GuestChannelError::InvalidPath { path: got, .. }) => assert_eq!(got, path),
                other => panic!("{}: {:?}", path.display(), other.map(|_| ())),
            }
        }
        assert!(!channels.is_open(vm()));
    }

    /// The serial side keeps retrying until "QEMU" (here: a plain listener)
    /// binds the socket, then asks for hello first.
    #[tokio::test]
    async fn serial_connects_late_and_requests_hello() {
        use tokio::io::AsyncBufReadExt;
        let dir = tempfile::tempdir().unwrap();
        let path = channel_socket_path(dir.path(), vm());
        let channels = GuestChannels::new();
        let _inbound = channels.connect_serial(vm(), &path).unwrap();
        assert!(
            path.parent().unwrap().is_dir(),
            "parent created for libvirt"
        );
        assert!(!channels.state(vm()).unwrap().connected);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let (stream, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .unwrap()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(stream).lines();
        let first = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(first, "{\"type\":\"hello_request\"}");
        assert_eq!(channels.state(vm()).unwrap().kind, ChannelKind::Serial);
        channels.close(vm());
    }

    /// A guest whose hello was lost (here: run into an unterminated echo, as
    /// a serial tty can do) but that heartbeats is asked for hello again,
    /// and its answer registers it.
    #[tokio::test]
    async fn a_heartbeat_without_hello_is_answered_with_a_hello_request() {
        use tokio::io::AsyncBufReadExt;
        let dir = tempfile::tempdir().unwrap();
        let path = channel_socket_path(dir.path(), vm());
        let channels = GuestChannels::new();
        let _inbound = channels.open_unix(vm(), &path).unwrap();
        let stream = tokio::net::UnixStream::connect(&path).await.unwrap();
        let (read, mut write) = stream.into_split();
        let hello = format!(
            "{{\"type\":\"hello\",\"vm_id\":\"{}\",\"agent_version\":\"1.2\"}}\n",
            vm()
        );
        let heartbeat = "{\"type\":\"heartbeat\",\"usage\":{\"cpu_count\":1,\"cpu_used_percent\":5.0,\"memory_total_bytes\":10,\"memory_used_bytes\":5,\"disk_total_bytes\":0,\"disk_used_bytes\":0,\"network_rx_bytes\":0,\"network_tx_bytes\":0}}\n";
        write
            .write_all(format!("ype\":\"hello_reque{hello}{heartbeat}").as_bytes())
            .await
            .unwrap();
        let mut lines = tokio::io::BufReader::new(read).lines();
        let asked = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(asked, "{\"type\":\"hello_request\"}");
        assert!(!channels.state(vm()).unwrap().registered);

        write.write_all(hello.as_bytes()).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !channels.state(vm()).unwrap().registered {
            assert!(tokio::time::Instant::now() < deadline, "hello not taken");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Registered: further heartbeats ask for nothing.
        write.write_all(heartbeat.as_bytes()).await.unwrap();
        let more = tokio::time::timeout(Duration::from_millis(300), lines.next_line()).await;
        assert!(more.is_err(), "asked again after registering: {more:?}");
        channels.close(vm());
    }

    /// A guest that announces chunks gets a program as `program_begin` and
    /// bounded chunks that add up to it; one that does not gets one `run`.
    #[tokio::test]
    async fn programs_go_in_chunks_only_to_guests_that_take_them() {
        use measurelab_api::guest::MAX_AGENT_LINE_BYTES;
        use tokio::io::AsyncBufReadExt;
        let content: Vec<u8> = (0..2 * PROGRAM_CHUNK_BYTES + 5).map(|i| i as u8).collect();
        let program = ProgramSend {
            deployment_id: "d1".into(),
            program_name: "p".into(),
            content: Arc::new(content.clone()),
            args: vec!["a".into()],
            env: Default::default(),
        };
        for features in [vec![FEATURE_PROGRAM_CHUNKS], vec![]] {
            let dir = tempfile::tempdir().unwrap();
            let path = channel_socket_path(dir.path(), vm());
            let channels = GuestChannels::new();
            let _inbound = channels.open_unix(vm(), &path).unwrap();
            let stream = tokio::net::UnixStream::connect(&path).await.unwrap();
            let (read, mut write) = stream.into_split();
            let hello = GuestMessage::Hello {
                vm_id: vm().to_string(),
                agent_version: "x".into(),
                features: features.iter().map(|f| f.to_string()).collect(),
            };
            write
                .write_all(&encode_line(&hello).unwrap())
                .await
                .unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while !channels.state(vm()).unwrap().registered {
                assert!(tokio::time::Instant::now() < deadline, "hello not taken");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            channels.send_program(vm(), program.clone()).unwrap();
            let mut lines = tokio::io::BufReader::new(read).lines();
            let mut next = async || -> AgentMessage {
                let line = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
                assert!(line.len() <= MAX_AGENT_LINE_BYTES, "{} bytes", line.len());
                serde_json::from_str(&line).unwrap()
            };
            if features.is_empty() {
                assert_eq!(next().await, program.as_run());
                continue;
            }
            let AgentMessage::ProgramBegin {
                size, sha256, args, ..
            } = next().await
            else {
                panic!("no program_begin first");
            };
            assert_eq!(size, content.len() as u64);
            assert_eq!(sha256, program.sha256());
            assert_eq!(args, vec!["a".to_string()]);
            let mut got = Vec::new();
            while got.len() < content.len() {
                let AgentMessage::ProgramChunk {
                    offset,
                    data_base64,
                    ..
                } = next().await
                else {
                    panic!("not a chunk");
                };
                assert_eq!(offset, got.len() as u64);
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data_base64)
                    .unwrap();
                assert!(!bytes.is_empty() && bytes.len() <= PROGRAM_CHUNK_BYTES);
                got.extend(bytes);
            }
            assert_eq!(got, content);
            channels.close(vm());
        }
    }

    /// Whoever else reaches a registered guest's socket is turned away: the
    /// registered connection keeps its registration and its messages.
    #[tokio::test]
    async fn a_second_connection_never_displaces_a_registered_guest() {
        use tokio::io::AsyncBufReadExt;
        let dir = tempfile::tempdir().unwrap();
        let path = channel_socket_path(dir.path(), vm());
        let channels = GuestChannels::new();
        let _inbound = channels.open_unix(vm(), &path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let guest = tokio::net::UnixStream::connect(&path).await.unwrap();
        let (read, mut write) = guest.into_split();
        let hello = format!(
            "{{\"type\":\"hello\",\"vm_id\":\"{}\",\"agent_version\":\"1.2\"}}\n",
            vm()
        );
        write.write_all(hello.as_bytes()).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !channels.state(vm()).unwrap().registered {
            assert!(tokio::time::Instant::now() < deadline, "hello not taken");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        let mut intruder = tokio::net::UnixStream::connect(&path).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), intruder.read(&mut buf))
            .await
            .expect("intruder not turned away")
            .unwrap_or(0);
        assert_eq!(n, 0, "intruder got bytes");
        let state = channels.state(vm()).unwrap();
        assert!(state.registered && state.connected, "{state:?}");
        assert_eq!(state.connections, 1);
        assert!(state
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("refused a second connection")));

        // The registered guest still gets what the agent sends.
        channels
            .send(
                vm(),
                &AgentMessage::Stop {
                    deployment_id: "d1".into(),
                },
            )
            .unwrap();
        let mut lines = tokio::io::BufReader::new(read).lines();
        let line = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(line, "{\"type\":\"stop\",\"deployment_id\":\"d1\"}");
        channels.close(vm());
    }

    /// A hand-driven guest on the raw socket: hello for the wrong VM is not
    /// a registration, garbage is skipped, the right hello and a heartbeat
    /// are, and `send` reaches the guest.
    #[tokio::test]
    async fn protocol_over_a_raw_socket() {
        use tokio::io::AsyncBufReadExt;
        let dir = tempfile::tempdir().unwrap();
        let path = channel_socket_path(dir.path(), vm());
        let channels = GuestChannels::new();
        let mut inbound = channels.open_unix(vm(), &path).unwrap();
        assert!(matches!(
            channels.open_unix(vm(), &path),
            Err(GuestChannelError::AlreadyOpen { .. })
        ));
        assert!(matches!(
            channels.send(vm(), &AgentMessage::HelloRequest),
            Err(GuestChannelError::NotConnected { .. })
        ));

        let stream = tokio::net::UnixStream::connect(&path).await.unwrap();
        let (read, mut write) = stream.into_split();
        let other = Uuid::new_v4();
        let lines = format!(
            "{{\"type\":\"hello\",\"vm_id\":\"{other}\",\"agent_version\":\"x\"}}\nnot json\n{{\"type\":\"reboot\"}}\n{{\"type\":\"hello\",\"vm_id\":\"{}\",\"agent_version\":\"1.2\"}}\n{{\"type\":\"heartbeat\",\"usage\":{{\"cpu_count\":1,\"cpu_used_percent\":5.0,\"memory_total_bytes\":10,\"memory_used_bytes\":5,\"disk_total_bytes\":0,\"disk_used_bytes\":0,\"network_rx_bytes\":0,\"network_tx_bytes\":0}}}}\n",
            vm()
        );
        write.write_all(lines.as_bytes()).await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), inbound.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(first, GuestMessage::Hello { ref agent_version, .. } if agent_version == "1.2"),
            "{first:?}"
        );
        let second = tokio::time::timeout(Duration::from_secs(5), inbound.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(second, GuestMessage::Heartbeat { .. }));
        let state = channels.state(vm()).unwrap();
        assert!(state.connected && state.registered);
        assert_eq!(state.agent_version.as_deref(), Some("1.2"));
        assert!(state.last_heartbeat_unix_ms() > 0);
        assert_eq!(state.last_usage.unwrap().cpu_count, 1);

        channels
            .send(
                vm(),
                &AgentMessage::Stop {
                    deployment_id: "d1".into(),
                },
            )
            .unwrap();
        let mut reader = tokio::io::BufReader::new(read);
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(line, "{\"type\":\"stop\",\"deployment_id\":\"d1\"}\n");

        drop(write);
        drop(reader);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while channels.state(vm()).unwrap().connected {
            assert!(
                tokio::time::Instant::now() < deadline,
                "disconnect not seen"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        channels.close(vm());
        assert!(!path.exists(), "close removes the socket file");
        assert!(inbound.recv().await.is_none(), "inbound ends after close");
        channels.close(vm());
    }
}
