//! Routes `vm exec` / `vm cp` sessions between the HTTP API and the node
//! agents' `ExecChannel` streams.
//!
//! The controller cannot dial agents, so each agent keeps one `ExecChannel`
//! open and every session to a VM on that node is multiplexed over it by
//! session id. A session id is chosen here (random) and recorded with the
//! node and stream it was opened on; a frame an agent sends for a session
//! of another node, or of an older stream, is dropped, so one node can
//! never write into another node's sessions. Queues are bounded: data moves
//! only within the end-to-end credit windows, so a full queue means a peer
//! broke the protocol, and that session ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use measurelab_api::exec::{ExecExit, ExecFrame, ExecOpen, EXEC_MAX_FRAMES_IN_FLIGHT};
use measurelab_api::node_v1::ExecDown;
use tokio::sync::mpsc;

/// Frames queued towards one agent stream (all its sessions).
const NODE_QUEUE: usize = 256;
/// Frames queued towards one session's HTTP connection: a window of data
/// plus control frames.
const SESSION_QUEUE: usize = EXEC_MAX_FRAMES_IN_FLIGHT + 16;
/// Sessions open at once through this controller.
pub const MAX_SESSIONS: usize = 256;

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ExecHubError {
    /// The node's agent has no `ExecChannel` open (down, or an older agent).
    #[error("node {node_id} has no exec channel open (its agent is down or predates vm exec)")]
    NodeNotConnected {
        /// The node.
        node_id: String,
    },
    /// [`MAX_SESSIONS`] are open.
    #[error("{MAX_SESSIONS} exec sessions are open on this controller; try again later")]
    Busy,
    /// A frame could not be encoded (cannot happen for our types).
    #[error("cannot encode an exec frame: {0}")]
    Encode(#[from] serde_json::Error),
}

struct NodeLink {
    stream: u64,
    tx: mpsc::Sender<ExecDown>,
}

struct Route {
    node_id: String,
    stream: u64,
    tx: mpsc::Sender<ExecFrame>,
}

#[derive(Default)]
struct Tables {
    nodes: HashMap<String, NodeLink>,
    sessions: HashMap<String, Route>,
}

/// The sessions and agent streams of this controller. Cheap to clone.
#[derive(Clone, Default)]
pub struct ExecHub {
    // std Mutex: held only for table lookups, never across an await.
    tables: Arc<Mutex<Tables>>,
    next_stream: Arc<AtomicU64>,
}

impl ExecHub {
    /// A node agent opened its `ExecChannel`: it replaces any older stream
    /// of the node (whose sessions end). Returns the stream's number and the
    /// frames to send down it.
    pub fn attach(&self, node_id: &str) -> (u64, mpsc::Receiver<ExecDown>) {
        let stream = self.next_stream.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(NODE_QUEUE);
        if let Ok(mut tables) = self.tables.lock() {
            if let Some(old) = tables
                .nodes
                .insert(node_id.to_string(), NodeLink { stream, tx })
            {
                fail_stream(
                    &mut tables,
                    node_id,
                    old.stream,
                    "the node's agent reconnected",
                );
            }
        }
        (stream, rx)
    }

    /// Whether `node_id`'s agent streams to this controller now (a replica
    /// that does not may forward to the one that does).
    pub fn holds(&self, node_id: &str) -> bool {
        self.tables
            .lock()
            .is_ok_and(|tables| tables.nodes.contains_key(node_id))
    }

    /// The agent stream ended: its sessions end with an error.
    pub fn detach(&self, node_id: &str, stream: u64) {
        if let Ok(mut tables) = self.tables.lock() {
            if tables
                .nodes
                .get(node_id)
                .is_some_and(|n| n.stream == stream)
            {
                tables.nodes.remove(node_id);
            }
            fail_stream(
                &mut tables,
                node_id,
                stream,
                "the node's agent disconnected",
            );
        }
    }

    /// A frame from an agent stream, for one of its sessions.
    pub fn deliver(&self, node_id: &str, stream: u64, session_id: &str, frame: ExecFrame) {
        let Ok(mut tables) = self.tables.lock() else {
            return;
        };
        let Some(route) = tables.sessions.get(session_id) else {
            return;
        };
        if route.node_id != node_id || route.stream != stream {
            tracing::warn!(%node_id, %session_id, "exec frame for a session of another node or stream; dropped");
            return;
        }
        let is_exit = matches!(frame, ExecFrame::Exit { .. });
        if route.tx.try_send(frame).is_err() || is_exit {
            // Full: the agent sent past the window (or the client stopped
            // reading, which the window also rules out). Either way the
            // session cannot go on; its client sees the channel close.
            tables.sessions.remove(session_id);
        }
    }

    /// Opens a session in VM `vm_id` on node `node_id`.
    pub async fn open(
        &self,
        node_id: &str,
        vm_id: &str,
        open: ExecOpen,
    ) -> Result<HubSession, ExecHubError> {
        let session_id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        let (stream, down) = {
            let mut tables = self.tables.lock().map_err(|_| ExecHubError::Busy)?;
            if tables.sessions.len() >= MAX_SESSIONS {
                return Err(ExecHubError::Busy);
            }
            let link = tables
                .nodes
                .get(node_id)
                .ok_or_else(|| ExecHubError::NodeNotConnected {
                    node_id: node_id.to_string(),
                })?;
            let found = (link.stream, link.tx.clone());
            tables.sessions.insert(
                session_id.clone(),
                Route {
                    node_id: node_id.to_string(),
                    stream: found.0,
                    tx,
                },
            );
            found
        };
        let session = HubSession {
            hub: self.clone(),
            id: session_id,
            stream,
            down,
            frames: rx,
            ended: false,
        };
        let first = ExecDown {
            session_id: session.id.clone(),
            vm_id: vm_id.to_string(),
            frame_json: serde_json::to_vec(&ExecFrame::Open { open })?,
        };
        session
            .down
            .send(first)
            .await
            .map_err(|_| ExecHubError::NodeNotConnected {
                node_id: node_id.to_string(),
            })?;
        Ok(session)
    }

    fn forget(&self, session_id: &str) {
        if let Ok(mut tables) = self.tables.lock() {
            tables.sessions.remove(session_id);
        }
    }
}

fn fail_stream(tables: &mut Tables, node_id: &str, stream: u64, reason: &str) {
    tables.sessions.retain(|_, route| {
        if route.node_id == node_id && route.stream == stream {
            let _ = route.tx.try_send(ExecFrame::Exit {
                exit: ExecExit::error(reason),
            });
            false
        } else {
            true
        }
    });
}

/// One open session, held by the HTTP connection that asked for it.
/// Dropping it before the exit frame kills the session in the guest.
pub struct HubSession {
    hub: ExecHub,
    id: String,
    stream: u64,
    down: mpsc::Sender<ExecDown>,
    frames: mpsc::Receiver<ExecFrame>,
    ended: bool,
}

impl HubSession {
    /// A handle that sends towards the guest while `recv` runs elsewhere.
    pub fn sender(&self) -> HubSender {
        HubSender {
            id: self.id.clone(),
            stream: self.stream,
            down: self.down.clone(),
        }
    }

    /// The next frame from the guest; `None` once the session ended.
    pub async fn recv(&mut self) -> Option<ExecFrame> {
        if self.ended {
            return None;
        }
        let frame = self.frames.recv().await;
        if matches!(frame, None | Some(ExecFrame::Exit { .. })) {
            self.ended = true;
        }
        frame
    }
}

/// Sends frames of one session towards its guest.
pub struct HubSender {
    id: String,
    stream: u64,
    down: mpsc::Sender<ExecDown>,
}

impl HubSender {
    /// Sends a frame towards the guest.
    pub async fn send(&self, frame: &ExecFrame) -> Result<(), ExecHubError> {
        let down = ExecDown {
            session_id: self.id.clone(),
            vm_id: String::new(),
            frame_json: serde_json::to_vec(frame)?,
        };
        self.down
            .send(down)
            .await
            .map_err(|_| ExecHubError::NodeNotConnected {
                node_id: format!("(stream {})", self.stream),
            })
    }
}

impl Drop for HubSession {
    fn drop(&mut self) {
        self.hub.forget(&self.id);
        if !self.ended {
            if let Ok(frame_json) = serde_json::to_vec(&ExecFrame::Kill) {
                let _ = self.down.try_send(ExecDown {
                    session_id: self.id.clone(),
                    vm_id: String::new(),
                    frame_json,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> ExecOpen {
        ExecOpen::Command {
            argv: vec!["true".into()],
            tty: false,
            size: None,
        }
    }

    #[tokio::test]
    async fn frames_reach_only_the_session_of_their_node_and_stream() {
        let hub = ExecHub::default();
        let (stream_a, mut down_a) = hub.attach("node-a");
        let (stream_b, _down_b) = hub.attach("node-b");
        let mut session = hub.open("node-a", "vm-1", open()).await.unwrap();
        let first = down_a.recv().await.unwrap();
        assert_eq!(first.vm_id, "vm-1");
        let id = first.session_id;

        // node-b guessing node-a's session id gets nowhere.
        hub.deliver("node-b", stream_b, &id, ExecFrame::Credit { bytes: 1 });
        hub.deliver("node-a", stream_a, &id, ExecFrame::Credit { bytes: 2 });
        assert_eq!(session.recv().await, Some(ExecFrame::Credit { bytes: 2 }));

        // The agent reconnects: the old stream's sessions end with a reason.
        let (_stream_a2, _down_a2) = hub.attach("node-a");
        let Some(ExecFrame::Exit { exit }) = session.recv().await else {
            panic!("no exit after the agent reconnected");
        };
        assert!(exit.error.unwrap().contains("reconnected"));
        assert_eq!(session.recv().await, None);
    }

    #[tokio::test]
    async fn an_unconnected_node_is_a_clear_error() {
        let hub = ExecHub::default();
        let err = hub.open("node-x", "vm", open()).await.err().unwrap();
        assert!(err.to_string().contains("node-x"), "{err}");
        let (stream, _down) = hub.attach("node-x");
        hub.detach("node-x", stream);
        assert!(hub.open("node-x", "vm", open()).await.is_err());
    }
}
