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

pub mod headers;
pub mod local;
pub mod redis;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

use crate::config::{Config, LimitMode, RedisSettings};
use crate::error::{Error, ErrorKind, Result};
pub use crate::limit_spec::{Dim, LimitSpec};
use crate::meta::{RequestMeta, RouteKind, Usage};

/// Length of the per-minute windows (RPM, ITPM, OTPM).
pub const MINUTE: Duration = Duration::from_secs(60);
/// Length of the daily token window.
pub const DAY: Duration = Duration::from_secs(86_400);
/// `retry-after` for a request refused for concurrency: slots free up as streams end.
pub const CONCURRENCY_RETRY: Duration = Duration::from_secs(1);

/// What a request asks for at admission. Requests and concurrency count 1 each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reservation {
    /// Estimated input tokens.
    pub input: u64,
    /// Output tokens reserved: the request's `max_tokens`.
    pub output: u64,
}

impl Reservation {
    /// Tokens are reserved for Messages requests only: input estimated as body bytes / 4
    /// (the JSON around the text makes this an over-estimate, refunded at settlement),
    /// output as `max_tokens`.
    pub fn for_request(route: RouteKind, meta: &RequestMeta, body_len: usize) -> Reservation {
        if route != RouteKind::Messages {
            return Reservation::default();
        }
        Reservation {
            input: (body_len as u64 / 4).max(1),
            output: meta.max_tokens.unwrap_or(0),
        }
    }

    pub fn amount(&self, d: Dim) -> u64 {
        match d {
            Dim::Requests | Dim::Concurrency => 1,
            Dim::InputTokens => self.input,
            Dim::OutputTokens => self.output,
            Dim::DailyTokens => self.input.saturating_add(self.output),
        }
    }
}

/// Whether a scope is a client key or a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeKind {
    Key,
    Tenant,
}

impl ScopeKind {
    pub fn label(self) -> &'static str {
        match self {
            ScopeKind::Key => "key",
            ScopeKind::Tenant => "tenant",
        }
    }
}

/// One limited thing: a client key or a tenant, with its effective limits.
#[derive(Debug, Clone)]
pub struct Scope {
    pub kind: ScopeKind,
    pub name: Arc<str>,
    pub spec: LimitSpec,
    /// Redis Cluster hash tag: a key's state lives with its tenant's, so one script
    /// can check both atomically (`t:<tenant>` or, without a tenant, `k:<key>`).
    pub tag: String,
}

/// The scopes a request is checked against: its key, and its key's tenant. Indices
/// into [`Limiter::scopes`]; the key always comes first (lock order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subject {
    pub scopes: [Option<usize>; 2],
}

impl Subject {
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.scopes.iter().flatten().copied()
    }
}

/// Limit, remaining and reset of one dimension, for the response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u64,
    pub remaining: u64,
    pub reset: SystemTime,
}

/// What the `anthropic-ratelimit-*` headers say: per dimension, the tightest of the
/// key's and the tenant's quotas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateView {
    pub requests: Option<Quota>,
    pub input: Option<Quota>,
    pub output: Option<Quota>,
}

impl RateView {
    /// Adds one scope's quota for a dimension, keeping the one with less remaining.
    pub fn merge(&mut self, d: Dim, q: Quota) {
        let slot = match d {
            Dim::Requests => &mut self.requests,
            Dim::InputTokens => &mut self.input,
            Dim::OutputTokens => &mut self.output,
            _ => return,
        };
        match slot {
            Some(cur) if cur.remaining <= q.remaining => {}
            _ => *slot = Some(q),
        }
    }

    /// Adds one scope's per-minute quotas (requests, input and output tokens: `k` 0, 1
    /// and 2, as the backends index their window counters) for the dimensions `spec`
    /// limits; `remaining(k, limit)` says what is left of the k-th.
    #[inline]
    pub(crate) fn merge_windows(
        &mut self,
        spec: &LimitSpec,
        reset: SystemTime,
        remaining: impl Fn(usize, u64) -> u64,
    ) {
        for (k, d) in [Dim::Requests, Dim::InputTokens, Dim::OutputTokens]
            .into_iter()
            .enumerate()
        {
            if let Some(limit) = spec.get(d) {
                self.merge(
                    d,
                    Quota {
                        limit,
                        remaining: remaining(k, limit),
                        reset,
                    },
                );
            }
        }
    }
}

/// A refusal: which scope and dimension, and when to come back.
#[derive(Debug, Clone)]
pub struct Denial {
    pub scope: usize,
    pub dim: Dim,
    pub retry_after: Duration,
    /// The request alone exceeds the limit; waiting will not help.
    pub never: bool,
    /// Boxed: refusals are the rare path, and this keeps `Result`s small.
    pub view: Box<RateView>,
}

/// A refused request, ready for the client: the error (429 `rate_limit_error` with
/// `retry-after`) and the headers to add.
#[derive(Debug)]
pub struct Rejection {
    pub error: Error,
    pub dim: Dim,
    pub scope: ScopeKind,
    pub view: RateView,
}

/// Where each scope's windows stood at admission, so a refund lands in the same window
/// (or is dropped if that window has ended).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamp {
    pub window: i64,
    pub day: i64,
}

/// What a request really used, decided when its record finishes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Actual {
    pub input: u64,
    pub output: u64,
}

/// The backend side of a permit: settles usage and frees the concurrency slot.
pub trait Settle: Send + Sync {
    fn settle(&self, permit: &PermitData, actual: Actual);
}

/// Everything a backend needs to settle a permit.
#[derive(Debug, Clone)]
pub struct PermitData {
    pub subject: Subject,
    pub reservation: Reservation,
    pub stamps: [Stamp; 2],
}

/// An admitted request's reservation. Settle it with [`Permit::settle`]; dropping it
/// unsettled charges the full reservation (the safe assumption for a request whose
/// outcome is unknown) and still frees the concurrency slot.
pub struct Permit {
    data: PermitData,
    backend: Arc<dyn Settle>,
    settled: bool,
}

impl Permit {
    pub fn new(data: PermitData, backend: Arc<dyn Settle>) -> Permit {
        Permit {
            data,
            backend,
            settled: false,
        }
    }

    pub fn reservation(&self) -> Reservation {
        self.data.reservation
    }

    /// Settles with the usage read from the response. `outcome` is the record's: a
    /// stream cut short (`client_gone`, `upstream_failed`) may have used more than was
    /// read, so it is charged at least its reservation; anything else is charged what
    /// the upstream reported (zero for error responses, which carry no usage).
    pub fn settle(mut self, usage: &Usage, outcome: &str) {
        let reported = Actual {
            input: usage
                .input_tokens
                .saturating_add(usage.cache_creation_input_tokens),
            output: usage.output_tokens,
        };
        let actual = match outcome {
            "client_gone" | "upstream_failed" => Actual {
                input: reported.input.max(self.data.reservation.input),
                output: reported.output.max(self.data.reservation.output),
            },
            _ => reported,
        };
        self.settled = true;
        self.backend.settle(&self.data, actual);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.settled {
            let r = self.data.reservation;
            self.backend.settle(
                &self.data,
                Actual {
                    input: r.input,
                    output: r.output,
                },
            );
        }
    }
}

/// The decision for an admitted request.
pub struct Admission {
    pub permit: Permit,
    pub view: RateView,
}

/// Metrics of the limiter, registered in the node's registry.
#[derive(Clone)]
pub struct LimiterMetrics {
    /// `strait_limiter_decisions_total{result, dimension, scope}`.
    pub decisions: IntCounterVec,
    /// `strait_limiter_degraded`: 1 while Redis is unreachable and safe shares apply.
    pub degraded: IntGauge,
    /// `strait_limiter_redis_ops_total{op}`: Redis round trips by kind.
    pub redis_ops: IntCounterVec,
    /// `strait_limiter_redis_errors_total{op}`.
    pub redis_errors: IntCounterVec,
    /// `strait_limiter_lease_refills_total`: leased-mode refills (slow path).
    pub lease_refills: prometheus::IntCounter,
    /// `strait_limiter_nodes`: nodes each shared limit is divided among (safe share).
    pub nodes: IntGauge,
    /// The `result="admitted"` series, resolved once: it is bumped on every request.
    admitted: prometheus::IntCounter,
}

impl LimiterMetrics {
    pub fn new(registry: &Registry) -> LimiterMetrics {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let degraded = IntGauge::new(
            "limiter_degraded",
            "1 while Redis is unreachable and each limit falls back to this node's safe share",
        )
        .expect("valid metric");
        registry
            .register(Box::new(degraded.clone()))
            .expect("unique metric");
        let lease_refills = prometheus::IntCounter::new(
            "limiter_lease_refills_total",
            "Leased mode: quota chunks taken from Redis",
        )
        .expect("valid metric");
        registry
            .register(Box::new(lease_refills.clone()))
            .expect("unique metric");
        let nodes = IntGauge::new(
            "limiter_nodes",
            "Nodes sharing each limit, for safe shares and lease sizes (live count with etcd)",
        )
        .expect("valid metric");
        registry
            .register(Box::new(nodes.clone()))
            .expect("unique metric");
        let decisions = counter(
            "limiter_decisions_total",
            "Limiter decisions by result, limiting dimension and scope",
            &["result", "dimension", "scope"],
        );
        LimiterMetrics {
            admitted: decisions.with_label_values(&["admitted", "", ""]),
            decisions,
            degraded,
            nodes,
            redis_ops: counter(
                "limiter_redis_ops_total",
                "Limiter round trips to Redis, by operation",
                &["op"],
            ),
            redis_errors: counter(
                "limiter_redis_errors_total",
                "Limiter Redis operations that failed or timed out",
                &["op"],
            ),
            lease_refills,
        }
    }
}

/// The backend that decides. Enum dispatch keeps the hot path free of boxed futures.
enum Backend {
    Local(Arc<local::LocalLimiter>),
    Redis(Arc<redis::RedisLimiter>),
}

/// The node's limiter: scopes from the config, and the backend that keeps their state.
pub struct Limiter {
    scopes: Arc<Vec<Scope>>,
    subjects: HashMap<Arc<str>, Subject>,
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
        let mut subjects = HashMap::new();
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
    pub async fn admit(
        &self,
        principal: &str,
        res: Reservation,
    ) -> std::result::Result<Option<Admission>, Rejection> {
        if let Some(subject) = self.subject(principal) {
            return self.admit_subject(subject, res).await;
        }
        let tier = self.cluster.load_full();
        match tier
            .as_ref()
            .and_then(|t| t.subject(principal).map(|s| (t, s)))
        {
            Some((tier, subject)) => tier.admit_subject(subject, res).await,
            None => Ok(None),
        }
    }

    async fn admit_subject(
        &self,
        subject: Subject,
        res: Reservation,
    ) -> std::result::Result<Option<Admission>, Rejection> {
        // A request that can never fit is refused without touching shared state.
        for i in subject.iter() {
            let spec = &self.scopes[i].spec;
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
                        return Err(self.reject(denial, res));
                    }
                }
            }
        }
        let result = match &self.backend {
            Backend::Local(l) => l
                .admit(subject, res)
                .map(|(data, view)| (Permit::new(data, l.clone()), view)),
            Backend::Redis(r) => r.admit(subject, res).await,
        };
        match result {
            Ok((permit, view)) => {
                self.metrics.admitted.inc();
                Ok(Some(Admission { permit, view }))
            }
            Err(denial) => Err(self.reject(denial, res)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quick_start_limits() {
        let s = LimitSpec::parse("rpm=60, itpm=40000,otpm=8000,concurrency=4").unwrap();
        assert_eq!(s.rpm, Some(60));
        assert_eq!(s.concurrency, Some(4));
        assert_eq!(s.daily_tokens, None);
        assert!(LimitSpec::parse("rpm=x").is_err());
        assert!(LimitSpec::parse("rps=1")
            .unwrap_err()
            .contains("unknown limit"));
        assert!(LimitSpec::parse("").unwrap().is_empty());
    }

    #[test]
    fn safe_share_rounds_down_but_never_to_zero() {
        let s = LimitSpec {
            rpm: Some(100),
            concurrency: Some(2),
            otpm: Some(0),
            ..Default::default()
        }
        .safe_share(3);
        assert_eq!((s.rpm, s.concurrency, s.otpm), (Some(33), Some(1), Some(0)));
    }

    #[test]
    fn key_limits_override_defaults_field_by_field() {
        let d = LimitSpec {
            rpm: Some(60),
            otpm: Some(8000),
            ..Default::default()
        };
        let k = LimitSpec {
            rpm: Some(5),
            ..Default::default()
        };
        assert_eq!(
            k.or(d),
            LimitSpec {
                rpm: Some(5),
                otpm: Some(8000),
                ..Default::default()
            }
        );
    }

    #[test]
    fn view_keeps_the_tightest_quota() {
        let mut v = RateView::default();
        let t = SystemTime::UNIX_EPOCH;
        v.merge(
            Dim::Requests,
            Quota {
                limit: 10,
                remaining: 5,
                reset: t,
            },
        );
        v.merge(
            Dim::Requests,
            Quota {
                limit: 100,
                remaining: 50,
                reset: t,
            },
        );
        assert_eq!(v.requests.unwrap().limit, 10);
        v.merge(
            Dim::Requests,
            Quota {
                limit: 100,
                remaining: 1,
                reset: t,
            },
        );
        assert_eq!(v.requests.unwrap().remaining, 1);
    }
}
