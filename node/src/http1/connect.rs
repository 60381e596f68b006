//! Dialing the upstream: resolve, connect with a timeout (each address in turn), TCP
//! options, TLS with ALPN (`h2`, then `http/1.1`), and a count of open connections for
//! the `strait_upstream_connections` gauge.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::IntGauge;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::dns::HickoryDns;

/// Keep-alive probes on idle upstream connections, so dead peers are noticed.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);

/// One upstream byte stream.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Io {
    /// Whether an idle connection still looks usable: nothing to read (a pooled HTTP/1.1
    /// connection has no business receiving bytes) and not closed by the peer.
    pub fn idle_and_open(&self) -> bool {
        let tcp = match self {
            Io::Plain(t) => t,
            Io::Tls(t) => t.get_ref().0,
        };
        let mut probe = [0u8; 1];
        matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Whether TLS negotiated HTTP/2.
    pub fn is_h2(&self) -> bool {
        match self {
            Io::Plain(_) => false,
            Io::Tls(t) => t.get_ref().1.alpn_protocol() == Some(b"h2"),
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(t) => super::sock::poll_recv(t, cx, buf),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(t) => super::sock::poll_send(t, cx, buf),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(t) => Pin::new(t).poll_write_vectored(cx, bufs),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(t) => t.is_write_vectored(),
            Io::Tls(t) => t.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(t) => Pin::new(t).poll_flush(cx),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(t) => Pin::new(t).poll_shutdown(cx),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Counts one open upstream connection while it lives.
pub struct Counted(IntGauge);

impl Counted {
    pub fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        Counted(gauge.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Opens connections to one upstream host.
pub struct Dialer {
    dns: HickoryDns,
    host: String,
    port: u16,
    /// `None` for plain HTTP.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
}

impl Dialer {
    pub fn new(
        dns: HickoryDns,
        host: &str,
        port: u16,
        tls: Option<Arc<rustls::ClientConfig>>,
        connect_timeout: Duration,
    ) -> std::io::Result<Self> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let tls = match tls {
            None => None,
            Some(cfg) => {
                let name = ServerName::try_from(bare.to_string())
                    .map_err(|_| std::io::Error::other("upstream host is not a valid TLS name"))?;
                Some((TlsConnector::from(cfg), name))
            }
        };
        Ok(Dialer {
            dns,
            host: bare.to_string(),
            port,
            tls,
            connect_timeout,
        })
    }

    /// Whether connections are HTTPS (and may therefore turn out to be HTTP/2).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Resolves and connects (each address in turn, within the connect timeout as a
    /// whole), then does TLS when the upstream is HTTPS.
    pub async fn dial(&self) -> std::io::Result<Io> {
        let attempt = async {
            let addrs = self.dns.resolve(&self.host).await?;
            let mut last = None;
            for ip in addrs {
                match TcpStream::connect(SocketAddr::new(ip, self.port)).await {
                    Ok(tcp) => return Ok(tcp),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| std::io::Error::other("no upstream addresses")))
        };
        let tcp = tokio::time::timeout(self.connect_timeout, attempt)
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        tcp.set_nodelay(true)?;
        let _ = socket2::SockRef::from(&tcp)
            .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE));
        match &self.tls {
            None => Ok(Io::Plain(tcp)),
            Some((connector, name)) => {
                let handshake = connector.connect(name.clone(), tcp);
                let tls = tokio::time::timeout(self.connect_timeout, handshake)
                    .await
                    .map_err(|_| {
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
                    })??;
                Ok(Io::Tls(Box::new(tls)))
            }
        }
    }
}
