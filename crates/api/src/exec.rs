//! `vm exec` and `vm cp` sessions: the frames every hop carries unchanged
//! (CLI ⟷ controller over an upgraded HTTP/1.1 connection, controller ⟷ node
//! agent over the agent-initiated `ExecChannel` gRPC stream, node agent ⟷
//! guest over the guest channel).
//!
//! One frame type on every hop means no hop re-frames data, and flow control
//! is end to end: each side may have at most [`EXEC_WINDOW_BYTES`] of data
//! (stdin one way, output the other) that the far end has not acknowledged
//! with a [`ExecFrame::Credit`]. The hops in between only forward, so their
//! queues never hold more than a window per session, and a 10 MiB stdout
//! moves at the pace of the slowest reader instead of piling up in memory.
//! The node agent counts the credit it forwarded to a guest and ends a
//! session whose guest sends more (guests are hostile).
//!
//! On the HTTP hop and the guest channel a frame is one JSON line
//! (`\n`-terminated); on gRPC it is the same JSON in a `bytes` field. Data is
//! base64 in at most [`EXEC_FRAME_BYTES`] pieces, so a line stays far below
//! the guest channel's line bounds.

use serde::{Deserialize, Serialize};

/// Most data bytes (before base64) in one [`ExecFrame::Stdin`] or
/// [`ExecFrame::Output`].
pub const EXEC_FRAME_BYTES: usize = 32 * 1024;

/// Data a sender may have in flight before the receiver credits it back.
pub const EXEC_WINDOW_BYTES: u64 = 256 * 1024;

/// Least a data frame costs against the window, however few bytes it
/// carries: so a window holds at most [`EXEC_MAX_FRAMES_IN_FLIGHT`] frames,
/// and every queue on the way can be sized by frames, whether a program
/// writes 32 KiB at a time or one keystroke.
pub const EXEC_MIN_FRAME_COST: u64 = 1024;

/// Most data frames one direction of a session can have in flight.
pub const EXEC_MAX_FRAMES_IN_FLIGHT: usize = (EXEC_WINDOW_BYTES / EXEC_MIN_FRAME_COST) as usize;

/// What a data frame of `data_len` bytes costs against the window (and what
/// its receiver credits back).
pub fn frame_cost(data_len: u64) -> u64 {
    data_len.max(EXEC_MIN_FRAME_COST)
}

/// Longest JSON line of a frame on the HTTP hop or the guest channel: a
/// full data frame in base64 plus its envelope.
pub const MAX_EXEC_LINE_BYTES: usize = 64 * 1024;

/// Most arguments (and most bytes of all arguments) a command may have.
pub const MAX_EXEC_ARGS: usize = 256;
/// See [`MAX_EXEC_ARGS`].
pub const MAX_EXEC_ARGV_BYTES: usize = 32 * 1024;

/// Hello feature: the guest runs `exec` sessions and copies files.
pub const FEATURE_EXEC: &str = "exec";

/// Hello feature: the guest answers [`ExecOpen::Stat`] (program output
/// files). A guest without it would drop the frame it cannot parse, so the
/// node agent refuses the session up front instead.
pub const FEATURE_EXEC_STAT: &str = "exec_stat";

/// Exit code of a [`ExecOpen::Stat`] whose file does not exist (ENOENT), so
/// "absent" is told apart from a failure without parsing error text.
pub const STAT_ABSENT_CODE: i32 = 2;

/// The HTTP `Upgrade` token of an exec session (`POST
/// /v1/platforms/{platform}/vms/{vm}/exec`).
pub const EXEC_UPGRADE_PROTOCOL: &str = "measurelab-exec.v1";

/// What a session does in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExecOpen {
    /// Run a command; stdin, stdout and stderr are streamed.
    Command {
        /// Program and arguments (`argv[0]` is looked up on `PATH`).
        argv: Vec<String>,
        /// Run it on a pseudo-terminal (stdout and stderr become one stream)
        /// that is the command's controlling terminal.
        #[serde(default)]
        tty: bool,
        /// The terminal's size at the start (`tty` only; later changes come
        /// as `resize` frames). Without it the size is 0x0, as on a serial
        /// line.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<TerminalSize>,
    },
    /// Write a file: the stdin data is the content. It goes to a temporary
    /// file beside `path`, renamed over `path` only when `size` bytes with
    /// SHA-256 `sha256` arrived, so a failed copy leaves nothing behind.
    Put {
        /// Absolute path in the guest.
        path: String,
        /// Content length in bytes.
        size: u64,
        /// Lowercase hex SHA-256 of the content.
        sha256: String,
    },
    /// Read a file: its content comes as stdout, and the exit frame carries
    /// its size and SHA-256.
    Get {
        /// Absolute path in the guest.
        path: String,
        /// Refuse a file larger than this.
        max_bytes: u64,
    },
    /// Describe a regular file without sending it: the exit frame carries
    /// its size, SHA-256 and modification time, or exit code
    /// [`STAT_ABSENT_CODE`] when there is no such file.
    Stat {
        /// Absolute path in the guest.
        path: String,
        /// Hash at most this many bytes; a larger file reports its size
        /// and mtime without a SHA-256.
        max_hash_bytes: u64,
    },
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TerminalSize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// Which output stream a [`ExecFrame::Output`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecStream {
    /// Standard output (or the terminal, or the file of a `get`).
    Stdout,
    /// Standard error.
    Stderr,
}

/// How a session ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecExit {
    /// Exit code when the command exited by itself (0 for a copy that
    /// succeeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// Signal number when a signal ended the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Why the session failed before or instead of an exit: the command
    /// could not start, a copy did not add up, a hop gave up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For copies: bytes written or read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// For copies: lowercase hex SHA-256 of what was written or read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// For `stat`: the file's modification time, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_unix: Option<i64>,
}

impl ExecExit {
    /// An exit that reports only an error.
    pub fn error(reason: impl Into<String>) -> Self {
        ExecExit {
            error: Some(reason.into()),
            ..ExecExit::default()
        }
    }

    /// The process exit status a CLI should end with: the command's code,
    /// 128 + signal, or 255 for an error (kubectl and ssh do the same).
    pub fn status(&self) -> i32 {
        match (self.code, self.signal, &self.error) {
            (_, _, Some(_)) => 255,
            (Some(code), _, _) => code,
            (None, Some(signal), _) => 128 + signal,
            (None, None, None) => 255,
        }
    }
}

/// One frame of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecFrame {
    /// Client → guest, first frame: what to do.
    Open {
        /// The session.
        open: ExecOpen,
    },
    /// Client → guest: stdin bytes, base64, at most [`EXEC_FRAME_BYTES`].
    Stdin {
        /// The bytes, base64.
        data: String,
    },
    /// Client → guest: stdin is done (the command sees end of file).
    StdinEof,
    /// Guest → client: output bytes, base64, at most [`EXEC_FRAME_BYTES`].
    Output {
        /// Which stream.
        stream: ExecStream,
        /// The bytes, base64.
        data: String,
    },
    /// Either way: the sender consumed `bytes` more of the other side's data.
    Credit {
        /// Bytes consumed since the last credit.
        bytes: u64,
    },
    /// Client → guest: a terminal size change (`tty` sessions).
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Client → guest: end the command (its whole process group).
    Kill,
    /// Guest → client, last frame.
    Exit {
        /// How it ended.
        exit: ExecExit,
    },
}

impl ExecFrame {
    /// Data bytes a frame carries against the window (decoded size of its
    /// base64; 0 for control frames).
    pub fn data_len(&self) -> u64 {
        match self {
            ExecFrame::Stdin { data } | ExecFrame::Output { data, .. } => {
                // base64 length → decoded length, without decoding.
                let padding = data.bytes().rev().take_while(|b| *b == b'=').count();
                ((data.len() / 4 * 3).saturating_sub(padding)) as u64
            }
            _ => 0,
        }
    }

    /// What the frame costs against the window ([`frame_cost`]; 0 for
    /// control frames).
    pub fn cost(&self) -> u64 {
        match self {
            ExecFrame::Stdin { .. } | ExecFrame::Output { .. } => frame_cost(self.data_len()),
            _ => 0,
        }
    }
}

/// A session request that can never work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ExecOpenError {
    /// The field at fault, e.g. `argv`.
    pub field: String,
    /// Why.
    pub reason: String,
}

/// Checks an [`ExecOpen`] field by field. The controller checks what a user
/// sends, and the guest checks again (it trusts no one).
pub fn check_open(open: &ExecOpen) -> Result<(), ExecOpenError> {
    let bad = |field: &str, reason: String| {
        Err(ExecOpenError {
            field: field.into(),
            reason,
        })
    };
    match open {
        ExecOpen::Command { argv, .. } => {
            if argv.is_empty() || argv[0].is_empty() {
                return bad("argv", "must name a command".into());
            }
            if argv.len() > MAX_EXEC_ARGS {
                return bad(
                    "argv",
                    format!("has {} entries; at most {MAX_EXEC_ARGS}", argv.len()),
                );
            }
            let bytes: usize = argv.iter().map(|a| a.len()).sum();
            if bytes > MAX_EXEC_ARGV_BYTES {
                return bad(
                    "argv",
                    format!("is {bytes} bytes; at most {MAX_EXEC_ARGV_BYTES}"),
                );
            }
            if argv.iter().any(|a| a.contains('\0')) {
                return bad("argv", "contains a NUL byte".into());
            }
        }
        ExecOpen::Put { path, sha256, .. } => {
            check_guest_path(path).or_else(|reason| bad("path", reason))?;
            if sha256.len() != 64
                || !sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return bad("sha256", "must be 64 lowercase hex digits".into());
            }
        }
        ExecOpen::Get { path, .. } | ExecOpen::Stat { path, .. } => {
            check_guest_path(path).or_else(|reason| bad("path", reason))?;
        }
    }
    Ok(())
}

/// Checks a path in the guest: absolute, no `..`, no NUL, at most 4096
/// bytes, not the root. `Err` is the reason (without the field name).
pub fn check_guest_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} is not absolute"));
    }
    if path.len() > 4096 {
        return Err(format!("is {} bytes; at most 4096", path.len()));
    }
    if path.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    if path.split('/').any(|part| part == "..") {
        return Err(format!("{path:?} contains '..'"));
    }
    if path.trim_end_matches('/').is_empty() {
        return Err("must name a file, not /".into());
    }
    Ok(())
}

/// How often an idle session sends an empty credit, so the controller's
/// idle watchdog (which closes a connection on which no byte moves) leaves
/// a quiet interactive shell open.
pub const EXEC_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// Why a client-side session failed (the guest's own failures come back in
/// [`ExecExit::error`]).
#[derive(Debug, thiserror::Error)]
pub enum ExecSessionError {
    /// Reading or writing the stream, stdin or an output failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being read or written.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The stream ended before the exit frame.
    #[error("the controller closed the session before the command's exit")]
    Closed,
    /// The far side sent something that is not a frame.
    #[error("bad frame from the controller: {0}")]
    BadFrame(String),
}

/// Drives a session on the client side over `stream` (the upgraded
/// connection): sends `stdin` (if any) within the guest's window, writes
/// each output frame to `stdout` or `stderr` and credits it back once
/// written, so a slow terminal slows the guest command rather than growing
/// a queue. Returns the guest's exit.
pub async fn drive_session<S, I, O, E>(
    stream: S,
    stdin: Option<I>,
    mut stdout: O,
    mut stderr: E,
) -> Result<ExecExit, ExecSessionError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    I: tokio::io::AsyncRead + Unpin,
    O: tokio::io::AsyncWrite + Unpin,
    E: tokio::io::AsyncWrite + Unpin,
{
    drive(stream, stdin, &mut stdout, &mut stderr, None).await
}

/// [`drive_session`] for a `tty` session: every size from `resizes` is
/// sent to the guest as a `resize` frame. The terminal's one output
/// stream goes to `stdout`.
pub async fn drive_terminal_session<S, I, O>(
    stream: S,
    stdin: Option<I>,
    mut stdout: O,
    mut resizes: tokio::sync::mpsc::Receiver<TerminalSize>,
) -> Result<ExecExit, ExecSessionError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    I: tokio::io::AsyncRead + Unpin,
    O: tokio::io::AsyncWrite + Unpin,
{
    drive(
        stream,
        stdin,
        &mut stdout,
        &mut tokio::io::sink(),
        Some(&mut resizes),
    )
    .await
}

async fn drive<S, I, O, E>(
    stream: S,
    mut stdin: Option<I>,
    stdout: &mut O,
    stderr: &mut E,
    resizes: Option<&mut tokio::sync::mpsc::Receiver<TerminalSize>>,
) -> Result<ExecExit, ExecSessionError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    I: tokio::io::AsyncRead + Unpin,
    O: tokio::io::AsyncWrite + Unpin,
    E: tokio::io::AsyncWrite + Unpin,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut framer = crate::lines::LineFramer::new(MAX_EXEC_LINE_BYTES);
    exchange(
        &mut reader,
        &mut writer,
        &mut framer,
        stdin.as_mut(),
        stdout,
        stderr,
        resizes,
    )
    .await
}

/// Writes a frame towards the controller unless an earlier write failed.
/// A failed write does not end the session: the controller may have closed
/// its side after sending the last output and the exit frame, and those
/// frames are already on their way to us. Dropping them because a credit
/// could not be sent is how a download came out one frame short; so the
/// error is kept and reported only if the stream ends without an exit.
async fn send_frame<W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut W,
    broken: &mut Option<std::io::Error>,
    frame: &ExecFrame,
) -> Result<(), ExecSessionError> {
    use tokio::io::AsyncWriteExt;
    if broken.is_some() {
        return Ok(());
    }
    let line =
        crate::lines::encode_line(frame).map_err(|e| ExecSessionError::BadFrame(e.to_string()))?;
    if let Err(err) = writer.write_all(&line).await {
        *broken = Some(err);
    }
    Ok(())
}

async fn exchange<R, W, I, O, E>(
    reader: &mut R,
    writer: &mut W,
    framer: &mut crate::lines::LineFramer,
    mut stdin: Option<&mut I>,
    stdout: &mut O,
    stderr: &mut E,
    mut resizes: Option<&mut tokio::sync::mpsc::Receiver<TerminalSize>>,
) -> Result<ExecExit, ExecSessionError>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
    I: tokio::io::AsyncRead + Unpin,
    O: tokio::io::AsyncWrite + Unpin,
    E: tokio::io::AsyncWrite + Unpin,
{
    use base64::Engine as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let io = |what| move |source| ExecSessionError::Io { what, source };
    let mut net_buf = vec![0u8; 64 * 1024];
    let mut stdin_buf = vec![0u8; EXEC_FRAME_BYTES];
    let (mut sent, mut acked) = (0u64, 0u64);
    let mut pending: std::collections::VecDeque<Vec<u8>> = Default::default();
    // Set once a write failed: from then on only the frames already sent
    // to us are read (see `send_frame`).
    let mut broken: Option<std::io::Error> = None;
    // Why the stream ended without an exit frame: a failed write explains
    // it better than the end of the stream that followed.
    let ended =
        |broken: &mut Option<std::io::Error>, otherwise: ExecSessionError| match broken.take() {
            Some(source) => ExecSessionError::Io {
                what: "sending",
                source,
            },
            None => otherwise,
        };
    if stdin.is_none() {
        send_frame(writer, &mut broken, &ExecFrame::StdinEof).await?;
    }
    let mut keepalive = tokio::time::interval(EXEC_KEEPALIVE);
    keepalive.tick().await;
    loop {
        let room = EXEC_WINDOW_BYTES.saturating_sub(sent - acked) as usize;
        // A frame costs at least EXEC_MIN_FRAME_COST, so wait for that much.
        let want = if (room as u64) < EXEC_MIN_FRAME_COST {
            0
        } else {
            room.min(EXEC_FRAME_BYTES)
        };
        tokio::select! {
            read = async {
                match stdin.as_mut() {
                    Some(input) if want > 0 && broken.is_none() => input.read(&mut stdin_buf[..want]).await,
                    _ => std::future::pending().await,
                }
            } => {
                let n = read.map_err(io("reading stdin"))?;
                let frame = if n == 0 {
                    stdin = None;
                    ExecFrame::StdinEof
                } else {
                    sent += frame_cost(n as u64);
                    ExecFrame::Stdin {
                        data: base64::engine::general_purpose::STANDARD.encode(&stdin_buf[..n]),
                    }
                };
                send_frame(writer, &mut broken, &frame).await?;
            }
            read = reader.read(&mut net_buf) => {
                let n = match read {
                    Ok(n) => n,
                    Err(source) => return Err(ended(&mut broken, ExecSessionError::Io { what: "receiving", source })),
                };
                if n == 0 {
                    return Err(ended(&mut broken, ExecSessionError::Closed));
                }
                for line in framer.push(&net_buf[..n]) {
                    let line = line.map_err(|e| ExecSessionError::BadFrame(e.to_string()))?;
                    pending.push_back(line);
                }
                while let Some(line) = pending.pop_front() {
                    let frame: ExecFrame = serde_json::from_slice(&line)
                        .map_err(|e| ExecSessionError::BadFrame(e.to_string()))?;
                    match frame {
                        ExecFrame::Output { stream, data } => {
                            let bytes = base64::engine::general_purpose::STANDARD
                                .decode(data)
                                .map_err(|e| ExecSessionError::BadFrame(e.to_string()))?;
                            match stream {
                                ExecStream::Stdout => {
                                    stdout.write_all(&bytes).await.map_err(io("writing stdout"))?;
                                    stdout.flush().await.map_err(io("writing stdout"))?;
                                }
                                ExecStream::Stderr => {
                                    stderr.write_all(&bytes).await.map_err(io("writing stderr"))?;
                                    stderr.flush().await.map_err(io("writing stderr"))?;
                                }
                            }
                            let credit = ExecFrame::Credit { bytes: frame_cost(bytes.len() as u64) };
                            send_frame(writer, &mut broken, &credit).await?;
                        }
                        ExecFrame::Credit { bytes } => acked = acked.saturating_add(bytes).min(sent),
                        ExecFrame::Exit { exit } => return Ok(exit),
                        _ => {}
                    }
                }
            }
            size = async {
                match resizes.as_mut() {
                    Some(resizes) => resizes.recv().await,
                    None => std::future::pending().await,
                }
            } => match size {
                Some(TerminalSize { rows, cols }) => {
                    send_frame(writer, &mut broken, &ExecFrame::Resize { rows, cols }).await?;
                }
                // The sender is gone: no more size changes to pass on.
                None => resizes = None,
            },
            _ = keepalive.tick() => {
                send_frame(writer, &mut broken, &ExecFrame::Credit { bytes: 0 }).await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The controller's side of an upgraded stream that has already sent
    /// its last frames and closed: each read yields one queued line, and
    /// every write after the first fails like a write to a closed socket.
    struct ClosedAfterSending {
        lines: std::collections::VecDeque<Vec<u8>>,
        writes: usize,
    }

    impl tokio::io::AsyncRead for ClosedAfterSending {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if let Some(line) = self.lines.pop_front() {
                buf.put_slice(&line);
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    impl tokio::io::AsyncWrite for ClosedAfterSending {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.writes += 1;
            std::task::Poll::Ready(if self.writes == 1 {
                Ok(buf.len())
            } else {
                Err(std::io::ErrorKind::BrokenPipe.into())
            })
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn output_sent_before_the_far_end_closed_is_all_written() {
        use base64::Engine as _;
        let output = |byte: u8| ExecFrame::Output {
            stream: ExecStream::Stdout,
            data: base64::engine::general_purpose::STANDARD.encode([byte; 100]),
        };
        let exit = ExecExit {
            code: Some(0),
            size: Some(200),
            ..ExecExit::default()
        };
        let lines = [
            output(b'a'),
            output(b'b'),
            ExecFrame::Exit { exit: exit.clone() },
        ]
        .iter()
        .map(|frame| crate::lines::encode_line(frame).unwrap())
        .collect();
        let stream = ClosedAfterSending { lines, writes: 0 };
        let mut stdout = Vec::new();
        // The credit for the first output cannot be sent; the second output
        // and the exit were sent before that and must still arrive.
        let got = drive_session(
            stream,
            None::<tokio::io::Empty>,
            &mut stdout,
            tokio::io::sink(),
        )
        .await
        .unwrap();
        assert_eq!(got, exit);
        let mut want = vec![b'a'; 100];
        want.extend([b'b'; 100]);
        assert_eq!(stdout, want);
    }

    #[tokio::test]
    async fn a_stream_that_ends_without_an_exit_reports_the_failed_send() {
        let stream = ClosedAfterSending {
            lines: Default::default(),
            writes: 1,
        };
        let err = drive_session(
            stream,
            None::<tokio::io::Empty>,
            tokio::io::sink(),
            tokio::io::sink(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                ExecSessionError::Io {
                    what: "sending",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn frames_have_a_stable_wire_form() {
        let open = ExecFrame::Open {
            open: ExecOpen::Command {
                argv: vec!["true".into()],
                tty: false,
                size: None,
            },
        };
        assert_eq!(
            serde_json::to_value(&open).unwrap(),
            serde_json::json!({"type":"open","open":{"kind":"command","argv":["true"],"tty":false}})
        );
        let exit: ExecFrame = serde_json::from_str(r#"{"type":"exit","exit":{"code":3}}"#).unwrap();
        assert!(matches!(exit, ExecFrame::Exit { ref exit } if exit.status() == 3));
        let credit: ExecFrame = serde_json::from_str(r#"{"type":"credit","bytes":5}"#).unwrap();
        assert_eq!(credit, ExecFrame::Credit { bytes: 5 });
    }

    #[test]
    fn data_len_is_the_decoded_size() {
        for (data, len) in [("", 0), ("eA==", 1), ("eHk=", 2), ("eHl6", 3)] {
            let frame = ExecFrame::Stdin { data: data.into() };
            assert_eq!(frame.data_len(), len, "{data}");
        }
    }

    #[test]
    fn exit_status_follows_the_shell_convention() {
        let signalled = ExecExit {
            signal: Some(9),
            ..ExecExit::default()
        };
        assert_eq!(signalled.status(), 137);
        assert_eq!(ExecExit::error("x").status(), 255);
    }

    #[test]
    fn bad_requests_name_the_field() {
        let cases = [
            (
                ExecOpen::Command {
                    argv: vec![],
                    tty: false,
                    size: None,
                },
                "argv",
            ),
            (
                ExecOpen::Put {
                    path: "rel/x".into(),
                    size: 1,
                    sha256: "0".repeat(64),
                },
                "path",
            ),
            (
                ExecOpen::Put {
                    path: "/tmp/x".into(),
                    size: 1,
                    sha256: "XYZ".into(),
                },
                "sha256",
            ),
            (
                ExecOpen::Get {
                    path: "/tmp/../etc/shadow".into(),
                    max_bytes: 1,
                },
                "path",
            ),
            (
                ExecOpen::Get {
                    path: "/".into(),
                    max_bytes: 1,
                },
                "path",
            ),
        ];
        for (open, field) in cases {
            assert_eq!(check_open(&open).unwrap_err().field, field, "{open:?}");
        }
    }
}
