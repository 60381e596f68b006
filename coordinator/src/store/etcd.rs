//! The [`Store`] and [`Elector`] over a live etcd: the one module that speaks
//! `etcd_client`. Writes happen only while this coordinator leads, and every write is
//! one transaction guarded by the leader key and the snapshot revision it was
//! validated against.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use std::sync::Arc;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, GetResponse,
    LeaderKey, SortOrder, SortTarget, Txn, TxnOp, WatchOptions,
};
use strait_node::schema::{ClusterConfig, NodeRecord, CONFIG_PREFIX, ELECTION_NAME, NODES_PREFIX};
use tokio::sync::watch;

use super::{BoxFuture, Elector, NodeDocs, Store};
use crate::error::{Error, ErrorKind, Result};
use crate::leader::{LeaderInfo, Leadership};

/// etcd errors carry endpoints and gRPC detail, never config values; keep the
/// message but classify it as unavailable.
impl From<etcd_client::Error> for Error {
    fn from(e: etcd_client::Error) -> Self {
        Error::new(ErrorKind::Unavailable, format!("etcd: {e}"))
    }
}

/// Connects an etcd client. The channel connects lazily, so this succeeds while
/// etcd is down; requests then fail until it is back.
pub async fn connect_etcd(endpoints: &[String], timeout: Duration) -> Result<Client> {
    // No HTTP/2 keep-alive pings: etcd refuses pings more often than every 5 s,
    // and the election's own lease renewal notices a dead etcd sooner.
    let opts = ConnectOptions::new().with_connect_timeout(timeout);
    Client::connect(endpoints, Some(opts))
        .await
        .map_err(Error::from)
}

/// Asks etcd who leads now. `Ok(None)` when nobody does.
async fn current_leader(client: &Client, timeout: Duration) -> Result<Option<LeaderInfo>> {
    let mut c = client.clone();
    match tokio::time::timeout(timeout, c.leader(ELECTION_NAME)).await {
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

/// [`Store`] over a live etcd client.
pub struct EtcdStore {
    client: Client,
    me: LeaderInfo,
    /// This coordinator's leadership as the election publishes it.
    leadership: watch::Receiver<Option<Leadership>>,
    timeout: Duration,
}

impl EtcdStore {
    pub fn new(
        client: Client,
        me: LeaderInfo,
        leadership: watch::Receiver<Option<Leadership>>,
        timeout: Duration,
    ) -> EtcdStore {
        EtcdStore {
            client,
            me,
            leadership,
            timeout,
        }
    }

    async fn deadline<T>(
        &self,
        what: &str,
        f: impl Future<Output = std::result::Result<T, etcd_client::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r.map_err(Error::from),
            Err(_) => Err(Error::new(
                ErrorKind::Unavailable,
                format!("etcd: {what} timed out"),
            )),
        }
    }

    /// Every key under `prefix`, within the deadline.
    async fn get_prefix(&self, what: &str, prefix: &str) -> Result<GetResponse> {
        let mut c = self.client.clone();
        self.deadline(what, c.get(prefix, Some(GetOptions::new().with_prefix())))
            .await
    }

    async fn not_leader(&self) -> Error {
        Error::not_leader(
            current_leader(&self.client, self.timeout)
                .await
                .ok()
                .flatten(),
        )
    }

    async fn load_inner(&self) -> Result<ClusterConfig> {
        let resp = self.get_prefix("reading the config", CONFIG_PREFIX).await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        let mut kvs = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            let key = kv
                .key_str()
                .map_err(|_| Error::internal("a config key in etcd is not UTF-8"))?;
            kvs.push((key, kv.value()));
        }
        super::parse_config(revision, kvs)
    }

    async fn commit_inner(
        &self,
        base_revision: i64,
        puts: Vec<(String, Vec<u8>)>,
        deletes: Vec<String>,
    ) -> Result<i64> {
        let lead = self.leadership.borrow().clone();
        let Some(lead) = lead else {
            return Err(self.not_leader().await);
        };
        let mut ops: Vec<TxnOp> = puts
            .into_iter()
            .map(|(k, v)| TxnOp::put(k, v, None))
            .collect();
        ops.extend(deletes.into_iter().map(|k| TxnOp::delete(k, None)));
        let txn = Txn::new()
            .when(vec![
                Compare::create_revision(lead.key.clone(), CompareOp::Equal, lead.create_revision),
                // Every config key is unchanged since the snapshot we validated.
                Compare::mod_revision(CONFIG_PREFIX, CompareOp::Less, base_revision + 1)
                    .with_prefix(),
            ])
            .and_then(ops)
            .or_else(vec![TxnOp::get(lead.key.clone(), None)]);
        let mut c = self.client.clone();
        let resp = self
            .deadline("committing a config change", c.txn(txn))
            .await?;
        if resp.succeeded() {
            return Ok(resp.header().map(|h| h.revision()).unwrap_or_default());
        }
        let still_leader = resp.op_responses().into_iter().any(|r| match r {
            etcd_client::TxnOpResponse::Get(g) => g
                .kvs()
                .iter()
                .any(|kv| kv.create_revision() == lead.create_revision),
            _ => false,
        });
        if still_leader {
            Err(super::conflict())
        } else {
            Err(self.not_leader().await)
        }
    }

    async fn nodes_inner(&self) -> Result<Vec<NodeRecord>> {
        let resp = self
            .get_prefix("reading node records", NODES_PREFIX)
            .await?;
        let mut out = Vec::new();
        for kv in resp.kvs() {
            match serde_json::from_slice::<NodeRecord>(kv.value()) {
                Ok(n) => out.push(n),
                Err(e) => {
                    tracing::warn!(key = %String::from_utf8_lossy(kv.key()), error = %e, "skipping an unreadable node record")
                }
            }
        }
        Ok(out)
    }
}

impl EtcdStore {
    async fn audit_append_inner(&self, entry: Vec<u8>) -> Result<()> {
        let mut c = self.client.clone();
        self.deadline(
            "writing an audit entry",
            c.put(super::audit_key(), entry, None),
        )
        .await?;
        // Trim: count, and when well over the bound drop the oldest in one range.
        let count = self
            .deadline(
                "counting audit entries",
                c.get(
                    super::AUDIT_PREFIX,
                    Some(GetOptions::new().with_prefix().with_count_only()),
                ),
            )
            .await?
            .count() as usize;
        if count > super::AUDIT_KEEP + 100 {
            let excess = (count - super::AUDIT_KEEP) as i64;
            let oldest = self
                .deadline(
                    "reading old audit entries",
                    c.get(
                        super::AUDIT_PREFIX,
                        Some(
                            GetOptions::new()
                                .with_prefix()
                                .with_keys_only()
                                .with_sort(SortTarget::Key, SortOrder::Ascend)
                                .with_limit(excess),
                        ),
                    ),
                )
                .await?;
            if let Some(last) = oldest.kvs().last() {
                let mut end = last.key().to_vec();
                end.push(0);
                self.deadline(
                    "trimming the audit log",
                    c.delete(
                        super::AUDIT_PREFIX,
                        Some(DeleteOptions::new().with_range(end)),
                    ),
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn audit_recent_inner(&self, limit: usize) -> Result<Vec<Vec<u8>>> {
        let mut c = self.client.clone();
        let resp = self
            .deadline(
                "reading the audit log",
                c.get(
                    super::AUDIT_PREFIX,
                    Some(
                        GetOptions::new()
                            .with_prefix()
                            .with_sort(SortTarget::Key, SortOrder::Descend)
                            .with_limit(limit as i64),
                    ),
                ),
            )
            .await?;
        Ok(resp.kvs().iter().map(|kv| kv.value().to_vec()).collect())
    }
}

impl Store for EtcdStore {
    fn audit_append(&self, entry: Vec<u8>) -> BoxFuture<'_, ()> {
        Box::pin(self.audit_append_inner(entry))
    }
    fn audit_recent(&self, limit: usize) -> BoxFuture<'_, Vec<Vec<u8>>> {
        Box::pin(self.audit_recent_inner(limit))
    }
    fn load(&self) -> BoxFuture<'_, ClusterConfig> {
        Box::pin(self.load_inner())
    }
    fn commit(
        &self,
        base_revision: i64,
        puts: Vec<(String, Vec<u8>)>,
        deletes: Vec<String>,
    ) -> BoxFuture<'_, i64> {
        Box::pin(self.commit_inner(base_revision, puts, deletes))
    }
    fn nodes(&self) -> BoxFuture<'_, Vec<NodeRecord>> {
        Box::pin(self.nodes_inner())
    }
    fn leader(&self) -> BoxFuture<'_, Option<LeaderInfo>> {
        Box::pin(current_leader(&self.client, self.timeout))
    }
    fn is_leader(&self) -> bool {
        self.leadership.borrow().is_some()
    }
    fn me(&self) -> &LeaderInfo {
        &self.me
    }
}

/// [`Elector`] over etcd's lease and election APIs, under [`ELECTION_NAME`].
pub struct EtcdElector {
    client: Client,
    /// Deadline for one etcd request.
    timeout: Duration,
}

impl EtcdElector {
    pub fn new(client: Client, timeout: Duration) -> EtcdElector {
        EtcdElector { client, timeout }
    }

    async fn grant_inner(&self, ttl: Duration) -> Result<i64> {
        let mut c = self.client.clone();
        let ttl_secs = ttl.as_secs().max(1) as i64;
        let grant = tokio::time::timeout(self.timeout, c.lease_grant(ttl_secs, None))
            .await
            .map_err(|_| Error::new(ErrorKind::Unavailable, "etcd: lease grant timed out"))??;
        Ok(grant.id())
    }

    async fn revoke_inner(&self, lease: i64) -> bool {
        let mut c = self.client.clone();
        match tokio::time::timeout(self.timeout, c.lease_revoke(lease)).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => e.to_string().contains("not found"),
            Err(_) => false,
        }
    }

    /// Renews the lease every TTL/3. Fails when etcd says the lease is gone, or when
    /// no renewal succeeded for 2/3 of the TTL: by then etcd may be about to expire
    /// the lease, and a leader that cannot prove itself must stop acting as one.
    async fn keep_alive_inner(&self, lease: i64, ttl: Duration) -> Result<()> {
        let mut c = self.client.clone();
        let interval = ttl / 3;
        let deadline = ttl * 2 / 3;
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

    async fn campaign_inner(&self, me: &LeaderInfo, lease: i64) -> Result<Leadership> {
        let mut c = self.client.clone();
        let value = serde_json::to_vec(me).map_err(|e| Error::internal(e.to_string()))?;
        let resp = c.campaign(ELECTION_NAME, value, lease).await?;
        let leader_key: LeaderKey = resp
            .leader()
            .cloned()
            .ok_or_else(|| Error::internal("campaign answered without a leader key"))?;
        Ok(Leadership {
            key: leader_key.key().to_vec(),
            create_revision: leader_key.rev(),
            lease,
        })
    }

    async fn observe_inner(&self, mine: &Leadership) -> Result<()> {
        let mut c = self.client.clone();
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

impl Elector for EtcdElector {
    fn grant(&self, ttl: Duration) -> BoxFuture<'_, i64> {
        Box::pin(self.grant_inner(ttl))
    }
    fn revoke(&self, lease: i64) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(self.revoke_inner(lease))
    }
    fn keep_alive(&self, lease: i64, ttl: Duration) -> BoxFuture<'_, ()> {
        Box::pin(self.keep_alive_inner(lease, ttl))
    }
    fn campaign(&self, me: &LeaderInfo, lease: i64) -> BoxFuture<'_, Leadership> {
        let me = me.clone();
        Box::pin(async move { self.campaign_inner(&me, lease).await })
    }
    fn observe(&self, mine: &Leadership) -> BoxFuture<'_, ()> {
        let mine = mine.clone();
        Box::pin(async move { self.observe_inner(&mine).await })
    }
}

/// Keeps `tx` equal to the node records in etcd until `shutdown`: lists the prefix,
/// then follows a watch from the next revision, so a change (a drain, a readiness
/// flip, a lease expiring) arrives within milliseconds. Any break (etcd down, watch
/// cancelled or compacted) re-lists after half a second; meanwhile `tx` keeps the
/// last view.
pub async fn watch_nodes(
    client: Client,
    timeout: Duration,
    tx: watch::Sender<Arc<NodeDocs>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            r = follow_nodes(&client, timeout, &tx) => {
                if let Err(e) = r {
                    tracing::warn!(error = %e.message, "node watch broke; re-listing");
                }
            }
            _ = shutdown.wait_for(|s| *s) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// One list-then-watch round; returns when the watch ends.
async fn follow_nodes(
    client: &Client,
    timeout: Duration,
    tx: &watch::Sender<Arc<NodeDocs>>,
) -> Result<()> {
    let mut c = client.clone();
    let resp = tokio::time::timeout(
        timeout,
        c.get(NODES_PREFIX, Some(GetOptions::new().with_prefix())),
    )
    .await
    .map_err(|_| Error::new(ErrorKind::Unavailable, "etcd: listing nodes timed out"))??;
    let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
    let mut docs: NodeDocs = resp
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.value().to_vec(),
            )
        })
        .collect();
    tx.send_replace(Arc::new(docs.clone()));
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut stream = tokio::time::timeout(timeout, c.watch(NODES_PREFIX, Some(opts)))
        .await
        .map_err(|_| {
            Error::new(
                ErrorKind::Unavailable,
                "etcd: starting the node watch timed out",
            )
        })??;
    while let Some(msg) = stream.message().await? {
        if msg.canceled() {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!("etcd: node watch cancelled ({})", msg.cancel_reason()),
            ));
        }
        if msg.events().is_empty() {
            continue;
        }
        for ev in msg.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match ev.event_type() {
                EventType::Put => {
                    docs.insert(key, kv.value().to_vec());
                }
                EventType::Delete => {
                    docs.remove(&key);
                }
            }
        }
        tx.send_replace(Arc::new(docs.clone()));
    }
    Err(Error::new(ErrorKind::Unavailable, "etcd: node watch ended"))
}
