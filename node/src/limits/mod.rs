//! Phase 3, admit (continued): per-key and per-tenant rate limits, token budgets and
//! concurrency, decided in process ([`local`]) or through Redis ([`redis`]).
//!
//! The hot-path API is [`Limiter::admit`]: it reserves one request, the estimated input
//! tokens and `max_tokens` output tokens, and one concurrency slot, for the client key
//! and its tenant at once (all or nothing). The returned [`Permit`] travels with the
//! request's [`RequestRecord`](crate::account::RequestRecord); when the record is
//! finished the permit settles with the real usage (refunding the unused part) and
//! gives the concurrency slot back.
//!
//! Windows: requests and tokens per minute count in a 60 s window that starts with the
//! first request after the previous one ended (so `reset` is exact and a burst never
//! straddles two windows' worth of quota); daily tokens likewise in a 24 h window.
//!
//! Layout: `scope` (what is limited), `permit` (what an admitted request carries and
//! how it settles), `decision` (the headers' quotas and refusals), `metrics`, the two
//! backends [`local`] and [`redis`], and [`headers`] (the response headers); the
//! [`Limiter`] in front of them is here.

mod decision;
pub mod headers;
pub mod local;
mod metrics;
mod permit;
pub mod redis;
mod scope;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;

use crate::config::{Config, LimitMode, RedisSettings};
use crate::error::{Error, ErrorKind, Result};
pub use crate::limit_spec::{Dim, LimitSpec};
pub use decision::{Denial, Quota, RateView, Rejection};
pub use metrics::LimiterMetrics;
pub use permit::{Actual, Admission, Permit, PermitData, Reservation, Settle, Stamp};
pub use scope::{Scope, ScopeKind, Subject};

/// Length of the per-minute windows (RPM, ITPM, OTPM).
pub const MINUTE: Duration = Duration::from_secs(60);
/// Length of the daily token window.
pub const DAY: Duration = Duration::from_secs(86_400);
/// `retry-after` for a request refused for concurrency: slots free up as streams end.
pub const CONCURRENCY_RETRY: Duration = Duration::from_secs(1);

/// The backend that decides. Enum dispatch keeps the hot path free of boxed futures.
enum Backend {
    Local(Arc<local::LocalLimiter>),
    Redis(Arc<redis::RedisLimiter>),
}

/// The node's limiter: scopes from the config, and the backend that keeps their state.
pub struct Limiter {
    scopes: Arc<Vec<Scope>>,
    /// By principal name. foldhash rather than SipHash: the names come from the config,
    /// never from a caller, so there is no flooding to resist, and SipHash was most of
    /// the lookup's cost on every request.
    subjects: HashMap<Arc<str>, Subject, foldhash::fast::RandomState>,
    backend: Backend,
    metrics: LimiterMetrics,
    has_redis: bool,
    degraded_flag: Arc<AtomicBool>,
    /// Limits for keys that come from the cluster config (etcd), rebuilt as a whole
    /// when those limits change; keys of the node's own config are checked first.
    cluster: arc_swap::ArcSwapOption<Limiter>,
    /// What `cluster` was built from, so an unrelated config change rebuilds nothing.
    cluster_source: std::sync::Mutex<Vec<ClusterKeyLimits>>,
    /// Built from the node config: the defaults and Redis settings the cluster tier reuses.
    defaults: (LimitSpec, Option<RedisSettings>),
}

/// One client key's limits as the cluster config states them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterKeyLimits {
    /// The principal name requests are admitted under.
    pub name: String,
    pub limits: LimitSpec,
    /// The key's tenant and the tenant's limits.
    pub tenant: Option<(String, LimitSpec)>,
}

impl Limiter {
    /// Builds the limiter for a config. With `[redis]` configured this starts the
    /// background tasks (settlement, lease sync, slot heartbeats, reconnect probe) and
    /// does not wait for Redis: a node starts degraded if Redis is down.
    pub fn new(config: &Config, registry: &Registry) -> Result<Limiter> {
        let metrics = LimiterMetrics::new(registry);
        let rl = &config.rate_limits;
        let tenants: Vec<(String, LimitSpec)> = rl
            .tenants
            .iter()
            .map(|t| (t.name.clone(), t.limits))
            .collect();
        let mut keys: Vec<(String, Option<String>, LimitSpec)> = config
            .auth
            .client_keys
            .iter()
            .map(|k| (k.name.clone(), k.tenant.clone(), k.limits.or(rl.default)))
            .collect();
        if config.key_mode() == crate::config::KeyMode::Anonymous {
            // Without client keys every caller is the one "anonymous" principal.
            keys.push(("anonymous".to_string(), None, rl.default));
        }
        let degraded_flag = Arc::new(AtomicBool::new(false));
        let limiter = Self::build(
            &tenants,
            &keys,
            rl.redis.as_ref(),
            metrics.clone(),
            degraded_flag,
        )?;
        if let Some(settings) = &rl.redis {
            metrics.nodes.set(i64::from(settings.expected_nodes));
        }
        Ok(Limiter {
            defaults: (rl.default, rl.redis.clone()),
            ..limiter
        })
    }

    /// Scopes and backend for a set of tenants and keys (name, tenant, limits).
    fn build(
        tenants: &[(String, LimitSpec)],
        keys: &[(String, Option<String>, LimitSpec)],
        redis: Option<&RedisSettings>,
        metrics: LimiterMetrics,
        degraded_flag: Arc<AtomicBool>,
    ) -> Result<Limiter> {
        let mut scopes = Vec::new();
        let mut tenant_index = HashMap::new();
        for (name, limits) in tenants {
            if limits.is_empty() || tenant_index.contains_key(name) {
                continue;
            }
            tenant_index.insert(name.clone(), scopes.len());
            scopes.push(Scope {
                kind: ScopeKind::Tenant,
                name: Arc::from(name.as_str()),
                spec: *limits,
                tag: format!("t:{name}"),
            });
        }
        let mut subjects = HashMap::with_hasher(foldhash::fast::RandomState::default());
        let mut add_key =
            |name: &str, tenant: Option<&String>, spec: LimitSpec, scopes: &mut Vec<Scope>| {
                let tenant_idx = tenant.and_then(|t| tenant_index.get(t).copied());
                let key_idx = (!spec.is_empty()).then(|| {
                    scopes.push(Scope {
                        kind: ScopeKind::Key,
                        name: Arc::from(name),
                        spec,
                        tag: match tenant {
                            Some(t) => format!("t:{t}"),
                            None => format!("k:{name}"),
                        },
                    });
                    scopes.len() - 1
                });
                if key_idx.is_some() || tenant_idx.is_some() {
                    subjects.insert(
                        Arc::from(name),
                        Subject {
                            scopes: [key_idx, tenant_idx],
                        },
                    );
                }
            };
        for (name, tenant, limits) in keys {
            add_key(name, tenant.as_ref(), *limits, &mut scopes);
        }
        let scopes = Arc::new(scopes);
        let (backend, has_redis) = match redis {
            None => (
                Backend::Local(Arc::new(local::LocalLimiter::new(
                    scopes.iter().map(|s| s.spec).collect(),
                ))),
                false,
            ),
            Some(settings) => {
                let r = redis::RedisLimiter::start(
                    settings.clone(),
                    scopes.clone(),
                    metrics.clone(),
                    degraded_flag.clone(),
                )?;
                (Backend::Redis(r), true)
            }
        };
        Ok(Limiter {
            scopes,
            subjects,
            backend,
            metrics,
            has_redis,
            degraded_flag,
            cluster: arc_swap::ArcSwapOption::empty(),
            cluster_source: std::sync::Mutex::new(Vec::new()),
            defaults: (LimitSpec::default(), None),
        })
    }

    /// Applies the limits the cluster config gives its client keys (and their
    /// tenants). Keys without limits of their own get `[limits.default]`, as file keys
    /// do. Rebuilds the cluster tier only when these limits changed; its in-process
    /// counters then start afresh (with Redis the state lives in Redis and carries over).
    pub fn apply_cluster_limits(&self, mut keys: Vec<ClusterKeyLimits>) -> Result<()> {
        keys.sort_by(|a, b| a.name.cmp(&b.name));
        let mut source = self
            .cluster_source
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *source == keys {
            return Ok(());
        }
        let (default, redis) = &self.defaults;
        let tenants: Vec<(String, LimitSpec)> =
            keys.iter().filter_map(|k| k.tenant.clone()).collect();
        let entries: Vec<(String, Option<String>, LimitSpec)> = keys
            .iter()
            .map(|k| {
                (
                    k.name.clone(),
                    k.tenant.as_ref().map(|t| t.0.clone()),
                    k.limits.or(*default),
                )
            })
            .collect();
        let tier = Self::build(
            &tenants,
            &entries,
            redis.as_ref(),
            self.metrics.clone(),
            self.degraded_flag.clone(),
        )?;
        if let (Backend::Redis(r), Some(n)) = (&tier.backend, self.node_count()) {
            r.set_node_count(n);
        }
        self.cluster
            .store((!tier.subjects.is_empty()).then(|| Arc::new(tier)));
        *source = keys;
        Ok(())
    }

    /// With Redis: waits (at most one op timeout) for the first connection, so a node
    /// that starts next to a healthy Redis shares limits from its first request.
    pub async fn connect(&self) {
        if let Backend::Redis(r) = &self.backend {
            r.connect().await;
        }
    }

    /// Redis round trips made so far (benchmarks); `None` without Redis.
    pub fn redis_round_trips(&self) -> Option<u64> {
        match &self.backend {
            Backend::Local(_) => None,
            Backend::Redis(r) => Some(r.round_trips.load(Ordering::Relaxed)),
        }
    }

    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
    }

    /// Every limited scope (the node config's, then the cluster config's) with what it
    /// used in its current windows by [`Dim::ALL`]. With Redis, the cluster-wide figures
    /// of a background read at most a couple of seconds old (`None` until the first read
    /// and while Redis is unreachable). Read by `/stats`, never on the hot path.
    pub fn usage(&self) -> Vec<(Scope, Option<[u64; 5]>)> {
        let mut out: Vec<_> = self
            .scopes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let used = match &self.backend {
                    Backend::Local(l) => Some(l.usage(i)),
                    Backend::Redis(r) => r.usage(i),
                };
                (s.clone(), used)
            })
            .collect();
        if let Some(tier) = self.cluster.load_full() {
            out.extend(tier.usage());
        }
        out
    }

    /// The scopes a principal is limited by; `None` when no limits apply to it.
    pub fn subject(&self, principal: &str) -> Option<Subject> {
        self.subjects.get(principal).copied()
    }

    /// Tells the limiter how many nodes share each limit (the live count from etcd
    /// membership). Without Redis every node is alone and this changes nothing.
    pub fn set_node_count(&self, nodes: usize) {
        if let Backend::Redis(r) = &self.backend {
            r.set_node_count(u32::try_from(nodes).unwrap_or(u32::MAX));
            self.metrics.nodes.set(i64::from(r.node_count()));
        }
        if let Some(tier) = self.cluster.load_full() {
            tier.set_node_count(nodes);
        }
    }

    /// Nodes sharing each limit as the limiter currently assumes; `None` without Redis.
    pub fn node_count(&self) -> Option<u32> {
        match &self.backend {
            Backend::Local(_) => None,
            Backend::Redis(r) => Some(r.node_count()),
        }
    }

    /// Whether Redis is configured, and if so whether it is currently unreachable.
    pub fn redis_state(&self) -> Option<bool> {
        self.has_redis
            .then(|| self.degraded_flag.load(Ordering::Relaxed))
    }

    pub fn mode(&self) -> Option<LimitMode> {
        match &self.backend {
            Backend::Local(_) => None,
            Backend::Redis(r) => Some(r.mode()),
        }
    }

    /// Phase 3: reserves the request's quota for its key and tenant. `Ok(None)` when
    /// the principal has no limits.
    ///
    /// One body for the key's own limits and the cluster tier's, with the answer built
    /// where it is returned: each `async` layer and variable it passed through copied
    /// its 192 bytes (a `memcpy` call each; docs/benchmarks.md).
    pub async fn admit(
        &self,
        principal: &str,
        res: Reservation,
    ) -> std::result::Result<Option<Admission>, Rejection> {
        let tier;
        let (limiter, subject) = match self.subject(principal) {
            Some(subject) => (self, subject),
            None => {
                tier = self.cluster.load_full();
                match tier
                    .as_deref()
                    .and_then(|t| Some((t, t.subject(principal)?)))
                {
                    Some(found) => found,
                    None => return Ok(None),
                }
            }
        };
        // A request that can never fit is refused without touching shared state.
        for i in subject.iter() {
            let spec = &limiter.scopes[i].spec;
            for d in [Dim::InputTokens, Dim::OutputTokens, Dim::DailyTokens] {
                if let Some(limit) = spec.get(d) {
                    if res.amount(d) > limit {
                        let denial = Denial {
                            scope: i,
                            dim: d,
                            retry_after: MINUTE,
                            never: true,
                            view: Box::default(),
                        };
                        return Err(limiter.reject(denial, res));
                    }
                }
            }
        }
        match &limiter.backend {
            Backend::Local(l) => match l.admit(subject, res) {
                Ok((data, view)) => {
                    limiter.metrics.admitted.inc();
                    Ok(Some(Admission {
                        permit: Permit::new(data, l.clone()),
                        view,
                    }))
                }
                Err(denial) => Err(limiter.reject(denial, res)),
            },
            // Boxed: the Redis exchange's state is larger than all the rest of a
            // request's admission; inline, it would size every request's future,
            // those the local limiter decides too.
            Backend::Redis(r) => match Box::pin(r.admit(subject, res)).await {
                Ok((permit, view)) => {
                    limiter.metrics.admitted.inc();
                    Ok(Some(Admission { permit, view }))
                }
                Err(denial) => Err(limiter.reject(denial, res)),
            },
        }
    }

    fn reject(&self, d: Denial, res: Reservation) -> Rejection {
        let scope = &self.scopes[d.scope];
        self.metrics
            .decisions
            .with_label_values(&["limited", d.dim.label(), scope.kind.label()])
            .inc();
        let limit = scope.spec.get(d.dim).unwrap_or(0);
        let message = if d.never {
            format!(
                "this request needs {} {} but the {} {:?} is limited to {} by the gateway",
                res.amount(d.dim),
                d.dim.describe(),
                scope.kind.label(),
                &*scope.name,
                limit
            )
        } else {
            format!(
                "rate limit exceeded: the {} {:?} is limited to {} {} by the gateway",
                scope.kind.label(),
                &*scope.name,
                limit,
                d.dim.describe()
            )
        };
        let error = Error::new(ErrorKind::RateLimited, message)
            .with_retry_after(d.retry_after.max(Duration::from_secs(1)));
        Rejection {
            error,
            dim: d.dim,
            scope: scope.kind,
            view: *d.view,
        }
    }
}

/// Converts a duration to whole milliseconds for Redis arguments.
pub(crate) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
