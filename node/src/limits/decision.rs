//! What a decision reports: the quotas the `anthropic-ratelimit-*` headers show, and a
//! refusal, first as the backend states it ([`Denial`]) and then ready for the client
//! ([`Rejection`]).

use std::time::{Duration, SystemTime};

use super::{Dim, LimitSpec, ScopeKind};
use crate::error::Error;

/// Limit, remaining and reset of one dimension, for the response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u64,
    pub remaining: u64,
    pub reset: SystemTime,
}

/// What the `anthropic-ratelimit-*` headers say: per dimension, the tightest of the
/// key's and the tenant's quotas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateView {
    pub requests: Option<Quota>,
    pub input: Option<Quota>,
    pub output: Option<Quota>,
}

impl RateView {
    /// Adds one scope's quota for a dimension, keeping the one with less remaining.
    pub fn merge(&mut self, d: Dim, q: Quota) {
        let slot = match d {
            Dim::Requests => &mut self.requests,
            Dim::InputTokens => &mut self.input,
            Dim::OutputTokens => &mut self.output,
            _ => return,
        };
        match slot {
            Some(cur) if cur.remaining <= q.remaining => {}
            _ => *slot = Some(q),
        }
    }

    /// Adds one scope's per-minute quotas (requests, input and output tokens: `k` 0, 1
    /// and 2, as the backends index their window counters) for the dimensions `spec`
    /// limits; `remaining(k, limit)` says what is left of the k-th.
    #[inline]
    pub(crate) fn merge_windows(
        &mut self,
        spec: &LimitSpec,
        reset: SystemTime,
        remaining: impl Fn(usize, u64) -> u64,
    ) {
        for (k, d) in [Dim::Requests, Dim::InputTokens, Dim::OutputTokens]
            .into_iter()
            .enumerate()
        {
            if let Some(limit) = spec.get(d) {
                self.merge(
                    d,
                    Quota {
                        limit,
                        remaining: remaining(k, limit),
                        reset,
                    },
                );
            }
        }
    }
}

/// A refusal: which scope and dimension, and when to come back.
#[derive(Debug, Clone)]
pub struct Denial {
    pub scope: usize,
    pub dim: Dim,
    pub retry_after: Duration,
    /// The request alone exceeds the limit; waiting will not help.
    pub never: bool,
    /// Boxed: refusals are the rare path, and this keeps `Result`s small.
    pub view: Box<RateView>,
}

/// A refused request, ready for the client: the error (429 `rate_limit_error` with
/// `retry-after`) and the headers to add.
#[derive(Debug)]
pub struct Rejection {
    pub error: Error,
    pub dim: Dim,
    pub scope: ScopeKind,
    pub view: RateView,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_keeps_the_tightest_quota() {
        let mut v = RateView::default();
        let t = SystemTime::UNIX_EPOCH;
        v.merge(
            Dim::Requests,
            Quota {
                limit: 10,
                remaining: 5,
                reset: t,
            },
        );
        v.merge(
            Dim::Requests,
            Quota {
                limit: 100,
                remaining: 50,
                reset: t,
            },
        );
        assert_eq!(v.requests.unwrap().limit, 10);
        v.merge(
            Dim::Requests,
            Quota {
                limit: 100,
                remaining: 1,
                reset: t,
            },
        );
        assert_eq!(v.requests.unwrap().remaining, 1);
    }
}
