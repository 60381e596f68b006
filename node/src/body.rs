//! Request body types: the client's request body as the servers hand it over, and the
//! body sent upstream (buffered and replayable, or streamed under the size limit).
//! The response body belongs to the stream phase ([`crate::stream::ProxyBody`]).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client's request body as the listener hands it over.
pub enum ClientBody {
    /// Read whole by the HTTP/1.1 server before the request was handed over (small
    /// bodies with a declared length: no channel, no task hop).
    Full(Option<Bytes>),
    /// Streamed by the HTTP/1.1 server as it reads the connection; `left` is the
    /// declared length still to come, if there was one.
    Channel {
        rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
        left: Option<u64>,
    },
    /// An HTTP/2 request body, from hyper.
    Hyper(hyper::body::Incoming),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ClientBody::Channel { rx, left } => match rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(d))) => {
                    if let Some(l) = left {
                        *l = l.saturating_sub(d.len() as u64);
                    }
                    Poll::Ready(Some(Ok(Frame::data(d))))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            ClientBody::Hyper(inner) => Pin::new(inner)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|e| Box::new(e) as BoxError))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Full(d) => d.is_none(),
            ClientBody::Channel { .. } => false,
            ClientBody::Hyper(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            ClientBody::Full(None) => SizeHint::with_exact(0),
            ClientBody::Channel { left, .. } => match left {
                Some(n) => SizeHint::with_exact(*n),
                None => SizeHint::default(),
            },
            ClientBody::Hyper(inner) => inner.size_hint(),
        }
    }
}

/// A request body on its way upstream: buffered (replayable, so retries are possible)
/// or streamed from the client with the size limit enforced as it goes.
pub enum RequestBody {
    Full(Option<Bytes>),
    Stream {
        inner: ClientBody,
        seen: u64,
        limit: u64,
    },
}

/// The client sent more than `limits.max_body_bytes` on a streamed upload.
#[derive(Debug)]
pub struct BodyTooLarge;

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body exceeds the configured limit")
    }
}

impl std::error::Error for BodyTooLarge {}

impl RequestBody {
    /// Bytes held in memory: the body's length when buffered, 0 when streamed.
    pub fn buffered_len(&self) -> usize {
        match self {
            RequestBody::Full(Some(b)) => b.len(),
            _ => 0,
        }
    }

    /// A copy for another attempt, if this body can be replayed.
    pub fn try_clone(&self) -> Option<RequestBody> {
        match self {
            RequestBody::Full(b) => Some(RequestBody::Full(b.clone())),
            RequestBody::Stream { .. } => None,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            RequestBody::Stream { inner, seen, limit } => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(d) = frame.data_ref() {
                        *seen += d.len() as u64;
                        if *seen > *limit {
                            return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                        }
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Full(d) => d.is_none(),
            RequestBody::Stream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            RequestBody::Full(None) => SizeHint::with_exact(0),
            RequestBody::Stream { inner, .. } => inner.size_hint(),
        }
    }
}
