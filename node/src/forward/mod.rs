//! Phase 5, forward: carry out the route's decision. For the direct route: send the
//! request upstream over a pooled connection with a key from the pool, and retry on
//! another key or connection while nothing has been sent to the client yet.
//!
//! Layout: `headers` (which header fields go upstream and come back), `retry` (the
//! retry rule), `probe` (the active path probes, off the request path); this file
//! runs the attempt loop. The wire work (pool, HTTP/1.1 by
//! hand, HTTP/2 through hyper, TLS, DNS) is the protocol wing's, [`crate::http1`].

mod headers;
pub mod probe;
mod retry;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};

use crate::account::RequestRecord;
use crate::body::RequestBody;
use crate::config::{KeyMode, Upstream as UpstreamConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::health::UpstreamHealth;
use crate::http1::pool::{self as client, Client, PoolSettings, SendError};
use crate::http1::{connect, dns};
use crate::metrics::Metrics;
use crate::route::{KeyPool, KeyRef, NoKey, Reason, Route, Scope, ScopeKey, Verdict};
use retry::Failure;

pub use crate::http1::pool::{UpstreamBody, UpstreamResponse};
pub use headers::{RelayedHeaders, UpstreamHeaders};

/// The pooled upstream client and what it needs to address the upstream.
pub struct Upstream {
    client: Client,
    config: UpstreamConfig,
}

/// A response that has been committed to: headers arrived, and for streams the first
/// event was looked at. `prefix` holds bytes already read from the body. The response
/// is boxed where the client built it, so this moves from step to step in a few words.
pub struct Forwarded {
    pub response: Box<UpstreamResponse>,
    pub prefix: Option<Bytes>,
    /// The peer region that carried the request (`x-strait-relayed-via`); `None`
    /// when it went direct.
    pub relayed_via: Option<HeaderValue>,
}

/// Per-request inputs to the attempt loop.
pub struct ForwardCtx<'a> {
    /// How the request leaves, as the route phase decided.
    pub route: Route<'a>,
    pub metrics: &'a Metrics,
    pub health: &'a UpstreamHealth,
    /// The request streams its response (SSE): first-byte wait uses the stream idle timeout.
    pub stream: bool,
    /// Set once an attempt may have reached the upstream (anything but a failed
    /// connect or TLS handshake): such a request is never relayed afterwards, its
    /// outcome being unknown.
    pub sent: std::sync::atomic::AtomicBool,
}

impl Upstream {
    /// Builds the client for a node serving on `event_loops` loops. Must run inside the
    /// Tokio runtime (the resolver needs it).
    pub fn new(
        config: &UpstreamConfig,
        event_loops: usize,
        metrics: &Arc<Metrics>,
    ) -> Result<Self> {
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
            PoolSettings {
                max_idle: config.pool_max_idle_per_host,
                idle_timeout: config.pool_idle_timeout,
                event_loops,
            },
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
        let Route::Direct { pool, mode, scope } = ctx.route else {
            return Err(Error::new(
                ErrorKind::Internal,
                "a relay route reached the direct attempt loop",
            ));
        };
        let mut body = Some(body);
        let mut avoid = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            record.attempts = attempt;
            let can_retry = attempt < max_attempts && spare.is_some();

            let key = match mode {
                KeyMode::Passthrough => None,
                _ => match pool.pick(&scope, avoid) {
                    Ok(k) => Some(k),
                    Err(none) => return Err(no_key_error(none)),
                },
            };
            record.upstream_key = key.map(|k| pool.label(k).to_string());

            let attempt_body = body.take().expect("a body for each attempt");
            let api_key = key.map(|k| pool.header(k));
            // One clock read for the time to first byte and the timeout's deadline.
            let sent = tokio::time::Instant::now();
            let outcome = self
                .client
                .send(
                    &client::Outgoing {
                        method: &method,
                        target,
                        headers,
                        api_key,
                        at: sent.into_std(),
                        deadline: sent + first_byte_timeout,
                    },
                    attempt_body,
                )
                .await;
            let next_body =
                |spare: &mut Option<RequestBody>| spare.as_ref().and_then(RequestBody::try_clone);

            if !matches!(outcome, Err(SendError::Connect(_))) {
                ctx.sent.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            // Each way an attempt can go either ends the loop or names the retry's cause
            // and its pause, taken in one place below.
            let (cause, pause) = match outcome {
                Err(e) => {
                    let (label, failure) = match e {
                        SendError::BodyTooLarge => {
                            return Err(Error::new(
                                ErrorKind::RequestTooLarge,
                                "request body exceeds the gateway limit",
                            ))
                        }
                        SendError::Timeout => (
                            "timeout",
                            Error::new(
                                ErrorKind::UpstreamTimeout,
                                "upstream did not respond in time",
                            ),
                        ),
                        SendError::Connect(d) => (
                            "connect",
                            Error::new(
                                ErrorKind::UpstreamConnect,
                                "could not connect to the upstream API",
                            )
                            .with_detail(d),
                        ),
                        SendError::Io(d) => (
                            "protocol",
                            Error::new(
                                ErrorKind::UpstreamProtocol,
                                "the upstream connection failed before a response",
                            )
                            .with_detail(d),
                        ),
                    };
                    ctx.metrics
                        .upstream_errors
                        .with_label_values(&[label])
                        .inc();
                    ctx.health.record_failure();
                    retry_transport(failure, can_retry, attempt)?
                }
                Ok(mut resp) => {
                    // One clock read for the time to first byte and the path's last
                    // success.
                    let answered = tokio::time::Instant::now();
                    let ttfb = answered - sent;
                    record.upstream_ttfb = Some(ttfb);
                    ctx.health.record_ttfb(ttfb);
                    let status = resp.status;
                    ctx.health.record_response(status, answered.into_std());
                    if status.is_success() {
                        // A stream's first event is looked at only while a retry is
                        // possible: an `error` event then is retried like a 529.
                        if !(ctx.stream && can_retry && crate::sse::is_event_stream(&resp.headers))
                        {
                            return Ok(Forwarded {
                                response: resp,
                                prefix: None,
                                relayed_via: None,
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
                                    relayed_via: None,
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
                        // Only the spend-limit 400 is told by its body: read the
                        // start of it (error bodies are small), and pass it on if
                        // the answer goes to the client after all.
                        let prefix = match key {
                            Some(_) if KeyPool::needs_body(status) => {
                                Some(read_start(&mut resp.body, self.config.read_timeout).await)
                            }
                            _ => None,
                        };
                        let verdict = key.and_then(|k| {
                            let v =
                                pool.observe(k, &scope, status, &resp.headers, prefix.as_deref())?;
                            note_verdict(ctx.metrics, pool, k, &v);
                            Some(v)
                        });
                        let f = match verdict {
                            Some(_) => Failure::KeyRefused,
                            None => Failure::Status(status),
                        };
                        let other_key = || pool.pick(&scope, None).is_ok();
                        if !(can_retry && retry::worth_retrying(&f, other_key)) {
                            return match verdict {
                                // The upstream refused the gateway's key, not the
                                // client's: the client is not told its key is wrong.
                                Some(v) if v.reason != Reason::RateLimited => {
                                    Err(refused_key_error(pool, &scope))
                                }
                                // An upstream 429 (no other organisation's key can
                                // serve the scope) or any other answer: as it came.
                                _ => Ok(Forwarded {
                                    response: resp,
                                    prefix,
                                    relayed_via: None,
                                }),
                            };
                        }
                        let cause = match (&verdict, label) {
                            (Some(v), _) if v.reason != Reason::RateLimited => v.reason.label(),
                            (_, Some(label)) => label,
                            _ => "status",
                        };
                        (cause, retry::pause(&f, attempt))
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

/// The start of an error answer's body: up to [`ERROR_BODY_PEEK`] bytes, or less if
/// the body ends or stalls first (what was read goes to the client either way).
async fn read_start(body: &mut UpstreamBody, wait: std::time::Duration) -> Bytes {
    use http_body_util::BodyExt;
    let mut buf = bytes::BytesMut::new();
    let deadline = tokio::time::Instant::now() + wait;
    while buf.len() < ERROR_BODY_PEEK {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            _ => break,
        }
    }
    buf.freeze()
}

/// Anthropic's error bodies are a few hundred bytes; the spend-limit text is near
/// the start of one.
const ERROR_BODY_PEEK: usize = 8 * 1024;

/// Counts and logs what an answer did to the pool: key label and organisation,
/// never the key.
fn note_verdict(metrics: &Metrics, pool: &KeyPool, key: KeyRef, v: &Verdict) {
    let (label, org) = (pool.label(key), pool.org_label(key));
    match v.reason {
        Reason::Revoked | Reason::Forbidden => {
            metrics
                .keys_retired
                .with_label_values(&[label, org, v.reason.label()])
                .inc();
            tracing::warn!(
                key = label,
                org,
                reason = v.reason.label(),
                "upstream key retired: the upstream refused it; it stays out of use until \
                 the pool's keys change (replace it)"
            );
        }
        Reason::RateLimited => {
            let scope = v.scope.as_ref().map(ScopeKey::metric_label);
            let scope = scope.as_deref().unwrap_or("all");
            metrics
                .key_cooldowns
                .with_label_values(&[label, org, scope, v.reason.label()])
                .inc();
            tracing::info!(
                key = label,
                org,
                scope,
                wait_s = v.wait.map_or(0.0, |w| w.as_secs_f64()),
                "upstream scope cooling down for the key's organisation"
            );
        }
        Reason::Billing | Reason::SpendLimit => {
            metrics
                .key_cooldowns
                .with_label_values(&[label, org, "all", v.reason.label()])
                .inc();
            tracing::warn!(
                key = label,
                org,
                reason = v.reason.label(),
                wait_s = v.wait.map_or(0.0, |w| w.as_secs_f64()),
                "upstream organisation resting after a billing or spend-limit error"
            );
        }
    }
}

/// The gateway's answer when no key can take a request.
fn no_key_error(none: NoKey) -> Error {
    match none {
        NoKey::Cooling { wait, scope } => {
            let label = scope.label();
            Error::new(
                ErrorKind::RateLimited,
                format!(
                    "every upstream key is cooling down for {label} after rate limiting; \
                     other models and endpoints are served; retry later"
                ),
            )
            .with_retry_after(wait)
            .with_upstream_scope(label)
        }
        NoKey::Unusable {
            retired,
            resting,
            wait,
        } => {
            let e = Error::new(
                ErrorKind::NoUpstreamKey,
                format!(
                    "no upstream key of the gateway can serve this request: {retired} refused \
                     by the upstream, {resting} resting after a billing or spend-limit error; \
                     the gateway's operator must act (this is not about your API key)"
                ),
            );
            match wait {
                Some(w) => e.with_retry_after(w),
                None => e,
            }
        }
    }
}

/// The answer when the upstream refused the key a request went with and no retry
/// is left: say so, and when another key can serve, that a retry will use it.
fn refused_key_error(pool: &KeyPool, scope: &Scope<'_>) -> Error {
    match pool.pick(scope, None) {
        Ok(_) => Error::new(
            ErrorKind::NoUpstreamKey,
            "the upstream refused the gateway's key for this request (not your API key); \
             that key is out of use now and a retry will use another",
        )
        .with_retry_after(std::time::Duration::from_secs(1)),
        Err(none) => no_key_error(none),
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
