//! The upstream key pool: it rotates keys and cools a key down after a 429 or 529,
//! telling a passing 429 from an exhausted quota.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderName, HeaderValue, StatusCode};

use crate::config::Secret;
use crate::head::HeaderFields;

/// Why a key is cooling down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cooldown {
    /// A 429 or 529 that should pass within its `retry-after`.
    Transient,
    /// A spent quota: cool until the `anthropic-ratelimit-*-reset` time.
    Exhausted,
}

impl Cooldown {
    pub fn label(self) -> &'static str {
        match self {
            Cooldown::Transient => "transient",
            Cooldown::Exhausted => "exhausted",
        }
    }
}

struct PoolKey {
    /// Ready-to-send header value, marked sensitive so HTTP/2 never indexes it.
    header: HeaderValue,
    /// Stable label for logs and metrics, never the key ("k1", "k2", ...).
    label: String,
    /// Milliseconds since the pool's epoch before which the key is not used.
    cool_until_ms: AtomicU64,
    reason: AtomicU8,
}

/// The pool of upstream keys. Lock-free: picking a key is two atomic loads per key.
pub struct KeyPool {
    keys: Vec<PoolKey>,
    next: AtomicUsize,
    epoch: Instant,
    default_cooldown: Duration,
}

/// A key picked for one attempt.
#[derive(Clone, Copy, Debug)]
pub struct KeyRef(usize);

impl KeyPool {
    pub fn new(keys: &[Secret], default_cooldown: Duration) -> Self {
        let labeled: Vec<(String, Secret)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (format!("k{}", i + 1), k.clone()))
            .collect();
        Self::labeled(&labeled, default_cooldown, None)
    }

    /// A pool of keys with operator-facing labels (never the keys). A key that is
    /// also in `previous` keeps its cooldown, so swapping in a new config snapshot
    /// does not send traffic to a key that is resting until its quota resets.
    pub fn labeled(
        keys: &[(String, Secret)],
        default_cooldown: Duration,
        previous: Option<&KeyPool>,
    ) -> Self {
        let epoch = Instant::now();
        let keys = keys
            .iter()
            .map(|(label, k)| {
                let mut header =
                    HeaderValue::from_str(k.expose()).expect("validated at config load");
                header.set_sensitive(true);
                let (mut cool_until_ms, mut reason) = (0, 0);
                if let Some(prev) = previous {
                    if let Some(old) = prev
                        .keys
                        .iter()
                        .find(|o| o.header.as_bytes() == header.as_bytes())
                    {
                        let left = old
                            .cool_until_ms
                            .load(Ordering::Relaxed)
                            .saturating_sub(prev.now_ms());
                        if left > 0 {
                            cool_until_ms = epoch.elapsed().as_millis() as u64 + left;
                            reason = old.reason.load(Ordering::Relaxed);
                        }
                    }
                }
                PoolKey {
                    header,
                    label: label.clone(),
                    cool_until_ms: AtomicU64::new(cool_until_ms),
                    reason: AtomicU8::new(reason),
                }
            })
            .collect();
        KeyPool {
            keys,
            next: AtomicUsize::new(0),
            epoch,
            default_cooldown,
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The next usable key in rotation, skipping `avoid` (the key that just failed)
    /// when another is usable. `Err` carries how long until the first key is usable.
    pub fn pick(&self, avoid: Option<KeyRef>) -> Result<KeyRef, Duration> {
        let n = self.keys.len();
        // The clock is read only once a key has ever rested (0: never).
        let mut now = None;
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut fallback = None;
        let mut soonest = u64::MAX;
        for i in 0..n {
            let idx = (start + i) % n;
            let until = self.keys[idx].cool_until_ms.load(Ordering::Relaxed);
            if until == 0 || until <= *now.get_or_insert_with(|| self.now_ms()) {
                if avoid.is_some_and(|a| a.0 == idx) {
                    fallback = Some(KeyRef(idx));
                    continue;
                }
                return Ok(KeyRef(idx));
            }
            soonest = soonest.min(until);
        }
        let now = now.unwrap_or_else(|| self.now_ms());
        fallback.ok_or_else(|| Duration::from_millis(soonest.saturating_sub(now).max(1)))
    }

    pub fn header(&self, key: KeyRef) -> &HeaderValue {
        &self.keys[key.0].header
    }

    pub fn label(&self, key: KeyRef) -> &str {
        &self.keys[key.0].label
    }

    /// Looks at an upstream response and cools the key down if it says so. Returns
    /// the cooldown applied, if any.
    pub fn observe(
        &self,
        key: KeyRef,
        status: StatusCode,
        headers: &HeaderFields,
    ) -> Option<(Cooldown, Duration)> {
        if status != StatusCode::TOO_MANY_REQUESTS && status.as_u16() != 529 {
            return None;
        }
        let (reason, wait) =
            classify_limit(status, headers, self.default_cooldown, SystemTime::now());
        let k = &self.keys[key.0];
        let until = self.now_ms() + wait.as_millis() as u64;
        k.cool_until_ms.fetch_max(until, Ordering::Relaxed);
        k.reason.store(reason as u8, Ordering::Relaxed);
        Some((reason, wait))
    }

    /// Keys usable now, and keys cooling for each reason: for metrics and readiness.
    pub fn census(&self) -> (usize, usize, usize) {
        let now = self.now_ms();
        let (mut ready, mut transient, mut exhausted) = (0, 0, 0);
        for k in &self.keys {
            if k.cool_until_ms.load(Ordering::Relaxed) <= now {
                ready += 1;
            } else if k.reason.load(Ordering::Relaxed) == Cooldown::Exhausted as u8 {
                exhausted += 1;
            } else {
                transient += 1;
            }
        }
        (ready, transient, exhausted)
    }
}

/// Upper bound on any single cooldown, so a bogus reset header cannot park a key for days.
const MAX_COOLDOWN: Duration = Duration::from_secs(24 * 3600);

/// Tells a passing 429 from a spent quota. A quota is spent when a rate-limit
/// dimension reports `remaining: 0` with a reset later than `retry-after`; the key
/// then rests until that reset instead of being retried every few seconds.
pub fn classify_limit(
    status: StatusCode,
    headers: &HeaderFields,
    default: Duration,
    now: SystemTime,
) -> (Cooldown, Duration) {
    let text = |name: &HeaderName| headers.get(name).and_then(|v| std::str::from_utf8(v).ok());
    let retry_after = text(&http::header::RETRY_AFTER)
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64);
    let transient = retry_after.unwrap_or(default).min(MAX_COOLDOWN);
    if status != StatusCode::TOO_MANY_REQUESTS {
        return (Cooldown::Transient, transient);
    }
    let mut exhausted_until: Option<Duration> = None;
    for dim in ["requests", "tokens", "input-tokens", "output-tokens"] {
        let name = |what: &str| {
            HeaderName::from_bytes(format!("anthropic-ratelimit-{dim}-{what}").as_bytes())
                .expect("a valid name")
        };
        let remaining = text(&name("remaining")).and_then(|s| s.trim().parse::<u64>().ok());
        if remaining != Some(0) {
            continue;
        }
        let reset = text(&name("reset"))
            .and_then(|s| humantime::parse_rfc3339_weak(s.trim()).ok())
            .and_then(|t| t.duration_since(now).ok());
        if let Some(wait) = reset {
            exhausted_until = Some(exhausted_until.map_or(wait, |w| w.max(wait)));
        }
    }
    match exhausted_until {
        Some(wait) if wait > transient => (Cooldown::Exhausted, wait.min(MAX_COOLDOWN)),
        _ => (Cooldown::Transient, transient),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn pool(n: usize) -> KeyPool {
        let keys: Vec<_> = (0..n).map(|i| Secret::new(format!("sk-{i}"))).collect();
        KeyPool::new(&keys, Duration::from_secs(5))
    }

    #[test]
    fn rotates_and_skips_cooling_keys() {
        let p = pool(3);
        let a = p.pick(None).unwrap();
        let b = p.pick(None).unwrap();
        assert_ne!(a.0, b.0);
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("30"));
        p.observe(a, StatusCode::TOO_MANY_REQUESTS, &HeaderFields::Map(h))
            .unwrap();
        for _ in 0..10 {
            assert_ne!(p.pick(None).unwrap().0, a.0);
        }
        assert_eq!(p.census(), (2, 1, 0));
    }

    #[test]
    fn cooldowns_survive_a_rebuild() {
        let p = pool(2);
        let a = p.pick(None).unwrap();
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("30"));
        p.observe(a, StatusCode::TOO_MANY_REQUESTS, &HeaderFields::Map(h))
            .unwrap();
        let cooled = p.label(a).to_string();
        let keys: Vec<_> = (0..3)
            .map(|i| (format!("k{}", i + 1), Secret::new(format!("sk-{i}"))))
            .collect();
        let q = KeyPool::labeled(&keys, Duration::from_secs(5), Some(&p));
        assert_eq!(q.census(), (2, 1, 0));
        for _ in 0..10 {
            assert_ne!(q.label(q.pick(None).unwrap()), cooled);
        }
    }

    #[test]
    fn all_cooling_reports_the_wait() {
        let p = pool(1);
        let k = p.pick(None).unwrap();
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        p.observe(k, StatusCode::TOO_MANY_REQUESTS, &HeaderFields::Map(h));
        let wait = p.pick(None).unwrap_err();
        assert!(
            wait > Duration::from_secs(6) && wait <= Duration::from_secs(7),
            "{wait:?}"
        );
    }

    #[test]
    fn avoid_prefers_another_key_but_falls_back() {
        let p = pool(2);
        let a = p.pick(None).unwrap();
        for _ in 0..4 {
            assert_ne!(p.pick(Some(a)).unwrap().0, a.0);
        }
        let single = pool(1);
        let k = single.pick(None).unwrap();
        assert_eq!(single.pick(Some(k)).unwrap().0, k.0);
    }

    #[test]
    fn exhausted_quota_waits_for_reset() {
        let now = SystemTime::now();
        let reset = humantime::format_rfc3339_seconds(now + Duration::from_secs(3600)).to_string();
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        h.insert(
            "anthropic-ratelimit-tokens-remaining",
            HeaderValue::from_static("0"),
        );
        h.insert(
            "anthropic-ratelimit-tokens-reset",
            HeaderValue::from_str(&reset).unwrap(),
        );
        let (reason, wait) = classify_limit(
            StatusCode::TOO_MANY_REQUESTS,
            &HeaderFields::Map(h.clone()),
            Duration::from_secs(5),
            now,
        );
        assert_eq!(reason, Cooldown::Exhausted);
        assert!(wait > Duration::from_secs(3590), "{wait:?}");

        h.insert(
            "anthropic-ratelimit-tokens-remaining",
            HeaderValue::from_static("10"),
        );
        let (reason, wait) = classify_limit(
            StatusCode::TOO_MANY_REQUESTS,
            &HeaderFields::Map(h),
            Duration::from_secs(5),
            now,
        );
        assert_eq!(
            (reason, wait),
            (Cooldown::Transient, Duration::from_secs(2))
        );
    }

    #[test]
    fn overloaded_without_retry_after_uses_default() {
        let (reason, wait) = classify_limit(
            StatusCode::from_u16(529).unwrap(),
            &HeaderFields::Map(HeaderMap::new()),
            Duration::from_secs(5),
            SystemTime::now(),
        );
        assert_eq!(
            (reason, wait),
            (Cooldown::Transient, Duration::from_secs(5))
        );
    }
}
