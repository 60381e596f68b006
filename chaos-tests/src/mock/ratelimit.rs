//! The mock's per-minute usage window and the `anthropic-ratelimit-*` headers it reports.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::response::{now_secs, rfc3339};

/// Limits the mock reports in its rate-limit headers. The mock never rejects on its own
/// when they run out (remaining just stays at 0); use a [`Fault`](super::Fault) for 429s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// Requests per minute.
    pub requests: u64,
    /// Input tokens per minute.
    pub input_tokens: u64,
    /// Output tokens per minute.
    pub output_tokens: u64,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            requests: 4_000,
            input_tokens: 2_000_000,
            output_tokens: 400_000,
        }
    }
}

/// What the headers of one response say.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Snapshot {
    requests_used: u64,
    input_used: u64,
    output_used: u64,
    reset_at: u64,
}

/// Usage in the current wall-clock minute. Counters are plain atomics: at a minute boundary
/// a few racing requests may land in the wrong window, which a mock can live with.
pub(crate) struct RateWindow {
    limits: RateLimits,
    minute: AtomicU64,
    requests: AtomicU64,
    input: AtomicU64,
    output: AtomicU64,
    // Formatting a timestamp per response would dominate the cheap reply path.
    reset_cache: Mutex<(u64, HeaderValue)>,
}

impl RateWindow {
    pub(crate) fn new(limits: RateLimits) -> RateWindow {
        RateWindow {
            limits,
            minute: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            input: AtomicU64::new(0),
            output: AtomicU64::new(0),
            reset_cache: Mutex::new((0, HeaderValue::from_static(""))),
        }
    }

    fn roll(&self) -> u64 {
        let minute = now_secs() / 60;
        let seen = self.minute.load(Relaxed);
        if seen != minute
            && self
                .minute
                .compare_exchange(seen, minute, Relaxed, Relaxed)
                .is_ok()
        {
            self.requests.store(0, Relaxed);
            self.input.store(0, Relaxed);
            self.output.store(0, Relaxed);
        }
        minute
    }

    /// Counts one request and its tokens.
    pub(crate) fn consume(&self, input_tokens: u64, output_tokens: u64) -> Snapshot {
        let minute = self.roll();
        Snapshot {
            requests_used: self.requests.fetch_add(1, Relaxed) + 1,
            input_used: self.input.fetch_add(input_tokens, Relaxed) + input_tokens,
            output_used: self.output.fetch_add(output_tokens, Relaxed) + output_tokens,
            reset_at: (minute + 1) * 60,
        }
    }

    /// The current state without counting anything (for error responses).
    pub(crate) fn peek(&self) -> Snapshot {
        let minute = self.roll();
        Snapshot {
            requests_used: self.requests.load(Relaxed),
            input_used: self.input.load(Relaxed),
            output_used: self.output.load(Relaxed),
            reset_at: (minute + 1) * 60,
        }
    }

    fn reset_value(&self, at: u64) -> HeaderValue {
        let mut cache = self
            .reset_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.0 != at {
            *cache = (at, timestamp_value(at));
        }
        cache.1.clone()
    }

    /// Writes all twelve `anthropic-ratelimit-*` headers. With `exhausted_until`, the
    /// request limit reads as used up until that Unix time.
    pub(crate) fn write_headers(
        &self,
        headers: &mut HeaderMap,
        snap: Snapshot,
        exhausted_until: Option<u64>,
    ) {
        let l = &self.limits;
        let reset = self.reset_value(snap.reset_at);
        let (req_remaining, req_reset) = match exhausted_until {
            Some(at) => (0, timestamp_value(at)),
            None => (l.requests.saturating_sub(snap.requests_used), reset.clone()),
        };
        let in_remaining = l.input_tokens.saturating_sub(snap.input_used);
        let out_remaining = l.output_tokens.saturating_sub(snap.output_used);
        // Anthropic's `tokens-*` headers describe whichever token limit is most restrictive.
        let (tok_limit, tok_remaining) = if in_remaining <= out_remaining {
            (l.input_tokens, in_remaining)
        } else {
            (l.output_tokens, out_remaining)
        };
        let mut put = |name: &'static str, value: HeaderValue| {
            headers.insert(HeaderName::from_static(name), value);
        };
        put("anthropic-ratelimit-requests-limit", l.requests.into());
        put(
            "anthropic-ratelimit-requests-remaining",
            req_remaining.into(),
        );
        put("anthropic-ratelimit-requests-reset", req_reset);
        put(
            "anthropic-ratelimit-input-tokens-limit",
            l.input_tokens.into(),
        );
        put(
            "anthropic-ratelimit-input-tokens-remaining",
            in_remaining.into(),
        );
        put("anthropic-ratelimit-input-tokens-reset", reset.clone());
        put(
            "anthropic-ratelimit-output-tokens-limit",
            l.output_tokens.into(),
        );
        put(
            "anthropic-ratelimit-output-tokens-remaining",
            out_remaining.into(),
        );
        put("anthropic-ratelimit-output-tokens-reset", reset.clone());
        put("anthropic-ratelimit-tokens-limit", tok_limit.into());
        put("anthropic-ratelimit-tokens-remaining", tok_remaining.into());
        put("anthropic-ratelimit-tokens-reset", reset);
    }
}

fn timestamp_value(unix_secs: u64) -> HeaderValue {
    HeaderValue::try_from(rfc3339(unix_secs)).unwrap_or_else(|_| HeaderValue::from_static(""))
}
