//! `vm exec` and `vm cp` sessions in the guest (frames: see
//! [`measurelab_api::exec`]).
//!
//! A command runs in its own process group with piped stdin, stdout and
//! stderr. With `tty` it runs in its own session instead, on a
//! pseudo-terminal that is its controlling terminal: `tty` names it, ^C
//! arrives as SIGINT to the foreground job, job control works, and a
//! `resize` sets the size and sends SIGWINCH, as over ssh. Output is read only while
//! the node agent's credit allows, so a command that writes 10 MiB waits on
//! its pipe instead of filling the guest's memory. Stdin goes through a
//! writer task and is credited back once the command took it, so a command
//! that does not read its stdin never stops this session from hearing the
//! credits (or the `kill`) it needs.
//!
//! `put` writes to a temporary file beside the target and renames it over
//! the target only when the announced size and SHA-256 arrived; anything
//! else removes the temporary file. `get` streams a regular file and ends
//! with its size and SHA-256.
//!
//! Sessions belong to one channel connection: when it drops, the node agent
//! has forgotten them, so they are all ended.

use std::collections::HashMap;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use base64::Engine;
use measurelab_api::exec::{
    check_open, frame_cost, ExecExit, ExecFrame, ExecOpen, ExecStream, TerminalSize,
    EXEC_FRAME_BYTES, EXEC_MAX_FRAMES_IN_FLIGHT, EXEC_MIN_FRAME_COST, EXEC_WINDOW_BYTES,
    STAT_ABSENT_CODE,
};
use measurelab_api::guest::GuestMessage;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use crate::link::Link;

/// Sessions at once; more are refused (each holds processes and buffers).
const MAX_SESSIONS: usize = 32;
/// Frames queued for one session: a window of stdin frames plus control
/// frames. The node agent sends data only within the window, so a peer that
/// overruns this loses the session.
const SESSION_QUEUE: usize = EXEC_MAX_FRAMES_IN_FLIGHT + 16;
/// Largest file a `put` writes.
const MAX_PUT_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// The guest's open sessions.
pub(crate) struct Execs {
    link: Arc<Link>,
    // std Mutex: held only for table lookups, never across an await.
    sessions: Mutex<HashMap<String, SessionSlot>>,
}

struct SessionSlot {
    frames: mpsc::Sender<ExecFrame>,
    task: JoinHandle<()>,
}

impl Execs {
    pub(crate) fn new(link: Arc<Link>) -> Self {
        Execs {
            link,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// A frame from the node agent.
    pub(crate) fn frame(self: &Arc<Self>, session: String, frame: ExecFrame) {
        let Ok(mut sessions) = self.sessions.lock() else {
            return;
        };
        sessions.retain(|_, slot| !slot.task.is_finished());
        if let ExecFrame::Open { open } = frame {
            if sessions.contains_key(&session) {
                tracing::warn!(%session, "open for a session that exists; ignored");
                return;
            }
            if sessions.len() >= MAX_SESSIONS {
                let reason = format!("the guest runs {MAX_SESSIONS} sessions already");
                self.link
                    .send(&exit_message(&session, ExecExit::error(reason)));
                return;
            }
            let (tx, rx) = mpsc::channel(SESSION_QUEUE);
            let task = tokio::spawn(run_session(self.link.clone(), session.clone(), open, rx));
            sessions.insert(session, SessionSlot { frames: tx, task });
            return;
        }
        let Some(slot) = sessions.get(&session) else {
            tracing::debug!(%session, "frame for an unknown session; dropped");
            return;
        };
        match slot.frames.try_send(frame) {
            Ok(()) => {}
            // The session stopped reading (its command ended) and is sending
            // its own exit: a late credit or stdin frame has no one to go
            // to. Answering it with an error exit would race the real one.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!(%session, "frame for a session that is ending; dropped");
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.overrun(&mut sessions, &session);
            }
        }
    }

    /// The node agent sent past the session's window: end the session.
    fn overrun(&self, sessions: &mut HashMap<String, SessionSlot>, session: &str) {
        if let Some(slot) = sessions.remove(session) {
            tracing::warn!(%session, "session queue overrun; ending the session");
            slot.task.abort();
            self.link.send(&exit_message(
                session,
                ExecExit::error("the node agent sent past the session's window"),
            ));
        }
    }

    /// Ends every session (the channel they belong to is gone). Aborting
    /// a session drops its child, which `kill_on_drop` kills.
    pub(crate) fn close_all(&self) {
        if let Ok(mut sessions) = self.sessions.lock() {
            for (_, slot) in sessions.drain() {
                slot.task.abort();
            }
        }
    }
}

fn exit_message(session: &str, exit: ExecExit) -> GuestMessage {
    GuestMessage::Exec {
        session: session.to_string(),
        frame: ExecFrame::Exit { exit },
    }
}

async fn run_session(
    link: Arc<Link>,
    session: String,
    open: ExecOpen,
    rx: mpsc::Receiver<ExecFrame>,
) {
    let out = Output {
        link: link.clone(),
        session: session.clone(),
        window: Arc::new(Window::default()),
    };
    let exit = match check_open(&open) {
        Err(err) => ExecExit::error(err.to_string()),
        Ok(()) => match open {
            ExecOpen::Command { argv, tty, size } => {
                let terminal = tty.then_some(size);
                run_command(&out, argv, terminal, rx).await
            }
            ExecOpen::Put { path, size, sha256 } => {
                put_file(&out, Path::new(&path), size, &sha256, rx).await
            }
            ExecOpen::Get { path, max_bytes } => get_file(&out, &path, max_bytes, rx).await,
            ExecOpen::Stat {
                path,
                max_hash_bytes,
            } => stat_file(&path, max_hash_bytes).await,
        },
    };
    let _ = link.send_wait(&exit_message(&session, exit)).await;
}

/// The output credit the node agent granted and this session has not used.
#[derive(Default)]
struct Window {
    used: Mutex<u64>,
    granted: Mutex<u64>,
    changed: Notify,
}

impl Window {
    fn grant(&self, bytes: u64) {
        if let Ok(mut granted) = self.granted.lock() {
            *granted = granted.saturating_add(bytes);
        }
        self.changed.notify_waiters();
    }

    /// Waits until at least a minimal frame's cost is free, reserves at most
    /// `want` of it (give back what a read did not use with `release`).
    async fn take(&self, want: u64) -> u64 {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let free = {
                let granted = self.granted.lock().map(|g| *g).unwrap_or(0);
                let mut used = match self.used.lock() {
                    Ok(used) => used,
                    Err(_) => return 0,
                };
                let free = (EXEC_WINDOW_BYTES + granted).saturating_sub(*used);
                let take = if free < EXEC_MIN_FRAME_COST {
                    0
                } else {
                    free.min(want)
                };
                *used += take;
                take
            };
            if free > 0 {
                return free;
            }
            notified.await;
        }
    }
}

/// Sends one session's output within its window.
#[derive(Clone)]
struct Output {
    link: Arc<Link>,
    session: String,
    window: Arc<Window>,
}

impl Output {
    async fn send(&self, frame: ExecFrame) -> bool {
        self.link
            .send_wait(&GuestMessage::Exec {
                session: self.session.clone(),
                frame,
            })
            .await
    }

    /// Copies `reader` to `stream` in window-sized frames; returns the bytes
    /// and their SHA-256 (hex) once `reader` ends.
    async fn pump(
        self,
        mut reader: impl AsyncRead + Unpin,
        stream: ExecStream,
    ) -> std::io::Result<(u64, String)> {
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        let mut buf = vec![0u8; EXEC_FRAME_BYTES];
        loop {
            let allowed = self.window.take(EXEC_FRAME_BYTES as u64).await as usize;
            let n = match reader.read(&mut buf[..allowed]).await {
                // A pty master reports EIO once the last writer closed.
                Err(err) if err.raw_os_error() == Some(libc::EIO) => 0,
                other => other?,
            };
            // What the frame does not cost goes back.
            let cost = if n == 0 { 0 } else { frame_cost(n as u64) };
            if let Ok(mut used) = self.window.used.lock() {
                *used -= allowed as u64 - cost;
            }
            if n == 0 {
                return Ok((total, hex::encode(hasher.finalize())));
            }
            hasher.update(&buf[..n]);
            total += n as u64;
            let data = base64::engine::general_purpose::STANDARD.encode(&buf[..n]);
            if !self.send(ExecFrame::Output { stream, data }).await {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "the channel to the node agent is gone",
                ));
            }
        }
    }
}

fn decode(data: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(data).ok()
}

fn winsize(size: TerminalSize) -> nix::pty::Winsize {
    nix::pty::Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// First argument of the guest agent binary run as [`terminal_session`].
pub const TERMINAL_SESSION_ARG: &str = "--exec-in-terminal-session";

/// The guest agent re-run as `measurelab-guest-agent
/// --exec-in-terminal-session -- CMD ARGS…` on a pty slave: it starts a
/// session whose controlling terminal is that slave, then becomes `CMD`.
/// Setting up a session between fork and exec would take `pre_exec`, which
/// is unsafe code the workspace denies; one more exec costs a millisecond.
/// Returns only when `CMD` could not start, with the exit status a shell
/// gives that case (127 not found, 126 otherwise), having said why on the
/// terminal.
pub fn terminal_session(argv: &[std::ffi::OsString]) -> u8 {
    use std::os::unix::process::CommandExt;
    let Some((program, args)) = argv.split_first() else {
        eprintln!("measurelab-guest-agent {TERMINAL_SESSION_ARG}: no command");
        return 126;
    };
    // A new session also makes this process its group's leader, so the
    // session's `kill` (killpg of this pid) reaches the whole job.
    if let Err(err) = nix::unistd::setsid() {
        eprintln!("cannot start a session: {err}");
        return 126;
    }
    if let Err(err) = rustix::process::ioctl_tiocsctty(std::io::stdin()) {
        eprintln!("cannot make the pseudo-terminal the controlling terminal: {err}");
        return 126;
    }
    let err = std::process::Command::new(program).args(args).exec();
    eprintln!("cannot start {program:?}: {err}");
    if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}

/// `terminal`: `None` for pipes, `Some(size)` for a pseudo-terminal.
async fn run_command(
    out: &Output,
    argv: Vec<String>,
    terminal: Option<Option<TerminalSize>>,
    mut rx: mpsc::Receiver<ExecFrame>,
) -> ExecExit {
    let mut command = match terminal {
        None => tokio::process::Command::new(&argv[0]),
        // This agent, re-run (see `terminal_session`); /proc/self/exe still
        // works when the binary was replaced on disk since it started.
        Some(_) => {
            let mut command = tokio::process::Command::new("/proc/self/exe");
            command.args([TERMINAL_SESSION_ARG, "--"]);
            command
        }
    };
    command
        .args(&argv[terminal.map_or(1, |_| 0)..])
        .kill_on_drop(true);
    let mut pty_master = None;
    if let Some(size) = terminal {
        let pty = match nix::pty::openpty(size.map(winsize).as_ref(), None) {
            Ok(pty) => pty,
            Err(err) => return ExecExit::error(format!("cannot open a pseudo-terminal: {err}")),
        };
        let slave = |fd: &std::os::fd::OwnedFd| fd.try_clone().map(Stdio::from);
        match (slave(&pty.slave), slave(&pty.slave), slave(&pty.slave)) {
            (Ok(i), Ok(o), Ok(e)) => {
                command.stdin(i).stdout(o).stderr(e);
            }
            _ => return ExecExit::error("cannot share the pseudo-terminal"),
        }
        pty_master = Some(std::fs::File::from(pty.master));
    } else {
        command
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => return ExecExit::error(format!("cannot start {:?}: {err}", argv[0])),
    };
    // Only the child may hold the slave side, or the master never sees EOF.
    drop(command);
    let pgid = child.id().and_then(|id| i32::try_from(id).ok());

    let mut pumps: Vec<JoinHandle<std::io::Result<(u64, String)>>> = Vec::new();
    let mut resizer = None;
    let stdin: Option<Box<dyn AsyncWrite + Unpin + Send>> = match pty_master {
        Some(master) => {
            resizer = match master.try_clone() {
                Ok(fd) => Some(fd),
                Err(err) => return ExecExit::error(format!("cannot keep the terminal: {err}")),
            };
            let reader = match master.try_clone() {
                Ok(reader) => tokio::fs::File::from_std(reader),
                Err(err) => return ExecExit::error(format!("cannot read the terminal: {err}")),
            };
            pumps.push(tokio::spawn(out.clone().pump(reader, ExecStream::Stdout)));
            Some(Box::new(tokio::fs::File::from_std(master)))
        }
        None => {
            if let Some(stdout) = child.stdout.take() {
                pumps.push(tokio::spawn(out.clone().pump(stdout, ExecStream::Stdout)));
            }
            if let Some(stderr) = child.stderr.take() {
                pumps.push(tokio::spawn(out.clone().pump(stderr, ExecStream::Stderr)));
            }
            child
                .stdin
                .take()
                .map(|s| Box::new(s) as Box<dyn AsyncWrite + Unpin + Send>)
        }
    };
    let abort_pumps = AbortAll(pumps.iter().map(|p| p.abort_handle()).collect());
    let (stdin_tx, stdin_rx) = mpsc::channel::<Option<Vec<u8>>>(SESSION_QUEUE);
    let writer = tokio::spawn(write_stdin(out.clone(), stdin, stdin_rx));
    let _abort_writer = AbortAll(vec![writer.abort_handle()]);

    let finished = async {
        let status = child.wait().await;
        for pump in pumps {
            if let Ok(Err(err)) = pump.await {
                tracing::debug!(%err, "exec output ended early");
            }
        }
        status
    };
    tokio::pin!(finished);
    loop {
        tokio::select! {
            status = &mut finished => {
                drop(abort_pumps);
                return match status {
                    Ok(status) => ExecExit {
                        code: status.code(),
                        signal: status.signal(),
                        ..ExecExit::default()
                    },
                    Err(err) => ExecExit::error(format!("cannot wait for the command: {err}")),
                };
            }
            frame = rx.recv() => match frame {
                None => {
                    kill_group(pgid);
                    return ExecExit::error("session closed");
                }
                Some(ExecFrame::Stdin { data }) => {
                    let Some(bytes) = decode(&data) else {
                        kill_group(pgid);
                        return ExecExit::error("stdin frame is not base64");
                    };
                    if stdin_tx.try_send(Some(bytes)).is_err() {
                        kill_group(pgid);
                        return ExecExit::error("stdin sent past the window");
                    }
                }
                Some(ExecFrame::StdinEof) => {
                    let _ = stdin_tx.try_send(None);
                }
                Some(ExecFrame::Credit { bytes }) => out.window.grant(bytes),
                Some(ExecFrame::Kill) => kill_group(pgid),
                Some(ExecFrame::Resize { rows, cols }) => {
                    // Pipes have no size: a resize for them is ignored.
                    if let Some(master) = &resizer {
                        let size = rustix::termios::Winsize {
                            ws_row: rows,
                            ws_col: cols,
                            ws_xpixel: 0,
                            ws_ypixel: 0,
                        };
                        // The kernel sends SIGWINCH to the foreground job.
                        if let Err(err) = rustix::termios::tcsetwinsize(master, size) {
                            tracing::debug!(%err, "terminal resize failed");
                        }
                    }
                }
                Some(_) => {}
            },
        }
    }
}

/// Aborts tasks when dropped (a session that ends early leaves none behind).
struct AbortAll(Vec<tokio::task::AbortHandle>);

impl Drop for AbortAll {
    fn drop(&mut self) {
        for handle in &self.0 {
            handle.abort();
        }
    }
}

fn kill_group(pgid: Option<i32>) {
    if let Some(pgid) = pgid {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}

/// Feeds the command's stdin and credits each piece back once written.
/// `None` closes stdin. A command that exits without reading is fine: the
/// write fails and the rest is dropped (and still credited, so the client
/// is never left waiting).
async fn write_stdin(
    out: Output,
    mut stdin: Option<Box<dyn AsyncWrite + Unpin + Send>>,
    mut rx: mpsc::Receiver<Option<Vec<u8>>>,
) {
    while let Some(piece) = rx.recv().await {
        let Some(bytes) = piece else {
            if let Some(mut pipe) = stdin.take() {
                let _ = pipe.shutdown().await;
            }
            continue;
        };
        if let Some(pipe) = stdin.as_mut() {
            if pipe.write_all(&bytes).await.is_err() {
                stdin = None;
            }
        }
        let credit = ExecFrame::Credit {
            bytes: frame_cost(bytes.len() as u64),
        };
        if !out.send(credit).await {
            return;
        }
    }
}

/// The temporary file of a `put`, removed unless it was renamed.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

async fn put_file(
    out: &Output,
    target: &Path,
    size: u64,
    sha256: &str,
    mut rx: mpsc::Receiver<ExecFrame>,
) -> ExecExit {
    if size > MAX_PUT_BYTES {
        return ExecExit::error(format!(
            "size: {size} bytes is more than the {MAX_PUT_BYTES} a guest writes"
        ));
    }
    let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
        return ExecExit::error(format!("path: {} names no file", target.display()));
    };
    let temp_path = dir.join(format!(".{}.mlcp-{}", name.to_string_lossy(), out.session));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&temp_path);
    let mut temp = TempFile {
        path: temp_path,
        keep: false,
    };
    let mut file = match file {
        Ok(file) => tokio::fs::File::from_std(file),
        Err(err) => {
            temp.keep = true; // not ours: it already existed or was never made
            return ExecExit::error(format!("cannot create a file in {}: {err}", dir.display()));
        }
    };
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    loop {
        let Some(frame) = rx.recv().await else {
            return ExecExit::error("session closed before the copy ended");
        };
        match frame {
            ExecFrame::Stdin { data } => {
                let Some(bytes) = decode(&data) else {
                    return ExecExit::error("data frame is not base64");
                };
                written += bytes.len() as u64;
                if written > size {
                    return ExecExit::error(format!(
                        "more than the announced {size} bytes arrived"
                    ));
                }
                hasher.update(&bytes);
                if let Err(err) = file.write_all(&bytes).await {
                    return ExecExit::error(format!("cannot write {}: {err}", temp.path.display()));
                }
                let credit = ExecFrame::Credit {
                    bytes: frame_cost(bytes.len() as u64),
                };
                if !out.send(credit).await {
                    return ExecExit::error("the channel to the node agent is gone");
                }
            }
            ExecFrame::StdinEof => break,
            ExecFrame::Kill => return ExecExit::error("copy cancelled"),
            _ => {}
        }
    }
    let actual = hex::encode(hasher.finalize());
    if written != size {
        return ExecExit::error(format!("{written} bytes arrived, {size} were announced"));
    }
    if actual != sha256 {
        return ExecExit::error(format!(
            "sha256 mismatch: announced {sha256}, content has {actual}"
        ));
    }
    if let Err(err) = file.sync_all().await {
        return ExecExit::error(format!("cannot sync {}: {err}", temp.path.display()));
    }
    drop(file);
    if let Err(err) = tokio::fs::rename(&temp.path, target).await {
        return ExecExit::error(format!("cannot rename onto {}: {err}", target.display()));
    }
    temp.keep = true;
    ExecExit {
        code: Some(0),
        size: Some(written),
        sha256: Some(actual),
        ..ExecExit::default()
    }
}

/// Size, mtime and (up to `max_hash_bytes`) SHA-256 of a regular file, in
/// the exit frame. Hashing runs on a blocking thread: a capture of a few
/// hundred MiB takes seconds, and the session's frames (a `kill`) need not
/// wait for it because nothing but the exit is ever sent.
async fn stat_file(path: &str, max_hash_bytes: u64) -> ExecExit {
    let owned = path.to_string();
    let stat = tokio::task::spawn_blocking(move || -> std::io::Result<ExecExit> {
        use std::io::Read;
        let file = std::fs::File::open(&owned)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Ok(ExecExit::error(format!("{owned} is not a regular file")));
        }
        let mtime_unix = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_secs()).ok());
        let mut exit = ExecExit {
            code: Some(0),
            size: Some(meta.len()),
            mtime_unix,
            ..ExecExit::default()
        };
        if meta.len() <= max_hash_bytes {
            let mut hasher = Sha256::new();
            let mut reader = file.take(max_hash_bytes);
            let mut buf = vec![0u8; 256 * 1024];
            let mut size = 0u64;
            loop {
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                size += n as u64;
            }
            // Size and digest describe the same bytes, even when the file
            // changed between the metadata and the read.
            exit.size = Some(size);
            exit.sha256 = Some(hex::encode(hasher.finalize()));
        }
        Ok(exit)
    })
    .await;
    match stat {
        Ok(Ok(exit)) => exit,
        Ok(Err(err)) if err.kind() == std::io::ErrorKind::NotFound => ExecExit {
            code: Some(STAT_ABSENT_CODE),
            ..ExecExit::default()
        },
        Ok(Err(err)) => ExecExit::error(format!("cannot read {path}: {err}")),
        Err(err) => ExecExit::error(format!("stat of {path} failed: {err}")),
    }
}

async fn get_file(
    out: &Output,
    path: &str,
    max_bytes: u64,
    mut rx: mpsc::Receiver<ExecFrame>,
) -> ExecExit {
    let file = match tokio::fs::File::open(path).await {
        Ok(file) => file,
        Err(err) => return ExecExit::error(format!("cannot open {path}: {err}")),
    };
    match file.metadata().await {
        Ok(meta) if !meta.is_file() => {
            return ExecExit::error(format!("{path} is not a regular file"))
        }
        Ok(meta) if meta.len() > max_bytes => {
            return ExecExit::error(format!(
                "{path} is {} bytes, more than the limit of {max_bytes}",
                meta.len()
            ))
        }
        Ok(_) => {}
        Err(err) => return ExecExit::error(format!("cannot stat {path}: {err}")),
    }
    // A file that grows while it is read is cut at the limit.
    let pump = tokio::spawn(out.clone().pump(file.take(max_bytes), ExecStream::Stdout));
    let _abort = AbortAll(vec![pump.abort_handle()]);
    tokio::pin!(pump);
    loop {
        tokio::select! {
            done = &mut pump => {
                return match done {
                    Ok(Ok((size, sha256))) => ExecExit {
                        code: Some(0),
                        size: Some(size),
                        sha256: Some(sha256),
                        ..ExecExit::default()
                    },
                    Ok(Err(err)) => ExecExit::error(format!("cannot read {path}: {err}")),
                    Err(err) => ExecExit::error(format!("reader of {path} failed: {err}")),
                };
            }
            frame = rx.recv() => match frame {
                None => return ExecExit::error("session closed"),
                Some(ExecFrame::Credit { bytes }) => out.window.grant(bytes),
                Some(ExecFrame::Kill) => return ExecExit::error("copy cancelled"),
                Some(_) => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Execs on a link whose messages to the node agent land in the receiver.
    fn execs() -> (Arc<Execs>, mpsc::Receiver<Vec<u8>>) {
        let link = Arc::new(Link::default());
        let (to_agent, from_guest) = mpsc::channel(8);
        link.attach(to_agent);
        (Arc::new(Execs::new(link)), from_guest)
    }

    /// A session slot whose task never ends by itself (the test aborts it).
    fn insert(execs: &Execs, session: &str, frames: mpsc::Sender<ExecFrame>) {
        let task = tokio::spawn(std::future::pending::<()>());
        execs
            .sessions
            .lock()
            .expect("sessions")
            .insert(session.to_string(), SessionSlot { frames, task });
    }

    #[tokio::test]
    async fn a_late_frame_for_an_ending_session_is_dropped_without_an_error_exit() {
        let (execs, mut from_guest) = execs();
        // The command ended: the session dropped its frame receiver and is
        // still sending its own exit when the node agent's credit arrives.
        let (frames, receiver) = mpsc::channel(SESSION_QUEUE);
        drop(receiver);
        insert(&execs, "ending", frames);
        execs.frame("ending".into(), ExecFrame::Credit { bytes: 4096 });
        execs.frame("ending".into(), ExecFrame::StdinEof);
        assert!(
            from_guest.try_recv().is_err(),
            "a late frame must not produce an exit that races the command's own"
        );
        execs.close_all();
    }

    #[tokio::test]
    async fn a_frame_past_the_window_ends_the_session_with_an_error() {
        let (execs, mut from_guest) = execs();
        let (frames, _receiver) = mpsc::channel(1);
        frames
            .try_send(ExecFrame::StdinEof)
            .expect("room for one frame");
        insert(&execs, "flooded", frames);
        execs.frame("flooded".into(), ExecFrame::Credit { bytes: 1 });
        let line = from_guest.try_recv().expect("an exit for the overrun");
        let text = String::from_utf8(line).expect("utf-8");
        assert!(
            text.contains("flooded") && text.contains("past the session's window"),
            "{text}"
        );
        assert!(execs.sessions.lock().expect("sessions").is_empty());
    }
}
