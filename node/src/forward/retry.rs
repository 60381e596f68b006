//! The retry rule, in one place: which failures of an attempt are worth another
//! attempt on another key or connection, and how long to pause first. The attempt
//! loop asks only while nothing has been sent to the client, the body can be sent
//! again and attempts are left.

use std::time::Duration;

use http::StatusCode;

use crate::error::{Error, ErrorKind};

/// What went wrong with one attempt.
pub enum Failure<'a> {
    /// No usable answer: connecting, TLS, or the exchange before a response head (or
    /// before a stream's first event) failed, or timed out.
    Transport(&'a Error),
    /// The upstream answered with this status.
    Status(StatusCode),
    /// A 200 stream whose first event was an `error` (overloaded, say).
    ErrorEvent,
}

/// Whether another attempt may succeed. `other_key` says whether a different
/// upstream key is ready; it is asked only for a 429, which says nothing about
/// another key's limits but predicts the same answer on the same one.
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
        Failure::Status(s) => {
            matches!(s.as_u16(), 408 | 409 | 429 | 500 | 502 | 503 | 504 | 529)
                && (*s != StatusCode::TOO_MANY_REQUESTS || other_key())
        }
        Failure::ErrorEvent => true,
    }
}

/// The pause before attempt `attempt + 1`: a small growing one after a server-side
/// failure; none after a transport failure (the next attempt dials afresh) or a 429
/// (the next attempt uses another key).
pub fn pause(failure: &Failure<'_>, attempt: u32) -> Option<Duration> {
    match failure {
        Failure::Transport(_) => None,
        Failure::Status(s) if *s == StatusCode::TOO_MANY_REQUESTS => None,
        Failure::Status(_) | Failure::ErrorEvent => {
            Some(Duration::from_millis(50 * u64::from(attempt.min(5))))
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
    fn statuses_retry_as_anthropic_advises_and_429_only_on_another_key() {
        for s in [408, 409, 500, 502, 503, 504, 529] {
            let f = Failure::Status(StatusCode::from_u16(s).unwrap());
            assert!(worth_retrying(&f, || false), "{s}");
            assert_eq!(pause(&f, 1), Some(Duration::from_millis(50)), "{s}");
        }
        for s in [400, 401, 403, 404, 413, 501] {
            let f = Failure::Status(StatusCode::from_u16(s).unwrap());
            assert!(!worth_retrying(&f, || true), "{s}");
        }
        let limited = Failure::Status(StatusCode::TOO_MANY_REQUESTS);
        assert!(!worth_retrying(&limited, || false));
        assert!(worth_retrying(&limited, || true));
        assert_eq!(pause(&limited, 1), None);
        assert_eq!(
            pause(&Failure::ErrorEvent, 9),
            Some(Duration::from_millis(250))
        );
    }
}
