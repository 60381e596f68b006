//! The in-memory twins of the etcd store and election, for unit tests of the app, the
//! API and the election: config documents with revisions, commits guarded exactly as
//! the etcd transaction guards them (leader first, then no config key modified after
//! the base revision), node records, a leader that a test sets; and leases and
//! campaigns in order, the first live one leading, with leases a test can expire.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use strait_node::schema::{ClusterConfig, NodeRecord};

use super::{BoxFuture, Elector, Store};
use crate::error::{Error, ErrorKind, Result};
use crate::leader::{LeaderInfo, Leadership};

/// [`Store`] in memory. One revision counter for every write, as in etcd.
pub struct MemoryStore {
    me: LeaderInfo,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    revision: i64,
    /// Config key -> (value, revision of its last change).
    config: BTreeMap<String, (Vec<u8>, i64)>,
    nodes: Vec<NodeRecord>,
    leader: Option<LeaderInfo>,
    audit: Vec<Vec<u8>>,
}

impl MemoryStore {
    /// An empty store in which `me` leads.
    pub fn leading(me: LeaderInfo) -> MemoryStore {
        let store = MemoryStore {
            me: me.clone(),
            state: Mutex::new(State::default()),
        };
        store.set_leader(Some(me));
        store
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Who leads from now on (`None`: nobody, as between two terms).
    pub fn set_leader(&self, leader: Option<LeaderInfo>) {
        self.state().leader = leader;
    }

    /// Writes one config document behind the coordinator's back (another writer, or
    /// etcdctl); returns the new revision.
    pub fn put_raw(&self, key: &str, value: &[u8]) -> i64 {
        let mut s = self.state();
        s.revision += 1;
        let rev = s.revision;
        s.config.insert(key.to_string(), (value.to_vec(), rev));
        rev
    }

    /// Registers (or replaces) a node record, as a node does on its lease.
    pub fn put_node(&self, node: NodeRecord) {
        let mut s = self.state();
        s.revision += 1;
        s.nodes
            .retain(|n| !(n.region == node.region && n.id == node.id));
        s.nodes.push(node);
    }

    /// Removes a node record, as its lease expiring does.
    pub fn remove_node(&self, region: &str, id: &str) {
        let mut s = self.state();
        s.revision += 1;
        s.nodes.retain(|n| !(n.region == region && n.id == id));
    }

    /// The revision of the last write.
    pub fn revision(&self) -> i64 {
        self.state().revision
    }

    fn commit_now(
        &self,
        base_revision: i64,
        puts: Vec<(String, Vec<u8>)>,
        deletes: Vec<String>,
    ) -> Result<i64> {
        let mut s = self.state();
        if s.leader.as_ref() != Some(&self.me) {
            return Err(Error::not_leader(s.leader.clone()));
        }
        // As etcd's prefix compare: only keys that exist now are held to the base.
        if s.config.values().any(|(_, rev)| *rev > base_revision) {
            return Err(super::conflict());
        }
        s.revision += 1;
        let rev = s.revision;
        for (k, v) in puts {
            s.config.insert(k, (v, rev));
        }
        for k in deletes {
            s.config.remove(&k);
        }
        Ok(rev)
    }
}

impl Store for MemoryStore {
    fn load(&self) -> BoxFuture<'_, ClusterConfig> {
        let s = self.state();
        let loaded = super::parse_config(
            s.revision,
            s.config
                .iter()
                .map(|(k, (v, _))| (k.as_str(), v.as_slice())),
        );
        Box::pin(async move { loaded })
    }
    fn commit(
        &self,
        base_revision: i64,
        puts: Vec<(String, Vec<u8>)>,
        deletes: Vec<String>,
    ) -> BoxFuture<'_, i64> {
        let done = self.commit_now(base_revision, puts, deletes);
        Box::pin(async move { done })
    }
    fn audit_append(&self, entry: Vec<u8>) -> BoxFuture<'_, ()> {
        let mut st = self.state();
        st.audit.push(entry);
        if st.audit.len() > super::AUDIT_KEEP {
            st.audit.remove(0);
        }
        Box::pin(async { Ok(()) })
    }
    fn audit_recent(&self, limit: usize) -> BoxFuture<'_, Vec<Vec<u8>>> {
        let recent = self
            .state()
            .audit
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect();
        Box::pin(async move { Ok(recent) })
    }
    fn nodes(&self) -> BoxFuture<'_, Vec<NodeRecord>> {
        let nodes = self.state().nodes.clone();
        Box::pin(async move { Ok(nodes) })
    }
    fn leader(&self) -> BoxFuture<'_, Option<LeaderInfo>> {
        let leader = self.state().leader.clone();
        Box::pin(async move { Ok(leader) })
    }
    fn is_leader(&self) -> bool {
        self.state().leader.as_ref() == Some(&self.me)
    }
    fn me(&self) -> &LeaderInfo {
        &self.me
    }
}

/// The election in memory, shared by the [`MemoryElector`]s of several coordinators
/// in one test: leases, and candidates in campaign order; the first candidate whose
/// lease lives leads, as with etcd's election API.
#[derive(Default)]
pub struct MemoryElection {
    state: Mutex<Election>,
    changed: tokio::sync::Notify,
}

#[derive(Default)]
struct Election {
    revision: i64,
    next_lease: i64,
    /// Leases alive now.
    leases: std::collections::BTreeSet<i64>,
    /// Campaigns in the order they started: (leadership they would hold, who).
    candidates: Vec<(Leadership, LeaderInfo)>,
}

impl Election {
    fn leader(&self) -> Option<&(Leadership, LeaderInfo)> {
        self.candidates.first()
    }
}

impl MemoryElection {
    pub fn new() -> std::sync::Arc<MemoryElection> {
        std::sync::Arc::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Election> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends `lease` as if it expired (its holder stopped renewing, or etcd lost it):
    /// its campaign is withdrawn and its keeper fails.
    pub fn expire(&self, lease: i64) {
        let mut s = self.state();
        s.leases.remove(&lease);
        s.candidates.retain(|(l, _)| l.lease != lease);
        drop(s);
        self.changed.notify_waiters();
    }

    /// Who leads now.
    pub fn leader(&self) -> Option<LeaderInfo> {
        self.state().leader().map(|(_, who)| who.clone())
    }

    /// Waits until `done` holds of the election (checked at once and after every change).
    async fn until<T>(&self, mut done: impl FnMut(&Election) -> Option<T>) -> T {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(v) = done(&self.state()) {
                return v;
            }
            changed.await;
        }
    }

    /// An elector over this election.
    pub fn elector(self: &std::sync::Arc<Self>) -> MemoryElector {
        MemoryElector(self.clone())
    }
}

/// [`Elector`] over a [`MemoryElection`].
pub struct MemoryElector(std::sync::Arc<MemoryElection>);

impl Elector for MemoryElector {
    fn grant(&self, _ttl: Duration) -> BoxFuture<'_, i64> {
        Box::pin(async move {
            let mut s = self.0.state();
            s.next_lease += 1;
            let lease = s.next_lease;
            s.leases.insert(lease);
            Ok(lease)
        })
    }

    fn revoke(&self, lease: i64) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(async move {
            self.0.expire(lease);
            true
        })
    }

    fn keep_alive(&self, lease: i64, _ttl: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.0
                .until(|s| (!s.leases.contains(&lease)).then_some(()))
                .await;
            Err(Error::new(
                ErrorKind::Unavailable,
                format!("lease {lease} expired"),
            ))
        })
    }

    fn campaign(&self, me: &LeaderInfo, lease: i64) -> BoxFuture<'_, Leadership> {
        let me = me.clone();
        Box::pin(async move {
            let mine = {
                let mut s = self.0.state();
                if !s.leases.contains(&lease) {
                    return Err(Error::new(
                        ErrorKind::Unavailable,
                        "campaign on a dead lease",
                    ));
                }
                s.revision += 1;
                let mine = Leadership {
                    key: format!("{}/{lease:x}", strait_node::schema::ELECTION_NAME).into_bytes(),
                    create_revision: s.revision,
                    lease,
                };
                s.candidates.push((mine.clone(), me));
                mine
            };
            self.0.changed.notify_waiters();
            Ok(self
                .0
                .until(|s| {
                    s.leader()
                        .filter(|(l, _)| *l == mine)
                        .map(|(l, _)| l.clone())
                })
                .await)
        })
    }

    fn observe(&self, mine: &Leadership) -> BoxFuture<'_, ()> {
        let mine = mine.clone();
        Box::pin(async move {
            self.0
                .until(|s| (s.leader().map(|(l, _)| l) != Some(&mine)).then_some(()))
                .await;
            Err(Error::new(
                ErrorKind::Unavailable,
                "another coordinator leads",
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use strait_node::schema::{tenant_key, TenantDoc};

    fn info(id: &str) -> LeaderInfo {
        LeaderInfo {
            id: id.into(),
            region: "r1".into(),
            url: format!("http://{id}"),
        }
    }

    fn tenant(name: &str) -> Vec<u8> {
        serde_json::to_vec(&TenantDoc {
            name: name.into(),
            limits: Default::default(),
            allowed_regions: None,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn commits_are_guarded_by_revision_and_leadership() {
        let store = MemoryStore::leading(info("c1"));
        let base = store.load().await.unwrap().revision;
        let rev = store
            .commit(base, vec![(tenant_key("a"), tenant("a"))], vec![])
            .await
            .unwrap();
        assert_eq!(rev, base + 1);
        let c = store.load().await.unwrap();
        assert_eq!((c.revision, c.tenants.len()), (rev, 1));

        // A commit validated against the older snapshot must not land.
        let e = store
            .commit(base, vec![(tenant_key("b"), tenant("b"))], vec![])
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Conflict);
        assert_eq!(store.revision(), rev);

        // Deleting at the current revision works; the key is gone from the snapshot.
        store
            .commit(rev, vec![], vec![tenant_key("a")])
            .await
            .unwrap();
        assert!(store.load().await.unwrap().tenants.is_empty());

        // Another leader: refused, naming it, nothing written.
        store.set_leader(Some(info("c2")));
        assert!(!store.is_leader());
        let before = store.revision();
        let e = store
            .commit(before, vec![(tenant_key("c"), tenant("c"))], vec![])
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotLeader);
        assert_eq!(e.leader.map(|l| l.id), Some("c2".to_string()));
        assert_eq!(store.revision(), before);
    }

    #[tokio::test]
    async fn an_unparseable_document_fails_the_load() {
        let store = MemoryStore::leading(info("c1"));
        store.put_raw(&tenant_key("a"), b"{not json");
        let e = store.load().await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Internal);
        assert!(e.message.contains("invalid"), "{}", e.message);
    }
}
