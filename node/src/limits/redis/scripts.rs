//! The Lua scripts of the Redis limiter, the key names they touch, how their keys and
//! arguments are laid out, and how their replies are read.

use std::time::Duration;

use redis::Script;

use super::RedisLimiter;
use crate::limits::{ms, Dim, Scope, ScopeKind, DAY, MINUTE};

/// Lua: `now`, Redis's clock in ms (every script that decides or heartbeats).
macro_rules! lua_now {
    () => {
        "local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"
    };
}

/// Lua, inside the per-scope loop: drops the slots of nodes whose heartbeat expired
/// and counts the rest into `s.held`.
macro_rules! lua_sweep_slots {
    () => {
        "    local dead = redis.call('ZRANGEBYSCORE', ce, '-inf', now)
    if #dead > 0 then
      redis.call('HDEL', c, unpack(dead))
      redis.call('ZREMRANGEBYSCORE', ce, '-inf', now)
    end
    for _, x in ipairs(redis.call('HVALS', c)) do s.held = s.held + tonumber(x) end
"
    };
}

/// Lua, after taking slots: this node's slots live another `ttl`, the keys `3 * ttl`.
macro_rules! lua_renew_slots {
    () => {
        "      redis.call('ZADD', ce, now + ttl, node)
      redis.call('PEXPIRE', c, ttl * 3)
      redis.call('PEXPIRE', ce, ttl * 3)
"
    };
}

/// Exact mode: check and reserve every dimension of up to two scopes atomically, with
/// Redis's clock. Replies `{ok, now, deny_scope, deny_dim, retry_ms}` and per scope
/// `{ws, r, i, o, ds, d, held}`.
const ADMIT_LUA: &str = concat!(
    "\n",
    lua_now!(),
    r#"local node = ARGV[1]
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
"#,
    lua_sweep_slots!(),
    r#"    if deny == nil and s.held + 1 > s.cl then deny = {p, 5, 1000} end
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
"#,
    lua_renew_slots!(),
    r#"      s.held = s.held + 1
    end
  end
  for _, x in ipairs({s.ws, s.u[1], s.u[2], s.u[3], s.ds, s.d, s.held}) do out[#out + 1] = x end
end
return out
"#,
);

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
const LEASE_LUA: &str = concat!(
    "\n",
    lua_now!(),
    r#"local node = ARGV[1]
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
"#,
    lua_sweep_slots!(),
    r#"    if cneed > 0 then
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
"#,
    lua_renew_slots!(),
    r#"      s.held = s.held + s.g[5]
    end
  end
  for _, x in ipairs({s.ws, s.ds, s.g[1], s.g[2], s.g[3], s.g[4], s.g[5], s.u[1], s.u[2], s.u[3], s.u[4], s.held}) do
    out[#out + 1] = x
  end
end
return out
"#,
);

/// Background sync of one scope: give back (or, negative, charge) quota in the window it
/// came from, and heartbeat this node's concurrency slots (mode 1: refresh the expiry,
/// restore the count if Redis lost it; mode 2: set the count). Replies
/// `{now, ws, ds, r, i, o, d}` (-1 for a missing window).
const SYNC_LUA: &str = concat!(
    "\n",
    lua_now!(),
    r#"local h, c, ce = KEYS[1], KEYS[2], KEYS[3]
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
"#,
);

/// Read-only: a scope's use in its current windows, by [`Dim::ALL`], for `/stats`.
/// Expired windows read as 0 and slots of nodes whose heartbeat lapsed are not counted,
/// as the deciding scripts would see them; nothing is swept or written.
const USAGE_LUA: &str = concat!(
    "\n",
    lua_now!(),
    r#"local h, c, ce = KEYS[1], KEYS[2], KEYS[3]
local win, day = tonumber(ARGV[1]), tonumber(ARGV[2])
local v = redis.call('HMGET', h, 'ws', 'r', 'i', 'o', 'ds', 'd')
local ws, ds = tonumber(v[1]), tonumber(v[5])
local out = {0, 0, 0, 0, 0}
if ws ~= nil and now < ws + win then
  out[1], out[2], out[3] = tonumber(v[2]) or 0, tonumber(v[3]) or 0, tonumber(v[4]) or 0
end
if ds ~= nil and now < ds + day then out[4] = tonumber(v[6]) or 0 end
for _, n in ipairs(redis.call('ZRANGEBYSCORE', ce, '(' .. now, '+inf')) do
  out[5] = out[5] + (tonumber(redis.call('HGET', c, n)) or 0)
end
return out
"#,
);

/// The five scripts, each hashed once when the limiter starts.
pub(super) struct Scripts {
    pub(super) admit: Script,
    pub(super) settle: Script,
    pub(super) lease: Script,
    pub(super) sync: Script,
    pub(super) usage: Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        Scripts {
            admit: Script::new(ADMIT_LUA),
            settle: Script::new(SETTLE_LUA),
            lease: Script::new(LEASE_LUA),
            sync: Script::new(SYNC_LUA),
            usage: Script::new(USAGE_LUA),
        }
    }
}

/// The Redis key names of one scope.
pub(super) struct ScopeKeys {
    hash: String,
    conc: String,
    conc_exp: String,
}

impl ScopeKeys {
    /// `<prefix>:{<tag>}:k:<key>` or `...:t:<tenant>`, and its `:conc` and `:conc:exp`.
    pub(super) fn new(prefix: &str, s: &Scope) -> ScopeKeys {
        let kind = match s.kind {
            ScopeKind::Key => "k",
            ScopeKind::Tenant => "t",
        };
        let hash = format!("{prefix}:{{{}}}:{kind}:{}", s.tag, s.name);
        ScopeKeys {
            conc: format!("{hash}:conc"),
            conc_exp: format!("{hash}:conc:exp"),
            hash,
        }
    }
}

impl RedisLimiter {
    /// The three Redis keys of each scope, in the order every script expects them.
    pub(super) fn add_scope_keys(&self, inv: &mut redis::ScriptInvocation<'_>, scopes: &[usize]) {
        for &i in scopes {
            let k = &self.keys[i];
            inv.key(&k.hash).key(&k.conc).key(&k.conc_exp);
        }
    }

    /// An admit or lease call: scope keys, then the arguments both scripts start with
    /// (node id, window and day lengths, slot TTL, scope count).
    pub(super) fn windowed_invocation<'a>(
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

    /// A sync call for scope `i`: its keys, then node id, slot TTL, the lease's window
    /// and day starts, what goes back per leased dimension, and the slot mode and count.
    pub(super) fn sync_invocation(
        &self,
        i: usize,
        (ws, ds): (i64, i64),
        ret: [i64; 4],
        (mode, val): (i32, u64),
    ) -> redis::ScriptInvocation<'_> {
        let mut inv = self.scripts.sync.prepare_invoke();
        self.add_scope_keys(&mut inv, &[i]);
        inv.arg(&self.node_id)
            .arg(ms(self.settings.slot_ttl))
            .arg(ws)
            .arg(ds);
        for r in ret {
            inv.arg(r);
        }
        inv.arg(mode).arg(val);
        inv
    }

    /// A read of one scope's current use (the `/stats` snapshot).
    pub(super) fn usage_invocation(&self, i: usize) -> redis::ScriptInvocation<'_> {
        let mut inv = self.scripts.usage.prepare_invoke();
        self.add_scope_keys(&mut inv, &[i]);
        inv.arg(ms(MINUTE)).arg(ms(DAY));
        inv
    }
}

/// A limit as a script argument: saturated to `i64`.
pub(super) fn limit_arg(limit: u64) -> i64 {
    limit.min(i64::MAX as u64) as i64
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

/// An admit or lease reply: Redis's clock, the refusal if any (1-based scope, dimension
/// number, retry in ms), and `N` values per scope.
pub(super) struct Parsed<const N: usize> {
    pub(super) now: i64,
    deny: Option<(usize, i64, i64)>,
    pub(super) scopes: Vec<[i64; N]>,
}

impl<const N: usize> Parsed<N> {
    /// The refusal in the reply: which of `scopes` (the ones sent), which dimension,
    /// and when to come back.
    pub(super) fn denial(&self, scopes: &[usize]) -> Option<(usize, Dim, Duration)> {
        self.deny.map(|(p, d, retry_ms)| {
            let scope = scopes
                .get(p.saturating_sub(1))
                .copied()
                .unwrap_or(scopes[0]);
            (
                scope,
                dim_of(d),
                Duration::from_millis(retry_ms.max(0) as u64),
            )
        })
    }
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

/// An admit reply: per scope `{ws, r, i, o, ds, d, held}`.
pub(super) fn parse_admit(v: &[i64], np: usize) -> Option<Parsed<7>> {
    parse::<7>(v, np)
}

/// A lease reply: per scope `{ws, ds, g_r, g_i, g_o, g_d, g_c, r, i, o, d, held}`.
pub(super) fn parse_lease(v: &[i64], np: usize) -> Option<Parsed<12>> {
    parse::<12>(v, np)
}
