//! One HTTP/1.1 response written to a client: the status line, the map's fields,
//! the fields that travel beside the body ([`super::HeadFields`]), framing, `date`
//! and `connection`; then the body, in the same write when it is ready and piece by
//! piece (flushed as it comes) when it streams.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::SystemTime;

use bytes::Bytes;
use http::{header, StatusCode};
use http_body::Body;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::framing as wire;
use super::server::Conn;
use super::{HeadFields, Reply};

/// Response pieces larger than this are written as they are rather than copied into
/// the output buffer; the buffer is written out when it grows past it.
const COPY_LIMIT: usize = 16 * 1024;
/// How the response body is delimited on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Out {
    None,
    Length(u64),
    Chunked,
    /// HTTP/1.0 client and no known length: the body ends when the connection does.
    Close,
}

/// How a response's body is framed, from [`write_head`] to [`write_body`].
pub(super) struct BodyOut(Out);

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
pub(super) async fn write_response<
    IO: AsyncWrite + Unpin,
    B: Body<Data = Bytes> + Unpin + Default,
    X: HeadFields + Default,
>(
    conn: &mut Conn<IO>,
    mut reply: Reply<B, X>,
    is_head: bool,
    http10: bool,
    keep_alive: &mut bool,
) -> io::Result<()> {
    let framing = write_head(&mut conn.out, &reply, is_head, http10, keep_alive);
    let body = take_body(&mut reply);
    write_body(conn, body, framing).await
}

/// Takes the body out of a reply whose head is written, and lets the head's parts go
/// where they lie: a stream should not hold its head's bytes while it runs. Moved to
/// be dropped, the reply was copied whole once more.
pub(super) fn take_body<B: Default, X: Default>(reply: &mut Reply<B, X>) -> B {
    reply.fields = X::default();
    *reply.response.headers_mut() = http::HeaderMap::new();
    std::mem::take(reply.response.body_mut())
}

/// A response's head, into `out` (cleared first); returns how the body is framed, for
/// [`write_body`]. Not async, and the reply only read ([`take_body`] then): given the
/// reply itself, the call copied its several hundred bytes, and taking the body out
/// of it copied the response again.
pub(super) fn write_head<B: Body<Data = Bytes> + Unpin, X: HeadFields>(
    out: &mut Vec<u8>,
    reply: &Reply<B, X>,
    is_head: bool,
    http10: bool,
    keep_alive: &mut bool,
) -> BodyOut {
    // Read in place: taken apart into locals, its pieces were copied again.
    let headers = reply.response.headers();
    let status = reply.response.status();
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
    let framing = if bodiless {
        Out::None
    } else {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| wire::parse_length(v.as_bytes()));
        match reply.response.body().size_hint().exact().or(declared) {
            Some(n) => Out::Length(n),
            None if http10 => Out::Close,
            None => Out::Chunked,
        }
    };
    if framing == Out::Close {
        *keep_alive = false;
    }
    for (name, value) in headers {
        if name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
            || (name == header::CONTENT_LENGTH && !bodiless)
        {
            continue;
        }
        wire::put_header(out, name, value);
    }
    let upstream_date = reply.fields.write_lines(out, bodiless, headers);
    match framing {
        Out::Length(n) => wire::put_length(out, n),
        Out::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Out::None | Out::Close => {}
    }
    if !upstream_date && !headers.contains_key(header::DATE) {
        put_date(out);
    }
    if !*keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    BodyOut(framing)
}

/// A response's body after [`write_head`], then the whole output written. An error
/// when the connection cannot carry another request (see [`write_response`]).
pub(super) async fn write_body<IO: AsyncWrite + Unpin, B: Body<Data = Bytes> + Unpin>(
    conn: &mut Conn<IO>,
    mut body: B,
    framing: BodyOut,
) -> io::Result<()> {
    let mut framing = framing.0;
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
