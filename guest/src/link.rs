//! The link to the node agent that outlives each channel connection: the
//! session attaches and detaches the writer, while the heartbeat loop, the
//! program runner and the local API send through it and wait on it. It is a
//! leaf, so those modules share it without importing each other.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use measurelab_api::guest::{encode_line, GuestMessage};
use tokio::sync::futures::Notified;
use tokio::sync::{mpsc, oneshot, Notify};

/// A waiting `GET /tasks`: the task list, or why the node agent refused.
type TaskWaiter = oneshot::Sender<Result<Vec<serde_json::Value>, String>>;

/// The current connection, shared by the session, the heartbeat loop, the
/// program runner and the local API.
#[derive(Default)]
pub(crate) struct Link {
    // std Mutexes: held only to clone or swap, never across an await.
    writer: Mutex<Option<mpsc::Sender<Vec<u8>>>>,
    task_waiters: Mutex<Vec<TaskWaiter>>,
    /// Results waiting for the node agent's `result_ack`, by request id.
    result_waiters: Mutex<HashMap<String, oneshot::Sender<Result<(), PostError>>>>,
    /// Wakes the heartbeat loop at once after a (re)connect.
    connected_now: Notify,
    next_request: std::sync::atomic::AtomicU64,
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

    /// Queues a message for the node agent, waiting for room in the queue
    /// (exec data, which must not be dropped and is bounded by its window).
    /// False if the channel is down.
    pub(crate) async fn send_wait(&self, message: &GuestMessage) -> bool {
        let Some(writer) = self.writer.lock().ok().and_then(|w| w.clone()) else {
            return false;
        };
        match encode_line(message) {
            Ok(line) => writer.send(line).await.is_ok(),
            Err(err) => {
                tracing::error!(%err, "cannot encode a channel message");
                false
            }
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
        // Pending task polls and results cannot be answered on a new
        // connection; their waiters see the channel go down.
        if let Ok(mut waiters) = self.task_waiters.lock() {
            waiters.clear();
        }
        if let Ok(mut waiters) = self.result_waiters.lock() {
            waiters.clear();
        }
    }

    /// Sends a result and waits until the node agent says it is durable
    /// (spooled to its disk or committed by the controller).
    pub(crate) async fn post_result(
        &self,
        task_id: String,
        document: serde_json::Value,
        timeout: Duration,
    ) -> Result<(), PostError> {
        // Unique for this guest agent's life, which is all an answer needs.
        let request_id = format!(
            "r{}",
            self.next_request
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let (tx, rx) = oneshot::channel();
        if let Ok(mut waiters) = self.result_waiters.lock() {
            waiters.insert(request_id.clone(), tx);
        }
        let forget = || {
            if let Ok(mut waiters) = self.result_waiters.lock() {
                waiters.remove(&request_id);
            }
        };
        let message = GuestMessage::Result {
            task_id,
            document,
            request_id: Some(request_id.clone()),
        };
        if !self.send(&message) {
            forget();
            return Err(PostError::ChannelDown);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(refusal))) => Err(refusal),
            Ok(Err(_)) => Err(PostError::ChannelDown),
            Err(_) => {
                forget();
                Err(PostError::Timeout)
            }
        }
    }

    /// The node agent's answer to a posted result.
    pub(crate) fn answer_result(&self, request_id: &str, outcome: Result<(), PostError>) {
        let waiter = self
            .result_waiters
            .lock()
            .ok()
            .and_then(|mut w| w.remove(request_id));
        match waiter {
            Some(waiter) => {
                let _ = waiter.send(outcome);
            }
            None => tracing::debug!(request_id, "result_ack without a waiting post"),
        }
    }

    /// The node agent refused to relay a task poll: every waiting poll fails.
    pub(crate) fn refuse_polls(&self, reason: &str) {
        let waiters = self
            .task_waiters
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default();
        for waiter in waiters {
            let _ = waiter.send(Err(reason.to_string()));
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
            Ok(Ok(Ok(tasks))) => Ok(tasks),
            Ok(Ok(Err(reason))) => Err(PollError::Refused(reason)),
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
            let _ = waiter.send(Ok(tasks.clone()));
        }
    }
}

/// Why a task poll got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PollError {
    ChannelDown,
    Timeout,
    /// The node agent would not relay it (rate or queue limit).
    Refused(String),
}

/// Why a result is not known to be durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PostError {
    ChannelDown,
    /// No answer in time: it may or may not be stored; posting it again is
    /// safe (the controller keeps one result per run id).
    Timeout,
    /// The node agent did not store it (spool full, rate or queue limit).
    Refused(String),
    /// The controller refused it for good (a task that is not the VM's
    /// platform's, an invalid document): posting it again cannot succeed.
    Rejected(String),
}
