//! Phase 1, accept: listeners, TLS, connection limits and HTTP/1.1 + HTTP/2 serving,
//! with graceful drain. Every connection's requests go to the service it is given.
//!
//! Layout: `tls` (certificates, ALPN, reload); this file runs the accept loops, hands
//! HTTP/1.1 connections to the protocol wing's server ([`crate::http1::server`]) and
//! HTTP/2 connections (by ALPN, or by the prior-knowledge preface on plain TCP) to
//! hyper.

pub mod loops;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Request, Response};
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::body::{BoxError, ClientBody, UploadLimits, UploadWatch};
use crate::config::Limits;
use crate::head::{ClientRequest, HeaderFields};
use crate::http1::server as h1;
use crate::http1::{HeadFields, Reply};
use crate::metrics::Metrics;

pub use tls::TlsState;

/// The size at which hyper itself refuses request headers: twice the configured limit.
fn hard_header_cap(limits: &Limits) -> usize {
    limits.max_header_bytes.saturating_mul(2).max(16 * 1024)
}

/// The HTTP server settings shared by every connection of a listener.
pub struct HttpSettings {
    h1: h1::Settings,
    h2: http2::Builder<TokioExecutor>,
}

/// Builds the HTTP server settings shared by every connection of a listener.
pub fn http_settings(limits: &Limits, metrics: &Metrics) -> HttpSettings {
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(hard_header_cap(limits)).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    HttpSettings {
        h1: h1::Settings {
            // The configured limit is enforced per request in `proxy::handle`, where
            // the answer carries a request id; the server's own cap stops only heads
            // far over it, bounding the memory a connection can make us hold.
            max_head: hard_header_cap(limits),
            header_read_timeout: limits.header_read_timeout,
            max_body: limits.max_body_bytes,
            upload: UploadLimits {
                read_timeout: limits.body_read_timeout,
                min_rate: limits.min_upload_rate,
            },
            // Counted with the handler's own errors.
            refused: metrics.gateway_errors.clone(),
            body_timeouts: metrics.body_timeouts.clone(),
        },
        h2,
    }
}

/// What every accept loop of a listener shares.
#[derive(Clone)]
pub struct Listening {
    pub tls: Option<Arc<TlsState>>,
    pub http: Arc<HttpSettings>,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    /// Set to true to stop accepting and drain.
    pub stop: watch::Receiver<bool>,
    /// `limits.max_connections` slots, shared by the listener's loops.
    pub slots: Arc<Semaphore>,
    /// Counts this loop's connections (`accept::loops` sets it per loop).
    pub accepted: Option<IntCounter>,
}

impl Listening {
    pub fn new(
        tls: Option<Arc<TlsState>>,
        http: Arc<HttpSettings>,
        limits: Limits,
        metrics: Arc<Metrics>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        Listening {
            tls,
            http,
            limits,
            metrics,
            stop,
            slots,
            accepted: None,
        }
    }
}

/// What a service's response body must be to go out over HTTP/1.1 and HTTP/2: bytes,
/// made from bytes for the server's own answers, and empty by default (what the
/// HTTP/1.1 server leaves in a reply whose body it has taken).
pub trait ServedBody:
    http_body::Body<Data = Bytes, Error = BoxError> + From<Bytes> + Default + Send + Unpin + 'static
{
}

impl<T> ServedBody for T where
    T: http_body::Body<Data = Bytes, Error = BoxError>
        + From<Bytes>
        + Default
        + Send
        + Unpin
        + 'static
{
}

/// One accept loop: accepts, waits for a connection slot, optionally does TLS, and
/// serves HTTP. When `stop` fires it stops accepting, lets open connections finish
/// (idle keep-alive connections are closed, in-flight requests and streams complete)
/// for up to `limits.drain_timeout`, and returns how many of its own were still open.
pub async fn serve<S, F, B, X>(listener: TcpListener, on: Listening, service: S) -> usize
where
    S: Fn(ClientRequest, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Reply<B, X>> + Send + 'static,
    B: ServedBody,
    X: HeadFields + Default + Send + 'static,
{
    let Listening {
        tls,
        http,
        limits,
        metrics,
        mut stop,
        slots,
        accepted,
    } = on;
    // This loop's own connections, for its drain; `slots` counts every loop's. Each
    // of ours holds one of `slots` too, so a permit here is always free at once.
    let mine = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        // With every slot taken the connection waits here, unserved, and this loop
        // accepts no other: the excess stays in the kernel backlog, bar one per loop.
        // (Taking the slot first would hold it for whichever loop's socket the next
        // client lands on, while a client queued on another loop's waits.)
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.changed() => break,
        };
        let Ok(own) = mine.clone().acquire_owned().await else {
            break;
        };
        if let Some(c) = &accepted {
            c.inc();
        }
        let _ = tcp.set_nodelay(true);
        let tcp = crate::http1::sock::Tcp(tcp);
        let http = http.clone();
        let tls = tls.clone();
        let service = service.clone();
        let metrics = metrics.clone();
        let handshake_timeout = limits.header_read_timeout;
        let watcher = graceful.watcher();
        let stop = stop.clone();
        // Boxed: a connection's future is some 16 KB, and unboxed the task would copy
        // it whole when spawned and again as it finishes.
        tokio::spawn(Box::pin(async move {
            let _permits = (permit, own);
            metrics.downstream_connections.inc();
            match tls {
                None => {
                    if let h1::Ended::Http2(tcp, read) =
                        h1::serve(tcp, &http.h1, peer, stop, &service).await
                    {
                        let io = Rewind { read, inner: tcp };
                        serve_h2(&http, io, peer, watcher, service).await;
                    }
                }
                Some(tls) => {
                    match tokio::time::timeout(handshake_timeout, tls.acceptor().accept(tcp)).await
                    {
                        Ok(Ok(stream)) => {
                            // A certificate is there only if the verifier accepted it.
                            let verified = stream.get_ref().1.peer_certificates().is_some();
                            let service = move |mut req: ClientRequest, peer| {
                                req.client_cert = verified;
                                service(req, peer)
                            };
                            if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                                serve_h2(&http, stream, peer, watcher, service).await;
                            } else if let h1::Ended::Http2(stream, read) =
                                h1::serve(stream, &http.h1, peer, stop, &service).await
                            {
                                let io = Rewind {
                                    read,
                                    inner: stream,
                                };
                                serve_h2(&http, io, peer, watcher, service).await;
                            }
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            metrics.downstream_connections.dec();
        }));
    }
    drop(listener);
    let open = graceful.count();
    if open > 0 {
        tracing::info!(open, "draining connections");
    }
    // HTTP/2 connections are told to finish by `graceful`; HTTP/1.1 ones saw `stop`.
    // Every connection holds one of `mine`, so holding all of them means all have closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let drained = async {
        graceful.shutdown().await;
        let _ = mine.acquire_many(all).await;
    };
    match tokio::time::timeout(limits.drain_timeout, drained).await {
        Ok(()) => 0,
        Err(_) => {
            let left = limits.max_connections - mine.available_permits();
            tracing::warn!(left, "drain deadline passed with connections still open");
            left
        }
    }
}

/// Serves an HTTP/2 connection with hyper, watched for graceful shutdown.
async fn serve_h2<IO, S, F, B, X>(
    http: &HttpSettings,
    io: IO,
    peer: SocketAddr,
    watcher: Watcher,
    service: S,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Fn(ClientRequest, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Reply<B, X>> + Send + 'static,
    B: ServedBody,
    X: HeadFields + Default + Send + 'static,
{
    let h1 = &http.h1;
    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let (parts, body) = req.into_parts();
        let (watch, stalled) = UploadWatch::new(h1.upload);
        let fut = service(
            ClientRequest {
                method: parts.method,
                uri: parts.uri,
                version: parts.version,
                headers: HeaderFields::Map(parts.headers),
                body: ClientBody::Hyper(body, watch),
                client_cert: false,
            },
            peer,
        );
        let (upload, refused, timeouts) = (h1.upload, h1.refused.clone(), h1.body_timeouts.clone());
        async move {
            // A body given up before the answer: the handler (and any upstream attempt
            // relaying the upload) is dropped and the client gets a 408; hyper resets
            // the stream's unread rest.
            let reply = tokio::select! {
                biased;
                Ok(stall) = stalled => {
                    timeouts.with_label_values(&[stall.label()]).inc();
                    let err = stall.error(&upload);
                    refused.with_label_values(&[err.anthropic_type()]).inc();
                    return Ok::<_, Infallible>(err.bare_response::<B>());
                }
                reply = fut => reply,
            };
            let Reply { response, fields } = reply;
            // The fields the HTTP/1.1 writer writes into the head go in the map here.
            let (mut parts, body) = response.into_parts();
            fields.insert_into(&mut parts.headers);
            let resp = Response::from_parts(parts, body);
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = http.h2.serve_connection(TokioIo::new(io), svc);
    let _ = watcher.watch(conn).await;
}

/// A connection whose first bytes were read already (to tell HTTP/2 from HTTP/1.1):
/// they are read again before the rest.
struct Rewind<T> {
    read: Bytes,
    inner: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..n]);
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
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
