//! The upstream key pool, following Anthropic's own limit model: keys belong to
//! organisations, and an organisation's limits are per scope ([`super::scope`]). A
//! 429 cools one scope of one organisation for its `retry-after`; a key the upstream
//! refuses (401/403) is retired; a billing or spend-limit error rests the whole
//! organisation. A 529 or another 5xx says nothing about a key and changes nothing here.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use http::{HeaderValue, StatusCode};

use super::scope::{ModelClasses, Scope, ScopeKey};
use crate::config::{Upstream as UpstreamConfig, UpstreamKey};
use crate::head::HeaderFields;

/// Why a key, or its organisation, is not used for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reason {
    /// A 429: one scope of the organisation rests for the `retry-after`.
    RateLimited = 1,
    /// A 401: the upstream does not know the key (revoked, mistyped).
    Revoked = 2,
    /// A 403: the key may not be used here (another workspace, say).
    Forbidden = 3,
    /// A 402 `billing_error`: the organisation rests for `upstream.org_rest`.
    Billing = 4,
    /// The 400 that says the organisation reached its spend limit: likewise.
    SpendLimit = 5,
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::RateLimited => "rate_limited",
            Reason::Revoked => "revoked",
            Reason::Forbidden => "forbidden",
            Reason::Billing => "billing",
            Reason::SpendLimit => "spend_limit",
        }
    }

    fn from_u8(v: u8) -> Option<Reason> {
        Some(match v {
            1 => Reason::RateLimited,
            2 => Reason::Revoked,
            3 => Reason::Forbidden,
            4 => Reason::Billing,
            5 => Reason::SpendLimit,
            _ => return None,
        })
    }
}

/// What an upstream answer did to the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub reason: Reason,
    /// How long the scope or the organisation rests; `None` for a retired key.
    pub wait: Option<Duration>,
    /// The scope cooled (`messages/sonnet`), for a 429; `None` otherwise.
    pub scope: Option<ScopeKey>,
}

/// Why no key could be picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoKey {
    /// Every key that could serve is cooling for this scope; the first is free
    /// again after `wait`.
    Cooling { wait: Duration, scope: ScopeKey },
    /// No key can serve anything: each is retired or its organisation rests.
    /// `wait`: until the first rest ends, if any key is only resting.
    Unusable {
        retired: usize,
        resting: usize,
        wait: Option<Duration>,
    },
}

/// The 400 Anthropic sends when an organisation reached the spend limit it set.
const SPEND_LIMIT_TEXT: &str = "reached your specified API usage limits";

/// Upper bound on any single cooldown, so a bogus `retry-after` cannot park a scope for days.
const MAX_COOLDOWN: Duration = Duration::from_secs(3600);

/// At most this many scopes are remembered cooling per organisation: a client
/// sending made-up model ids (each its own class) cannot grow the list without bound.
const MAX_COOLING_SCOPES: usize = 64;

/// How the pool treats answers; from `[upstream]`.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// A 429 without `retry-after` cools its scope this long.
    pub default_cooldown: Duration,
    /// A billing or spend-limit error rests the organisation this long.
    pub org_rest: Duration,
    pub classes: Arc<ModelClasses>,
}

impl PoolSettings {
    pub fn from_config(u: &UpstreamConfig) -> PoolSettings {
        PoolSettings {
            default_cooldown: u.key_cooldown,
            org_rest: u.org_rest,
            classes: Arc::new(ModelClasses::new(&u.model_classes)),
        }
    }
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            default_cooldown: crate::config::DEFAULT_KEY_COOLDOWN,
            org_rest: crate::config::DEFAULT_ORG_REST,
            classes: Arc::new(ModelClasses::default()),
        }
    }
}

/// One clock for every pool, so a rest carried from one snapshot's pool to the next
/// keeps its end without conversion.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    // +1: 0 means "never" in the atomics below.
    epoch().elapsed().as_millis() as u64 + 1
}

struct PoolKey {
    /// Ready-to-send header value, marked sensitive so HTTP/2 never indexes it.
    header: HeaderValue,
    /// Stable label for logs and metrics, never the key ("k1", "prod-1", ...).
    label: String,
    /// Index into `KeyPool::orgs`.
    org: usize,
    /// 0, or the [`Reason`] the key was retired for.
    retired: AtomicU8,
}

struct Cool {
    scope: ScopeKey,
    until_ms: u64,
}

struct Org {
    /// The operator's name for it; `None` for a key without one (an org of its own).
    name: Option<String>,
    /// The latest end of any cooling scope (0: none ever): a request looks at
    /// `cooling` only while this is in the future.
    cool_max_ms: AtomicU64,
    cooling: Mutex<Vec<Cool>>,
    /// End of a billing or spend-limit rest of the whole organisation (0: none).
    rest_until_ms: AtomicU64,
    rest_reason: AtomicU8,
}

impl Org {
    fn label(&self) -> &str {
        self.name.as_deref().unwrap_or("none")
    }

    fn resting(&self, now: &mut Option<u64>) -> bool {
        let until = self.rest_until_ms.load(Ordering::Relaxed);
        until != 0 && until > *now.get_or_insert_with(now_ms)
    }

    /// Whether `scope` is cooling for this organisation; `Some(end)` if so.
    fn cooling_until(
        &self,
        scope: &Scope<'_>,
        classes: &ModelClasses,
        now: &mut Option<u64>,
    ) -> Option<u64> {
        let max = self.cool_max_ms.load(Ordering::Relaxed);
        if max == 0 {
            return None;
        }
        let t = *now.get_or_insert_with(now_ms);
        if max <= t {
            return None;
        }
        let cooling = self.cooling.lock().unwrap_or_else(PoisonError::into_inner);
        cooling
            .iter()
            .find(|c| c.until_ms > t && scope.is(&c.scope, classes))
            .map(|c| c.until_ms)
    }

    fn cool(&self, scope: ScopeKey, until_ms: u64) {
        let now = now_ms();
        let mut cooling = self.cooling.lock().unwrap_or_else(PoisonError::into_inner);
        cooling.retain(|c| c.until_ms > now);
        if let Some(c) = cooling.iter_mut().find(|c| c.scope == scope) {
            c.until_ms = c.until_ms.max(until_ms);
        } else if cooling.len() < MAX_COOLING_SCOPES {
            cooling.push(Cool { scope, until_ms });
        }
        self.cool_max_ms.fetch_max(until_ms, Ordering::Relaxed);
    }
}

/// The pool of upstream keys. Picking a key at rest is three atomic loads per key
/// and no clock read; the per-organisation lock is taken only while something cools.
pub struct KeyPool {
    keys: Vec<PoolKey>,
    orgs: Vec<Org>,
    next: AtomicUsize,
    settings: PoolSettings,
}

/// A key picked for one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRef(usize);

/// Keys by state, for metrics and readiness.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Census {
    pub total: usize,
    /// Usable for every scope now.
    pub ready: usize,
    /// Usable, but cooling for at least one scope.
    pub cooling: usize,
    /// Its organisation rests after a billing or spend-limit error.
    pub resting: usize,
    pub retired: usize,
    /// Scopes for which every usable key is cooling (labels, e.g. `messages/sonnet`).
    pub cooled_scopes: BTreeSet<String>,
}

impl Census {
    pub fn add(&mut self, other: Census) {
        self.total += other.total;
        self.ready += other.ready;
        self.cooling += other.cooling;
        self.resting += other.resting;
        self.retired += other.retired;
        self.cooled_scopes.extend(other.cooled_scopes);
    }

    /// Keys that can serve at least some requests.
    pub fn usable(&self) -> usize {
        self.ready + self.cooling
    }
}

impl KeyPool {
    /// A pool of `keys`. State of the `previous` pool carries over: a scope cooling
    /// or an organisation resting stays so (matched by key and organisation name), and
    /// retired keys stay retired unless the pool's keys changed, so a config change
    /// elsewhere (a tenant added) does not send traffic to a key known to be refused.
    pub fn new(keys: &[UpstreamKey], settings: PoolSettings, previous: Option<&KeyPool>) -> Self {
        let mut orgs: Vec<Org> = Vec::new();
        let mut pool_keys = Vec::with_capacity(keys.len());
        for k in keys {
            let mut header =
                HeaderValue::from_str(k.secret.expose()).expect("validated at config load");
            header.set_sensitive(true);
            let org = match &k.org {
                Some(name) => orgs.iter().position(|o| o.name.as_ref() == Some(name)),
                None => None,
            }
            .unwrap_or_else(|| {
                orgs.push(Org {
                    name: k.org.clone(),
                    cool_max_ms: AtomicU64::new(0),
                    cooling: Mutex::new(Vec::new()),
                    rest_until_ms: AtomicU64::new(0),
                    rest_reason: AtomicU8::new(0),
                });
                orgs.len() - 1
            });
            pool_keys.push(PoolKey {
                header,
                label: k.label.clone(),
                org,
                retired: AtomicU8::new(0),
            });
        }
        let pool = KeyPool {
            keys: pool_keys,
            orgs,
            next: AtomicUsize::new(0),
            settings,
        };
        if let Some(prev) = previous {
            pool.carry_over(prev);
        }
        pool
    }

    fn carry_over(&self, prev: &KeyPool) {
        let same_keys = prev.keys.len() == self.keys.len()
            && self.keys.iter().all(|k| prev.find(&k.header).is_some());
        let mut carried = vec![false; self.orgs.len()];
        for k in &self.keys {
            let Some(old) = prev.find(&k.header) else {
                continue;
            };
            if same_keys {
                let r = old.retired.load(Ordering::Relaxed);
                k.retired.store(r, Ordering::Relaxed);
            }
            let (new_org, old_org) = (&self.orgs[k.org], &prev.orgs[old.org]);
            if carried[k.org] || new_org.name != old_org.name {
                continue;
            }
            carried[k.org] = true;
            let rest = old_org.rest_until_ms.load(Ordering::Relaxed);
            new_org.rest_until_ms.store(rest, Ordering::Relaxed);
            new_org.rest_reason.store(
                old_org.rest_reason.load(Ordering::Relaxed),
                Ordering::Relaxed,
            );
            let cooling = old_org
                .cooling
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for c in cooling.iter() {
                new_org.cool(c.scope.clone(), c.until_ms);
            }
        }
    }

    fn find(&self, header: &HeaderValue) -> Option<&PoolKey> {
        self.keys
            .iter()
            .find(|k| k.header.as_bytes() == header.as_bytes())
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The next key in rotation that can serve `scope`, skipping `avoid` (the key
    /// that just failed with a 5xx) when another can serve.
    pub fn pick(&self, scope: &Scope<'_>, avoid: Option<KeyRef>) -> Result<KeyRef, NoKey> {
        let n = self.keys.len();
        // The clock is read only once something has ever rested (0: never).
        let mut now = None;
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut fallback = None;
        for i in 0..n {
            let idx = (start + i) % n;
            let k = &self.keys[idx];
            if k.retired.load(Ordering::Relaxed) != 0 {
                continue;
            }
            let org = &self.orgs[k.org];
            if org.resting(&mut now)
                || org
                    .cooling_until(scope, &self.settings.classes, &mut now)
                    .is_some()
            {
                continue;
            }
            if avoid == Some(KeyRef(idx)) {
                fallback = Some(KeyRef(idx));
                continue;
            }
            return Ok(KeyRef(idx));
        }
        fallback.ok_or_else(|| self.why_none(scope))
    }

    /// Whether a key of another organisation than `key`'s can serve `scope` now.
    pub fn other_org_can_serve(&self, scope: &Scope<'_>, key: KeyRef) -> bool {
        let org = self.keys[key.0].org;
        let mut now = None;
        self.keys.iter().any(|k| {
            k.org != org
                && k.retired.load(Ordering::Relaxed) == 0
                && !self.orgs[k.org].resting(&mut now)
                && self.orgs[k.org]
                    .cooling_until(scope, &self.settings.classes, &mut now)
                    .is_none()
        })
    }

    fn why_none(&self, scope: &Scope<'_>) -> NoKey {
        let mut now = None;
        let (mut retired, mut resting) = (0, 0);
        let mut cool_end: Option<u64> = None;
        let mut rest_end: Option<u64> = None;
        for k in &self.keys {
            if k.retired.load(Ordering::Relaxed) != 0 {
                retired += 1;
                continue;
            }
            let org = &self.orgs[k.org];
            if org.resting(&mut now) {
                resting += 1;
                let until = org.rest_until_ms.load(Ordering::Relaxed);
                rest_end = Some(rest_end.map_or(until, |e| e.min(until)));
                continue;
            }
            if let Some(until) = org.cooling_until(scope, &self.settings.classes, &mut now) {
                cool_end = Some(cool_end.map_or(until, |e| e.min(until)));
            }
        }
        let t = now.unwrap_or_else(now_ms);
        let left = |until: u64| Duration::from_millis(until.saturating_sub(t).max(1));
        match cool_end {
            Some(until) => NoKey::Cooling {
                wait: left(until),
                scope: scope.to_key(&self.settings.classes),
            },
            None => NoKey::Unusable {
                retired,
                resting,
                wait: rest_end.map(left),
            },
        }
    }

    pub fn header(&self, key: KeyRef) -> &HeaderValue {
        &self.keys[key.0].header
    }

    pub fn label(&self, key: KeyRef) -> &str {
        &self.keys[key.0].label
    }

    /// The label of the key's organisation (`none` for a key without one).
    pub fn org_label(&self, key: KeyRef) -> &str {
        self.orgs[self.keys[key.0].org].label()
    }

    /// Whether an answer with this status may say something about the key, so that
    /// its body is worth a look (only the spend-limit 400 is told by its body).
    pub fn needs_body(status: StatusCode) -> bool {
        status == StatusCode::BAD_REQUEST
    }

    /// Looks at an upstream answer to a request of `scope` sent with `key` and acts
    /// on what it says about the key or its organisation. `body` is the start of the
    /// answer's body where [`Self::needs_body`] asked for it.
    pub fn observe(
        &self,
        key: KeyRef,
        scope: &Scope<'_>,
        status: StatusCode,
        headers: &HeaderFields,
        body: Option<&[u8]>,
    ) -> Option<Verdict> {
        let k = &self.keys[key.0];
        let org = &self.orgs[k.org];
        match status.as_u16() {
            429 => {
                let wait = cooldown_for(headers, self.settings.default_cooldown);
                let scope = scope.to_key(&self.settings.classes);
                org.cool(scope.clone(), now_ms() + wait.as_millis() as u64);
                Some(Verdict {
                    reason: Reason::RateLimited,
                    wait: Some(wait),
                    scope: Some(scope),
                })
            }
            401 | 403 => {
                let reason = if status == StatusCode::UNAUTHORIZED {
                    Reason::Revoked
                } else {
                    Reason::Forbidden
                };
                k.retired.store(reason as u8, Ordering::Relaxed);
                Some(Verdict {
                    reason,
                    wait: None,
                    scope: None,
                })
            }
            402 => Some(self.rest(org, Reason::Billing)),
            400 if body.is_some_and(is_spend_limit) => Some(self.rest(org, Reason::SpendLimit)),
            _ => None,
        }
    }

    fn rest(&self, org: &Org, reason: Reason) -> Verdict {
        let wait = self.settings.org_rest;
        org.rest_until_ms
            .fetch_max(now_ms() + wait.as_millis() as u64, Ordering::Relaxed);
        org.rest_reason.store(reason as u8, Ordering::Relaxed);
        Verdict {
            reason,
            wait: Some(wait),
            scope: None,
        }
    }

    /// Keys by state, and the scopes no usable key can serve now.
    pub fn census(&self) -> Census {
        let t = now_ms();
        let mut now = Some(t);
        let mut c = Census {
            total: self.keys.len(),
            ..Census::default()
        };
        let mut usable_orgs = Vec::new();
        for k in &self.keys {
            if k.retired.load(Ordering::Relaxed) != 0 {
                c.retired += 1;
                continue;
            }
            let org = &self.orgs[k.org];
            if org.resting(&mut now) {
                c.resting += 1;
                continue;
            }
            if !usable_orgs.contains(&k.org) {
                usable_orgs.push(k.org);
            }
            if org.cool_max_ms.load(Ordering::Relaxed) > t
                && org
                    .cooling
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .iter()
                    .any(|s| s.until_ms > t)
            {
                c.cooling += 1;
            } else {
                c.ready += 1;
            }
        }
        // A scope is cooled when every organisation with a usable key cools it.
        let cooling_in = |o: &Org| -> BTreeSet<ScopeKey> {
            o.cooling
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .filter(|s| s.until_ms > t)
                .map(|s| s.scope.clone())
                .collect()
        };
        let mut cooled: Option<BTreeSet<ScopeKey>> = None;
        for &o in &usable_orgs {
            let here = cooling_in(&self.orgs[o]);
            cooled = Some(match cooled {
                None => here,
                Some(all) => all.intersection(&here).cloned().collect(),
            });
        }
        c.cooled_scopes = cooled
            .unwrap_or_default()
            .iter()
            .map(ScopeKey::label)
            .collect();
        c
    }

    /// Each key's label, organisation, state and cooling scopes, for the operator
    /// (never the key): the admin listener's `/keys`, and the dashboard.
    pub fn key_states(&self) -> Vec<KeyState> {
        let t = now_ms();
        let mut now = Some(t);
        self.keys
            .iter()
            .map(|k| {
                let org = &self.orgs[k.org];
                let state = if let Some(r) = Reason::from_u8(k.retired.load(Ordering::Relaxed)) {
                    format!("retired:{}", r.label())
                } else if org.resting(&mut now) {
                    let r = Reason::from_u8(org.rest_reason.load(Ordering::Relaxed))
                        .map_or("rest", Reason::label);
                    format!("resting:{r}")
                } else {
                    "usable".to_string()
                };
                let cooling = org
                    .cooling
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .iter()
                    .filter(|c| c.until_ms > t)
                    .map(|c| (c.scope.label(), Duration::from_millis(c.until_ms - t)))
                    .collect();
                KeyState {
                    label: k.label.clone(),
                    org: org.label().to_string(),
                    state,
                    cooling,
                }
            })
            .collect()
    }
}

/// One key as [`KeyPool::key_states`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyState {
    pub label: String,
    pub org: String,
    /// `usable`, `retired:revoked`, `retired:forbidden`, `resting:billing`, `resting:spend_limit`.
    pub state: String,
    /// Scopes cooling for the key's organisation, and how long each has left.
    pub cooling: Vec<(String, Duration)>,
}

/// How long a 429 cools its scope: the `retry-after`, or `default` without one.
/// The `anthropic-ratelimit-*-reset` headers are not used: they give the time to a
/// full refill of a continuously refilling bucket, not to the next request that
/// fits, and resting a key until then would idle it for up to a minute.
pub fn cooldown_for(headers: &HeaderFields, default: Duration) -> Duration {
    headers
        .get(&http::header::RETRY_AFTER)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(default)
        .min(MAX_COOLDOWN)
}

/// Whether a 400's body is Anthropic's "You have reached your specified API usage
/// limits" (the organisation's spend limit), which says nothing about the request.
pub fn is_spend_limit(body: &[u8]) -> bool {
    body.windows(SPEND_LIMIT_TEXT.len())
        .any(|w| w == SPEND_LIMIT_TEXT.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use crate::meta::RouteKind;
    use http::HeaderMap;

    fn keys(orgs: &[Option<&str>]) -> Vec<UpstreamKey> {
        orgs.iter()
            .enumerate()
            .map(|(i, o)| UpstreamKey {
                label: format!("k{}", i + 1),
                org: o.map(str::to_string),
                secret: Secret::new(format!("sk-{i}")),
            })
            .collect()
    }

    fn pool(orgs: &[Option<&str>]) -> KeyPool {
        KeyPool::new(&keys(orgs), PoolSettings::default(), None)
    }

    fn sonnet() -> Scope<'static> {
        Scope::new(RouteKind::Messages, Some("claude-sonnet-4-5"))
    }

    fn haiku() -> Scope<'static> {
        Scope::new(RouteKind::Messages, Some("claude-haiku-4-5"))
    }

    fn retry_after(secs: &str) -> HeaderFields {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_str(secs).unwrap());
        HeaderFields::Map(h)
    }

    fn limited(p: &KeyPool, k: KeyRef, scope: &Scope<'_>, secs: &str) -> Verdict {
        p.observe(
            k,
            scope,
            StatusCode::TOO_MANY_REQUESTS,
            &retry_after(secs),
            None,
        )
        .unwrap()
    }

    #[test]
    fn a_429_cools_one_scope_of_one_key() {
        let p = pool(&[None, None]);
        let a = p.pick(&sonnet(), None).unwrap();
        let v = limited(&p, a, &sonnet(), "30");
        assert_eq!(v.scope.unwrap().label(), "messages/sonnet");
        for _ in 0..6 {
            assert_ne!(p.pick(&sonnet(), None).unwrap(), a);
        }
        // Other scopes still use both keys.
        let mut seen = BTreeSet::new();
        for _ in 0..6 {
            seen.insert(p.pick(&haiku(), None).unwrap().0);
            seen.insert(
                p.pick(&Scope::new(RouteKind::CountTokens, None), None)
                    .unwrap()
                    .0,
            );
        }
        assert_eq!(seen.len(), 2);
        let c = p.census();
        assert_eq!((c.ready, c.cooling), (1, 1));
        assert!(c.cooled_scopes.is_empty(), "{c:?}");
    }

    #[test]
    fn keys_of_one_org_cool_together_and_the_wait_is_the_earliest() {
        let p = pool(&[Some("acme"), Some("acme"), Some("beta")]);
        let k1 = KeyRef(0);
        limited(&p, k1, &sonnet(), "30");
        assert!(p.other_org_can_serve(&sonnet(), k1));
        for _ in 0..6 {
            assert_eq!(p.pick(&sonnet(), None).unwrap(), KeyRef(2));
        }
        limited(&p, KeyRef(2), &sonnet(), "7");
        assert!(!p.other_org_can_serve(&sonnet(), k1));
        match p.pick(&sonnet(), None).unwrap_err() {
            NoKey::Cooling { wait, scope } => {
                assert!(wait > Duration::from_secs(6) && wait <= Duration::from_secs(7));
                assert_eq!(scope.label(), "messages/sonnet");
            }
            other => panic!("{other:?}"),
        }
        assert!(p.pick(&haiku(), None).is_ok());
        let c = p.census();
        assert_eq!(
            c.cooled_scopes.into_iter().collect::<Vec<_>>(),
            ["messages/sonnet"]
        );
    }

    #[test]
    fn retry_after_not_reset_sets_the_cooldown() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        h.insert(
            "anthropic-ratelimit-requests-remaining",
            HeaderValue::from_static("0"),
        );
        h.insert(
            "anthropic-ratelimit-requests-reset",
            HeaderValue::from_static("2099-01-01T00:00:00Z"),
        );
        let h = HeaderFields::Map(h);
        assert_eq!(
            cooldown_for(&h, Duration::from_secs(5)),
            Duration::from_secs(2)
        );
        let none = HeaderFields::Map(HeaderMap::new());
        assert_eq!(
            cooldown_for(&none, Duration::from_secs(5)),
            Duration::from_secs(5)
        );
        assert_eq!(
            cooldown_for(&retry_after("1e9"), Duration::ZERO),
            MAX_COOLDOWN
        );
    }

    #[test]
    fn refused_keys_retire_and_billing_rests_the_org() {
        let p = pool(&[Some("acme"), Some("acme"), Some("beta")]);
        let none = HeaderFields::Map(HeaderMap::new());
        let v = p
            .observe(KeyRef(0), &sonnet(), StatusCode::UNAUTHORIZED, &none, None)
            .unwrap();
        assert_eq!((v.reason, v.wait), (Reason::Revoked, None));
        let v = p
            .observe(
                KeyRef(2),
                &sonnet(),
                StatusCode::PAYMENT_REQUIRED,
                &none,
                None,
            )
            .unwrap();
        assert_eq!(v.reason, Reason::Billing);
        for _ in 0..4 {
            assert_eq!(p.pick(&haiku(), None).unwrap(), KeyRef(1));
        }
        let body = br#"{"type":"error","error":{"type":"invalid_request_error","message":"You have reached your specified API usage limits. You will regain access on 2027-01-01 at 00:00 UTC."}}"#;
        let v = p
            .observe(
                KeyRef(1),
                &sonnet(),
                StatusCode::BAD_REQUEST,
                &none,
                Some(body),
            )
            .unwrap();
        assert_eq!(v.reason, Reason::SpendLimit);
        match p.pick(&haiku(), None).unwrap_err() {
            NoKey::Unusable {
                retired,
                resting,
                wait,
            } => {
                assert_eq!((retired, resting), (1, 2));
                assert!(wait.unwrap() > Duration::from_secs(3000));
            }
            other => panic!("{other:?}"),
        }
        let c = p.census();
        assert_eq!((c.usable(), c.retired, c.resting), (0, 1, 2));
        // An ordinary 400, a 529 and a 500 change nothing.
        let q = pool(&[None]);
        for s in [400, 529, 500, 404] {
            let s = StatusCode::from_u16(s).unwrap();
            assert_eq!(q.observe(KeyRef(0), &sonnet(), s, &none, Some(b"{}")), None);
        }
        assert_eq!(q.census().ready, 1);
    }

    #[test]
    fn avoid_prefers_another_key_but_falls_back() {
        let p = pool(&[None, None]);
        let a = p.pick(&sonnet(), None).unwrap();
        for _ in 0..4 {
            assert_ne!(p.pick(&sonnet(), Some(a)).unwrap(), a);
        }
        let single = pool(&[None]);
        let k = single.pick(&sonnet(), None).unwrap();
        assert_eq!(single.pick(&sonnet(), Some(k)).unwrap(), k);
    }

    #[test]
    fn state_survives_a_rebuild_and_retirement_ends_when_the_keys_change() {
        let p = pool(&[Some("acme"), None]);
        limited(&p, KeyRef(0), &sonnet(), "30");
        let none = HeaderFields::Map(HeaderMap::new());
        p.observe(KeyRef(1), &sonnet(), StatusCode::FORBIDDEN, &none, None);
        let same = KeyPool::new(
            &keys(&[Some("acme"), None]),
            PoolSettings::default(),
            Some(&p),
        );
        assert_eq!(same.census().retired, 1);
        assert!(same.pick(&sonnet(), None).is_err());
        // A third key joins: the pool's keys changed, so the retired key gets another
        // chance; the cooling scope of acme still holds.
        let grown = KeyPool::new(
            &keys(&[Some("acme"), None, None]),
            PoolSettings::default(),
            Some(&p),
        );
        assert_eq!(grown.census().retired, 0);
        for _ in 0..4 {
            assert_ne!(grown.pick(&sonnet(), None).unwrap(), KeyRef(0));
        }
    }

    #[test]
    fn made_up_models_cannot_grow_the_cooling_list_without_bound() {
        let p = pool(&[None]);
        let models: Vec<String> = (0..200).map(|i| format!("m-{i}")).collect();
        for m in &models {
            limited(
                &p,
                KeyRef(0),
                &Scope::new(RouteKind::Messages, Some(m)),
                "30",
            );
        }
        let len = p.orgs[0].cooling.lock().unwrap().len();
        assert_eq!(len, MAX_COOLING_SCOPES);
    }

    #[test]
    fn spend_limit_is_told_by_its_text() {
        assert!(is_spend_limit(
            b"You have reached your specified API usage limits. You will regain access on"
        ));
        assert!(!is_spend_limit(b"max_tokens: must be positive"));
    }
}
