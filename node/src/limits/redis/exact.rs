//! Exact mode: one atomic script per request checks and reserves every dimension of
//! the key and its tenant with Redis's clock; settlement (refunds, the slot's release)
//! goes to Redis in the background.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use super::scripts::{limit_arg, parse_admit};
use super::{slot_of, Decision, RedisLimiter};
use crate::limits::{
    ms, Actual, Denial, Dim, Permit, PermitData, RateView, Reservation, Settle, Stamp, Subject,
    MINUTE,
};

/// A settled exact-mode permit on its way to the background settlement task.
pub(super) struct SettleMsg {
    data: PermitData,
    actual: Actual,
}

impl RedisLimiter {
    pub(super) async fn admit_exact(
        self: &Arc<Self>,
        subject: Subject,
        res: Reservation,
    ) -> Decision {
        let scopes: Vec<usize> = subject.iter().collect();
        let mut inv = self.windowed_invocation(&self.scripts.admit, &scopes);
        inv.arg(res.input).arg(res.output);
        for &i in &scopes {
            let spec = &self.scopes[i].spec;
            for d in Dim::ALL {
                inv.arg(spec.get(d).map_or(-1, limit_arg));
            }
            if spec.concurrency.is_some() {
                // Counted before the script runs, so a heartbeat never under-reports.
                self.held[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        let undo = |this: &Self| {
            for &i in &scopes {
                if this.scopes[i].spec.concurrency.is_some() {
                    this.held[i].fetch_sub(1, Ordering::Relaxed);
                }
            }
        };
        let Some(reply) = self.run(&inv, &self.ops.admit, "admit").await else {
            undo(self);
            return self.admit_fallback(subject, res);
        };
        let Some(parsed) = parse_admit(&reply, scopes.len()) else {
            undo(self);
            self.fail("admit", "unexpected reply");
            return self.admit_fallback(subject, res);
        };
        let sys_now = SystemTime::now();
        let mut view = RateView::default();
        let mut stamps = [Stamp::default(); 2];
        for (n, (&i, st)) in scopes.iter().zip(&parsed.scopes).enumerate() {
            let spec = &self.scopes[i].spec;
            let reset =
                sys_now + Duration::from_millis((st[0] + ms(MINUTE) - parsed.now).max(0) as u64);
            view.merge_windows(spec, reset, |k, limit| {
                limit.saturating_sub(st[1 + k].max(0) as u64)
            });
            stamps[slot_of(subject, n)] = Stamp {
                window: st[0],
                day: st[4],
            };
        }
        if let Some((scope, dim, retry_after)) = parsed.denial(&scopes) {
            undo(self);
            return Err(Denial {
                scope,
                dim,
                retry_after,
                never: false,
                view: Box::new(view),
            });
        }
        let data = PermitData {
            subject,
            reservation: res,
            stamps,
        };
        Ok((
            Permit::new(data, Arc::new(ExactSettle(self.clone())) as Arc<dyn Settle>),
            view,
        ))
    }

    async fn settle_exact(&self, msg: SettleMsg) {
        let SettleMsg { data, actual } = msg;
        let scopes: Vec<usize> = data.subject.iter().collect();
        let di = actual.input as i64 - data.reservation.input as i64;
        let dout = actual.output as i64 - data.reservation.output as i64;
        let releases = scopes
            .iter()
            .any(|&i| self.scopes[i].spec.concurrency.is_some());
        if di == 0 && dout == 0 && !releases {
            return;
        }
        let mut inv = self.scripts.settle.prepare_invoke();
        self.add_scope_keys(&mut inv, &scopes);
        inv.arg(&self.node_id).arg(scopes.len()).arg(di).arg(dout);
        for (n, &i) in scopes.iter().enumerate() {
            let st = data.stamps[slot_of(data.subject, n)];
            inv.arg(st.window)
                .arg(st.day)
                .arg(u8::from(self.scopes[i].spec.concurrency.is_some()));
        }
        // A failure leaves the slot counted in Redis; `resync` (set by `fail`) corrects
        // it at the next heartbeat.
        let _ = self.run(&inv, &self.ops.settle, "settle").await;
    }
}

/// Exact-mode permits: the slot count drops locally at once, Redis is told in the
/// background (settlement never delays a response).
struct ExactSettle(Arc<RedisLimiter>);

impl Settle for ExactSettle {
    fn settle(&self, p: &PermitData, actual: Actual) {
        for i in p.subject.iter() {
            if self.0.scopes[i].spec.concurrency.is_some() {
                self.0.held[i].fetch_sub(1, Ordering::Relaxed);
            }
        }
        if self
            .0
            .settle_tx
            .send(SettleMsg {
                data: p.clone(),
                actual,
            })
            .is_err()
        {
            self.0.resync.store(true, Ordering::Relaxed);
        }
    }
}

/// Background: sends settled exact-mode permits to Redis, one script each.
pub(super) async fn settle_loop(
    limiter: Weak<RedisLimiter>,
    mut rx: mpsc::UnboundedReceiver<SettleMsg>,
) {
    while let Some(msg) = rx.recv().await {
        let Some(l) = limiter.upgrade() else { return };
        if l.is_degraded() {
            // Redis is down: the release is lost here and restored by the resync.
            l.resync.store(true, Ordering::Relaxed);
            continue;
        }
        l.settle_exact(msg).await;
    }
}
