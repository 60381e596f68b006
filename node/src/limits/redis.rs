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

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use prometheus::IntCounter;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::local::LocalLimiter;
use super::{
    ms, Actual, Denial, Dim, LimiterMetrics, Permit, PermitData, Quota, RateView, Reservation,
    Scope, Settle, Stamp, Subject, DAY, MINUTE,
};
use crate::config::{LimitMode, RedisSettings};
use crate::error::{Error, Result};

/// Exact mode: check and reserve every dimension of up to two scopes atomically, with
/// Redis's clock. Replies `{ok, now, deny_scope, deny_dim, retry_ms}` and per scope
/// `{ws, r, i, o, ds, d, held}`.
const ADMIT_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local node = ARGV[1]
local win, day, ttl, np = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local amt = {1, tonumber(ARGV[6]), tonumber(ARGV[7])}
local damt = amt[2] + amt[3]
local st = {}
local deny = nil
for p = 1, np do
  local h, c, ce = KEYS[3*p-2], KEYS[3*p-1], KEYS[3*p]
  local b = 7 + (p-1)*5
  local v = redis.call('HMGET', h, 'ws', 'r', 'i', 'o', 'ds', 'd')
  local s = {ws = tonumber(v[1]), u = {tonumber(v[2]) or 0, tonumber(v[3]) or 0, tonumber(v[4]) or 0},
             ds = tonumber(v[5]), d = tonumber(v[6]) or 0, held = 0, cl = tonumber(ARGV[b+5])}
  if s.ws == nil or now >= s.ws + win then s.ws = now; s.u = {0, 0, 0} end
  if s.ds == nil or now >= s.ds + day then s.ds = now; s.d = 0 end
  for k = 1, 3 do
    local lim = tonumber(ARGV[b+k])
    if deny == nil and lim >= 0 and s.u[k] + amt[k] > lim then deny = {p, k, s.ws + win - now} end
  end
  local dl = tonumber(ARGV[b+4])
  if deny == nil and dl >= 0 and s.d + damt > dl then deny = {p, 4, s.ds + day - now} end
  if s.cl >= 0 then
    local dead = redis.call('ZRANGEBYSCORE', ce, '-inf', now)
    if #dead > 0 then
      redis.call('HDEL', c, unpack(dead))
      redis.call('ZREMRANGEBYSCORE', ce, '-inf', now)
    end
    for _, x in ipairs(redis.call('HVALS', c)) do s.held = s.held + tonumber(x) end
    if deny == nil and s.held + 1 > s.cl then deny = {p, 5, 1000} end
  end
  st[p] = s
end
local out = {1, now, 0, 0, 0}
if deny then out = {0, now, deny[1], deny[2], deny[3]} end
for p = 1, np do
  local s = st[p]
  if not deny then
    local h, c, ce = KEYS[3*p-2], KEYS[3*p-1], KEYS[3*p]
    s.u[1] = s.u[1] + amt[1]; s.u[2] = s.u[2] + amt[2]; s.u[3] = s.u[3] + amt[3]; s.d = s.d + damt
    redis.call('HSET', h, 'ws', s.ws, 'r', s.u[1], 'i', s.u[2], 'o', s.u[3], 'ds', s.ds, 'd', s.d)
    redis.call('PEXPIRE', h, s.ds + day - now + 1000)
    if s.cl >= 0 then
      redis.call('HINCRBY', c, node, 1)
      redis.call('ZADD', ce, now + ttl, node)
      redis.call('PEXPIRE', c, ttl * 3)
      redis.call('PEXPIRE', ce, ttl * 3)
      s.held = s.held + 1
    end
  end
  for _, x in ipairs({s.ws, s.u[1], s.u[2], s.u[3], s.ds, s.d, s.held}) do out[#out + 1] = x end
end
return out
"#;

/// Exact mode: settle real usage into the window it was reserved in, free the slot.
const SETTLE_LUA: &str = r#"
local node = ARGV[1]
local np = tonumber(ARGV[2])
local di, dout = tonumber(ARGV[3]), tonumber(ARGV[4])
for p = 1, np do
  local h, c = KEYS[3*p-2], KEYS[3*p-1]
  local b = 4 + (p-1)*3
  local v = redis.call('HMGET', h, 'ws', 'ds', 'i', 'o', 'd')
  if v[1] and tonumber(v[1]) == tonumber(ARGV[b+1]) then
    if di ~= 0 then redis.call('HSET', h, 'i', math.max(0, (tonumber(v[3]) or 0) + di)) end
    if dout ~= 0 then redis.call('HSET', h, 'o', math.max(0, (tonumber(v[4]) or 0) + dout)) end
  end
  if v[2] and tonumber(v[2]) == tonumber(ARGV[b+2]) and di + dout ~= 0 then
    redis.call('HSET', h, 'd', math.max(0, (tonumber(v[5]) or 0) + di + dout))
  end
  if ARGV[b+3] == '1' then
    if redis.call('HINCRBY', c, node, -1) <= 0 then redis.call('HDEL', c, node) end
  end
end
return {1}
"#;

/// Leased mode refill: grant every short dimension of up to two scopes at once, or
/// nothing. A grant is the need, or more (the node's cut of the remainder:
/// `remaining / fdiv`), never more than remains. Replies `{ok, now, deny_scope,
/// deny_dim, retry_ms}` and per scope `{ws, ds, g_r, g_i, g_o, g_d, g_c, r, i, o, d, held}`.
const LEASE_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local node = ARGV[1]
local win, day, ttl, np, fdiv = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local st = {}
local deny = nil
for p = 1, np do
  local h, c, ce = KEYS[3*p-2], KEYS[3*p-1], KEYS[3*p]
  local b = 6 + (p-1)*16
  local v = redis.call('HMGET', h, 'ws', 'r', 'i', 'o', 'ds', 'd')
  local s = {ws = tonumber(v[1]), ds = tonumber(v[5]), held = 0, g = {0, 0, 0, 0, 0},
             u = {tonumber(v[2]) or 0, tonumber(v[3]) or 0, tonumber(v[4]) or 0, tonumber(v[6]) or 0}}
  if s.ws == nil or now >= s.ws + win then s.ws = now; s.u[1] = 0; s.u[2] = 0; s.u[3] = 0 end
  if s.ds == nil or now >= s.ds + day then s.ds = now; s.u[4] = 0 end
  local same_w = tonumber(ARGV[b+1]) == s.ws
  local same_d = tonumber(ARGV[b+2]) == s.ds
  for k = 1, 4 do
    local lim, nold, nfull = tonumber(ARGV[b+3*k]), tonumber(ARGV[b+3*k+1]), tonumber(ARGV[b+3*k+2])
    if lim >= 0 then
      local same, reset = same_w, s.ws + win
      if k == 4 then same, reset = same_d, s.ds + day end
      local need = nfull
      if same then need = nold end
      local rem = lim - s.u[k]
      if need > 0 then
        if need > rem then
          if deny == nil then deny = {p, k, reset - now} end
        else
          s.g[k] = math.min(rem, math.max(need, math.floor(rem / fdiv)))
        end
      end
    end
  end
  s.cl = tonumber(ARGV[b+15])
  local cneed = tonumber(ARGV[b+16])
  if s.cl >= 0 then
    local dead = redis.call('ZRANGEBYSCORE', ce, '-inf', now)
    if #dead > 0 then
      redis.call('HDEL', c, unpack(dead))
      redis.call('ZREMRANGEBYSCORE', ce, '-inf', now)
    end
    for _, x in ipairs(redis.call('HVALS', c)) do s.held = s.held + tonumber(x) end
    if cneed > 0 then
      if s.held + cneed > s.cl then
        if deny == nil then deny = {p, 5, 1000} end
      else
        s.g[5] = cneed
      end
    end
  end
  st[p] = s
end
local out = {1, now, 0, 0, 0}
if deny then out = {0, now, deny[1], deny[2], deny[3]} end
for p = 1, np do
  local s = st[p]
  if deny then
    s.g = {0, 0, 0, 0, 0}
  else
    local h, c, ce = KEYS[3*p-2], KEYS[3*p-1], KEYS[3*p]
    for k = 1, 4 do s.u[k] = s.u[k] + s.g[k] end
    redis.call('HSET', h, 'ws', s.ws, 'r', s.u[1], 'i', s.u[2], 'o', s.u[3], 'ds', s.ds, 'd', s.u[4])
    redis.call('PEXPIRE', h, s.ds + day - now + 1000)
    if s.g[5] > 0 then
      redis.call('HINCRBY', c, node, s.g[5])
      redis.call('ZADD', ce, now + ttl, node)
      redis.call('PEXPIRE', c, ttl * 3)
      redis.call('PEXPIRE', ce, ttl * 3)
      s.held = s.held + s.g[5]
    end
  end
  for _, x in ipairs({s.ws, s.ds, s.g[1], s.g[2], s.g[3], s.g[4], s.g[5], s.u[1], s.u[2], s.u[3], s.u[4], s.held}) do
    out[#out + 1] = x
  end
end
return out
"#;

/// Background sync of one scope: give back (or, negative, charge) quota in the window it
/// came from, and heartbeat this node's concurrency slots (mode 1: refresh the expiry,
/// restore the count if Redis lost it; mode 2: set the count). Replies
/// `{now, ws, ds, r, i, o, d}` (-1 for a missing window).
const SYNC_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h, c, ce = KEYS[1], KEYS[2], KEYS[3]
local node, ttl = ARGV[1], tonumber(ARGV[2])
local v = redis.call('HMGET', h, 'ws', 'r', 'i', 'o', 'ds', 'd')
local ws, ds = tonumber(v[1]), tonumber(v[5])
local u = {tonumber(v[2]) or 0, tonumber(v[3]) or 0, tonumber(v[4]) or 0, tonumber(v[6]) or 0}
local f = {'r', 'i', 'o', 'd'}
for k = 1, 4 do
  local ret = tonumber(ARGV[4+k])
  local same = ws ~= nil and ws == tonumber(ARGV[3])
  if k == 4 then same = ds ~= nil and ds == tonumber(ARGV[4]) end
  if ret ~= 0 and same then
    u[k] = math.max(0, u[k] - ret)
    redis.call('HSET', h, f[k], u[k])
  end
end
local mode, val = tonumber(ARGV[9]), tonumber(ARGV[10])
if mode == 1 or (mode == 2 and val > 0) then
  if mode == 2 or (val > 0 and redis.call('HEXISTS', c, node) == 0) then redis.call('HSET', c, node, val) end
  redis.call('ZADD', ce, now + ttl, node)
  redis.call('PEXPIRE', c, ttl * 3)
  redis.call('PEXPIRE', ce, ttl * 3)
elseif mode == 2 then
  redis.call('HDEL', c, node)
  redis.call('ZREM', ce, node)
end
return {now, ws or -1, ds or -1, u[1], u[2], u[3], u[4]}
"#;

/// How often a healthy node checks that Redis still answers (one PING).
const HEALTH_PING: Duration = Duration::from_secs(1);

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

/// The Redis key names of one scope.
struct ScopeKeys {
    hash: String,
    conc: String,
    conc_exp: String,
}

/// Leased mode: what this node holds of one scope's quota.
#[derive(Debug)]
struct Lease {
    /// Redis window start (Redis ms) this lease belongs to; -1 for none.
    ws: i64,
    ds: i64,
    /// Local instants at which the windows end (computed from Redis's clock offsets).
    w_end: Option<Instant>,
    d_end: Option<Instant>,
    w_reset: SystemTime,
    /// Leased and unused: requests, input, output, daily. Negative is usage beyond the
    /// reservation not yet charged in Redis.
    avail: [i64; 4],
    /// Global usage (all nodes' leases) at the last reply, for the headers.
    used_global: [u64; 4],
    last_grant: [i64; 4],
    conc_leased: u64,
    conc_in_use: u64,
    conc_synced: u64,
    admitted_since_sync: u64,
    last_heartbeat: Option<Instant>,
    /// After Redis refused a refill: refuse locally until then (at most one sync
    /// interval), so an exhausted limit costs no round trip per refused request.
    refused_until: Option<Instant>,
    refused_dim: Dim,
    /// When the refused dimension frees up (for `retry-after`).
    refused_reset: Option<Instant>,
}

impl Default for Lease {
    fn default() -> Self {
        Lease {
            ws: -1,
            ds: -1,
            w_end: None,
            d_end: None,
            w_reset: SystemTime::UNIX_EPOCH,
            avail: [0; 4],
            used_global: [0; 4],
            last_grant: [0; 4],
            conc_leased: 0,
            conc_in_use: 0,
            conc_synced: 0,
            admitted_since_sync: 0,
            last_heartbeat: None,
            refused_until: None,
            refused_dim: Dim::Requests,
            refused_reset: None,
        }
    }
}

impl Lease {
    /// Drops quota of windows that have ended locally.
    fn expire(&mut self, now: Instant) {
        if self.w_end.is_none_or(|e| now >= e) {
            self.ws = -1;
            self.w_end = None;
            self.avail[..3].fill(0);
        }
        if self.d_end.is_none_or(|e| now >= e) {
            self.ds = -1;
            self.d_end = None;
            self.avail[3] = 0;
        }
    }

    fn remaining(&self, limit: u64, k: usize) -> u64 {
        let unleased = limit.saturating_sub(self.used_global[k]);
        unleased
            .saturating_add(self.avail[k].max(0) as u64)
            .min(limit)
    }
}

struct LeaseSlot {
    state: Mutex<Lease>,
    /// One refill or sync of a scope at a time: a burst waits for one round trip.
    refill: tokio::sync::Mutex<()>,
}

fn lock(m: &Mutex<Lease>) -> MutexGuard<'_, Lease> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Op counters resolved once (label lookups off the hot path).
struct Ops {
    admit: IntCounter,
    settle: IntCounter,
    lease: IntCounter,
    sync: IntCounter,
    ping: IntCounter,
}

struct SettleMsg {
    data: PermitData,
    actual: Actual,
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
    admit_script: Script,
    settle_script: Script,
    lease_script: Script,
    sync_script: Script,
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
        let prefix = settings.key_prefix.clone();
        let keys = scopes
            .iter()
            .map(|s| {
                let kind = match s.kind {
                    super::ScopeKind::Key => "k",
                    super::ScopeKind::Tenant => "t",
                };
                let hash = format!("{prefix}:{{{}}}:{kind}:{}", s.tag, s.name);
                ScopeKeys {
                    conc: format!("{hash}:conc"),
                    conc_exp: format!("{hash}:conc:exp"),
                    hash,
                }
            })
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
            leases: scopes
                .iter()
                .map(|_| LeaseSlot {
                    state: Mutex::new(Lease::default()),
                    refill: tokio::sync::Mutex::new(()),
                })
                .collect(),
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
            admit_script: Script::new(ADMIT_LUA),
            settle_script: Script::new(SETTLE_LUA),
            lease_script: Script::new(LEASE_LUA),
            sync_script: Script::new(SYNC_LUA),
            round_trips: AtomicU64::new(0),
            settings,
        });
        // Until the first successful round trip, decisions use the safe share.
        limiter.degraded.store(true, Ordering::Relaxed);
        limiter.metrics.degraded.set(1);
        tokio::spawn(settle_loop(Arc::downgrade(&limiter), settle_rx));
        tokio::spawn(sync_loop(Arc::downgrade(&limiter)));
        Ok(limiter)
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
            // Redis may have restarted empty: leases from before are not in it any more.
            for slot in &self.leases {
                let mut l = lock(&slot.state);
                l.ws = -1;
                l.ds = -1;
                l.w_end = None;
                l.d_end = None;
                l.avail = [0; 4];
                l.conc_synced = u64::MAX;
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
    pub async fn admit(
        self: &Arc<Self>,
        subject: Subject,
        res: Reservation,
    ) -> std::result::Result<(Permit, RateView), Denial> {
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

    /// The three Redis keys of each scope, in the order every script expects them.
    fn add_scope_keys(&self, inv: &mut redis::ScriptInvocation<'_>, scopes: &[usize]) {
        for &i in scopes {
            let k = &self.keys[i];
            inv.key(&k.hash).key(&k.conc).key(&k.conc_exp);
        }
    }

    /// An admit or lease call: scope keys, then the arguments both scripts start with
    /// (node id, window and day lengths, slot TTL, scope count).
    fn windowed_invocation<'a>(
        &self,
        script: &'a Script,
        scopes: &[usize],
    ) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        self.add_scope_keys(&mut inv, scopes);
        inv.arg(&self.node_id)
            .arg(ms(MINUTE))
            .arg(ms(DAY))
            .arg(ms(self.settings.slot_ttl))
            .arg(scopes.len());
        inv
    }

    fn admit_fallback(
        &self,
        subject: Subject,
        res: Reservation,
    ) -> std::result::Result<(Permit, RateView), Denial> {
        let fallback = self.fallback.load_full();
        let (data, view) = fallback.admit(subject, res)?;
        Ok((Permit::new(data, fallback), view))
    }

    fn leased_permit(self: &Arc<Self>, (data, view): (PermitData, RateView)) -> (Permit, RateView) {
        (
            Permit::new(
                data,
                Arc::new(LeasedSettle(self.clone())) as Arc<dyn Settle>,
            ),
            view,
        )
    }

    // ----- exact mode -----------------------------------------------------------

    async fn admit_exact(
        self: &Arc<Self>,
        subject: Subject,
        res: Reservation,
    ) -> std::result::Result<(Permit, RateView), Denial> {
        let scopes: Vec<usize> = subject.iter().collect();
        let mut inv = self.windowed_invocation(&self.admit_script, &scopes);
        inv.arg(res.input).arg(res.output);
        for &i in &scopes {
            let spec = &self.scopes[i].spec;
            for d in [
                Dim::Requests,
                Dim::InputTokens,
                Dim::OutputTokens,
                Dim::DailyTokens,
                Dim::Concurrency,
            ] {
                inv.arg(spec.get(d).map_or(-1, |v| v.min(i64::MAX as u64) as i64));
            }
            if spec.concurrency.is_some() {
                // Counted before the script runs, so a heartbeat never under-reports.
                self.held[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        let undo = |this: &Self| {
            for &i in &scopes {
                if this.scopes[i].spec.concurrency.is_some() {
                    this.held[i].fetch_sub(1, Ordering::Relaxed);
                }
            }
        };
        let Some(reply) = self.run(&inv, &self.ops.admit, "admit").await else {
            undo(self);
            return self.admit_fallback(subject, res);
        };
        let Some(parsed) = parse_admit(&reply, scopes.len()) else {
            undo(self);
            self.fail("admit", "unexpected reply");
            return self.admit_fallback(subject, res);
        };
        let sys_now = SystemTime::now();
        let mut view = RateView::default();
        let mut stamps = [Stamp::default(); 2];
        for (n, (&i, st)) in scopes.iter().zip(&parsed.scopes).enumerate() {
            let spec = &self.scopes[i].spec;
            let reset =
                sys_now + Duration::from_millis((st[0] + ms(MINUTE) - parsed.now).max(0) as u64);
            for (k, d) in [Dim::Requests, Dim::InputTokens, Dim::OutputTokens]
                .into_iter()
                .enumerate()
            {
                if let Some(limit) = spec.get(d) {
                    view.merge(
                        d,
                        Quota {
                            limit,
                            remaining: limit.saturating_sub(st[1 + k].max(0) as u64),
                            reset,
                        },
                    );
                }
            }
            stamps[slot_of(subject, n)] = Stamp {
                window: st[0],
                day: st[4],
            };
        }
        if let Some((p, d, retry_ms)) = parsed.deny {
            undo(self);
            let scope = scopes
                .get(p.saturating_sub(1))
                .copied()
                .unwrap_or(scopes[0]);
            return Err(Denial {
                scope,
                dim: dim_of(d),
                retry_after: Duration::from_millis(retry_ms.max(0) as u64),
                never: false,
                view: Box::new(view),
            });
        }
        let data = PermitData {
            subject,
            reservation: res,
            stamps,
        };
        Ok((
            Permit::new(data, Arc::new(ExactSettle(self.clone())) as Arc<dyn Settle>),
            view,
        ))
    }

    async fn settle_exact(&self, msg: SettleMsg) {
        let SettleMsg { data, actual } = msg;
        let scopes: Vec<usize> = data.subject.iter().collect();
        let di = actual.input as i64 - data.reservation.input as i64;
        let dout = actual.output as i64 - data.reservation.output as i64;
        let releases = scopes
            .iter()
            .any(|&i| self.scopes[i].spec.concurrency.is_some());
        if di == 0 && dout == 0 && !releases {
            return;
        }
        let mut inv = self.settle_script.prepare_invoke();
        self.add_scope_keys(&mut inv, &scopes);
        inv.arg(&self.node_id).arg(scopes.len()).arg(di).arg(dout);
        for (n, &i) in scopes.iter().enumerate() {
            let st = data.stamps[slot_of(data.subject, n)];
            inv.arg(st.window)
                .arg(st.day)
                .arg(u8::from(self.scopes[i].spec.concurrency.is_some()));
        }
        // A failure leaves the slot counted in Redis; `resync` (set by `fail`) corrects
        // it at the next heartbeat.
        let _ = self.run(&inv, &self.ops.settle, "settle").await;
    }

    // ----- leased mode ----------------------------------------------------------

    /// The hot path: admits from this node's leases if every dimension has enough.
    fn try_lease(&self, subject: Subject, res: Reservation) -> Option<(PermitData, RateView)> {
        let now = Instant::now();
        let mut guards: [Option<(usize, MutexGuard<'_, Lease>)>; 2] = subject
            .scopes
            .map(|i| i.map(|i| (i, lock(&self.leases[i].state))));
        for (i, l) in guards.iter_mut().flatten() {
            l.expire(now);
            let spec = &self.scopes[*i].spec;
            for (k, d) in [
                Dim::Requests,
                Dim::InputTokens,
                Dim::OutputTokens,
                Dim::DailyTokens,
            ]
            .into_iter()
            .enumerate()
            {
                if spec.get(d).is_some() && l.avail[k] < res.amount(d) as i64 {
                    return None;
                }
            }
            if spec.concurrency.is_some() && l.conc_in_use >= l.conc_leased {
                return None;
            }
        }
        let mut view = RateView::default();
        let mut stamps = [Stamp::default(); 2];
        for (slot, g) in guards.iter_mut().enumerate() {
            let Some((i, l)) = g else { continue };
            let spec = &self.scopes[*i].spec;
            for (k, d) in [
                Dim::Requests,
                Dim::InputTokens,
                Dim::OutputTokens,
                Dim::DailyTokens,
            ]
            .into_iter()
            .enumerate()
            {
                if spec.get(d).is_some() {
                    l.avail[k] -= res.amount(d) as i64;
                }
            }
            if spec.concurrency.is_some() {
                l.conc_in_use += 1;
            }
            l.admitted_since_sync += 1;
            for (k, d) in [Dim::Requests, Dim::InputTokens, Dim::OutputTokens]
                .into_iter()
                .enumerate()
            {
                if let Some(limit) = spec.get(d) {
                    view.merge(
                        d,
                        Quota {
                            limit,
                            remaining: l.remaining(limit, k),
                            reset: l.w_reset,
                        },
                    );
                }
            }
            stamps[slot] = Stamp {
                window: l.ws,
                day: l.ds,
            };
        }
        Some((
            PermitData {
                subject,
                reservation: res,
                stamps,
            },
            view,
        ))
    }

    /// The slow path: one refill round trip for everything short, then admit locally.
    async fn refill_and_admit(
        self: &Arc<Self>,
        subject: Subject,
        res: Reservation,
    ) -> std::result::Result<(Permit, RateView), Denial> {
        let scopes: Vec<usize> = subject.iter().collect();
        let mut _guards = Vec::with_capacity(2);
        for &i in &scopes {
            _guards.push(self.leases[i].refill.lock().await);
        }
        for _ in 0..3 {
            // Another request may have refilled while this one waited.
            if let Some(ok) = self.try_lease(subject, res) {
                return Ok(self.leased_permit(ok));
            }
            let nodes = self.nodes.load(Ordering::Relaxed);
            let fdiv = (f64::from(nodes) / self.settings.lease_fraction).max(1.0);
            let mut inv = self.windowed_invocation(&self.lease_script, &scopes);
            inv.arg(fdiv);
            let now = Instant::now();
            for &i in &scopes {
                let spec = &self.scopes[i].spec;
                let mut l = lock(&self.leases[i].state);
                l.expire(now);
                inv.arg(l.ws).arg(l.ds);
                for (k, d) in [
                    Dim::Requests,
                    Dim::InputTokens,
                    Dim::OutputTokens,
                    Dim::DailyTokens,
                ]
                .into_iter()
                .enumerate()
                {
                    let amt = res.amount(d) as i64;
                    match spec.get(d) {
                        Some(limit) => inv
                            .arg(limit.min(i64::MAX as u64) as i64)
                            .arg((amt - l.avail[k]).max(0))
                            .arg(amt),
                        None => inv.arg(-1).arg(0).arg(0),
                    };
                }
                match spec.concurrency {
                    Some(limit) => inv
                        .arg(limit as i64)
                        .arg((l.conc_in_use + 1).saturating_sub(l.conc_leased)),
                    None => inv.arg(-1).arg(0),
                };
            }
            self.metrics.lease_refills.inc();
            let Some(reply) = self.run(&inv, &self.ops.lease, "lease").await else {
                return self.admit_fallback(subject, res);
            };
            let Some(parsed) = parse_lease(&reply, scopes.len()) else {
                self.fail("lease", "unexpected reply");
                return self.admit_fallback(subject, res);
            };
            let now = Instant::now();
            let sys_now = SystemTime::now();
            let mut view = RateView::default();
            for (&i, st) in scopes.iter().zip(&parsed.scopes) {
                let spec = &self.scopes[i].spec;
                let mut l = lock(&self.leases[i].state);
                apply_grant(&mut l, st, parsed.now, now, sys_now);
                for (k, d) in [Dim::Requests, Dim::InputTokens, Dim::OutputTokens]
                    .into_iter()
                    .enumerate()
                {
                    if let Some(limit) = spec.get(d) {
                        view.merge(
                            d,
                            Quota {
                                limit,
                                remaining: l.remaining(limit, k),
                                reset: l.w_reset,
                            },
                        );
                    }
                }
            }
            if let Some((p, d, retry_ms)) = parsed.deny {
                let scope = scopes
                    .get(p.saturating_sub(1))
                    .copied()
                    .unwrap_or(scopes[0]);
                let retry_after = Duration::from_millis(retry_ms.max(0) as u64);
                {
                    let mut l = lock(&self.leases[scope].state);
                    l.refused_until = Some(now + retry_after.min(self.settings.sync_interval));
                    l.refused_dim = dim_of(d);
                    l.refused_reset = Some(now + retry_after);
                }
                return Err(Denial {
                    scope,
                    dim: dim_of(d),
                    retry_after,
                    never: false,
                    view: Box::new(view),
                });
            }
        }
        // Local requests kept taking the refills: a burst far beyond the lease size.
        let view = self.try_view(subject);
        Err(Denial {
            scope: scopes[0],
            dim: Dim::Requests,
            retry_after: Duration::from_secs(1),
            never: false,
            view: Box::new(view),
        })
    }

    /// A refusal remembered from the last refill of one of the subject's scopes.
    fn recently_refused(&self, subject: Subject) -> Option<Denial> {
        let now = Instant::now();
        for i in subject.iter() {
            let l = lock(&self.leases[i].state);
            if l.refused_until.is_some_and(|t| now < t) {
                let retry_after = l
                    .refused_reset
                    .map_or(Duration::from_secs(1), |r| r.saturating_duration_since(now));
                let dim = l.refused_dim;
                drop(l);
                return Some(Denial {
                    scope: i,
                    dim,
                    retry_after,
                    never: false,
                    view: Box::new(self.try_view(subject)),
                });
            }
        }
        None
    }

    fn try_view(&self, subject: Subject) -> RateView {
        let mut view = RateView::default();
        for i in subject.iter() {
            let l = lock(&self.leases[i].state);
            let spec = &self.scopes[i].spec;
            for (k, d) in [Dim::Requests, Dim::InputTokens, Dim::OutputTokens]
                .into_iter()
                .enumerate()
            {
                if let Some(limit) = spec.get(d) {
                    view.merge(
                        d,
                        Quota {
                            limit,
                            remaining: l.remaining(limit, k),
                            reset: l.w_reset,
                        },
                    );
                }
            }
        }
        view
    }

    fn settle_leased(&self, p: &PermitData, actual: Actual) {
        let r = p.reservation;
        for (n, i) in p.subject.iter().enumerate() {
            let spec = &self.scopes[i].spec;
            let stamp = p.stamps[slot_of(p.subject, n)];
            let mut l = lock(&self.leases[i].state);
            // Refunds go back into this node's lease (returned to Redis by the sync if
            // unused); usage beyond the reservation makes the lease negative.
            if l.ws == stamp.window && l.ws >= 0 {
                if spec.itpm.is_some() {
                    l.avail[1] += r.input as i64 - actual.input as i64;
                }
                if spec.otpm.is_some() {
                    l.avail[2] += r.output as i64 - actual.output as i64;
                }
            }
            if l.ds == stamp.day && l.ds >= 0 && spec.daily_tokens.is_some() {
                l.avail[3] += r.amount(Dim::DailyTokens) as i64
                    - actual.input.saturating_add(actual.output) as i64;
            }
            if spec.concurrency.is_some() {
                l.conc_in_use = l.conc_in_use.saturating_sub(1);
            }
        }
    }

    /// Leased: returns surplus and pushes debt per scope; both modes: slot heartbeats.
    async fn sync_once(&self) {
        let now = Instant::now();
        let heartbeat = self.settings.slot_ttl / 3;
        let resync = self.resync.swap(false, Ordering::Relaxed);
        for (i, slot) in self.leases.iter().enumerate() {
            let spec = &self.scopes[i].spec;
            let mut ret = [0i64; 4];
            let (mode, val, ws, ds);
            let _guard;
            match self.settings.mode {
                LimitMode::Exact => {
                    if spec.concurrency.is_none() {
                        continue;
                    }
                    let held = self.held[i].load(Ordering::Relaxed);
                    let mut l = lock(&slot.state);
                    let due = l.last_heartbeat.is_none_or(|t| now >= t + heartbeat);
                    if !(resync || (due && held > 0) || (due && l.conc_synced > 0)) {
                        continue;
                    }
                    l.last_heartbeat = Some(now);
                    l.conc_synced = held;
                    (mode, val, ws, ds) = (if resync { 2 } else { 1 }, held, -1, -1);
                }
                LimitMode::Leased => {
                    _guard = match slot.refill.try_lock() {
                        Ok(g) => g,
                        Err(_) => continue, // a refill is running; next round
                    };
                    let mut l = lock(&slot.state);
                    l.expire(now);
                    let idle = l.admitted_since_sync == 0;
                    l.admitted_since_sync = 0;
                    for (k, ret_k) in ret.iter_mut().enumerate() {
                        let valid = if k < 3 { l.ws >= 0 } else { l.ds >= 0 };
                        if !valid {
                            continue;
                        }
                        // Keep about one chunk while busy; give everything back when idle
                        // so other nodes can use it. Debt is always pushed.
                        let keep = if idle { 0 } else { l.last_grant[k].max(0) };
                        if l.avail[k] < 0
                            || l.avail[k] > keep.saturating_mul(2).max(if idle { 0 } else { 1 })
                        {
                            *ret_k = if l.avail[k] < 0 {
                                l.avail[k]
                            } else {
                                l.avail[k] - keep
                            };
                            l.avail[k] -= *ret_k;
                        }
                    }
                    if spec.concurrency.is_some() {
                        // Slots not in use go back at once: concurrency limits are small.
                        l.conc_leased = l.conc_in_use;
                    }
                    let due = l.last_heartbeat.is_none_or(|t| now >= t + heartbeat);
                    let conc_changed = l.conc_leased != l.conc_synced;
                    let conc_mode = if spec.concurrency.is_some()
                        && (conc_changed || (due && l.conc_leased > 0) || resync)
                    {
                        2
                    } else {
                        0
                    };
                    if ret.iter().all(|r| *r == 0) && conc_mode == 0 {
                        continue;
                    }
                    if conc_mode != 0 {
                        l.last_heartbeat = Some(now);
                        l.conc_synced = l.conc_leased;
                    }
                    (mode, val, ws, ds) = (conc_mode, l.conc_leased, l.ws, l.ds);
                }
            }
            let k = &self.keys[i];
            let mut inv = self.sync_script.prepare_invoke();
            inv.key(&k.hash).key(&k.conc).key(&k.conc_exp);
            inv.arg(&self.node_id)
                .arg(ms(self.settings.slot_ttl))
                .arg(ws)
                .arg(ds);
            for r in ret {
                inv.arg(r);
            }
            inv.arg(mode).arg(val);
            match self.run(&inv, &self.ops.sync, "sync").await {
                Some(reply) if reply.len() >= 7 => {
                    let mut l = lock(&slot.state);
                    if reply[1] == l.ws && l.ws >= 0 {
                        for k in 0..3 {
                            l.used_global[k] = reply[3 + k].max(0) as u64;
                        }
                    }
                    if reply[2] == l.ds && l.ds >= 0 {
                        l.used_global[3] = reply[6].max(0) as u64;
                    }
                }
                _ => {
                    // Unknown outcome: re-send absolute counts next time.
                    let mut l = lock(&slot.state);
                    l.conc_synced = u64::MAX;
                    return;
                }
            }
        }
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

fn dim_of(k: i64) -> Dim {
    match k {
        1 => Dim::Requests,
        2 => Dim::InputTokens,
        3 => Dim::OutputTokens,
        4 => Dim::DailyTokens,
        _ => Dim::Concurrency,
    }
}

struct Parsed<const N: usize> {
    now: i64,
    deny: Option<(usize, i64, i64)>,
    scopes: Vec<[i64; N]>,
}

fn parse<const N: usize>(v: &[i64], np: usize) -> Option<Parsed<N>> {
    if v.len() != 5 + N * np {
        return None;
    }
    let deny = (v[0] == 0).then(|| (v[2].max(1) as usize, v[3], v[4]));
    let scopes = (0..np).map(|p| {
        let mut a = [0i64; N];
        a.copy_from_slice(&v[5 + p * N..5 + (p + 1) * N]);
        a
    });
    Some(Parsed {
        now: v[1],
        deny,
        scopes: scopes.collect(),
    })
}

fn parse_admit(v: &[i64], np: usize) -> Option<Parsed<7>> {
    parse::<7>(v, np)
}

fn parse_lease(v: &[i64], np: usize) -> Option<Parsed<12>> {
    parse::<12>(v, np)
}

/// Applies a refill reply `{ws, ds, g_r, g_i, g_o, g_d, g_c, r, i, o, d, held}` to a lease.
fn apply_grant(l: &mut Lease, st: &[i64; 12], redis_now: i64, now: Instant, sys_now: SystemTime) {
    let until = |start: i64, len: Duration| {
        Duration::from_millis((start + ms(len) - redis_now).max(0) as u64)
    };
    if st[0] != l.ws {
        // A new window: whatever was left of the old lease is void.
        l.ws = st[0];
        l.avail[..3].fill(0);
        let left = until(st[0], MINUTE);
        l.w_end = Some(now + left);
        l.w_reset = sys_now + left;
    }
    if st[1] != l.ds {
        l.ds = st[1];
        l.avail[3] = 0;
        l.d_end = Some(now + until(st[1], DAY));
    }
    for k in 0..4 {
        l.avail[k] += st[2 + k];
        if st[2 + k] > 0 {
            l.last_grant[k] = st[2 + k];
        }
        l.used_global[k] = st[7 + k].max(0) as u64;
    }
    let granted = st[6].max(0) as u64;
    l.conc_leased += granted;
    // Redis added the grant to what it had. If that is unknown (after an outage), the
    // next sync sets the count absolutely instead.
    if l.conc_synced != u64::MAX {
        l.conc_synced += granted;
    }
}

/// Exact-mode permits: the slot count drops locally at once, Redis is told in the
/// background (settlement never delays a response).
struct ExactSettle(Arc<RedisLimiter>);

impl Settle for ExactSettle {
    fn settle(&self, p: &PermitData, actual: Actual) {
        for i in p.subject.iter() {
            if self.0.scopes[i].spec.concurrency.is_some() {
                self.0.held[i].fetch_sub(1, Ordering::Relaxed);
            }
        }
        if self
            .0
            .settle_tx
            .send(SettleMsg {
                data: p.clone(),
                actual,
            })
            .is_err()
        {
            self.0.resync.store(true, Ordering::Relaxed);
        }
    }
}

/// Leased-mode permits settle into the node's lease; no Redis round trip.
struct LeasedSettle(Arc<RedisLimiter>);

impl Settle for LeasedSettle {
    fn settle(&self, p: &PermitData, actual: Actual) {
        self.0.settle_leased(p, actual);
    }
}

async fn settle_loop(limiter: Weak<RedisLimiter>, mut rx: mpsc::UnboundedReceiver<SettleMsg>) {
    while let Some(msg) = rx.recv().await {
        let Some(l) = limiter.upgrade() else { return };
        if l.is_degraded() {
            // Redis is down: the release is lost here and restored by the resync.
            l.resync.store(true, Ordering::Relaxed);
            continue;
        }
        l.settle_exact(msg).await;
    }
}

/// Background: lease sync (leased), slot heartbeats (both), reconnect probes.
async fn sync_loop(limiter: Weak<RedisLimiter>) {
    let (tick, probe_every) = match limiter.upgrade() {
        Some(l) => {
            let tick = match l.settings.mode {
                LimitMode::Leased => l.settings.sync_interval,
                LimitMode::Exact => (l.settings.slot_ttl / 6).min(Duration::from_millis(500)),
            };
            (
                tick.max(Duration::from_millis(5)),
                Duration::from_millis(250),
            )
        }
        None => return,
    };
    let mut interval = tokio::time::interval(tick.min(probe_every));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sync = Instant::now();
    let mut last_ping = Instant::now();
    loop {
        interval.tick().await;
        let Some(l) = limiter.upgrade() else { return };
        if l.is_degraded() {
            l.probe().await;
            continue;
        }
        if last_sync.elapsed() >= tick {
            last_sync = Instant::now();
            l.sync_once().await;
        }
        // An idle node notices an outage too (readiness, metrics) within about a second.
        if last_ping.elapsed() >= HEALTH_PING {
            last_ping = Instant::now();
            l.probe().await;
        }
    }
}
