//! Phase 5b, relay: carry a request through a node of a peer region when the
//! direct path cannot (its circuit is open, or connecting to it failed before
//! anything was sent). The peer serves it as the original principal over its own
//! direct path; the response streams back unbuffered both ways.
//!
//! Layout: `sign` is the signed node-to-node channel (HMAC-SHA256 with the cluster
//! secret, timestamp window, nonce replay cache), used by both sides; this file is
//! the sending side: one pooled HTTP/1.1 client per peer address. Relays go over
//! plain HTTP (the node record does not say whether a peer listens with TLS):
//! fit for a private network between regions, not for links that cross borders
//! (docs/failover.md).

mod sign;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method};
use prometheus::{IntCounterVec, IntGauge, Opts};

use crate::account::RequestRecord;
use crate::body::RequestBody;
use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::forward::{Forwarded, UpstreamHeaders};
use crate::head::HeaderFields;
use crate::http1::pool::{Client, Outgoing, SendError};
use crate::http1::{connect, dns, OutgoingFields};
use crate::metrics::Metrics;
use crate::schema::NodeRecord;

pub use sign::{
    is_relayed, Channel, Signed, HOP, NONCE, PRINCIPAL, RELAYED_VIA, SIGNATURE, TS, WINDOW,
};

/// The relay's two sides on one node: signing and sending to peers, checking what
/// peers send. Present only when the node has a cluster secret.
pub struct Relays {
    channel: Channel,
    dns: dns::HickoryDns,
    /// One pooled client per peer address, made on first use. A short lock, taken
    /// only on relayed requests.
    clients: Mutex<HashMap<String, Arc<Client>>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
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
        let _ = metrics.registry.register(Box::new(connections.clone()));
        let _ = metrics.registry.register(Box::new(counts.clone()));
        let dns = dns::HickoryDns::new(config.upstream.dns_ttl_cap)
            .map_err(|e| Error::config("cannot set up the DNS resolver").with_detail(e))?;
        if config.cluster.is_some() {
            tracing::warn!(
                "relay through peer regions goes over plain HTTP to their public listeners: \
                 fit for a private network, not for links that cross borders"
            );
        }
        Ok(Some(Relays {
            channel: Channel::new(secret.expose().as_bytes()),
            dns,
            clients: Mutex::new(HashMap::new()),
            connect_timeout: config.upstream.connect_timeout,
            idle_timeout: config.upstream.pool_idle_timeout,
            max_idle: config.upstream.pool_max_idle_per_host,
            connections,
            counts,
        }))
    }

    /// Checks a relayed request (see [`Channel::verify`]); returns the principal's
    /// name. A refusal is logged here, with the sender's address and why.
    pub fn verify(
        &self,
        method: &Method,
        path_and_query: &str,
        fields: &HeaderFields,
        from: std::net::SocketAddr,
    ) -> Result<String> {
        match self.channel.verify(method.as_str(), path_and_query, fields) {
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

    fn client(&self, addr: &str) -> Result<Arc<Client>> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(addr) {
            return Ok(c.clone());
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
            authority.port_u16().unwrap_or(80),
            None,
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
        let client = Arc::new(Client::new(
            dialer,
            format!("http://{authority}"),
            host,
            self.max_idle,
            self.idle_timeout,
            1,
            self.connections.clone(),
        ));
        clients.insert(addr.to_string(), client.clone());
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
            let client = self.client(&peer.public_addr)?;
            record.attempts += 1;
            record.upstream_key = None;
            let fields = RelayFields {
                inner: headers,
                signed: &signed,
            };
            let at = tokio::time::Instant::now();
            let outcome = tokio::time::timeout_at(
                at + first_byte,
                client.send(
                    &Outgoing {
                        method,
                        target: path_and_query,
                        headers: &fields,
                        api_key: None,
                        at: at.into_std(),
                    },
                    this,
                ),
            )
            .await;
            let region = &peer.region;
            match outcome {
                Ok(Ok(response)) => {
                    self.counts.with_label_values(&["sent"]).inc();
                    record.upstream_ttfb = Some(at.elapsed());
                    tracing::info!(request_id = %record.request_id, region, node = %peer.id, "request relayed through a peer region");
                    return Ok(Forwarded {
                        response,
                        prefix: None,
                        relayed_via: HeaderValue::from_str(region).ok(),
                    });
                }
                Ok(Err(SendError::Connect(d))) => {
                    self.counts.with_label_values(&["failed"]).inc();
                    last = Some(
                        Error::new(
                            ErrorKind::UpstreamConnect,
                            format!("could not reach the upstream API directly nor through region {region}"),
                        )
                        .with_detail(d),
                    );
                }
                Ok(Err(SendError::BodyTooLarge)) => {
                    return Err(Error::new(
                        ErrorKind::RequestTooLarge,
                        "request body exceeds the gateway limit",
                    ))
                }
                Ok(Err(SendError::Io(d))) => {
                    self.counts.with_label_values(&["failed"]).inc();
                    return Err(Error::new(
                        ErrorKind::UpstreamProtocol,
                        format!("the relay through region {region} failed before a response"),
                    )
                    .with_detail(d));
                }
                Err(_) => {
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
