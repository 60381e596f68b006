//! The `anthropic-ratelimit-*` response headers, written from the gateway's own limits
//! for clients that have them, and the headers that mark a gateway-made 429.

use std::cell::RefCell;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

use super::{Dim, RateView, ScopeKind};

/// On a gateway 429: always `gateway`, so clients can tell it from an upstream 429.
pub const RATELIMITED_HEADER: &str = "x-strait-ratelimited";
/// On a gateway 429: the dimension that ran out (`requests`, `output_tokens`, ...).
pub const DIMENSION_HEADER: &str = "x-strait-ratelimit-dimension";
/// On a gateway 429: `key` or `tenant`, whichever limit ran out.
pub const SCOPE_HEADER: &str = "x-strait-ratelimit-scope";

const PREFIX: &str = "anthropic-ratelimit-";

const REQUESTS: [HeaderName; 3] = [
    HeaderName::from_static("anthropic-ratelimit-requests-limit"),
    HeaderName::from_static("anthropic-ratelimit-requests-remaining"),
    HeaderName::from_static("anthropic-ratelimit-requests-reset"),
];
const INPUT: [HeaderName; 3] = [
    HeaderName::from_static("anthropic-ratelimit-input-tokens-limit"),
    HeaderName::from_static("anthropic-ratelimit-input-tokens-remaining"),
    HeaderName::from_static("anthropic-ratelimit-input-tokens-reset"),
];
const OUTPUT: [HeaderName; 3] = [
    HeaderName::from_static("anthropic-ratelimit-output-tokens-limit"),
    HeaderName::from_static("anthropic-ratelimit-output-tokens-remaining"),
    HeaderName::from_static("anthropic-ratelimit-output-tokens-reset"),
];

/// Replaces the upstream's `anthropic-ratelimit-*` headers (which describe the shared
/// organisation key, not this client) with the client's own limits.
pub fn apply(headers: &mut HeaderMap, view: &RateView) {
    // Runs on every limited request: names are constants (docs/benchmarks.md). An
    // empty collect does not allocate.
    let upstream: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(PREFIX))
        .cloned()
        .collect();
    for k in upstream {
        headers.remove(k);
    }
    // Up to nine more entries: grow the map once rather than while inserting.
    headers.reserve(9);
    // The six numbers are written into one buffer that their values share: one
    // allocation instead of six.
    let quotas = [view.requests, view.input, view.output];
    let mut digits = BytesMut::with_capacity(6 * 20);
    let mut ends = [0usize; 6];
    for (i, q) in quotas.iter().enumerate() {
        if let Some(q) = q {
            digits.extend_from_slice(itoa::Buffer::new().format(q.limit).as_bytes());
            ends[2 * i] = digits.len();
            digits.extend_from_slice(itoa::Buffer::new().format(q.remaining).as_bytes());
            ends[2 * i + 1] = digits.len();
        }
    }
    let digits = digits.freeze();
    let mut start = 0;
    for (i, ([limit, remaining, reset], q)) in [REQUESTS, INPUT, OUTPUT]
        .into_iter()
        .zip(quotas)
        .enumerate()
    {
        let Some(q) = q else { continue };
        let (a, b) = (ends[2 * i], ends[2 * i + 1]);
        headers.insert(limit, number(digits.slice(start..a)));
        headers.insert(remaining, number(digits.slice(a..b)));
        headers.insert(reset, reset_value(q.reset));
        start = b;
    }
}

fn number(digits: Bytes) -> HeaderValue {
    HeaderValue::from_maybe_shared(digits).expect("digits are a valid header value")
}

/// Marks a 429 as the gateway's own and names what ran out.
pub fn mark_limited(headers: &mut HeaderMap, dim: Dim, scope: ScopeKind) {
    headers.insert(RATELIMITED_HEADER, HeaderValue::from_static("gateway"));
    headers.insert(DIMENSION_HEADER, HeaderValue::from_static(dim.label()));
    headers.insert(SCOPE_HEADER, HeaderValue::from_static(scope.label()));
}

/// The reset time in RFC 3339, as Anthropic sends it. Windows reset on whole seconds
/// shared by many requests, so the last value formatted is kept for the next.
fn reset_value(at: SystemTime) -> HeaderValue {
    thread_local! {
        static LAST: RefCell<Option<(SystemTime, HeaderValue)>> = const { RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((t, v)) if *t == at => v.clone(),
        _ => {
            let text = humantime::format_rfc3339_seconds(at).to_string();
            let v = HeaderValue::try_from(text).expect("RFC 3339 is a valid header value");
            *last = Some((at, v.clone()));
            v
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Quota;
    use std::time::{Duration, SystemTime};

    #[test]
    fn replaces_upstream_headers_with_the_clients_own() {
        let mut h = HeaderMap::new();
        h.insert(
            "anthropic-ratelimit-requests-limit",
            HeaderValue::from(4000),
        );
        h.insert("anthropic-ratelimit-tokens-limit", HeaderValue::from(9));
        h.insert("request-id", HeaderValue::from_static("x"));
        let reset = SystemTime::UNIX_EPOCH + Duration::from_secs(60);
        let view = RateView {
            requests: Some(Quota {
                limit: 60,
                remaining: 59,
                reset,
            }),
            ..Default::default()
        };
        apply(&mut h, &view);
        assert_eq!(h["anthropic-ratelimit-requests-limit"], "60");
        assert_eq!(h["anthropic-ratelimit-requests-remaining"], "59");
        assert_eq!(
            h["anthropic-ratelimit-requests-reset"],
            "1970-01-01T00:01:00Z"
        );
        assert!(h.get("anthropic-ratelimit-tokens-limit").is_none());
        assert!(h.get("anthropic-ratelimit-output-tokens-limit").is_none());
        assert_eq!(h["request-id"], "x");
    }
}
