//! Live config: every document under `/strait/config/` is parsed and checked as one
//! unit, turned into a new [`Snapshot`] (client keys, upstream pools, drain flags),
//! and swapped in with one atomic store. A change that does not validate is
//! rejected: the previous snapshot stays, and the rejection is logged and counted.
//!
//! Merging with the node's own config: client keys and upstream keys from the file
//! and the environment stay in force; the cluster's keys are added to them (a client
//! key hash present in both takes the cluster's document). Upstream keys of the
//! cluster's `default` pool join the node's own keys in the default pool.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::HeaderValue;

use super::{snapshot_file, ClusterMetrics};
use crate::auth::{Authenticator, KeyPolicy, Principal};
use crate::config::{Config, KeyMode, UpstreamKey};
use crate::route::{KeyPool, PoolSettings};
use crate::schema::{ClusterConfig, UpstreamPoolDoc, DEFAULT_POOL};
use crate::secret::Kek;
use crate::state::{Shared, Snapshot};

/// Where a config came from, for logs and readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Etcd,
    Disk,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Etcd => "etcd",
            Source::Disk => "disk",
        })
    }
}

/// The limits the cluster config gives each live client key and its tenant.
pub fn cluster_limits(cc: &ClusterConfig) -> Vec<crate::limits::ClusterKeyLimits> {
    let spec = |l: &crate::schema::LimitsDoc| crate::limit_spec::LimitSpec {
        rpm: l.rpm,
        itpm: l.itpm,
        otpm: l.otpm,
        concurrency: l.concurrency,
        daily_tokens: l.daily_tokens,
    };
    cc.client_keys
        .values()
        .filter(|k| !k.revoked)
        .map(|k| crate::limits::ClusterKeyLimits {
            name: k.name.clone(),
            limits: spec(&k.limits),
            tenant: k
                .tenant
                .as_ref()
                .and_then(|t| cc.tenants.get(t))
                .map(|t| (t.name.clone(), spec(&t.limits))),
        })
        .collect()
}

/// Applies cluster config to a running node.
pub struct Applier {
    pub shared: Arc<Shared>,
    pub metrics: ClusterMetrics,
    pub kek: Option<Kek>,
    pub region: String,
    pub node_id: String,
    pub state_dir: PathBuf,
}

impl Applier {
    /// Validates `kvs` (everything under the config prefix at `revision`) and swaps
    /// it in. Returns false, keeping the previous snapshot, when it does not validate.
    pub fn apply(&self, kvs: &BTreeMap<String, Vec<u8>>, revision: i64, source: Source) -> bool {
        let built = ClusterConfig::from_kvs(
            revision,
            kvs.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
        )
        .and_then(|cc| {
            let prev = self.shared.snapshot.load();
            let snap = build_snapshot(&self.shared.config, &cc, self.kek.as_ref(), Some(&prev))?;
            Ok((cc, snap))
        });
        let (cc, snap) = match built {
            Ok(v) => v,
            Err(reason) => {
                let reason = redact_long_strings(&reason);
                self.metrics.config_rejected.inc();
                self.shared
                    .health
                    .cluster
                    .rejected_revision
                    .store(revision, Ordering::Relaxed);
                tracing::error!(revision, source = %source, %reason, "cluster config rejected; keeping the previous snapshot");
                return false;
            }
        };
        let (client_keys, upstream_keys) = (snap.auth.key_count(), snap.upstream_key_count());
        // Limits first: a key must not be usable before its limits are in force.
        if let Err(e) = self
            .shared
            .limiter
            .apply_cluster_limits(cluster_limits(&cc))
        {
            tracing::error!(
                revision,
                "cluster limits could not be applied; keeping the previous limits: {e}"
            );
        }
        self.shared.snapshot.store(Arc::new(snap));

        let status = &self.shared.health.cluster;
        status.revision.store(revision, Ordering::Relaxed);
        status
            .from_disk
            .store(source == Source::Disk, Ordering::Relaxed);
        status.rejected_revision.store(0, Ordering::Relaxed);
        self.metrics.config_revision.set(revision);
        self.metrics.config_reloads.inc();

        let draining = cc.regions.get(&self.region).is_some_and(|r| r.draining)
            || cc
                .drains
                .get(&(self.region.clone(), self.node_id.clone()))
                .is_some_and(|d| d.draining);
        if status.draining.swap(draining, Ordering::Relaxed) != draining {
            if draining {
                tracing::warn!(region = %self.region, "drained by the cluster config: /readyz fails, requests are still served");
            } else {
                tracing::info!(region = %self.region, "drain lifted by the cluster config");
            }
            status.record_changed.notify_one();
        }
        tracing::info!(revision, source = %source, client_keys, upstream_keys, draining, "cluster config applied");

        if source == Source::Etcd {
            if let Err(e) = snapshot_file::write(&self.state_dir, revision, kvs) {
                tracing::warn!(dir = %self.state_dir.display(), "cannot write the config snapshot to disk: {e}");
            }
        }
        true
    }

    /// Serves the on-disk snapshot, if there is a valid one. Called once at start.
    pub fn load_from_disk(&self) {
        match snapshot_file::read(&self.state_dir) {
            Ok(Some(doc)) => {
                let revision = doc.revision;
                let written = doc.written_at.clone();
                if self.apply(&doc.into_kvs(), revision, Source::Disk) {
                    tracing::info!(revision, written_at = %written, "serving the config snapshot from disk until etcd answers");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("ignoring the on-disk config snapshot: {e}"),
        }
    }
}

/// Builds the serving snapshot from the node's own config and the cluster config.
/// `prev` carries cooldowns of unchanged upstream keys over. Errors name the
/// document and never contain a key.
pub fn build_snapshot(
    base: &Config,
    cc: &ClusterConfig,
    kek: Option<&Kek>,
    prev: Option<&Snapshot>,
) -> Result<Snapshot, String> {
    let settings = PoolSettings::from_config(&base.upstream);

    let mut default: Vec<UpstreamKey> = base.upstream.keys.clone();
    if let Some(p) = cc.pools.get(DEFAULT_POOL) {
        for key in open_pool(p, kek)? {
            if !default.iter().any(|d| d.secret == key.secret) {
                default.push(key);
            }
        }
    }
    let default_pool = KeyPool::new(&default, settings.clone(), prev.map(|s| &s.pool));

    let mut named_pools = Vec::new();
    let mut pool_index: HashMap<&str, usize> = HashMap::new();
    for (name, doc) in &cc.pools {
        if name == DEFAULT_POOL {
            continue;
        }
        let keys = open_pool(doc, kek)?;
        let prev_pool = prev.and_then(|s| {
            s.named_pools
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, p)| p)
        });
        named_pools.push((
            name.clone(),
            KeyPool::new(&keys, settings.clone(), prev_pool),
        ));
        pool_index.insert(name.as_str(), named_pools.len());
    }

    let mut by_hash = HashMap::new();
    for k in &base.auth.client_keys {
        by_hash.insert(k.sha256, Principal::plain(Arc::from(k.name.as_str())));
    }
    for (id, k) in &cc.client_keys {
        if k.revoked {
            continue;
        }
        let mut hash = [0u8; 32];
        hex::decode_to_slice(k.sha256.trim(), &mut hash)
            .map_err(|_| format!("client key {id}: bad sha256"))?;
        let tenant = k.tenant.as_ref().and_then(|t| cc.tenants.get(t));
        let allowed_regions = k.effective_regions(tenant);
        let pool = match k.pool.as_deref() {
            None | Some(DEFAULT_POOL) => 0,
            Some(p) => *pool_index
                .get(p)
                .ok_or_else(|| format!("client key {id}: unknown upstream pool {p:?}"))?,
        };
        let pool_empty = if pool == 0 {
            default_pool.is_empty()
        } else {
            named_pools[pool - 1].1.is_empty()
        };
        if pool_empty {
            return Err(format!(
                "client key {id}: its upstream pool {:?} has no keys, so its requests could not be served",
                k.pool.as_deref().unwrap_or(DEFAULT_POOL)
            ));
        }
        let policy = KeyPolicy {
            limits: k.limits.clone(),
            tenant_limits: tenant.map(|t| t.limits.clone()).unwrap_or_default(),
            allowed_regions,
        };
        by_hash.insert(
            hash,
            Principal {
                name: Arc::from(k.name.as_str()),
                tenant: k.tenant.as_deref().map(Arc::from),
                policy: Some(Arc::new(policy)),
                pool,
            },
        );
    }

    let any_upstream = !default_pool.is_empty() || named_pools.iter().any(|(_, p)| !p.is_empty());
    let mode = if !any_upstream {
        if !by_hash.is_empty() {
            return Err(
                "client keys are configured but no upstream keys: a client's Strait key would be \
                        forwarded to Anthropic"
                    .into(),
            );
        }
        KeyMode::Passthrough
    } else if by_hash.is_empty() && base.auth.allow_anonymous {
        if default_pool.is_empty() {
            return Err("anonymous mode needs keys in the default upstream pool".into());
        }
        KeyMode::Anonymous
    } else {
        // Upstream keys and no client keys without --allow-anonymous: every request
        // gets 401 until client keys arrive, rather than an open relay.
        KeyMode::Managed
    };

    Ok(Snapshot {
        auth: Authenticator::from_keys(mode, by_hash),
        pool: default_pool,
        named_pools,
        revision: cc.revision,
    })
}

/// Parse errors can quote a value ("invalid type: string ..."); an operator who
/// pasted a key into the wrong field must not find it in the logs. Names and ids
/// are short, keys are long: quoted strings over 32 characters are elided.
fn redact_long_strings(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut parts = text.split('"');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    for (i, part) in parts.enumerate() {
        out.push('"');
        // Odd segments (i even here) are inside quotes.
        if i % 2 == 0 && part.chars().count() > 32 {
            out.push_str("<redacted>");
        } else {
            out.push_str(part);
        }
    }
    out
}

fn open_pool(doc: &UpstreamPoolDoc, kek: Option<&Kek>) -> Result<Vec<UpstreamKey>, String> {
    if doc.keys.is_empty() {
        return Ok(Vec::new());
    }
    let kek = kek.ok_or_else(|| {
        format!("upstream pool {}: keys are sealed but this node has no KEK (STRAIT_KEK or cluster.kek_file)", doc.name)
    })?;
    doc.keys
        .iter()
        .map(|k| {
            let secret = kek
                .open(k)
                .map_err(|e| format!("upstream pool {}: {e}", doc.name))?;
            if HeaderValue::from_str(secret.expose()).is_err() {
                return Err(format!(
                    "upstream pool {}: key {} has characters not allowed in a header",
                    doc.name, k.id
                ));
            }
            let label = if k.label.is_empty() {
                k.id.clone()
            } else {
                k.label.clone()
            };
            Ok(UpstreamKey {
                label,
                org: k.org.clone(),
                secret,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{hash_key, RawConfig, Secret};
    use crate::meta::RouteKind;
    use crate::route::Scope;
    use crate::schema::{client_key_key, pool_key, tenant_key, ClientKeyDoc, TenantDoc};

    fn kvs(kek: &Kek) -> BTreeMap<String, Vec<u8>> {
        let mut m = BTreeMap::new();
        let pool = UpstreamPoolDoc {
            name: "default".into(),
            keys: vec![kek.seal("u1", "prod-1", "sk-ant-sealed")],
        };
        m.insert(pool_key("default"), serde_json::to_vec(&pool).unwrap());
        let tenant = TenantDoc {
            name: "acme".into(),
            limits: Default::default(),
            allowed_regions: Some(vec!["eu".into(), "us".into()]),
        };
        m.insert(tenant_key("acme"), serde_json::to_vec(&tenant).unwrap());
        let key = ClientKeyDoc {
            id: "ck1".into(),
            name: "acme-prod".into(),
            tenant: Some("acme".into()),
            sha256: hex::encode(hash_key("client-secret")),
            created_at: "2026-01-01T00:00:00Z".into(),
            revoked: false,
            limits: Default::default(),
            allowed_regions: Some(vec!["eu".into(), "cn".into()]),
            pool: None,
        };
        m.insert(client_key_key("ck1"), serde_json::to_vec(&key).unwrap());
        m
    }

    #[test]
    fn a_key_on_a_named_pool_uses_it_and_cooldowns_carry_over() {
        let kek = Kek::parse(&"ab".repeat(32)).unwrap();
        let mut m = kvs(&kek);
        let mut sealed = kek.seal("b1", "batch-1", "sk-ant-batch");
        sealed.org = Some("acme-org".into());
        let batch = UpstreamPoolDoc {
            name: "batch".into(),
            keys: vec![sealed],
        };
        m.insert(pool_key("batch"), serde_json::to_vec(&batch).unwrap());
        let mut key: ClientKeyDoc = serde_json::from_slice(&m[&client_key_key("ck1")]).unwrap();
        key.pool = Some("batch".into());
        m.insert(client_key_key("ck1"), serde_json::to_vec(&key).unwrap());
        let cc =
            ClusterConfig::from_kvs(8, m.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).unwrap();
        let base = RawConfig::default()
            .validate(vec![Secret::new("sk-ant-env")], vec![Secret::new("local")])
            .unwrap();
        let snap = build_snapshot(&base, &cc, Some(&kek), None).unwrap();
        let key = |k: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("x-api-key", k.parse().unwrap());
            crate::head::HeaderFields::Map(h)
        };
        let p = snap.auth.authenticate(&key("client-secret")).unwrap();
        let pool = snap.pool_for(&p);
        let scope = Scope::new(RouteKind::Messages, Some("claude-sonnet-4-5"));
        assert_eq!(pool.label(pool.pick(&scope, None).unwrap()), "batch-1");
        assert_eq!(pool.org_label(pool.pick(&scope, None).unwrap()), "acme-org");
        assert_eq!(
            snap.pool.len(),
            2,
            "env key and the sealed default key share the default pool"
        );
        assert_eq!(
            snap.auth.authenticate(&key("local")).unwrap().pool,
            0,
            "file and env client keys still work"
        );

        let k = pool.pick(&scope, None).unwrap();
        let mut rh = http::HeaderMap::new();
        rh.insert("retry-after", "60".parse().unwrap());
        pool.observe(
            k,
            &scope,
            http::StatusCode::TOO_MANY_REQUESTS,
            &crate::head::HeaderFields::Map(rh),
            None,
        );
        let next = build_snapshot(&base, &cc, Some(&kek), Some(&snap)).unwrap();
        let census = next.named_pools[0].1.census();
        assert_eq!(
            (census.ready, census.cooling),
            (0, 1),
            "the cooling scope still cools after a swap"
        );
        assert!(census.cooled_scopes.contains("messages/sonnet"));
    }

    #[test]
    fn long_quoted_values_are_redacted_from_rejections() {
        let r = redact_long_strings(
            r#"k: invalid type: string "sk-ant-api03-0123456789abcdefghijklmnop", expected u64 at "x""#,
        );
        assert!(!r.contains("sk-ant"), "{r}");
        assert!(r.contains("<redacted>") && r.contains("\"x\""), "{r}");
    }

    #[test]
    fn builds_principals_with_tenant_and_regions() {
        let kek = Kek::parse(&"ab".repeat(32)).unwrap();
        let m = kvs(&kek);
        let cc =
            ClusterConfig::from_kvs(7, m.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).unwrap();
        let base = RawConfig::default().validate(vec![], vec![]).unwrap();
        let snap = build_snapshot(&base, &cc, Some(&kek), None).unwrap();
        assert_eq!(snap.auth.mode(), KeyMode::Managed);
        let mut h = http::HeaderMap::new();
        h.insert("x-api-key", "client-secret".parse().unwrap());
        let p = snap
            .auth
            .authenticate(&crate::head::HeaderFields::Map(h))
            .unwrap();
        assert_eq!(p.tenant.as_deref(), Some("acme"));
        assert!(p.region_allowed("eu"));
        assert!(
            !p.region_allowed("us"),
            "the key allows eu and cn, the tenant eu and us"
        );
        assert!(!p.region_allowed("cn"));
        assert_eq!(snap.pool.len(), 1);
        assert_eq!(snap.revision, 7);

        let Err(e) = build_snapshot(&base, &cc, None, None) else {
            panic!("no KEK must fail")
        };
        assert!(e.contains("no KEK"), "{e}");
        let other = Kek::parse(&"cd".repeat(32)).unwrap();
        let Err(e) = build_snapshot(&base, &cc, Some(&other), None) else {
            panic!("wrong KEK must fail")
        };
        assert!(!e.contains("sk-ant"), "{e}");
    }
}
