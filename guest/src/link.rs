//! The link to the node agent that outlives each channel connection: the
//! session attaches and detaches the writer, while the heartbeat loop, the
//! program runner and the local API send through it and wait on it. It is a
//! leaf, so those modules share it without importing each other.

use std::sync::Mutex;
use std::time::Duration;

use measurelab_api::guest::{encode_line, GuestMessage};
use tokio::sync::futures::Notified;
use tokio::sync::{mpsc, oneshot, Notify};

/// The current connection, shared by the session, the heartbeat loop, the
/// program runner and the local API.
#[derive(Default)]
pub(crate) struct Link {
    // std Mutexes: held only to clone or swap, never across an await.
    writer: Mutex<Option<mpsc::Sender<Vec<u8>>>>,
    task_waiters: Mutex<Vec<oneshot::Sender<Vec<serde_json::Value>>>>,
    /// Wakes the heartbeat loop at once after a (re)connect.
    connected_now: Notify,
}

impl Link {
    /// Queues a message for the node agent. False if the channel is down or
    /// its queue is full: the message is dropped.
    pub(crate) fn send(&self, message: &GuestMessage) -> bool {
        let Some(writer) = self.writer.lock().ok().and_then(|w| w.clone()) else {
            return false;
        };
        let line = match encode_line(message) {
            Ok(line) => line,
            Err(err) => {
                tracing::error!(%err, "cannot encode a channel message");
                return false;
            }
        };
        match writer.try_send(line) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!("channel queue full; message dropped");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    pub(crate) fn connected(&self) -> bool {
        self.writer
            .lock()
            .map(|w| w.as_ref().is_some_and(|s| !s.is_closed()))
            .unwrap_or(false)
    }

    pub(crate) fn attach(&self, writer: mpsc::Sender<Vec<u8>>) {
        if let Ok(mut slot) = self.writer.lock() {
            *slot = Some(writer);
        }
        self.connected_now.notify_one();
    }

    pub(crate) fn detach(&self) {
        if let Ok(mut slot) = self.writer.lock() {
            *slot = None;
        }
        // Pending task polls cannot be answered on a new connection.
        if let Ok(mut waiters) = self.task_waiters.lock() {
            waiters.clear();
        }
    }

    /// Sends `poll_tasks` and waits for the node agent's `tasks`.
    pub(crate) async fn poll_tasks(
        &self,
        timeout: Duration,
    ) -> Result<Vec<serde_json::Value>, PollError> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut waiters) = self.task_waiters.lock() {
            waiters.push(tx);
        }
        if !self.send(&GuestMessage::PollTasks) {
            return Err(PollError::ChannelDown);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(tasks)) => Ok(tasks),
            Ok(Err(_)) => Err(PollError::ChannelDown),
            Err(_) => Err(PollError::Timeout),
        }
    }

    /// Makes the heartbeat loop send now rather than at its next tick.
    pub(crate) fn wake_heartbeat(&self) {
        self.connected_now.notify_one();
    }

    /// Completes when [`Link::wake_heartbeat`] is called or a channel attaches.
    pub(crate) fn heartbeat_wakeup(&self) -> Notified<'_> {
        self.connected_now.notified()
    }

    /// Answers every waiting poll: one `tasks` message is the current list,
    /// good for all who asked before it.
    pub(crate) fn answer_tasks(&self, tasks: Vec<serde_json::Value>) {
        let waiters = self
            .task_waiters
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default();
        if waiters.is_empty() {
            tracing::debug!("tasks arrived without a pending poll");
        }
        for waiter in waiters {
            let _ = waiter.send(tasks.clone());
        }
    }
}

/// Why a task poll got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PollError {
    ChannelDown,
    Timeout,
}
