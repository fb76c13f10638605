//! The agent's end of `ExecChannel`: keeps the stream to the controller open
//! while the node is registered, and relays each session's frames between
//! it and the guest channel of the session's VM.
//!
//! Nothing is re-framed or buffered beyond a window: the frames carry the
//! end-to-end credits (see [`measurelab_api::exec`]), and the guest channel
//! bounds what a guest may send into a session. A session whose VM has no
//! guest, or a guest too old for exec, ends at once with an exit frame that
//! says why.

use std::collections::HashMap;
use std::time::Duration;

use measurelab_api::exec::{ExecExit, ExecFrame, EXEC_MAX_FRAMES_IN_FLIGHT, MAX_EXEC_LINE_BYTES};
use measurelab_api::node_v1::node_service_client::NodeServiceClient;
use measurelab_api::node_v1::{ExecDown, ExecUp};
use measurelab_backoff::Backoff;
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;
use tonic::Code;
use uuid::Uuid;

use crate::guest_channel::{ExecSession, GuestChannels};
use crate::identity::{self, Identity};

/// Frames queued up towards the controller (all sessions).
const UP_QUEUE: usize = 256;
/// Frames queued towards one session: a window of stdin plus control frames.
const SESSION_QUEUE: usize = EXEC_MAX_FRAMES_IN_FLIGHT + 16;
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// An older controller without `ExecChannel`: ask again rarely.
const UNSUPPORTED_RETRY: Duration = Duration::from_secs(300);

/// Runs until shutdown.
pub(crate) async fn follow_exec_channel(
    mut client: NodeServiceClient<Channel>,
    mut identity_rx: watch::Receiver<Option<Identity>>,
    channels: GuestChannels,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
    loop {
        let Some(identity) = identity::next_identity(&mut identity_rx, &mut shutdown).await else {
            return;
        };
        let (up_tx, up_rx) = mpsc::channel::<ExecUp>(UP_QUEUE);
        let hello = ExecUp {
            node_id: identity.node_id.clone(),
            node_secret: identity.node_secret.clone(),
            ..ExecUp::default()
        };
        if up_tx.send(hello).await.is_err() {
            return;
        }
        let outbound =
            futures::stream::unfold(
                up_rx,
                |mut rx| async move { rx.recv().await.map(|up| (up, rx)) },
            );
        let retry_in = match client.exec_channel(outbound).await {
            Ok(response) => {
                backoff.reset();
                tracing::info!("exec channel to the controller open");
                let mut down = response.into_inner();
                let mut sessions: HashMap<String, mpsc::Sender<ExecFrame>> = HashMap::new();
                let why = loop {
                    let next = tokio::select! {
                        next = down.message() => next,
                        _ = identity_rx.changed() => break "the node registered again",
                        _ = shutdown.wait_for(|stop| *stop) => return,
                    };
                    match next {
                        Ok(Some(message)) => {
                            handle_down(message, &channels, &mut sessions, &up_tx);
                        }
                        Ok(None) => break "the controller ended the stream",
                        Err(status) => {
                            tracing::debug!(error = %status.message(), "exec channel failed");
                            break "the stream failed";
                        }
                    }
                };
                // Dropping the senders ends every relay, which kills its
                // session in the guest.
                drop(sessions);
                let delay = backoff.next_delay();
                tracing::info!(
                    why,
                    retry_in_ms = delay.as_millis() as u64,
                    "exec channel closed"
                );
                delay
            }
            Err(status) if status.code() == Code::Unimplemented => {
                tracing::info!(
                    "the controller has no ExecChannel; vm exec is unavailable on this node"
                );
                UNSUPPORTED_RETRY
            }
            Err(status) => {
                let delay = backoff.next_delay();
                tracing::debug!(error = %status.message(), code = ?status.code(), retry_in_ms = delay.as_millis() as u64, "cannot open the exec channel");
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(retry_in) => {}
            _ = identity_rx.changed() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

fn up(session_id: &str, frame: &ExecFrame) -> Option<ExecUp> {
    Some(ExecUp {
        session_id: session_id.to_string(),
        frame_json: serde_json::to_vec(frame).ok()?,
        ..ExecUp::default()
    })
}

fn handle_down(
    message: ExecDown,
    channels: &GuestChannels,
    sessions: &mut HashMap<String, mpsc::Sender<ExecFrame>>,
    up_tx: &mpsc::Sender<ExecUp>,
) {
    sessions.retain(|_, tx| !tx.is_closed());
    if message.frame_json.len() > MAX_EXEC_LINE_BYTES {
        tracing::warn!(session = %message.session_id, "oversized exec frame from the controller; dropped");
        return;
    }
    let frame: ExecFrame = match serde_json::from_slice(&message.frame_json) {
        Ok(frame) => frame,
        Err(err) => {
            tracing::warn!(%err, "exec frame from the controller that does not parse; dropped");
            return;
        }
    };
    let session_id = message.session_id;
    if let ExecFrame::Open { open } = frame {
        let fail = |reason: String| {
            if let Some(message) = up(
                &session_id,
                &ExecFrame::Exit {
                    exit: ExecExit::error(reason),
                },
            ) {
                let _ = up_tx.try_send(message);
            }
        };
        let Ok(vm_id) = Uuid::parse_str(&message.vm_id) else {
            fail(format!("vm_id {:?} is not a UUID", message.vm_id));
            return;
        };
        if sessions.contains_key(&session_id) {
            fail("session id already open on this node".into());
            return;
        }
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        sessions.insert(session_id.clone(), tx);
        let (channels, up_tx) = (channels.clone(), up_tx.clone());
        tokio::spawn(async move {
            match channels.open_exec(vm_id, &session_id, open).await {
                Ok(session) => relay(session, rx, up_tx).await,
                Err(err) => {
                    let exit = ExecFrame::Exit {
                        exit: ExecExit::error(err.to_string()),
                    };
                    if let Some(message) = up(&session_id, &exit) {
                        let _ = up_tx.send(message).await;
                    }
                }
            }
        });
        return;
    }
    let Some(tx) = sessions.get(&session_id) else {
        return;
    };
    if tx.try_send(frame).is_err() {
        // Past the window: the controller broke the protocol for this
        // session; dropping the sender ends it.
        tracing::warn!(session = %session_id, "exec session queue overrun; ending it");
        sessions.remove(&session_id);
    }
}

/// Moves one session's frames both ways until the guest's exit frame or
/// the controller's side going away (which kills it in the guest).
async fn relay(
    mut session: ExecSession,
    mut from_controller: mpsc::Receiver<ExecFrame>,
    up_tx: mpsc::Sender<ExecUp>,
) {
    let id = session.id().to_string();
    loop {
        tokio::select! {
            frame = from_controller.recv() => {
                let Some(frame) = frame else { return };
                if let Err(err) = session.send(frame).await {
                    let exit = ExecFrame::Exit { exit: ExecExit::error(err.to_string()) };
                    if let Some(message) = up(&id, &exit) {
                        let _ = up_tx.send(message).await;
                    }
                    return;
                }
            }
            frame = session.recv() => {
                let frame = frame.unwrap_or_else(|| ExecFrame::Exit {
                    exit: ExecExit::error("the guest session ended without an exit"),
                });
                let is_exit = matches!(frame, ExecFrame::Exit { .. });
                let Some(message) = up(&id, &frame) else { continue };
                if up_tx.send(message).await.is_err() || is_exit {
                    return;
                }
            }
        }
    }
}
