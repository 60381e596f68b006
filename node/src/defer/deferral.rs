//! [`Deferral`]: the queue and the store opened from the config, and the one way a
//! request is made durable ([`Deferral::enqueue`]: recorded, published, confirmed).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::metrics::DeferMetrics;
use super::queue::Queue;
use super::store::{Created, NewRecord, State, Store};
use super::{fingerprint, now_ms, BackendState, DeferredId, Envelope, EnvelopeHead};
use crate::config::{Config, Deferred as Settings};
use crate::error::{Error, ErrorKind, Result};

/// The queue, the store and what the node needs to use them.
pub struct Deferral {
    pub queue: Arc<dyn Queue>,
    pub store: Arc<dyn Store>,
    pub settings: Settings,
    pub region: String,
    pub metrics: DeferMetrics,
    /// Deliveries of this node sent upstream whose outcome is not stored yet: a drain
    /// waits for them (one cut now would end as `outcome_unknown`); deliveries still
    /// waiting for the path or their limits do not hold a drain up.
    pub in_flight: std::sync::atomic::AtomicUsize,
}

/// A request to make durable.
pub struct Enqueue<'a> {
    /// The client key's name.
    pub owner: &'a str,
    pub idempotency_key: Option<&'a str>,
    pub path: &'a str,
    pub anthropic_version: Option<&'a str>,
    pub anthropic_beta: Option<&'a str>,
    pub stream: bool,
    pub model: Option<&'a str>,
    pub body: Bytes,
    /// `on_outage` or `always`, for the metrics.
    pub how: &'static str,
}

/// A durable request: the 202's id and state.
pub struct Accepted {
    pub id: DeferredId,
    pub state: State,
}

impl Deferral {
    /// Opens the backends the config names: RabbitMQ and Redis with `--amqp`, else the
    /// embedded spool. Neither needs to be reachable at start (their state shows in
    /// `/readyz`); only a spool that cannot be opened is an error.
    pub async fn open(config: &Config, registry: &prometheus::Registry) -> Result<Deferral> {
        let settings = config.deferred.clone();
        let region = config.region.clone();
        let (queue, store) = open_backends(&settings, &region).await?;
        tracing::info!(
            queue = queue.kind(),
            store = store.kind(),
            region = %region,
            "deferred delivery ready"
        );
        Ok(Deferral {
            queue,
            store,
            settings,
            region,
            metrics: DeferMetrics::register(registry),
            in_flight: Default::default(),
        })
    }

    /// Makes the request durable: recorded in the store, published, confirmed. `Ok`
    /// only once the queue confirmed (or the id already exists: an idempotency key
    /// used again); otherwise an error whose message says it was NOT queued.
    pub async fn enqueue(&self, req: Enqueue<'_>) -> Result<Accepted> {
        let id = match req.idempotency_key {
            Some(k) => DeferredId::idempotent(&self.region, req.owner, k),
            None => DeferredId::random(&self.region),
        };
        let new = NewRecord {
            id: id.clone(),
            owner: req.owner.to_string(),
            fingerprint: fingerprint(&req.body),
            queued_at_ms: now_ms(),
        };
        let created = self.store.create(&new).await.map_err(|e| {
            self.metrics.not_queued.with_label_values(&["store"]).inc();
            not_queued("the deferred store is unreachable", e)
        })?;
        match created {
            Created::New => {}
            Created::Existing(rec) => {
                if rec.owner != new.owner {
                    // Ids of other owners cannot collide (the owner is hashed in);
                    // refuse rather than reveal anything if one ever does.
                    return Err(Error::new(ErrorKind::Conflict, "idempotency key conflict"));
                }
                if rec.fingerprint != new.fingerprint {
                    return Err(Error::new(
                        ErrorKind::IdempotencyMismatch,
                        "this Idempotency-Key was already used with a different request body",
                    ));
                }
                if rec.state != State::Pending {
                    self.metrics.idempotent_hits.inc();
                    return Ok(Accepted {
                        id,
                        state: rec.state,
                    });
                }
                // Recorded, but its publish never confirmed (the node died, or the
                // broker failed): publish again. A second copy in the queue is
                // harmless; the state machine delivers an id once.
            }
        }
        let envelope = Envelope {
            head: EnvelopeHead {
                id: id.clone(),
                owner: req.owner.to_string(),
                path: req.path.to_string(),
                anthropic_version: req.anthropic_version.map(str::to_string),
                anthropic_beta: req.anthropic_beta.map(str::to_string),
                stream: req.stream,
                model: req.model.map(str::to_string),
                queued_at_ms: new.queued_at_ms,
            },
            body: req.body,
        };
        let started = Instant::now();
        if let Err(e) = self.queue.publish(&envelope).await {
            self.metrics.not_queued.with_label_values(&["queue"]).inc();
            if let Err(forget) = self.store.abandon(&id).await {
                tracing::warn!(id = %id, "deferred: cannot remove the unconfirmed record: {forget}");
            }
            return Err(e);
        }
        self.metrics
            .publish_seconds
            .observe(started.elapsed().as_secs_f64());
        // Confirmed: the 202 is honest from here on. A failure to move the record to
        // `queued` leaves it `pending`, which consumers treat alike.
        if let Err(e) = self.store.mark_queued(&id).await {
            tracing::warn!(id = %id, "deferred: queued, but the record stays pending: {e}");
        }
        self.metrics.queued.with_label_values(&[req.how]).inc();
        Ok(Accepted {
            id,
            state: State::Queued,
        })
    }

    /// The backends' states for `/readyz` (`warn` when either is down).
    pub fn backend_states(&self) -> (BackendState, BackendState) {
        (self.queue.state(), self.store.state())
    }
}

/// How long a starting node waits for its broker before it serves without it.
const BROKER_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// RabbitMQ and Redis with `--amqp`, else the embedded spool.
async fn open_backends(
    settings: &Settings,
    region: &str,
) -> Result<(Arc<dyn Queue>, Arc<dyn Store>)> {
    match &settings.amqp_url {
        Some(url) => {
            let redis = settings.redis_url.as_deref().ok_or_else(|| {
                Error::config("deferred.amqp_url needs deferred.redis (or a limiter Redis)")
            })?;
            let store = super::redis_store::RedisStore::new(redis, region, settings).await?;
            for w in store.durability_warnings().await {
                tracing::warn!("deferred store: {w}");
            }
            let queue = super::amqp::AmqpQueue::connect(url, region, settings).await?;
            // A node that starts with its broker up takes deferrals from its first
            // request; with the broker down it starts anyway (deferral answers 503).
            if !queue.wait_connected(BROKER_WAIT).await {
                tracing::warn!(
                    "the deferred queue's broker did not answer within {BROKER_WAIT:?}: \
                     deferral answers 503 until it does"
                );
            }
            Ok((Arc::new(queue), Arc::new(store)))
        }
        None => {
            let spool = super::spool::Spool::open(&settings.spool_dir, region, settings).await?;
            Ok((spool.clone(), spool))
        }
    }
}

/// The 503 for a request that could not be made durable.
pub fn not_queued(why: &str, cause: Error) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        format!("the request was NOT queued: {why}; retry later"),
    )
    .with_detail(cause)
    .with_retry_after(std::time::Duration::from_secs(5))
}
