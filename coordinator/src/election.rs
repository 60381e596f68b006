//! Leader election among coordinators: each coordinator campaigns with a lease it
//! keeps alive on its own timer (the etcd calls sit behind [`Elector`]).
//! The winner is the only writer; it steps down as soon as it cannot renew its lease
//! (etcd gone, lease expired) or observes another leader, then campaigns again.
//! A standby's campaign returns when the old leader's key disappears, i.e. within
//! one lease TTL of a crash, or at once after a clean shutdown (the lease is revoked).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::error::Result;
use crate::leader::{LeaderInfo, Leadership};
use crate::store::Elector;

/// The shared view of this coordinator's leadership, updated by [`Election::run`].
#[derive(Clone)]
pub struct Election {
    me: Arc<LeaderInfo>,
    ttl: Duration,
    state: Arc<watch::Sender<Option<Leadership>>>,
}

impl Election {
    pub fn new(me: LeaderInfo, ttl: Duration) -> Election {
        let (tx, _) = watch::channel(None);
        Election {
            me: Arc::new(me),
            ttl,
            state: Arc::new(tx),
        }
    }

    pub fn me(&self) -> &LeaderInfo {
        &self.me
    }

    /// The leadership this coordinator holds right now, if any.
    pub fn leadership(&self) -> Option<Leadership> {
        self.state.borrow().clone()
    }

    pub fn is_leader(&self) -> bool {
        self.state.borrow().is_some()
    }

    /// Notified on every change of this coordinator's leadership.
    pub fn subscribe(&self) -> watch::Receiver<Option<Leadership>> {
        self.state.subscribe()
    }

    /// Campaigns, leads, steps down and campaigns again until `shutdown` fires; then
    /// gives up leadership at once (revokes the lease) so a standby takes over
    /// without waiting for the TTL.
    pub async fn run<E: Elector>(self, elector: E, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(200);
        // Leases of earlier terms whose revocation failed (etcd was down). Until they
        // are gone our own old key may still lead, and a new campaign would queue
        // behind it for a whole TTL, so they are revoked first once etcd answers.
        let mut stale: Vec<i64> = Vec::new();
        loop {
            let mut kept = Vec::new();
            for lease in stale.drain(..) {
                if !elector.revoke(lease).await {
                    kept.push(lease);
                }
            }
            stale = kept;
            let started = Instant::now();
            let lease_holder = std::sync::Mutex::new(None);
            let term = self.term(&elector, &lease_holder);
            let stop = tokio::select! {
                r = term => {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "election term ended; campaigning again");
                    }
                    false
                }
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => true,
            };
            self.step_down(if stop { "shutting down" } else { "term ended" });
            let lease = *lease_holder.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(lease) = lease {
                if !elector.revoke(lease).await && !stop {
                    stale.push(lease);
                    // Bounded: leases expire by themselves after one TTL anyway.
                    if stale.len() > 8 {
                        stale.remove(0);
                    }
                }
            }
            if stop {
                return;
            }
            if started.elapsed() > self.ttl {
                backoff = Duration::from_millis(200);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            if *shutdown.borrow() {
                return;
            }
        }
    }

    fn step_down(&self, why: &str) {
        if self.state.borrow().is_some() {
            tracing::warn!(reason = why, "no longer the leader");
        }
        self.state.send_replace(None);
    }

    /// One term: grant a lease, keep it alive, campaign, lead until something fails.
    /// Returns only with an error (or never while all is well).
    async fn term<E: Elector>(
        &self,
        elector: &E,
        lease_holder: &std::sync::Mutex<Option<i64>>,
    ) -> Result<()> {
        let lease = elector.grant(self.ttl).await?;
        *lease_holder.lock().unwrap_or_else(|e| e.into_inner()) = Some(lease);

        let keeper = elector.keep_alive(lease, self.ttl);
        tokio::pin!(keeper);

        // The campaign blocks until we lead; meanwhile the keeper must run.
        let leadership = tokio::select! {
            r = &mut keeper => return r,
            r = elector.campaign(&self.me, lease) => r?,
        };
        tracing::info!(id = %self.me.id, region = %self.me.region, "elected leader");
        self.state.send_replace(Some(leadership.clone()));

        tokio::select! {
            r = &mut keeper => r,
            r = elector.observe(&leadership) => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryElection;

    fn info(id: &str) -> LeaderInfo {
        LeaderInfo {
            id: id.into(),
            region: "r1".into(),
            url: format!("http://{id}"),
        }
    }

    /// Waits (at most 5 s) until `e` leads (`yes`) or does not.
    async fn leads(e: &Election, yes: bool) {
        let mut rx = e.subscribe();
        let waited =
            tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|l| l.is_some() == yes)).await;
        assert!(
            waited.is_ok_and(|r| r.is_ok()),
            "{} did not {} in time",
            e.me().id,
            if yes { "lead" } else { "step down" }
        );
    }

    #[tokio::test]
    async fn one_leads_a_lost_lease_hands_over_and_a_clean_stop_hands_over_at_once() {
        let election = MemoryElection::new();
        let ttl = Duration::from_secs(10);
        let (a, b) = (Election::new(info("a"), ttl), Election::new(info("b"), ttl));
        let (_stop_a, stop_a_rx) = watch::channel(false);
        let (stop_b, stop_b_rx) = watch::channel(false);
        tokio::spawn(a.clone().run(election.elector(), stop_a_rx));
        leads(&a, true).await;
        tokio::spawn(b.clone().run(election.elector(), stop_b_rx));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !b.is_leader(),
            "a standby does not lead while the leader lives"
        );
        assert_eq!(election.leader().map(|l| l.id), Some("a".to_string()));

        // The leader's lease is lost (etcd gone, renewals failing): it steps down and
        // the standby, whose campaign was waiting, leads.
        let lease = a.leadership().expect("a leads").lease;
        election.expire(lease);
        leads(&b, true).await;
        leads(&a, false).await;
        assert_eq!(election.leader().map(|l| l.id), Some("b".to_string()));

        // The old leader campaigns again and stands by; the new one stops cleanly,
        // revoking its lease: the standby leads without waiting for a TTL.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!a.is_leader());
        stop_b.send(true).expect("b runs");
        leads(&a, true).await;
        leads(&b, false).await;
        assert_eq!(election.leader().map(|l| l.id), Some("a".to_string()));
    }
}
