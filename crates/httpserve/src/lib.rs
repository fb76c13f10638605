//! The workspace's one bounded HTTP/1 accept loop, shared by the controller's
//! public API and the MSCS API.
//!
//! `axum::serve` has no connection cap and no timeouts, so one peer could hold
//! every descriptor with idle sockets or dribble headers forever. [`serve`]
//! bounds what a peer can hold:
//! - connections served at once, overall and per source address (further ones
//!   are closed at accept, before a byte is read);
//! - an idle timeout: a connection that sends nothing for that long between
//!   requests (or before its first one) is closed;
//! - a header-read timeout: once the first byte of a request arrives, its whole
//!   head must follow within that time;
//! - a request timeout: a handler (reading the request body included) that has
//!   not answered by then gets `408` with a JSON error. A route that takes
//!   large uploads lifts it for its request ([`RequestTimeout::lift`]); that
//!   request is then closed once it moves no byte for the idle timeout;
//! - a stalled response (a peer that stops reading, a body that stops
//!   producing) is closed after the idle timeout without progress;
//! - a connection a handler took over with an HTTP/1.1 `Upgrade`
//!   ([`UpgradeSlot`]) keeps its slot until the handler lets go, and is
//!   closed after the idle timeout without a byte moved either way.
//!
//! The accept step is a parameter, so a TLS handshake can run between the TCP
//! accept and HTTP (see [`serve`]); it is bounded by the header-read timeout.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::{Bytes, Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;
use tracing::{debug, warn};

/// Bounds on what the peers of one listener can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; further ones are closed at accept.
    pub max_connections: usize,
    /// Connections served at once from one source address.
    pub max_connections_per_source: usize,
    /// Time from the first byte of a request to the end of its head.
    pub header_read_timeout: Duration,
    /// Time a connection may stay silent with no request in flight (before its
    /// first request and between keep-alive requests), and time a response
    /// may go without progress.
    pub idle_timeout: Duration,
    /// Time a handler may take, reading the request body included.
    pub request_timeout: Duration,
}

/// A [`Limits`] field that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct LimitsError {
    /// The field, as the caller's flags name it (`max_connections`, ...).
    pub field: &'static str,
    /// Why it is refused.
    pub reason: &'static str,
}

impl Limits {
    /// Refuses zero caps and zero timeouts: either would refuse every peer.
    pub fn validate(&self) -> Result<(), LimitsError> {
        let zero = |field| {
            Err(LimitsError {
                field,
                reason: "must be greater than zero",
            })
        };
        if self.max_connections == 0 {
            return zero("max_connections");
        }
        if self.max_connections_per_source == 0 {
            return zero("max_connections_per_source");
        }
        if self.header_read_timeout.is_zero() {
            return zero("header_read_timeout");
        }
        if self.idle_timeout.is_zero() {
            return zero("idle_timeout");
        }
        if self.request_timeout.is_zero() {
            return zero("request_timeout");
        }
        Ok(())
    }
}

/// The accept step of a plain TCP listener: the stream as it is.
pub fn plain(stream: TcpStream) -> std::future::Ready<io::Result<TcpStream>> {
    std::future::ready(Ok(stream))
}

/// Serves `router` on `listener` within `limits` until `shutdown` completes,
/// then stops accepting, lets each connection finish the request in flight
/// and returns once all are closed.
///
/// `accept` turns an accepted TCP stream into the stream HTTP runs over:
/// [`plain`] for clear text, a TLS handshake for TLS. It runs inside the
/// connection's task, within the header-read timeout, so a slow handshake
/// holds only its own slot. Handlers see the peer as
/// `ConnectInfo<SocketAddr>`.
pub async fn serve<A, F, S>(
    listener: TcpListener,
    accept: A,
    router: axum::Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) where
    A: Fn(TcpStream) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = io::Result<S>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let caps = ConnectionCaps::new(limits.max_connections, limits.max_connections_per_source);
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors and the like: back off instead of
                    // spinning on an error that a closing connection clears.
                    warn!(cause = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(admission) = caps.admit(peer) else {
            continue;
        };
        let (accept, router, stop) = (accept.clone(), router.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let _admission = admission;
            serve_connection(tcp, peer, accept, router, limits, stop).await;
        });
    }
    let _ = stop_tx.send(true);
    caps.drained().await;
}

/// Connections held at once, overall and per source address; shared by
/// every listener that needs the two caps (the HTTP APIs here, the
/// controller's gRPC listener through its own accept stream).
pub struct ConnectionCaps {
    slots: Arc<Semaphore>,
    max: usize,
    sources: Arc<Sources>,
    per_source: usize,
    refusals: Mutex<RefusalLog>,
}

/// A connection's place under [`ConnectionCaps`]; released on drop.
pub struct Admission {
    _slot: tokio::sync::OwnedSemaphorePermit,
    _source: SourceSlot,
}

impl ConnectionCaps {
    /// Caps of `max` connections, `per_source` of them from one address.
    pub fn new(max: usize, per_source: usize) -> Self {
        ConnectionCaps {
            slots: Arc::new(Semaphore::new(max)),
            max,
            sources: Arc::new(Sources::default()),
            per_source,
            refusals: Mutex::new(RefusalLog::default()),
        }
    }

    /// A place for a connection from `peer`, or `None` (logged, at most once
    /// per interval) when a cap is reached; the caller then closes it.
    pub fn admit(&self, peer: SocketAddr) -> Option<Admission> {
        let refused = |why, max| {
            self.refusals
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .refused(peer, why, max);
            None
        };
        let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            return refused("too many connections", self.max);
        };
        let Some(source) = self.sources.take(peer.ip(), self.per_source) else {
            return refused("too many connections from this source", self.per_source);
        };
        Some(Admission {
            _slot: slot,
            _source: source,
        })
    }

    /// Completes once every admitted connection has been released.
    pub async fn drained(&self) {
        let all = u32::try_from(self.max).unwrap_or(u32::MAX);
        let _ = self.slots.acquire_many(all).await;
    }
}

async fn serve_connection<A, F, S>(
    tcp: TcpStream,
    peer: SocketAddr,
    accept: A,
    router: axum::Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) where
    A: Fn(TcpStream) -> F,
    F: Future<Output = io::Result<S>>,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stream = match tokio::time::timeout(limits.header_read_timeout, accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            debug!(%peer, cause = %err, "connection refused by the accept step");
            return;
        }
        Err(_) => {
            debug!(%peer, "accept step (handshake) timed out");
            return;
        }
    };
    let activity = Arc::new(Activity::new());
    let io = hyper_util::rt::TokioIo::new(Tracked {
        inner: stream,
        activity: Arc::clone(&activity),
    });
    let service = hyper::service::service_fn({
        let activity = Arc::clone(&activity);
        move |request| {
            handle(
                router.clone(),
                request,
                peer,
                Arc::clone(&activity),
                limits.request_timeout,
            )
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        // A backstop only: hyper's timer runs from the moment it waits for a
        // head, so it covers idle time plus head time; the watchdog below
        // enforces the two separately and always fires first.
        .header_read_timeout(limits.idle_timeout + limits.header_read_timeout)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => {
            if let Err(err) = served {
                debug!(%peer, cause = %err, "connection ended");
            }
            true
        }
        () = activity.expired(limits) => {
            debug!(%peer, "connection closed: idle, slow headers or a stalled response");
            return;
        }
        _ = stop.wait_for(|stop| *stop) => false,
    };
    if served {
        // An upgraded connection lives on in its handler's task: it keeps
        // this slot and stays under the watchdog until it ends.
        tokio::select! {
            () = activity.upgrades_ended() => {}
            () = activity.expired(limits) => {
                debug!(%peer, "upgraded connection closed: no byte moved for the idle timeout");
            }
            _ = stop.wait_for(|stop| *stop) => {}
        }
        activity.close_upgrades();
        return;
    }
    // Shutting down: finish the request in flight, still within the limits.
    connection.as_mut().graceful_shutdown();
    tokio::select! {
        _ = connection.as_mut() => {}
        () = activity.expired(limits) => {}
    }
}

/// In every request's extensions: lets a handler that takes the connection
/// over (HTTP/1.1 `Upgrade`) keep it within the server's bounds.
#[derive(Clone)]
pub struct UpgradeSlot(Arc<Activity>);

impl UpgradeSlot {
    /// Call before answering `101 Switching Protocols`, and keep the hold
    /// as long as the upgraded stream is used: the connection keeps its slot
    /// meanwhile, and the server closes it (`UpgradeHold::closed`) once no
    /// byte moved for the idle timeout or the server shuts down.
    pub fn hold(&self) -> UpgradeHold {
        let closed = {
            let mut phase = self.0.lock();
            phase.upgrades += 1;
            phase.last_io = Instant::now();
            phase.close_upgrades.subscribe()
        };
        self.0.changed.notify_waiters();
        UpgradeHold {
            activity: Arc::clone(&self.0),
            closed,
        }
    }
}

/// See [`UpgradeSlot::hold`].
pub struct UpgradeHold {
    activity: Arc<Activity>,
    closed: watch::Receiver<bool>,
}

impl UpgradeHold {
    /// Completes when the server wants the upgraded stream closed.
    pub async fn closed(&mut self) {
        let _ = self.closed.wait_for(|closed| *closed).await;
    }

    /// Marks the upgraded stream as moving (the server's watchdog only sees
    /// the bytes of the connection it wraps, which the upgraded stream is).
    pub fn touch(&self) {
        self.activity.on_write();
    }
}

impl Drop for UpgradeHold {
    fn drop(&mut self) {
        {
            let mut phase = self.activity.lock();
            phase.upgrades -= 1;
        }
        self.activity.changed.notify_waiters();
    }
}

/// In every request's extensions: lets a route that streams a large upload
/// lift the request timeout for that request.
#[derive(Clone)]
pub struct RequestTimeout(Arc<Activity>);

impl RequestTimeout {
    /// This request is not bounded by the request timeout but by progress: it
    /// is closed once no byte moves for the idle timeout.
    pub fn lift(&self) {
        self.0.lock().lifted = true;
        self.0.changed.notify_waiters();
    }

    fn lifted(&self) -> bool {
        self.0.lock().lifted
    }
}

async fn handle(
    router: axum::Router,
    request: hyper::Request<Incoming>,
    peer: SocketAddr,
    activity: Arc<Activity>,
    within: Duration,
) -> Result<axum::response::Response, Infallible> {
    let timeout = RequestTimeout(Arc::clone(&activity));
    let in_flight = InFlight::begin(activity);
    let mut request = request.map(Body::new);
    request.extensions_mut().insert(ConnectInfo(peer));
    request.extensions_mut().insert(timeout.clone());
    request
        .extensions_mut()
        .insert(UpgradeSlot(Arc::clone(&timeout.0)));
    let handler = router.oneshot(request);
    tokio::pin!(handler);
    let answered = tokio::select! {
        answered = &mut handler => answered,
        () = tokio::time::sleep(within) => {
            if timeout.lifted() {
                // The watchdog bounds it by progress from here on.
                handler.await
            } else {
                Ok(timeout_response(within))
            }
        }
    };
    let response = match answered {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let in_flight = in_flight.responding();
    Ok(response.map(|body| {
        Body::new(Guarded {
            inner: body,
            _in_flight: in_flight,
        })
    }))
}

/// The body of a handler that overran the request timeout, in the error shape
/// both APIs use.
fn timeout_response(within: Duration) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        axum::http::StatusCode::REQUEST_TIMEOUT,
        axum::Json(serde_json::json!({"error": {
            "code": "request_timeout",
            "message": format!("request not completed within {within:?}"),
            "field": null,
        }})),
    )
        .into_response()
}

/// Open connections per source address.
#[derive(Default)]
pub(crate) struct Sources(Mutex<HashMap<IpAddr, usize>>);

impl Sources {
    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        // A panic while holding this lock cannot leave a count half-updated.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<SourceSlot> {
        let mut open = self.lock();
        let count = open.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            sources: Arc::clone(self),
            ip,
        })
    }
}

pub(crate) struct SourceSlot {
    sources: Arc<Sources>,
    ip: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.sources.lock();
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Refused connections are logged at most once per interval: a flood must
/// not turn into a flood of log lines.
#[derive(Default)]
struct RefusalLog {
    last: Option<Instant>,
    since_last: u64,
}

impl RefusalLog {
    const INTERVAL: Duration = Duration::from_secs(10);

    fn refused(&mut self, peer: SocketAddr, why: &'static str, max: usize) {
        self.since_last += 1;
        debug!(%peer, max, "connection refused: {why}");
        let now = Instant::now();
        if self.last.is_none_or(|last| now - last >= Self::INTERVAL) {
            warn!(%peer, max, refused = self.since_last, "connections refused: {why}");
            self.last = Some(now);
            self.since_last = 0;
        }
    }
}

/// What one connection is doing, for its watchdog.
struct Activity {
    phase: Mutex<Phase>,
    changed: Notify,
}

struct Phase {
    /// Handlers running (at most one on HTTP/1).
    handlers: usize,
    /// Response bodies not yet sent.
    bodies: usize,
    /// Since when nothing is in flight.
    idle_since: Instant,
    /// First byte read since then: a request head is arriving.
    first_byte: Option<Instant>,
    /// Last byte read or written.
    last_io: Instant,
    /// The running handler lifted the request timeout.
    lifted: bool,
    /// Upgraded streams a handler holds ([`UpgradeSlot::hold`]).
    upgrades: usize,
    /// Told `true` when the connection's upgraded streams must close.
    close_upgrades: watch::Sender<bool>,
}

impl Activity {
    fn new() -> Self {
        let now = Instant::now();
        Activity {
            phase: Mutex::new(Phase {
                handlers: 0,
                bodies: 0,
                idle_since: now,
                first_byte: None,
                last_io: now,
                lifted: false,
                upgrades: 0,
                close_upgrades: watch::Sender::new(false),
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Phase> {
        self.phase
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn on_read(&self) {
        let head_started = {
            let mut phase = self.lock();
            let now = Instant::now();
            phase.last_io = now;
            let starts = phase.handlers == 0 && phase.bodies == 0 && phase.first_byte.is_none();
            if starts {
                phase.first_byte = Some(now);
            }
            starts
        };
        // The watchdog sleeps until the idle deadline; the head's is sooner.
        if head_started {
            self.changed.notify_waiters();
        }
    }

    fn on_write(&self) {
        self.lock().last_io = Instant::now();
    }

    /// When the connection is to be closed as things stand; `None` while a
    /// handler runs (the request timeout bounds it, unless lifted).
    fn deadline(&self, limits: Limits) -> Option<Instant> {
        let phase = self.lock();
        // An upgraded stream, like a lifted request, is bounded by progress.
        if phase.upgrades > 0 || (phase.handlers > 0 && phase.lifted) {
            Some(phase.last_io + limits.idle_timeout)
        } else if phase.handlers > 0 {
            None
        } else if phase.bodies > 0 {
            Some(phase.last_io + limits.idle_timeout)
        } else if let Some(first_byte) = phase.first_byte {
            Some(first_byte + limits.header_read_timeout)
        } else {
            Some(phase.idle_since + limits.idle_timeout)
        }
    }

    /// Completes once no handler holds an upgraded stream.
    async fn upgrades_ended(&self) {
        loop {
            let changed = self.changed.notified();
            if self.lock().upgrades == 0 {
                return;
            }
            changed.await;
        }
    }

    fn close_upgrades(&self) {
        self.lock().close_upgrades.send_replace(true);
    }

    /// Completes when the connection has overrun a limit.
    async fn expired(&self, limits: Limits) {
        loop {
            // Registered before the state is read, so a change in between is
            // not missed.
            let changed = self.changed.notified();
            match self.deadline(limits) {
                Some(deadline) if deadline <= Instant::now() => return,
                Some(deadline) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline) => {}
                        () = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

/// One request from its head to the end of its response body.
struct InFlight {
    activity: Arc<Activity>,
    responding: bool,
}

impl InFlight {
    fn begin(activity: Arc<Activity>) -> Self {
        {
            let mut phase = activity.lock();
            phase.handlers += 1;
            phase.first_byte = None;
        }
        activity.changed.notify_waiters();
        InFlight {
            activity,
            responding: false,
        }
    }

    /// The handler answered; the body is being sent.
    fn responding(mut self) -> Self {
        {
            let mut phase = self.activity.lock();
            phase.handlers -= 1;
            phase.bodies += 1;
            phase.last_io = Instant::now();
            phase.lifted = false;
        }
        self.responding = true;
        self.activity.changed.notify_waiters();
        self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        {
            let mut phase = self.activity.lock();
            if self.responding {
                phase.bodies -= 1;
            } else {
                phase.handlers -= 1;
                phase.lifted = false;
            }
            if phase.handlers == 0 && phase.bodies == 0 {
                phase.idle_since = Instant::now();
                phase.first_byte = None;
            }
        }
        self.activity.changed.notify_waiters();
    }
}

/// A response body that marks its request done when sent (or dropped).
struct Guarded {
    inner: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A stream that tells its connection's watchdog about every byte moved.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.on_write();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.on_write();
        }
        polled
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
