//! What every connection shares: the configuration, the live snapshot of keys and
//! pools (swapped whole when the cluster config changes), the upstream client, the
//! limiter, metrics, health and request ids. Built by [`crate::server`], read by the
//! pipeline, the admin endpoints and the cluster supervisor.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::StatusCode;

use crate::admit::budget::BodyBudget;
use crate::auth::{Authenticator, Principal};
use crate::config::{Config, KeyMode};
use crate::forward::Upstream;
use crate::health::{Health, LocalInputs, Ready, ReadyInputs};
use crate::limits::Limiter;
use crate::metrics::Metrics;
use crate::route::{Census, KeyPool, PoolSettings};
use crate::stream::DrainCut;

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
            pool: KeyPool::new(
                &config.upstream.keys,
                PoolSettings::from_config(&config.upstream),
                None,
            ),
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

    /// Keys by state over every pool.
    pub fn census(&self) -> Census {
        let mut total = self.pool.census();
        for (_, p) in &self.named_pools {
            total.add(p.census());
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
    /// Fired at the drain deadline: every response still being relayed ends (phase 6).
    pub drain_cut: Arc<DrainCut>,
    /// Memory for buffered request bodies (`limits.max_inflight_body_bytes`).
    pub body_budget: Arc<BodyBudget>,
    /// The deferred queue and store; `None` on a passthrough node alone (it cannot
    /// defer: it would have to store the client's key).
    pub deferral: Option<Arc<crate::defer::Deferral>>,
    /// Relay through peer regions, both sides; `None` without a cluster secret.
    pub relay: Option<crate::relay::Relays>,
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
    /// The `/readyz` answer (DNS-facing), shared by the admin and public listeners.
    pub fn readiness(&self) -> (StatusCode, String) {
        self.health.readiness(&self.ready_inputs())
    }

    /// The overall `/readyz` status alone, for the node record.
    pub fn ready(&self) -> Ready {
        self.health.ready(&self.ready_inputs())
    }

    /// The `/readyz/local` answer: can this node take work (the upstream path aside).
    pub fn local_readiness(&self) -> (StatusCode, String) {
        self.health.local_readiness(&LocalInputs {
            // Admin connections count too: at most 256, a rounding error beside the cap.
            connections: self.metrics.downstream_connections.get().max(0) as usize,
            max_connections: self.config.limits.max_connections,
            body_bytes: self.body_budget.in_flight(),
            body_budget: self.config.limits.max_inflight_body_bytes,
        })
    }

    fn ready_inputs(&self) -> ReadyInputs {
        let snap = self.snapshot.load();
        let census = snap.census();
        ReadyInputs {
            keys_total: census.total,
            keys_ready: census.ready,
            keys_usable: census.usable(),
            keys_retired: census.retired,
            keys_resting: census.resting,
            cooled_messages_scopes: census
                .cooled_scopes
                .into_iter()
                .filter(|s| s.starts_with("messages"))
                .collect(),
            passthrough: snap.auth.mode() == KeyMode::Passthrough,
            limiter_redis: self.limiter.redis_state(),
            deferred: self.deferral.as_ref().map(|d| {
                let up = |s| s == crate::defer::BackendState::Up;
                [
                    (d.queue.kind(), up(d.queue.state())),
                    (d.store.kind(), up(d.store.state())),
                ]
            }),
        }
    }
}
