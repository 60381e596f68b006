//! A running node: binds the listeners, wires the shared state, and drains on request.
//! `run` adds the process concerns: SIGHUP reloads TLS, SIGTERM/SIGINT drain and exit.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::accept::{self, TlsState};
use crate::account::Metrics;
use crate::config::{Config, KeyMode};
use crate::error::{Error, Result};
use crate::forward::Upstream;
use crate::health::Health;
use crate::proxy::{self, RequestIds, Shared, Snapshot};

/// A started node. Dropping it does not stop it; call [`Node::drain`].
pub struct Node {
    shared: Arc<Shared>,
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
    tls: Option<Arc<TlsState>>,
    stop_public: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    public_task: JoinHandle<usize>,
    admin_task: JoinHandle<usize>,
}

impl Node {
    /// Binds both listeners and starts serving. Must run inside a Tokio runtime.
    pub async fn start(config: Config) -> Result<Node> {
        let config = Arc::new(config);
        let metrics = Metrics::new();
        let tls = match &config.tls {
            Some(t) => Some(Arc::new(TlsState::load(t)?)),
            None => None,
        };
        let upstream = Upstream::new(&config.upstream, &metrics)?;
        let limiter = Arc::new(crate::limits::Limiter::new(&config, &metrics.registry)?);
        limiter.connect().await;
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(Snapshot::new(&config)),
            config: config.clone(),
            upstream,
            metrics: metrics.clone(),
            health: Arc::new(Health::new()),
            request_ids: RequestIds::new(),
            limiter: limiter.clone(),
        });

        let public = bind(config.public_listen, "listen.public").await?;
        let admin = bind(config.admin_listen, "listen.admin").await?;
        let public_addr = public.local_addr().map_err(|e| Error::config("public listener").with_detail(e))?;
        let admin_addr = admin.local_addr().map_err(|e| Error::config("admin listener").with_detail(e))?;

        let (stop_public, stop_public_rx) = watch::channel(false);
        let (stop_admin, stop_admin_rx) = watch::channel(false);
        let builder = Arc::new(accept::http_builder(&config.limits));

        let s = shared.clone();
        let public_task = tokio::spawn(accept::serve(
            public,
            tls.clone(),
            builder.clone(),
            config.limits.clone(),
            metrics.clone(),
            stop_public_rx,
            move |req, peer| proxy::handle(s.clone(), req, peer),
        ));
        let s = shared.clone();
        let mut admin_limits = config.limits.clone();
        admin_limits.max_connections = 256;
        admin_limits.drain_timeout = std::time::Duration::from_secs(1);
        let admin_task = tokio::spawn(accept::serve(
            admin,
            None,
            builder,
            admin_limits,
            metrics,
            stop_admin_rx,
            move |req, _peer| {
                let s = s.clone();
                async move { crate::admin::handle(&s, req) }
            },
        ));

        let mode = match config.key_mode() {
            KeyMode::Managed => "managed",
            KeyMode::Anonymous => "anonymous",
            KeyMode::Passthrough => "passthrough",
        };
        tracing::info!(
            public = %public_addr,
            admin = %admin_addr,
            tls = tls.is_some(),
            upstream = %config.upstream.target.authority,
            mode,
            upstream_keys = config.upstream.keys.len(),
            client_keys = config.auth.client_keys.len(),
            limiter = match limiter.mode() {
                None => "in process",
                Some(crate::config::LimitMode::Exact) => "redis exact",
                Some(crate::config::LimitMode::Leased) => "redis leased",
            },
            "strait-node listening"
        );
        Ok(Node { shared, public_addr, admin_addr, tls, stop_public, stop_admin, public_task, admin_task })
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Re-reads the TLS certificate and key; open connections are not touched.
    pub fn reload_tls(&self) -> Result<()> {
        match &self.tls {
            Some(t) => t.reload(),
            None => Ok(()),
        }
    }

    /// Graceful stop: `/readyz` turns to fail, the public listener stops accepting,
    /// in-flight requests and streams get up to `limits.drain_timeout`, then the admin
    /// listener closes. Returns the number of connections cut at the deadline.
    pub async fn drain(self) -> usize {
        self.shared.health.draining.store(true, Ordering::Relaxed);
        self.shared.metrics.draining.set(1);
        tracing::info!("draining: no new connections; waiting for in-flight requests");
        let _ = self.stop_public.send(true);
        let cut = self.public_task.await.unwrap_or(0);
        let _ = self.stop_admin.send(true);
        let _ = self.admin_task.await;
        tracing::info!(cut, "drained");
        cut
    }
}

async fn bind(addr: SocketAddr, field: &str) -> Result<TcpListener> {
    // std's listener gives a large backlog; tokio's bind uses 1024 as well.
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::config(format!("{field}: cannot listen on {addr}: {e}")))
}

/// Runs a node until SIGTERM or SIGINT, then drains. SIGHUP reloads TLS certificates.
pub async fn run(config: Config) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| Error::config("signals").with_detail(e))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Error::config("signals").with_detail(e))?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| Error::config("signals").with_detail(e))?;
    let node = Node::start(config).await?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => match node.reload_tls() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                Err(e) => tracing::error!("SIGHUP: TLS reload failed, keeping the old certificate: {e}"),
            },
        }
    }
    node.drain().await;
    Ok(())
}
