//! Phase 1, accept: listeners, TLS, connection limits and HTTP/1.1 + HTTP/2 serving,
//! with graceful drain. Every connection's requests go to the service it is given.
//!
//! Layout: `tls` (certificates, ALPN, reload); this file runs the accept loops.

pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::account::Metrics;
use crate::body::ProxyBody;
use crate::config::Limits;

pub use tls::TlsState;

/// The size at which hyper itself refuses request headers: twice the configured limit.
fn hard_header_cap(limits: &Limits) -> usize {
    limits.max_header_bytes.saturating_mul(2).max(16 * 1024)
}

/// Builds the HTTP server settings shared by every connection of a listener.
pub fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // The configured limit is enforced per request in `proxy::handle`, where the
        // answer can be Anthropic-shaped; hyper's own (plain 431) stops only requests
        // far over it, bounding the memory a connection can make us hold.
        .max_buf_size(hard_header_cap(limits))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(hard_header_cap(limits)).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    b
}

/// One accept loop: waits for a connection slot, accepts, optionally does TLS, and
/// serves HTTP. When `stop` fires it stops accepting, lets open connections finish
/// (idle keep-alive connections are closed, in-flight requests and streams complete)
/// for up to `limits.drain_timeout`, and returns how many were still open.
#[allow(clippy::too_many_arguments)]
pub async fn serve<S, F>(
    listener: TcpListener,
    tls: Option<Arc<TlsState>>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: Limits,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
    service: S,
) -> usize
where
    S: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        // Waiting for a slot before accepting leaves excess clients in the kernel
        // backlog rather than accepting connections we cannot serve.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.changed() => break,
        };
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
        let _ = tcp.set_nodelay(true);
        let builder = builder.clone();
        let tls = tls.clone();
        let service = service.clone();
        let metrics = metrics.clone();
        let handshake_timeout = limits.header_read_timeout;
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            metrics.downstream_connections.inc();
            let svc = hyper::service::service_fn(move |req| {
                let fut = service(req, peer);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            match tls {
                None => {
                    let conn = builder.serve_connection(TokioIo::new(tcp), svc);
                    let _ = watcher.watch(conn.into_owned()).await;
                }
                Some(tls) => {
                    match tokio::time::timeout(handshake_timeout, tls.acceptor().accept(tcp)).await
                    {
                        Ok(Ok(stream)) => {
                            let conn = builder.serve_connection(TokioIo::new(stream), svc);
                            let _ = watcher.watch(conn.into_owned()).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            metrics.downstream_connections.dec();
        });
    }
    drop(listener);
    let open = graceful.count();
    if open > 0 {
        tracing::info!(open, "draining connections");
    }
    let watch_count = slots.clone();
    match tokio::time::timeout(limits.drain_timeout, graceful.shutdown()).await {
        Ok(()) => 0,
        Err(_) => {
            let left = limits.max_connections - watch_count.available_permits();
            tracing::warn!(left, "drain deadline passed with connections still open");
            left
        }
    }
}
