//! Phase 5b, relay: carry a request through a node of a peer region when the
//! direct path cannot (its circuit is open, or connecting to it failed before
//! anything was sent). The peer serves it as the original principal over its own
//! direct path; the response streams back unbuffered both ways.
//!
//! Layout: `sign` is the signed node-to-node channel (HMAC-SHA256 with the cluster
//! secret, timestamp window, nonce replay cache), used by both sides; `peers` our
//! round trip to each peer, the ranking and the "peer much faster" trigger; this
//! file is the sending side: one pooled HTTP/1.1 client per peer address, over TLS
//! when the peer's record says it listens with TLS (presenting this node's own
//! certificate: mTLS), else plain HTTP (fit for a private network only:
//! docs/failover.md), and the measuring loop.

mod peers;
mod sign;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, Method};
use http_body_util::BodyExt;
use prometheus::{GaugeVec, IntCounterVec, IntGauge, Opts};

use crate::account::RequestRecord;
use crate::body::RequestBody;
use crate::config::{Config, HealthChecks};
use crate::error::{Error, ErrorKind, Result};
use crate::forward::{Forwarded, UpstreamHeaders};
use crate::head::HeaderFields;
use crate::health::{ClusterStatus, UpstreamHealth};
use crate::http1::pool::{Client, Outgoing, PoolSettings, SendError};
use crate::http1::{connect, dns, OutgoingFields};
use crate::metrics::Metrics;
use crate::schema::NodeRecord;

pub use peers::{published_ttfb, Faster, PeerRtts};

pub use sign::{
    is_relayed, Channel, Signed, HOP, NONCE, PRINCIPAL, RELAYED_VIA, SIGNATURE, TS, WINDOW,
};

/// The relay's two sides on one node: signing and sending to peers, checking what
/// peers send. Present only when the node has a cluster secret.
pub struct Relays {
    channel: Channel,
    dns: dns::HickoryDns,
    /// One pooled client per peer address and scheme, made on first use. A short
    /// lock, taken only on relayed requests and measuring rounds.
    clients: Mutex<HashMap<(String, bool), Arc<Client>>>,
    /// For peers that listen with TLS: the cluster's CA (else the public roots) and,
    /// when this node has a certificate, that certificate as the client's (mTLS).
    tls: Arc<rustls::ClientConfig>,
    /// Relayed requests must come over TLS with a client certificate the listener
    /// verified (`[tls]` and `cluster.peer_ca_file` both set).
    require_client_cert: bool,
    /// Our round trips to the peers, for the ranking.
    pub rtts: PeerRtts,
    /// The "peer much faster" trigger; `None` when off (the default).
    pub faster: Option<Faster>,
    rtt_gauge: GaugeVec,
    faster_gauge: IntGauge,
    connect_timeout: Duration,
    pool: PoolSettings,
    connections: IntGauge,
    /// `sent` / `received` / `refused` relayed requests, and `failed` sends.
    pub counts: IntCounterVec,
}

impl Relays {
    /// `None` without a cluster secret: this node then neither relays nor accepts
    /// relayed requests. Must run inside the Tokio runtime (the resolver needs it).
    pub fn new(config: &Config, metrics: &Metrics) -> Result<Option<Self>> {
        let Some(secret) = &config.cluster_secret else {
            return Ok(None);
        };
        let connections = IntGauge::new(
            "relay_connections",
            "Open connections to peer nodes for relayed requests",
        )
        .expect("valid metric");
        let counts = IntCounterVec::new(
            Opts::new(
                "relay_requests_total",
                "Relayed requests: sent to a peer, received from one, refused (bad signature), failed to send",
            ),
            &["direction"],
        )
        .expect("valid metric");
        // Registered once per process; a second node in one test process keeps its own.
        let rtt_gauge = GaugeVec::new(
            Opts::new(
                "relay_peer_rtt_seconds",
                "Our round trip to each peer node we may relay through (moving average)",
            ),
            &["region", "node"],
        )
        .expect("valid metric");
        let faster_gauge = IntGauge::new(
            "relay_faster_peer",
            "1 while requests relay because a peer's path is much faster than the direct one",
        )
        .expect("valid metric");
        // Registered once per process; a second node in one test process keeps its own.
        let _ = metrics.registry.register(Box::new(connections.clone()));
        let _ = metrics.registry.register(Box::new(counts.clone()));
        let _ = metrics.registry.register(Box::new(rtt_gauge.clone()));
        let _ = metrics.registry.register(Box::new(faster_gauge.clone()));
        let dns = dns::HickoryDns::new(config.upstream.dns_ttl_cap)
            .map_err(|e| Error::config("cannot set up the DNS resolver").with_detail(e))?;
        if config.cluster.is_some() && config.tls.is_none() {
            tracing::warn!(
                "the public listener has no TLS: peers relay to this node over plain HTTP, \
                 fit for a private network, not for links that cross borders"
            );
        }
        let require_client_cert = config.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        Ok(Some(Relays {
            channel: Channel::new(secret.expose().as_bytes()),
            dns,
            clients: Mutex::new(HashMap::new()),
            tls: Arc::new(peer_tls(config)?),
            require_client_cert,
            rtts: PeerRtts::default(),
            faster: config.health.relay_when_faster.map(Faster::new),
            rtt_gauge,
            faster_gauge,
            connect_timeout: config.upstream.connect_timeout,
            pool: PoolSettings {
                max_idle: config.upstream.pool_max_idle_per_host,
                idle_timeout: config.upstream.pool_idle_timeout,
                event_loops: config.event_loops(),
            },
            connections,
            counts,
        }))
    }

    /// Checks a relayed request (see [`Channel::verify`]); returns the principal's
    /// name. With mTLS configured, a request whose connection showed no verified
    /// client certificate is refused before its signature is looked at. A refusal is
    /// logged here, with the sender's address and why.
    pub fn verify(
        &self,
        method: &Method,
        path_and_query: &str,
        fields: &HeaderFields,
        client_cert: bool,
        from: std::net::SocketAddr,
    ) -> Result<String> {
        let checked = if self.require_client_cert && !client_cert {
            Err(Error::new(
                ErrorKind::Authentication,
                "relayed request refused: peers must present a client certificate of the cluster (mTLS)",
            ))
        } else {
            self.channel.verify(method.as_str(), path_and_query, fields)
        };
        match checked {
            Ok(name) => {
                self.counts.with_label_values(&["received"]).inc();
                Ok(name)
            }
            Err(e) => {
                self.counts.with_label_values(&["refused"]).inc();
                tracing::warn!(peer = %from, "{e}");
                Err(e)
            }
        }
    }

    /// Whether the trigger has moved requests to a peer although the direct path works.
    pub fn prefers_peer(&self) -> bool {
        self.faster.as_ref().is_some_and(Faster::on)
    }

    fn client(&self, peer: &NodeRecord) -> Result<Arc<Client>> {
        let addr = peer.public_addr.as_str();
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&(addr.to_string(), peer.tls)) {
            return Ok(c.clone());
        }
        if !peer.tls {
            tracing::warn!(
                region = %peer.region,
                node = %peer.id,
                "peer listens without TLS: relaying to it over plain HTTP (fit for a private network only)"
            );
        }
        let authority: http::uri::Authority = addr.parse().map_err(|_| {
            Error::new(
                ErrorKind::UpstreamConnect,
                "a peer's public address is not host:port",
            )
        })?;
        let dialer = connect::Dialer::new(
            self.dns.clone(),
            authority.host(),
            authority
                .port_u16()
                .unwrap_or(if peer.tls { 443 } else { 80 }),
            peer.tls.then(|| self.tls.clone()),
            self.connect_timeout,
        )
        .map_err(|e| {
            Error::new(ErrorKind::UpstreamConnect, "cannot address a peer").with_detail(e)
        })?;
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| {
            Error::new(
                ErrorKind::UpstreamConnect,
                "a peer's address is not a header value",
            )
        })?;
        let scheme = if peer.tls { "https" } else { "http" };
        let client = Arc::new(Client::new(
            dialer,
            format!("{scheme}://{authority}"),
            host,
            self.pool,
            1,
            self.connections.clone(),
        ));
        clients.insert((addr.to_string(), peer.tls), client.clone());
        Ok(client)
    }

    /// Sends the request through `peers` (best first) as `principal`; the next peer
    /// is tried only when the one before could not be reached and the body can be
    /// sent again. A request that reached a peer is never resent: a stall ends in
    /// the timeout error. `first_byte` bounds the wait for the peer's response head.
    #[allow(clippy::too_many_arguments)]
    pub async fn send(
        &self,
        peers: &[&NodeRecord],
        principal: &str,
        method: &Method,
        path_and_query: &str,
        headers: &UpstreamHeaders<'_>,
        body: RequestBody,
        first_byte: Duration,
        record: &mut RequestRecord,
    ) -> Result<Forwarded> {
        let mut body = Some(body);
        let mut last = None;
        for peer in peers {
            let Some(this) = body.take() else { break };
            body = this.try_clone();
            let Some(signed) = self
                .channel
                .sign(method.as_str(), path_and_query, principal)
            else {
                return Err(Error::new(
                    ErrorKind::UpstreamConnect,
                    "cannot relay: the key's name cannot travel in a header field",
                ));
            };
            let client = self.client(peer)?;
            record.attempts += 1;
            record.upstream_key = None;
            let fields = RelayFields {
                inner: headers,
                signed: &signed,
            };
            let at = tokio::time::Instant::now();
            let outcome = client
                .send(
                    &Outgoing {
                        method,
                        target: path_and_query,
                        headers: &fields,
                        api_key: None,
                        at: at.into_std(),
                        deadline: at + first_byte,
                    },
                    this,
                )
                .await;
            let region = &peer.region;
            match outcome {
                Ok(response) => {
                    self.counts.with_label_values(&["sent"]).inc();
                    record.upstream_ttfb = Some(at.elapsed());
                    tracing::info!(request_id = %record.request_id, region, node = %peer.id, "request relayed through a peer region");
                    return Ok(Forwarded {
                        response,
                        prefix: None,
                        relayed_via: HeaderValue::from_str(region).ok(),
                    });
                }
                Err(SendError::Connect(d)) => {
                    self.counts.with_label_values(&["failed"]).inc();
                    last = Some(
                        Error::new(
                            ErrorKind::UpstreamConnect,
                            format!("could not reach the upstream API directly nor through region {region}"),
                        )
                        .with_detail(d),
                    );
                }
                Err(SendError::BodyTooLarge) => {
                    return Err(Error::new(
                        ErrorKind::RequestTooLarge,
                        "request body exceeds the gateway limit",
                    ))
                }
                Err(SendError::Io(d)) => {
                    self.counts.with_label_values(&["failed"]).inc();
                    return Err(Error::new(
                        ErrorKind::UpstreamProtocol,
                        format!("the relay through region {region} failed before a response"),
                    )
                    .with_detail(d));
                }
                Err(SendError::Timeout) => {
                    self.counts.with_label_values(&["failed"]).inc();
                    return Err(Error::new(
                        ErrorKind::UpstreamTimeout,
                        format!("the relay through region {region} did not respond in time"),
                    ));
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            Error::new(
                ErrorKind::UpstreamConnect,
                "no peer region could carry the request",
            )
        }))
    }
}

impl Relays {
    /// Ranks `peers` best first by their published path latency plus our round trip
    /// to them (see [`PeerRtts::rank`]).
    pub fn rank(&self, peers: &mut [NodeRecord]) {
        self.rtts.rank(peers);
    }

    /// One round trip to `peer`: `GET /readyz/local` on the relay's pooled
    /// connection (any answer counts), its body read so the connection is reused.
    async fn round_trip(&self, peer: &NodeRecord, timeout: Duration) -> Option<Duration> {
        let client = self.client(peer).ok()?;
        let sent = Instant::now();
        let deadline = tokio::time::Instant::from_std(sent + timeout);
        let out = Outgoing {
            method: &Method::GET,
            target: "/readyz/local",
            headers: &NoFields,
            api_key: None,
            at: sent,
            deadline,
        };
        let mut resp = client.send(&out, RequestBody::Full(None)).await.ok()?;
        let rtt = sent.elapsed();
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, resp.body.frame()).await {}
        Some(rtt)
    }

    /// The measuring loop, every `health.probe_interval` (jittered) until its task is
    /// aborted: our round trip to each relay candidate, the candidates re-ranked with
    /// it, and the "peer much faster" trigger fed with the direct path's probe round
    /// trip against the best peer's cost.
    pub async fn measure(
        &self,
        cluster: &ClusterStatus,
        direct: &UpstreamHealth,
        checks: &HealthChecks,
    ) {
        loop {
            let wait = checks
                .probe_interval
                .mul_f64(0.8 + 0.4 * rand::random::<f64>());
            tokio::time::sleep(wait).await;
            let peers = cluster.relay_peers.load_full();
            let addrs: Vec<&str> = peers.iter().map(|p| p.public_addr.as_str()).collect();
            self.rtts.retain(&addrs);
            // Peers that left stop showing in the metric.
            self.rtt_gauge.reset();
            for peer in peers.iter() {
                // A first round trip includes dialling (and TLS): measure again on the
                // connection it left in the pool.
                let tries = if self.rtts.get(&peer.public_addr).is_none() {
                    2
                } else {
                    1
                };
                let mut rtt = None;
                for _ in 0..tries {
                    rtt = self.round_trip(peer, checks.probe_timeout).await;
                }
                if let Some(rtt) = rtt {
                    self.rtts.add(&peer.public_addr, rtt);
                }
                if let Some(ms) = self.rtts.get(&peer.public_addr) {
                    self.rtt_gauge
                        .with_label_values(&[peer.region.as_str(), peer.id.as_str()])
                        .set(ms / 1000.0);
                }
            }
            cluster.relay_peers.rcu(|current| {
                let mut ranked = (**current).clone();
                self.rtts.rank(&mut ranked);
                ranked
            });
            if let Some(faster) = &self.faster {
                let best = cluster.relay_peers.load();
                let peer_cost = best.first().and_then(|p| self.rtts.path_cost(p));
                let ours = direct.probe_rtt.ms();
                if let Some(on) = faster.observe(ours, peer_cost, Instant::now()) {
                    self.faster_gauge.set(i64::from(on));
                    let region = best.first().map_or("", |p| p.region.as_str());
                    if on {
                        tracing::info!(
                            direct_ms = ours.unwrap_or_default(),
                            peer_ms = peer_cost.unwrap_or_default(),
                            region,
                            "a peer region's path is much faster: relaying through it"
                        );
                    } else {
                        tracing::info!(
                            direct_ms = ours.unwrap_or_default(),
                            peer_ms = peer_cost.unwrap_or_default(),
                            "the direct path is no longer much slower: going direct"
                        );
                    }
                }
            }
        }
    }
}

/// The TLS client for peers: trust in the cluster's CA (`cluster.peer_ca_file`), else
/// the public web roots and `upstream.ca_file`; this node's own certificate as the
/// client certificate when it has `[tls]`; HTTP/1.1 only (the relay's pool).
fn peer_tls(config: &Config) -> Result<rustls::ClientConfig> {
    use crate::accept::tls::{load_identity, load_roots};
    let roots = match &config.peer_ca_file {
        Some(path) => load_roots(path, "cluster.peer_ca_file")?,
        None => {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            if let Some(path) = &config.upstream.ca_file {
                roots
                    .roots
                    .extend(load_roots(path, "upstream.ca_file")?.roots);
            }
            roots
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config(format!("TLS setup: {e}")))?
        .with_root_certificates(roots);
    let mut cfg = match &config.tls {
        Some(tls) => {
            let (certs, key) = load_identity(tls)?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                Error::config(format!(
                    "tls: the certificate cannot serve as the relay's client certificate: {e}"
                ))
            })?
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// No header fields: the round-trip probe to a peer carries nothing of anyone's.
struct NoFields;

static NO_FORWARDED_FOR: HeaderValue = HeaderValue::from_static("");

impl OutgoingFields for NoFields {
    fn write_lines(&self, _out: &mut Vec<u8>) {}

    fn forwarded_for(&self) -> &HeaderValue {
        &NO_FORWARDED_FOR
    }

    fn to_map(&self, _api_key: Option<&HeaderValue>) -> HeaderMap {
        HeaderMap::new()
    }
}

/// The client's fields as they go upstream, plus the signed relay fields.
struct RelayFields<'a> {
    inner: &'a UpstreamHeaders<'a>,
    signed: &'a Signed,
}

impl OutgoingFields for RelayFields<'_> {
    fn write_lines(&self, out: &mut Vec<u8>) {
        self.inner.write_lines(out);
        for (name, value) in self.signed.fields() {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    fn forwarded_for(&self) -> &HeaderValue {
        self.inner.forwarded_for()
    }

    fn to_map(&self, api_key: Option<&HeaderValue>) -> HeaderMap {
        let mut map = self.inner.to_map(api_key);
        for (name, value) in self.signed.fields() {
            map.insert(name, value);
        }
        map
    }
}
