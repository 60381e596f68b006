//! Smart DNS: an authoritative server (hickory-server, UDP and TCP) for the cluster's
//! name, answering with the addresses of ready nodes from their etcd records, nearest
//! region first (subnet map, EDNS Client Subnet), failing open when none is ready.
//! [`select`] chooses the nodes; [`answer`] turns a query into a reply; this file
//! keeps the node view current, binds the sockets and counts what happened.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::DnsConfig;
use crate::error::{Error, Result};
use crate::store::NodeDocs;

pub mod answer;
pub mod select;

use select::DnsNode;

/// The nodes as DNS last saw them, with the zone serial that changes with them.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub nodes: Vec<DnsNode>,
    /// SOA serial: Unix seconds of the last change, always increasing.
    pub serial: u32,
}

/// The coordinator's Prometheus registry (today it holds the DNS series only),
/// served at `GET /metrics` on the admin listener.
#[derive(Clone)]
pub struct DnsMetrics {
    pub registry: Registry,
    /// Answers by outcome: `answer`, `nodata`, `nxdomain`, `refused`, `formerr`, `notimp`.
    pub queries: IntCounterVec,
    /// Address answers given with every node because none was ready.
    pub fail_open: IntCounter,
    /// Nodes with a usable address in their record, and the ready ones among them.
    pub nodes: IntGauge,
    pub ready_nodes: IntGauge,
}

impl Default for DnsMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl DnsMetrics {
    pub fn new() -> DnsMetrics {
        let registry =
            Registry::new_custom(Some("strait_coordinator".into()), None).expect("valid prefix");
        let queries = IntCounterVec::new(
            Opts::new("dns_queries_total", "DNS queries answered, by outcome"),
            &["outcome"],
        )
        .expect("valid metric");
        let fail_open = IntCounter::new(
            "dns_fail_open_total",
            "DNS address answers that listed every node because none was ready",
        )
        .expect("valid metric");
        let nodes = IntGauge::new("dns_nodes", "Nodes with an IP address in their record")
            .expect("valid metric");
        let ready_nodes = IntGauge::new(
            "dns_ready_nodes",
            "Nodes DNS counts as ready (serving, readiness pass or warn)",
        )
        .expect("valid metric");
        for c in [
            Box::new(queries.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(fail_open.clone()),
            Box::new(nodes.clone()),
            Box::new(ready_nodes.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        DnsMetrics {
            registry,
            queries,
            fail_open,
            nodes,
            ready_nodes,
        }
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// `GET /metrics` (no token: counters only, nothing secret).
pub fn metrics_router(metrics: DnsMetrics) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    m.render(),
                )
            }
        }),
    )
}

/// A running DNS server. Stop it with [`DnsServer::shutdown`].
pub struct DnsServer {
    /// The bound address (the same port over UDP and TCP).
    pub addr: SocketAddr,
    server: Server<answer::Answerer>,
    follow: JoinHandle<()>,
}

/// Binds UDP and TCP on one port (the configured one, or a free one for port 0) and
/// answers from `docs` as it changes.
pub async fn start(
    config: DnsConfig,
    docs: watch::Receiver<Arc<NodeDocs>>,
    metrics: DnsMetrics,
) -> Result<DnsServer> {
    let (udp, tcp) = bind(config.listen).await?;
    let addr = udp
        .local_addr()
        .map_err(|e| Error::internal(e.to_string()))?;
    let (snap_tx, snap_rx) = watch::channel(Arc::new(Snapshot::default()));
    let follow = tokio::spawn(follow(docs, snap_tx, metrics.clone()));
    let handler = answer::Answerer::new(&config, snap_rx, metrics)?;
    let mut server = Server::new(handler);
    server.register_socket(udp);
    // Idle TCP connections close after 10 s; 64 replies may queue per connection.
    server.register_listener(tcp, Duration::from_secs(10), 64);
    tracing::info!(%addr, name = %config.name, ttl = ?config.ttl, "dns server started");
    Ok(DnsServer {
        addr,
        server,
        follow,
    })
}

impl DnsServer {
    pub async fn shutdown(mut self) {
        self.follow.abort();
        let _ =
            tokio::time::timeout(Duration::from_secs(5), self.server.shutdown_gracefully()).await;
    }
}

async fn bind(listen: SocketAddr) -> Result<(UdpSocket, TcpListener)> {
    let cannot = |e: std::io::Error| Error::config(format!("dns: cannot listen on {listen}: {e}"));
    if listen.port() != 0 {
        let udp = UdpSocket::bind(listen).await.map_err(cannot)?;
        let tcp = TcpListener::bind(listen).await.map_err(cannot)?;
        return Ok((udp, tcp));
    }
    // Port 0: the UDP port may be taken over TCP; try a few.
    let mut last = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind(listen).await.map_err(cannot)?;
        let mut at = listen;
        at.set_port(udp.local_addr().map_err(cannot)?.port());
        match TcpListener::bind(at).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(cannot(
        last.unwrap_or_else(|| std::io::Error::other("no port")),
    ))
}

/// Re-reads the node view on every change of the records.
async fn follow(
    mut docs: watch::Receiver<Arc<NodeDocs>>,
    snap: watch::Sender<Arc<Snapshot>>,
    metrics: DnsMetrics,
) {
    let mut serial = 0u32;
    loop {
        let current = docs.borrow_and_update().clone();
        let nodes = select::parse_nodes(&current);
        let ready = nodes.iter().filter(|n| n.ready).count();
        metrics.nodes.set(nodes.len() as i64);
        metrics.ready_nodes.set(ready as i64);
        let changed = snap.borrow().nodes != nodes;
        if changed || serial == 0 {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as u32)
                .unwrap_or(1);
            serial = now.max(serial.wrapping_add(1));
            if changed {
                tracing::info!(nodes = nodes.len(), ready, "dns: node view changed");
            }
            snap.send_replace(Arc::new(Snapshot { nodes, serial }));
        }
        if docs.changed().await.is_err() {
            return;
        }
    }
}
