//! `measurelab vm exec` and `measurelab vm cp`: a shell and file copies into
//! a VM over the guest channel (CLI → controller → node agent → guest),
//! scoped by the caller's token like every API call.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use measurelab_api::exec::{
    drive_session, drive_terminal_session, ExecExit, ExecOpen, TerminalSize,
};
use sha2::{Digest, Sha256};

use crate::api_conn::Connection;
use crate::landing::{self, HashingWriter};

/// Largest file `vm cp` copies unless `--max-bytes` says otherwise.
const DEFAULT_MAX_BYTES: u64 = 1024 * 1024 * 1024;

#[derive(Debug, Args)]
pub struct VmArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: VmCommand,
}

#[derive(Debug, Subcommand)]
enum VmCommand {
    /// Run a command in a VM, like `kubectl exec`: output is streamed, and
    /// this command exits with the remote command's exit code (128+N for a
    /// signal, 255 when it could not run).
    Exec {
        /// The VM: PLATFORM/VM, or its id.
        vm: String,
        /// Pass this terminal's stdin to the command (without it, the
        /// command's stdin is empty).
        #[arg(short = 'i', long = "stdin")]
        stdin: bool,
        /// Run the command on a terminal in the guest that is its
        /// controlling terminal (stdout and stderr arrive as one stream; the
        /// local terminal is put in raw mode and its size follows along).
        #[arg(short = 't', long = "tty")]
        tty: bool,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, num_args = 1..)]
        command: Vec<String>,
    },
    /// Copy a file into or out of a VM: `vm cp LOCAL PLATFORM/VM:/PATH` or
    /// `vm cp PLATFORM/VM:/PATH LOCAL`. Streamed, checked by SHA-256 on both
    /// ends, and written to a temporary file that is renamed only when the
    /// whole file arrived intact.
    Cp {
        /// Source: a local path, or PLATFORM/VM:/PATH.
        source: String,
        /// Destination: a local path (an existing directory keeps the file
        /// name), or PLATFORM/VM:/PATH (a PATH ending in `/` keeps it).
        destination: String,
        /// Refuse files larger than this many bytes.
        #[arg(long, default_value_t = DEFAULT_MAX_BYTES)]
        max_bytes: u64,
    },
}

pub fn main(args: VmArgs) -> ExitCode {
    match run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(255)
        }
    }
}

fn run(args: VmArgs) -> anyhow::Result<ExitCode> {
    let client = args.connection.client()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        match args.command {
            VmCommand::Exec {
                vm,
                stdin,
                tty,
                command,
            } => {
                let input = stdin.then(tokio::io::stdin);
                let exit = if tty {
                    exec_terminal(&client, &vm, command, input).await?
                } else {
                    let open = ExecOpen::Command {
                        argv: command,
                        tty,
                        size: None,
                    };
                    let stream = client.exec_open(&vm, &open).await?;
                    drive_session(stream, input, tokio::io::stdout(), tokio::io::stderr()).await?
                };
                if let Some(error) = &exit.error {
                    eprintln!("error: {error}");
                }
                Ok(ExitCode::from(exit.status().clamp(0, 255) as u8))
            }
            VmCommand::Cp {
                source,
                destination,
                max_bytes,
            } => {
                match (remote(&source), remote(&destination)) {
                    (None, Some((vm, path))) => {
                        put(&client, Path::new(&source), vm, path, max_bytes).await?
                    }
                    (Some((vm, path)), None) => {
                        get(&client, vm, path, Path::new(&destination), max_bytes).await?
                    }
                    (Some(_), Some(_)) => bail!(
                        "vm cp: copy between two VMs is not supported; copy through this machine"
                    ),
                    (None, None) => {
                        bail!("vm cp: one of SOURCE and DESTINATION must be PLATFORM/VM:/PATH")
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// `vm exec -t`: the guest's terminal gets this terminal's size, follows
/// its changes (SIGWINCH), and this terminal is raw for the session. The
/// raw mode is undone on every way out: the guard's drop covers returns,
/// errors and panics; SIGTERM and SIGHUP end the session here (they would
/// otherwise kill the process with the terminal still raw), and ^C is a
/// byte for the remote command in raw mode, not a signal to us.
async fn exec_terminal(
    client: &measurelab_api::client::Client,
    vm: &str,
    argv: Vec<String>,
    input: Option<tokio::io::Stdin>,
) -> anyhow::Result<ExecExit> {
    use tokio::signal::unix::{signal, SignalKind};
    let open = ExecOpen::Command {
        argv,
        tty: true,
        size: terminal_size(),
    };
    let stream = client.exec_open(vm, &open).await?;
    let mut winch = signal(SignalKind::window_change()).context("watching SIGWINCH")?;
    let mut term = signal(SignalKind::terminate()).context("watching SIGTERM")?;
    let mut hangup = signal(SignalKind::hangup()).context("watching SIGHUP")?;
    let (resize_tx, resizes) = tokio::sync::mpsc::channel(4);
    let _raw = RawTerminal::enter();
    let session = drive_terminal_session(stream, input, tokio::io::stdout(), resizes);
    tokio::pin!(session);
    loop {
        tokio::select! {
            exit = &mut session => return Ok(exit?),
            _ = winch.recv() => {
                if let Some(size) = terminal_size() {
                    // Full means a resize is already on its way; the
                    // next one carries the latest size anyway.
                    let _ = resize_tx.try_send(size);
                }
            }
            // Returning drops the connection, which ends the session; the
            // guest then kills the command's process group.
            _ = term.recv() => return Ok(ended_by(nix::sys::signal::Signal::SIGTERM)),
            _ = hangup.recv() => return Ok(ended_by(nix::sys::signal::Signal::SIGHUP)),
        }
    }
}

/// This command's own exit when `signal` ended it (128 + the signal).
fn ended_by(signal: nix::sys::signal::Signal) -> ExecExit {
    ExecExit {
        signal: Some(signal as i32),
        ..ExecExit::default()
    }
}

/// The size of the terminal on stdout, if it is one.
fn terminal_size() -> Option<TerminalSize> {
    let ws = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
    (ws.ws_row > 0 && ws.ws_col > 0).then_some(TerminalSize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

/// `PLATFORM/VM:/PATH` → (`PLATFORM/VM`, `/PATH`); `None` for a local path.
fn remote(spec: &str) -> Option<(&str, &str)> {
    let colon = spec.find(":/")?;
    let vm = &spec[..colon];
    if vm.is_empty() || vm.starts_with('/') || vm.starts_with('.') {
        return None;
    }
    Some((vm, &spec[colon + 1..]))
}

async fn put(
    client: &measurelab_api::client::Client,
    local: &Path,
    vm: &str,
    path: &str,
    max_bytes: u64,
) -> anyhow::Result<()> {
    let meta = tokio::fs::metadata(local)
        .await
        .with_context(|| format!("SOURCE {}", local.display()))?;
    if !meta.is_file() {
        bail!("SOURCE {} is not a regular file", local.display());
    }
    if meta.len() > max_bytes {
        bail!(
            "SOURCE {} is {} bytes, more than --max-bytes {max_bytes}",
            local.display(),
            meta.len()
        );
    }
    let path = if path.ends_with('/') {
        let name = local
            .file_name()
            .and_then(|n| n.to_str())
            .context("SOURCE has no file name")?;
        format!("{path}{name}")
    } else {
        path.to_string()
    };
    let sha256 = file_sha256(local).await?;
    let open = ExecOpen::Put {
        path: path.clone(),
        size: meta.len(),
        sha256: sha256.clone(),
    };
    let stream = client.exec_open(vm, &open).await?;
    let file = tokio::fs::File::open(local)
        .await
        .with_context(|| format!("SOURCE {}", local.display()))?;
    let exit = drive_session(stream, Some(file), tokio::io::sink(), tokio::io::stderr()).await?;
    check_copy(&exit, meta.len(), &sha256)?;
    eprintln!(
        "copied {} bytes to {vm}:{path} (sha256 {sha256})",
        meta.len()
    );
    Ok(())
}

async fn get(
    client: &measurelab_api::client::Client,
    vm: &str,
    path: &str,
    local: &Path,
    max_bytes: u64,
) -> anyhow::Result<()> {
    let target = landing::target(local, path)?;
    let (temp, temp_path, file) = landing::create_beside(&target).await?;
    let open = ExecOpen::Get {
        path: path.to_string(),
        max_bytes,
    };
    let stream = client.exec_open(vm, &open).await?;
    let mut sink = HashingWriter::new(file);
    let exit = drive_session(
        stream,
        None::<tokio::io::Empty>,
        &mut sink,
        tokio::io::stderr(),
    )
    .await?;
    let written = sink.written;
    let sha256 = hex::encode(sink.hasher.clone().finalize());
    if exit.error.is_none() && exit.sha256.as_deref() != Some(sha256.as_str()) {
        bail!(
            "the copy arrived damaged: the guest read sha256 {}, {} bytes arrived with sha256 {sha256}",
            exit.sha256.as_deref().unwrap_or("(none)"),
            written
        );
    }
    check_copy(&exit, written, &sha256)?;
    sink.inner
        .sync_all()
        .await
        .with_context(|| format!("cannot sync {}", temp_path.display()))?;
    tokio::fs::rename(&temp_path, &target)
        .await
        .with_context(|| format!("cannot rename onto {}", target.display()))?;
    temp.keep();
    eprintln!(
        "copied {written} bytes from {vm}:{path} to {} (sha256 {sha256})",
        target.display()
    );
    Ok(())
}

/// The guest's word on a copy must match what this side sent or received.
fn check_copy(exit: &ExecExit, size: u64, sha256: &str) -> anyhow::Result<()> {
    if let Some(error) = &exit.error {
        bail!("{error}");
    }
    if exit.size != Some(size) || exit.sha256.as_deref() != Some(sha256) {
        bail!(
            "the copy does not add up: {size} bytes with sha256 {sha256} here, the guest reports {:?} bytes with sha256 {:?}",
            exit.size,
            exit.sha256
        );
    }
    Ok(())
}

async fn file_sha256(path: &Path) -> anyhow::Result<String> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("SOURCE {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .await
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

/// The local terminal in raw mode for `-t`, restored on drop. `None` when
/// stdin is no terminal.
struct RawTerminal(nix::sys::termios::Termios);

impl RawTerminal {
    fn enter() -> Option<Self> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(RawTerminal(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::remote;

    #[test]
    fn remote_specs_are_told_from_local_paths() {
        assert_eq!(remote("lab/vm1:/tmp/x"), Some(("lab/vm1", "/tmp/x")));
        assert_eq!(remote("./a:/b"), None);
        assert_eq!(remote("/tmp/file"), None);
        assert_eq!(remote("file.txt"), None);
    }
}
