//! The etcd session supervisor: one task per node that connects, grants the lease,
//! writes the node record, keeps the lease alive every TTL/3 on its own timer, and
//! watches `/strait/` (config and membership) from the last revision it saw. On any
//! error it backs off (200 ms doubling to 5 s), reconnects, re-grants, re-writes and
//! resumes the watch where it stopped, or reloads everything if etcd compacted
//! that revision away. Nothing needs a node restart.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, PutOptions, WatchOptions};
use tokio::sync::watch;

use super::config_watch::{Applier, Source};
use super::etcd::{self, EtcdStore};
use super::membership::{Members, RecordBuilder};
use super::store::{ClusterHandle, ClusterStore, NodeCtx};
use crate::schema::{NodeRecord, NodeState, CONFIG_PREFIX, NODES_PREFIX, ROOT};
use crate::state::Shared;

const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Time allowed for the goodbye (record delete, lease revoke) on a clean stop.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);
/// The record (with fresh path health) is rewritten every this many keep-alives.
const RECORD_REFRESH_TICKS: u32 = 3;
/// How often the node's readiness is compared with its record's: a change that
/// no one signals (Redis or a deferred backend going down) reaches etcd within this.
/// Moves of the path's circuit and drains signal `record_changed` and go at once.
const READY_CHECK: Duration = Duration::from_millis(500);

/// An etcd store runs as one supervisor task.
impl ClusterStore for EtcdStore {
    fn start(self: Box<Self>, node: NodeCtx) -> ClusterHandle {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (sync_tx, sync_rx) = watch::channel(false);
        let supervisor = Supervisor::new(*self, node, stop_rx, sync_tx);
        let task = tokio::spawn(supervisor.run());
        ClusterHandle::new(stop_tx, sync_rx, task)
    }
}

pub struct Supervisor {
    endpoints: Vec<String>,
    ttl: Duration,
    applier: Applier,
    shared: Arc<Shared>,
    record: RecordBuilder,
    stop: watch::Receiver<bool>,
    first_sync: watch::Sender<bool>,
    /// Last etcd revision seen under `/strait/`; 0 means "load everything".
    last_rev: i64,
    /// Documents under `/strait/config/`, kept in step with the watch.
    config: BTreeMap<String, Vec<u8>>,
    members: Members,
    /// The lease of our previous session, if any.
    last_lease: Option<i64>,
}

/// Why a session ended.
enum End {
    Stopped,
    Failed { error: String, was_connected: bool },
}

impl Supervisor {
    pub fn new(
        store: EtcdStore,
        node: NodeCtx,
        stop: watch::Receiver<bool>,
        first_sync: watch::Sender<bool>,
    ) -> Self {
        let c = node
            .shared
            .config
            .cluster
            .as_ref()
            .expect("etcd store runs only with [cluster]");
        let public = c
            .advertise_public
            .clone()
            .unwrap_or_else(|| node.public_addr.to_string());
        let admin = c
            .advertise_admin
            .clone()
            .unwrap_or_else(|| node.admin_addr.to_string());
        let record = RecordBuilder::new(
            store.applier.node_id.clone(),
            c.region.clone(),
            public,
            admin,
        );
        Supervisor {
            endpoints: store.endpoints,
            ttl: store.lease_ttl,
            shared: node.shared,
            applier: store.applier,
            record,
            stop,
            first_sync,
            last_rev: 0,
            config: BTreeMap::new(),
            members: Members::default(),
            last_lease: None,
        }
    }

    pub async fn run(mut self) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let end = self.session().await;
            self.set_connected(false);
            let _ = self.first_sync.send(true);
            match end {
                End::Stopped => return,
                End::Failed {
                    error,
                    was_connected,
                } => {
                    self.applier.metrics.etcd_errors.inc();
                    if was_connected {
                        backoff = MIN_BACKOFF;
                        tracing::warn!(error = %error, "etcd session lost; serving the last config and reconnecting");
                    } else {
                        tracing::warn!(error = %error, retry_in_ms = backoff.as_millis() as u64, "etcd unreachable");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.stop.changed() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn set_connected(&self, up: bool) {
        self.shared
            .health
            .cluster
            .connected
            .store(up, Ordering::Relaxed);
        self.applier.metrics.etcd_connected.set(i64::from(up));
    }

    /// One connection's life. Returns only on stop or on an error.
    async fn session(&mut self) -> End {
        let mut connected = false;
        match self.session_inner(&mut connected).await {
            Ok(()) => End::Stopped,
            Err(error) => End::Failed {
                error,
                was_connected: connected,
            },
        }
    }

    async fn session_inner(&mut self, connected: &mut bool) -> Result<(), String> {
        let mut client = etcd::connect(&self.endpoints).await?;

        let ttl_s = self.ttl.as_secs().max(1) as i64;
        let granted = client
            .lease_grant(ttl_s, None)
            .await
            .map_err(|e| format!("lease grant: {e}"))?;
        let lease = granted.id();
        let now_rev = granted.header().map_or(0, |h| h.revision());
        if self.last_rev != 0 && now_rev < self.last_rev {
            // etcd went back in time (rebuilt or restored from an old backup): a watch
            // from our revision would wait for changes that already happened.
            tracing::warn!(
                seen = self.last_rev,
                now = now_rev,
                "etcd revision went backwards; reloading everything"
            );
            self.last_rev = 0;
        }
        if self.last_rev == 0 {
            self.full_load(&mut client).await?;
        }
        let key = self.record.key();
        self.check_duplicate_id(&mut client).await?;
        let mut written = self.put_record(&mut client, lease).await?;
        let (mut keeper, mut keepalives) = client
            .lease_keep_alive(lease)
            .await
            .map_err(|e| format!("lease keep-alive: {e}"))?;
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.last_rev + 1);
        let mut watch = client
            .watch(ROOT, Some(opts))
            .await
            .map_err(|e| format!("watch: {e}"))?;

        self.last_lease = Some(lease);
        *connected = true;
        self.set_connected(true);
        self.applier.metrics.registrations.inc();
        let _ = self.first_sync.send(true);
        tracing::info!(key = %key, lease, ttl_s, revision = self.last_rev, "registered in etcd");

        let tick_every = self.ttl / 3;
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + tick_every, tick_every);
        let mut last_answer = Instant::now();
        let mut ticks = 0u32;
        let mut ready_check = tokio::time::interval(READY_CHECK);
        ready_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = self.stop.changed() => {
                    self.goodbye(&mut client, lease).await;
                    return Ok(());
                }
                _ = ticker.tick() => {
                    // Our own timer drives keep-alive: etcd-client sends nothing by itself.
                    if last_answer.elapsed() > tick_every * 2 {
                        return Err("lease keep-alive not answered".into());
                    }
                    keeper.keep_alive().await.map_err(|e| format!("lease keep-alive: {e}"))?;
                    ticks += 1;
                    if ticks % RECORD_REFRESH_TICKS == 0 {
                        let fresh = self.record.build(&self.shared);
                        if fresh != written {
                            written = self.put_built(&mut client, lease, fresh).await?;
                        }
                    }
                }
                msg = keepalives.message() => match msg {
                    Ok(Some(resp)) if resp.ttl() > 0 => last_answer = Instant::now(),
                    Ok(Some(_)) => return Err("lease expired".into()),
                    Ok(None) => return Err("lease keep-alive stream closed".into()),
                    Err(e) => return Err(format!("lease keep-alive: {e}")),
                },
                _ = self.shared.health.cluster.record_changed.notified() => {
                    written = self.put_record(&mut client, lease).await?;
                }
                _ = ready_check.tick() => {
                    if self.record_is_stale(&written) {
                        written = self.put_record(&mut client, lease).await?;
                    }
                }
                msg = watch.message() => {
                    let resp = match msg {
                        Ok(Some(resp)) => resp,
                        Ok(None) => return Err("watch stream closed".into()),
                        Err(e) => return Err(format!("watch: {e}")),
                    };
                    if resp.canceled() {
                        if resp.compact_revision() > 0 {
                            // The history we would resume from is gone: start over.
                            tracing::warn!(compacted = resp.compact_revision(), "watch revision compacted; reloading everything");
                            self.last_rev = 0;
                        }
                        return Err(format!("watch canceled: {}", resp.cancel_reason()));
                    }
                    if self.on_watch(&resp, &key) {
                        // Someone deleted our record while we live: write it back.
                        written = self.put_record(&mut client, lease).await?;
                    }
                }
            }
        }
    }

    /// The written record no longer tells the node's readiness, path state or drain.
    fn record_is_stale(&self, written: &NodeRecord) -> bool {
        let h = &self.shared.health;
        written.ready != self.shared.ready()
            || written.path.state != h.upstream.circuit.state()
            || (written.state == NodeState::Draining) != h.is_draining()
    }

    /// Reads everything under `/strait/` and replaces the local view with it.
    async fn full_load(&mut self, client: &mut Client) -> Result<(), String> {
        let (rev, kvs) = etcd::load_prefix(client, ROOT).await?;
        self.config.clear();
        self.members.clear();
        for (k, v) in kvs {
            if k.starts_with(CONFIG_PREFIX) {
                self.config.insert(k, v);
            } else if k.starts_with(NODES_PREFIX) {
                self.members.put(&k, &v);
            }
        }
        self.last_rev = rev;
        self.members.publish(&self.shared, &self.applier.metrics);
        self.applier.apply(&self.config, rev, Source::Etcd);
        Ok(())
    }

    /// Applies one watch response. All its events are applied before the config is
    /// rebuilt, so a transaction lands as one snapshot. Returns true if our own
    /// record was deleted.
    fn on_watch(&mut self, resp: &etcd_client::WatchResponse, own_key: &str) -> bool {
        let (mut config_dirty, mut members_dirty, mut own_deleted) = (false, false, false);
        let mut rev = self.last_rev;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let Ok(key) = kv.key_str() else { continue };
            rev = rev.max(kv.mod_revision());
            let put = ev.event_type() == EventType::Put;
            if key.starts_with(CONFIG_PREFIX) {
                if put {
                    self.config.insert(key.to_string(), kv.value().to_vec());
                } else {
                    self.config.remove(key);
                }
                config_dirty = true;
            } else if key.starts_with(NODES_PREFIX) {
                if put {
                    self.members.put(key, kv.value());
                } else {
                    self.members.delete(key);
                    own_deleted |= key == own_key;
                }
                members_dirty = true;
            }
        }
        self.last_rev = rev;
        if members_dirty {
            self.members.publish(&self.shared, &self.applier.metrics);
        }
        if config_dirty {
            self.applier.apply(&self.config, rev, Source::Etcd);
        }
        own_deleted
    }

    /// Two nodes with one id would overwrite each other's record and be counted as
    /// one. A record under our key with another address and a lease we never held
    /// is most likely such a twin (or our own previous life on another address).
    async fn check_duplicate_id(&mut self, client: &mut Client) -> Result<(), String> {
        let resp = client
            .get(self.record.key(), None)
            .await
            .map_err(|e| format!("get record: {e}"))?;
        if let Some(kv) = resp.kvs().first() {
            let theirs: Option<NodeRecord> = serde_json::from_slice(kv.value()).ok();
            if let Some(theirs) = theirs {
                if kv.lease() != 0
                    && Some(kv.lease()) != self.last_lease
                    && theirs.public_addr != self.record.public_addr
                {
                    tracing::warn!(
                        key = %self.record.key(),
                        other_public_addr = %theirs.public_addr,
                        "another node may be registered with this node id; ids must be unique in the cluster"
                    );
                }
            }
        }
        Ok(())
    }

    async fn put_record(&mut self, client: &mut Client, lease: i64) -> Result<NodeRecord, String> {
        let rec = self.record.build(&self.shared);
        self.put_built(client, lease, rec).await
    }

    async fn put_built(
        &mut self,
        client: &mut Client,
        lease: i64,
        rec: NodeRecord,
    ) -> Result<NodeRecord, String> {
        let value = serde_json::to_vec(&rec).map_err(|e| format!("record: {e}"))?;
        client
            .put(
                self.record.key(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(|e| format!("put record: {e}"))?;
        Ok(rec)
    }

    /// Clean stop: the record goes at once instead of at lease expiry.
    async fn goodbye(&mut self, client: &mut Client, lease: i64) {
        let key = self.record.key();
        let bye = async {
            client
                .delete(key.as_str(), None)
                .await
                .map_err(|e| e.to_string())?;
            client
                .lease_revoke(lease)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(())
        };
        match tokio::time::timeout(GOODBYE_TIMEOUT, bye).await {
            Ok(Ok(())) => tracing::info!(key = %key, "deregistered from etcd"),
            Ok(Err(e)) => {
                tracing::warn!(key = %key, "deregistration failed ({e}); the record expires with its lease")
            }
            Err(_) => {
                tracing::warn!(key = %key, "deregistration timed out; the record expires with its lease")
            }
        }
        self.set_connected(false);
    }
}
