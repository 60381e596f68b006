//! The HTTP/1.1 server for client connections (run by [`crate::accept`]): one
//! connection's loop. Request heads are parsed by [`super::request`]; small bodies
//! with a declared length are read before the request is handed over, larger ones
//! pumped through a channel; responses are written by [`super::response`]. Body reads
//! are timed by a [`UploadClock`] on the connection's one timer: a client silent or
//! too slow with its body gets a 408 from here, and a handler under way is dropped.
//!
//! Why not hyper's HTTP/1 server: after the upstream client, it was the largest cost
//! per proxied request (docs/benchmarks.md). HTTP/2 still goes to hyper (`mod.rs`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, Version};
use http_body::Body;
use http_body_util::Full;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Sleep};

use super::framing::{self as wire, Framing};
use super::request::{is_h2_preface, parse_head_into, Head, Refused, H2_PREFACE, MAX_HEADERS};
use super::response::{take_body, write_body, write_head, write_response};
use super::{HeadFields, Reply};
use crate::body::{self, ClientBody, Stall, UploadClock, UploadLimits};
use crate::error::{Error, ErrorKind};
use crate::head::{ClientRequest, HeaderFields};

/// Bodies with a declared length up to this are read before the request is handed
/// over: no channel and no second task for the common small request.
const PREREAD: u64 = 256 * 1024;
const READ_CHUNK: usize = 16 * 1024;
/// Streamed request bodies: pieces buffered between the connection and the handler.
const BODY_CHANNEL: usize = 4;
/// After answering a request whose body was not read (a 413, a 401 before a large
/// upload), unread input is drained for this long before closing, so the client reads
/// the answer instead of a connection reset.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 4 << 20;

/// Settings shared by every HTTP/1.1 connection of a listener.
#[derive(Clone)]
pub struct Settings {
    /// Request heads larger than this get a 431 and the connection is closed.
    pub max_head: usize,
    /// Time allowed for a whole request head, idle keep-alive time included.
    pub header_read_timeout: Duration,
    /// Declared bodies over this are not read ahead; the handler refuses them.
    pub max_body: u64,
    /// How long a client may take over a request body.
    pub upload: UploadLimits,
    /// Counts heads refused here (they never reach the handler), by error type.
    pub refused: prometheus::IntCounterVec,
    /// Counts bodies given up here, by reason (`strait_request_body_timeouts_total`).
    pub body_timeouts: prometheus::IntCounterVec,
}

/// No fields outside the map: the server's own refusals.
#[derive(Default)]
pub struct NoFields;

impl HeadFields for NoFields {
    fn write_lines(&self, _: &mut Vec<u8>, _: bool, _: &http::HeaderMap) -> bool {
        false
    }

    fn insert_into(&self, _: &mut http::HeaderMap) {}
}

/// How a connection ended.
pub enum Ended<IO> {
    Closed,
    /// The client opened with the HTTP/2 preface: the connection and the bytes read
    /// so far go to the HTTP/2 server.
    Http2(IO, Bytes),
}

/// One client connection: the socket, what was read and not yet parsed, and the
/// output buffer responses are written through.
pub(super) struct Conn<IO> {
    pub(super) io: IO,
    pub(super) buf: BytesMut,
    pub(super) out: Vec<u8>,
}

/// Serves HTTP/1.1 requests on one connection until it closes, times out, breaks the
/// protocol, or `stop` fires (then idle connections close at once and a request in
/// progress finishes first).
pub async fn serve<IO, S, F, B, X>(
    io: IO,
    settings: &Settings,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
    service: &S,
) -> Ended<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: Fn(ClientRequest, SocketAddr) -> F,
    F: Future<Output = Reply<B, X>>,
    B: Body<Data = Bytes> + Unpin + Default,
    X: HeadFields + Default,
{
    let mut conn = Conn {
        io,
        buf: BytesMut::with_capacity(READ_CHUNK),
        out: Vec::with_capacity(1024),
    };
    let mut first = true;
    // One timer for the connection, for each head's deadline and a body's that is
    // waited for (see `read_head`): registering a new one per request cost more than
    // the rest of reading the head.
    let deadline = tokio::time::sleep(settings.header_read_timeout);
    tokio::pin!(deadline);
    // Likewise one wait for the drain signal, on a receiver of its own: a fresh
    // `changed()` per request registered and removed a waiter every time.
    let mut drain_rx = stop.clone();
    let drained = futures_util::FutureExt::fuse(drain_rx.changed());
    tokio::pin!(drained);
    let mut drain = DrainWait {
        stop: &stop,
        drained: drained.as_mut(),
        registered: false,
    };
    // Where each request's head is parsed into (see `parse_head_into`).
    let mut slot = None;
    loop {
        let read = read_head(
            &mut conn,
            settings,
            &mut drain,
            deadline.as_mut(),
            first,
            &mut slot,
        )
        .await;
        let head = match read {
            Ok(true) => match slot.take() {
                Some(head) => head,
                None => break,
            },
            Ok(false) => break,
            Err(HeadError::Http2) => {
                return Ended::Http2(conn.io, conn.buf.freeze());
            }
            Err(HeadError::Refused(why)) => {
                let err = match why {
                    Refused::TooLarge => Error::new(
                        ErrorKind::HeadersTooLarge,
                        format!(
                            "request head exceeds the gateway's hard limit of {} bytes",
                            settings.max_head
                        ),
                    ),
                    Refused::TooManyFields => Error::new(
                        ErrorKind::HeadersTooLarge,
                        format!("request head has more than {MAX_HEADERS} header fields"),
                    ),
                    Refused::Malformed(what) => Error::new(ErrorKind::InvalidRequest, what),
                };
                refuse(&mut conn, settings, err).await;
                break;
            }
        };
        first = false;
        let Head {
            method,
            uri,
            version,
            headers,
            mut framing,
            mut keep_alive,
            expect_continue,
            ..
        } = head;
        let is_head = method == Method::HEAD;
        let http10 = version == Version::HTTP_10;
        let request = |body| ClientRequest {
            method,
            uri,
            version,
            headers: HeaderFields::Raw(headers),
            body,
            client_cert: false,
        };
        // A declared body over the limit will be refused unread: no invitation to send it.
        let refused_unread = matches!(framing, Framing::Length(n) if n > settings.max_body);
        if expect_continue && !framing.is_done() && !refused_unread {
            if conn
                .io
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
            {
                break;
            }
            let _ = conn.io.flush().await;
        }

        // The reply is taken as it comes, not wrapped in a result with the stalls:
        // each move of it copied several hundred bytes.
        let mut reply = match framing {
            Framing::Done => service(request(ClientBody::Full(None)), peer).await,
            Framing::Length(n) if n <= PREREAD.min(settings.max_body) => {
                let n = n as usize;
                // Usually the body came with the head: no clock, no timer.
                let read = if conn.buf.len() < n {
                    read_declared(&mut conn, n, settings.upload, deadline.as_mut()).await
                } else {
                    Ok(true)
                };
                match read {
                    Ok(true) => {
                        framing = Framing::Done;
                        let body = conn.buf.split_to(n).freeze();
                        service(request(ClientBody::Full(Some(body))), peer).await
                    }
                    Ok(false) => return Ended::Closed,
                    Err(stall) => {
                        stalled(&mut conn, settings, stall).await;
                        break;
                    }
                }
            }
            _ => {
                // Larger or chunked: the handler reads the body through a channel
                // while this task reads the connection.
                let (tx, rx) = mpsc::channel(BODY_CHANNEL);
                let left = match framing {
                    Framing::Length(n) => Some(n),
                    _ => None,
                };
                let answered = {
                    let fut = service(request(ClientBody::Channel { rx, left }), peer);
                    let pump = pump(
                        &mut conn,
                        &mut framing,
                        tx,
                        settings.upload,
                        deadline.as_mut(),
                    );
                    tokio::pin!(fut, pump);
                    let mut pumping = true;
                    loop {
                        tokio::select! {
                            biased;
                            r = &mut fut => break Ok(r),
                            p = &mut pump, if pumping => match p {
                                Ok(()) => pumping = false,
                                // The handler (and an upload it was relaying upstream)
                                // is dropped: nothing has been sent back yet.
                                Err(stall) => break Err(stall),
                            },
                        }
                    }
                };
                match answered {
                    Ok(r) => r,
                    Err(stall) => {
                        stalled(&mut conn, settings, stall).await;
                        break;
                    }
                }
            }
        };
        let body_read = framing.is_done();
        if !body_read || *stop.borrow() {
            keep_alive = false;
        }
        let body_out = write_head(&mut conn.out, &reply, is_head, http10, &mut keep_alive);
        let body = take_body(&mut reply);
        let ok = write_body(&mut conn, body, body_out).await;
        match ok {
            Ok(()) if keep_alive => continue,
            Ok(()) => {
                if !body_read {
                    linger(&mut conn).await;
                }
                let _ = conn.io.shutdown().await;
                break;
            }
            Err(_) => break,
        }
    }
    Ended::Closed
}

/// A request body given up on (too slow, or silent): counted, then answered with a
/// 408 and the connection closed.
async fn stalled<IO: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<IO>,
    settings: &Settings,
    stall: Stall,
) {
    settings
        .body_timeouts
        .with_label_values(&[stall.label()])
        .inc();
    refuse(conn, settings, stall.error(&settings.upload)).await;
}

enum HeadError {
    Http2,
    Refused(Refused),
}

/// Waits for a complete request head and writes it into `head` (see
/// `parse_head_into`). `Ok(false)`: the connection should close quietly (the client
/// closed, went idle past the timeout, or the node is draining).
///
/// The head's deadline is `due`; the connection's timer is moved only when it would
/// fire after it. A timer that fires early is moved on to `due` then. Moving it for
/// every request, a removal and an insertion in tokio's timer wheel, cost about 300
/// instructions a request (callgrind, docs/benchmarks.md).
async fn read_head<IO: AsyncRead + Unpin, D: futures_util::future::FusedFuture>(
    conn: &mut Conn<IO>,
    settings: &Settings,
    drain: &mut DrainWait<'_, '_, D>,
    mut deadline: Pin<&mut tokio::time::Sleep>,
    first: bool,
    head: &mut Option<Head>,
) -> Result<bool, HeadError> {
    let due = if first {
        deadline.deadline()
    } else {
        let due = Instant::now() + settings.header_read_timeout;
        body::arm(deadline.as_mut(), due);
        due
    };
    let mut stopping = *drain.stop.borrow() || drain.drained.is_terminated();
    loop {
        if !conn.buf.is_empty() {
            if first && is_h2_preface(&conn.buf) {
                if conn.buf.len() >= H2_PREFACE.len() {
                    return Err(HeadError::Http2);
                }
            } else if parse_head_into(&mut conn.buf, head).map_err(HeadError::Refused)? {
                // RFC 9112 3.2: a server answers 400 to an HTTP/1.1 request without Host.
                if let Some(h) = head {
                    if h.version == Version::HTTP_11 && !h.has_host {
                        return Err(HeadError::Refused(Refused::Malformed(
                            "HTTP/1.1 request without a Host header",
                        )));
                    }
                }
                return Ok(true);
            }
            if conn.buf.len() > settings.max_head {
                return Err(HeadError::Refused(Refused::TooLarge));
            }
        } else if stopping {
            return Ok(false);
        }
        conn.buf.reserve(READ_CHUNK);
        let idle = conn.buf.is_empty();
        tokio::select! {
            biased;
            r = conn.io.read_buf(&mut conn.buf) => match r {
                Ok(0) | Err(_) => return Ok(false),
                Ok(_) => {}
            },
            () = deadline.as_mut() => {
                if Instant::now() >= due {
                    return Ok(false);
                }
                deadline.as_mut().reset(due);
            }
            () = std::future::poll_fn(|cx| drain.poll(cx)), if idle && !stopping => {
                stopping = true
            }
        }
    }
}

/// The connection's wait for the drain signal. `drained` resolves when the signal
/// changes (or its sender is gone); once it has, the connection is treated as draining.
struct DrainWait<'s, 'p, D> {
    stop: &'s watch::Receiver<bool>,
    drained: Pin<&'p mut D>,
    /// `drained` has been polled once, so the connection's task is among its waiters.
    registered: bool,
}

impl<D: Future> DrainWait<'_, '_, D> {
    /// Polls `drained` the first time, to join its waiters, then only once the signal
    /// has changed: the connection runs as one task, so the waker it left stays good.
    /// Polling it at every wait re-took the signal's lock for nothing.
    fn poll(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.registered && !self.stop.has_changed().unwrap_or(true) {
            return std::task::Poll::Pending;
        }
        self.registered = true;
        self.drained.as_mut().poll(cx).map(|_| ())
    }
}

/// Answers `err` on the server's own account (the request never reached the handler,
/// or the handler was dropped), counted with the handler's errors, and closes the
/// connection.
async fn refuse<IO: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<IO>,
    settings: &Settings,
    err: Error,
) {
    settings
        .refused
        .with_label_values(&[err.anthropic_type()])
        .inc();
    let mut keep_alive = false;
    let refusal = Reply {
        response: err.bare_response::<Full<Bytes>>(),
        fields: NoFields,
    };
    let _ = write_response(conn, refusal, false, false, &mut keep_alive).await;
    // Whatever else the client sent is not read: drain it so the answer is not lost
    // to a reset.
    linger(conn).await;
}

/// Reads until `conn.buf` holds a declared body of `n` bytes. `Ok(false)`: the client
/// closed or the connection failed.
async fn read_declared<IO: AsyncRead + Unpin>(
    conn: &mut Conn<IO>,
    n: usize,
    limits: UploadLimits,
    mut timer: Pin<&mut Sleep>,
) -> Result<bool, Stall> {
    let mut clock = UploadClock::new(limits);
    while conn.buf.len() < n {
        let want = n - conn.buf.len();
        match read_body(conn, want, &mut clock, timer.as_mut()).await? {
            Ok(0) | Err(_) => return Ok(false),
            Ok(_) => {}
        }
    }
    Ok(true)
}

/// One read of body bytes into `conn.buf`, with room for `want` more, timed by
/// `clock` on the connection's timer. Only this wait counts against the client.
async fn read_body<IO: AsyncRead + Unpin>(
    conn: &mut Conn<IO>,
    want: usize,
    clock: &mut UploadClock,
    mut timer: Pin<&mut Sleep>,
) -> Result<io::Result<usize>, Stall> {
    conn.buf.reserve(want);
    body::arm(timer.as_mut(), clock.wait(Instant::now()));
    loop {
        tokio::select! {
            biased;
            r = conn.io.read_buf(&mut conn.buf) => {
                clock.arrived(*r.as_ref().unwrap_or(&0), Instant::now());
                return Ok(r);
            }
            () = timer.as_mut() => {
                let next = clock.check(Instant::now())?;
                timer.as_mut().reset(next);
            }
        }
    }
}

/// Reads a streamed request body off the connection into the handler's channel.
/// Returns when the body is complete (`framing` is then `Done`), the handler stops
/// reading it, or the connection fails; `Err` when the client was too slow with it.
/// Time spent waiting for room in the channel is the node's, not the client's.
async fn pump<IO: AsyncRead + Unpin>(
    conn: &mut Conn<IO>,
    framing: &mut Framing,
    tx: mpsc::Sender<io::Result<Bytes>>,
    limits: UploadLimits,
    mut timer: Pin<&mut Sleep>,
) -> Result<(), Stall> {
    let mut clock = UploadClock::new(limits);
    loop {
        match wire::decode(framing, &mut conn.buf) {
            Ok(Some(data)) => {
                if tx.send(Ok(data)).await.is_err() {
                    return Ok(());
                }
            }
            Ok(None) if framing.is_done() => return Ok(()),
            Ok(None) => match read_body(conn, READ_CHUNK, &mut clock, timer.as_mut()).await? {
                Ok(0) => {
                    let eof = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "client closed the connection mid-body",
                    );
                    let _ = tx.send(Err(eof)).await;
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return Ok(());
                }
            },
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return Ok(());
            }
        }
    }
}

/// Half-closes and drains unread input for a short while, so a client still sending
/// a body reads the answer instead of a reset.
async fn linger<IO: AsyncRead + AsyncWrite + Unpin>(conn: &mut Conn<IO>) {
    let _ = conn.io.shutdown().await;
    // Read into the connection's own buffer: a scratch array here would be part of
    // every connection's future.
    let drain = async {
        let mut seen = 0;
        while seen < LINGER_BYTES {
            conn.buf.clear();
            conn.buf.reserve(READ_CHUNK);
            match conn.io.read_buf(&mut conn.buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}
