//! The Redis [`Store`]: each deferred id's state machine on one Redis server, every
//! transition one Lua script so two nodes never both win a claim.
//!
//! Keys (`P` is `deferred.key_prefix`, `R` the region; the braces are a hash tag so
//! a region's keys would share a slot if the store ever moved to a cluster):
//! - `P{R}:r:<id>`: hash `state owner fp attempts err qat uat exp holder lease`,
//!   plus `status ctype` once done. PEXPIRE'd to `exp + ttl`: the tombstone that
//!   answers `Expired` for one more TTL, then the key is gone (`Missing`).
//! - `P{R}:b:<id>`: the stored result body, PEXPIRE'd to `exp`.
//! - `P{R}:open`: sorted set of open ids scored by `queued_at_ms`, kept by the
//!   scripts; [`Store::backlog`] reads its size and head.
//!
//! Time: every script gets the caller's `now_ms()` and the result TTL as arguments
//! (the spool uses the same clock and rules), and PEXPIRE takes relative times, so
//! a skew between the node's and Redis's clocks only shifts when keys vanish.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};

use super::queue::BoxFuture;
use super::store::{
    Backlog, Cancel, Claim, Created, Finish, Lookup, NewRecord, Record, State, Store, StoredResult,
};
use super::{now_ms, BackendState, DeferredId};
use crate::config::Deferred;
use crate::error::{Error, ErrorKind, Result};

/// The longest one store operation may take before it counts as a failure.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the background probe PINGs while Redis is down, and while it is up.
const PROBE_DOWN: Duration = Duration::from_secs(1);
const PROBE_UP: Duration = Duration::from_secs(5);

/// Lua shared by every script: the clock and TTL arguments, loading and saving a
/// record hash, and the reply layout `{code, state, owner, fp, attempts, err, qat,
/// uat, exp, holder, lease}` that [`parse_record`] reads.
macro_rules! lua_prelude {
    () => {
        r#"
local now, ttl, id = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local rk, bk, ok = KEYS[1], KEYS[2], KEYS[3]
local F = {'state', 'owner', 'fp', 'attempts', 'err', 'qat', 'uat', 'exp', 'holder', 'lease'}
local function n(x) return string.format('%d', x) end
local function load()
  local v = redis.call('HMGET', rk, unpack(F))
  if not v[1] then return nil end
  local r = {}
  for i, f in ipairs(F) do r[f] = v[i] or '' end
  r.attempts = tonumber(r.attempts) or 0
  r.qat = tonumber(r.qat) or 0
  r.uat = tonumber(r.uat) or 0
  r.exp = tonumber(r.exp) or 0
  r.lease = tonumber(r.lease) or 0
  -- Past the tombstone window: as good as gone, whatever Redis's own expiry says.
  if now >= r.exp + ttl then return nil end
  return r
end
local function live(r) return r ~= nil and now < r.exp end
local function final(s)
  return s == 'done' or s == 'outcome_unknown' or s == 'cancelled' or s == 'dead_lettered'
end
local function save(r)
  r.uat = now
  redis.call('HSET', rk, 'state', r.state, 'owner', r.owner, 'fp', r.fp,
    'attempts', n(r.attempts), 'err', r.err, 'qat', n(r.qat), 'uat', n(r.uat),
    'exp', n(r.exp), 'holder', r.holder, 'lease', n(r.lease))
  redis.call('PEXPIRE', rk, math.max(r.exp + ttl - now, 1))
end
local function out(code, r)
  if r == nil then return {code} end
  return {code, r.state, r.owner, r.fp, n(r.attempts), r.err, n(r.qat), n(r.uat),
    n(r.exp), r.holder, n(r.lease)}
end
"#
    };
}

/// ARGV 4..6: owner, fingerprint, queued_at. Replies `new` or `existing`.
const CREATE_LUA: &str = concat!(
    lua_prelude!(),
    r#"
local r = load()
if live(r) then return out('existing', r) end
redis.call('DEL', rk, bk)
r = {state = 'pending', owner = ARGV[4], fp = ARGV[5], attempts = 0, err = '',
  qat = tonumber(ARGV[6]), exp = now + ttl, holder = '', lease = 0}
save(r)
redis.call('ZADD', ok, r.qat, id)
return out('new', r)
"#
);

const MARK_QUEUED_LUA: &str = concat!(
    lua_prelude!(),
    r#"
local r = load()
if live(r) and r.state == 'pending' then
  r.state = 'queued'
  save(r)
  return {'ok'}
end
return {'no'}
"#
);

const ABANDON_LUA: &str = concat!(
    lua_prelude!(),
    r#"
local r = load()
if r ~= nil and r.state == 'pending' then
  redis.call('DEL', rk, bk)
  redis.call('ZREM', ok, id)
  return {'ok'}
end
return {'no'}
"#
);

/// Replies `missing`, `found` (plus `status, has_ctype, ctype, body` when done) or
/// `expired`.
const LOOKUP_LUA: &str = concat!(
    lua_prelude!(),
    r#"
local r = load()
if r == nil then return {'missing'} end
if not live(r) then return out('expired', r) end
local res = out('found', r)
if r.state == 'done' then
  local v = redis.call('HMGET', rk, 'status', 'ctype')
  res[12] = v[1] or '0'
  if v[2] then res[13] = '1'; res[14] = v[2] else res[13] = '0'; res[14] = '' end
  res[15] = redis.call('GET', bk) or ''
end
return res
"#
);

/// ARGV 4..5: holder, lease ms. Replies `mine`, `sent`, `held` (plus the lease's
/// end), `final` or `missing`.
const CLAIM_LUA: &str = concat!(
    lua_prelude!(),
    r#"
local r = load()
if not live(r) then
  redis.call('ZREM', ok, id)
  return {'missing'}
end
if final(r.state) then return out('final', r) end
local h = ARGV[4]
-- A record still pending may belong to a publish that is about to be refused
-- (no confirm in time): leave it alone until that decision is certainly made.
local grace = r.qat + tonumber(ARGV[6])
if r.state == 'pending' and grace > now then
  return {'pending', n(grace)}
end
if (r.state == 'delivering' or r.state == 'sent') and r.holder ~= h and r.lease > now then
  return {'held', n(r.lease)}
end
r.attempts = r.attempts + 1
r.holder = h
r.lease = now + tonumber(ARGV[5])
if r.state == 'sent' then
  save(r)
  return out('sent', r)
end
r.state = 'delivering'
save(r)
return out('mine', r)
"#
);

/// ARGV 4..5: holder, lease ms.
const RENEW_LUA: &str = concat!(
    lua_prelude!(),
    r#"
local r = load()
if live(r) and (r.state == 'delivering' or r.state == 'sent') and r.holder == ARGV[4] then
  r.lease = now + tonumber(ARGV[5])
  save(r)
  return {'ok'}
end
return {'no'}
"#
);

/// ARGV 4: holder. `Sent` again by its holder is fine (a resend it was allowed).
const MARK_SENT_LUA: &str = concat!(
    lua_prelude!(),
    r#"
local r = load()
if live(r) and (r.state == 'delivering' or r.state == 'sent') and r.holder == ARGV[4] then
  r.state = 'sent'
  save(r)
  return {'ok'}
end
return {'no'}
"#
);

/// ARGV 4..5: holder, error.
const RELEASE_LUA: &str = concat!(
    lua_prelude!(),
    r#"
local r = load()
if live(r) and (r.state == 'delivering' or r.state == 'sent') and r.holder == ARGV[4] then
  r.state = 'queued'
  r.holder = ''
  r.lease = 0
  r.err = ARGV[5]
  save(r)
  return {'ok'}
end
return {'no'}
"#
);

/// ARGV 4..11: has_holder, holder, final state, error, status, has_ctype, ctype, body.
const FINISH_LUA: &str = concat!(
    lua_prelude!(),
    r#"
local r = load()
if not live(r) then return {'no'} end
if ARGV[4] == '1' then
  if not ((r.state == 'delivering' or r.state == 'sent') and r.holder == ARGV[5]) then
    return {'no'}
  end
elseif final(r.state) then
  return {'no'}
end
r.state = ARGV[6]
r.holder = ''
r.lease = 0
r.exp = now + ttl
if r.state == 'done' then
  redis.call('SET', bk, ARGV[11], 'PX', ttl)
  redis.call('HSET', rk, 'status', ARGV[8])
  if ARGV[9] == '1' then redis.call('HSET', rk, 'ctype', ARGV[10]) else redis.call('HDEL', rk, 'ctype') end
else
  r.err = ARGV[7]
end
save(r)
redis.call('ZREM', ok, id)
return {'ok'}
"#
);

/// ARGV 4: owner. Replies `cancelled`, `late` (with the record) or `missing`.
const CANCEL_LUA: &str = concat!(
    lua_prelude!(),
    r#"
local r = load()
if not live(r) or r.owner ~= ARGV[4] then return {'missing'} end
if r.state == 'pending' or r.state == 'queued' then
  r.state = 'cancelled'
  r.exp = now + ttl
  save(r)
  redis.call('ZREM', ok, id)
  return out('cancelled', r)
end
return out('late', r)
"#
);

/// ARGV 3: the record key prefix. Drops ids from the open set's head that are no
/// longer open (finished, expired or gone: a record can expire while queued) and
/// replies `{count, oldest score}`. Entries deeper in the set are pruned when they
/// reach the head, so the count can include an expired id for a while.
const BACKLOG_LUA: &str = r#"
local now = tonumber(ARGV[1])
local ok, rp = KEYS[1], ARGV[3]
for _ = 1, 100 do
  local head = redis.call('ZRANGE', ok, 0, 0, 'WITHSCORES')
  if #head == 0 then return {'0'} end
  local v = redis.call('HMGET', rp .. head[1], 'state', 'exp')
  local s = v[1]
  if s and (s == 'pending' or s == 'queued' or s == 'delivering' or s == 'sent')
      and now < tonumber(v[2]) then
    return {tostring(redis.call('ZCARD', ok)), head[2]}
  end
  redis.call('ZREM', ok, head[1])
end
local head = redis.call('ZRANGE', ok, 0, 0, 'WITHSCORES')
if #head == 0 then return {'0'} end
return {tostring(redis.call('ZCARD', ok)), head[2]}
"#;

struct Scripts {
    create: Script,
    mark_queued: Script,
    abandon: Script,
    lookup: Script,
    claim: Script,
    renew: Script,
    mark_sent: Script,
    release: Script,
    finish: Script,
    cancel: Script,
    backlog: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            create: Script::new(CREATE_LUA),
            mark_queued: Script::new(MARK_QUEUED_LUA),
            abandon: Script::new(ABANDON_LUA),
            lookup: Script::new(LOOKUP_LUA),
            claim: Script::new(CLAIM_LUA),
            renew: Script::new(RENEW_LUA),
            mark_sent: Script::new(MARK_SENT_LUA),
            release: Script::new(RELEASE_LUA),
            finish: Script::new(FINISH_LUA),
            cancel: Script::new(CANCEL_LUA),
            backlog: Script::new(BACKLOG_LUA),
        }
    }
}

struct Inner {
    conn: ConnectionManager,
    /// `P{R}:`: every key of this region starts with it.
    base: String,
    ttl_ms: u64,
    /// How long a `pending` record is left to its publisher (see [`pending_grace`]).
    grace_ms: u64,
    up: AtomicBool,
    /// The URL's password, scrubbed from any error text before it is logged.
    secret: Option<String>,
    /// `host:port` for messages (never the URL, which may carry a password).
    endpoint: String,
    scripts: Scripts,
}

/// The Redis-backed deferred store. Clone-free: wrap it in an `Arc<dyn Store>`.
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl RedisStore {
    /// Builds the store for `region` on the Redis at `url` (one server, not a
    /// cluster). Does not need Redis to be up: it PINGs once (bounded by the op
    /// timeout), then a background probe keeps [`Store::state`] current until the
    /// store is dropped. Errs only on a URL that does not parse.
    pub async fn new(url: &str, region: &str, settings: &Deferred) -> Result<RedisStore> {
        let (secret, endpoint) = url_parts(url);
        let client = redis::Client::open(url).map_err(|_| {
            Error::config(format!(
                "deferred.redis: not a valid Redis URL (for {endpoint})"
            ))
        })?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(OP_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, cfg).map_err(|e| {
            Error::config("deferred.redis: could not set up the client")
                .with_detail(scrub(&e.to_string(), secret.as_deref()))
        })?;
        let inner = Arc::new(Inner {
            conn,
            base: format!("{}{{{region}}}:", settings.key_prefix),
            ttl_ms: ms(settings.result_ttl).max(1),
            grace_ms: ms(super::pending_grace(settings)),
            up: AtomicBool::new(false),
            secret,
            endpoint,
            scripts: Scripts::new(),
        });
        if !inner.ping().await {
            tracing::warn!(
                redis = %inner.endpoint,
                "deferred store: Redis does not answer yet; deferral is refused until it does"
            );
        }
        tokio::spawn(probe_loop(Arc::downgrade(&inner)));
        Ok(RedisStore { inner })
    }

    /// Warnings about Redis settings that can lose acknowledged results: AOF off,
    /// `appendfsync no`, an eviction policy. Empty when all is well; one warning
    /// when `CONFIG GET` is refused (managed Redis often disables it) or Redis is down.
    pub async fn durability_warnings(&self) -> Vec<String> {
        let inner = &self.inner;
        let mut out = Vec::new();
        let get = |name: &'static str| {
            let mut conn = inner.conn.clone();
            async move {
                let r = tokio::time::timeout(
                    OP_TIMEOUT,
                    redis::cmd("CONFIG")
                        .arg("GET")
                        .arg(name)
                        .query_async::<Vec<String>>(&mut conn),
                )
                .await;
                match r {
                    Ok(Ok(v)) if v.len() >= 2 => Ok(v[1].clone()),
                    Ok(Ok(_)) => Err(format!("CONFIG GET {name} answered nothing")),
                    Ok(Err(e)) => Err(scrub(&e.to_string(), inner.secret.as_deref())),
                    Err(_) => Err("timed out".to_string()),
                }
            }
        };
        let (aof, fsync, policy) = match (
            get("appendonly").await,
            get("appendfsync").await,
            get("maxmemory-policy").await,
        ) {
            (Ok(a), Ok(f), Ok(p)) => (a, f, p),
            (a, f, p) => {
                let why = [a.err(), f.err(), p.err()].into_iter().flatten().next();
                out.push(format!(
                    "could not check the deferred Redis's persistence settings ({}): make sure \
                     it runs with appendonly yes and maxmemory-policy noeviction",
                    why.unwrap_or_default()
                ));
                return out;
            }
        };
        if aof != "yes" {
            out.push(format!(
                "the deferred Redis ({}) runs with appendonly {aof}: acknowledged deferred \
                 results can be lost on restart (set appendonly yes)",
                inner.endpoint
            ));
        } else if fsync == "no" {
            out.push(format!(
                "the deferred Redis ({}) runs with appendfsync no: the OS decides when the AOF \
                 reaches disk, and a machine crash can lose acknowledged deferred results \
                 (set appendfsync everysec or always)",
                inner.endpoint
            ));
        }
        if policy != "noeviction" {
            out.push(format!(
                "the deferred Redis ({}) runs with maxmemory-policy {policy}: under memory \
                 pressure it can evict deferred records and results (set noeviction)",
                inner.endpoint
            ));
        }
        out
    }

    fn keys(&self, id: &DeferredId) -> [String; 3] {
        let b = &self.inner.base;
        [
            format!("{b}r:{id}"),
            format!("{b}b:{id}"),
            format!("{b}open"),
        ]
    }

    /// Runs one transition script on `id` with `now`, the TTL, the id and `args`.
    async fn run(
        &self,
        op: &'static str,
        script: &Script,
        id: &DeferredId,
        args: &[&[u8]],
    ) -> Result<Vec<Value>> {
        let mut inv = script.prepare_invoke();
        for k in self.keys(id) {
            inv.key(k);
        }
        inv.arg(now_ms()).arg(self.inner.ttl_ms).arg(id.as_str());
        for a in args {
            inv.arg(*a);
        }
        self.inner.invoke(op, &inv).await
    }
}

impl Inner {
    async fn invoke(
        &self,
        op: &'static str,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<Vec<Value>> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(OP_TIMEOUT, inv.invoke_async::<Vec<Value>>(&mut conn)).await {
            Ok(Ok(v)) => {
                self.set_up(true, "");
                Ok(v)
            }
            Ok(Err(e)) => Err(self.failed(op, &e.to_string())),
            Err(_) => Err(self.failed(op, "timed out")),
        }
    }

    fn failed(&self, op: &'static str, why: &str) -> Error {
        let why = scrub(why, self.secret.as_deref());
        self.set_up(false, &why);
        Error::new(
            ErrorKind::Unavailable,
            "the deferred store (Redis) is unavailable",
        )
        .with_detail(format!("{op} on {}: {why}", self.endpoint))
    }

    fn set_up(&self, up: bool, why: &str) {
        let was = self.up.swap(up, Ordering::Relaxed);
        if was && !up {
            tracing::warn!(redis = %self.endpoint, reason = why, "deferred store: Redis unreachable");
        } else if up && !was {
            tracing::info!(redis = %self.endpoint, "deferred store: Redis reachable");
        }
    }

    async fn ping(&self) -> bool {
        let mut conn = self.conn.clone();
        let ok = matches!(
            tokio::time::timeout(
                OP_TIMEOUT,
                redis::cmd("PING").query_async::<String>(&mut conn)
            )
            .await,
            Ok(Ok(_))
        );
        self.set_up(ok, "ping failed");
        ok
    }
}

/// PINGs while the store lives: quickly while Redis is down (readiness and the
/// consumers follow [`Store::state`]), now and then while it is up.
async fn probe_loop(inner: Weak<Inner>) {
    loop {
        let pause = match inner.upgrade() {
            Some(i) if i.up.load(Ordering::Relaxed) => PROBE_UP,
            Some(_) => PROBE_DOWN,
            None => return,
        };
        tokio::time::sleep(pause).await;
        let Some(i) = inner.upgrade() else { return };
        i.ping().await;
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The URL's password (if any) and its `host:port` for messages.
fn url_parts(url: &str) -> (Option<String>, String) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let pass = userinfo.split_once(':').map_or(userinfo, |(_, p)| p);
            let secret = (!pass.is_empty()).then(|| pass.to_string());
            (secret, host.to_string())
        }
        None => (None, authority.to_string()),
    }
}

/// `text` with every occurrence of `secret` replaced.
fn scrub(text: &str, secret: Option<&str>) -> String {
    match secret {
        Some(s) if !s.is_empty() => text.replace(s, "***"),
        _ => text.to_string(),
    }
}

fn bad_reply(op: &str) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        "the deferred store (Redis) answered something unexpected",
    )
    .with_detail(format!("{op}: unexpected script reply"))
}

fn bytes_of(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::Okay => Some(b"OK"),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    bytes_of(v).map(|b| String::from_utf8_lossy(b).into_owned())
}

fn num(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        _ => {
            let t = text(v)?;
            t.parse::<u64>()
                .ok()
                .or_else(|| t.parse::<f64>().ok().map(|f| f as u64))
        }
    }
}

fn code(v: &[Value]) -> Option<String> {
    v.first().and_then(text)
}

/// Reads a record from a reply laid out by the scripts' `out`.
fn parse_record(id: &DeferredId, v: &[Value]) -> Option<Record> {
    if v.len() < 11 {
        return None;
    }
    let err = text(&v[5])?;
    let holder = text(&v[9])?;
    Some(Record {
        id: id.clone(),
        state: State::parse(&text(&v[1])?)?,
        owner: text(&v[2])?,
        fingerprint: text(&v[3])?,
        attempts: u32::try_from(num(&v[4])?).unwrap_or(u32::MAX),
        last_error: (!err.is_empty()).then_some(err),
        queued_at_ms: num(&v[6])?,
        updated_at_ms: num(&v[7])?,
        expires_at_ms: num(&v[8])?,
        holder: (!holder.is_empty()).then_some(holder),
        lease_until_ms: num(&v[10])?,
    })
}

fn ok_flag(op: &str, v: &[Value]) -> Result<bool> {
    match code(v).as_deref() {
        Some("ok") => Ok(true),
        Some("no") => Ok(false),
        _ => Err(bad_reply(op)),
    }
}

impl Store for RedisStore {
    fn create<'a>(&'a self, new: &'a NewRecord) -> BoxFuture<'a, Result<Created>> {
        Box::pin(async move {
            let qat = new.queued_at_ms.to_string();
            let v = self
                .run(
                    "create",
                    &self.inner.scripts.create,
                    &new.id,
                    &[
                        new.owner.as_bytes(),
                        new.fingerprint.as_bytes(),
                        qat.as_bytes(),
                    ],
                )
                .await?;
            match code(&v).as_deref() {
                Some("new") => Ok(Created::New),
                Some("existing") => parse_record(&new.id, &v)
                    .map(Created::Existing)
                    .ok_or_else(|| bad_reply("create")),
                _ => Err(bad_reply("create")),
            }
        })
    }

    fn mark_queued<'a>(&'a self, id: &'a DeferredId) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let v = self
                .run("mark_queued", &self.inner.scripts.mark_queued, id, &[])
                .await?;
            ok_flag("mark_queued", &v).map(|_| ())
        })
    }

    fn abandon<'a>(&'a self, id: &'a DeferredId) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let v = self
                .run("abandon", &self.inner.scripts.abandon, id, &[])
                .await?;
            ok_flag("abandon", &v).map(|_| ())
        })
    }

    fn lookup<'a>(&'a self, id: &'a DeferredId) -> BoxFuture<'a, Result<Lookup>> {
        Box::pin(async move {
            let v = self
                .run("lookup", &self.inner.scripts.lookup, id, &[])
                .await?;
            match code(&v).as_deref() {
                Some("missing") => Ok(Lookup::Missing),
                Some("expired") => parse_record(id, &v)
                    .map(Lookup::Expired)
                    .ok_or_else(|| bad_reply("lookup")),
                Some("found") => {
                    let rec = parse_record(id, &v).ok_or_else(|| bad_reply("lookup"))?;
                    let result = if v.len() >= 15 {
                        let status = num(&v[11]).ok_or_else(|| bad_reply("lookup"))?;
                        let has_ct = text(&v[12]).as_deref() == Some("1");
                        Some(StoredResult {
                            status: u16::try_from(status).unwrap_or(0),
                            content_type: if has_ct { text(&v[13]) } else { None },
                            body: bytes::Bytes::from(bytes_of(&v[14]).unwrap_or_default().to_vec()),
                        })
                    } else {
                        None
                    };
                    Ok(Lookup::Found(rec, result))
                }
                _ => Err(bad_reply("lookup")),
            }
        })
    }

    fn claim<'a>(
        &'a self,
        id: &'a DeferredId,
        holder: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim>> {
        Box::pin(async move {
            let lease = ms(lease).to_string();
            let grace = self.inner.grace_ms.to_string();
            let v = self
                .run(
                    "claim",
                    &self.inner.scripts.claim,
                    id,
                    &[holder.as_bytes(), lease.as_bytes(), grace.as_bytes()],
                )
                .await?;
            let rec = || parse_record(id, &v).ok_or_else(|| bad_reply("claim"));
            match code(&v).as_deref() {
                Some("mine") => Ok(Claim::Mine(rec()?)),
                Some("sent") => Ok(Claim::WasSent(rec()?)),
                Some("final") => Ok(Claim::Finished(rec()?.state)),
                Some("missing") => Ok(Claim::Missing),
                Some("held") => Ok(Claim::HeldElsewhere {
                    until_ms: v.get(1).and_then(num).ok_or_else(|| bad_reply("claim"))?,
                }),
                Some("pending") => Ok(Claim::Pending {
                    until_ms: v.get(1).and_then(num).ok_or_else(|| bad_reply("claim"))?,
                }),
                _ => Err(bad_reply("claim")),
            }
        })
    }

    fn renew<'a>(
        &'a self,
        id: &'a DeferredId,
        holder: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let lease = ms(lease).to_string();
            let v = self
                .run(
                    "renew",
                    &self.inner.scripts.renew,
                    id,
                    &[holder.as_bytes(), lease.as_bytes()],
                )
                .await?;
            ok_flag("renew", &v)
        })
    }

    fn mark_sent<'a>(&'a self, id: &'a DeferredId, holder: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let v = self
                .run(
                    "mark_sent",
                    &self.inner.scripts.mark_sent,
                    id,
                    &[holder.as_bytes()],
                )
                .await?;
            ok_flag("mark_sent", &v)
        })
    }

    fn release<'a>(
        &'a self,
        id: &'a DeferredId,
        holder: &'a str,
        error: &'a str,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let v = self
                .run(
                    "release",
                    &self.inner.scripts.release,
                    id,
                    &[holder.as_bytes(), error.as_bytes()],
                )
                .await?;
            ok_flag("release", &v)
        })
    }

    fn finish<'a>(
        &'a self,
        id: &'a DeferredId,
        holder: Option<&'a str>,
        outcome: Finish,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let has_holder: &[u8] = if holder.is_some() { b"1" } else { b"0" };
            let (state, error, status, ct, body) = match &outcome {
                Finish::Done(r) => (
                    State::Done,
                    "",
                    r.status.to_string(),
                    r.content_type.as_deref(),
                    &r.body[..],
                ),
                Finish::OutcomeUnknown { error } => (
                    State::OutcomeUnknown,
                    error.as_str(),
                    String::new(),
                    None,
                    &[][..],
                ),
                Finish::Dead { error } => {
                    (State::Dead, error.as_str(), String::new(), None, &[][..])
                }
            };
            let has_ct: &[u8] = if ct.is_some() { b"1" } else { b"0" };
            let v = self
                .run(
                    "finish",
                    &self.inner.scripts.finish,
                    id,
                    &[
                        has_holder,
                        holder.unwrap_or("").as_bytes(),
                        state.as_str().as_bytes(),
                        error.as_bytes(),
                        status.as_bytes(),
                        has_ct,
                        ct.unwrap_or("").as_bytes(),
                        body,
                    ],
                )
                .await?;
            ok_flag("finish", &v)
        })
    }

    fn cancel<'a>(&'a self, id: &'a DeferredId, owner: &'a str) -> BoxFuture<'a, Result<Cancel>> {
        Box::pin(async move {
            let v = self
                .run(
                    "cancel",
                    &self.inner.scripts.cancel,
                    id,
                    &[owner.as_bytes()],
                )
                .await?;
            match code(&v).as_deref() {
                Some("cancelled") => Ok(Cancel::Cancelled),
                Some("missing") => Ok(Cancel::Missing),
                Some("late") => parse_record(id, &v)
                    .map(|r| Cancel::TooLate(r.state))
                    .ok_or_else(|| bad_reply("cancel")),
                _ => Err(bad_reply("cancel")),
            }
        })
    }

    fn backlog(&self) -> BoxFuture<'_, Result<Backlog>> {
        Box::pin(async move {
            let b = &self.inner.base;
            let mut inv = self.inner.scripts.backlog.prepare_invoke();
            inv.key(format!("{b}open"))
                .arg(now_ms())
                .arg(self.inner.ttl_ms)
                .arg(format!("{b}r:"));
            let v = self.inner.invoke("backlog", &inv).await?;
            let open = v
                .first()
                .and_then(num)
                .ok_or_else(|| bad_reply("backlog"))?;
            Ok(Backlog {
                open,
                oldest_queued_at_ms: v.get(1).and_then(num),
            })
        })
    }

    fn state(&self) -> BackendState {
        if self.inner.up.load(Ordering::Relaxed) {
            BackendState::Up
        } else {
            BackendState::Down
        }
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parts_find_the_password_and_keep_it_out_of_the_endpoint() {
        assert_eq!(
            url_parts("redis://:pw@h:6379/0"),
            (Some("pw".into()), "h:6379".into())
        );
        assert_eq!(
            url_parts("rediss://user:s3@h:1?x=y"),
            (Some("s3".into()), "h:1".into())
        );
        assert_eq!(url_parts("redis://h:1"), (None, "h:1".into()));
        assert_eq!(scrub("AUTH s3 failed", Some("s3")), "AUTH *** failed");
    }
}
