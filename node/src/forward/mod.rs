//! Phase 5, forward: carry out the route's decision. For the direct route: send the
//! request upstream over a pooled connection with a key from the pool, and retry on
//! another key or connection while nothing has been sent to the client yet.
//!
//! Layout: `retry` (the retry rule); this file decides which header fields go
//! upstream and come back ([`UpstreamHeaders`], [`RelayedHeaders`]) and runs the
//! attempt loop. The wire work (pool, HTTP/1.1 by hand, HTTP/2 through hyper, TLS,
//! DNS) is the protocol wing's, [`crate::http1`].

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::account::RequestRecord;
use crate::body::RequestBody;
use crate::config::{KeyMode, Upstream as UpstreamConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::head::{HeaderFields, X_API_KEY, X_FORWARDED_FOR};
use crate::health::UpstreamHealth;
use crate::limits::headers as limit_headers;
use crate::metrics::Metrics;
use crate::route::Route;

mod retry;

use crate::http1::framing as wire;
use crate::http1::pool::{self as client, Client, SendError};
pub use crate::http1::pool::{UpstreamBody, UpstreamResponse};
use crate::http1::{connect, dns, OutgoingFields};
use retry::Failure;

/// The pooled upstream client and what it needs to address the upstream.
pub struct Upstream {
    client: Client,
    config: UpstreamConfig,
}

/// A response that has been committed to: headers arrived, and for streams the first
/// event was looked at. `prefix` holds bytes already read from the body.
pub struct Forwarded {
    pub response: UpstreamResponse,
    pub prefix: Option<Bytes>,
}

/// Per-request inputs to the attempt loop.
pub struct ForwardCtx<'a> {
    /// How the request leaves, as the route phase decided.
    pub route: Route<'a>,
    pub metrics: &'a Metrics,
    pub health: &'a UpstreamHealth,
    /// The request streams its response (SSE): first-byte wait uses the stream idle timeout.
    pub stream: bool,
}

impl Upstream {
    /// Builds the client. Must run inside the Tokio runtime (the resolver needs it).
    pub fn new(config: &UpstreamConfig, metrics: &Arc<Metrics>) -> Result<Self> {
        let dns = dns::HickoryDns::new(config.dns_ttl_cap)
            .map_err(|e| Error::config("cannot set up the DNS resolver").with_detail(e))?;
        let t = &config.target;
        let tls = if t.scheme == http::uri::Scheme::HTTPS {
            let mut tls = client_tls(config)?;
            tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Some(Arc::new(tls))
        } else {
            None
        };
        let default_port = if tls.is_some() { 443 } else { 80 };
        let dialer = connect::Dialer::new(
            dns,
            t.authority.host(),
            t.authority.port_u16().unwrap_or(default_port),
            tls,
            config.connect_timeout,
        )
        .map_err(|e| Error::config(format!("upstream.base_url: {e}")))?;
        let authority = HeaderValue::from_str(t.authority.as_str())
            .map_err(|_| Error::config("upstream.base_url host is not a valid header value"))?;
        let client = Client::new(
            dialer,
            format!("{}://{}", t.scheme, t.authority),
            authority,
            config.pool_max_idle_per_host,
            config.pool_idle_timeout,
            config.h2_max_streams_per_connection,
            metrics.upstream_connections.clone(),
        );
        Ok(Upstream {
            client,
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    /// Runs the attempt loop. Updates `record` with attempts, key and timings.
    pub async fn forward(
        &self,
        ctx: &ForwardCtx<'_>,
        method: http::Method,
        path_and_query: &str,
        headers: &UpstreamHeaders<'_>,
        body: RequestBody,
        record: &mut RequestRecord,
    ) -> Result<Forwarded> {
        let prefixed;
        let target = if self.config.target.path_prefix.is_empty() {
            path_and_query
        } else {
            prefixed = format!("{}{}", self.config.target.path_prefix, path_and_query);
            &prefixed
        };
        let max_attempts = self.config.max_attempts;
        let mut spare = body.try_clone();
        let wait = if ctx.stream {
            self.config.stream_idle_timeout
        } else {
            self.config.read_timeout
        };
        // A streamed upload is still being sent while we wait for the response, so it
        // gets the send timeout on top; a buffered body is written in one go.
        let first_byte_timeout = if spare.is_some() {
            wait
        } else {
            wait + self.config.send_timeout
        };
        let Route::Direct { pool, mode } = ctx.route;
        let mut body = Some(body);
        let mut avoid = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            record.attempts = attempt;
            let can_retry = attempt < max_attempts && spare.is_some();

            let key = match mode {
                KeyMode::Passthrough => None,
                _ => match pool.pick(avoid) {
                    Ok(k) => Some(k),
                    Err(wait) => {
                        return Err(Error::new(
                            ErrorKind::RateLimited,
                            "every upstream key is cooling down after rate limiting; retry later",
                        )
                        .with_retry_after(wait));
                    }
                },
            };
            record.upstream_key = key.map(|k| pool.label(k).to_string());

            let attempt_body = body.take().expect("a body for each attempt");
            let api_key = key.map(|k| pool.header(k));
            // One clock read for the time to first byte and the timeout's deadline.
            let sent = tokio::time::Instant::now();
            let outcome = tokio::time::timeout_at(
                sent + first_byte_timeout,
                self.client.send(
                    &client::Outgoing {
                        method: &method,
                        target,
                        headers,
                        api_key,
                        at: sent.into_std(),
                    },
                    attempt_body,
                ),
            )
            .await;
            let next_body =
                |spare: &mut Option<RequestBody>| spare.as_ref().and_then(RequestBody::try_clone);

            // Each way an attempt can go either ends the loop or names the retry's cause
            // and its pause, taken in one place below.
            let (cause, pause) = match outcome {
                Err(_) => {
                    ctx.metrics
                        .upstream_errors
                        .with_label_values(&["timeout"])
                        .inc();
                    ctx.health.record_failure();
                    let failure = Error::new(
                        ErrorKind::UpstreamTimeout,
                        "upstream did not respond in time",
                    );
                    retry_transport(failure, can_retry, attempt)?
                }
                Ok(Err(e)) => {
                    let (kind, label, msg, detail) = match e {
                        SendError::BodyTooLarge => {
                            return Err(Error::new(
                                ErrorKind::RequestTooLarge,
                                "request body exceeds the gateway limit",
                            ))
                        }
                        SendError::Connect(d) => (
                            ErrorKind::UpstreamConnect,
                            "connect",
                            "could not connect to the upstream API",
                            d,
                        ),
                        SendError::Io(d) => (
                            ErrorKind::UpstreamProtocol,
                            "protocol",
                            "the upstream connection failed before a response",
                            d,
                        ),
                    };
                    ctx.metrics
                        .upstream_errors
                        .with_label_values(&[label])
                        .inc();
                    ctx.health.record_failure();
                    retry_transport(
                        Error::new(kind, msg).with_detail(detail),
                        can_retry,
                        attempt,
                    )?
                }
                Ok(Ok(mut resp)) => {
                    let ttfb = sent.elapsed();
                    record.upstream_ttfb = Some(ttfb);
                    let status = resp.status;
                    ctx.health.record_response(status);
                    if let Some(k) = key {
                        if let Some((reason, wait)) = pool.observe(k, status, &resp.headers) {
                            ctx.metrics
                                .key_cooldowns
                                .with_label_values(&[reason.label()])
                                .inc();
                            tracing::info!(
                                key = pool.label(k),
                                reason = reason.label(),
                                wait_s = wait.as_secs_f64(),
                                "upstream key cooling down"
                            );
                        }
                    }
                    if status.is_success() {
                        // A stream's first event is looked at only while a retry is
                        // possible: an `error` event then is retried like a 529.
                        if !(ctx.stream && can_retry && crate::sse::is_event_stream(&resp.headers))
                        {
                            return Ok(Forwarded {
                                response: resp,
                                prefix: None,
                            });
                        }
                        let idle = self.config.stream_idle_timeout;
                        match crate::sse::peek_first_event(&mut resp.body, idle).await {
                            Ok((first, _)) if crate::sse::first_event_is_error(&first) => {
                                let f = Failure::ErrorEvent;
                                debug_assert!(retry::worth_retrying(&f, || true));
                                ctx.metrics
                                    .upstream_errors
                                    .with_label_values(&["stream_error_event"])
                                    .inc();
                                ("stream_error_event", retry::pause(&f, attempt))
                            }
                            Ok((first, _)) => {
                                return Ok(Forwarded {
                                    response: resp,
                                    prefix: Some(first),
                                })
                            }
                            Err(failure) => {
                                ctx.metrics
                                    .upstream_errors
                                    .with_label_values(&["stream_start"])
                                    .inc();
                                ctx.health.record_failure();
                                retry_transport(failure, can_retry, attempt)?
                            }
                        }
                    } else {
                        let label = status_label(status);
                        if let Some(label) = label {
                            ctx.metrics
                                .upstream_errors
                                .with_label_values(&[label])
                                .inc();
                        }
                        let f = Failure::Status(status);
                        let other_key = || {
                            key.is_some_and(|k| {
                                pool.pick(Some(k))
                                    .is_ok_and(|n| pool.label(n) != pool.label(k))
                            })
                        };
                        if !(retry::worth_retrying(&f, other_key) && can_retry) {
                            return Ok(Forwarded {
                                response: resp,
                                prefix: None,
                            });
                        }
                        (label.unwrap_or("status"), retry::pause(&f, attempt))
                    }
                }
            };
            ctx.metrics.retries.with_label_values(&[cause]).inc();
            avoid = key;
            body = next_body(&mut spare);
            if let Some(p) = pause {
                tokio::time::sleep(p).await;
            }
        }
    }
}

/// A transport failure: `Err` (the loop ends with it) unless the retry rule allows
/// another attempt and the body can be sent again (`can_retry`); then the retry's
/// cause and pause.
fn retry_transport(
    failure: Error,
    can_retry: bool,
    attempt: u32,
) -> Result<(&'static str, Option<std::time::Duration>)> {
    let f = Failure::Transport(&failure);
    if !can_retry || !retry::worth_retrying(&f, || false) {
        return Err(failure);
    }
    tracing::debug!(attempt, "retrying upstream after: {failure}");
    Ok((failure.label(), retry::pause(&f, attempt)))
}

fn status_label(s: StatusCode) -> Option<&'static str> {
    Some(match s.as_u16() {
        429 => "status_429",
        529 => "status_529",
        500..=599 => "status_5xx",
        _ => return None,
    })
}

fn client_tls(config: &UpstreamConfig) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &config.ca_file {
        use rustls_pki_types::pem::PemObject;
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| Error::config(format!("upstream.ca_file {}: {e}", path.display())))?;
        for cert in certs {
            let cert = cert
                .map_err(|e| Error::config(format!("upstream.ca_file {}: {e}", path.display())))?;
            roots
                .add(cert)
                .map_err(|e| Error::config(format!("upstream.ca_file {}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(cfg)
}

/// The client's header fields as they go upstream: hop-by-hop fields (and those the
/// client's `Connection` names), `host`, the framing fields and, unless passing
/// through, the client's credentials stay behind; `x-forwarded-for` is rewritten
/// with the peer appended. `host`, the framing and the upstream key are added by the
/// client that sends the request.
pub struct UpstreamHeaders<'a> {
    client: &'a HeaderFields,
    mode: KeyMode,
    /// Fields named in the client's `Connection` header (rare: an empty `Vec` does
    /// not allocate).
    named: Vec<&'a [u8]>,
    forwarded_for: HeaderValue,
}

impl<'a> UpstreamHeaders<'a> {
    pub fn new(client: &'a HeaderFields, peer: SocketAddr, mode: KeyMode) -> Self {
        UpstreamHeaders {
            client,
            mode,
            named: connection_names(client),
            forwarded_for: forwarded_for(client, peer),
        }
    }

    fn keeps(&self, name: &[u8]) -> bool {
        !stays_behind(name, self.mode) && !self.named.iter().any(|n| n.eq_ignore_ascii_case(name))
    }

    /// The client's fields that go upstream, as they came.
    pub fn fields(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + '_ {
        self.client.iter().filter(|(name, _)| self.keeps(name))
    }
}

impl OutgoingFields for UpstreamHeaders<'_> {
    fn write_lines(&self, out: &mut Vec<u8>) {
        self.client.write_lines(out, |name| self.keeps(name));
    }

    fn forwarded_for(&self) -> &HeaderValue {
        &self.forwarded_for
    }

    fn to_map(&self, api_key: Option<&HeaderValue>) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.client.len() + 2);
        for (name, value) in self.fields().filter_map(|(n, v)| typed(n, v)) {
            map.append(name, value);
        }
        map.insert(X_FORWARDED_FOR, self.forwarded_for.clone());
        if let Some(key) = api_key {
            map.insert(X_API_KEY, key.clone());
        }
        map
    }
}

/// A raw field as a map entry (for HTTP/2). Names and values were checked when the
/// head was parsed, so this does not fail in practice.
fn typed(name: &[u8], value: &[u8]) -> Option<(HeaderName, HeaderValue)> {
    Some((
        wire::header_name(name).ok()?,
        HeaderValue::from_bytes(value).ok()?,
    ))
}

/// Fields named in a message's `Connection` header: hop-by-hop too (RFC 9110 7.6.1).
/// `keep-alive` and `close` name nothing relayed, and are by far the most common: the
/// list then stays empty, which does not allocate.
fn connection_names(fields: &HeaderFields) -> Vec<&[u8]> {
    let names_nothing = |n: &[u8]| {
        n.is_empty() || n.eq_ignore_ascii_case(b"keep-alive") || n.eq_ignore_ascii_case(b"close")
    };
    let mut names = Vec::new();
    for value in fields.get_all(&header::CONNECTION) {
        if names_nothing(value) {
            continue;
        }
        for name in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
            if !names_nothing(name) {
                names.push(name);
            }
        }
    }
    names
}

/// Fields that describe one connection, not the message (RFC 9110 7.6.1): relayed in
/// neither direction. One comparison of lengths, then of names: most fields are
/// over in one step.
fn is_hop_by_hop(name: &[u8]) -> bool {
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    match name.len() {
        2 => is(b"te"),
        7 => is(b"trailer") || is(b"upgrade"),
        10 => is(b"connection") || is(b"keep-alive"),
        16 => is(b"proxy-connection"),
        17 => is(b"transfer-encoding"),
        18 => is(b"proxy-authenticate"),
        19 => is(b"proxy-authorization"),
        _ => false,
    }
}

/// Request fields never relayed as the client sent them.
fn stays_behind(name: &[u8], mode: KeyMode) -> bool {
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    let own_key = mode != KeyMode::Passthrough;
    is_hop_by_hop(name)
        || match name.len() {
            4 => is(b"host"),
            6 => is(b"expect"),
            9 => own_key && is(b"x-api-key"),
            13 => own_key && is(b"authorization"),
            // Framing is the sender's to decide, from the body it actually sends.
            14 => is(b"content-length"),
            15 => is(b"x-forwarded-for"),
            _ => false,
        }
}

/// `x-forwarded-for` for the upstream: the client's own values, then the peer.
fn forwarded_for(client: &HeaderFields, peer: SocketAddr) -> HeaderValue {
    use std::fmt::Write;
    let mut joined = String::new();
    for v in client.get_all(&X_FORWARDED_FOR) {
        let Ok(v) = std::str::from_utf8(v.trim_ascii()) else {
            continue;
        };
        if !v.is_empty() {
            joined.push_str(v);
            joined.push_str(", ");
        }
    }
    if joined.is_empty() {
        return peer_value(peer.ip());
    }
    let _ = write!(joined, "{}", peer.ip());
    HeaderValue::try_from(joined).unwrap_or_else(|_| peer_value(peer.ip()))
}

/// The peer address as a header value. A connection's requests share it, and
/// formatting an address costs more than the rest of this function: the last one
/// is kept.
fn peer_value(ip: std::net::IpAddr) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(std::net::IpAddr, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((at, v)) if *at == ip => v.clone(),
        _ => {
            let v = HeaderValue::try_from(ip.to_string()).expect("an address is a valid value");
            *last = Some((ip, v.clone()));
            v
        }
    })
}

/// The upstream's response fields as they go to the client, carried with the relayed
/// body (`stream::Relay`) and written by the HTTP/1.1 server straight into the head
/// (the HTTP/2 server puts them in its map: [`RelayedHeaders::insert_into`]).
/// Hop-by-hop fields stay behind, the upstream's `anthropic-ratelimit-*` when the
/// client has limits of its own (its own are written instead), and any field the
/// gateway sets on the response itself (`x-strait-request-id`, say: the gateway's
/// replaces an upstream's).
pub struct RelayedHeaders {
    fields: HeaderFields,
    strip_rate_limits: bool,
}

impl RelayedHeaders {
    pub fn new(fields: HeaderFields, strip_rate_limits: bool) -> Self {
        RelayedHeaders {
            fields,
            strip_rate_limits,
        }
    }

    fn keeps(&self, name: &[u8], bodiless: bool, named: &[&[u8]], own: &HeaderMap) -> bool {
        !(is_hop_by_hop(name)
            || (!bodiless && name.eq_ignore_ascii_case(b"content-length"))
            || (self.strip_rate_limits && limit_headers::is_upstream(name))
            || named.iter().any(|n| n.eq_ignore_ascii_case(name))
            || own
                .keys()
                .any(|k| k.as_str().as_bytes().eq_ignore_ascii_case(name)))
    }

    /// The fields to relay. `content-length` is among them only for a response
    /// without a body (to a HEAD request, say); otherwise framing is the server's.
    pub fn fields<'a>(
        &'a self,
        bodiless: bool,
        own: &'a HeaderMap,
    ) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let named = connection_names(&self.fields);
        self.fields
            .iter()
            .filter(move |(name, _)| self.keeps(name, bodiless, &named, own))
    }

    /// [`RelayedHeaders::fields`] as HTTP/1.1 lines. Returns whether a `date` was
    /// among them.
    /// `own` holds the fields the gateway sets itself.
    pub fn write_lines(&self, out: &mut Vec<u8>, bodiless: bool, own: &HeaderMap) -> bool {
        let named = connection_names(&self.fields);
        let mut date = false;
        self.fields.write_lines(out, |name| {
            date |= name.eq_ignore_ascii_case(b"date");
            self.keeps(name, bodiless, &named, own)
        });
        date
    }

    /// Whether the upstream sent `name`.
    #[cfg(test)]
    fn contains(&self, name: &HeaderName) -> bool {
        self.fields.get(name).is_some()
    }

    /// Appends the fields to an HTTP/2 response's map.
    /// The map's own fields (the gateway's) replace the upstream's of the same name.
    pub fn insert_into(&self, map: &mut HeaderMap) {
        // Decided against the map as it was, before any of these are added.
        let relayed: Vec<_> = self
            .fields(false, map)
            .filter_map(|(n, v)| typed(n, v))
            .collect();
        for (name, value) in relayed {
            map.append(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_fields_are_not_relayed_with_a_body() {
        let h = crate::http1::client::head_fields(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 9\r\n\r\n",
            &http::Method::POST,
        );
        let relayed = RelayedHeaders::new(h, false);
        assert!(
            relayed
                .fields(false, &http::HeaderMap::new())
                .next()
                .is_none(),
            "neither framing field is relayed with a body"
        );
    }

    fn upstream(h: &HeaderFields, mode: KeyMode) -> Vec<(String, String)> {
        let up = UpstreamHeaders::new(h, "127.0.0.9:1234".parse().unwrap(), mode);
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
        let mut out: Vec<_> = up.fields().map(|(n, v)| (text(n), text(v))).collect();
        out.push((
            "x-forwarded-for".into(),
            text(up.forwarded_for().as_bytes()),
        ));
        out
    }

    fn raw(head: &'static [u8]) -> HeaderFields {
        let head = bytes::Bytes::from_static(head);
        let mut raw = crate::head::RawHeaders::with_capacity(head.clone(), 8);
        let mut at = 0;
        while let Some(end) = head[at..].windows(2).position(|w| w == b"\r\n") {
            let line = &head[at..at + end];
            let colon = line.iter().position(|b| *b == b':').unwrap();
            raw.push(&line[..colon], line[colon + 1..].trim_ascii());
            at += end + 2;
        }
        HeaderFields::Raw(raw)
    }

    #[test]
    fn strips_hop_by_hop_and_credentials_and_appends_xff() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("x-api-key", HeaderValue::from_static("strait-client-key"));
        h.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert("host", HeaderValue::from_static("gateway.example"));
        h.insert("content-length", HeaderValue::from_static("12"));
        let out = upstream(&HeaderFields::Map(h), KeyMode::Managed);
        assert_eq!(
            out,
            [
                ("anthropic-version".into(), "2023-06-01".into()),
                ("x-forwarded-for".into(), "10.0.0.1, 127.0.0.9".into()),
            ]
        );
    }

    #[test]
    fn raw_heads_are_filtered_whatever_the_case_of_their_names() {
        let h = raw(
            b"Host: gw\r\nX-Api-Key: strait-client-key\r\nAuthorization: Bearer s\r\n\
            Connection: X-Hop\r\nx-hop: 1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\
            Anthropic-Beta: a\r\nX-Forwarded-For: 10.0.0.1\r\nx-forwarded-for: 10.0.0.2\r\n\
            Proxy-Authorization: p\r\nTE: trailers\r\nanthropic-beta: b\r\n",
        );
        let out = upstream(&h, KeyMode::Managed);
        assert_eq!(
            out,
            [
                ("Anthropic-Beta".into(), "a".into()),
                ("anthropic-beta".into(), "b".into()),
                (
                    "x-forwarded-for".into(),
                    "10.0.0.1, 10.0.0.2, 127.0.0.9".into()
                ),
            ]
        );
        let map = UpstreamHeaders::new(&h, "127.0.0.9:1".parse().unwrap(), KeyMode::Managed)
            .to_map(Some(&HeaderValue::from_static("sk-up")));
        assert_eq!(map.get_all("anthropic-beta").iter().count(), 2);
        assert_eq!(map["x-api-key"], "sk-up");
        assert!(map.get("authorization").is_none() && map.get("te").is_none());
    }

    #[test]
    fn relayed_response_fields_leave_hop_by_hop_framing_and_replaced_limits_behind() {
        let h = raw(
            b"Content-Type: application/json\r\nConnection: keep-alive, X-Hop\r\n\
            X-Hop: 1\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\n\
            Content-Length: 12\r\nAnthropic-RateLimit-Requests-Remaining: 4\r\n\
            request-id: req_1\r\nDate: Fri, 27 Nov 2026 17:00:00 GMT\r\n",
        );
        let none = HeaderMap::new();
        let names = |r: &RelayedHeaders, bodiless: bool| -> Vec<String> {
            r.fields(bodiless, &none)
                .map(|(n, _)| String::from_utf8(n.to_vec()).unwrap())
                .collect()
        };
        let own_limits = RelayedHeaders::new(h, true);
        assert_eq!(
            names(&own_limits, false),
            ["Content-Type", "request-id", "Date"]
        );
        assert_eq!(
            names(&own_limits, true),
            ["Content-Type", "Content-Length", "request-id", "Date"],
            "a bodiless response keeps its length"
        );
        assert!(own_limits.contains(&header::DATE));
        let shared = RelayedHeaders::new(
            raw(b"anthropic-ratelimit-requests-remaining: 4\r\nx-a: b\r\n"),
            false,
        );
        let mut map = HeaderMap::new();
        shared.insert_into(&mut map);
        assert_eq!(map["anthropic-ratelimit-requests-remaining"], "4");
        assert_eq!(map["x-a"], "b");
        assert!(!shared.contains(&header::DATE));

        // The gateway's own fields replace the upstream's; repeated upstream fields
        // stay repeated.
        let chained = RelayedHeaders::new(
            raw(b"X-Strait-Request-Id: upstream\r\nset-cookie: a\r\nset-cookie: b\r\n"),
            false,
        );
        let mut own = HeaderMap::new();
        own.insert(
            crate::meta::REQUEST_ID,
            HeaderValue::from_static("strait_1"),
        );
        let mut out = Vec::new();
        chained.write_lines(&mut out, false, &own);
        assert_eq!(out, b"set-cookie: a\r\nset-cookie: b\r\n");
        chained.insert_into(&mut own);
        assert_eq!(own.get_all(crate::meta::REQUEST_ID).iter().count(), 1);
        assert_eq!(own[crate::meta::REQUEST_ID], "strait_1");
        assert_eq!(own.get_all("set-cookie").iter().count(), 2);
    }

    #[test]
    fn passthrough_keeps_the_client_key() {
        let h = raw(b"X-Api-Key: sk-ant-own\r\nauthorization: Bearer sk-ant-own\r\n");
        let out = upstream(&h, KeyMode::Passthrough);
        assert_eq!(out[0], ("X-Api-Key".into(), "sk-ant-own".into()));
        assert_eq!(out[1].0, "authorization");
    }
}
