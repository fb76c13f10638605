//! The exec sessions open on one guest's channel, and the bounds on what
//! that guest may send into them.
//!
//! The table belongs to one VM's channel, so a guest can only ever address
//! sessions opened on its own channel: a session id from another VM is
//! simply unknown here. For each session the guest may send at most the
//! output credit the client granted (window plus forwarded credits), in
//! frames of at most [`EXEC_FRAME_BYTES`]; a guest that sends more loses
//! the session, and nothing it sends waits in an unbounded queue.

use std::collections::HashMap;
use std::sync::Mutex;

use measurelab_api::exec::{
    ExecExit, ExecFrame, EXEC_FRAME_BYTES, EXEC_MAX_FRAMES_IN_FLIGHT, EXEC_WINDOW_BYTES,
};
use tokio::sync::mpsc;

/// Frames queued towards one session's consumer: a full window of data
/// frames (each costs at least EXEC_MIN_FRAME_COST) plus room for credits
/// and the exit.
pub(crate) const ROUTE_QUEUE: usize = EXEC_MAX_FRAMES_IN_FLIGHT + 16;

/// Most sessions open on one VM at once.
pub(crate) const MAX_SESSIONS_PER_VM: usize = 16;

struct Route {
    tx: mpsc::Sender<ExecFrame>,
    /// Output bytes the guest may send in all: window plus credits.
    allowed: u64,
    /// Output bytes it sent.
    received: u64,
}

/// What became of a frame from the guest.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Routed {
    /// Handed to the session.
    Delivered,
    /// No such session (ended, or never opened here): dropped.
    Unknown,
    /// The guest broke the session's bounds; the session was ended with
    /// this reason and the guest should be told to kill it.
    Violation(String),
}

/// The sessions of one VM's channel.
#[derive(Default)]
pub(crate) struct ExecRoutes {
    // std Mutex: held only for lookups, never across an await.
    routes: Mutex<HashMap<String, Route>>,
}

impl ExecRoutes {
    /// Registers a session; `None` if the VM has too many open or the id
    /// is taken.
    pub(crate) fn insert(&self, session: &str) -> Option<mpsc::Receiver<ExecFrame>> {
        let mut routes = self.routes.lock().ok()?;
        if routes.len() >= MAX_SESSIONS_PER_VM || routes.contains_key(session) {
            return None;
        }
        let (tx, rx) = mpsc::channel(ROUTE_QUEUE);
        routes.insert(
            session.to_string(),
            Route {
                tx,
                allowed: EXEC_WINDOW_BYTES,
                received: 0,
            },
        );
        Some(rx)
    }

    /// The client consumed `bytes` more output: the guest may send them.
    pub(crate) fn grant(&self, session: &str, bytes: u64) {
        if let Ok(mut routes) = self.routes.lock() {
            if let Some(route) = routes.get_mut(session) {
                route.allowed = route.allowed.saturating_add(bytes);
            }
        }
    }

    /// Forgets a session (its consumer is gone).
    pub(crate) fn remove(&self, session: &str) {
        if let Ok(mut routes) = self.routes.lock() {
            routes.remove(session);
        }
    }

    /// Ends every session: the guest they ran in is gone.
    pub(crate) fn fail_all(&self, reason: &str) {
        let drained: Vec<Route> = match self.routes.lock() {
            Ok(mut routes) => routes.drain().map(|(_, r)| r).collect(),
            Err(_) => return,
        };
        for route in drained {
            let _ = route.tx.try_send(ExecFrame::Exit {
                exit: ExecExit::error(reason),
            });
        }
    }

    /// Hands a frame from the guest to its session, within the bounds.
    pub(crate) fn route(&self, session: &str, frame: ExecFrame) -> Routed {
        let Ok(mut routes) = self.routes.lock() else {
            return Routed::Unknown;
        };
        let Some(route) = routes.get_mut(session) else {
            return Routed::Unknown;
        };
        let violation = match &frame {
            ExecFrame::Output { .. } => {
                let len = frame.data_len();
                route.received += frame.cost();
                if len > EXEC_FRAME_BYTES as u64 {
                    Some(format!(
                        "the guest sent a {len}-byte frame; at most {EXEC_FRAME_BYTES}"
                    ))
                } else if route.received > route.allowed {
                    Some(format!(
                        "the guest sent output costing {} with credit for {}",
                        route.received, route.allowed
                    ))
                } else {
                    None
                }
            }
            ExecFrame::Exit { .. } | ExecFrame::Credit { .. } => None,
            other => Some(format!("the guest sent a {} frame", frame_name(other))),
        };
        let is_exit = matches!(frame, ExecFrame::Exit { .. });
        let outcome = match violation {
            Some(reason) => {
                let _ = route.tx.try_send(ExecFrame::Exit {
                    exit: ExecExit::error(reason.clone()),
                });
                routes.remove(session);
                return Routed::Violation(reason);
            }
            None => route.tx.try_send(frame),
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = outcome {
            // Within the window the queue cannot fill: only control frames
            // beyond any reason (a credit flood) get here.
            routes.remove(session);
            return Routed::Violation("the guest flooded the session with frames".into());
        }
        if is_exit {
            routes.remove(session);
        }
        Routed::Delivered
    }
}

fn frame_name(frame: &ExecFrame) -> &'static str {
    match frame {
        ExecFrame::Open { .. } => "open",
        ExecFrame::Stdin { .. } => "stdin",
        ExecFrame::StdinEof => "stdin_eof",
        ExecFrame::Output { .. } => "output",
        ExecFrame::Credit { .. } => "credit",
        ExecFrame::Resize { .. } => "resize",
        ExecFrame::Kill => "kill",
        ExecFrame::Exit { .. } => "exit",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use measurelab_api::exec::{ExecStream, EXEC_MIN_FRAME_COST};

    fn output(bytes: usize) -> ExecFrame {
        use base64::Engine as _;
        ExecFrame::Output {
            stream: ExecStream::Stdout,
            data: base64::engine::general_purpose::STANDARD.encode(vec![b'x'; bytes]),
        }
    }

    #[tokio::test]
    async fn a_guest_cannot_send_past_its_credit() {
        let routes = ExecRoutes::default();
        let mut rx = routes.insert("s1").unwrap();
        let frames = EXEC_WINDOW_BYTES as usize / EXEC_FRAME_BYTES;
        for _ in 0..frames {
            assert_eq!(
                routes.route("s1", output(EXEC_FRAME_BYTES)),
                Routed::Delivered
            );
        }
        // The window is used up: one byte more ends the session.
        assert!(matches!(
            routes.route("s1", output(1)),
            Routed::Violation(_)
        ));
        assert_eq!(routes.route("s1", output(1)), Routed::Unknown);
        let mut last = None;
        while let Ok(frame) = rx.try_recv() {
            last = Some(frame);
        }
        assert!(
            matches!(last, Some(ExecFrame::Exit { ref exit }) if exit.error.as_deref().is_some_and(|e| e.contains("credit"))),
            "{last:?}"
        );
    }

    #[tokio::test]
    async fn credit_lets_more_through_and_oversized_frames_are_refused() {
        let routes = ExecRoutes::default();
        let _rx = routes.insert("s1").unwrap();
        let frames = EXEC_WINDOW_BYTES as usize / EXEC_FRAME_BYTES;
        for _ in 0..frames {
            assert_eq!(
                routes.route("s1", output(EXEC_FRAME_BYTES)),
                Routed::Delivered
            );
        }
        // Even a 10-byte frame costs a minimal frame's credit.
        routes.grant("s1", 10);
        assert!(matches!(
            routes.route("s1", output(10)),
            Routed::Violation(_)
        ));
        let _rx1 = routes.insert("s1b").unwrap();
        let frames = EXEC_WINDOW_BYTES / EXEC_MIN_FRAME_COST;
        for _ in 0..frames {
            assert_eq!(routes.route("s1b", output(10)), Routed::Delivered);
        }
        routes.grant("s1b", EXEC_MIN_FRAME_COST);
        assert_eq!(routes.route("s1b", output(10)), Routed::Delivered);
        let _rx2 = routes.insert("s2").unwrap();
        routes.grant("s2", 1 << 20);
        assert!(matches!(
            routes.route("s2", output(EXEC_FRAME_BYTES + 1)),
            Routed::Violation(_)
        ));
        // A guest cannot open or feed stdin to sessions.
        let _rx3 = routes.insert("s3").unwrap();
        assert!(matches!(
            routes.route("s3", ExecFrame::StdinEof),
            Routed::Violation(_)
        ));
    }

    #[test]
    fn sessions_per_vm_are_bounded() {
        let routes = ExecRoutes::default();
        let held: Vec<_> = (0..MAX_SESSIONS_PER_VM)
            .map(|i| routes.insert(&format!("s{i}")).unwrap())
            .collect();
        assert!(routes.insert("one-more").is_none());
        assert!(routes.insert("s0").is_none());
        drop(held);
    }
}
