//! The consumer: every node of a region takes deliveries from the region's queue and
//! sends each request upstream once, through the same limits, key pool and forward
//! path as a live request.
//!
//! One delivery, in order: wait while the upstream path is failing (backoff, no hot
//! loop); `claim` the id (a lease, renewed while the request runs); wait for the
//! requester's limits; `mark_sent` just before the request goes upstream; forward;
//! read the whole answer; `finish` with it; then ack. What went wrong decides what
//! happens to the message:
//! - nothing reached the upstream (no connection, no usable key, a 5xx/529/429 after
//!   the retries): the id is released and the message requeued after a backoff
//!   (counting toward the delivery limit, past which it is dead-lettered);
//! - sent and no complete answer (a timeout, a cut): `outcome_unknown`, acked, never
//!   resent;
//! - any answer: stored as the result (a 400 included), acked.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method};
use http_body_util::BodyExt;

use crate::account::RequestRecord;
use crate::admit;
use crate::body::ClientBody;
use crate::defer::queue::{Acker, Delivery};
use crate::defer::store::{Claim, Finish, StoredResult};
use crate::defer::{now_ms, Deferral, DeferredId, Envelope};
use crate::error::{Error, ErrorKind};
use crate::forward::{ForwardCtx, UpstreamHeaders};
use crate::head::HeaderFields;
use crate::limits::Reservation;
use crate::meta::{RouteKind, Usage};
use crate::route;
use crate::schema::Ready;
use crate::state::Shared;

/// How often a waiting delivery looks at the path's circuit.
const PATH_POLL: Duration = Duration::from_millis(250);
/// Longest pause of a delivery waiting for the path, its limits or a requeue: also
/// how long after the path heals a waiting delivery may take to notice.
const MAX_PAUSE: Duration = Duration::from_secs(10);
/// Longest a delivery is held (retried in place) before its message is requeued:
/// well under RabbitMQ's `consumer_timeout` (30 min by default).
const HOLD_MAX: Duration = Duration::from_secs(600);
/// How often a delivery asks again about an id whose publisher is still deciding.
const PENDING_POLL: Duration = Duration::from_millis(50);
/// How often the depth and oldest-age gauges are read from the store.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

/// The consumer tasks of a node; [`Workers::stop`] ends them (after a drain).
pub struct Workers(Vec<tokio::task::JoinHandle<()>>);

impl Workers {
    /// Stops taking deliveries: unacked ones go back to the queue when the
    /// connection (or the spool) closes.
    pub fn stop(self) {
        for task in self.0 {
            task.abort();
        }
    }
}

/// Starts the consumers (the queue's and the dead-letter queue's) and the backlog
/// gauges. `node` names this node in claims (`holder`s).
pub fn spawn(shared: Arc<Shared>, deferral: Arc<Deferral>, node: String) -> Workers {
    Workers(vec![
        tokio::spawn(consume(shared, deferral.clone(), node)),
        tokio::spawn(consume_dead(deferral.clone())),
        tokio::spawn(backlog(deferral)),
    ])
}

async fn consume(shared: Arc<Shared>, deferral: Arc<Deferral>, node: String) {
    let mut deliveries = deferral.queue.consume(deferral.settings.prefetch);
    // The deliveries run in this set, so stopping the consumer (after a drain) stops
    // them too; the unsettled ones go back to the queue.
    let mut running = tokio::task::JoinSet::new();
    let mut seq: u64 = 0;
    loop {
        let delivery = tokio::select! {
            d = deliveries.recv() => match d {
                Some(d) => d,
                None => break,
            },
            Some(_) = running.join_next(), if !running.is_empty() => continue,
        };
        // A draining node starts no delivery. It does not requeue either (each
        // requeue counts toward the delivery limit, and a spool would hand the same
        // message straight back): the delivery waits, and goes back to the queue when
        // the process stops (or runs here once a cluster drain is lifted).
        wait_while_draining(&shared).await;
        seq += 1;
        let holder = format!("{node}/{seq}");
        running.spawn(deliver(shared.clone(), deferral.clone(), delivery, holder));
    }
}

/// Waits while the node drains (why it neither starts nor requeues: in `consume`).
async fn wait_while_draining(shared: &Shared) {
    while shared.health.is_draining() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Dead-lettered messages: the id ends as `dead_lettered` with its last error.
async fn consume_dead(deferral: Arc<Deferral>) {
    let mut dead = deferral.queue.consume_dead();
    while let Some(delivery) = dead.recv().await {
        if let Some(env) = &delivery.envelope {
            let id = &env.head.id;
            let last = match deferral.store.lookup(id).await {
                Ok(crate::defer::store::Lookup::Found(rec, _)) => rec.last_error,
                _ => None,
            };
            let error = last.unwrap_or_else(|| "over the delivery limit".into());
            match deferral
                .store
                .finish(id, None, Finish::Dead { error })
                .await
            {
                Ok(true) => {
                    deferral.metrics.dead_lettered.inc();
                    tracing::warn!(id = %id, "deferred request dead-lettered after the delivery limit");
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(id = %id, "deferred: cannot record a dead letter yet: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let _ = delivery.acker.requeue().await;
                    continue;
                }
            }
        }
        let _ = delivery.acker.ack().await;
    }
}

/// Keeps the depth and oldest-age gauges current.
async fn backlog(deferral: Arc<Deferral>) {
    loop {
        if let Ok(b) = deferral.store.backlog().await {
            deferral.metrics.depth.set(b.open as i64);
            let age = b
                .oldest_queued_at_ms
                .map_or(0, |t| now_ms().saturating_sub(t) / 1000);
            deferral.metrics.oldest_age_seconds.set(age as i64);
        }
        tokio::time::sleep(BACKLOG_EVERY).await;
    }
}

/// How one attempt at a delivery ended.
enum Attempt {
    /// An answer to store (the upstream's, or the gateway's own error).
    Done(StoredResult),
    /// Nothing reached the upstream: give the id back. `hold`: the failure says
    /// nothing about the request (the path, the keys, the store), so it is retried
    /// while the message is held; otherwise (an upstream error answer) the message
    /// is requeued and the delivery counts.
    NotSent { error: String, hold: bool },
    /// Sent, and no complete answer came back.
    Unknown(String),
    /// Another holder has the id now (our lease ran out): do nothing more.
    LostClaim,
}

async fn deliver(shared: Arc<Shared>, deferral: Arc<Deferral>, delivery: Delivery, holder: String) {
    let Delivery {
        envelope,
        delivery_count,
        acker,
    } = delivery;
    let m = &deferral.metrics;
    let Some(env) = envelope else {
        tracing::warn!("deferred: a queued message is not an envelope; dropped");
        m.delivered.with_label_values(&["malformed"]).inc();
        let _ = acker.ack().await;
        return;
    };
    let id = env.head.id.clone();
    let store = &deferral.store;
    let lease = deferral.settings.claim_lease;

    // Failures that say nothing about the request (the path down, no usable key,
    // the store away) are retried while the message is held, not requeued: only an
    // upstream's error answer counts toward the delivery limit, so a long outage does
    // not dead-letter what it was queued to survive.
    let held_since = tokio::time::Instant::now();
    let mut tries: u32 = 0;
    loop {
        tries += 1;
        // A held delivery starts no new attempt on a draining node either.
        wait_while_draining(&shared).await;
        wait_for_path(&shared, &deferral).await;
        let claim = loop {
            match store.claim(&id, &holder, lease).await {
                // Another region's id, moved here with its region's backlog (an
                // evacuation, docs/deferred.md): this region's store takes it over.
                Ok(Claim::Missing) if id.region() != deferral.region => {
                    match adopt(&deferral, &env).await {
                        Ok(()) => continue,
                        Err(e) => break Err(e),
                    }
                }
                // The publisher is a moment from writing `queued` (or removing it).
                Ok(Claim::Pending { until_ms }) if now_ms() < until_ms => {
                    tokio::time::sleep(PENDING_POLL).await;
                }
                other => break other,
            }
        };
        let claim = match claim {
            Ok(c) => c,
            // The store away says nothing about the request: held, like a path down.
            Err(e) if held_since.elapsed() < HOLD_MAX => {
                tracing::warn!(id = %id, "deferred: the store is unreachable, holding: {e}");
                pause(&deferral, backoff(tries)).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(id = %id, "deferred: the store is unreachable, requeueing: {e}");
                return requeue(&deferral, acker, delivery_count).await;
            }
        };
        match claim {
            Claim::Missing => {
                m.delivered.with_label_values(&["gone"]).inc();
                let _ = acker.ack().await;
                return;
            }
            Claim::Finished(_) => {
                m.redeliveries.with_label_values(&["skipped"]).inc();
                let _ = acker.ack().await;
                return;
            }
            Claim::HeldElsewhere { until_ms } | Claim::Pending { until_ms } => {
                // Never acked: if the holder dies, its lease runs out and this copy takes over.
                m.redeliveries.with_label_values(&["requeued"]).inc();
                let wait = Duration::from_millis(until_ms.saturating_sub(now_ms()));
                tokio::time::sleep(wait.clamp(Duration::from_millis(200), lease)).await;
                let _ = acker.requeue().await;
                return;
            }
            Claim::WasSent(_) if !deferral.settings.resend_unknown => {
                let error =
                    "sent upstream by a node that stopped before storing the answer".to_string();
                end(
                    &deferral,
                    &id,
                    &holder,
                    Finish::OutcomeUnknown { error },
                    acker,
                )
                .await;
                m.delivered.with_label_values(&["outcome_unknown"]).inc();
                return;
            }
            Claim::WasSent(_) | Claim::Mine(_) => {}
        }

        // The lease is renewed while the request runs: long generations take minutes.
        let renewer = {
            let (store, id, holder) = (store.clone(), id.clone(), holder.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(lease / 3).await;
                    match store.renew(&id, &holder, lease).await {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(e) => tracing::warn!(id = %id, "deferred: lease renewal failed: {e}"),
                    }
                }
            })
        };
        // Counts the delivery in `in_flight` from `sent` until its outcome is stored:
        // a drain waits for those (cut now, they would end as outcome unknown).
        let sending = Sending {
            count: &deferral.in_flight,
            marked: AtomicBool::new(false),
        };
        let outcome = attempt(&shared, &deferral, &env, &holder, &sending).await;
        renewer.abort();
        match outcome {
            Attempt::Done(result) => {
                let status = result.status;
                end(&deferral, &id, &holder, Finish::Done(result), acker).await;
                m.delivered.with_label_values(&["done"]).inc();
                tracing::info!(id = %id, status, "deferred request delivered");
            }
            Attempt::Unknown(error) => {
                tracing::warn!(id = %id, "deferred request sent, outcome unknown: {error}");
                end(
                    &deferral,
                    &id,
                    &holder,
                    Finish::OutcomeUnknown { error },
                    acker,
                )
                .await;
                m.delivered.with_label_values(&["outcome_unknown"]).inc();
            }
            Attempt::NotSent { error, hold } => {
                // Nothing is under way upstream any more: a drain need not wait for
                // the pause below.
                drop(sending);
                if let Err(e) = store.release(&id, &holder, &error).await {
                    tracing::warn!(id = %id, "deferred: cannot release the claim (its lease will run out): {e}");
                }
                if hold && held_since.elapsed() < HOLD_MAX {
                    tracing::debug!(id = %id, tries, "deferred delivery not sent, held: {error}");
                    pause(&deferral, backoff(tries)).await;
                    continue;
                }
                tracing::info!(id = %id, attempt = delivery_count + 1, "deferred delivery not sent, requeued: {error}");
                m.redeliveries.with_label_values(&["requeued"]).inc();
                requeue(&deferral, acker, delivery_count).await;
            }
            Attempt::LostClaim => {
                m.redeliveries.with_label_values(&["requeued"]).inc();
                let _ = acker.requeue().await;
            }
        }
        return;
    }
}

/// Records an evacuated id from another region in this region's store, queued, so
/// the state machine runs here (the message is the only copy: the shovel moved it).
async fn adopt(deferral: &Deferral, env: &Envelope) -> crate::error::Result<()> {
    let new = crate::defer::store::NewRecord {
        id: env.head.id.clone(),
        owner: env.head.owner.clone(),
        fingerprint: crate::defer::fingerprint(&env.body),
        queued_at_ms: env.head.queued_at_ms,
    };
    deferral.store.create(&new).await?;
    deferral.store.mark_queued(&new.id).await?;
    tracing::info!(id = %new.id, "deferred: an id of region {} taken over here", new.id.region());
    Ok(())
}

/// Stores how the id ended, then acks: the result is written before the message
/// goes. A store that cannot be written is tried again for about a lease; after that
/// the message is requeued (the next delivery finds the id `sent`).
async fn end(
    deferral: &Deferral,
    id: &DeferredId,
    holder: &str,
    finish: Finish,
    acker: Box<dyn Acker>,
) {
    let mut pause = Duration::from_millis(200);
    let give_up = tokio::time::Instant::now() + deferral.settings.claim_lease;
    loop {
        match deferral
            .store
            .finish(id, Some(holder), finish.clone())
            .await
        {
            Ok(_) => break,
            Err(e) if tokio::time::Instant::now() < give_up => {
                tracing::warn!(id = %id, "deferred: cannot store the outcome yet: {e}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::error!(id = %id, "deferred: the outcome could not be stored: {e}");
                let _ = acker.requeue().await;
                return;
            }
        }
    }
    if let Err(e) = acker.ack().await {
        // The broker will deliver it again; the id is final, so that copy is skipped.
        tracing::debug!(id = %id, "deferred: ack failed: {e}");
    }
}

/// Back to the queue after a backoff that grows with the message's deliveries.
async fn requeue(deferral: &Deferral, acker: Box<dyn Acker>, delivery_count: u32) {
    pause(deferral, backoff(delivery_count)).await;
    let _ = acker.requeue().await;
}

/// A delivery between `sent` and its stored outcome, counted while it lives.
struct Sending<'a> {
    count: &'a AtomicUsize,
    marked: AtomicBool,
}

impl Sending<'_> {
    fn mark(&self) {
        if !self.marked.swap(true, Ordering::Relaxed) {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        if self.marked.load(Ordering::Relaxed) {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Waits `d`, counted in the `paused` gauge.
async fn pause(deferral: &Deferral, d: Duration) {
    deferral.metrics.paused.inc();
    tokio::time::sleep(d).await;
    deferral.metrics.paused.dec();
}

/// 1 s, 2 s, 4 s, ... up to [`MAX_PAUSE`], with jitter (0.5x to 1.5x).
fn backoff(n: u32) -> Duration {
    let base = Duration::from_secs(1)
        .saturating_mul(1 << n.min(5))
        .min(MAX_PAUSE);
    base.mul_f64(0.5 + rand::random::<f64>())
}

/// While the direct path's circuit is open (the active probes and failed requests
/// say the upstream cannot be reached), waits for it to close, up to [`MAX_PAUSE`]:
/// the probes close it within a probe interval of the path healing, and after the
/// pause the delivery tries anyway (without probes, its attempt is the probe).
async fn wait_for_path(shared: &Shared, deferral: &Deferral) {
    if shared.health.upstream.status() != Ready::Fail {
        return;
    }
    deferral.metrics.paused.inc();
    let until = tokio::time::Instant::now() + MAX_PAUSE;
    while shared.health.upstream.status() == Ready::Fail && tokio::time::Instant::now() < until {
        tokio::time::sleep(PATH_POLL).await;
    }
    deferral.metrics.paused.dec();
}

async fn attempt(
    shared: &Shared,
    deferral: &Deferral,
    env: &Envelope,
    holder: &str,
    sending: &Sending<'_>,
) -> Attempt {
    let snap = shared.snapshot.load();
    let head = &env.head;
    let Some(principal) = snap.auth.principal_named(&head.owner) else {
        return Attempt::Done(error_result(&Error::new(
            ErrorKind::Authentication,
            "the API key that queued this request no longer exists",
        )));
    };
    if !principal.region_allowed(&shared.config.region) {
        return Attempt::Done(error_result(&Error::new(
            ErrorKind::Permission,
            format!(
                "this API key may not be served in region {}",
                shared.config.region
            ),
        )));
    }
    let mut map = HeaderMap::new();
    map.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for (name, value) in [
        ("anthropic-version", &head.anthropic_version),
        ("anthropic-beta", &head.anthropic_beta),
    ] {
        if let Some(v) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
            map.insert(name, v);
        }
    }
    let fields = HeaderFields::Map(map);
    let admitted = admit::admit_body(
        RouteKind::Messages,
        &Method::POST,
        &fields,
        ClientBody::Full(Some(env.body.clone())),
        shared.config.limits.max_body_bytes,
        &shared.body_budget,
    )
    .await;
    let (body, meta) = match admitted {
        Ok(a) => a,
        Err(e) if e.kind == ErrorKind::Unavailable => {
            return Attempt::NotSent {
                error: e.message.into(),
                hold: true,
            }
        }
        Err(e) => return Attempt::Done(error_result(&e)),
    };

    let mut record = RequestRecord::new(
        shared.metrics.clone(),
        shared.config.log.access_log,
        head.id.to_string(),
        std::time::Instant::now(),
        Method::POST,
        head.path
            .parse()
            .unwrap_or_else(|_| http::Uri::from_static("/v1/messages")),
        RouteKind::Messages,
    );
    record.client = Some(principal.name.clone());
    record.stream = meta.stream;
    // Counted against the requester's limits like any request: wait for room.
    let reservation = Reservation::for_request(RouteKind::Messages, &meta, body.buffered_len());
    loop {
        match shared.limiter.admit(&principal.name, reservation).await {
            Ok(None) => break,
            Ok(Some(admission)) => {
                record.permit = Some(admission.permit);
                break;
            }
            Err(rejection) => match rejection.error.retry_after {
                Some(after) => pause(deferral, after.min(MAX_PAUSE)).await,
                // It can never fit (max_tokens over the limit, say): that is its answer.
                None => return Attempt::Done(error_result(&rejection.error)),
            },
        }
    }

    match deferral.store.mark_sent(&head.id, holder).await {
        Ok(true) => sending.mark(),
        Ok(false) => return Attempt::LostClaim,
        Err(e) => {
            return Attempt::NotSent {
                error: format!("the deferred store is unreachable ({e})"),
                hold: true,
            }
        }
    }
    let scope = route::Scope::new(RouteKind::Messages, meta.model.as_deref());
    // Deliveries wait on the direct path's circuit; they are not relayed.
    let way_out = route::decide(snap.pool_for(&principal), snap.auth.mode(), scope, &[]);
    let peer = SocketAddr::from(([127, 0, 0, 1], 0));
    let outgoing = UpstreamHeaders::new(&fields, peer, snap.auth.mode());
    let ctx = ForwardCtx {
        route: way_out,
        metrics: &shared.metrics,
        health: &shared.health.upstream,
        stream: meta.stream,
        sent: Default::default(),
    };
    let forwarded = shared
        .upstream
        .forward(&ctx, Method::POST, &head.path, &outgoing, body, &mut record)
        .await;
    record.model = meta.model.clone();
    let fwd = match forwarded {
        Ok(fwd) => fwd,
        Err(e) => {
            record.status = e.status().as_u16();
            record.error = Some(e.label());
            record.finish();
            return match e.kind {
                ErrorKind::UpstreamConnect | ErrorKind::NoUpstreamKey => Attempt::NotSent {
                    error: e.message.into(),
                    hold: true,
                },
                ErrorKind::RateLimited if e.upstream_scope.is_some() => Attempt::NotSent {
                    error: e.message.into(),
                    hold: true,
                },
                ErrorKind::UpstreamTimeout | ErrorKind::UpstreamProtocol => {
                    Attempt::Unknown(e.message.into())
                }
                _ => Attempt::Done(error_result(&e)),
            };
        }
    };
    let status = fwd.response.status;
    record.status = status.as_u16();
    if status.as_u16() == 429 || status.is_server_error() {
        // The API's overload or an error answer: the request was not run.
        record.finish();
        return Attempt::NotSent {
            error: format!("the upstream answered {status}"),
            hold: false,
        };
    }
    let content_type = fwd
        .response
        .headers
        .get(&http::header::CONTENT_TYPE)
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::to_string);
    let sse = crate::sse::is_event_stream(&fwd.response.headers);
    let wait = if sse {
        shared.upstream.config().stream_idle_timeout
    } else {
        shared.upstream.config().read_timeout
    };
    let mut body = fwd.response.body;
    let mut buf = BytesMut::new();
    if let Some(prefix) = fwd.prefix {
        buf.extend_from_slice(&prefix);
    }
    let limit = deferral.settings.max_result_bytes as usize;
    loop {
        match tokio::time::timeout(wait, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > limit {
                        record.finish();
                        return Attempt::Done(error_result(&Error::new(
                            ErrorKind::UpstreamProtocol,
                            format!("the upstream's answer is over deferred.max_result_bytes ({limit} bytes) and was not stored"),
                        )));
                    }
                    buf.extend_from_slice(&data);
                }
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                record.error = Some("upstream_protocol");
                record.finish();
                return Attempt::Unknown(format!("the upstream's answer was cut ({e})"));
            }
            Err(_) => {
                record.error = Some("upstream_timeout");
                record.finish();
                return Attempt::Unknown("the upstream's answer stalled".into());
            }
        }
    }
    let body = buf.freeze();
    if status.is_success() {
        record.usage = if sse {
            sse_usage(&body)
        } else {
            crate::stream::parse_json_usage(std::slice::from_ref(&body)).unwrap_or_default()
        };
    }
    record.bytes_out = body.len() as u64;
    record.outcome = "ok";
    record.finish();
    Attempt::Done(StoredResult {
        status: status.as_u16(),
        content_type,
        body,
    })
}

/// The gateway's own error, stored as the result `GET` answers with.
fn error_result(e: &Error) -> StoredResult {
    StoredResult {
        status: e.status().as_u16(),
        content_type: Some("application/json".into()),
        body: Bytes::from(e.body_json()),
    }
}

/// Usage of a whole stored stream: `message_start` carries the input tokens,
/// `message_delta` the output so far (the last one counts).
fn sse_usage(body: &[u8]) -> Usage {
    let mut usage = Usage::default();
    for line in body.split(|&b| b == b'\n') {
        let Some(data) = line.strip_prefix(b"data:") else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(data.trim_ascii()) else {
            continue;
        };
        let u = match v["type"].as_str() {
            Some("message_start") => &v["message"]["usage"],
            Some("message_delta") => &v["usage"],
            _ => continue,
        };
        if let Ok(part) = serde_json::from_value::<Usage>(u.clone()) {
            usage.input_tokens = usage.input_tokens.max(part.input_tokens);
            usage.output_tokens = usage.output_tokens.max(part.output_tokens);
            usage.cache_creation_input_tokens = usage
                .cache_creation_input_tokens
                .max(part.cache_creation_input_tokens);
            usage.cache_read_input_tokens = usage
                .cache_read_input_tokens
                .max(part.cache_read_input_tokens);
        }
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_usage_takes_input_from_the_start_and_output_from_the_last_delta() {
        let body = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":40}}\n\n";
        let u = sse_usage(body);
        assert_eq!((u.input_tokens, u.output_tokens), (12, 40));
    }

    #[test]
    fn backoff_grows_to_its_cap() {
        assert!(backoff(0) <= Duration::from_millis(1500));
        for _ in 0..20 {
            assert!(backoff(30) <= MAX_PAUSE.mul_f64(1.5));
            assert!(backoff(30) >= MAX_PAUSE / 2);
        }
    }
}
