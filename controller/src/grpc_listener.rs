//! The gRPC listener's bounds: what one peer of the node API can hold.
//!
//! tonic has no connection cap and no handshake timeout: a peer that opens
//! sockets and never sends the HTTP/2 preface holds them forever. The accept
//! stream here admits connections under the same caps as the HTTP API
//! (`measurelab_httpserve::ConnectionCaps`) and closes one that has not sent
//! its first byte within the handshake timeout; the server builder gets
//! request timeouts, HTTP/2 keepalive and stream/concurrency limits.
//!
//! Under TLS the handshake runs here too ([`tls_incoming`]), not in tonic:
//! tonic's own TLS accept waits for a handshake as long as the peer likes
//! (half a ClientHello held a connection forever), and it ends its whole
//! accept loop on a handshake error it does not expect, such as the
//! handshake timeout above, which stopped the controller.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use measurelab_httpserve::{Admission, ConnectionCaps};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Bounds of the gRPC node API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcLimits {
    /// Connections served at once; further ones are closed at accept.
    pub max_connections: usize,
    /// Connections served at once from one source address.
    pub max_connections_per_source: usize,
    /// Time a new connection has to send its first byte (the HTTP/2
    /// preface), or under TLS to complete its handshake.
    pub handshake_timeout: Duration,
    /// Time a call may take to answer (a stream's first message; streams
    /// themselves live on).
    pub request_timeout: Duration,
    /// Between HTTP/2 pings to an otherwise silent peer.
    pub keepalive_interval: Duration,
    /// A peer that does not answer a ping within this is dropped.
    pub keepalive_timeout: Duration,
    /// Streams (calls) one connection may have open at once.
    pub max_concurrent_streams: u32,
    /// Calls one connection may have in its handlers at once; more wait.
    pub concurrency_per_connection: usize,
    /// Largest request message (ReportStatus, PostResult, ShipLogs).
    pub max_request_message_bytes: usize,
    /// Largest response message (FetchProgram carries a whole program).
    pub max_response_message_bytes: usize,
}

/// The node API's defaults: a real node holds one connection with one watch
/// stream and a few calls; the heartbeat benchmark multiplexes 50k simulated
/// nodes over 16 connections.
pub const DEFAULT_GRPC_LIMITS: GrpcLimits = GrpcLimits {
    max_connections: 16_384,
    // Room for the nodes behind one NAT address.
    max_connections_per_source: 1024,
    handshake_timeout: Duration::from_secs(10),
    request_timeout: Duration::from_secs(30),
    keepalive_interval: Duration::from_secs(30),
    keepalive_timeout: Duration::from_secs(10),
    max_concurrent_streams: 1024,
    concurrency_per_connection: 1024,
    // tonic's default, which agents already live within.
    max_request_message_bytes: 4 * 1024 * 1024,
    max_response_message_bytes: crate::store::programs::MAX_PROGRAM_BYTES + 1024 * 1024,
};

impl GrpcLimits {
    /// Refuses zeros: each would refuse every node.
    pub fn validate(&self) -> Result<(), String> {
        let checks: [(&str, bool); 10] = [
            ("max_connections", self.max_connections == 0),
            (
                "max_connections_per_source",
                self.max_connections_per_source == 0,
            ),
            ("handshake_timeout", self.handshake_timeout.is_zero()),
            ("request_timeout", self.request_timeout.is_zero()),
            ("keepalive_interval", self.keepalive_interval.is_zero()),
            ("keepalive_timeout", self.keepalive_timeout.is_zero()),
            ("max_concurrent_streams", self.max_concurrent_streams == 0),
            (
                "concurrency_per_connection",
                self.concurrency_per_connection == 0,
            ),
            (
                "max_request_message_bytes",
                self.max_request_message_bytes == 0,
            ),
            (
                "max_response_message_bytes",
                self.max_response_message_bytes == 0,
            ),
        ];
        match checks.iter().find(|(_, zero)| *zero) {
            Some((field, _)) => Err(format!("grpc_limits.{field}: must be greater than zero")),
            None => Ok(()),
        }
    }

    /// A server builder with these limits.
    pub(crate) fn builder(&self) -> tonic::transport::Server {
        tonic::transport::Server::builder()
            .timeout(self.request_timeout)
            .http2_keepalive_interval(Some(self.keepalive_interval))
            .http2_keepalive_timeout(Some(self.keepalive_timeout))
            .max_concurrent_streams(self.max_concurrent_streams)
            .concurrency_limit_per_connection(self.concurrency_per_connection)
    }
}

/// Accepted connections under `limits`' caps: refused ones are closed before
/// HTTP/2 sees them.
pub(crate) fn incoming(
    listener: tokio::net::TcpListener,
    limits: GrpcLimits,
) -> impl Stream<Item = io::Result<Bounded>> {
    let caps = Arc::new(ConnectionCaps::new(
        limits.max_connections,
        limits.max_connections_per_source,
    ));
    futures::stream::unfold(listener, move |listener| {
        let caps = Arc::clone(&caps);
        async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of descriptors and the like: back off rather
                        // than spin, and rather than end the server.
                        tracing::warn!(cause = %err, "gRPC accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Some(admission) = caps.admit(peer) else {
                    continue;
                };
                // Heartbeats are small; Nagle would hold each one back.
                let _ = stream.set_nodelay(true);
                let bounded = Bounded {
                    inner: stream,
                    _admission: admission,
                    first_byte: Some(Box::pin(tokio::time::sleep(limits.handshake_timeout))),
                };
                return Some((Ok(bounded), listener));
            }
        }
    })
}

/// Admitted connections that completed a TLS handshake within the
/// handshake timeout. Each handshake runs in its own task, so a stalled one
/// holds only its own slot under the caps; one that fails or runs out of
/// time is closed here and never reaches tonic.
pub(crate) fn tls_incoming(
    listener: tokio::net::TcpListener,
    limits: GrpcLimits,
    acceptor: TlsAcceptor,
) -> impl Stream<Item = io::Result<TlsStream<Bounded>>> {
    let admitted = Box::pin(incoming(listener, limits));
    let handshakes: JoinSet<Option<TlsStream<Bounded>>> = JoinSet::new();
    futures::stream::unfold(
        (admitted, handshakes),
        move |(mut admitted, mut handshakes)| {
            let acceptor = acceptor.clone();
            async move {
                loop {
                    tokio::select! {
                        next = admitted.next() => {
                            let bounded = match next? {
                                Ok(bounded) => bounded,
                                Err(err) => return Some((Err(err), (admitted, handshakes))),
                            };
                            handshakes.spawn(handshake(acceptor.clone(), bounded, limits.handshake_timeout));
                        }
                        Some(done) = handshakes.join_next(), if !handshakes.is_empty() => {
                            if let Ok(Some(tls)) = done {
                                return Some((Ok(tls), (admitted, handshakes)));
                            }
                        }
                    }
                }
            }
        },
    )
}

async fn handshake(
    acceptor: TlsAcceptor,
    bounded: Bounded,
    within: Duration,
) -> Option<TlsStream<Bounded>> {
    let peer = bounded.inner.peer_addr().ok();
    match tokio::time::timeout(within, acceptor.accept(bounded)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(err)) => {
            tracing::debug!(?peer, cause = %err, "gRPC TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(?peer, "gRPC TLS handshake timed out");
            None
        }
    }
}

/// An admitted gRPC connection: holds its place under the caps and fails its
/// reads once the handshake timeout passes without a first byte.
pub(crate) struct Bounded {
    inner: TcpStream,
    _admission: Admission,
    /// Until the first byte arrives.
    first_byte: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Connected for Bounded {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for Bounded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => self.first_byte = None,
            Poll::Pending => {
                if let Some(deadline) = self.first_byte.as_mut() {
                    if deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no first byte (HTTP/2 preface or TLS hello) within the handshake timeout",
                        )));
                    }
                }
            }
            _ => {}
        }
        polled
    }
}

impl AsyncWrite for Bounded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
