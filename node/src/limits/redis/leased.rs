//! Leased mode: each node leases quota from Redis in chunks and decides locally, so
//! the hot path takes no round trip; a short lease is refilled with one script for
//! every dimension of the key and its tenant, and usage settles into the lease (the
//! background sync gives surplus back and pushes debt).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::scripts::{limit_arg, parse_lease};
use super::{slot_of, Decision, RedisLimiter};
use crate::limits::{
    ms, Actual, Denial, Dim, LimitSpec, Permit, PermitData, RateView, Reservation, Settle, Stamp,
    Subject, DAY, MINUTE,
};

/// The dimensions a lease holds quota of, in the order of [`Lease::avail`].
const LEASED_DIMS: [Dim; 4] = [
    Dim::Requests,
    Dim::InputTokens,
    Dim::OutputTokens,
    Dim::DailyTokens,
];

/// What a reservation takes from each leased dimension `spec` limits: `(k, amount)`,
/// `k` indexing [`Lease::avail`].
#[inline]
fn lease_needs(spec: &LimitSpec, res: Reservation) -> impl Iterator<Item = (usize, i64)> + '_ {
    LEASED_DIMS
        .into_iter()
        .enumerate()
        .filter(move |&(_, d)| spec.get(d).is_some())
        .map(move |(k, d)| (k, res.amount(d) as i64))
}

/// Leased mode: what this node holds of one scope's quota.
#[derive(Debug)]
pub(super) struct Lease {
    /// Redis window start (Redis ms) this lease belongs to; -1 for none.
    pub(super) ws: i64,
    pub(super) ds: i64,
    /// Local instants at which the windows end (computed from Redis's clock offsets).
    w_end: Option<Instant>,
    d_end: Option<Instant>,
    w_reset: SystemTime,
    /// Leased and unused: requests, input, output, daily. Negative is usage beyond the
    /// reservation not yet charged in Redis.
    avail: [i64; 4],
    /// Global usage (all nodes' leases) at the last reply, for the headers.
    pub(super) used_global: [u64; 4],
    last_grant: [i64; 4],
    pub(super) conc_leased: u64,
    conc_in_use: u64,
    /// Slots Redis counts for this node as of the last sync (`u64::MAX`: unknown, the
    /// next sync sets the count absolutely). Exact mode keeps its heartbeat state here too.
    pub(super) conc_synced: u64,
    admitted_since_sync: u64,
    pub(super) last_heartbeat: Option<Instant>,
    /// After Redis refused a refill: refuse locally until then (at most one sync
    /// interval), so an exhausted limit costs no round trip per refused request.
    refused_until: Option<Instant>,
    refused_dim: Dim,
    /// When the refused dimension frees up (for `retry-after`).
    refused_reset: Option<Instant>,
}

impl Default for Lease {
    fn default() -> Self {
        Lease {
            ws: -1,
            ds: -1,
            w_end: None,
            d_end: None,
            w_reset: SystemTime::UNIX_EPOCH,
            avail: [0; 4],
            used_global: [0; 4],
            last_grant: [0; 4],
            conc_leased: 0,
            conc_in_use: 0,
            conc_synced: 0,
            admitted_since_sync: 0,
            last_heartbeat: None,
            refused_until: None,
            refused_dim: Dim::Requests,
            refused_reset: None,
        }
    }
}

impl Lease {
    /// Drops quota of windows that have ended locally.
    pub(super) fn expire(&mut self, now: Instant) {
        if self.w_end.is_none_or(|e| now >= e) {
            self.ws = -1;
            self.w_end = None;
            self.avail[..3].fill(0);
        }
        if self.d_end.is_none_or(|e| now >= e) {
            self.ds = -1;
            self.d_end = None;
            self.avail[3] = 0;
        }
    }

    /// After an outage Redis may have restarted empty: the leases from before are not
    /// in it any more, and the slot count must be set absolutely.
    pub(super) fn forget(&mut self) {
        self.ws = -1;
        self.ds = -1;
        self.w_end = None;
        self.d_end = None;
        self.avail = [0; 4];
        self.conc_synced = u64::MAX;
    }

    fn remaining(&self, limit: u64, k: usize) -> u64 {
        let unleased = limit.saturating_sub(self.used_global[k]);
        unleased
            .saturating_add(self.avail[k].max(0) as u64)
            .min(limit)
    }

    /// Adds this lease's per-minute quotas, as the headers report them, to `view`.
    #[inline]
    fn merge_view(&self, spec: &LimitSpec, view: &mut RateView) {
        view.merge_windows(spec, self.w_reset, |k, limit| self.remaining(limit, k));
    }

    /// Sync: takes what goes back to Redis per leased dimension (debt as a negative
    /// amount). While busy about one chunk stays; when idle everything goes back so
    /// other nodes can use it. Debt is always pushed.
    pub(super) fn take_surplus(&mut self) -> [i64; 4] {
        let mut ret = [0i64; 4];
        let idle = self.admitted_since_sync == 0;
        self.admitted_since_sync = 0;
        for (k, ret_k) in ret.iter_mut().enumerate() {
            let valid = if k < 3 { self.ws >= 0 } else { self.ds >= 0 };
            if !valid {
                continue;
            }
            let keep = if idle { 0 } else { self.last_grant[k].max(0) };
            if self.avail[k] < 0
                || self.avail[k] > keep.saturating_mul(2).max(if idle { 0 } else { 1 })
            {
                *ret_k = if self.avail[k] < 0 {
                    self.avail[k]
                } else {
                    self.avail[k] - keep
                };
                self.avail[k] -= *ret_k;
            }
        }
        ret
    }

    /// Sync: slots not in use go back at once (concurrency limits are small).
    pub(super) fn release_unused_slots(&mut self) {
        self.conc_leased = self.conc_in_use;
    }
}

pub(super) struct LeaseSlot {
    pub(super) state: Mutex<Lease>,
    /// One refill or sync of a scope at a time: a burst waits for one round trip.
    pub(super) refill: tokio::sync::Mutex<()>,
}

impl LeaseSlot {
    pub(super) fn new() -> LeaseSlot {
        LeaseSlot {
            state: Mutex::new(Lease::default()),
            refill: tokio::sync::Mutex::new(()),
        }
    }
}

pub(super) fn lock(m: &Mutex<Lease>) -> MutexGuard<'_, Lease> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RedisLimiter {
    pub(super) fn leased_permit(
        self: &Arc<Self>,
        (data, view): (PermitData, RateView),
    ) -> (Permit, RateView) {
        (
            Permit::new(
                data,
                Arc::new(LeasedSettle(self.clone())) as Arc<dyn Settle>,
            ),
            view,
        )
    }

    /// The hot path: admits from this node's leases if every dimension has enough.
    pub(super) fn try_lease(
        &self,
        subject: Subject,
        res: Reservation,
    ) -> Option<(PermitData, RateView)> {
        let now = Instant::now();
        let mut guards: [Option<(usize, MutexGuard<'_, Lease>)>; 2] = subject
            .scopes
            .map(|i| i.map(|i| (i, lock(&self.leases[i].state))));
        for (i, l) in guards.iter_mut().flatten() {
            l.expire(now);
            let spec = &self.scopes[*i].spec;
            if lease_needs(spec, res).any(|(k, amt)| l.avail[k] < amt) {
                return None;
            }
            if spec.concurrency.is_some() && l.conc_in_use >= l.conc_leased {
                return None;
            }
        }
        let mut view = RateView::default();
        let mut stamps = [Stamp::default(); 2];
        for (slot, g) in guards.iter_mut().enumerate() {
            let Some((i, l)) = g else { continue };
            let spec = &self.scopes[*i].spec;
            for (k, amt) in lease_needs(spec, res) {
                l.avail[k] -= amt;
            }
            if spec.concurrency.is_some() {
                l.conc_in_use += 1;
            }
            l.admitted_since_sync += 1;
            l.merge_view(spec, &mut view);
            stamps[slot] = Stamp {
                window: l.ws,
                day: l.ds,
            };
        }
        Some((
            PermitData {
                subject,
                reservation: res,
                stamps,
            },
            view,
        ))
    }

    /// The slow path: one refill round trip for everything short, then admit locally.
    pub(super) async fn refill_and_admit(
        self: &Arc<Self>,
        subject: Subject,
        res: Reservation,
    ) -> Decision {
        let scopes: Vec<usize> = subject.iter().collect();
        let mut _guards = Vec::with_capacity(2);
        for &i in &scopes {
            _guards.push(self.leases[i].refill.lock().await);
        }
        for _ in 0..3 {
            // Another request may have refilled while this one waited.
            if let Some(ok) = self.try_lease(subject, res) {
                return Ok(self.leased_permit(ok));
            }
            let nodes = self.nodes.load(Ordering::Relaxed);
            let fdiv = (f64::from(nodes) / self.settings.lease_fraction).max(1.0);
            let mut inv = self.windowed_invocation(&self.scripts.lease, &scopes);
            inv.arg(fdiv);
            let now = Instant::now();
            for &i in &scopes {
                let spec = &self.scopes[i].spec;
                let mut l = lock(&self.leases[i].state);
                l.expire(now);
                inv.arg(l.ws).arg(l.ds);
                for (k, d) in LEASED_DIMS.into_iter().enumerate() {
                    let amt = res.amount(d) as i64;
                    match spec.get(d) {
                        Some(limit) => inv
                            .arg(limit_arg(limit))
                            .arg((amt - l.avail[k]).max(0))
                            .arg(amt),
                        None => inv.arg(-1).arg(0).arg(0),
                    };
                }
                match spec.concurrency {
                    Some(limit) => inv
                        .arg(limit as i64)
                        .arg((l.conc_in_use + 1).saturating_sub(l.conc_leased)),
                    None => inv.arg(-1).arg(0),
                };
            }
            self.metrics.lease_refills.inc();
            let Some(reply) = self.run(&inv, &self.ops.lease, "lease").await else {
                return self.admit_fallback(subject, res);
            };
            let Some(parsed) = parse_lease(&reply, scopes.len()) else {
                self.fail("lease", "unexpected reply");
                return self.admit_fallback(subject, res);
            };
            let now = Instant::now();
            let sys_now = SystemTime::now();
            let mut view = RateView::default();
            for (&i, st) in scopes.iter().zip(&parsed.scopes) {
                let mut l = lock(&self.leases[i].state);
                apply_grant(&mut l, st, parsed.now, now, sys_now);
                l.merge_view(&self.scopes[i].spec, &mut view);
            }
            if let Some((scope, dim, retry_after)) = parsed.denial(&scopes) {
                {
                    let mut l = lock(&self.leases[scope].state);
                    l.refused_until = Some(now + retry_after.min(self.settings.sync_interval));
                    l.refused_dim = dim;
                    l.refused_reset = Some(now + retry_after);
                }
                return Err(Denial {
                    scope,
                    dim,
                    retry_after,
                    never: false,
                    view: Box::new(view),
                });
            }
        }
        // Local requests kept taking the refills: a burst far beyond the lease size.
        let view = self.try_view(subject);
        Err(Denial {
            scope: scopes[0],
            dim: Dim::Requests,
            retry_after: Duration::from_secs(1),
            never: false,
            view: Box::new(view),
        })
    }

    /// A refusal remembered from the last refill of one of the subject's scopes.
    pub(super) fn recently_refused(&self, subject: Subject) -> Option<Denial> {
        let now = Instant::now();
        for i in subject.iter() {
            let l = lock(&self.leases[i].state);
            if l.refused_until.is_some_and(|t| now < t) {
                let retry_after = l
                    .refused_reset
                    .map_or(Duration::from_secs(1), |r| r.saturating_duration_since(now));
                let dim = l.refused_dim;
                drop(l);
                return Some(Denial {
                    scope: i,
                    dim,
                    retry_after,
                    never: false,
                    view: Box::new(self.try_view(subject)),
                });
            }
        }
        None
    }

    fn try_view(&self, subject: Subject) -> RateView {
        let mut view = RateView::default();
        for i in subject.iter() {
            lock(&self.leases[i].state).merge_view(&self.scopes[i].spec, &mut view);
        }
        view
    }

    fn settle_leased(&self, p: &PermitData, actual: Actual) {
        let r = p.reservation;
        for (n, i) in p.subject.iter().enumerate() {
            let spec = &self.scopes[i].spec;
            let stamp = p.stamps[slot_of(p.subject, n)];
            let mut l = lock(&self.leases[i].state);
            // Refunds go back into this node's lease (returned to Redis by the sync if
            // unused); usage beyond the reservation makes the lease negative.
            if l.ws == stamp.window && l.ws >= 0 {
                if spec.itpm.is_some() {
                    l.avail[1] += r.input as i64 - actual.input as i64;
                }
                if spec.otpm.is_some() {
                    l.avail[2] += r.output as i64 - actual.output as i64;
                }
            }
            if l.ds == stamp.day && l.ds >= 0 && spec.daily_tokens.is_some() {
                l.avail[3] += r.amount(Dim::DailyTokens) as i64
                    - actual.input.saturating_add(actual.output) as i64;
            }
            if spec.concurrency.is_some() {
                l.conc_in_use = l.conc_in_use.saturating_sub(1);
            }
        }
    }
}

/// Applies a refill reply `{ws, ds, g_r, g_i, g_o, g_d, g_c, r, i, o, d, held}` to a lease.
fn apply_grant(l: &mut Lease, st: &[i64; 12], redis_now: i64, now: Instant, sys_now: SystemTime) {
    let until = |start: i64, len: Duration| {
        Duration::from_millis((start + ms(len) - redis_now).max(0) as u64)
    };
    if st[0] != l.ws {
        // A new window: whatever was left of the old lease is void.
        l.ws = st[0];
        l.avail[..3].fill(0);
        let left = until(st[0], MINUTE);
        l.w_end = Some(now + left);
        l.w_reset = sys_now + left;
    }
    if st[1] != l.ds {
        l.ds = st[1];
        l.avail[3] = 0;
        l.d_end = Some(now + until(st[1], DAY));
    }
    for k in 0..4 {
        l.avail[k] += st[2 + k];
        if st[2 + k] > 0 {
            l.last_grant[k] = st[2 + k];
        }
        l.used_global[k] = st[7 + k].max(0) as u64;
    }
    let granted = st[6].max(0) as u64;
    l.conc_leased += granted;
    // Redis added the grant to what it had. If that is unknown (after an outage), the
    // next sync sets the count absolutely instead.
    if l.conc_synced != u64::MAX {
        l.conc_synced += granted;
    }
}

/// Leased-mode permits settle into the node's lease; no Redis round trip.
struct LeasedSettle(Arc<RedisLimiter>);

impl Settle for LeasedSettle {
    fn settle(&self, p: &PermitData, actual: Actual) {
        self.0.settle_leased(p, actual);
    }
}
