//! Bounds on what a guest can make its node agent do. Guests are not
//! trusted, and one guest must not slow the relay of the others:
//!
//! - every message a guest sends (but `hello`) spends a token of its VM's
//!   bucket ([`Gate`], in the VM's forwarder, before the node-wide event
//!   queue); over budget, a `poll_tasks` or `result` is refused back to the
//!   guest and anything else is dropped (counted, logged in summary);
//! - at most one `poll_tasks` per VM is at the controller at a time; polls
//!   that arrive meanwhile are answered by it (the guest answers every
//!   waiting poll with one `tasks`);
//! - relay jobs (polls at the controller, results being spooled) take a
//!   slot of a node-wide bounded queue ([`RelaySlots`]); when it is full
//!   the request is refused at once, never queued behind others.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use measurelab_api::guest::{AgentMessage, GuestMessage};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use uuid::Uuid;

use super::types::RelaySettings;
use crate::guest_channel::GuestChannels;

/// A token bucket: `burst` tokens, refilled at `per_second`.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    capacity: f64,
    tokens: f64,
    per_second: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(burst: u32, per_second: f64, now: Instant) -> Self {
        let capacity = f64::from(burst.max(1));
        TokenBucket {
            capacity,
            tokens: capacity,
            per_second: per_second.max(0.0),
            last: now,
        }
    }

    /// Takes a token if there is one.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// How often a VM's dropped messages are summed up in the log.
const DROP_REPORT_PERIOD: Duration = Duration::from_secs(10);

/// The budget of one VM's guest, kept by its forwarder.
pub(crate) struct Gate {
    vm: Uuid,
    bucket: TokenBucket,
    dropped: u64,
    reported_at: Option<Instant>,
}

impl Gate {
    pub(crate) fn new(vm: Uuid, settings: &RelaySettings) -> Self {
        Gate {
            vm,
            bucket: TokenBucket::new(settings.burst, settings.per_second, Instant::now()),
            dropped: 0,
            reported_at: None,
        }
    }

    /// Whether `message` may go on to the relay. Over budget, the guest is
    /// told for requests that wait for an answer, and the drop is counted.
    pub(crate) fn admit(&mut self, message: &GuestMessage, channels: &GuestChannels) -> bool {
        // A hello registers the guest; refusing it would only make the
        // guest look absent. It is cheap (no controller call).
        if matches!(message, GuestMessage::Hello { .. }) {
            return true;
        }
        let now = Instant::now();
        if self.bucket.take(now) {
            return true;
        }
        let reason = "the guest sends faster than its relay budget; slow down and retry";
        refuse(self.vm, message, reason, channels);
        self.dropped += 1;
        if self
            .reported_at
            .is_none_or(|at| now.saturating_duration_since(at) >= DROP_REPORT_PERIOD)
        {
            tracing::warn!(vm = %self.vm, dropped = self.dropped, "guest over its relay budget; messages dropped");
            self.dropped = 0;
            self.reported_at = Some(now);
        }
        false
    }
}

/// Tells the guest a request was not relayed, when it waits for an answer.
pub(crate) fn refuse(vm: Uuid, message: &GuestMessage, reason: &str, channels: &GuestChannels) {
    crate::metrics::metrics().observe_relay_refusal(match message {
        GuestMessage::PollTasks => "poll_tasks",
        GuestMessage::Result { .. } => "result",
        _ => "other",
    });
    let answer = match message {
        GuestMessage::PollTasks => AgentMessage::PollRefused {
            reason: reason.to_string(),
        },
        GuestMessage::Result {
            request_id: Some(request_id),
            ..
        } => AgentMessage::ResultAck {
            request_id: request_id.clone(),
            stored: false,
            reason: Some(reason.to_string()),
            rejected: false,
        },
        _ => return,
    };
    // Never waits: a guest that does not read its answers loses them.
    if let Err(err) = channels.send(vm, &answer) {
        tracing::debug!(vm = %vm, error = %err, "cannot tell the guest its request was refused");
    }
}

/// The node-wide relay queue and the polls in flight.
#[derive(Clone)]
pub(crate) struct RelaySlots {
    slots: Arc<Semaphore>,
    capacity: usize,
    polling: Arc<Mutex<HashSet<Uuid>>>,
}

/// What to do with a `poll_tasks`.
pub(crate) enum PollAdmission {
    /// Relay it; the permit is held until the answer went out.
    Go(PollTicket),
    /// A poll of this VM is at the controller; its answer serves this one.
    Coalesced,
    /// The node's relay queue is full.
    QueueFull,
}

/// A poll in flight: frees its VM and its slot when dropped.
pub(crate) struct PollTicket {
    vm: Uuid,
    polling: Arc<Mutex<HashSet<Uuid>>>,
    _slot: OwnedSemaphorePermit,
}

impl Drop for PollTicket {
    fn drop(&mut self) {
        self.polling
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.vm);
    }
}

impl RelaySlots {
    pub(crate) fn new(queue: usize) -> Self {
        RelaySlots {
            slots: Arc::new(Semaphore::new(queue.max(1))),
            capacity: queue.max(1),
            polling: Arc::default(),
        }
    }

    /// Relay jobs holding a slot now.
    pub(crate) fn depth(&self) -> usize {
        self.capacity.saturating_sub(self.slots.available_permits())
    }

    /// A slot for a relay job, or `None` when the queue is full.
    pub(crate) fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    pub(crate) fn poll(&self, vm: Uuid) -> PollAdmission {
        let mut polling = self.polling.lock().unwrap_or_else(|e| e.into_inner());
        if polling.contains(&vm) {
            return PollAdmission::Coalesced;
        }
        let Some(slot) = self.slot() else {
            return PollAdmission::QueueFull;
        };
        polling.insert(vm);
        PollAdmission::Go(PollTicket {
            vm,
            polling: self.polling.clone(),
            _slot: slot,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(3, 2.0, t0);
        assert!((0..3).all(|_| bucket.take(t0)));
        assert!(!bucket.take(t0));
        // Half a second buys one token at 2/s.
        assert!(bucket.take(t0 + Duration::from_millis(500)));
        assert!(!bucket.take(t0 + Duration::from_millis(500)));
        // Never more than the burst, however long it rested.
        let later = t0 + Duration::from_secs(3600);
        assert!((0..3).all(|_| bucket.take(later)));
        assert!(!bucket.take(later));
    }

    #[test]
    fn one_poll_per_vm_and_a_bounded_queue() {
        let slots = RelaySlots::new(2);
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let PollAdmission::Go(first) = slots.poll(a) else {
            panic!("first poll of a refused")
        };
        assert!(matches!(slots.poll(a), PollAdmission::Coalesced));
        let PollAdmission::Go(_second) = slots.poll(b) else {
            panic!("poll of b refused")
        };
        assert!(matches!(slots.poll(c), PollAdmission::QueueFull));
        drop(first);
        assert!(matches!(slots.poll(a), PollAdmission::Go(_)));
    }
}
