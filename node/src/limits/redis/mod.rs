//! The Redis backend: limits shared by every node. `exact` runs one atomic script per
//! decision; `leased` takes quota in chunks and decides locally. Concurrency slots are
//! leases that expire if a node stops heartbeating; while Redis is unreachable each node
//! falls back to its safe share ([`super::local`]) and recovers by itself.
//!
//! Keys: `<prefix>:{<tag>}:k:<key>` and `<prefix>:{<tag>}:t:<tenant>` hold a scope's
//! window counters (hash fields `ws r i o ds d`); `...:conc` (hash node -> slots) and
//! `...:conc:exp` (zset node -> expiry) its concurrency. The hash tag is the tenant
//! when the key has one, so a key and its tenant share a Redis Cluster slot and one
//! script sees both.
//!
//! Layout: this file holds the limiter, its connection, the safe-share fallback and
//! the recovery probe; [`scripts`] the Lua scripts, their keys and arguments;
//! [`exact`] and [`leased`] the two modes; [`sync`] the background upkeep.

mod exact;
mod leased;
mod scripts;
mod sync;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use prometheus::IntCounter;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use self::exact::SettleMsg;
use self::leased::{lock, LeaseSlot};
use self::scripts::{ScopeKeys, Scripts};
use super::local::LocalLimiter;
use super::{Denial, LimiterMetrics, Permit, RateView, Reservation, Scope, Subject};
use crate::config::{LimitMode, RedisSettings};
use crate::error::{Error, Result};

/// Either a single Redis (auto-reconnecting manager) or a Redis Cluster connection.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A backend decision: the permit and the headers' view, or the refusal.
type Decision = std::result::Result<(Permit, RateView), Denial>;

/// Op counters resolved once (label lookups off the hot path).
struct Ops {
    admit: IntCounter,
    settle: IntCounter,
    lease: IntCounter,
    sync: IntCounter,
    ping: IntCounter,
    usage: IntCounter,
}

/// The Redis-backed limiter. Built by [`RedisLimiter::start`].
pub struct RedisLimiter {
    settings: RedisSettings,
    scopes: Arc<Vec<Scope>>,
    keys: Vec<ScopeKeys>,
    node_id: String,
    conn: ArcSwapOption<Conn>,
    degraded: Arc<AtomicBool>,
    metrics: LimiterMetrics,
    ops: Ops,
    /// Safe-share limiter used while Redis is unreachable; rebuilt when the node
    /// count changes (membership in etcd), so each node's share follows the cluster.
    fallback: ArcSwap<LocalLimiter>,
    /// Nodes sharing each limit: `expected_nodes` until membership says otherwise.
    nodes: AtomicU32,
    leases: Vec<LeaseSlot>,
    /// Exact mode: slots this node holds (or is acquiring) per scope.
    held: Vec<AtomicU64>,
    /// Exact mode: a release may have been lost; set counts absolutely at the next heartbeat.
    resync: AtomicBool,
    settle_tx: mpsc::UnboundedSender<SettleMsg>,
    scripts: Scripts,
    /// Every scope's use as Redis last said (`/stats`); empty until first read, and
    /// refreshed only while someone reads it (see [`RedisLimiter::usage`]).
    usage: ArcSwap<Vec<Option<[u64; 5]>>>,
    /// When `/stats` last asked for usage; the background read stops after a quiet spell.
    usage_asked: std::sync::Mutex<Option<Instant>>,
    /// Round trips made (all kinds), for the benchmark.
    pub round_trips: AtomicU64,
}

fn safe_share_limiter(scopes: &[Scope], nodes: u32) -> Arc<LocalLimiter> {
    Arc::new(LocalLimiter::new(
        scopes.iter().map(|s| s.spec.safe_share(nodes)).collect(),
    ))
}

impl RedisLimiter {
    /// Sets how many nodes share each limit (from cluster membership). Changes the
    /// degraded-mode safe share and the lease chunk size; the safe-share counters start
    /// afresh, which only matters while Redis is down and membership changes together.
    pub fn set_node_count(&self, nodes: u32) {
        let nodes = nodes.max(1);
        if self.nodes.swap(nodes, Ordering::Relaxed) != nodes {
            self.fallback.store(safe_share_limiter(&self.scopes, nodes));
        }
    }

    pub fn node_count(&self) -> u32 {
        self.nodes.load(Ordering::Relaxed)
    }

    /// Creates the limiter and spawns its background tasks. Does not connect: call
    /// [`RedisLimiter::connect`] to wait (bounded) for the first connection.
    pub fn start(
        settings: RedisSettings,
        scopes: Arc<Vec<Scope>>,
        metrics: LimiterMetrics,
        degraded: Arc<AtomicBool>,
    ) -> Result<Arc<RedisLimiter>> {
        let keys = scopes
            .iter()
            .map(|s| ScopeKeys::new(&settings.key_prefix, s))
            .collect();
        let fallback = ArcSwap::from(safe_share_limiter(&scopes, settings.expected_nodes));
        let nodes = AtomicU32::new(settings.expected_nodes);
        let op = |name: &str| metrics.redis_ops.with_label_values(&[name]);
        let ops = Ops {
            admit: op("admit"),
            settle: op("settle"),
            lease: op("lease"),
            sync: op("sync"),
            ping: op("ping"),
            usage: op("usage"),
        };
        let (settle_tx, settle_rx) = mpsc::unbounded_channel();
        let single = if settings.cluster {
            None
        } else {
            let client = redis::Client::open(settings.urls[0].as_str())
                .map_err(|e| Error::config(format!("redis.url: {e}")))?;
            let cfg = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(settings.op_timeout))
                .set_response_timeout(Some(settings.op_timeout))
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_millis(500));
            let cm = ConnectionManager::new_lazy_with_config(client, cfg)
                .map_err(|e| Error::config(format!("redis: {e}")))?;
            Some(Arc::new(Conn::Single(cm)))
        };
        let limiter = Arc::new(RedisLimiter {
            held: scopes.iter().map(|_| AtomicU64::new(0)).collect(),
            leases: scopes.iter().map(|_| LeaseSlot::new()).collect(),
            keys,
            scopes,
            node_id: format!("{:016x}", rand::random::<u64>()),
            conn: ArcSwapOption::new(single),
            degraded,
            metrics,
            ops,
            fallback,
            nodes,
            resync: AtomicBool::new(true),
            settle_tx,
            scripts: Scripts::new(),
            usage: ArcSwap::from_pointee(Vec::new()),
            usage_asked: std::sync::Mutex::new(None),
            round_trips: AtomicU64::new(0),
            settings,
        });
        // Until the first successful round trip, decisions use the safe share.
        limiter.degraded.store(true, Ordering::Relaxed);
        limiter.metrics.degraded.set(1);
        tokio::spawn(exact::settle_loop(Arc::downgrade(&limiter), settle_rx));
        tokio::spawn(sync::sync_loop(Arc::downgrade(&limiter)));
        Ok(limiter)
    }

    /// Scope `i`'s use in its current windows by [`super::Dim::ALL`], as Redis said at
    /// most [`sync::USAGE_EVERY`] ago; `None` before the first read and while Redis is
    /// unreachable. Asking keeps the background read going; a node nobody asks reads nothing.
    pub fn usage(&self, i: usize) -> Option<[u64; 5]> {
        *self
            .usage_asked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
        if self.is_degraded() {
            return None;
        }
        self.usage.load().get(i).copied().flatten()
    }

    pub fn mode(&self) -> LimitMode {
        self.settings.mode
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Tries to reach Redis once (bounded by the op timeout); the node starts either way.
    pub async fn connect(&self) {
        self.probe().await;
    }

    fn set_degraded(&self, down: bool, why: &str) {
        let was = self.degraded.swap(down, Ordering::Relaxed);
        self.metrics.degraded.set(i64::from(down));
        if down && !was {
            tracing::warn!(
                reason = why,
                "limiter: Redis unreachable; every limit falls back to this node's safe share"
            );
        } else if !down && was {
            tracing::info!("limiter: Redis reachable; shared limits resume");
        }
    }

    fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    async fn conn(&self) -> Option<Conn> {
        if let Some(c) = self.conn.load_full() {
            return Some((*c).clone());
        }
        // Redis Cluster: the connection needs the slot map, so it is made on demand.
        let client = redis::cluster::ClusterClientBuilder::new(self.settings.urls.clone())
            .connection_timeout(self.settings.op_timeout)
            .response_timeout(self.settings.op_timeout)
            .retries(1)
            .build()
            .ok()?;
        let conn =
            tokio::time::timeout(self.settings.op_timeout * 4, client.get_async_connection())
                .await
                .ok()?
                .ok()?;
        let conn = Conn::Cluster(conn);
        self.conn.store(Some(Arc::new(conn.clone())));
        Some(conn)
    }

    /// Runs a script with the op timeout. `None` on any failure (and the node degrades).
    async fn run(
        &self,
        inv: &redis::ScriptInvocation<'_>,
        counter: &IntCounter,
        op: &str,
    ) -> Option<Vec<i64>> {
        let mut conn = match self.conn().await {
            Some(c) => c,
            None => {
                self.fail(op, "no connection");
                return None;
            }
        };
        counter.inc();
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(
            self.settings.op_timeout,
            inv.invoke_async::<Vec<i64>>(&mut conn),
        )
        .await
        {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.fail(op, &e.to_string());
                None
            }
            Err(_) => {
                self.fail(op, "timed out");
                None
            }
        }
    }

    fn fail(&self, op: &str, why: &str) {
        self.metrics.redis_errors.with_label_values(&[op]).inc();
        self.resync.store(true, Ordering::Relaxed);
        self.set_degraded(true, why);
    }

    /// PINGs Redis; on success after an outage, leases restart and slot counts resync.
    async fn probe(&self) -> bool {
        let Some(mut conn) = self.conn().await else {
            self.set_degraded(true, "no connection");
            return false;
        };
        self.ops.ping.inc();
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let ok = matches!(
            tokio::time::timeout(
                self.settings.op_timeout,
                redis::cmd("PING").query_async::<String>(&mut conn)
            )
            .await,
            Ok(Ok(_))
        );
        if ok && self.is_degraded() {
            for slot in &self.leases {
                lock(&slot.state).forget();
            }
            self.resync.store(true, Ordering::Relaxed);
            self.set_degraded(false, "");
        } else if !ok {
            self.set_degraded(true, "ping failed");
        }
        ok
    }

    /// Decides for a subject: in exact mode one script; in leased mode locally, with a
    /// refill round trip only when this node's lease is short.
    pub async fn admit(self: &Arc<Self>, subject: Subject, res: Reservation) -> Decision {
        if self.is_degraded() {
            return self.admit_fallback(subject, res);
        }
        match self.settings.mode {
            LimitMode::Exact => self.admit_exact(subject, res).await,
            LimitMode::Leased => {
                if let Some(ok) = self.try_lease(subject, res) {
                    return Ok(self.leased_permit(ok));
                }
                if let Some(denial) = self.recently_refused(subject) {
                    return Err(denial);
                }
                self.refill_and_admit(subject, res).await
            }
        }
    }

    /// While Redis is unreachable: the decision of this node's safe share.
    fn admit_fallback(&self, subject: Subject, res: Reservation) -> Decision {
        let fallback = self.fallback.load_full();
        let (data, view) = fallback.admit(subject, res)?;
        Ok((Permit::new(data, fallback), view))
    }
}

/// Which `stamps` slot the n-th present scope of a subject uses.
fn slot_of(subject: Subject, n: usize) -> usize {
    subject
        .scopes
        .iter()
        .enumerate()
        .filter(|(_, s)| s.is_some())
        .nth(n)
        .map_or(0, |(slot, _)| slot)
}
