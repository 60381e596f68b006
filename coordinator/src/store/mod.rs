//! The coordinator's view of etcd behind two traits: [`Store`] (read the config
//! snapshot and the node records, commit config changes) and [`Elector`] (the lease
//! and election calls the election drives). [`etcd`] implements both over a live etcd
//! and is the only module that touches `etcd_client`; [`memory`] is the in-memory
//! twin with the same commit semantics, for unit tests.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use strait_node::schema::{ClusterConfig, NodeRecord};

use crate::error::{Error, ErrorKind, Result};
use crate::leader::{LeaderInfo, Leadership};

pub mod etcd;
pub mod memory;

pub use etcd::{watch_nodes, EtcdElector, EtcdStore};
pub use memory::MemoryStore;

/// The raw node records under `/strait/nodes/`, key -> JSON document, as
/// [`etcd::watch_nodes`] keeps them (raw, so readers can look at fields this
/// version's [`NodeRecord`] does not know yet).
pub type NodeDocs = std::collections::BTreeMap<String, Vec<u8>>;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// What the API needs from the cluster store.
pub trait Store: Send + Sync + 'static {
    /// The whole config under `/strait/config/` at one revision (`revision` set).
    fn load(&self) -> BoxFuture<'_, ClusterConfig>;
    /// Applies `puts` and `deletes` atomically if this coordinator still leads and
    /// nothing under the config prefix changed after `base_revision`. Returns the new
    /// revision; [`ErrorKind::Conflict`](crate::error::ErrorKind::Conflict) if the
    /// config moved, [`ErrorKind::NotLeader`](crate::error::ErrorKind::NotLeader) if
    /// leadership is gone.
    fn commit(
        &self,
        base_revision: i64,
        puts: Vec<(String, Vec<u8>)>,
        deletes: Vec<String>,
    ) -> BoxFuture<'_, i64>;
    /// Every parseable node record under `/strait/nodes/` (live: they sit on leases).
    fn nodes(&self) -> BoxFuture<'_, Vec<NodeRecord>>;
    /// The current leader according to the store.
    fn leader(&self) -> BoxFuture<'_, Option<LeaderInfo>>;
    /// Whether this coordinator believes it leads (writes still check in the store).
    fn is_leader(&self) -> bool;
    /// This coordinator.
    fn me(&self) -> &LeaderInfo;
    /// Appends one entry (a JSON document) to the cluster's audit log under
    /// [`AUDIT_PREFIX`], so every coordinator shows the same log and it outlives
    /// restarts; the oldest entries beyond [`AUDIT_KEEP`] are trimmed.
    fn audit_append(&self, entry: Vec<u8>) -> BoxFuture<'_, ()>;
    /// The newest `limit` audit entries, newest first.
    fn audit_recent(&self, limit: usize) -> BoxFuture<'_, Vec<Vec<u8>>>;
}

/// Where the audit log lives: one key per entry, named by time so keys sort by age.
pub const AUDIT_PREFIX: &str = "/strait/audit/";
/// Audit entries kept in etcd (a few hundred bytes each).
pub const AUDIT_KEEP: usize = 10_000;

/// The key of an audit entry written now: time first, so keys sort by age.
pub fn audit_key() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{AUDIT_PREFIX}{ms:020}-{:08x}", rand::random::<u32>())
}

/// The calls one election term makes; [`crate::election::Election::run`] drives them.
pub trait Elector: Send + Sync + 'static {
    /// A fresh lease living `ttl` (whole seconds, at least one); its id.
    fn grant(&self, ttl: Duration) -> BoxFuture<'_, i64>;
    /// Revokes `lease`; true once it is gone (revoked now or already unknown).
    fn revoke(&self, lease: i64) -> Pin<Box<dyn Future<Output = bool> + Send + '_>>;
    /// Keeps `lease` alive; returns only with an error, once the lease cannot be
    /// proven alive any more.
    fn keep_alive(&self, lease: i64, ttl: Duration) -> BoxFuture<'_, ()>;
    /// Campaigns as `me` on `lease`; resolves once this coordinator leads.
    fn campaign(&self, me: &LeaderInfo, lease: i64) -> BoxFuture<'_, Leadership>;
    /// Follows the election; fails when another key leads or the watch breaks.
    fn observe(&self, mine: &Leadership) -> BoxFuture<'_, ()>;
}

/// The config documents as stored, at `revision`, parsed exactly as a node parses them.
fn parse_config<'a>(
    revision: i64,
    kvs: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<ClusterConfig> {
    ClusterConfig::from_kvs(revision, kvs).map_err(|e| {
        Error::internal(format!(
            "the config stored in etcd is invalid ({e}); fix or delete that key with etcdctl"
        ))
    })
}

/// A guarded commit found the config moved after the snapshot it was validated against.
fn conflict() -> Error {
    Error::new(ErrorKind::Conflict, "the config changed during this write")
}
