//! The coordinator's state shared by every request, and the one way to change the
//! cluster config: [`App::mutate`] loads the snapshot, applies a change, checks the
//! would-be snapshot exactly as a node will (`ClusterConfig::from_kvs`, then the
//! node's own `build_snapshot`), and commits only the documents that changed,
//! guarded by leader key and revision.

use std::collections::BTreeMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use strait_node::cluster::config_watch::build_snapshot;
use strait_node::schema::{self, ClusterConfig};
use strait_node::secret::Kek;
use subtle::ConstantTimeEq;

use crate::error::{Error, ErrorKind, Result};
use crate::store::Store;

/// How often a write is retried when another write moved the config under it.
const COMMIT_ATTEMPTS: usize = 5;

pub struct App {
    pub store: Arc<dyn Store>,
    pub kek: Kek,
    /// SHA-256 of the admin token: comparing fixed-size digests in constant time
    /// leaks neither the token's bytes nor its length.
    token_digest: [u8; 32],
    /// Serialises this coordinator's own writes so they do not conflict with each other.
    write_lock: tokio::sync::Mutex<()>,
    /// A node with no keys of its own (the strictest case): a snapshot it would
    /// reject is never written, since a node that rejects one keeps serving the
    /// previous config and misses every later change, revocations included.
    node_base: strait_node::config::Config,
}

impl App {
    pub fn new(store: Arc<dyn Store>, kek: Kek, admin_token: &str) -> App {
        let node_base = strait_node::config::RawConfig::default()
            .validate(Vec::new(), Vec::new())
            .expect("the node's default config is valid");
        App {
            store,
            kek,
            token_digest: Sha256::digest(admin_token.as_bytes()).into(),
            write_lock: tokio::sync::Mutex::new(()),
            node_base,
        }
    }

    /// Whether `presented` is the admin token (constant time).
    pub fn token_matches(&self, presented: &str) -> bool {
        let d: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        d.ct_eq(&self.token_digest).into()
    }

    /// Applies `change` to the current config and commits the result if it is a valid
    /// snapshot. `change` may run more than once (after a conflicting write), so it
    /// must not draw fresh random values itself. Returns its output and the revision.
    pub async fn mutate<T>(
        &self,
        mut change: impl FnMut(&mut ClusterConfig) -> Result<T>,
    ) -> Result<(T, i64)> {
        if !self.store.is_leader() {
            return Err(Error::not_leader(self.store.leader().await.ok().flatten()));
        }
        let _serial = self.write_lock.lock().await;
        for _ in 0..COMMIT_ATTEMPTS {
            let before = self.store.load().await?;
            let mut after = before.clone();
            let out = change(&mut after)?;
            let old = to_kvs(&before)?;
            let new = to_kvs(&after)?;
            ClusterConfig::from_kvs(
                before.revision,
                new.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
            )
            .and_then(|cc| build_snapshot(&self.node_base, &cc, Some(&self.kek), None).map(|_| ()))
            .map_err(|e| {
                Error::bad_request(format!(
                    "rejected, nodes would refuse this cluster config: {e}"
                ))
            })?;
            let puts: Vec<(String, Vec<u8>)> = new
                .iter()
                .filter(|(k, v)| old.get(*k) != Some(*v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let deletes: Vec<String> = old
                .keys()
                .filter(|k| !new.contains_key(*k))
                .cloned()
                .collect();
            if puts.is_empty() && deletes.is_empty() {
                return Ok((out, before.revision));
            }
            match self.store.commit(before.revision, puts, deletes).await {
                Ok(rev) => return Ok((out, rev)),
                Err(e) if e.kind == ErrorKind::Conflict => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::new(
            ErrorKind::Conflict,
            "the config kept changing during this write; retry",
        ))
    }
}

/// The etcd keys and JSON values a snapshot is stored as (the inverse of `from_kvs`).
pub fn to_kvs(c: &ClusterConfig) -> Result<BTreeMap<String, Vec<u8>>> {
    fn json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
        serde_json::to_vec(v)
            .map_err(|e| Error::internal(format!("serialising a config document: {e}")))
    }
    let mut m = BTreeMap::new();
    for (name, d) in &c.tenants {
        m.insert(schema::tenant_key(name), json(d)?);
    }
    for (id, d) in &c.client_keys {
        m.insert(schema::client_key_key(id), json(d)?);
    }
    for (name, d) in &c.pools {
        m.insert(schema::pool_key(name), json(d)?);
    }
    for (region, d) in &c.regions {
        m.insert(schema::region_key(region), json(d)?);
    }
    for ((region, node), d) in &c.drains {
        m.insert(schema::drain_key(region, node), json(d)?);
    }
    Ok(m)
}

/// An app over an empty in-memory store in which it leads; the store, to steer it.
#[cfg(test)]
pub(crate) fn app_for_tests() -> (Arc<App>, Arc<crate::store::MemoryStore>) {
    let store = Arc::new(crate::store::MemoryStore::leading(
        crate::leader::LeaderInfo {
            id: "c1".into(),
            region: "r1".into(),
            url: "http://c1".into(),
        },
    ));
    let kek = Kek::parse(&"ab".repeat(32)).expect("a valid test KEK");
    let app = App::new(store.clone(), kek, "0123456789abcdef");
    (Arc::new(app), store)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leader::LeaderInfo;
    use schema::{ClientKeyDoc, TenantDoc};

    fn tenant(name: &str) -> TenantDoc {
        TenantDoc {
            name: name.into(),
            limits: Default::default(),
            allowed_regions: None,
        }
    }

    #[tokio::test]
    async fn a_change_nodes_would_refuse_is_never_committed() {
        let (app, store) = app_for_tests();
        let ((), rev) = app
            .mutate(|c| {
                c.tenants.insert("t1".into(), tenant("t1"));
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(rev, store.revision());

        // A client key naming a tenant that does not exist: the node's own check refuses.
        let e = app
            .mutate(|c| {
                c.client_keys.insert(
                    "ck_1".into(),
                    ClientKeyDoc {
                        id: "ck_1".into(),
                        name: "k".into(),
                        tenant: Some("nobody".into()),
                        sha256: "00".repeat(32),
                        created_at: String::new(),
                        revoked: false,
                        limits: Default::default(),
                        allowed_regions: None,
                        pool: None,
                    },
                );
                Ok(())
            })
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(e.message.contains("nodes would refuse"), "{}", e.message);
        assert_eq!(store.revision(), rev, "nothing was written");

        // A change that changes nothing is not written either.
        let ((), same) = app.mutate(|_| Ok(())).await.unwrap();
        assert_eq!((same, store.revision()), (rev, rev));

        // Deleting a document deletes its key.
        let (gone, _) = app.mutate(|c| Ok(c.tenants.remove("t1"))).await.unwrap();
        assert_eq!(gone.map(|t| t.name), Some("t1".to_string()));
        assert!(store.load().await.unwrap().tenants.is_empty());
    }

    #[tokio::test]
    async fn a_write_whose_snapshot_moved_is_redone_on_the_new_one() {
        let (app, store) = app_for_tests();
        let other = serde_json::to_vec(&tenant("other")).unwrap();
        let mut attempts = 0;
        let ((), rev) = app
            .mutate(|c| {
                attempts += 1;
                if attempts == 1 {
                    // Another writer lands between this load and this commit.
                    store.put_raw(&schema::tenant_key("other"), &other);
                }
                c.tenants.insert("mine".into(), tenant("mine"));
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(attempts, 2);
        let c = store.load().await.unwrap();
        assert_eq!(c.revision, rev);
        assert!(c.tenants.contains_key("mine") && c.tenants.contains_key("other"));

        // A config that moves under every attempt: given up after COMMIT_ATTEMPTS.
        let mut attempts = 0;
        let e = app
            .mutate(|c| {
                attempts += 1;
                store.put_raw(&schema::tenant_key("other"), &other);
                c.tenants
                    .insert(format!("t{attempts}"), tenant(&format!("t{attempts}")));
                Ok(())
            })
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Conflict);
        assert!(e.message.contains("kept changing"), "{}", e.message);
        assert_eq!(attempts, COMMIT_ATTEMPTS);
        assert!(!store.load().await.unwrap().tenants.contains_key("t1"));
    }

    #[tokio::test]
    async fn a_standby_refuses_writes_naming_the_leader() {
        let (app, store) = app_for_tests();
        let leader = LeaderInfo {
            id: "c2".into(),
            region: "r2".into(),
            url: "http://c2".into(),
        };
        store.set_leader(Some(leader.clone()));
        let mut ran = false;
        let e = app
            .mutate(|_| {
                ran = true;
                Ok(())
            })
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotLeader);
        assert_eq!(e.leader, Some(leader));
        assert!(e.message.contains("http://c2"), "{}", e.message);
        assert!(!ran, "a standby does not even load the config");

        // No leader at all (between terms): refused too, telling the client to retry.
        store.set_leader(None);
        let e = app.mutate(|_| Ok(())).await.unwrap_err();
        assert_eq!((e.kind, e.leader), (ErrorKind::NotLeader, None));
    }

    #[test]
    fn the_admin_token_is_compared_whole() {
        let (app, _) = app_for_tests();
        assert!(app.token_matches("0123456789abcdef"));
        assert!(!app.token_matches("0123456789abcde"));
        assert!(!app.token_matches(""));
    }
}
