//! `POST /v1/vms/{id_or_name}/exec`: a `vm exec` or `vm cp` session.
//!
//! The request body is an [`ExecOpen`] (a command, or a file to put or get)
//! and the request asks for `Upgrade: measurelab-exec.v1`. Everything that
//! can be refused is refused with an ordinary JSON error before the switch:
//! a bad field (400), a VM the caller cannot see (404, so another tenant's
//! VM is indistinguishable from none), a viewer (403), a node whose agent
//! has no exec channel (503). Then the controller answers `101 Switching
//! Protocols` and both sides exchange [`ExecFrame`] JSON lines until the
//! guest's `exit` frame.
//!
//! Replicas on one PostgreSQL database: an agent streams to one of them,
//! and a client may reach any. A replica whose hub lacks the node asks the
//! database which replica holds it and forwards the request there
//! (`exec_forward`), then splices the two upgraded streams; the 503 names
//! that replica when it cannot be used.
//!
//! Why an HTTP/1.1 upgrade rather than chunked bodies both ways: an upgrade
//! is a plain byte stream in both directions at once, which works the same
//! inside TLS, through `crates/httpserve`'s accept loop (which keeps the
//! connection's slot and idle watchdog for the upgraded stream, so exec
//! sessions are bounded like any connection), and from any HTTP/1.1 client;
//! full-duplex chunked bodies are not something HTTP/1.1 clients reliably
//! do. WebSocket would need a new dependency on both ends for framing we
//! already have (JSON lines).

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use measurelab_api::exec::{
    check_open, ExecExit, ExecFrame, ExecOpen, EXEC_FRAME_BYTES, EXEC_UPGRADE_PROTOCOL,
    MAX_EXEC_LINE_BYTES,
};
use measurelab_api::guest::{encode_line, LineFramer};
use measurelab_httpserve::{UpgradeHold, UpgradeSlot};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::auth::ensure_can_change;
use super::error::ApiError;
use super::extract::key;
use super::state::AppState;
use crate::access::Principal;
use crate::exec_forward::{held_elsewhere, FORWARDED_HEADER, NO_ADVERTISE_URL};
use crate::exec_hub::{ExecHubError, HubSession};
use crate::store::vms;

/// Largest body of an exec request (the open request as JSON).
const MAX_OPEN_BYTES: usize = 64 * 1024;
/// Longest the connection stays open after the exit frame for the client
/// to read it and close (see [`linger`]).
const LINGER: std::time::Duration = std::time::Duration::from_secs(10);

pub(crate) async fn exec(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    mut request: Request,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    let wants_upgrade = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(EXEC_UPGRADE_PROTOCOL));
    if !wants_upgrade {
        return Err(ApiError::InvalidField {
            field: "Upgrade".into(),
            reason: format!(
                "this endpoint streams: send `Connection: upgrade` and `Upgrade: {EXEC_UPGRADE_PROTOCOL}`"
            ),
        });
    }
    let forwarded = request.headers().contains_key(FORWARDED_HEADER);
    let authorization = request.headers().get(header::AUTHORIZATION).cloned();
    let on_upgrade = hyper::upgrade::on(&mut request);
    let slot = request.extensions().get::<UpgradeSlot>().cloned();
    let body = axum::body::to_bytes(request.into_body(), MAX_OPEN_BYTES)
        .await
        .map_err(|err| ApiError::InvalidField {
            field: "body".into(),
            reason: format!("cannot read the request body (at most {MAX_OPEN_BYTES} bytes): {err}"),
        })?;
    let open: ExecOpen = serde_json::from_slice(&body).map_err(|err| ApiError::InvalidField {
        field: "body".into(),
        reason: format!("not an exec request: {err}"),
    })?;
    check_open(&open).map_err(|err| ApiError::InvalidField {
        field: err.field,
        reason: err.reason,
    })?;
    // A viewer may look, not run things; another tenant's VM is a 404.
    ensure_can_change(
        &state,
        &principal,
        "running commands in",
        "VM",
        &key,
        visible,
    )
    .await?;
    let scope = principal.scope();
    let lookup = key.clone();
    let vm = state
        .store()
        .resources()
        .read(move |conn, _| vms::get(conn, &scope, &lookup))
        .await?;
    let peer = match state.exec_hub().open(&vm.node_id, &vm.id, open).await {
        Ok(session) => Peer::Agent(session),
        // Another replica may hold the agent's stream; never forward twice.
        Err(err @ ExecHubError::NodeNotConnected { .. }) if !forwarded => {
            let forward = Forward {
                key: &key,
                vm_id: &vm.id,
                node_id: &vm.node_id,
                authorization,
                body,
            };
            Peer::Replica(forward.open(&state, err).await?)
        }
        Err(err) => return Err(unavailable(&key, &err)),
    };
    // Held from before the answer, so the server never sees the connection
    // as done while the upgraded stream is in use.
    let hold = slot.map(|slot| slot.hold());
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => match peer {
                Peer::Agent(session) => bridge(TokioIo::new(upgraded), session, hold).await,
                Peer::Replica(upstream) => {
                    splice(TokioIo::new(upgraded), TokioIo::new(upstream), hold).await
                }
            },
            Err(err) => tracing::debug!(%err, "exec upgrade did not complete"),
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(
        header::UPGRADE,
        HeaderValue::from_static(EXEC_UPGRADE_PROTOCOL),
    );
    Ok(response)
}

/// Who the client's upgraded stream is joined to.
enum Peer {
    /// An agent's exec channel on this replica.
    Agent(HubSession),
    /// The same session opened on the replica that holds the channel.
    Replica(hyper::upgrade::Upgraded),
}

fn unavailable(key: &str, err: &ExecHubError) -> ApiError {
    ApiError::Unavailable(format!("VM {key}: {err}"))
}

/// A session this replica cannot open itself, for the replica that can.
struct Forward<'a> {
    key: &'a str,
    vm_id: &'a str,
    node_id: &'a str,
    authorization: Option<HeaderValue>,
    body: axum::body::Bytes,
}

impl Forward<'_> {
    /// Open the session on the replica the database names, or refuse as
    /// `missing` (no channel anywhere) or with why that replica could not
    /// be used.
    async fn open(
        self,
        state: &AppState,
        missing: ExecHubError,
    ) -> Result<hyper::upgrade::Upgraded, ApiError> {
        let holder = state
            .store()
            .exec_channel_holder(self.node_id.to_string())
            .await?;
        let Some(holder) = holder else {
            return Err(unavailable(self.key, &missing));
        };
        let refuse = |why: String| {
            ApiError::Unavailable(format!(
                "VM {}: {}",
                self.key,
                held_elsewhere(self.node_id, &holder.replica, why)
            ))
        };
        let Some(url) = &holder.url else {
            return Err(refuse(NO_ADVERTISE_URL.into()));
        };
        state
            .exec_forwarder()
            .open(url, self.vm_id, self.authorization, self.body)
            .await
            .map_err(|err| refuse(format!("and forwarding to {url} failed: {err}")))
    }
}

/// Joins the client's stream to the other replica's for a forwarded
/// session, byte for byte (that replica relays the frames and enforces the
/// protocol), within the client connection's slot and idle watchdog.
async fn splice<C, U>(mut client: C, mut upstream: U, hold: Option<UpgradeHold>)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let closed = async {
        match hold {
            Some(mut hold) => hold.closed().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(err) = result {
                tracing::debug!(%err, "forwarded exec session ended with an error");
            }
        }
        () = closed => {}
    }
}

fn visible(
    conn: &crate::store::sql::Connection,
    scope: &crate::access::Scope,
    key: &str,
) -> Result<bool, crate::store::StoreError> {
    Ok(vms::find(conn, scope, key)?.is_some())
}

/// Relays frames between the client's upgraded stream and the session
/// until the guest's exit frame, the client going away, or the server
/// closing the stream (idle, shutdown).
async fn bridge<S>(io: S, mut session: HubSession, hold: Option<UpgradeHold>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut reader, mut writer) = tokio::io::split(io);
    let sender = session.sender();
    let to_guest = async {
        let mut framer = LineFramer::new(MAX_EXEC_LINE_BYTES);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            for line in framer.push(&buf[..n]) {
                let Ok(line) = line else {
                    tracing::debug!("oversized exec line from a client; dropped");
                    continue;
                };
                let frame = match serde_json::from_slice::<ExecFrame>(&line) {
                    Ok(frame) => frame,
                    Err(err) => {
                        tracing::debug!(%err, "exec frame from a client that does not parse; dropped");
                        continue;
                    }
                };
                let allowed = match &frame {
                    ExecFrame::Stdin { .. } => frame.data_len() <= EXEC_FRAME_BYTES as u64,
                    ExecFrame::StdinEof
                    | ExecFrame::Credit { .. }
                    | ExecFrame::Resize { .. }
                    | ExecFrame::Kill => true,
                    ExecFrame::Open { .. } | ExecFrame::Output { .. } | ExecFrame::Exit { .. } => {
                        false
                    }
                };
                if allowed && sender.send(&frame).await.is_err() {
                    return;
                }
            }
        }
    };
    let from_guest = async {
        let exit = loop {
            match session.recv().await {
                Some(frame @ ExecFrame::Exit { .. }) => break frame,
                Some(frame) => {
                    let Ok(line) = encode_line(&frame) else {
                        continue;
                    };
                    if writer.write_all(&line).await.is_err() {
                        return;
                    }
                }
                None => {
                    break ExecFrame::Exit {
                        exit: ExecExit::error("the session was lost on its way to the guest"),
                    }
                }
            }
        };
        if let Ok(line) = encode_line(&exit) {
            let _ = writer.write_all(&line).await;
        }
        let _ = writer.shutdown().await;
    };
    let closed = async {
        match hold {
            Some(mut hold) => hold.closed().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(closed);
    let exited = tokio::select! {
        () = from_guest => true,
        () = to_guest => false,
        () = &mut closed => false,
    };
    if exited {
        tokio::select! {
            () = linger(&mut reader) => {}
            () = &mut closed => {}
        }
    }
}

/// After the exit frame the client goes on sending credits (and
/// keepalives) until it has read that frame. Closing the connection with
/// its bytes unread makes our kernel answer them with a reset, and a reset
/// can destroy the last output and the exit frame before the client reads
/// them, or fail the client's write before it looks. So, like an HTTP
/// server's lingering close, read and discard until the client closes
/// (which it does as soon as it has the exit), bounded by [`LINGER`].
async fn linger<R: AsyncRead + Unpin>(reader: &mut R) {
    let mut buf = vec![0u8; 16 * 1024];
    let drain = async { while let Ok(1..) = reader.read(&mut buf).await {} };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec_hub::ExecHub;
    use measurelab_api::exec::ExecStream;
    use tokio::io::AsyncBufReadExt;

    /// The client reads the exit frame and the end of the stream, and only
    /// then its credit for the last output goes out (the CLI's order of
    /// events when the last output and the exit arrive together). That
    /// credit must not meet a closed socket: the kernel would answer it
    /// with a reset, which is what lost exit frames and output in the lab.
    #[tokio::test]
    async fn the_connection_outlives_the_exit_until_the_client_closes() {
        let hub = ExecHub::default();
        let (stream, mut down) = hub.attach("node");
        let open = ExecOpen::Command {
            argv: vec!["true".into()],
            tty: false,
            size: None,
        };
        let session = hub.open("node", "vm", open).await.unwrap();
        let id = down.recv().await.unwrap().session_id;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let bridged = tokio::spawn(bridge(server, session, None));

        let output = ExecFrame::Output {
            stream: ExecStream::Stdout,
            data: "eA==".into(),
        };
        hub.deliver("node", stream, &id, output.clone());
        hub.deliver(
            "node",
            stream,
            &id,
            ExecFrame::Exit {
                exit: ExecExit::default(),
            },
        );
        let (reader, mut writer) = client.into_split();
        let mut lines = tokio::io::BufReader::new(reader).lines();
        let first = lines.next_line().await.unwrap().unwrap();
        assert_eq!(serde_json::from_str::<ExecFrame>(&first).unwrap(), output);
        let second = lines.next_line().await.unwrap().unwrap();
        assert!(matches!(
            serde_json::from_str::<ExecFrame>(&second).unwrap(),
            ExecFrame::Exit { .. }
        ));
        assert_eq!(
            lines.next_line().await.unwrap(),
            None,
            "the stream ends after the exit"
        );

        let credit = encode_line(&ExecFrame::Credit { bytes: 1024 }).unwrap();
        writer.write_all(&credit).await.unwrap();
        // A reset would fail this write or the read below.
        writer.write_all(&credit).await.unwrap();
        writer.shutdown().await.unwrap();
        assert_eq!(lines.next_line().await.unwrap(), None);
        bridged.await.unwrap();
    }
}
