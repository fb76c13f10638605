//! Leader election among controller replicas: the leader is the replica
//! whose session holds a session-level advisory lock.
//!
//! A background thread keeps a session of its own. Without the lock it
//! tries `pg_try_advisory_lock` every `check_every`; with it, it checks
//! every `check_every` that the session is alive. The server releases the
//! lock when the session ends, whatever ended it (the replica stopped or
//! crashed, a network cut the server noticed, an administrator), and another
//! replica takes it at its next try.
//!
//! The flag a replica reads can be stale: a leader learns that its session
//! is gone at its next check, up to `check_every` plus the TCP timeout
//! later, and another replica may be leader by then. Work whose double
//! execution matters must therefore also be fenced in the database (done
//! under [`PgDriver::write_lock`](super::PgDriver::write_lock) with a check of
//! what it is about to change), not rest on the flag alone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use measurelab_backoff::Backoff;
use postgres::Client;

use super::conn;
use super::error::{detail, PgError};
use super::keys;

/// Holds or tries for the leader lock until dropped.
#[derive(Debug)]
pub(crate) struct Leadership {
    leader: Arc<AtomicBool>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Leadership {
    /// Start trying for leadership on the database at `url` (the URL is
    /// checked here; the server need not be up yet).
    pub(crate) fn start(url: &str, check_every: Duration) -> Result<Leadership, PgError> {
        let mut config = conn::config(url)?;
        config.application_name("measurelab-controller leadership");
        // A silent peer (cut cable, frozen host) must end the session within
        // a few checks rather than after the kernel's default of hours.
        config
            .keepalives_idle(check_every.max(Duration::from_secs(1)))
            .tcp_user_timeout(check_every.saturating_mul(3).max(Duration::from_secs(3)));
        let leader = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = mpsc::channel();
        let flag = leader.clone();
        let thread = thread::Builder::new()
            .name("pg-leadership".into())
            .spawn(move || hold(&config, check_every, &flag, &stopped))
            .map_err(|source| PgError::Spawn {
                what: "leadership",
                source,
            })?;
        Ok(Leadership {
            leader,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Whether this replica held the lock at its last check (see the module
    /// doc for how stale that can be).
    pub(crate) fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Acquire)
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.leader.store(false, Ordering::Release);
        // Closing the channel wakes the thread; it drops its session, which
        // releases the lock on the server.
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn hold(
    config: &conn::Config,
    check_every: Duration,
    leader: &AtomicBool,
    stopped: &mpsc::Receiver<()>,
) {
    let mut backoff = Backoff::new(check_every, check_every.saturating_mul(10));
    loop {
        let mut client = match conn::open(config) {
            Ok(client) => client,
            Err(err) => {
                tracing::warn!(error = %err, "leadership: cannot connect");
                if wait(stopped, backoff.next_delay()) {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        loop {
            let held = if leader.load(Ordering::Acquire) {
                client.is_valid(check_every).map(|()| true)
            } else {
                try_lock(&mut client)
            };
            match held {
                Ok(held) => {
                    if held != leader.swap(held, Ordering::AcqRel) {
                        tracing::info!(leader = held, "leadership changed");
                    }
                }
                Err(err) => {
                    if leader.swap(false, Ordering::AcqRel) {
                        tracing::warn!(error = %detail(&err), "leadership lost with the session");
                    }
                    break;
                }
            }
            if wait(stopped, check_every) {
                return;
            }
        }
    }
}

fn try_lock(client: &mut Client) -> Result<bool, postgres::Error> {
    client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&keys::LEADER])?
        .try_get(0)
}

/// Wait `delay`; true if the owner asked the thread to stop meanwhile.
fn wait(stopped: &mpsc::Receiver<()>, delay: Duration) -> bool {
    !matches!(stopped.recv_timeout(delay), Err(RecvTimeoutError::Timeout))
}
