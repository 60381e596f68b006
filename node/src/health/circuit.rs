//! The direct upstream path's circuit breaker: closed, open, half-open, moved by
//! probe and request outcomes with one atomic each (no lock on the hot path).

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};

use crate::schema::PathState;

const CLOSED: u8 = 0;
const HALF_OPEN: u8 = 1;
const OPEN: u8 = 2;

fn decode(v: u8) -> PathState {
    match v {
        CLOSED => PathState::Closed,
        HALF_OPEN => PathState::HalfOpen,
        _ => PathState::Open,
    }
}

/// The breaker. Closed: `threshold` transport failures in a row open it. Open: a
/// success (a probe's answer, or a request's) makes it half-open. Half-open: a
/// success closes it, a failure opens it again.
pub struct Circuit {
    state: AtomicU8,
    threshold: AtomicU32,
}

impl Circuit {
    pub fn new(threshold: u32) -> Self {
        Circuit {
            state: AtomicU8::new(CLOSED),
            threshold: AtomicU32::new(threshold.max(1)),
        }
    }

    pub fn set_threshold(&self, n: u32) {
        self.threshold.store(n.max(1), Ordering::Relaxed);
    }

    pub fn state(&self) -> PathState {
        decode(self.state.load(Ordering::Relaxed))
    }

    /// The state as the `strait_upstream_path_state` gauge shows it: 0 closed, 1
    /// half-open, 2 open.
    pub fn gauge_value(&self) -> i64 {
        i64::from(self.state.load(Ordering::Relaxed))
    }

    /// An answer came back. Returns the new state if this moved the breaker.
    pub fn on_success(&self) -> Option<PathState> {
        let from = self.state.load(Ordering::Relaxed);
        let to = match from {
            CLOSED => return None,
            OPEN => HALF_OPEN,
            _ => CLOSED,
        };
        self.swap(from, to)
    }

    /// A transport failure, the `consecutive`-th in a row. Returns the new state if
    /// this moved the breaker.
    pub fn on_failure(&self, consecutive: u32) -> Option<PathState> {
        let from = self.state.load(Ordering::Relaxed);
        match from {
            CLOSED if consecutive >= self.threshold.load(Ordering::Relaxed) => {
                self.swap(from, OPEN)
            }
            HALF_OPEN => self.swap(from, OPEN),
            _ => None,
        }
    }

    /// One move; a concurrent outcome that moved it first wins (the loser's outcome
    /// is then judged against the state it did not see, by its next report).
    fn swap(&self, from: u8, to: u8) -> Option<PathState> {
        self.state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Relaxed)
            .ok()
            .map(|_| decode(to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_open_half_open_closed() {
        let c = Circuit::new(2);
        assert_eq!(c.on_failure(1), None, "one failure is below the threshold");
        assert_eq!(c.on_failure(2), Some(PathState::Open));
        assert_eq!(c.on_failure(3), None, "already open");
        assert_eq!(c.on_success(), Some(PathState::HalfOpen));
        assert_eq!(c.gauge_value(), 1);
        assert_eq!(c.on_failure(1), Some(PathState::Open), "a failure reopens");
        assert_eq!(c.on_success(), Some(PathState::HalfOpen));
        assert_eq!(c.on_success(), Some(PathState::Closed));
        assert_eq!(c.on_success(), None);
        assert_eq!(c.gauge_value(), 0);
    }
}
