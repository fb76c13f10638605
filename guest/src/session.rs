//! The channel to the node agent: connect (unix socket or serial device),
//! say hello, dispatch what arrives, reconnect with backoff when it drops.

use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use measurelab_api::exec::{FEATURE_EXEC, FEATURE_EXEC_STAT};
use measurelab_api::guest::{
    AgentMessage, GuestMessage, LineFramer, FEATURE_PROGRAM_CHUNKS, MAX_AGENT_LINE_BYTES,
};
use measurelab_backoff::Backoff;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::config::GuestConfig;
use crate::exec::Execs;
use crate::link::{Link, PostError};
use crate::logtee::LogQueue;
use crate::programs::Programs;
use crate::usage::UsageSampler;

/// Lines queued for the channel writer; beyond this, messages are dropped
/// (a stalled channel must not grow the guest's memory).
const OUTBOUND_QUEUE: usize = 256;
/// Log lines per `log` message, so one message stays small.
const LOG_LINES_PER_MESSAGE: usize = 200;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

type BoxReader = Box<dyn AsyncRead + Unpin + Send>;
type BoxWriter = Box<dyn AsyncWrite + Unpin + Send>;

/// Errors while opening the channel; all of them are retried.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    /// The path does not exist yet or cannot be inspected.
    #[error("channel {path}: {source}")]
    Stat {
        path: String,
        source: std::io::Error,
    },
    /// Neither a socket nor a character device.
    #[error("channel {path} is neither a unix socket nor a serial device")]
    WrongType { path: String },
    /// connect(2) or open(2) failed.
    #[error("cannot open channel {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    /// The serial line cannot be made raw.
    #[error("cannot set {path} raw: {source}")]
    Termios { path: String, source: nix::Error },
}

/// Keeps the channel up forever.
pub(crate) async fn channel_loop(config: GuestConfig, link: Arc<Link>, programs: Arc<Programs>) {
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX).without_jitter();
    let mut last_error = String::new();
    let execs = Arc::new(Execs::new(link.clone()));
    loop {
        match open_channel(&config.channel).await {
            Ok((reader, writer, kind)) => {
                tracing::info!(channel = %config.channel.display(), kind, "channel connected");
                last_error.clear();
                let started = Instant::now();
                let reason = run_session(reader, writer, &config, &link, &programs, &execs).await;
                link.detach();
                execs.close_all();
                tracing::warn!(%reason, "channel lost; reconnecting");
                if started.elapsed() > Duration::from_secs(10) {
                    backoff.reset();
                }
            }
            Err(err) => {
                // Log each distinct failure once, not every retry.
                let text = err.to_string();
                if text != last_error {
                    tracing::warn!(error = %text, "channel not available; retrying");
                    last_error = text;
                }
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

async fn open_channel(path: &Path) -> Result<(BoxReader, BoxWriter, &'static str), SessionError> {
    let resolved = resolve_virtio_port(path);
    let path = resolved.as_deref().unwrap_or(path);
    let display = || path.display().to_string();
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|source| SessionError::Stat {
            path: display(),
            source,
        })?;
    let file_type = meta.file_type();
    if file_type.is_socket() {
        let stream = tokio::net::UnixStream::connect(path)
            .await
            .map_err(|source| SessionError::Open {
                path: display(),
                source,
            })?;
        let (reader, writer) = stream.into_split();
        return Ok((Box::new(reader), Box::new(writer), "unix"));
    }
    if file_type.is_char_device() {
        let open_err = |source| SessionError::Open {
            path: display(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(path)
            .map_err(open_err)?;
        // A virtio-serial port is no tty and needs no line settings: it
        // has flow control of its own (the host waits for the guest's
        // buffers). A serial port does not: see `make_raw`.
        let is_tty = nix::unistd::isatty(std::os::fd::AsRawFd::as_raw_fd(&file)).unwrap_or(false);
        if is_tty {
            make_raw(&file).map_err(|source| SessionError::Termios {
                path: display(),
                source,
            })?;
            raise_rx_trigger(path);
        }
        let read_half = file.try_clone().map_err(open_err)?;
        // A tty or virtio port is pollable like a pipe; tokio's pipe types
        // only need a non-blocking fd that epoll accepts.
        let reader = DeviceStream::Read(
            tokio::net::unix::pipe::Receiver::from_file_unchecked(read_half).map_err(open_err)?,
        );
        let writer = DeviceStream::Write(
            tokio::net::unix::pipe::Sender::from_file_unchecked(file).map_err(open_err)?,
        );
        let kind = if is_tty { "serial" } else { "virtio-serial" };
        return Ok((Box::new(reader), Box::new(writer), kind));
    }
    Err(SessionError::WrongType { path: display() })
}

/// A non-blocking character device (tty or virtio-serial port) as a tokio
/// stream, on tokio's pipe types but not their `AsyncRead`/`AsyncWrite`:
/// those take a short read as "drained" and wait for the next edge, but a
/// virtio port's read returns one host buffer at a time, and when the host
/// has filled them all no new edge comes until the guest reads again (the
/// channel stalled after the first big line). `try_read`/`try_write` clear
/// readiness only on `EAGAIN`.
enum DeviceStream {
    Read(tokio::net::unix::pipe::Receiver),
    Write(tokio::net::unix::pipe::Sender),
}

impl AsyncRead for DeviceStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let DeviceStream::Read(receiver) = &*self else {
            return std::task::Poll::Ready(Err(std::io::ErrorKind::Unsupported.into()));
        };
        loop {
            std::task::ready!(receiver.poll_read_ready(cx))?;
            match receiver.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return std::task::Poll::Ready(Ok(()));
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(err) => return std::task::Poll::Ready(Err(err)),
            }
        }
    }
}

impl AsyncWrite for DeviceStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let DeviceStream::Write(sender) = &*self else {
            return std::task::Poll::Ready(Err(std::io::ErrorKind::Unsupported.into()));
        };
        loop {
            std::task::ready!(sender.poll_write_ready(cx))?;
            match sender.try_write(data) {
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
                result => return std::task::Poll::Ready(result),
            }
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Where udev would have linked `/dev/virtio-ports/<name>`: the appliances
/// have no udev, so the port named `<name>` is looked up in sysfs
/// (`/sys/class/virtio-ports/vportNpM/name`) and its `/dev/vportNpM` used.
/// `None` when `path` is not such a link, already exists, or no port has
/// the name (yet: the module may still be loading; the caller retries).
fn resolve_virtio_port(path: &Path) -> Option<std::path::PathBuf> {
    let name = path.strip_prefix(VIRTIO_PORTS_DIR).ok()?.to_str()?;
    if path.exists() {
        return None;
    }
    let ports = std::fs::read_dir(VIRTIO_PORTS_SYSFS).ok()?;
    ports.flatten().find_map(|port| {
        let port_name = std::fs::read_to_string(port.path().join("name")).ok()?;
        (port_name.trim() == name).then(|| Path::new("/dev").join(port.file_name()))
    })
}

const VIRTIO_PORTS_DIR: &str = "/dev/virtio-ports/";
const VIRTIO_PORTS_SYSFS: &str = "/sys/class/virtio-ports";

/// Raw 8-bit line, no echo (an echo would bounce every agent message back),
/// no flow control, no CR/LF translation; stale input is discarded. Without
/// flow control (QEMU's 16550 would not honour RTS anyway) a guest that
/// reads too slowly loses bytes in its tty buffer: the node agent uses a
/// virtio-serial port instead, and programs are chunked and checked.
fn make_raw(file: &std::fs::File) -> Result<(), nix::Error> {
    use nix::sys::termios::{
        cfmakeraw, cfsetspeed, tcflush, tcgetattr, tcsetattr, BaudRate, ControlFlags, FlushArg,
        SetArg,
    };
    let mut termios = tcgetattr(file)?;
    cfmakeraw(&mut termios);
    cfsetspeed(&mut termios, BaudRate::B115200)?;
    termios.control_flags |= ControlFlags::CLOCAL | ControlFlags::CREAD;
    termios.control_flags &= !ControlFlags::CRTSCTS;
    tcsetattr(file, SetArg::TCSANOW, &termios)?;
    tcflush(file, FlushArg::TCIFLUSH)
}

/// Asks the 16550 for an interrupt every 14 received bytes instead of the
/// driver's default 8. Under emulation each interrupt is expensive, so this
/// raises host -> guest throughput (measured: see guest/README.md). Best
/// effort: other UARTs and kernels without the attribute keep their setting.
fn raise_rx_trigger(device: &Path) {
    let Some(name) = device.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    let attribute = Path::new("/sys/class/tty").join(name).join("rx_trig_bytes");
    if attribute.exists() {
        match std::fs::write(&attribute, "14") {
            Ok(()) => {
                tracing::info!(path = %attribute.display(), "UART rx trigger raised to 14 bytes")
            }
            Err(err) => {
                tracing::debug!(%err, path = %attribute.display(), "cannot raise the UART rx trigger")
            }
        }
    }
}

fn hello(config: &GuestConfig) -> GuestMessage {
    GuestMessage::Hello {
        vm_id: config.vm_id.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        features: vec![
            FEATURE_PROGRAM_CHUNKS.to_string(),
            FEATURE_EXEC.to_string(),
            FEATURE_EXEC_STAT.to_string(),
        ],
    }
}

/// One connection; returns why it ended.
async fn run_session(
    mut reader: BoxReader,
    mut writer: BoxWriter,
    config: &GuestConfig,
    link: &Link,
    programs: &Arc<Programs>,
    execs: &Arc<Execs>,
) -> String {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(OUTBOUND_QUEUE);
    link.attach(tx);
    link.send(&hello(config));
    programs.report_all();

    let write_side = async {
        while let Some(line) = rx.recv().await {
            if let Err(err) = writer.write_all(&line).await {
                return format!("write failed: {err}");
            }
            if let Err(err) = writer.flush().await {
                return format!("flush failed: {err}");
            }
        }
        "writer closed".to_string()
    };
    let read_side = async {
        let mut framer = LineFramer::new(MAX_AGENT_LINE_BYTES);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) => return "node agent closed the channel".to_string(),
                Ok(n) => n,
                Err(err) => return format!("read failed: {err}"),
            };
            for line in framer.push(&buf[..n]) {
                match line {
                    Ok(line) => dispatch(&line, config, link, programs, execs),
                    Err(err) => tracing::warn!(%err, "skipping a channel line"),
                }
            }
        }
    };
    tokio::select! {
        reason = write_side => reason,
        reason = read_side => reason,
    }
}

fn dispatch(
    line: &[u8],
    config: &GuestConfig,
    link: &Link,
    programs: &Arc<Programs>,
    execs: &Arc<Execs>,
) {
    let message: AgentMessage = match serde_json::from_slice(line) {
        Ok(message) => message,
        Err(err) => {
            let preview: String = String::from_utf8_lossy(line).chars().take(120).collect();
            tracing::warn!(%err, line = %preview, "skipping a message that does not parse");
            return;
        }
    };
    match message {
        AgentMessage::Run {
            deployment_id,
            program_name,
            sha256,
            content_base64,
            args,
            env,
        } => programs.run(crate::programs::RunRequest {
            deployment_id,
            program_name,
            sha256,
            content: crate::programs::Content::Base64(content_base64),
            args,
            env,
        }),
        AgentMessage::ProgramBegin {
            deployment_id,
            program_name,
            sha256,
            size,
            args,
            env,
        } => programs.begin(crate::programs::BeginRequest {
            deployment_id,
            program_name,
            sha256,
            size,
            args,
            env,
        }),
        AgentMessage::ProgramChunk {
            deployment_id,
            offset,
            data_base64,
        } => programs.chunk(&deployment_id, offset, &data_base64),
        AgentMessage::Stop { deployment_id } => programs.stop(&deployment_id),
        AgentMessage::Tasks { tasks } => link.answer_tasks(tasks),
        AgentMessage::PollRefused { reason } => link.refuse_polls(&reason),
        AgentMessage::ResultAck {
            request_id,
            stored,
            reason,
            rejected,
        } => link.answer_result(
            &request_id,
            match (stored, reason.unwrap_or_else(|| "not stored".into())) {
                (true, _) => Ok(()),
                (false, reason) if rejected => Err(PostError::Rejected(reason)),
                (false, reason) => Err(PostError::Refused(reason)),
            },
        ),
        AgentMessage::Exec { session, frame } => execs.frame(session, frame),
        AgentMessage::HelloRequest => {
            link.send(&hello(config));
            programs.report_all();
            link.wake_heartbeat();
        }
    }
}

/// Heartbeats, log shipping and running programs' output, every interval
/// and right after each (re)connect.
pub(crate) async fn heartbeat_loop(
    link: Arc<Link>,
    programs: Arc<Programs>,
    logs: LogQueue,
    interval: Duration,
) {
    let mut sampler = UsageSampler::default();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = link.heartbeat_wakeup() => {}
        }
        // Sample even while disconnected, so the CPU baseline stays fresh.
        let usage = sampler.sample(Path::new("/"));
        if !link.connected() {
            continue;
        }
        link.send(&GuestMessage::Heartbeat { usage });
        let lines = logs.drain();
        for chunk in lines.chunks(LOG_LINES_PER_MESSAGE) {
            link.send(&GuestMessage::Log {
                lines: chunk.to_vec(),
            });
        }
        programs.report_changed();
        programs.expire_transfers();
    }
}
