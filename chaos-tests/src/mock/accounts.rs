//! Anthropic's account model: keys grouped into organisations, per-organisation request limits
//! as token buckets, and the key and organisation states that refuse requests (revoked,
//! forbidden, billing problem, spend limit reached).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde::Deserialize;

use super::ratelimit::RateWindow;
use super::response::{self, rfc3339, Resp};

/// The API surfaces Anthropic limits separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MockEndpoint {
    /// `POST /v1/messages`, limited per model class.
    Messages,
    /// `POST /v1/messages/count_tokens`, one limit of its own.
    CountTokens,
    /// `/v1/messages/batches*`.
    Batches,
    /// `/v1/files*`.
    Files,
    /// `/v1/models*`.
    Models,
}

impl MockEndpoint {
    fn name(self) -> &'static str {
        match self {
            MockEndpoint::Messages => "messages",
            MockEndpoint::CountTokens => "count_tokens",
            MockEndpoint::Batches => "message_batches",
            MockEndpoint::Files => "files",
            MockEndpoint::Models => "models",
        }
    }
}

/// A token bucket: holds `requests`, refilled continuously so a full refill takes `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MockLimit {
    pub requests: u64,
    pub per: Duration,
}

impl MockLimit {
    /// Tokens per second; infinite for a zero `per` (never empties).
    fn rate(self) -> f64 {
        self.requests as f64 / self.per.as_secs_f64()
    }
}

/// The class a Messages request is limited under: `opus`, `sonnet`, `haiku`, else the id.
pub(crate) fn model_class(model: &str) -> &str {
    ["opus", "sonnet", "haiku"]
        .into_iter()
        .find(|c| model.contains(c))
        .unwrap_or(model)
}

#[derive(Deserialize)]
struct ModelField<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
}

/// What the limiting bucket says after a request passed, for the `requests-*` headers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BucketView {
    limit: u64,
    remaining: u64,
    /// Unix seconds when the bucket is full again.
    full_at: u64,
}

impl BucketView {
    /// Replaces the `requests-*` headers of a response that carries rate-limit headers, so
    /// they describe the bucket that applied rather than the mock's reporting window.
    pub(crate) fn write(self, headers: &mut HeaderMap) {
        if !headers.contains_key(REQUESTS_LIMIT) {
            return;
        }
        headers.insert(REQUESTS_LIMIT, self.limit.into());
        headers.insert(REQUESTS_REMAINING, self.remaining.into());
        headers.insert(REQUESTS_RESET, timestamp(self.full_at));
    }
}

const REQUESTS_LIMIT: HeaderName = HeaderName::from_static("anthropic-ratelimit-requests-limit");
const REQUESTS_REMAINING: HeaderName =
    HeaderName::from_static("anthropic-ratelimit-requests-remaining");
const REQUESTS_RESET: HeaderName = HeaderName::from_static("anthropic-ratelimit-requests-reset");
const SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");

fn timestamp(unix_secs: u64) -> HeaderValue {
    HeaderValue::try_from(rfc3339(unix_secs)).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, limit: MockLimit, now: Instant) {
        let cap = limit.requests as f64;
        if limit.per.is_zero() {
            self.tokens = cap;
        } else {
            let gained = now.saturating_duration_since(self.at).as_secs_f64() * limit.rate();
            self.tokens = (self.tokens + gained).min(cap);
        }
        self.at = now;
    }

    /// Seconds until `tokens` more are in the bucket (`per` when it never refills).
    fn secs_until(&self, limit: MockLimit, tokens: f64) -> f64 {
        let missing = (tokens - self.tokens).max(0.0);
        if missing == 0.0 || limit.per.is_zero() {
            0.0
        } else if limit.requests == 0 {
            limit.per.as_secs_f64()
        } else {
            missing / limit.rate()
        }
    }
}

/// (organisation, endpoint, model class for Messages).
type BucketId = (String, MockEndpoint, Option<String>);

#[derive(Default)]
struct Inner {
    org_of_key: HashMap<String, String>,
    revoked: HashSet<String>,
    forbidden: HashSet<String>,
    billing: HashSet<String>,
    spend_limited: HashSet<String>,
    /// (endpoint, class); `None` is the endpoint-wide default (per class for Messages).
    limits: HashMap<(MockEndpoint, Option<String>), MockLimit>,
    buckets: HashMap<BucketId, Bucket>,
}

impl Inner {
    /// A key never given an organisation is the organisation named by the key itself.
    fn org<'a>(&'a self, key: &'a str) -> &'a str {
        self.org_of_key.get(key).map_or(key, String::as_str)
    }

    fn refuses_any(&self) -> bool {
        !(self.revoked.is_empty()
            && self.forbidden.is_empty()
            && self.billing.is_empty()
            && self.spend_limited.is_empty())
    }
}

/// Accounts, states and buckets. Two flags keep requests off the lock when nothing is set,
/// which is the benchmarks' case.
#[derive(Default)]
pub(crate) struct Accounts {
    gated: AtomicBool,
    limited: AtomicBool,
    refused: AtomicU64,
    inner: Mutex<Inner>,
}

/// What a request's limit said.
pub(crate) enum Take {
    /// No limit applies to it.
    Unlimited,
    /// It took a token; the bucket's state for the response headers.
    Passed(BucketView),
    /// The bucket was empty: the 429 to send.
    Limited(Resp),
}

/// Why an account refuses a request before any fault or limit applies.
enum Refusal {
    Revoked,
    Forbidden,
    Billing,
    SpendLimit,
}

impl Refusal {
    fn response(self) -> Resp {
        let status = match self {
            Refusal::Revoked => 401,
            Refusal::Forbidden => 403,
            Refusal::Billing => 402,
            Refusal::SpendLimit => {
                return response::error(
                    400,
                    &format!(
                        "You have reached your specified API usage limits. You will regain \
                         access on {} at 00:00 UTC.",
                        next_month_start()
                    ),
                )
            }
        };
        response::error(status, response::default_message(status))
    }
}

/// Spend limits are monthly: access comes back on the first of next month (UTC).
fn next_month_start() -> String {
    let now = time::OffsetDateTime::now_utc();
    let (year, month) = match u8::from(now.month()) {
        12 => (now.year() + 1, 1),
        m => (now.year(), m + 1),
    };
    format!("{year:04}-{month:02}-01")
}

impl Accounts {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn edit(&self, f: impl FnOnce(&mut Inner)) {
        let mut inner = self.inner();
        f(&mut inner);
        self.gated.store(inner.refuses_any(), Relaxed);
        self.limited.store(!inner.limits.is_empty(), Relaxed);
    }

    pub(crate) fn set_key_org(&self, key: &str, org: &str) {
        self.edit(|i| {
            i.org_of_key.insert(key.to_owned(), org.to_owned());
        });
    }

    pub(crate) fn set_limit(&self, endpoint: MockEndpoint, class: Option<&str>, limit: MockLimit) {
        let class = match endpoint {
            MockEndpoint::Messages => class.map(str::to_owned),
            _ => None,
        };
        self.edit(|i| {
            i.limits.insert((endpoint, class), limit);
            // A changed limit starts every bucket full rather than mixing old and new sizes.
            i.buckets.clear();
        });
    }

    pub(crate) fn clear_limits(&self) {
        self.edit(|i| {
            i.limits.clear();
            i.buckets.clear();
        });
    }

    pub(crate) fn revoke_key(&self, key: &str) {
        self.edit(|i| {
            i.revoked.insert(key.to_owned());
        });
    }

    pub(crate) fn forbid_key(&self, key: &str) {
        self.edit(|i| {
            i.forbidden.insert(key.to_owned());
        });
    }

    pub(crate) fn set_org_billing_error(&self, org: &str, on: bool) {
        self.edit(|i| toggle(&mut i.billing, org, on));
    }

    pub(crate) fn set_org_spend_limit(&self, org: &str, on: bool) {
        self.edit(|i| toggle(&mut i.spend_limited, org, on));
    }

    pub(crate) fn rate_limited_count(&self) -> u64 {
        self.refused.load(Relaxed)
    }

    /// The refusal `decide` finds, when any key or organisation state is set.
    fn refuse(&self, decide: impl FnOnce(&Inner) -> Option<Refusal>) -> Option<Resp> {
        if !self.gated.load(Relaxed) {
            return None;
        }
        let refusal = decide(&self.inner());
        refusal.map(Refusal::response)
    }

    /// 401 for a revoked key, 403 for a forbidden one.
    pub(crate) fn refuse_key(&self, key: &str) -> Option<Resp> {
        self.refuse(|i| {
            if i.revoked.contains(key) {
                Some(Refusal::Revoked)
            } else if i.forbidden.contains(key) {
                Some(Refusal::Forbidden)
            } else {
                None
            }
        })
    }

    /// 402 while the key's organisation has a billing problem, else 400 while it is over its
    /// spend limit.
    pub(crate) fn refuse_org(&self, key: &str) -> Option<Resp> {
        self.refuse(|i| {
            let org = i.org(key);
            if i.billing.contains(org) {
                Some(Refusal::Billing)
            } else if i.spend_limited.contains(org) {
                Some(Refusal::SpendLimit)
            } else {
                None
            }
        })
    }

    /// Takes one token from the key's organisation's bucket for this request.
    pub(crate) fn take(
        &self,
        window: &RateWindow,
        key: &str,
        endpoint: Option<MockEndpoint>,
        body: &[u8],
    ) -> Take {
        if !self.limited.load(Relaxed) {
            return Take::Unlimited;
        }
        let Some(endpoint) = endpoint else {
            return Take::Unlimited;
        };
        let class = match endpoint {
            // Without a readable model the request is invalid and gets its 400 from the
            // handler; it is not counted against any class.
            MockEndpoint::Messages => match serde_json::from_slice::<ModelField<'_>>(body) {
                Ok(ModelField { model: Some(m) }) => Some(model_class(&m).to_owned()),
                _ => return Take::Unlimited,
            },
            _ => None,
        };
        let mut inner = self.inner();
        let limit = match inner.limits.get(&(endpoint, class.clone())) {
            Some(l) => *l,
            None if class.is_some() => match inner.limits.get(&(endpoint, None)) {
                Some(l) => *l,
                None => return Take::Unlimited,
            },
            None => return Take::Unlimited,
        };
        let org = inner.org(key).to_owned();
        let what = class.clone().unwrap_or_else(|| endpoint.name().to_owned());
        let now = Instant::now();
        let bucket = inner
            .buckets
            .entry((org, endpoint, class))
            .or_insert_with(|| Bucket {
                tokens: limit.requests as f64,
                at: now,
            });
        bucket.refill(limit, now);
        let wall = unix_now();
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            let full_in = bucket.secs_until(limit, limit.requests as f64);
            return Take::Passed(BucketView {
                limit: limit.requests,
                remaining: bucket.tokens.floor() as u64,
                full_at: (wall + full_in).ceil() as u64,
            });
        }
        let retry_after = (bucket.secs_until(limit, 1.0).ceil() as u64).max(1);
        let full_at = (wall + bucket.secs_until(limit, limit.requests as f64)).ceil() as u64;
        drop(inner);
        self.refused.fetch_add(1, Relaxed);
        Take::Limited(rate_limited(window, limit, &what, retry_after, full_at))
    }
}

fn toggle(set: &mut HashSet<String>, org: &str, on: bool) {
    if on {
        set.insert(org.to_owned());
    } else {
        set.remove(org);
    }
}

fn rate_limited(
    window: &RateWindow,
    limit: MockLimit,
    what: &str,
    retry_after: u64,
    full_at: u64,
) -> Resp {
    let per_minute = if limit.per.is_zero() {
        limit.requests
    } else {
        (limit.requests as f64 * 60.0 / limit.per.as_secs_f64()).round() as u64
    };
    let mut resp = response::error(
        429,
        &format!(
            "This request would exceed your organization's rate limit of {per_minute} requests \
             per minute for {what}. For details, refer to: \
             https://docs.claude.com/en/api/rate-limits. You can see the response headers for \
             current usage. Please try again later."
        ),
    );
    let headers = resp.headers_mut();
    window.write_headers(headers, window.peek(), None);
    BucketView {
        limit: limit.requests,
        remaining: 0,
        full_at,
    }
    .write(headers);
    headers.insert(RETRY_AFTER, retry_after.into());
    headers.insert(SHOULD_RETRY, HeaderValue::from_static("true"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_classes() {
        assert_eq!(model_class("claude-sonnet-4-5"), "sonnet");
        assert_eq!(model_class("claude-3-opus-20240229"), "opus");
        assert_eq!(model_class("claude-haiku-4-5"), "haiku");
        assert_eq!(model_class("my-model"), "my-model");
    }

    #[test]
    fn bucket_refills_continuously_up_to_its_size() {
        let limit = MockLimit {
            requests: 4,
            per: Duration::from_secs(8),
        };
        let start = Instant::now();
        let mut b = Bucket {
            tokens: 0.0,
            at: start,
        };
        assert_eq!(b.secs_until(limit, 1.0), 2.0);
        b.refill(limit, start + Duration::from_secs(4));
        assert_eq!(b.tokens, 2.0);
        b.refill(limit, start + Duration::from_secs(60));
        assert_eq!(b.tokens, 4.0);
        assert_eq!(b.secs_until(limit, 4.0), 0.0);
    }
}
