//! The guest agent ships its own logs to the node agent. This writer sends
//! every formatted `tracing` line to stderr (the console) and also queues it,
//! bounded, for the next `log` message on the channel.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;

/// Lines kept while the channel is down; older ones are dropped (and counted).
pub const MAX_QUEUED_LINES: usize = 2000;

/// Shared queue of log lines waiting for the channel. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct LogQueue {
    // std Mutex: held only to push or drain, never across an await.
    inner: Arc<Mutex<QueueInner>>,
}

#[derive(Debug, Default)]
struct QueueInner {
    lines: VecDeque<String>,
    dropped: u64,
}

impl LogQueue {
    /// Queues one line, dropping the oldest when full.
    pub fn push(&self, line: String) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if inner.lines.len() >= MAX_QUEUED_LINES {
            inner.lines.pop_front();
            inner.dropped += 1;
        }
        inner.lines.push_back(line);
    }

    /// Takes every queued line; a note about dropped lines comes first.
    pub fn drain(&self) -> Vec<String> {
        let Ok(mut inner) = self.inner.lock() else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(inner.lines.len() + 1);
        if inner.dropped > 0 {
            out.push(format!(
                "measurelab-guest-agent: {} log lines dropped while the channel was down",
                inner.dropped
            ));
            inner.dropped = 0;
        }
        out.extend(inner.lines.drain(..));
        out
    }
}

/// `MakeWriter` for `tracing_subscriber::fmt` that tees into a [`LogQueue`].
#[derive(Clone, Debug)]
pub struct TeeMakeWriter {
    queue: LogQueue,
}

impl TeeMakeWriter {
    /// Tees into `queue`.
    pub fn new(queue: LogQueue) -> Self {
        TeeMakeWriter { queue }
    }
}

/// One event's writer: the formatter writes the whole line, then drops it.
pub struct TeeWriter {
    queue: LogQueue,
    line: Vec<u8>,
}

impl Write for TeeWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        std::io::stderr().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl Drop for TeeWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            self.queue.push(line.to_string());
        }
    }
}

impl<'a> MakeWriter<'a> for TeeMakeWriter {
    type Writer = TeeWriter;

    fn make_writer(&'a self) -> Self::Writer {
        TeeWriter {
            queue: self.queue.clone(),
            line: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_is_bounded_and_reports_drops() {
        let queue = LogQueue::default();
        for i in 0..MAX_QUEUED_LINES + 5 {
            queue.push(format!("line {i}"));
        }
        let lines = queue.drain();
        assert_eq!(lines.len(), MAX_QUEUED_LINES + 1);
        assert!(lines[0].contains("5 log lines dropped"), "{}", lines[0]);
        assert_eq!(lines[1], "line 5");
        assert!(queue.drain().is_empty());
    }

    #[test]
    fn writer_queues_whole_lines() {
        let queue = LogQueue::default();
        let make = TeeMakeWriter::new(queue.clone());
        {
            let mut w = make.make_writer();
            w.write_all(b"INFO hello ").unwrap();
            w.write_all(b"world\n").unwrap();
        }
        assert_eq!(queue.drain(), vec!["INFO hello world".to_string()]);
    }
}
