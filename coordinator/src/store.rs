//! The coordinator's view of etcd behind one trait: read the config snapshot and the
//! node records, and commit config changes. [`EtcdStore`] is the etcd implementation;
//! it writes only while this coordinator leads, and every write is one transaction
//! guarded by the leader key and the snapshot revision it was validated against.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use strait_node::cluster::schema::{ClusterConfig, NodeRecord, CONFIG_PREFIX, NODES_PREFIX};

use crate::election::{Election, LeaderInfo};
use crate::error::{Error, ErrorKind, Result};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// What the API needs from the cluster store.
pub trait Store: Send + Sync + 'static {
    /// The whole config under `/strait/config/` at one revision (`revision` set).
    fn load(&self) -> BoxFuture<'_, ClusterConfig>;
    /// Applies `puts` and `deletes` atomically if this coordinator still leads and
    /// nothing under the config prefix changed after `base_revision`. Returns the new
    /// revision; [`ErrorKind::Conflict`] if the config moved, [`ErrorKind::NotLeader`]
    /// if leadership is gone.
    fn commit(
        &self,
        base_revision: i64,
        puts: Vec<(String, Vec<u8>)>,
        deletes: Vec<String>,
    ) -> BoxFuture<'_, i64>;
    /// Every parseable node record under `/strait/nodes/` (live: they sit on leases).
    fn nodes(&self) -> BoxFuture<'_, Vec<NodeRecord>>;
    /// The current leader according to etcd.
    fn leader(&self) -> BoxFuture<'_, Option<LeaderInfo>>;
    /// Whether this coordinator believes it leads (writes still check in etcd).
    fn is_leader(&self) -> bool;
    /// This coordinator.
    fn me(&self) -> &LeaderInfo;
}

/// [`Store`] over a live etcd client.
pub struct EtcdStore {
    client: Client,
    election: Election,
    timeout: Duration,
}

impl EtcdStore {
    pub fn new(client: Client, election: Election, timeout: Duration) -> EtcdStore {
        EtcdStore {
            client,
            election,
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

    async fn load_inner(&self) -> Result<ClusterConfig> {
        let mut c = self.client.clone();
        let resp = self
            .deadline(
                "reading the config",
                c.get(CONFIG_PREFIX, Some(GetOptions::new().with_prefix())),
            )
            .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        let mut kvs = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            let key = kv
                .key_str()
                .map_err(|_| Error::internal("a config key in etcd is not UTF-8"))?;
            kvs.push((key, kv.value()));
        }
        ClusterConfig::from_kvs(revision, kvs).map_err(|e| {
            Error::internal(format!(
                "the config stored in etcd is invalid ({e}); fix or delete that key with etcdctl"
            ))
        })
    }

    async fn commit_inner(
        &self,
        base_revision: i64,
        puts: Vec<(String, Vec<u8>)>,
        deletes: Vec<String>,
    ) -> Result<i64> {
        let Some(lead) = self.election.leadership() else {
            return Err(Error::not_leader(
                self.election
                    .current_leader(&self.client)
                    .await
                    .ok()
                    .flatten(),
            ));
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
            Err(Error::new(
                ErrorKind::Conflict,
                "the config changed during this write",
            ))
        } else {
            Err(Error::not_leader(
                self.election
                    .current_leader(&self.client)
                    .await
                    .ok()
                    .flatten(),
            ))
        }
    }

    async fn nodes_inner(&self) -> Result<Vec<NodeRecord>> {
        let mut c = self.client.clone();
        let resp = self
            .deadline(
                "reading node records",
                c.get(NODES_PREFIX, Some(GetOptions::new().with_prefix())),
            )
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

impl Store for EtcdStore {
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
        Box::pin(self.election.current_leader(&self.client))
    }
    fn is_leader(&self) -> bool {
        self.election.is_leader()
    }
    fn me(&self) -> &LeaderInfo {
        self.election.me()
    }
}
