//! The `anthropic-ratelimit-*` response headers, written from the gateway's own limits
//! for clients that have them, and the headers that mark a gateway-made 429.

use http::{HeaderMap, HeaderName, HeaderValue};

use super::{Dim, Quota, RateView, ScopeKind};

/// On a gateway 429: always `gateway`, so clients can tell it from an upstream 429.
pub const RATELIMITED_HEADER: &str = "x-strait-ratelimited";
/// On a gateway 429: the dimension that ran out (`requests`, `output_tokens`, ...).
pub const DIMENSION_HEADER: &str = "x-strait-ratelimit-dimension";
/// On a gateway 429: `key` or `tenant`, whichever limit ran out.
pub const SCOPE_HEADER: &str = "x-strait-ratelimit-scope";

const PREFIX: &str = "anthropic-ratelimit-";

/// Replaces the upstream's `anthropic-ratelimit-*` headers (which describe the shared
/// organisation key, not this client) with the client's own limits.
pub fn apply(headers: &mut HeaderMap, view: &RateView) {
    let upstream: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(PREFIX))
        .cloned()
        .collect();
    for k in upstream {
        headers.remove(k);
    }
    put(headers, "requests", view.requests);
    put(headers, "input-tokens", view.input);
    put(headers, "output-tokens", view.output);
}

/// Marks a 429 as the gateway's own and names what ran out.
pub fn mark_limited(headers: &mut HeaderMap, dim: Dim, scope: ScopeKind) {
    headers.insert(RATELIMITED_HEADER, HeaderValue::from_static("gateway"));
    headers.insert(DIMENSION_HEADER, HeaderValue::from_static(dim.label()));
    headers.insert(SCOPE_HEADER, HeaderValue::from_static(scope.label()));
}

fn put(headers: &mut HeaderMap, what: &str, q: Option<Quota>) {
    let Some(q) = q else { return };
    let name = |suffix: &str| {
        HeaderName::from_bytes(format!("{PREFIX}{what}-{suffix}").as_bytes())
            .expect("valid header name")
    };
    headers.insert(name("limit"), HeaderValue::from(q.limit));
    headers.insert(name("remaining"), HeaderValue::from(q.remaining));
    // RFC 3339, as Anthropic sends it.
    let reset = humantime::format_rfc3339_seconds(q.reset).to_string();
    if let Ok(v) = HeaderValue::from_str(&reset) {
        headers.insert(name("reset"), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
