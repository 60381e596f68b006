//! The retry rule, in one place: which failures of an attempt are worth another
//! attempt on another key or connection, and how long to pause first. The attempt
//! loop asks only while nothing has been sent to the client, the body can be sent
//! again and attempts are left.

use std::time::Duration;

use crate::error::{Error, ErrorKind};
use http::StatusCode;

/// What went wrong with one attempt.
pub enum Failure<'a> {
    /// No usable answer: connecting, TLS, or the exchange before a response head (or
    /// before a stream's first event) failed, or timed out.
    Transport(&'a Error),
    /// The answer said the key or its organisation cannot serve this request now
    /// (a 429 for its scope, a refused key, a billing or spend-limit error): the pool
    /// has taken note, and only another key can do better.
    KeyRefused,
    /// The upstream answered with this status, which says nothing about the key.
    Status(StatusCode),
    /// A 200 stream whose first event was an `error` (overloaded, say).
    ErrorEvent,
}

/// Whether another attempt may succeed. `other_key` says whether another upstream
/// key can serve the request now; it is asked only when the key was refused.
pub fn worth_retrying(failure: &Failure<'_>, other_key: impl FnOnce() -> bool) -> bool {
    match failure {
        // A timeout is not retried: the upstream may be working on the request, and a
        // second attempt could do it twice.
        Failure::Transport(e) => {
            matches!(
                e.kind,
                ErrorKind::UpstreamConnect | ErrorKind::UpstreamProtocol
            )
        }
        Failure::KeyRefused => other_key(),
        // 529 overloaded_error is the API's state for everyone: worth a retry after a
        // pause, but never held against a key or the path.
        Failure::Status(s) => matches!(s.as_u16(), 408 | 409 | 500 | 502 | 503 | 504 | 529),
        Failure::ErrorEvent => true,
    }
}

/// First pause after a server-side failure; it doubles per attempt up to [`MAX_PAUSE`].
const BASE_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_millis(1600);

/// The pause before attempt `attempt + 1`: none after a transport failure (the next
/// attempt dials afresh) or a refused key (the next attempt uses another key); after
/// a server-side failure an exponential backoff with jitter (0.5x to 1.5x), so that
/// the clients of many nodes retrying a 529 together do not arrive together.
pub fn pause(failure: &Failure<'_>, attempt: u32) -> Option<Duration> {
    match failure {
        Failure::Transport(_) | Failure::KeyRefused => None,
        Failure::Status(_) | Failure::ErrorEvent => {
            let base = BASE_PAUSE
                .saturating_mul(1 << attempt.clamp(1, 8).saturating_sub(1))
                .min(MAX_PAUSE);
            Some(base.mul_f64(0.5 + rand::random::<f64>()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_failures_retry_only_when_nothing_may_have_been_done() {
        let connect = Error::new(ErrorKind::UpstreamConnect, "x");
        let protocol = Error::new(ErrorKind::UpstreamProtocol, "x");
        let timeout = Error::new(ErrorKind::UpstreamTimeout, "x");
        assert!(worth_retrying(&Failure::Transport(&connect), || false));
        assert!(worth_retrying(&Failure::Transport(&protocol), || false));
        assert!(!worth_retrying(&Failure::Transport(&timeout), || true));
        assert_eq!(pause(&Failure::Transport(&connect), 2), None);
    }

    #[test]
    fn statuses_retry_as_anthropic_advises_and_refused_keys_only_on_another_key() {
        for s in [408, 409, 500, 502, 503, 504, 529] {
            let f = Failure::Status(StatusCode::from_u16(s).unwrap());
            assert!(worth_retrying(&f, || false), "{s}");
            let p = pause(&f, 1).unwrap();
            assert!(p >= BASE_PAUSE / 2 && p <= BASE_PAUSE * 3 / 2, "{s}: {p:?}");
        }
        for s in [400, 401, 403, 404, 413, 429, 501] {
            let f = Failure::Status(StatusCode::from_u16(s).unwrap());
            assert!(!worth_retrying(&f, || true), "{s}");
        }
        assert!(!worth_retrying(&Failure::KeyRefused, || false));
        assert!(worth_retrying(&Failure::KeyRefused, || true));
        assert_eq!(pause(&Failure::KeyRefused, 1), None);
    }

    #[test]
    fn backoff_grows_and_is_capped_with_jitter() {
        let f = Failure::ErrorEvent;
        for _ in 0..50 {
            let third = pause(&f, 3).unwrap();
            assert!(
                third >= BASE_PAUSE * 2 && third <= BASE_PAUSE * 6,
                "{third:?}"
            );
            let late = pause(&f, 30).unwrap();
            assert!(
                late >= MAX_PAUSE / 2 && late <= MAX_PAUSE * 3 / 2,
                "{late:?}"
            );
        }
        let spread: std::collections::BTreeSet<_> = (0..20).map(|_| pause(&f, 2)).collect();
        assert!(spread.len() > 1, "jittered");
    }
}
