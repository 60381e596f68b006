//! Leader election among coordinators through etcd's election API: each coordinator
//! campaigns under [`ELECTION_NAME`] with a lease it keeps alive on its own timer.
//! The winner is the only writer; it steps down as soon as it cannot renew its lease
//! (etcd gone, lease expired) or observes another leader, then campaigns again.
//! A standby's campaign returns when the old leader's key disappears, i.e. within
//! one lease TTL of a crash, or at once after a clean shutdown (the lease is revoked).

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, LeaderKey};
use serde::{Deserialize, Serialize};
use strait_node::cluster::schema::ELECTION_NAME;
use tokio::sync::watch;

use crate::error::{Error, ErrorKind, Result};

/// Who a coordinator is; the value it campaigns with, so `/v1/leader` and
/// `not_leader` errors can name the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    pub id: String,
    pub region: String,
    /// Where its admin API is reached.
    pub url: String,
}

/// Proof of leadership used to guard writes: the election key this coordinator
/// created. A write transaction compares its create revision, so a coordinator that
/// lost its key can never write, whatever its local flag says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    pub key: Vec<u8>,
    pub create_revision: i64,
    pub lease: i64,
}

/// The shared view of this coordinator's leadership, updated by [`Election::run`].
#[derive(Clone)]
pub struct Election {
    me: Arc<LeaderInfo>,
    ttl: Duration,
    timeout: Duration,
    state: Arc<watch::Sender<Option<Leadership>>>,
}

impl Election {
    pub fn new(me: LeaderInfo, ttl: Duration, timeout: Duration) -> Election {
        let (tx, _) = watch::channel(None);
        Election {
            me: Arc::new(me),
            ttl,
            timeout,
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

    /// Asks etcd who leads now. `Ok(None)` when nobody does.
    pub async fn current_leader(&self, client: &Client) -> Result<Option<LeaderInfo>> {
        let mut c = client.clone();
        match tokio::time::timeout(self.timeout, c.leader(ELECTION_NAME)).await {
            Err(_) => Err(Error::new(
                ErrorKind::Unavailable,
                "etcd: timed out asking for the leader",
            )),
            // etcd answers "election: no leader" as a gRPC error.
            Ok(Err(e)) if e.to_string().contains("no leader") => Ok(None),
            Ok(Err(e)) => Err(e.into()),
            Ok(Ok(resp)) => Ok(resp
                .kv()
                .and_then(|kv| serde_json::from_slice(kv.value()).ok())),
        }
    }

    /// Campaigns, leads, steps down and campaigns again until `shutdown` fires; then
    /// gives up leadership at once (revokes the lease) so a standby takes over
    /// without waiting for the TTL.
    pub async fn run(self, client: Client, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(200);
        // Leases of earlier terms whose revocation failed (etcd was down). Until they
        // are gone our own old key may still lead, and a new campaign would queue
        // behind it for a whole TTL, so they are revoked first once etcd answers.
        let mut stale: Vec<i64> = Vec::new();
        loop {
            let mut kept = Vec::new();
            for lease in stale.drain(..) {
                if !self.revoke(&client, lease).await {
                    kept.push(lease);
                }
            }
            stale = kept;
            let started = Instant::now();
            let lease_holder = std::sync::Mutex::new(None);
            let term = self.term(&client, &lease_holder);
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
                if !self.revoke(&client, lease).await && !stop {
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

    /// Revokes `lease`; true once it is gone (revoked now or already unknown to etcd).
    async fn revoke(&self, client: &Client, lease: i64) -> bool {
        let mut c = client.clone();
        match tokio::time::timeout(self.timeout, c.lease_revoke(lease)).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => e.to_string().contains("not found"),
            Err(_) => false,
        }
    }

    /// One term: grant a lease, keep it alive, campaign, lead until something fails.
    /// Returns only with an error (or never while all is well).
    async fn term(
        &self,
        client: &Client,
        lease_holder: &std::sync::Mutex<Option<i64>>,
    ) -> Result<()> {
        let mut c = client.clone();
        let ttl_secs = self.ttl.as_secs().max(1) as i64;
        let grant = tokio::time::timeout(self.timeout, c.lease_grant(ttl_secs, None))
            .await
            .map_err(|_| Error::new(ErrorKind::Unavailable, "etcd: lease grant timed out"))??;
        let lease = grant.id();
        *lease_holder.lock().unwrap_or_else(|e| e.into_inner()) = Some(lease);

        let keeper = self.keep_alive(client.clone(), lease);
        tokio::pin!(keeper);
        let value = serde_json::to_vec(&*self.me).map_err(|e| Error::internal(e.to_string()))?;

        // The campaign blocks until we lead; meanwhile the keeper must run.
        let leader_key: LeaderKey = tokio::select! {
            r = &mut keeper => return r,
            r = c.campaign(ELECTION_NAME, value, lease) => {
                let resp = r?;
                resp.leader().cloned().ok_or_else(|| Error::internal("campaign answered without a leader key"))?
            }
        };
        let leadership = Leadership {
            key: leader_key.key().to_vec(),
            create_revision: leader_key.rev(),
            lease,
        };
        tracing::info!(id = %self.me.id, region = %self.me.region, "elected leader");
        self.state.send_replace(Some(leadership.clone()));

        tokio::select! {
            r = &mut keeper => r,
            r = self.watch_leader(client.clone(), &leadership) => r,
        }
    }

    /// Renews the lease every TTL/3. Fails when etcd says the lease is gone, or when
    /// no renewal succeeded for 2/3 of the TTL: by then etcd may be about to expire
    /// the lease, and a leader that cannot prove itself must stop acting as one.
    async fn keep_alive(&self, client: Client, lease: i64) -> Result<()> {
        let mut c = client;
        let interval = self.ttl / 3;
        let deadline = self.ttl * 2 / 3;
        let (mut keeper, mut stream) =
            tokio::time::timeout(self.timeout, c.lease_keep_alive(lease))
                .await
                .map_err(|_| {
                    Error::new(ErrorKind::Unavailable, "etcd: keep-alive stream timed out")
                })??;
        let mut last_ok = Instant::now();
        loop {
            let attempt = async {
                keeper.keep_alive().await?;
                stream.message().await
            };
            match tokio::time::timeout(interval, attempt).await {
                Ok(Ok(Some(resp))) if resp.ttl() > 0 => last_ok = Instant::now(),
                Ok(Ok(Some(_))) => {
                    return Err(Error::new(ErrorKind::Unavailable, "election lease expired"))
                }
                Ok(Ok(None)) => {
                    return Err(Error::new(
                        ErrorKind::Unavailable,
                        "keep-alive stream closed",
                    ))
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {}
            }
            if last_ok.elapsed() >= deadline {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    "cannot renew the election lease",
                ));
            }
            let wait = interval.saturating_sub(last_ok.elapsed().min(interval));
            tokio::time::sleep(wait.max(Duration::from_millis(50))).await;
        }
    }

    /// Follows the election; fails if another key leads (ours was deleted by hand)
    /// or the stream breaks.
    async fn watch_leader(&self, client: Client, mine: &Leadership) -> Result<()> {
        let mut c = client;
        let mut stream = c.observe(ELECTION_NAME).await?;
        loop {
            match stream.message().await? {
                Some(resp) => {
                    if let Some(kv) = resp.kv() {
                        if kv.key() != mine.key.as_slice() {
                            return Err(Error::new(
                                ErrorKind::Unavailable,
                                "another coordinator leads now",
                            ));
                        }
                    }
                }
                None => {
                    return Err(Error::new(
                        ErrorKind::Unavailable,
                        "election observe stream closed",
                    ))
                }
            }
        }
    }
}
