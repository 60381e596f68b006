//! The request pipeline: one function that takes a client request through the
//! phases in order (accept → authenticate → admit → route → forward → stream back →
//! account). Read this file first; each phase lives in its own module.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::{header, HeaderValue, Response, StatusCode};

use crate::account::{Metrics, RequestRecord};
use crate::admit::{self, RouteKind};
use crate::auth::{Authenticator, Principal};
use crate::body::ProxyBody;
use crate::config::{Config, KeyMode};
use crate::error::{Error, ErrorKind};
use crate::forward::{
    ForwardCtx, Forwarded, RelayedHeaders, Upstream, UpstreamHeaders, UpstreamResponse,
};
use crate::head::ClientRequest;
use crate::health::{Health, ReadyInputs};
use crate::limits::{headers as limit_headers, Dim, Limiter, RateView, Reservation, ScopeKind};
use crate::route::KeyPool;
use crate::stream::{self, BodyKind, Relay};

/// The parts of configuration that can change while the node runs, swapped as one
/// snapshot so a request sees a consistent view without taking a lock.
pub struct Snapshot {
    pub auth: Authenticator,
    /// The default upstream pool: file and environment keys, plus the cluster's
    /// `default` pool.
    pub pool: KeyPool,
    /// Named upstream pools from the cluster config; `Principal::pool` N > 0 is
    /// `named_pools[N - 1]`.
    pub named_pools: Vec<(String, KeyPool)>,
    /// etcd revision of the cluster config in this snapshot; 0 for the file config.
    pub revision: i64,
}

impl Snapshot {
    pub fn new(config: &Config) -> Self {
        Snapshot {
            auth: Authenticator::new(config),
            pool: KeyPool::new(&config.upstream.keys, config.upstream.key_cooldown),
            named_pools: Vec::new(),
            revision: 0,
        }
    }

    /// The pool that serves `principal`.
    pub fn pool_for(&self, principal: &Principal) -> &KeyPool {
        match principal.pool {
            0 => &self.pool,
            n => self.named_pools.get(n - 1).map_or(&self.pool, |(_, p)| p),
        }
    }

    /// Upstream keys in every pool.
    pub fn upstream_key_count(&self) -> usize {
        self.pool.len() + self.named_pools.iter().map(|(_, p)| p.len()).sum::<usize>()
    }

    /// Keys ready, cooling (transient) and exhausted, over every pool.
    pub fn census(&self) -> (usize, usize, usize) {
        let mut total = self.pool.census();
        for (_, p) in &self.named_pools {
            let (r, t, e) = p.census();
            total = (total.0 + r, total.1 + t, total.2 + e);
        }
        total
    }
}

/// Everything a request handler needs, shared by all connections.
pub struct Shared {
    pub config: Arc<Config>,
    pub snapshot: ArcSwap<Snapshot>,
    pub upstream: Upstream,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub request_ids: RequestIds,
    /// Rate limits, concurrency and token budgets (phase 3).
    pub limiter: Arc<Limiter>,
}

/// What the limiter said about a request, for its response headers.
#[derive(Default)]
enum LimitHeaders {
    /// No limits apply to this client: upstream headers pass unchanged.
    #[default]
    None,
    Admitted(RateView),
    Limited(RateView, Dim, ScopeKind),
}

/// Request ids: a per-process random prefix and a counter, cheap and unique enough to
/// find one request across the client, the node's log and the upstream.
pub struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

impl RequestIds {
    pub fn new() -> Self {
        RequestIds {
            prefix: format!("strait_{:08x}", rand::random::<u32>()),
            next: AtomicU64::new(1),
        }
    }

    pub fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut id = String::with_capacity(self.prefix.len() + 17);
        id.push_str(&self.prefix);
        id.push('_');
        // Lower-case hex without the formatting machinery: this runs on every request.
        let digits = (64 - n.leading_zeros()).div_ceil(4).max(1);
        for i in (0..digits).rev() {
            id.push(char::from(
                b"0123456789abcdef"[((n >> (4 * i)) & 0xf) as usize],
            ));
        }
        id
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

impl Shared {
    /// The readiness answer, shared by the admin and public listeners.
    pub fn readiness(&self) -> (StatusCode, String) {
        let snap = self.snapshot.load();
        let (ready, _transient, exhausted) = snap.census();
        let inputs = ReadyInputs {
            keys_ready: ready,
            keys_exhausted: exhausted,
            keys_total: ready + _transient + exhausted,
            passthrough: snap.auth.mode() == KeyMode::Passthrough,
            limiter_redis: self.limiter.redis_state(),
        };
        self.health.readiness(&inputs)
    }
}

/// Handles one request on the public listener. Never fails: every error becomes an
/// Anthropic-shaped response here.
pub async fn handle(
    shared: Arc<Shared>,
    req: ClientRequest,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let path = req.uri.path();
    // DNS health checkers probe from outside, so health is on the public port too.
    if path == "/livez" || path == "/readyz" {
        return crate::admin::health(&shared, path);
    }
    let request_id = shared.request_ids.next();
    let rid_header = HeaderValue::from_str(&request_id).expect("ids are ASCII");
    let route = RouteKind::classify(path);
    let header_bytes = req.headers.wire_size();
    let mut record = RequestRecord {
        metrics: shared.metrics.clone(),
        access_log: shared.config.log.access_log,
        request_id,
        started,
        method: req.method.clone(),
        uri: req.uri.clone(),
        route: route.unwrap_or(RouteKind::OtherV1),
        client: None,
        model: None,
        stream: false,
        status: 0,
        upstream_key: None,
        attempts: 0,
        upstream_ttfb: None,
        ttft: None,
        usage: Default::default(),
        error: None,
        outcome: "error",
        bytes_out: 0,
        permit: None,
    };
    let mut limits = LimitHeaders::None;
    let max_headers = shared.config.limits.max_header_bytes;
    let result = match route {
        _ if header_bytes > max_headers => Err(Error::new(
            ErrorKind::HeadersTooLarge,
            format!("request headers exceed the gateway limit of {max_headers} bytes"),
        )),
        Some(route) => phases(&shared, req, peer, route, &mut record, &mut limits).await,
        None => Err(Error::new(
            ErrorKind::NotFound,
            "not found: the gateway relays /v1/ paths of the Anthropic API",
        )),
    };
    match result {
        Ok((fwd, kind)) => respond(&shared, fwd, kind, rid_header, record, limits),
        Err(err) => {
            record.status = err.status().as_u16();
            record.error = Some(err.label());
            shared
                .metrics
                .gateway_errors
                .with_label_values(&[err.anthropic_type()])
                .inc();
            if err.kind == ErrorKind::Internal || err.kind == ErrorKind::UpstreamConnect {
                tracing::warn!(request_id = %record.request_id, "{err}");
            } else {
                tracing::debug!(request_id = %record.request_id, "{err}");
            }
            record.finish();
            let mut resp = err.into_response(&rid_header);
            match &limits {
                LimitHeaders::None => {}
                LimitHeaders::Admitted(view) => limit_headers::apply(resp.headers_mut(), view),
                LimitHeaders::Limited(view, dim, scope) => {
                    limit_headers::apply(resp.headers_mut(), view);
                    limit_headers::mark_limited(resp.headers_mut(), *dim, *scope);
                }
            }
            resp
        }
    }
}

/// Phases 2 to 5. Returns the committed upstream response.
async fn phases(
    shared: &Shared,
    req: ClientRequest,
    peer: SocketAddr,
    route: RouteKind,
    record: &mut RequestRecord,
    limits: &mut LimitHeaders,
) -> Result<(Forwarded, BodyKind), Error> {
    let snap = shared.snapshot.load();

    // 2. authenticate
    let principal = snap.auth.authenticate(&req.headers)?;
    record.client = Some(principal.name.clone());
    // Region policy: a key pinned to other regions is never served here, whatever
    // DNS did with the client.
    if let Some(cluster) = &shared.config.cluster {
        if !principal.region_allowed(&cluster.region) {
            return Err(Error::new(
                ErrorKind::Permission,
                format!(
                    "this API key may not be served in region {}",
                    cluster.region
                ),
            ));
        }
    }

    // 3. admit
    let ClientRequest {
        method,
        uri,
        headers,
        body,
        ..
    } = req;
    let (body, meta) = admit::admit_body(
        route,
        &method,
        &headers,
        body,
        shared.config.limits.max_body_bytes,
    )
    .await?;
    record.stream = meta.stream;

    // 3b. limits: reserve the request, its tokens and a concurrency slot for the key
    // and its tenant. The permit settles when the record finishes.
    let reservation = Reservation::for_request(route, &meta, body.buffered_len());
    record.model = meta.model;
    match shared.limiter.admit(&principal.name, reservation).await {
        Ok(None) => {}
        Ok(Some(admission)) => {
            record.permit = Some(admission.permit);
            *limits = LimitHeaders::Admitted(admission.view);
        }
        Err(rejection) => {
            *limits = LimitHeaders::Limited(rejection.view, rejection.dim, rejection.scope);
            return Err(rejection.error);
        }
    }

    // 4. route: the direct path; the key is chosen per attempt inside forward.
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let outgoing = UpstreamHeaders::new(&headers, peer, snap.auth.mode());

    // 5. forward
    let ctx = ForwardCtx {
        pool: snap.pool_for(&principal),
        mode: snap.auth.mode(),
        metrics: &shared.metrics,
        health: &shared.health.upstream,
        stream: meta.stream,
    };
    let fwd = shared
        .upstream
        .forward(&ctx, method, path_and_query, &outgoing, body, record)
        .await?;

    let h = &fwd.response.headers;
    let encoded = h
        .get(&header::CONTENT_ENCODING)
        .is_some_and(|v| v != b"identity");
    let kind = if encoded {
        BodyKind::Plain
    } else if stream::is_event_stream(h) {
        BodyKind::Sse
    } else if route == RouteKind::Messages && fwd.response.status.is_success() {
        BodyKind::MessagesJson
    } else {
        BodyKind::Plain
    };
    Ok((fwd, kind))
}

/// Phase 6: the response goes back with the upstream's status and headers, and a body
/// relayed by [`Relay`], which also finishes the record (phase 7) when it is done.
fn respond(
    shared: &Shared,
    fwd: Forwarded,
    kind: BodyKind,
    request_id: HeaderValue,
    mut record: RequestRecord,
    limits: LimitHeaders,
) -> Response<ProxyBody> {
    let UpstreamResponse {
        status,
        headers: upstream_headers,
        body,
    } = fwd.response;
    // The upstream's rate-limit headers describe the shared organisation key; a
    // client with its own limits gets those instead. Both are written by the server
    // from the relay (see RelayedHeaders and RateHeaders), not put in the map.
    let rate_headers = match limits {
        LimitHeaders::Admitted(view) => Some(limit_headers::RateHeaders(view)),
        _ => None,
    };
    let relayed = RelayedHeaders::new(upstream_headers, rate_headers.is_some());
    let mut response = Response::new(());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(crate::REQUEST_ID, request_id);
    let idle = if kind == BodyKind::Sse {
        // Proxies in front (nginx and similar) must not buffer the stream either.
        headers.insert(
            http::HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        );
        shared.upstream.config().stream_idle_timeout
    } else {
        shared.upstream.config().read_timeout
    };
    record.status = status.as_u16();
    let mut relay = Relay::new(body, kind, fwd.prefix, idle, record);
    relay.rate_headers = rate_headers;
    relay.relayed = Some(relayed);
    response.map(|()| ProxyBody::Relay(Box::new(relay)))
}
