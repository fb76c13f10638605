//! Log shipping: a `tracing` layer that copies events into a bounded
//! buffer, which the agent drains in batches with `ShipLogs`.
//!
//! While the controller is down the buffer keeps the newest lines and drops
//! the oldest, counting them, so a long outage costs memory bounded by the
//! capacity and the operator learns how much was lost.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use measurelab_api::node_v1::LogLine;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// Lines kept while the controller is unreachable.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// Longest message shipped. The controller refuses a ShipLogs call with a
/// line over 16 KiB, which would block shipping for good (the batch is
/// requeued); and log lines can quote what a guest sent. Longer ones are
/// cut at a char boundary and marked.
pub const MAX_SHIPPED_MESSAGE_BYTES: usize = 8 * 1024;

/// Targets whose events are not shipped: the gRPC stack logs about the very
/// requests that ship logs, which would feed back into the buffer.
const UNSHIPPED_TARGET_PREFIXES: [&str; 6] = ["h2", "hyper", "tonic", "tower", "rustls", "reqwest"];

/// Bounded FIFO of log lines with a count of lines dropped for lack of room.
#[derive(Debug)]
pub struct LogBuffer {
    lines: Mutex<VecDeque<LogLine>>,
    capacity: usize,
    dropped: AtomicU64,
}

impl LogBuffer {
    /// An empty buffer holding at most `capacity` lines.
    pub fn new(capacity: usize) -> Self {
        LogBuffer {
            lines: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
        }
    }

    /// Append a line, dropping the oldest when full.
    pub fn push(&self, line: LogLine) {
        // A poisoned lock only means another thread panicked mid-push; the
        // queue itself is still consistent, so keep logging.
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() >= self.capacity {
            lines.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        lines.push_back(line);
    }

    /// Take up to `max` of the oldest lines.
    pub fn take_batch(&self, max: usize) -> Vec<LogLine> {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        let n = lines.len().min(max);
        lines.drain(..n).collect()
    }

    /// Put back a batch that could not be shipped, ahead of newer lines.
    /// Lines that no longer fit are dropped, oldest first, and counted.
    pub fn requeue(&self, batch: Vec<LogLine>) {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        for line in batch.into_iter().rev() {
            if lines.len() >= self.capacity {
                // The batch is older than anything queued, so it is what goes.
                self.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            lines.push_front(line);
        }
    }

    /// Lines queued now.
    pub fn len(&self) -> usize {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lines dropped since the last call, resetting the count.
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }

    /// Count lines as dropped (a drop notice that could not be shipped).
    pub fn add_dropped(&self, count: u64) {
        self.dropped.fetch_add(count, Ordering::Relaxed);
    }

    /// Lines dropped so far, without resetting.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

static PROCESS_BUFFER: OnceLock<Arc<LogBuffer>> = OnceLock::new();

/// The buffer that [`run`](crate::run) ships from. One per process: the
/// `tracing` subscriber is global too.
pub fn process_buffer() -> Arc<LogBuffer> {
    PROCESS_BUFFER
        .get_or_init(|| Arc::new(LogBuffer::new(DEFAULT_CAPACITY)))
        .clone()
}

/// A layer that copies INFO and more severe events into the process buffer.
/// Install it next to the console layer in the agent's subscriber.
pub fn layer() -> ShipLayer {
    ShipLayer {
        buffer: process_buffer(),
        max_level: Level::INFO,
    }
}

/// `tracing` layer feeding a [`LogBuffer`].
#[derive(Debug, Clone)]
pub struct ShipLayer {
    buffer: Arc<LogBuffer>,
    max_level: Level,
}

impl ShipLayer {
    /// A layer writing into `buffer`, keeping events at `max_level` or more severe.
    pub fn new(buffer: Arc<LogBuffer>, max_level: Level) -> Self {
        ShipLayer { buffer, max_level }
    }
}

impl<S: Subscriber> Layer<S> for ShipLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() > self.max_level {
            return;
        }
        let target = meta.target();
        if UNSHIPPED_TARGET_PREFIXES
            .iter()
            .any(|p| target == *p || target.starts_with(&format!("{p}::")))
        {
            return;
        }
        let mut visitor = MessageVisitor::default();
        event.record(&mut visitor);
        self.buffer.push(LogLine {
            timestamp_unix_ms: now_unix_ms(),
            level: meta.level().as_str().to_ascii_lowercase(),
            target: target.to_string(),
            message: crate::guest_channel::keep_head(visitor.finish(), MAX_SHIPPED_MESSAGE_BYTES),
        });
    }
}

/// Milliseconds since the epoch, 0 if the clock is before 1970.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Renders `message` followed by the other fields as `key=value`.
#[derive(Default)]
struct MessageVisitor {
    message: String,
    fields: String,
}

impl MessageVisitor {
    fn finish(self) -> String {
        match (self.message.is_empty(), self.fields.is_empty()) {
            (_, true) => self.message,
            (true, false) => self.fields,
            (false, false) => format!("{} {}", self.message, self.fields),
        }
    }
}

impl Visit for MessageVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            if !self.fields.is_empty() {
                self.fields.push(' ');
            }
            let _ = write!(self.fields, "{}={}", field.name(), value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            if !self.fields.is_empty() {
                self.fields.push(' ');
            }
            let _ = write!(self.fields, "{}={:?}", field.name(), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    fn line(msg: &str) -> LogLine {
        LogLine {
            timestamp_unix_ms: 1,
            level: "info".into(),
            target: "t".into(),
            message: msg.into(),
        }
    }

    fn messages(lines: &[LogLine]) -> Vec<&str> {
        lines.iter().map(|l| l.message.as_str()).collect()
    }

    #[test]
    fn long_messages_are_cut_before_shipping() {
        let buffer = Arc::new(LogBuffer::new(10));
        let subscriber =
            tracing_subscriber::registry().with(ShipLayer::new(buffer.clone(), Level::INFO));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(guest = %"ü".repeat(20_000), "a guest said");
        });
        let lines = buffer.take_batch(10);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].message.len() <= MAX_SHIPPED_MESSAGE_BYTES);
        assert!(lines[0].message.starts_with("a guest said guest=ü"));
        assert!(lines[0]
            .message
            .ends_with(" [cut by the node agent from 40019 bytes]"));
    }

    #[test]
    fn full_buffer_drops_oldest_and_counts() {
        let buffer = LogBuffer::new(3);
        for m in ["a", "b", "c", "d", "e"] {
            buffer.push(line(m));
        }
        assert_eq!(buffer.dropped(), 2);
        assert_eq!(messages(&buffer.take_batch(10)), vec!["c", "d", "e"]);
        assert_eq!(buffer.take_dropped(), 2);
        assert_eq!(buffer.take_dropped(), 0);
    }

    #[test]
    fn requeued_batch_goes_first_and_overflow_drops_its_oldest() {
        let buffer = LogBuffer::new(4);
        for m in ["a", "b", "c"] {
            buffer.push(line(m));
        }
        let batch = buffer.take_batch(2);
        assert_eq!(messages(&batch), vec!["a", "b"]);
        buffer.push(line("d"));
        buffer.push(line("e"));
        buffer.requeue(batch);
        // Room for one of the two: the newer ("b") is kept.
        assert_eq!(messages(&buffer.take_batch(10)), vec!["b", "c", "d", "e"]);
        assert_eq!(buffer.dropped(), 1);
    }

    #[test]
    fn layer_captures_message_fields_and_skips_grpc_stack() {
        let buffer = Arc::new(LogBuffer::new(100));
        let subscriber =
            tracing_subscriber::registry().with(ShipLayer::new(buffer.clone(), Level::INFO));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(node = "n1", attempt = 3, "registered");
            tracing::debug!("too verbose to ship");
            tracing::warn!(target: "h2::proto", "connection reset");
            tracing::error!(target: "measurelab_agent::x", "boom");
        });
        let lines = buffer.take_batch(10);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0].message, "registered node=n1 attempt=3");
        assert_eq!(lines[0].level, "info");
        assert_eq!(lines[1].level, "error");
        assert_eq!(lines[1].target, "measurelab_agent::x");
    }
}
