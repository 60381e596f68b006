//! HTTP/1.1 to the upstream, by hand: the request is written straight from the header
//! map into one buffer, the response head parsed in one pass (`parse`), and the body decoded
//! (content-length, chunked or until close) by [`H1Body`], which hands the connection
//! back to the pool when the body ends cleanly.
//!
//! Why not hyper's client: on a proxied request it costs a channel hop to a connection
//! task, a pool checkout future and a task per request to return the connection, which
//! together were a fifth of the node's CPU time per request (docs/benchmarks.md).

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Weak;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderValue, Method, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::time::{Instant, Sleep};

use super::framing::{self as wire, Framing};
use super::parse;
use super::pool::{Conn, Outgoing, Pool, SendError, UpstreamBody, UpstreamResponse};
use crate::body::{BoxError, RequestBody};
use crate::head::{HeaderFields, Known, RawFields, RawHeaders, X_API_KEY, X_FORWARDED_FOR};

/// Response heads larger than this are refused (Anthropic's are about 2 KiB).
const MAX_HEAD: usize = 64 * 1024;
/// Headers in one response head, at most.
const MAX_HEADERS: usize = 128;
/// Read buffer growth step.
const READ_CHUNK: usize = 16 * 1024;
/// A connection keeps its write buffer for the next request up to this size.
const KEPT_WRITE_BUFFER: usize = 4 * 1024;
/// Bodies up to this size go out in the same write as the head.
const INLINE_BODY: usize = 16 * 1024;

/// Writes one request and reads the response head. On success the connection travels
/// inside the returned body and goes back to `pool` when the body has been read.
///
/// The response is boxed here, where it is built: the attempt loop and the pipeline
/// move it several times on its way to the client, each move of its 240 bytes a
/// `memcpy` call (docs/benchmarks.md). An `async` block, not an `async fn`, for the
/// same reason: an `async fn` copies its arguments (the connection is most of them)
/// into its body's variables once more when first polled.
#[allow(clippy::manual_async_fn)]
pub fn send<'a, 'o>(
    mut conn: Conn,
    pool: Weak<Pool>,
    authority: &'a HeaderValue,
    req: &'a Outgoing<'o>,
    body: RequestBody,
) -> impl Future<Output = Result<Box<UpstreamResponse>, SendError>> + use<'a, 'o> {
    async move {
        let Outgoing {
            method,
            target,
            headers,
            api_key,
            ..
        } = *req;
        let io_err = |e: std::io::Error| SendError::Io(e.to_string());
        // The connection's own write buffer, kept between requests while it is small.
        let mut head = std::mem::take(&mut conn.wbuf);
        head.clear();
        head.reserve(512 + body.buffered_len().min(INLINE_BODY));
        head.extend_from_slice(method.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(target.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        head.extend_from_slice(authority.as_bytes());
        head.extend_from_slice(b"\r\n");
        // The client's fields as they came (framing and `expect` left out: the body goes
        // out right behind the head, framed by what is actually sent).
        headers.write_lines(&mut head);
        // Empty for the gateway's own requests (path probes): no client to name.
        if !headers.forwarded_for().is_empty() {
            wire::put_header(&mut head, &X_FORWARDED_FOR, headers.forwarded_for());
        }
        if let Some(key) = api_key {
            wire::put_header(&mut head, &X_API_KEY, key);
        }
        // Each wait below is timed by the connection's own timer (see `within`).
        let due = req.deadline;
        let mut timer = conn
            .timer
            .take()
            .unwrap_or_else(|| Box::pin(tokio::time::sleep_until(due)));
        crate::body::arm(timer.as_mut(), due);
        let timed_out = || SendError::Timeout;
        match body {
            RequestBody::Full(data) => {
                let data = data.unwrap_or_default();
                if !data.is_empty() || method_has_body(method) {
                    wire::put_length(&mut head, data.len() as u64);
                }
                head.extend_from_slice(b"\r\n");
                if data.len() <= INLINE_BODY {
                    head.extend_from_slice(&data);
                }
                within(timer.as_mut(), due, pin!(conn.io.write_all(&head)))
                    .await
                    .ok_or_else(timed_out)?
                    .map_err(io_err)?;
                if data.len() > INLINE_BODY {
                    within(timer.as_mut(), due, pin!(conn.io.write_all(&data)))
                        .await
                        .ok_or_else(timed_out)?
                        .map_err(io_err)?;
                }
            }
            RequestBody::Stream { .. } => {
                let exact = body.size_hint().exact();
                match exact {
                    Some(n) => wire::put_length(&mut head, n),
                    None => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
                }
                head.extend_from_slice(b"\r\n");
                within(timer.as_mut(), due, pin!(conn.io.write_all(&head)))
                    .await
                    .ok_or_else(timed_out)?
                    .map_err(io_err)?;
                within(
                    timer.as_mut(),
                    due,
                    pin!(send_stream(&mut conn, body, exact.is_none())),
                )
                .await
                .ok_or_else(timed_out)??;
            }
        }
        if head.capacity() <= KEPT_WRITE_BUFFER {
            head.clear();
            conn.wbuf = head;
        }
        within(timer.as_mut(), due, pin!(conn.io.flush()))
            .await
            .ok_or_else(timed_out)?
            .map_err(io_err)?;
        let head = within(timer.as_mut(), due, pin!(read_head(&mut conn, method)))
            .await
            .ok_or_else(timed_out)?
            .map_err(|e| SendError::Io(e.to_string()))?;
        conn.timer = Some(timer);
        let mut response = crate::boxed::boxed(|| UpstreamResponse {
            status: head.status,
            headers: HeaderFields::Raw(head.headers),
            body: UpstreamBody::H1(H1Body {
                conn: Some(conn),
                pool,
                framing: head.framing,
                reusable: head.reusable,
            }),
        });
        if let UpstreamBody::H1(body) = &mut response.body {
            body.finish_if_done();
        }
        Ok(response)
    }
}

/// `work`, or `None` at `due`, timed by a connection's own timer. The timer is set no
/// later than `due` (`body::arm`); one that fires early is moved on to `due` then.
/// A timer per request, registered in tokio's timer wheel and removed again, cost
/// about 470 instructions a request (callgrind, docs/benchmarks.md). Work that is
/// ready at once (most writes) never touches the timer.
fn within<F: Future + Unpin>(timer: Pin<&mut Sleep>, due: Instant, work: F) -> Within<'_, F> {
    Within { timer, due, work }
}

struct Within<'t, F> {
    timer: Pin<&'t mut Sleep>,
    due: Instant,
    work: F,
}

impl<F: Future + Unpin> Future for Within<'_, F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Poll::Ready(done) = Pin::new(&mut this.work).poll(cx) {
            return Poll::Ready(Some(done));
        }
        while this.timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= this.due {
                return Poll::Ready(None);
            }
            this.timer.as_mut().reset(this.due);
        }
        Poll::Pending
    }
}

fn method_has_body(m: &Method) -> bool {
    *m == Method::POST || *m == Method::PUT || *m == Method::PATCH
}

/// Relays a streamed upload, chunk-encoded when its length is unknown.
async fn send_stream(
    conn: &mut Conn,
    mut body: RequestBody,
    chunked: bool,
) -> Result<(), SendError> {
    use http_body_util::BodyExt;
    let io_err = |e: std::io::Error| SendError::Io(e.to_string());
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if e.is::<crate::body::BodyTooLarge>() {
                SendError::BodyTooLarge
            } else {
                SendError::Io(format!("client upload failed: {e}"))
            }
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        if chunked {
            let mut size = Vec::with_capacity(18);
            wire::put_chunk_size(&mut size, data.len());
            conn.io.write_all(&size).await.map_err(io_err)?;
            conn.io.write_all(&data).await.map_err(io_err)?;
            conn.io.write_all(b"\r\n").await.map_err(io_err)?;
        } else {
            conn.io.write_all(&data).await.map_err(io_err)?;
        }
    }
    if chunked {
        conn.io.write_all(b"0\r\n\r\n").await.map_err(io_err)?;
    }
    Ok(())
}

/// A final response head and how its body is framed.
struct ResponseHead {
    status: StatusCode,
    headers: RawHeaders,
    framing: Framing,
    /// The connection may carry another request after this response.
    reusable: bool,
}

/// What [`parse_head`] found in the buffer.
enum Parsed {
    Partial,
    /// A 1xx interim response (100 Continue, 103 Early Hints), consumed and skipped.
    Interim,
    Final(ResponseHead),
}

/// Reads the final response head, skipping interim ones.
async fn read_head(conn: &mut Conn, method: &Method) -> std::io::Result<ResponseHead> {
    loop {
        if !conn.buf.is_empty() {
            match parse_head(&mut conn.buf, method)? {
                Parsed::Final(head) => return Ok(head),
                Parsed::Interim => continue,
                Parsed::Partial => {}
            }
        }
        if conn.buf.len() >= MAX_HEAD {
            return Err(std::io::Error::other("upstream response head too large"));
        }
        conn.buf.reserve(READ_CHUNK);
        let n = std::future::poll_fn(|cx| {
            tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf)
        })
        .await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "upstream closed the connection before a response",
            ));
        }
    }
}

/// Parses one head from the front of `buf`, consuming it when complete.
fn parse_head(buf: &mut BytesMut, method: &Method) -> std::io::Result<Parsed> {
    // Fields are recorded as offsets from the head's first byte while it is parsed,
    // and the framing fields read then: one pass. The head is copied out only once it
    // is whole (the read buffer is the connection's, reused for its next response).
    let mut fields = RawFields::new(buf, 8);
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut close = false;
    let mut framing_error = None;
    let parsed = parse::response(buf, MAX_HEADERS, |name, value| {
        match fields.push(name, value) {
            Known::ContentLength => {
                let words = [
                    "invalid upstream content-length",
                    "conflicting upstream content-length",
                ];
                if let Err(e) = wire::add_length(&mut content_length, value, words) {
                    framing_error.get_or_insert(e);
                }
            }
            Known::TransferEncoding => {
                chunked = value
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                if !chunked {
                    close = true;
                }
            }
            Known::Connection if wire::has_token(value, b"close") => {
                close = true;
            }
            _ => {}
        }
    });
    let (line, len) = match parsed {
        Ok(parse::Status::Complete(done)) => done,
        Ok(parse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => {
            return Err(std::io::Error::other(format!(
                "invalid upstream response head: {e}"
            )))
        }
    };
    close |= line.minor == 0;
    let code = line.code;
    let status = StatusCode::from_u16(code)
        .map_err(|_| std::io::Error::other("invalid upstream status code"))?;
    if (100..200).contains(&code) && code != 101 {
        buf.advance(len);
        return Ok(Parsed::Interim);
    }
    if let Some(what) = framing_error {
        return Err(std::io::Error::other(what));
    }
    let headers = fields.into_headers(Bytes::copy_from_slice(&buf[..len]));
    buf.advance(len);
    let framing = if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Done
    } else if chunked {
        // Transfer-encoding wins over content-length (RFC 9112 6.3). The length is
        // not relayed with the body: the server frames it (`RelayedHeaders`).
        Framing::chunked()
    } else if let Some(n) = content_length {
        Framing::Length(n)
    } else {
        close = true;
        Framing::UntilClose
    };
    Ok(Parsed::Final(ResponseHead {
        status,
        headers,
        framing,
        reusable: !close,
    }))
}

/// An upstream HTTP/1.1 response body. Owns the connection while it is read.
pub struct H1Body {
    conn: Option<Conn>,
    pool: Weak<Pool>,
    framing: Framing,
    reusable: bool,
}

impl H1Body {
    /// When the body is complete, the connection goes back to the pool (if it can be
    /// reused and nothing unexpected is left in its buffer) or is closed.
    fn finish_if_done(&mut self) {
        if !matches!(self.framing, Framing::Done) {
            return;
        }
        if let Some(conn) = self.conn.take() {
            if self.reusable && conn.buf.is_empty() {
                if let Some(pool) = self.pool.upgrade() {
                    pool.put(conn);
                }
            }
        }
    }

    /// Takes the next piece of body out of the buffer, if the buffer holds one.
    fn decode(&mut self) -> std::io::Result<Option<Bytes>> {
        let conn = self.conn.as_mut().expect("connection while reading");
        wire::decode(&mut self.framing, &mut conn.buf)
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if this.conn.is_none() {
                return Poll::Ready(None);
            }
            match this.decode() {
                Ok(Some(data)) => {
                    this.finish_if_done();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(None) if matches!(this.framing, Framing::Done) => {
                    this.finish_if_done();
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
            let conn = this.conn.as_mut().expect("connection while reading");
            conn.buf.reserve(READ_CHUNK);
            let read = tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf);
            let n = match ready!(read) {
                Ok(n) => n,
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            };
            if n == 0 {
                this.conn = None;
                if matches!(this.framing, Framing::UntilClose) {
                    this.framing = Framing::Done;
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "upstream closed the connection mid-body",
                )))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// The fields of a complete response head at the front of `buf`, for other modules'
/// tests.
#[cfg(test)]
pub(crate) fn head_fields(raw: &[u8], method: &Method) -> crate::head::HeaderFields {
    let Ok(Parsed::Final(h)) = parse_head(&mut BytesMut::from(raw), method) else {
        panic!("a final head")
    };
    crate::head::HeaderFields::Raw(h.headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::HeaderFields;

    fn head(raw: &[u8], method: Method) -> (StatusCode, HeaderFields, bool, Framing, usize) {
        let mut buf = BytesMut::from(raw);
        let Parsed::Final(h) = parse_head(&mut buf, &method).unwrap() else {
            panic!("a final head")
        };
        let fields = HeaderFields::Raw(h.headers);
        (h.status, fields, h.reusable, h.framing, buf.len())
    }

    #[test]
    fn heads_decide_framing_and_reuse() {
        let (s, h, reuse, f, left) = head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: b\r\n\r\nhello",
            Method::POST,
        );
        assert_eq!(s, 200);
        assert_eq!(
            h.get(&http::HeaderName::from_static("x-a")),
            Some(&b"b"[..])
        );
        assert!(reuse);
        assert!(matches!(f, Framing::Length(5)));
        assert_eq!(left, 5);

        let (_, h, reuse, f, _) = head(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 9\r\n\r\n",
            Method::POST,
        );
        assert_eq!(f, Framing::chunked());
        // Which of its fields are relayed is forward's test
        // (`forward::tests::framing_fields_are_not_relayed_with_a_body`).
        drop(h);
        assert!(reuse);

        let (_, _, reuse, f, _) = head(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            Method::GET,
        );
        assert!(!reuse);
        assert!(matches!(f, Framing::Length(0)));

        let (_, _, reuse, f, _) = head(b"HTTP/1.1 200 OK\r\n\r\n", Method::GET);
        assert!(!reuse);
        assert!(matches!(f, Framing::UntilClose));

        let (_, _, _, f, _) = head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n",
            Method::HEAD,
        );
        assert!(matches!(f, Framing::Done));

        let mut interim =
            BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"[..]);
        assert!(matches!(
            parse_head(&mut interim, &Method::POST).unwrap(),
            Parsed::Interim
        ));
        assert!(matches!(
            parse_head(&mut interim, &Method::POST).unwrap(),
            Parsed::Final(_)
        ));

        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-le"[..]);
        assert!(matches!(
            parse_head(&mut partial, &Method::GET).unwrap(),
            Parsed::Partial
        ));
        let mut bad = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n"[..]);
        assert!(parse_head(&mut bad, &Method::GET).is_err());
        let mut two = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"[..],
        );
        assert!(parse_head(&mut two, &Method::GET).is_err());
    }
}
