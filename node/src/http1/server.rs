//! The HTTP/1.1 server for client connections (run by [`crate::accept`]). Request
//! heads are parsed with httparse; small bodies with a declared length are read before the
//! request is handed over; each response goes out head and body in one write when the
//! body is ready, and piece by piece (flushed as it comes) when it streams.
//!
//! Why not hyper's HTTP/1 server: after the upstream client, it was the largest cost
//! per proxied request (docs/benchmarks.md). HTTP/2 still goes to hyper (`mod.rs`).

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header;
use http::{Method, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::Full;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::framing::{self as wire, Framing};
use super::{HeadFields, Reply};
use crate::body::ClientBody;
use crate::error::{Error, ErrorKind};
use crate::head::{ClientRequest, HeaderFields, RawHeaders};

/// The first bytes of every HTTP/2 connection with prior knowledge (RFC 9113 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Headers in one request head, at most (hyper's default was 100).
const MAX_HEADERS: usize = 128;
/// Bodies with a declared length up to this are read before the request is handed
/// over: no channel and no second task for the common small request.
const PREREAD: u64 = 256 * 1024;
const READ_CHUNK: usize = 16 * 1024;
/// Response pieces larger than this are written as they are rather than copied into
/// the output buffer; the buffer is written out when it grows past it.
const COPY_LIMIT: usize = 16 * 1024;
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
    /// Counts heads refused here (they never reach the handler), by error type.
    pub refused: prometheus::IntCounterVec,
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

/// A request head, parsed.
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: RawHeaders,
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
}

/// Why a head was refused; answered and the connection closed.
enum Refused {
    TooLarge,
    Malformed(&'static str),
}

struct Conn<IO> {
    io: IO,
    buf: BytesMut,
    out: Vec<u8>,
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
    B: Body<Data = Bytes> + Unpin,
    X: HeadFields,
{
    let mut conn = Conn {
        io,
        buf: BytesMut::with_capacity(READ_CHUNK),
        out: Vec::with_capacity(1024),
    };
    let mut first = true;
    // One timer for the connection, moved on for each head: registering a new one per
    // request cost more than the rest of reading the head.
    let deadline = tokio::time::sleep(settings.header_read_timeout);
    tokio::pin!(deadline);
    // Likewise one wait for the drain signal, on a receiver of its own: a fresh
    // `changed()` per request registered and removed a waiter every time.
    let mut drain_rx = stop.clone();
    let drained = futures_util::FutureExt::fuse(drain_rx.changed());
    tokio::pin!(drained);
    loop {
        let head = match read_head(
            &mut conn,
            settings,
            &stop,
            drained.as_mut(),
            deadline.as_mut(),
            first,
        )
        .await
        {
            Ok(Some(head)) => head,
            Ok(None) => break,
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
                    Refused::Malformed(what) => Error::new(ErrorKind::InvalidRequest, what),
                };
                // Counted with the handler's own errors: these never reach it.
                settings
                    .refused
                    .with_label_values(&[err.anthropic_type()])
                    .inc();
                let mut keep_alive = false;
                let refusal = Reply {
                    response: err.bare_response::<Full<Bytes>>(),
                    fields: NoFields,
                };
                let _ = write_response(&mut conn, refusal, false, false, &mut keep_alive).await;
                // Whatever else the client sent is not read: drain it so the answer
                // is not lost to a reset.
                linger(&mut conn).await;
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
        } = head;
        let is_head = method == Method::HEAD;
        let http10 = version == Version::HTTP_10;
        let request = |body| ClientRequest {
            method,
            uri,
            version,
            headers: HeaderFields::Raw(headers),
            body,
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

        let response = match framing {
            Framing::Done => {
                let fut = service(request(ClientBody::Full(None)), peer);
                fut.await
            }
            Framing::Length(n) if n <= PREREAD.min(settings.max_body) => {
                let n = n as usize;
                while conn.buf.len() < n {
                    conn.buf.reserve(n - conn.buf.len());
                    match conn.io.read_buf(&mut conn.buf).await {
                        Ok(0) | Err(_) => return Ended::Closed,
                        Ok(_) => {}
                    }
                }
                framing = Framing::Done;
                let body = conn.buf.split_to(n).freeze();
                service(request(ClientBody::Full(Some(body))), peer).await
            }
            _ => {
                // Larger or chunked: the handler reads the body through a channel
                // while this task reads the connection.
                let (tx, rx) = mpsc::channel(BODY_CHANNEL);
                let left = match framing {
                    Framing::Length(n) => Some(n),
                    _ => None,
                };
                let fut = service(request(ClientBody::Channel { rx, left }), peer);
                let pump = pump(&mut conn, &mut framing, tx);
                tokio::pin!(fut, pump);
                let mut pumping = true;
                loop {
                    tokio::select! {
                        biased;
                        r = &mut fut => break r,
                        () = &mut pump, if pumping => pumping = false,
                    }
                }
            }
        };
        let body_read = framing.is_done();
        if !body_read || *stop.borrow() {
            keep_alive = false;
        }
        let ok = write_response(&mut conn, response, is_head, http10, &mut keep_alive).await;
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

enum HeadError {
    Http2,
    Refused(Refused),
}

/// Waits for a complete request head. `Ok(None)`: the connection should close quietly
/// (the client closed, went idle past the timeout, or the node is draining).
///
/// `drained` resolves when the drain signal changes (or its sender is gone); once it
/// has, the connection is treated as draining.
async fn read_head<IO: AsyncRead + Unpin, D: futures_util::future::FusedFuture>(
    conn: &mut Conn<IO>,
    settings: &Settings,
    stop: &watch::Receiver<bool>,
    mut drained: Pin<&mut D>,
    mut deadline: Pin<&mut tokio::time::Sleep>,
    first: bool,
) -> Result<Option<Head>, HeadError> {
    if !first {
        deadline
            .as_mut()
            .reset(tokio::time::Instant::now() + settings.header_read_timeout);
    }
    let mut stopping = *stop.borrow() || drained.is_terminated();
    loop {
        if !conn.buf.is_empty() {
            if first && is_h2_preface(&conn.buf) {
                if conn.buf.len() >= H2_PREFACE.len() {
                    return Err(HeadError::Http2);
                }
            } else if let Some(head) = parse_head(&mut conn.buf).map_err(HeadError::Refused)? {
                return Ok(Some(head));
            }
            if conn.buf.len() > settings.max_head {
                return Err(HeadError::Refused(Refused::TooLarge));
            }
        } else if stopping {
            return Ok(None);
        }
        conn.buf.reserve(READ_CHUNK);
        let idle = conn.buf.is_empty();
        tokio::select! {
            r = conn.io.read_buf(&mut conn.buf) => match r {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            },
            () = deadline.as_mut() => return Ok(None),
            _ = drained.as_mut(), if idle && !stopping => stopping = true,
        }
    }
}

fn is_h2_preface(buf: &[u8]) -> bool {
    let n = buf.len().min(H2_PREFACE.len());
    buf[..n] == H2_PREFACE[..n]
}

/// Where the head at the front of `buf` ends (after its empty line), if it is all
/// there. Bare-LF line ends are accepted, as httparse accepts them.
fn head_end(buf: &[u8]) -> Option<usize> {
    // An empty line is LF then CRLF (the usual head) or LF then LF; two searches, each
    // one pass, rather than a look at every line end.
    let crlf = memchr::memmem::find(buf, b"\n\r\n");
    let scope = &buf[..crlf.map_or(buf.len(), |i| i + 1)];
    match memchr::memmem::find(scope, b"\n\n") {
        Some(i) => Some(i + 2),
        None => crlf.map(|i| i + 3),
    }
}

/// Parses one request head from the front of `buf`, consuming it when complete.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, Refused> {
    // Empty lines before a request line are ignored (RFC 9112 2.2).
    let blank = buf
        .iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count();
    bytes::Buf::advance(buf, blank);
    let Some(len) = head_end(buf) else {
        return Ok(None);
    };
    // The head is split off the read buffer without a copy, and the target and every
    // value point into it. They are dropped before the connection reads again (the
    // request is done by then), so the buffer is reclaimed rather than regrown.
    let raw = buf.split_to(len).freeze();
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(&raw, &mut slots) {
        Ok(httparse::Status::Complete(n)) if n == raw.len() => {}
        Err(httparse::Error::TooManyHeaders) => return Err(Refused::TooLarge),
        _ => return Err(Refused::Malformed("malformed HTTP/1.1 request head")),
    }
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
        .map_err(|_| Refused::Malformed("invalid request method"))?;
    let version = match req.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let uri = Uri::from_maybe_shared(raw.slice_ref(req.path.unwrap_or_default().as_bytes()))
        .map_err(|_| Refused::Malformed("invalid request target"))?;

    let mut headers = RawHeaders::with_capacity(raw.clone(), req.headers.len());
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        // httparse has checked the name is a token and the value has no control
        // characters: what `HeaderName` and `HeaderValue` would check.
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n =
                wire::parse_length(h.value).ok_or(Refused::Malformed("invalid content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(Refused::Malformed("conflicting content-length headers"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Only `chunked`, once, is understood; anything else is refused rather
            // than guessed at (RFC 9112 6.1: a server that does not understand a
            // transfer coding answers 501; refusing also closes smuggling routes).
            if transfer_encoding || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(Refused::Malformed("unsupported transfer-encoding"));
            }
            transfer_encoding = true;
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            close |= wire::has_token(h.value, b"close");
            keep_alive_token |= wire::has_token(h.value, b"keep-alive");
        } else if name.eq_ignore_ascii_case(b"expect") {
            expect_continue = h.value.eq_ignore_ascii_case(b"100-continue");
        }
        headers.push(name, h.value);
    }
    let framing = match (chunked, length) {
        (true, Some(_)) => {
            // RFC 9112 6.1: a message with both may be an attempt at smuggling.
            return Err(Refused::Malformed(
                "both transfer-encoding and content-length",
            ));
        }
        (true, None) if version == Version::HTTP_10 => {
            return Err(Refused::Malformed("transfer-encoding on HTTP/1.0"));
        }
        (true, None) => Framing::chunked(),
        (false, Some(0)) | (false, None) => Framing::Done,
        (false, Some(n)) => Framing::Length(n),
    };
    let keep_alive = match version {
        Version::HTTP_11 => !close,
        _ => keep_alive_token && !close,
    };
    Ok(Some(Head {
        method,
        uri,
        version,
        headers,
        framing,
        keep_alive,
        expect_continue: expect_continue && version == Version::HTTP_11,
    }))
}

/// Reads a streamed request body off the connection into the handler's channel.
/// Returns when the body is complete (`framing` is then `Done`), the handler stops
/// reading it, or the connection fails.
async fn pump<IO: AsyncRead + Unpin>(
    conn: &mut Conn<IO>,
    framing: &mut Framing,
    tx: mpsc::Sender<io::Result<Bytes>>,
) {
    loop {
        match wire::decode(framing, &mut conn.buf) {
            Ok(Some(data)) => {
                if tx.send(Ok(data)).await.is_err() {
                    return;
                }
            }
            Ok(None) if framing.is_done() => return,
            Ok(None) => {
                conn.buf.reserve(READ_CHUNK);
                match conn.io.read_buf(&mut conn.buf).await {
                    Ok(0) => {
                        let eof = io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "client closed the connection mid-body",
                        );
                        let _ = tx.send(Err(eof)).await;
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

/// How the response body is delimited on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Out {
    None,
    Length(u64),
    Chunked,
    /// HTTP/1.0 client and no known length: the body ends when the connection does.
    Close,
}

/// What one poll of the response body gave.
enum Step {
    Data(Bytes),
    /// A non-data frame (trailers): not relayed.
    Skip,
    /// Nothing ready now and output is waiting: write it before waiting.
    Flush,
    Failed,
    End,
}

/// Writes one response. Returns an error when the connection cannot carry another
/// request (write failure, or a body that failed or fell short of its length).
async fn write_response<IO: AsyncWrite + Unpin, B: Body<Data = Bytes> + Unpin, X: HeadFields>(
    conn: &mut Conn<IO>,
    reply: Reply<B, X>,
    is_head: bool,
    http10: bool,
    keep_alive: &mut bool,
) -> io::Result<()> {
    let Reply { response, fields } = reply;
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let out = &mut conn.out;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");

    let bodiless = is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut framing = if bodiless {
        Out::None
    } else {
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| wire::parse_length(v.as_bytes()));
        match body.size_hint().exact().or(declared) {
            Some(n) => Out::Length(n),
            None if http10 => Out::Close,
            None => Out::Chunked,
        }
    };
    if framing == Out::Close {
        *keep_alive = false;
    }
    for (name, value) in &parts.headers {
        if name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
            || (name == header::CONTENT_LENGTH && !bodiless)
        {
            continue;
        }
        wire::put_header(out, name, value);
    }
    // Written, then let go: a stream should not hold its head's bytes while it runs.
    let upstream_date = fields.write_lines(out, bodiless, &parts.headers);
    drop(fields);
    match framing {
        Out::Length(n) => wire::put_length(out, n),
        Out::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Out::None | Out::Close => {}
    }
    if !upstream_date && !parts.headers.contains_key(header::DATE) {
        put_date(out);
    }
    if !*keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    drop(parts);

    if framing == Out::None {
        conn.io.write_all(&conn.out).await?;
        return conn.io.flush().await;
    }
    let mut complete = true;
    loop {
        let out = &mut conn.out;
        let step = std::future::poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(match frame.into_data() {
                Ok(d) => Step::Data(d),
                Err(_) => Step::Skip,
            }),
            Poll::Ready(Some(Err(_))) => Poll::Ready(Step::Failed),
            Poll::Ready(None) => Poll::Ready(Step::End),
            Poll::Pending if !out.is_empty() => Poll::Ready(Step::Flush),
            Poll::Pending => Poll::Pending,
        })
        .await;
        match step {
            Step::Data(mut data) => {
                if let Out::Length(left) = &mut framing {
                    if data.len() as u64 > *left {
                        // More than declared: send what was declared, then close.
                        data.truncate(*left as usize);
                        complete = false;
                    }
                    *left -= data.len() as u64;
                }
                if data.is_empty() {
                    continue;
                }
                if framing == Out::Chunked {
                    wire::put_chunk_size(out, data.len());
                }
                if data.len() > COPY_LIMIT {
                    conn.io.write_all(out).await?;
                    out.clear();
                    conn.io.write_all(&data).await?;
                } else {
                    out.extend_from_slice(&data);
                }
                if framing == Out::Chunked {
                    out.extend_from_slice(b"\r\n");
                }
                if out.len() > COPY_LIMIT {
                    conn.io.write_all(out).await?;
                    out.clear();
                }
                if !complete {
                    break;
                }
            }
            Step::Skip => {}
            Step::Flush => {
                conn.io.write_all(out).await?;
                out.clear();
                conn.io.flush().await?;
            }
            Step::Failed => {
                // The client must see a broken message, not a complete one: no last
                // chunk, and the connection closes.
                complete = false;
                break;
            }
            Step::End => {
                match framing {
                    Out::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
                    Out::Length(left) if left > 0 => complete = false,
                    _ => {}
                }
                break;
            }
        }
    }
    conn.io.write_all(&conn.out).await?;
    conn.io.flush().await?;
    conn.out.clear();
    drop(body);
    if complete && framing != Out::Close {
        Ok(())
    } else {
        Err(io::Error::other("response body incomplete"))
    }
}

/// A `date` header for responses that have none (the gateway's own): formatted once
/// per second.
fn put_date(out: &mut Vec<u8>) {
    thread_local! {
        static LAST: RefCell<(u64, Vec<u8>)> = const { RefCell::new((0, Vec::new())) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    LAST.with_borrow_mut(|(at, line)| {
        if *at != secs || line.is_empty() {
            *at = secs;
            line.clear();
            line.extend_from_slice(b"date: ");
            line.extend_from_slice(httpdate::fmt_http_date(now).as_bytes());
            line.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(line);
    });
}

/// Half-closes and drains unread input for a short while, so a client still sending
/// a body reads the answer instead of a reset.
async fn linger<IO: AsyncRead + AsyncWrite + Unpin>(conn: &mut Conn<IO>) {
    let _ = conn.io.shutdown().await;
    let drain = async {
        let mut seen = 0;
        let mut scratch = [0u8; 8192];
        while seen < LINGER_BYTES {
            match conn.io.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Option<Head>, Refused> {
        parse_head(&mut BytesMut::from(raw))
    }

    fn refused(raw: &[u8]) -> bool {
        matches!(parse(raw), Err(Refused::Malformed(_)))
    }

    #[test]
    fn heads_parse_with_framing_and_keep_alive() {
        let mut buf = BytesMut::from(
            &b"POST /v1/messages?beta=true HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nx-a: b\r\n\r\nhello"[..],
        );
        let head = parse_head(&mut buf).ok().flatten().expect("complete");
        assert_eq!(head.method, Method::POST);
        assert_eq!(head.uri.path(), "/v1/messages");
        assert_eq!(head.uri.query(), Some("beta=true"));
        let headers = HeaderFields::Raw(head.headers);
        assert_eq!(
            headers.get(&header::HeaderName::from_static("x-a")),
            Some(&b"b"[..])
        );
        assert_eq!(head.framing, Framing::Length(5));
        assert!(head.keep_alive);
        assert_eq!(&buf[..], b"hello", "the body stays in the buffer");

        let head = parse(b"GET / HTTP/1.0\r\n\r\n").ok().flatten().unwrap();
        assert!(!head.keep_alive, "HTTP/1.0 closes by default");
        let head = parse(b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
            .ok()
            .flatten()
            .unwrap();
        assert!(head.keep_alive);
        let head = parse(b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n")
            .ok()
            .flatten()
            .unwrap();
        assert!(!head.keep_alive);
        assert_eq!(head.framing, Framing::Done);

        let head =
            parse(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nexpect: 100-continue\r\n\r\n")
                .ok()
                .flatten()
                .unwrap();
        assert_eq!(head.framing, Framing::chunked());
        assert!(head.expect_continue);

        assert!(matches!(parse(b"GET / HTTP/1.1\r\nhost: x\r\n"), Ok(None)));
        // Blank lines before the request line are skipped; bare LF line ends work.
        let mut buf = BytesMut::from(&b"\r\n\r\nGET /a HTTP/1.1\nhost: x\n\nNEXT"[..]);
        let head = parse_head(&mut buf).ok().flatten().expect("complete");
        assert_eq!(head.uri.path(), "/a");
        let headers = HeaderFields::Raw(head.headers);
        assert_eq!(headers.get(&header::HOST), Some(&b"x"[..]));
        assert_eq!(&buf[..], b"NEXT");
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        assert!(refused(
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n"
        ));
        assert!(refused(
            b"POST / HTTP/1.1\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\n"
        ));
        assert!(refused(b"POST / HTTP/1.1\r\ncontent-length: +4\r\n\r\n"));
        assert!(refused(
            b"POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n"
        ));
        assert!(refused(
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n"
        ));
        assert!(refused(
            b"POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n"
        ));
        assert!(refused(b"GET / HTTP/1.1\r\nbad header\r\n\r\n"));
        // Equal duplicates are one length (RFC 9110 8.6).
        let head = parse(b"POST / HTTP/1.1\r\ncontent-length: 4\r\ncontent-length: 4\r\n\r\n")
            .ok()
            .flatten()
            .unwrap();
        assert_eq!(head.framing, Framing::Length(4));
    }

    #[test]
    fn the_h2_preface_is_recognised_from_its_first_bytes() {
        assert!(is_h2_preface(b"PRI * HT"));
        assert!(is_h2_preface(H2_PREFACE));
        assert!(!is_h2_preface(b"POST / HTTP/1.1\r\n"));
    }
}
