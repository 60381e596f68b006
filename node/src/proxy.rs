//! The request pipeline: one function that takes a client request through the
//! phases in order (accept → authenticate → admit → route → forward → stream back →
//! account). Read this file first; each phase lives in its own module.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderValue, Response};

use crate::account::RequestRecord;
use crate::admit;
use crate::body::ClientBody;
use crate::defer::{DeferMode, RESULT_PATH};
use crate::deferred::api as deferred_api;
use crate::error::{Error, ErrorKind};
use crate::forward::{ForwardCtx, Forwarded, RelayedHeaders, UpstreamHeaders};
use crate::head::{ClientRequest, HeaderFields};
use crate::http1::Reply;
use crate::limits::{headers as limit_headers, Dim, RateView, Reservation, ScopeKind};
use crate::meta::{BodyKind, RouteKind};
use crate::route;
use crate::state::Shared;
use crate::stream::{ProxyBody, Relay, ReplyFields};

/// How a request was answered when it did not fail.
enum Answer {
    /// The upstream's response, relayed.
    Upstream(Forwarded, BodyKind),
    /// The gateway's own answer: a deferred request's 202, or the deferred API's.
    Local(Response<ProxyBody>),
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

/// Handles one request on the public listener. Never fails: every error becomes an
/// Anthropic-shaped response here.
///
/// An `async` block rather than an `async fn`: an `async fn` copies its arguments into
/// its body's own variables when first polled, and the request is 264 bytes; a block
/// uses what it captured where it lies.
#[allow(clippy::manual_async_fn)]
pub fn handle(
    shared: Arc<Shared>,
    mut req: ClientRequest,
    peer: SocketAddr,
) -> impl std::future::Future<Output = Reply<ProxyBody, ReplyFields>> {
    async move {
        let started = Instant::now();
        let path = req.uri.path();
        // DNS health checkers probe from outside, so health is on the public port too.
        if path == "/livez" || path == "/readyz" || path == "/readyz/local" {
            return Reply::new(crate::admin::health(&shared, path));
        }
        let request_id = shared.request_ids.next();
        let rid_header = HeaderValue::from_str(&request_id).expect("ids are ASCII");
        // The deferred API is the gateway's own, under the API's path space.
        let deferred_api = path.starts_with(RESULT_PATH);
        let route = if deferred_api {
            Ok(RouteKind::OtherV1)
        } else {
            admit::target::check(
                &req.method,
                path,
                shared.config.upstream.pass_unknown_routes,
            )
        };
        let header_bytes = req.headers.wire_size();
        // Boxed: the record travels from here through the reply into the relayed body,
        // and moved whole it was 448 bytes copied at each step. Built in its box, not
        // copied there.
        let mut record = crate::boxed::boxed(|| {
            RequestRecord::new(
                shared.metrics.clone(),
                shared.config.log.access_log,
                request_id,
                started,
                req.method.clone(),
                req.uri.clone(),
                *route.as_ref().unwrap_or(&RouteKind::OtherV1),
            )
        });
        let mut limits = LimitHeaders::None;
        let max_headers = shared.config.limits.max_header_bytes;
        let result = match route {
            _ if header_bytes > max_headers => Err(Error::new(
                ErrorKind::HeadersTooLarge,
                format!("request headers exceed the gateway limit of {max_headers} bytes"),
            )),
            Ok(route) => {
                phases(
                    &shared,
                    &mut req,
                    peer,
                    route,
                    deferred_api,
                    &mut record,
                    &mut limits,
                )
                .await
            }
            Err(refused) => Err(refused),
        };
        match result {
            Ok(Answer::Upstream(fwd, kind)) => {
                respond(&shared, fwd, kind, rid_header, record, limits)
            }
            Ok(Answer::Local(mut resp)) => {
                record.status = resp.status().as_u16();
                record.outcome = if resp.status() == http::StatusCode::ACCEPTED {
                    "deferred"
                } else {
                    "ok"
                };
                record.finish();
                resp.headers_mut()
                    .insert(crate::meta::REQUEST_ID, rid_header);
                Reply::new(resp)
            }
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
                let mut resp: Response<ProxyBody> = err.into_response(&rid_header);
                match &limits {
                    LimitHeaders::None => {}
                    LimitHeaders::Admitted(view) => limit_headers::apply(resp.headers_mut(), view),
                    LimitHeaders::Limited(view, dim, scope) => {
                        limit_headers::apply(resp.headers_mut(), view);
                        limit_headers::mark_limited(resp.headers_mut(), *dim, *scope);
                    }
                }
                Reply::new(resp)
            }
        }
    }
}

/// Phases 2 to 5. Returns the committed upstream response, or the gateway's own
/// answer (a deferral's 202, the deferred API). The request is borrowed (its body
/// taken out): given by value, its 264 bytes were copied into this future and then
/// into its variables, two `memcpy` calls a request.
async fn phases(
    shared: &Shared,
    req: &mut ClientRequest,
    peer: SocketAddr,
    route: RouteKind,
    deferred_api: bool,
    record: &mut RequestRecord,
    limits: &mut LimitHeaders,
) -> Result<Answer, Error> {
    let snap = shared.snapshot.load();

    // 2. authenticate: a request relayed by a peer node carries no client key; its
    // signature names the principal the first node authenticated.
    let relayed = crate::relay::is_relayed(&req.headers);
    let principal = if relayed {
        let path_and_query = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let Some(relays) = &shared.relay else {
            tracing::warn!(peer = %peer, "relayed request refused: this node has no cluster secret");
            return Err(Error::new(
                ErrorKind::Authentication,
                "relayed request refused: this node accepts no relayed requests",
            ));
        };
        let name = relays.verify(
            &req.method,
            path_and_query,
            &req.headers,
            req.client_cert,
            peer,
        )?;
        snap.auth.principal_named(&name).ok_or_else(|| {
            tracing::warn!(peer = %peer, "relayed request refused: its principal is unknown here");
            Error::new(
                ErrorKind::Authentication,
                "relayed request refused: unknown principal",
            )
        })?
    } else {
        snap.auth.authenticate(&req.headers)?
    };
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

    let deferral = shared.deferral.as_deref();
    if deferred_api {
        let body = std::mem::replace(&mut req.body, ClientBody::Full(None));
        let ClientRequest {
            method,
            uri,
            headers,
            ..
        } = &*req;
        let admitted = async {
            let (body, meta) = admit::admit_body(
                RouteKind::Messages,
                method,
                headers,
                body,
                shared.config.limits.max_body_bytes,
                &shared.body_budget,
            )
            .await?;
            record.stream = meta.stream;
            record.model = meta.model.clone();
            Ok((full_bytes(&body), meta))
        };
        // Boxed, like the other rare paths: inline, its state would size every
        // request's future.
        let answer = Box::pin(deferred_api::serve(
            deferral,
            snap.auth.mode(),
            &principal,
            method,
            uri.path(),
            headers,
            admitted,
        ))
        .await?;
        return Ok(Answer::Local(answer));
    }
    // `strait-defer`: only Messages requests may wait, and only where the node holds
    // the upstream keys (it never stores a client's own key).
    let defer = match DeferMode::parse(req.headers.get_known(crate::head::Known::StraitDefer))? {
        None => None,
        Some(_) if route != RouteKind::Messages => {
            return Err(Error::new(
                ErrorKind::InvalidRequest,
                "strait-defer applies to POST /v1/messages only",
            ))
        }
        Some(mode) => {
            deferred_api::available(deferral, snap.auth.mode())?;
            Some(mode)
        }
    };

    // 3. admit
    let body = std::mem::replace(&mut req.body, ClientBody::Full(None));
    let ClientRequest {
        method,
        uri,
        headers,
        ..
    } = &*req;
    let (body, meta) = admit::admit_body(
        route,
        method,
        headers,
        body,
        shared.config.limits.max_body_bytes,
        &shared.body_budget,
    )
    .await?;
    record.stream = meta.stream;

    // A request that may wait for good: made durable now; the limits count it when
    // it is delivered.
    if let (Some(DeferMode::Always), Some(deferral)) = (defer, deferral) {
        record.model = meta.model.clone();
        let req = deferred_api::enqueue_request(
            &principal,
            headers,
            uri.path(),
            full_bytes(&body),
            &meta,
            "always",
        );
        let accepted = deferral.enqueue(req).await?;
        return Ok(Answer::Local(deferred_api::accepted_response(&accepted)));
    }
    // `on-outage`: kept to be queued if no attempt reaches the upstream.
    let keep = match defer {
        Some(DeferMode::OnOutage) => Some((full_bytes(&body), meta.clone())),
        _ => None,
    };

    // 3b. limits: reserve the request, its tokens and a concurrency slot for the key
    // and its tenant. The permit settles when the record finishes.
    let reservation = Reservation::for_request(route, &meta, body.buffered_len());
    // The model goes to the record once forward is done with it (it names the
    // request's upstream limit scope until then).
    let model = meta.model;
    // A relayed request was counted by the node its client called: limits count once.
    // The limiter's answer is taken apart where it comes out (bound to a variable
    // first, its 192 bytes were copied twice more).
    if !relayed {
        match shared.limiter.admit(&principal.name, reservation).await {
            Ok(None) => {}
            Ok(Some(admission)) => {
                record.permit = Some(admission.permit);
                *limits = LimitHeaders::Admitted(admission.view);
            }
            Err(rejection) => {
                record.model = model;
                *limits = LimitHeaders::Limited(rejection.view, rejection.dim, rejection.scope);
                return Err(rejection.error);
            }
        }
    }

    // 4. route: decide how the request leaves: direct (the key is chosen per attempt
    // inside forward, for the request's upstream limit scope), or through a peer
    // region while the direct path's circuit is open. A relayed request is never
    // relayed again (hop limit 1).
    let scope = route::Scope::new(route, model.as_deref());
    let relays = shared.relay.as_ref().filter(|_| !relayed);
    // Read only by a node that relays: the rest skip the load.
    let peer_view = relays.map(|_| shared.health.cluster.relay_peers.load());
    let candidates = match &peer_view {
        Some(view) => route::relay_peers(view, &principal),
        None => Err(route::NoPeer::None),
    };
    // The direct path's circuit is open, or (when configured) a peer's path has been
    // much faster than ours for a while.
    let open = shared.health.upstream.status() == crate::health::Ready::Fail;
    let preferred = !open && relays.is_some_and(|r| r.prefers_peer());
    let open = open || preferred;
    let relay_now = match &candidates {
        Ok(peers) if open => peers.as_slice(),
        _ => &[],
    };
    let way_out = route::decide(
        snap.pool_for(&principal),
        snap.auth.mode(),
        scope,
        relay_now,
    );

    // 5. forward: carry the decision out.
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let outgoing = UpstreamHeaders::new(headers, peer, snap.auth.mode());
    let up = shared.upstream.config();
    let first_byte = if meta.stream {
        up.stream_idle_timeout
    } else {
        up.read_timeout
    } + up.send_timeout;
    // Through a peer when the route says so, or when the direct attempt could not
    // even connect (nothing was sent, so the same request may go another way);
    // otherwise the direct path's result. The relay's branches live in `Onward`, off
    // this future, so the common direct path moves its (large) result once.
    let onward = relays.map(|relays| Onward {
        shared,
        relays,
        pool: snap.pool_for(&principal),
        mode: snap.auth.mode(),
        scope,
        principal: &principal.name,
        method,
        path_and_query,
        outgoing: &outgoing,
        first_byte,
        stream: meta.stream,
    });
    let forwarded = match (way_out, onward) {
        (route::Route::Relay { peers }, Some(onward)) => {
            Box::pin(onward.relay(peers, preferred, body, record)).await
        }
        (way_out, onward) => {
            // Kept to relay if no attempt gets past connecting (a streamed upload
            // cannot be kept: it then gets the direct path's error).
            let spare = onward.as_ref().and_then(|_| body.try_clone());
            let ctx = ForwardCtx {
                route: way_out,
                metrics: &shared.metrics,
                health: &shared.health.upstream,
                stream: meta.stream,
                sent: Default::default(),
            };
            let mut direct = shared
                .upstream
                .forward(
                    &ctx,
                    method.clone(),
                    path_and_query,
                    &outgoing,
                    body,
                    record,
                )
                .await;
            // Checked by reference and replaced only when it relays, so the direct
            // answer is not moved through a match on its way out.
            let unsent = matches!(&direct, Err(e) if e.kind == ErrorKind::UpstreamConnect)
                && !ctx.sent.load(std::sync::atomic::Ordering::Relaxed);
            if let (true, Some(onward), Some(body)) = (unsent, onward, spare) {
                let taken =
                    std::mem::replace(&mut direct, Err(Error::new(ErrorKind::Internal, "relayed")));
                if let Err(e) = taken {
                    direct =
                        Box::pin(onward.after_connect_failure(e, &candidates, body, record)).await;
                }
            }
            direct
        }
    };
    record.model = model;
    if let (Some((body, meta)), Some(deferral)) = (keep, deferral) {
        if let Some(outage) = outage(&forwarded) {
            let req = deferred_api::enqueue_request(
                &principal,
                headers,
                uri.path(),
                body,
                &meta,
                "on_outage",
            );
            return match deferral.enqueue(req).await {
                Ok(accepted) => {
                    tracing::info!(request_id = %record.request_id, id = %accepted.id, "deferred after: {outage}");
                    Ok(Answer::Local(deferred_api::accepted_response(&accepted)))
                }
                Err(not_queued) => Err(Error {
                    message: format!(
                        "{} (the upstream could not be reached: {outage})",
                        not_queued.message
                    )
                    .into(),
                    ..not_queued
                }),
            };
        }
    }
    let fwd = forwarded?;

    let h = &fwd.response.headers;
    let encoded = h
        .get(&header::CONTENT_ENCODING)
        .is_some_and(|v| v != b"identity");
    let kind = if encoded {
        BodyKind::Plain
    } else if crate::sse::is_event_stream(h) {
        BodyKind::Sse
    } else if route == RouteKind::Messages && fwd.response.status.is_success() {
        BodyKind::MessagesJson
    } else {
        BodyKind::Plain
    };
    Ok(Answer::Upstream(fwd, kind))
}

/// The buffered body's bytes (Messages bodies are always buffered).
fn full_bytes(body: &crate::body::RequestBody) -> bytes::Bytes {
    match body {
        crate::body::RequestBody::Full(b) => b.clone().unwrap_or_default(),
        crate::body::RequestBody::Stream { .. } => bytes::Bytes::new(),
    }
}

/// Whether a forward's result means nothing reached a working upstream, so an
/// `on-outage` request may be queued: no connection, no usable key, or only error
/// answers (5xx, 529, 429) once the attempts ran out. A request that was sent and
/// then got no answer (a timeout, a cut) is not: its outcome is unknown.
fn outage(forwarded: &Result<Forwarded, Error>) -> Option<String> {
    match forwarded {
        Err(e) => match e.kind {
            ErrorKind::UpstreamConnect | ErrorKind::NoUpstreamKey => Some(e.message.to_string()),
            ErrorKind::RateLimited if e.upstream_scope.is_some() => Some(e.message.to_string()),
            _ => None,
        },
        Ok(fwd) => {
            let s = fwd.response.status.as_u16();
            (s == 429 || s >= 500).then(|| format!("the upstream answered {s}"))
        }
    }
}

/// Phase 6: the response goes back with the upstream's status and headers, and a body
/// relayed by [`Relay`], which also finishes the record (phase 7) when it is done.
fn respond(
    shared: &Shared,
    fwd: Forwarded,
    kind: BodyKind,
    request_id: HeaderValue,
    mut record: Box<RequestRecord>,
    limits: LimitHeaders,
) -> Reply<ProxyBody, ReplyFields> {
    let relayed_via = fwd.relayed_via;
    // The head goes to the reply's fields; the response stays in its box, which the
    // relay takes for the body (moved out, the body was two more `memcpy` calls).
    let mut upstream = fwd.response;
    let status = upstream.status;
    let upstream_headers = std::mem::replace(
        &mut upstream.headers,
        HeaderFields::Map(http::HeaderMap::new()),
    );
    // The upstream's rate-limit headers describe the shared organisation key; a
    // client with its own limits gets those instead. Both go to the writer beside the
    // body (see ReplyFields), not in the map.
    let rate_headers = match limits {
        LimitHeaders::Admitted(view) => Some(limit_headers::RateHeaders(view)),
        _ => None,
    };
    let relayed = RelayedHeaders::new(upstream_headers, rate_headers.is_some());
    let mut response = Response::new(());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if let Some(region) = relayed_via {
        headers.insert(crate::relay::RELAYED_VIA, region);
    }
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
    let relay = Relay::boxed(
        upstream,
        kind,
        fwd.prefix,
        idle,
        record,
        shared.drain_cut.clone(),
    );
    Reply {
        response: response.map(|()| ProxyBody::Relay(relay)),
        fields: ReplyFields {
            request_id: Some(request_id),
            relayed: Some(relayed),
            rate: rate_headers,
        },
    }
}

/// What the relay's branches of step 5 need: kept apart from `phases` so that the
/// direct path, taken by nearly every request, does not carry their state.
struct Onward<'a> {
    shared: &'a Shared,
    relays: &'a crate::relay::Relays,
    pool: &'a crate::route::KeyPool,
    mode: crate::config::KeyMode,
    scope: route::Scope<'a>,
    principal: &'a str,
    method: &'a http::Method,
    path_and_query: &'a str,
    outgoing: &'a UpstreamHeaders<'a>,
    first_byte: std::time::Duration,
    stream: bool,
}

impl Onward<'_> {
    /// Through `peers`, as the route decided. Relaying by preference while the direct
    /// path works, a request no peer could take (nothing was sent) still goes direct.
    async fn relay(
        self,
        peers: &[&crate::schema::NodeRecord],
        preferred: bool,
        body: crate::body::RequestBody,
        record: &mut RequestRecord,
    ) -> Result<Forwarded, Error> {
        let spare = preferred.then(|| body.try_clone()).flatten();
        let relayed = self
            .relays
            .send(
                peers,
                self.principal,
                self.method,
                self.path_and_query,
                self.outgoing,
                body,
                self.first_byte,
                record,
            )
            .await;
        match (relayed, spare) {
            (Err(e), Some(body)) if e.kind == ErrorKind::UpstreamConnect => {
                tracing::info!(request_id = %record.request_id, "no faster peer reachable: sent direct");
                let ctx = ForwardCtx {
                    route: route::decide(self.pool, self.mode, self.scope, &[]),
                    metrics: &self.shared.metrics,
                    health: &self.shared.health.upstream,
                    stream: self.stream,
                    sent: Default::default(),
                };
                self.shared
                    .upstream
                    .forward(
                        &ctx,
                        self.method.clone(),
                        self.path_and_query,
                        self.outgoing,
                        body,
                        record,
                    )
                    .await
            }
            (relayed, _) => relayed,
        }
    }

    /// The direct attempt could not connect and nothing was sent: the same request
    /// goes through a peer, unless residency leaves none (then the error says why).
    async fn after_connect_failure(
        self,
        e: Error,
        candidates: &Result<Vec<&crate::schema::NodeRecord>, route::NoPeer>,
        body: crate::body::RequestBody,
        record: &mut RequestRecord,
    ) -> Result<Forwarded, Error> {
        match candidates {
            Ok(peers) => self.relay(peers, false, body, record).await,
            Err(route::NoPeer::Residency) => Err(Error {
                message: format!(
                    "{}; not relayed: this API key may not be served in the regions whose \
                     nodes could carry it (its allowed regions)",
                    e.message
                )
                .into(),
                ..e
            }),
            Err(route::NoPeer::None) => Err(e),
        }
    }
}
