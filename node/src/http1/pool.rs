//! The upstream client: a pool of idle HTTP/1.1 connections (most recently used
//! first) and shared HTTP/2 connections when the upstream negotiates `h2` by ALPN (as
//! api.anthropic.com does), each carrying up to a set number of streams before the
//! next is opened. Requests go out on whichever the upstream speaks.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::IntGauge;
use tokio::time::Sleep;

use super::client::{self as h1, H1Body};
use super::connect::{Counted, Dialer, Io};
use super::OutgoingFields;
use crate::body::{BoxError, RequestBody};
use crate::head::HeaderFields;

/// An upstream response: its head as it came (HTTP/1.1 bytes, or hyper's map for
/// HTTP/2) and its body.
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderFields,
    pub body: UpstreamBody,
}

/// HTTP/2 pings on the shared connection, so a dead one is noticed while idle.
const H2_KEEPALIVE: Duration = Duration::from_secs(30);

/// One request as the attempt loop hands it over; the body travels separately since
/// each attempt takes its own.
pub struct Outgoing<'a> {
    pub method: &'a Method,
    /// Path and query.
    pub target: &'a str,
    /// The client's fields to relay; `host`, the framing and the upstream key are
    /// added on the way out.
    pub headers: &'a (dyn OutgoingFields + Sync),
    pub api_key: Option<&'a HeaderValue>,
    /// When the attempt started: an idle connection older than the pool's timeout
    /// then is not reused (the caller's reading, not one more clock read).
    pub at: Instant,
    /// When the response head must have come ([`SendError::Timeout`] after it): the
    /// connection, the request and the head all count against it.
    pub deadline: tokio::time::Instant,
}

/// Why a request could not be sent or answered, for the attempt loop's decision.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made.
    Connect(String),
    /// The client's streamed upload went over the limit.
    BodyTooLarge,
    /// Writing the request or reading the response head failed.
    Io(String),
    /// The response head did not come by the request's deadline.
    Timeout,
}

/// A pooled HTTP/1.1 connection with its read buffer.
pub struct Conn {
    pub io: Io,
    pub buf: BytesMut,
    /// Where request heads are written (reused; see `h1::send`).
    pub wbuf: Vec<u8>,
    /// The connection's own timer for its requests' deadlines, made at its first
    /// request and moved only when it would fire late (see `h1::send`).
    pub timer: Option<Pin<Box<Sleep>>>,
    _count: Counted,
}

thread_local! {
    /// The event loop this thread runs ([`set_event_loop`]); 0 on every other thread.
    static EVENT_LOOP: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Names the event loop the calling thread runs, so the connections it dials and
/// returns stay in its own share of each pool. A connection's socket is registered
/// with the reactor of the loop that dialled it: used from another loop, each of its
/// reads would be a wake-up across threads.
pub fn set_event_loop(index: usize) {
    EVENT_LOOP.with(|l| l.set(index));
}

/// One event loop's idle connections, oldest first, with when each was put back.
type Share = Mutex<VecDeque<(Conn, Instant)>>;

/// Idle HTTP/1.1 connections, one share per event loop.
pub struct Pool {
    shares: Box<[Share]>,
    /// Per share: the configured maximum divided among the loops.
    max_idle: usize,
    idle_timeout: Duration,
}

impl Pool {
    fn new(max_idle: usize, idle_timeout: Duration, loops: usize) -> Self {
        let loops = loops.max(1);
        Pool {
            shares: (0..loops).map(|_| Mutex::new(VecDeque::new())).collect(),
            max_idle: max_idle.div_ceil(loops),
            idle_timeout,
        }
    }

    /// This thread's share.
    fn share(&self) -> &Share {
        &self.shares[EVENT_LOOP.with(std::cell::Cell::get) % self.shares.len()]
    }

    /// Returns a connection whose response was read completely.
    pub fn put(&self, conn: Conn) {
        if self.max_idle == 0 {
            return;
        }
        let now = Instant::now();
        let mut idle = self.share().lock().expect("pool lock");
        while idle
            .front()
            .is_some_and(|(_, since)| now.duration_since(*since) >= self.idle_timeout)
        {
            idle.pop_front();
        }
        if idle.len() >= self.max_idle {
            idle.pop_front();
        }
        idle.push_back((conn, now));
    }

    /// The most recently used idle connection that is still open at `now`, if any.
    fn take(&self, now: Instant) -> Option<Conn> {
        let mut idle = self.share().lock().expect("pool lock");
        while let Some((conn, since)) = idle.pop_back() {
            if now.saturating_duration_since(since) < self.idle_timeout && conn.io.idle_and_open() {
                return Some(conn);
            }
        }
        None
    }
}

/// A shared HTTP/2 connection and the streams open on it.
struct H2Conn {
    sender: http2::SendRequest<RequestBody>,
    streams: Arc<AtomicUsize>,
}

impl H2Conn {
    /// Takes a stream's place on this connection.
    fn claim(&self) -> (http2::SendRequest<RequestBody>, StreamSlot) {
        self.streams.fetch_add(1, Ordering::Relaxed);
        (self.sender.clone(), StreamSlot(self.streams.clone()))
    }
}

/// One stream's place on an HTTP/2 connection, given back when dropped (with the
/// response body, or with the request if it failed).
pub struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The upstream client: dialer, HTTP/1.1 pool, shared HTTP/2 connections.
pub struct Client {
    dialer: Dialer,
    pool: Arc<Pool>,
    /// Oldest first. A stream goes on the first connection with room, so later ones
    /// empty out when the load falls and are closed (one idle spare is kept).
    h2: Mutex<Vec<H2Conn>>,
    /// Streams one HTTP/2 connection carries before another is opened (at least one,
    /// checked with the config). Servers
    /// refuse or queue streams past their `SETTINGS_MAX_CONCURRENT_STREAMS`, which
    /// hyper does not expose, so this is configured at or below the upstream's.
    h2_max_streams: usize,
    /// One HTTP/2 dial at a time, so a burst of requests shares one connection.
    h2_dial: tokio::sync::Mutex<()>,
    /// What the upstream speaks, learnt from ALPN on the last dial ([`PROTO_UNKNOWN`]
    /// until the first one answers).
    proto: AtomicU8,
    gauge: IntGauge,
    /// `scheme://authority` for HTTP/2 request URIs.
    origin: String,
    authority: HeaderValue,
}

const PROTO_UNKNOWN: u8 = 0;
const PROTO_H1: u8 = 1;
const PROTO_H2: u8 = 2;

enum Dialed {
    H1(Conn),
    H2(http2::SendRequest<RequestBody>, StreamSlot),
}

/// How the HTTP/1.1 pool keeps idle connections.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Idle connections kept in all (divided among the event loops).
    pub max_idle: usize,
    pub idle_timeout: Duration,
    /// The node's event loops: each keeps its own idle connections.
    pub event_loops: usize,
}

impl Client {
    pub fn new(
        dialer: Dialer,
        origin: String,
        authority: HeaderValue,
        pool: PoolSettings,
        h2_max_streams: usize,
        gauge: IntGauge,
    ) -> Self {
        Client {
            dialer,
            pool: Arc::new(Pool::new(
                pool.max_idle,
                pool.idle_timeout,
                pool.event_loops,
            )),
            h2: Mutex::new(Vec::new()),
            h2_max_streams,
            h2_dial: tokio::sync::Mutex::new(()),
            proto: AtomicU8::new(PROTO_UNKNOWN),
            gauge,
            origin,
            authority,
        }
    }

    /// Sends one request on a pooled or new connection.
    pub async fn send(
        &self,
        req: &Outgoing<'_>,
        body: RequestBody,
    ) -> Result<Box<UpstreamResponse>, SendError> {
        let proto = self.proto.load(Ordering::Relaxed);
        let pooled = if proto == PROTO_H2 {
            None
        } else {
            self.pool.take(req.at)
        };
        let dialed = match pooled {
            Some(conn) => Dialed::H1(conn),
            // Over TLS the protocol may be HTTP/2: until ALPN has told, dials take
            // turns, so a burst of first requests shares one HTTP/2 connection rather
            // than opening one each.
            // The dials are boxed: a pooled connection is the usual case, and their
            // state inline would size every request's future.
            None if self.dialer.is_tls() && proto != PROTO_H1 => {
                by(req.deadline, Box::pin(self.h2_sender(req.at))).await?
            }
            None => by(req.deadline, Box::pin(self.dial())).await?,
        };
        let conn = match dialed {
            Dialed::H1(conn) => conn,
            Dialed::H2(sender, slot) => {
                return by(req.deadline, self.send_h2(sender, slot, req, body)).await
            }
        };
        h1::send(conn, Arc::downgrade(&self.pool), &self.authority, req, body).await
    }

    /// A stream on a shared HTTP/2 connection with room, dialling one if every
    /// connection is full or closed. The dial may find that the upstream speaks
    /// HTTP/1.1 after all.
    async fn h2_sender(&self, now: Instant) -> Result<Dialed, SendError> {
        if let Some((s, slot)) = self.h2_stream() {
            return Ok(Dialed::H2(s, slot));
        }
        let _one_dial = self.h2_dial.lock().await;
        if let Some((s, slot)) = self.h2_stream() {
            return Ok(Dialed::H2(s, slot));
        }
        if self.proto.load(Ordering::Relaxed) == PROTO_H1 {
            if let Some(conn) = self.pool.take(now) {
                return Ok(Dialed::H1(conn));
            }
        }
        self.dial().await
    }

    /// A place on the first open HTTP/2 connection with room. Closed connections are
    /// forgotten, and idle ones beyond a single spare are let go (hyper closes a
    /// connection once no handle and no stream is left).
    fn h2_stream(&self) -> Option<(http2::SendRequest<RequestBody>, StreamSlot)> {
        let mut conns = self.h2.lock().expect("h2 lock");
        let mut spare = false;
        conns.retain(|c| {
            if c.sender.is_closed() {
                return false;
            }
            let idle = c.streams.load(Ordering::Relaxed) == 0;
            let keep = !(idle && spare);
            spare |= idle;
            keep
        });
        conns
            .iter()
            .find(|c| c.streams.load(Ordering::Relaxed) < self.h2_max_streams)
            .map(H2Conn::claim)
    }

    async fn dial(&self) -> Result<Dialed, SendError> {
        let io = self
            .dialer
            .dial()
            .await
            .map_err(|e| SendError::Connect(e.to_string()))?;
        let count = Counted::new(&self.gauge);
        if !io.is_h2() {
            self.proto.store(PROTO_H1, Ordering::Relaxed);
            return Ok(Dialed::H1(Conn {
                io,
                buf: BytesMut::new(),
                wbuf: Vec::new(),
                timer: None,
                _count: count,
            }));
        }
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(H2_KEEPALIVE))
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| SendError::Connect(format!("HTTP/2 handshake: {e}")))?;
        tokio::spawn(async move {
            let _count = count;
            if let Err(e) = conn.await {
                tracing::debug!("upstream HTTP/2 connection ended: {e}");
            }
        });
        let conn = H2Conn {
            sender,
            streams: Arc::new(AtomicUsize::new(0)),
        };
        let (sender, slot) = conn.claim();
        self.h2.lock().expect("h2 lock").push(conn);
        self.proto.store(PROTO_H2, Ordering::Relaxed);
        Ok(Dialed::H2(sender, slot))
    }

    async fn send_h2(
        &self,
        mut sender: http2::SendRequest<RequestBody>,
        slot: StreamSlot,
        out: &Outgoing<'_>,
        body: RequestBody,
    ) -> Result<Box<UpstreamResponse>, SendError> {
        let uri: Uri = format!("{}{}", self.origin, out.target)
            .parse()
            .map_err(|_| SendError::Io("invalid request path".into()))?;
        let mut req = Request::new(body);
        *req.method_mut() = out.method.clone();
        *req.uri_mut() = uri;
        // Without content-length: hyper frames the body from its size.
        *req.headers_mut() = out.headers.to_map(out.api_key);
        sender
            .ready()
            .await
            .map_err(|e| SendError::Io(format!("upstream HTTP/2 connection: {e}")))?;
        match sender.send_request(req).await {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                Ok(Box::new(UpstreamResponse {
                    status: parts.status,
                    headers: HeaderFields::Map(parts.headers),
                    body: UpstreamBody::H2(body, slot),
                }))
            }
            Err(e) if caused_by_body_limit(&e) => Err(SendError::BodyTooLarge),
            Err(e) => Err(SendError::Io(error_chain(&e))),
        }
    }
}

fn caused_by_body_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if s.is::<crate::body::BodyTooLarge>() {
            return true;
        }
        src = s.source();
    }
    false
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

/// An upstream response body, from either protocol. An HTTP/2 body holds its
/// stream's place on the connection until it is dropped.
pub enum UpstreamBody {
    H1(H1Body),
    H2(Incoming, StreamSlot),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::H1(b) => Pin::new(b).poll_frame(cx),
            UpstreamBody::H2(b, _) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::H1(b) => b.is_end_stream(),
            UpstreamBody::H2(b, _) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::H1(b) => b.size_hint(),
            UpstreamBody::H2(b, _) => b.size_hint(),
        }
    }
}

/// `work`, or [`SendError::Timeout`] at `deadline`. For the dials and HTTP/2 streams; a
/// pooled HTTP/1.1 connection keeps a timer of its own for this.
async fn by<T>(
    deadline: tokio::time::Instant,
    work: impl Future<Output = Result<T, SendError>>,
) -> Result<T, SendError> {
    tokio::time::timeout_at(deadline, work)
        .await
        .unwrap_or(Err(SendError::Timeout))
}
