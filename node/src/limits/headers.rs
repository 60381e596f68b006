//! The `anthropic-ratelimit-*` response headers, written from the gateway's own limits
//! for clients that have them, and the headers that mark a gateway-made 429.

use std::cell::RefCell;
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::{Dim, Quota, RateView, ScopeKind};

pub use crate::error::RATELIMITED_HEADER;
/// On a gateway 429: the dimension that ran out (`requests`, `output_tokens`, ...).
pub const DIMENSION_HEADER: &str = "x-strait-ratelimit-dimension";
/// On a gateway 429: `key` or `tenant`, whichever limit ran out.
pub const SCOPE_HEADER: &str = "x-strait-ratelimit-scope";

const PREFIX: &str = "anthropic-ratelimit-";

const REQUESTS: [HeaderName; 3] = names(&LINES[0]);
const INPUT: [HeaderName; 3] = names(&LINES[1]);
const OUTPUT: [HeaderName; 3] = names(&LINES[2]);

/// The header names in `lines` (each a name followed by `": "`): the names are written
/// once, in [`LINES`].
const fn names(lines: &[&'static [u8]; 3]) -> [HeaderName; 3] {
    [name(lines[0]), name(lines[1]), name(lines[2])]
}

const fn name(line: &'static [u8]) -> HeaderName {
    let (name, _) = line.split_at(line.len() - 2);
    match std::str::from_utf8(name) {
        Ok(name) => HeaderName::from_static(name),
        Err(_) => panic!("header names are ASCII"),
    }
}

/// The `anthropic-ratelimit-*` header names as the start of a header line, as
/// [`RateHeaders::write_head`] writes them.
const LINES: [[&[u8]; 3]; 3] = [
    [
        b"anthropic-ratelimit-requests-limit: ",
        b"anthropic-ratelimit-requests-remaining: ",
        b"anthropic-ratelimit-requests-reset: ",
    ],
    [
        b"anthropic-ratelimit-input-tokens-limit: ",
        b"anthropic-ratelimit-input-tokens-remaining: ",
        b"anthropic-ratelimit-input-tokens-reset: ",
    ],
    [
        b"anthropic-ratelimit-output-tokens-limit: ",
        b"anthropic-ratelimit-output-tokens-remaining: ",
        b"anthropic-ratelimit-output-tokens-reset: ",
    ],
];

/// Room for the longest of [`LINES`] (45 bytes).
const LINE_ROOM: usize = 48;

/// [`LINES`] padded to [`LINE_ROOM`], with their lengths, for [`put_padded`].
const PADDED: [[([u8; LINE_ROOM], usize); 3]; 3] = {
    let mut all = [[([0u8; LINE_ROOM], 0); 3]; 3];
    let mut q = 0;
    while q < 3 {
        let mut l = 0;
        while l < 3 {
            let line = LINES[q][l];
            let mut i = 0;
            while i < line.len() {
                all[q][l].0[i] = line[i];
                i += 1;
            }
            all[q][l].1 = line.len();
            l += 1;
        }
        q += 1;
    }
    all
};

/// Appends the first `len` bytes of `bytes` by copying all of them and cutting the rest
/// off again. Why: a copy of a size known when compiling is written inline, where one
/// of varying length calls `memcpy`; the head's nine names and three resets were 12 of
/// the 71 `memcpy` calls a request made (callgrind, docs/benchmarks.md).
#[inline(always)]
fn put_padded<const N: usize>(out: &mut Vec<u8>, bytes: &[u8; N], len: usize) {
    let at = out.len();
    out.extend_from_slice(bytes);
    out.truncate(at + len);
}

/// Replaces the upstream's `anthropic-ratelimit-*` headers (which describe the shared
/// organisation key, not this client) with the client's own limits.
pub fn apply(headers: &mut HeaderMap, view: &RateView) {
    strip_upstream(headers);
    RateHeaders(*view).insert_into(headers);
}

/// Removes the upstream's `anthropic-ratelimit-*` headers.
pub fn strip_upstream(headers: &mut HeaderMap) {
    // An empty collect does not allocate.
    let upstream: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(PREFIX))
        .cloned()
        .collect();
    for k in upstream {
        headers.remove(k);
    }
}

/// A client's own rate-limit headers, carried with a relayed response (in its body,
/// `stream::Relay`) and written by the HTTP/1.1 server straight into the head. Why not the
/// header map: nine insertions of long custom names cost more per request than the
/// limiter's decision itself (docs/benchmarks.md). The HTTP/2 path, which needs a
/// map, calls [`RateHeaders::insert_into`].
#[derive(Debug, Clone, Copy)]
pub struct RateHeaders(pub RateView);

impl RateHeaders {
    fn quotas(&self) -> [([HeaderName; 3], Option<Quota>); 3] {
        [
            (REQUESTS, self.0.requests),
            (INPUT, self.0.input),
            (OUTPUT, self.0.output),
        ]
    }

    /// Appends `name: value\r\n` lines to a response head being written.
    pub fn write_head(&self, out: &mut Vec<u8>) {
        // Room for all nine lines at once: the longest name is 45 bytes, a count at
        // most 20 digits, a reset 20 bytes.
        out.reserve(9 * 70);
        let quotas = [self.0.requests, self.0.input, self.0.output];
        for (lines, q) in PADDED.iter().zip(quotas) {
            let Some(q) = q else { continue };
            for ((line, len), n) in [(&lines[0], q.limit), (&lines[1], q.remaining)] {
                put_padded(out, line, *len);
                crate::head::put_decimal(out, n);
                out.extend_from_slice(b"\r\n");
            }
            put_padded(out, &lines[2].0, lines[2].1);
            // An RFC 3339 time to the second is 20 bytes for any year from 1000 to 9999.
            with_reset_value(q.reset, |v| match <&[u8; 20]>::try_from(v.as_bytes()) {
                Ok(v) => put_padded(out, v, 20),
                Err(_) => out.extend_from_slice(v.as_bytes()),
            });
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Inserts the headers into a map (HTTP/2 responses, gateway-made errors).
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        headers.reserve(9);
        for ([limit, remaining, reset], q) in self.quotas() {
            let Some(q) = q else { continue };
            headers.insert(limit, HeaderValue::from(q.limit));
            headers.insert(remaining, HeaderValue::from(q.remaining));
            headers.insert(reset, reset_value(q.reset));
        }
    }
}

/// Marks a 429 as the gateway's own and names what ran out.
pub fn mark_limited(headers: &mut HeaderMap, dim: Dim, scope: ScopeKind) {
    headers.insert(RATELIMITED_HEADER, HeaderValue::from_static("gateway"));
    headers.insert(DIMENSION_HEADER, HeaderValue::from_static(dim.label()));
    headers.insert(SCOPE_HEADER, HeaderValue::from_static(scope.label()));
}

/// The reset time in RFC 3339 (whole seconds), as Anthropic sends it. Windows reset
/// on whole seconds shared by many requests, so the last few values formatted are
/// kept (a response carries up to three different resets).
fn reset_value(at: SystemTime) -> HeaderValue {
    with_reset_value(at, HeaderValue::clone)
}

/// [`reset_value`] lent to `f` rather than cloned.
fn with_reset_value<R>(at: SystemTime, f: impl FnOnce(&HeaderValue) -> R) -> R {
    type ResetSlots = [Option<(SystemTime, HeaderValue)>; 4];
    thread_local! {
        static RECENT: RefCell<(ResetSlots, usize)> =
            const { RefCell::new(([None, None, None, None], 0)) };
    }
    fn secs(t: SystemTime) -> u64 {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
    RECENT.with_borrow_mut(|(slots, next)| {
        // Looked up by the exact time first: a window's reset comes back exactly the
        // same request after request, and comparing costs less than the subtraction
        // that rounds it to seconds (three per response).
        if let Some((_, v)) = slots.iter().flatten().find(|(t, _)| *t == at) {
            return f(v);
        }
        let whole = secs(at);
        let v = match slots.iter().flatten().find(|(t, _)| secs(*t) == whole) {
            Some((_, v)) => v.clone(),
            None => {
                let text = humantime::format_rfc3339_seconds(at).to_string();
                HeaderValue::try_from(text).expect("RFC 3339 is a valid header value")
            }
        };
        let slot = *next;
        *next = (slot + 1) % slots.len();
        f(&slots[slot].insert((at, v)).1)
    })
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

        // The same headers as head lines, for the HTTP/1.1 writer.
        let mut out = Vec::new();
        RateHeaders(view).write_head(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "anthropic-ratelimit-requests-limit: 60\r\n\
             anthropic-ratelimit-requests-remaining: 59\r\n\
             anthropic-ratelimit-requests-reset: 1970-01-01T00:01:00Z\r\n"
        );
    }

    /// All nine lines as head lines, each name whole and cut where it ends.
    #[test]
    fn every_quota_writes_its_three_lines() {
        let reset = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let quota = |limit, remaining| {
            Some(Quota {
                limit,
                remaining,
                reset,
            })
        };
        let view = RateView {
            requests: quota(7, 0),
            input: quota(123_456, 1),
            output: quota(u64::MAX, u64::MAX - 1),
        };
        let mut out = b"HTTP/1.1 200 OK\r\n".to_vec();
        RateHeaders(view).write_head(&mut out);
        let mut want = String::from("HTTP/1.1 200 OK\r\n");
        for (kind, limit, remaining) in [
            ("requests", 7, 0),
            ("input-tokens", 123_456, 1),
            ("output-tokens", u64::MAX, u64::MAX - 1),
        ] {
            want += &format!(
                "anthropic-ratelimit-{kind}-limit: {limit}\r\n\
                 anthropic-ratelimit-{kind}-remaining: {remaining}\r\n\
                 anthropic-ratelimit-{kind}-reset: 2030-03-17T17:46:40Z\r\n"
            );
        }
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    #[test]
    fn reset_values_are_whole_seconds_whatever_was_formatted_before() {
        let minute = SystemTime::UNIX_EPOCH + Duration::from_secs(60);
        let ms = Duration::from_millis;
        // Exact repeats, times within one second, and more distinct times than the
        // cache keeps, in an order that makes it evict and look again.
        let cases = [
            (minute, "1970-01-01T00:01:00Z"),
            (minute + ms(400), "1970-01-01T00:01:00Z"),
            (minute, "1970-01-01T00:01:00Z"),
            (minute + ms(1001), "1970-01-01T00:01:01Z"),
            (minute + ms(999), "1970-01-01T00:01:00Z"),
            (minute + ms(5000), "1970-01-01T00:01:05Z"),
            (minute + ms(7250), "1970-01-01T00:01:07Z"),
            (minute + ms(7999), "1970-01-01T00:01:07Z"),
            (minute + ms(400), "1970-01-01T00:01:00Z"),
            (minute + ms(1001), "1970-01-01T00:01:01Z"),
        ];
        for (at, want) in cases {
            assert_eq!(reset_value(at), want, "{at:?}");
        }
    }
}
