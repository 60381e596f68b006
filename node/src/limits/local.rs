//! The in-process limiter: the embedded default without Redis, and every node's
//! safe-share fallback while Redis is unreachable. Windows run on `tokio::time`, so
//! tests can pause and advance time.

use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::time::Instant;

use super::{
    Actual, Denial, Dim, LimitSpec, PermitData, RateView, Reservation, Settle, Stamp, Subject,
    CONCURRENCY_RETRY, DAY, MINUTE,
};

/// Counters of one scope. Window ids count up so a refund can tell whether the window
/// it belongs to is still the current one.
#[derive(Debug, Default)]
struct Counters {
    window_start: Option<Instant>,
    window_id: i64,
    /// Requests, input tokens, output tokens used in the current minute window.
    used: [u64; 3],
    day_start: Option<Instant>,
    day_id: i64,
    daily: u64,
    in_flight: u64,
}

impl Counters {
    fn roll(&mut self, now: Instant) {
        if self.window_start.is_none_or(|s| now >= s + MINUTE) {
            self.window_start = Some(now);
            self.window_id += 1;
            self.used = [0; 3];
        }
        if self.day_start.is_none_or(|s| now >= s + DAY) {
            self.day_start = Some(now);
            self.day_id += 1;
            self.daily = 0;
        }
    }

    fn window_end(&self, now: Instant) -> Instant {
        self.window_start.unwrap_or(now) + MINUTE
    }

    fn day_end(&self, now: Instant) -> Instant {
        self.day_start.unwrap_or(now) + DAY
    }

    fn used(&self, d: Dim) -> u64 {
        match d {
            Dim::Requests => self.used[0],
            Dim::InputTokens => self.used[1],
            Dim::OutputTokens => self.used[2],
            Dim::DailyTokens => self.daily,
            Dim::Concurrency => self.in_flight,
        }
    }

    /// The first dimension this reservation would overrun, and when it frees up.
    fn check(
        &self,
        spec: &LimitSpec,
        res: &Reservation,
        now: Instant,
    ) -> Option<(Dim, std::time::Duration)> {
        for d in Dim::ALL {
            let Some(limit) = spec.get(d) else { continue };
            if self.used(d).saturating_add(res.amount(d)) > limit {
                let retry = match d {
                    Dim::DailyTokens => self.day_end(now) - now,
                    Dim::Concurrency => CONCURRENCY_RETRY,
                    _ => self.window_end(now) - now,
                };
                return Some((d, retry));
            }
        }
        None
    }

    fn commit(&mut self, spec: &LimitSpec, res: &Reservation) {
        self.used[0] += 1;
        self.used[1] = self.used[1].saturating_add(res.input);
        self.used[2] = self.used[2].saturating_add(res.output);
        self.daily = self.daily.saturating_add(res.amount(Dim::DailyTokens));
        if spec.concurrency.is_some() {
            self.in_flight += 1;
        }
    }

    fn view_into(&self, spec: &LimitSpec, view: &mut RateView, now: Instant, sys_now: SystemTime) {
        let reset = sys_now + (self.window_end(now) - now);
        view.merge_windows(spec, reset, |k, limit| limit.saturating_sub(self.used[k]));
    }
}

/// Per-scope counters behind short std mutexes: a decision locks at most two (key,
/// then tenant, always in that order), does a few comparisons and unlocks.
pub struct LocalLimiter {
    specs: Vec<LimitSpec>,
    state: Vec<Mutex<Counters>>,
}

fn lock(m: &Mutex<Counters>) -> MutexGuard<'_, Counters> {
    // A panic while holding the lock cannot leave the counters inconsistent in a way
    // that matters more than refusing service would.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LocalLimiter {
    /// One entry per scope, indexed like [`super::Limiter::scopes`].
    pub fn new(specs: Vec<LimitSpec>) -> LocalLimiter {
        let state = specs
            .iter()
            .map(|_| Mutex::new(Counters::default()))
            .collect();
        LocalLimiter { specs, state }
    }

    /// Decides and, if admitted, reserves in every scope of the subject at once.
    pub fn admit(
        &self,
        subject: Subject,
        res: Reservation,
    ) -> Result<(PermitData, RateView), Denial> {
        let now = Instant::now();
        let sys_now = wall_clock(now);
        let mut guards: [Option<(usize, MutexGuard<'_, Counters>)>; 2] =
            subject.scopes.map(|i| i.map(|i| (i, lock(&self.state[i]))));
        let mut denial = None;
        for (i, c) in guards.iter_mut().flatten() {
            c.roll(now);
            if denial.is_none() {
                if let Some((dim, retry_after)) = c.check(&self.specs[*i], &res, now) {
                    denial = Some((*i, dim, retry_after));
                }
            }
        }
        let mut view = RateView::default();
        let mut stamps = [Stamp::default(); 2];
        for (slot, (i, c)) in guards
            .iter_mut()
            .enumerate()
            .filter_map(|(n, g)| g.as_mut().map(|g| (n, g)))
        {
            if denial.is_none() {
                c.commit(&self.specs[*i], &res);
            }
            stamps[slot] = Stamp {
                window: c.window_id,
                day: c.day_id,
            };
            c.view_into(&self.specs[*i], &mut view, now, sys_now);
        }
        match denial {
            Some((scope, dim, retry_after)) => Err(Denial {
                scope,
                dim,
                retry_after,
                never: false,
                view: Box::new(view),
            }),
            None => Ok((
                PermitData {
                    subject,
                    reservation: res,
                    stamps,
                },
                view,
            )),
        }
    }

    /// What scope `i` used in its current windows, by [`Dim::ALL`]: requests, input
    /// and output tokens this minute, tokens today, requests in flight (`/stats`).
    pub fn usage(&self, i: usize) -> [u64; 5] {
        let c = lock(&self.state[i]);
        let now = Instant::now();
        let minute = c.window_start.is_some_and(|s| now < s + MINUTE);
        let day = c.day_start.is_some_and(|s| now < s + DAY);
        Dim::ALL.map(|d| match d {
            Dim::DailyTokens if !day => 0,
            Dim::Concurrency => c.in_flight,
            Dim::Requests | Dim::InputTokens | Dim::OutputTokens if !minute => 0,
            d => c.used(d),
        })
    }

    /// Current in-flight count of a scope (tests and the benchmark).
    pub fn in_flight(&self, scope: usize) -> u64 {
        lock(&self.state[scope]).in_flight
    }
}

fn adjust(v: u64, reserved: u64, actual: u64) -> u64 {
    if actual >= reserved {
        v.saturating_add(actual - reserved)
    } else {
        v.saturating_sub(reserved - actual)
    }
}

impl Settle for LocalLimiter {
    fn settle(&self, p: &PermitData, actual: Actual) {
        let r = p.reservation;
        for (slot, i) in p.subject.scopes.iter().enumerate() {
            let Some(i) = *i else { continue };
            let mut c = lock(&self.state[i]);
            let stamp = p.stamps[slot];
            // A refund for a window that has ended has nothing left to restore.
            if c.window_id == stamp.window {
                c.used[1] = adjust(c.used[1], r.input, actual.input);
                c.used[2] = adjust(c.used[2], r.output, actual.output);
            }
            if c.day_id == stamp.day {
                c.daily = adjust(
                    c.daily,
                    r.amount(Dim::DailyTokens),
                    actual.input.saturating_add(actual.output),
                );
            }
            if self.specs[i].concurrency.is_some() {
                c.in_flight = c.in_flight.saturating_sub(1);
            }
        }
    }
}

/// The wall-clock time at `now`, from the last wall-clock reading this thread took
/// (at most a second old) and the monotonic time since: the reset times in the
/// headers need wall-clock time, and a second clock read per request cost as much
/// as the decision itself. A clock step shows within a second.
fn wall_clock(now: Instant) -> SystemTime {
    thread_local! {
        static BASE: std::cell::Cell<Option<(Instant, SystemTime)>> =
            const { std::cell::Cell::new(None) };
    }
    BASE.with(|base| match base.get() {
        Some((at, wall)) if now >= at && now - at < std::time::Duration::from_secs(1) => {
            wall + (now - at)
        }
        _ => {
            let wall = SystemTime::now();
            base.set(Some((now, wall)));
            wall
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn wall_clock_follows_the_system_clock() {
        // Bracketed by real readings, so a busy machine pausing the thread between
        // them cannot fail it. The slack covers a pause while the base pair was read;
        // a derivation that forgot the time since the base would be 600 ms off.
        let slack = Duration::from_millis(250);
        for _ in 0..3 {
            let before = SystemTime::now();
            let derived = wall_clock(Instant::now());
            let after = SystemTime::now();
            assert!(
                derived + slack >= before && derived <= after + slack,
                "{derived:?} not within {before:?}..{after:?}"
            );
            std::thread::sleep(Duration::from_millis(600));
        }
    }

    fn one(spec: LimitSpec) -> (LocalLimiter, Subject) {
        (
            LocalLimiter::new(vec![spec]),
            Subject {
                scopes: [Some(0), None],
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn requests_per_minute_reset_after_the_window() {
        let (l, s) = one(LimitSpec {
            rpm: Some(3),
            ..Default::default()
        });
        let r = Reservation::default();
        for n in (0..3).rev() {
            let (_, view) = l.admit(s, r).unwrap();
            assert_eq!(view.requests.unwrap().remaining, n);
        }
        let d = l.admit(s, r).unwrap_err();
        assert_eq!(d.dim, Dim::Requests);
        assert_eq!(d.retry_after, MINUTE);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(
            l.admit(s, r).unwrap_err().retry_after,
            Duration::from_secs(1)
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(l.admit(s, r).unwrap().1.requests.unwrap().remaining, 2);
    }
}
