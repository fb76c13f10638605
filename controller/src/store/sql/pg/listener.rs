//! `LISTEN` on a thread of its own, handing what arrives to async code.
//!
//! Notifications sent while the listener was disconnected are lost (the
//! server keeps them only for sessions that are listening), so after every
//! (re)connect the listener first delivers [`ListenEvent::Listening`]: a
//! consumer re-reads whatever it caches on that event, and from then on
//! every committed `NOTIFY` on the channel reaches it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use measurelab_backoff::Backoff;
use postgres::Client;
use tokio::sync::mpsc;

use super::conn;
use super::error::{detail, PgError};

/// How often the thread looks up from waiting to see whether it should stop.
const STOP_POLL: Duration = Duration::from_millis(200);
const RECONNECT_FIRST: Duration = Duration::from_millis(200);
const RECONNECT_CAP: Duration = Duration::from_secs(10);
/// PostgreSQL identifiers are at most 63 bytes.
const CHANNEL_MAX: usize = 63;

/// What a [`Listener`] delivers.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum ListenEvent {
    /// LISTEN is in force (again): anything sent before may have been
    /// missed, anything committed after arrives.
    Listening,
    /// The payload of one notification on the channel.
    Payload(String),
}

/// Listens on one channel until dropped or until the receiver is dropped.
#[derive(Debug)]
pub(crate) struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    /// Listen on `channel` of the database at `url`, sending events to
    /// `events`. The URL and channel name are checked here; the server need
    /// not be up yet (the thread connects and reconnects with a backoff).
    pub(crate) fn start(
        url: &str,
        channel: &str,
        events: mpsc::Sender<ListenEvent>,
    ) -> Result<Listener, PgError> {
        let mut config = conn::config(url)?;
        config.application_name("measurelab-controller listener");
        if channel.is_empty() || channel.len() > CHANNEL_MAX {
            return Err(PgError::Url {
                reason: format!("channel {channel:?}: must be 1..={CHANNEL_MAX} bytes"),
            });
        }
        // A quoted identifier takes any text; a doubled quote escapes one.
        let listen = format!("LISTEN \"{}\"", channel.replace('"', "\"\""));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::Builder::new()
            .name("pg-listener".into())
            .spawn(move || listen_loop(&config, &listen, &events, &flag))
            .map_err(|source| PgError::Spawn {
                what: "listener",
                source,
            })?;
        Ok(Listener {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn listen_loop(
    config: &conn::Config,
    listen: &str,
    events: &mpsc::Sender<ListenEvent>,
    stop: &AtomicBool,
) {
    let mut backoff = Backoff::new(RECONNECT_FIRST, RECONNECT_CAP);
    let stopping = || stop.load(Ordering::Acquire) || events.is_closed();
    while !stopping() {
        let mut client = match conn::open(config).and_then(|mut client| {
            client
                .batch_execute(listen)
                .map(|()| client)
                .map_err(|err| PgError::query(listen, err))
        }) {
            Ok(client) => client,
            Err(err) => {
                tracing::warn!(error = %err, "listener: cannot listen");
                pause(backoff.next_delay(), &stopping);
                continue;
            }
        };
        backoff.reset();
        if events.blocking_send(ListenEvent::Listening).is_err() {
            return;
        }
        if let Err(err) = deliver(&mut client, events, &stopping) {
            tracing::warn!(error = %detail(&err), "listener: session lost, reconnecting");
        }
    }
}

/// Hand notifications on until told to stop (Ok) or the session fails.
fn deliver(
    client: &mut Client,
    events: &mpsc::Sender<ListenEvent>,
    stopping: &dyn Fn() -> bool,
) -> Result<(), postgres::Error> {
    use postgres::fallible_iterator::FallibleIterator;
    while !stopping() {
        let next = client.notifications().timeout_iter(STOP_POLL).next()?;
        match next {
            Some(notification) => {
                let event = ListenEvent::Payload(notification.payload().to_string());
                if events.blocking_send(event).is_err() {
                    return Ok(());
                }
            }
            // A timeout, or a session the server closed without an error.
            None if client.is_closed() => {
                return client.is_valid(STOP_POLL);
            }
            None => {}
        }
    }
    Ok(())
}

/// Wait `delay` in steps, returning early once stopping.
fn pause(delay: Duration, stopping: &dyn Fn() -> bool) {
    let deadline = std::time::Instant::now() + delay;
    while !stopping() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        thread::sleep(left.min(STOP_POLL));
    }
}
