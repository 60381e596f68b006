//! Accept loop and per-connection serving, including aborting a connection with a TCP RST.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::{service, State};

/// Lets a request handler abort the connection it arrived on.
#[derive(Default)]
pub(crate) struct ConnCtl {
    aborted: AtomicBool,
    notify: Notify,
}

impl ConnCtl {
    /// Drops the connection with an RST: the pending response, if any, is never sent.
    pub(crate) fn abort(&self) {
        self.aborted.store(true, Ordering::SeqCst);
        // notify_one keeps a permit, so the abort is not lost if the serving task is busy.
        self.notify.notify_one();
    }
}

/// The accepted socket. hyper owns it, so the RST is arranged here: when the connection is
/// dropped after an abort, zero linger makes the kernel send RST instead of FIN — that is
/// what a crashed or cut-off upstream looks like to a client.
struct AbortableIo {
    inner: TcpStream,
    ctl: Arc<ConnCtl>,
}

impl Drop for AbortableIo {
    fn drop(&mut self) {
        if self.ctl.aborted.load(Ordering::SeqCst) {
            let _ = self.inner.set_zero_linger();
        }
    }
}

impl AsyncRead for AbortableIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for AbortableIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

fn builder(h2_max_streams: u32) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    // Advertised to clients, as a real server does; the gateway must open more
    // connections rather than queue streams past it.
    builder.http2().max_concurrent_streams(h2_max_streams);
    builder
}

/// Serves connections until the task is aborted; connection tasks live in a `JoinSet`, so
/// aborting this task also tears down every open connection.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    h2_max_streams: u32,
    state: Arc<State>,
) {
    let builder = Arc::new(builder(h2_max_streams));
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    state.connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    // SSE frames are small; Nagle would hold them back and blur pacing.
                    let _ = stream.set_nodelay(true);
                    conns.spawn(serve(stream, tls.clone(), builder.clone(), state.clone()));
                }
                Err(e) => {
                    // Typically EMFILE under load: back off briefly instead of spinning.
                    tracing::debug!(error = %e, "mock accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    builder: Arc<Builder<TokioExecutor>>,
    state: Arc<State>,
) {
    let ctl = Arc::new(ConnCtl::default());
    let io = AbortableIo {
        inner: stream,
        ctl: ctl.clone(),
    };
    let svc_ctl = ctl.clone();
    let svc = service_fn(move |req| service::handle(state.clone(), svc_ctl.clone(), req));
    let conn = async {
        let result = match tls {
            None => builder.serve_connection(TokioIo::new(io), svc).await,
            Some(acceptor) => {
                let handshake =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(io)).await;
                match handshake {
                    Ok(Ok(tls)) => builder.serve_connection(TokioIo::new(tls), svc).await,
                    Ok(Err(e)) => Err(e.into()),
                    Err(_) => Err("TLS handshake timed out".into()),
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "mock connection ended with error");
        }
    };
    tokio::select! {
        () = conn => {}
        () = ctl.notify.notified() => {}
    }
}
