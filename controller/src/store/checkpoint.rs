//! Background WAL checkpoints, so the writer's own checkpoints stay cheap.
//!
//! SQLite's automatic checkpoint runs inside the committing connection: every
//! ~1000 WAL pages one heartbeat batch would also copy the whole WAL into the
//! database, stalling every ack queued behind it. A checkpoint on another
//! connection alone does not work either: under continuous writes a PASSIVE
//! checkpoint never catches up with the last frame, so the WAL is never
//! restarted and grows without bound (measured: ack p50 went from 4 ms to
//! 1.4 s). So both run: this thread copies most frames PASSIVE-ly (never
//! blocking the writer) several times a second, and the writer's automatic
//! checkpoint only has the last few frames left to copy before the WAL
//! restarts.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use super::database::open_connection;
use super::error::StoreError;

const PERIOD: Duration = Duration::from_millis(200);

pub(crate) struct Checkpointer {
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Checkpointer {
    pub fn start(path: &Path) -> Result<Checkpointer, StoreError> {
        let conn = open_connection(path)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || {
                // Anything but a timeout (stop requested, handle dropped) ends the loop.
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(PERIOD) {
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!(error = %e, "WAL checkpoint failed; retrying next period");
                    }
                }
                // Leave a small WAL behind so the next start replays little.
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "final WAL checkpoint failed");
                }
            })
            .map_err(|e| StoreError::Task(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpointer { stop, thread })
    }

    /// Run a last checkpoint and wait for the thread (after the writer stopped).
    pub fn stop(self) {
        let _ = self.stop.send(());
        if self.thread.join().is_err() {
            tracing::error!("store checkpoint thread panicked");
        }
    }
}
