//! The cluster's shared vocabulary: etcd key layout, the JSON documents stored under
//! it, and the envelope encryption of upstream keys. Used by nodes and the coordinator.
//!
//! Key layout (all JSON values):
//! - `/strait/nodes/<region>/<node-id>`: [`NodeRecord`], under the node's lease.
//! - `/strait/config/tenants/<tenant>`: [`TenantDoc`].
//! - `/strait/config/client_keys/<key-id>`: [`ClientKeyDoc`] (hash only, never the key).
//! - `/strait/config/upstream_pools/<pool>`: [`UpstreamPoolDoc`] (keys sealed with the KEK).
//! - `/strait/config/regions/<region>`: [`RegionDoc`] (region-wide drain).
//! - `/strait/config/drain/<region>/<node-id>`: [`DrainDoc`] (drain one node).
//! - `/strait/election/coordinator`: etcd election for the writing coordinator.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const ROOT: &str = "/strait/";
pub const NODES_PREFIX: &str = "/strait/nodes/";
pub const CONFIG_PREFIX: &str = "/strait/config/";
pub const ELECTION_NAME: &str = "/strait/election/coordinator";
/// The pool a node uses when a client key names none.
pub const DEFAULT_POOL: &str = "default";

pub fn node_key(region: &str, node_id: &str) -> String {
    format!("{NODES_PREFIX}{region}/{node_id}")
}
pub fn tenant_key(name: &str) -> String {
    format!("{CONFIG_PREFIX}tenants/{name}")
}
pub fn client_key_key(id: &str) -> String {
    format!("{CONFIG_PREFIX}client_keys/{id}")
}
pub fn pool_key(name: &str) -> String {
    format!("{CONFIG_PREFIX}upstream_pools/{name}")
}
pub fn region_key(region: &str) -> String {
    format!("{CONFIG_PREFIX}regions/{region}")
}
pub fn drain_key(region: &str, node_id: &str) -> String {
    format!("{CONFIG_PREFIX}drain/{region}/{node_id}")
}

/// Names used in keys: lowercase letters, digits, `-` and `_`, 1 to 64 characters.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// A node's registration, refreshed while it lives and gone when its lease expires.
///
/// Rewritten on every lease refresh and, at once, whenever `state`, `ready` or
/// `path.state` changes (within about a second), so DNS and peers can act on it.
/// Fields added after the first release carry `#[serde(default)]`: a record written
/// by an older node still parses, and an older reader ignores the new fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    pub region: String,
    pub public_addr: String,
    pub admin_addr: String,
    pub version: String,
    /// RFC 3339.
    pub started_at: String,
    pub state: NodeState,
    pub path: PathHealth,
    /// The node's `/readyz` status: `pass`, `warn` (still serving: DNS keeps it) or
    /// `fail` (draining, or the direct upstream path's circuit is open). Absent in
    /// records of nodes older than the field: read as `pass`.
    #[serde(default)]
    pub ready: Ready,
    /// Whether `public_addr` speaks TLS: peers relay to it over TLS (mTLS when they
    /// have certificates of their own), else over plain HTTP. Absent in records of
    /// older nodes: read as plain HTTP.
    #[serde(default)]
    pub tls: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Serving,
    Draining,
}

/// A `/readyz` status, as in the IETF health+json draft: `pass` | `warn` | `fail`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Ready {
    #[default]
    Pass,
    Warn,
    Fail,
}

impl Ready {
    pub fn as_str(self) -> &'static str {
        match self {
            Ready::Pass => "pass",
            Ready::Warn => "warn",
            Ready::Fail => "fail",
        }
    }
}

/// The circuit breaker over the node's direct upstream path (docs/failover.md):
/// `closed` (in use), `open` (failed `health.failure_threshold` times in a row; a
/// probe must succeed before it is trusted again), `half_open` (a probe succeeded
/// after it opened; one more success closes it, a failure opens it again).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathState {
    #[default]
    Closed,
    HalfOpen,
    Open,
}

impl PathState {
    pub fn as_str(self) -> &'static str {
        match self {
            PathState::Closed => "closed",
            PathState::HalfOpen => "half_open",
            PathState::Open => "open",
        }
    }
}

/// The node's recent view of its upstream path.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PathHealth {
    /// Mean upstream time to first byte (milliseconds) over requests since the
    /// previous record; the last known value if none was made since.
    pub ttfb_ms: Option<f64>,
    /// Share of upstream attempts and probes since the previous record that failed
    /// at the transport (0.0 to 1.0). Answers of any status are not failures.
    pub error_rate: f64,
    /// Transport failures in a row (requests and probes), reset by any answer.
    pub consecutive_failures: u32,
    /// pass | warn | fail: the `upstream:path` check of `/readyz`.
    pub status: String,
    /// The path's circuit breaker: `closed`, `half_open` or `open`. Absent in records
    /// of older nodes: read as `closed`.
    #[serde(default)]
    pub state: PathState,
    /// Time to first byte of requests as an exponentially weighted moving average
    /// (milliseconds, weight 0.2 per response); `None` before the first response.
    #[serde(default)]
    pub ttfb_ewma_ms: Option<f64>,
    /// Median time to first byte over the last 64 responses (milliseconds).
    #[serde(default)]
    pub ttfb_p50_ms: Option<f64>,
    /// 99th percentile time to first byte over the last 64 responses (milliseconds:
    /// with 64 samples, the slowest but one).
    #[serde(default)]
    pub ttfb_p99_ms: Option<f64>,
    /// Round trip of the active probes (`GET /v1/models`) as a moving average
    /// (milliseconds, weight 0.2): the path's latency without any model's work.
    #[serde(default)]
    pub probe_rtt_ms: Option<f64>,
}

/// Limits for a key or tenant; absent fields are unlimited. Same shape as the
/// `limits = { ... }` tables of the node's config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub itpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_tokens: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantDoc {
    pub name: String,
    #[serde(default)]
    pub limits: LimitsDoc,
    /// Regions whose nodes may serve this tenant; `None` = every region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_regions: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientKeyDoc {
    /// Stable id (also the etcd key suffix), e.g. `ck_3f9a...`; shown to operators.
    pub id: String,
    /// Human name for logs and metrics.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Hex SHA-256 of the key. The key itself is shown once at creation and never stored.
    pub sha256: String,
    pub created_at: String,
    #[serde(default)]
    pub revoked: bool,
    #[serde(default)]
    pub limits: LimitsDoc,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_regions: Option<Vec<String>>,
    /// Upstream pool to use; default [`DEFAULT_POOL`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

impl ClientKeyDoc {
    /// Regions whose nodes may serve this key: its own list and its tenant's list
    /// together (a region must be on both); `None` when neither pins it. Nodes build
    /// their policy with it, and the coordinator's evacuation checks residency with it.
    pub fn effective_regions(&self, tenant: Option<&TenantDoc>) -> Option<Vec<String>> {
        match (
            &self.allowed_regions,
            tenant.and_then(|t| t.allowed_regions.as_ref()),
        ) {
            (Some(a), Some(b)) => Some(a.iter().filter(|r| b.contains(r)).cloned().collect()),
            (Some(a), None) => Some(a.clone()),
            (None, Some(b)) => Some(b.clone()),
            (None, None) => None,
        }
    }
}

/// An upstream key sealed with the key-encryption key (XChaCha20-Poly1305; the
/// key id is the associated data, so a ciphertext cannot be moved to another id).
///
/// Unknown fields are tolerated (not denied as elsewhere): only the coordinator writes
/// these documents, and during a rolling upgrade a newer coordinator may add a field
/// that nodes of the previous version must still load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedKey {
    pub id: String,
    /// Operator-facing label ("prod-1"); never the key.
    pub label: String,
    /// The Anthropic organisation the key belongs to. Keys of one organisation share
    /// its rate limits and billing, so a 429 or a billing error on one predicts the
    /// same on the others. `None`: an organisation of its own. Absent from documents
    /// written before the field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// Base64 (standard) nonce, 24 bytes.
    pub nonce: String,
    /// Base64 (standard) ciphertext with tag.
    pub ciphertext: String,
}

/// Unknown fields tolerated, for the same reason as [`SealedKey`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamPoolDoc {
    pub name: String,
    pub keys: Vec<SealedKey>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionDoc {
    #[serde(default)]
    pub draining: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainDoc {
    #[serde(default)]
    pub draining: bool,
}

/// Everything under `/strait/config/`, parsed and checked as one unit at one revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterConfig {
    pub revision: i64,
    pub tenants: BTreeMap<String, TenantDoc>,
    pub client_keys: BTreeMap<String, ClientKeyDoc>,
    pub pools: BTreeMap<String, UpstreamPoolDoc>,
    pub regions: BTreeMap<String, RegionDoc>,
    /// (region, node id) → drain flag.
    pub drains: BTreeMap<(String, String), DrainDoc>,
}

impl ClusterConfig {
    /// Builds a snapshot from every key/value under [`CONFIG_PREFIX`]. Any unparseable
    /// document or broken reference rejects the whole snapshot (the caller keeps the
    /// previous one), with a message naming the key.
    pub fn from_kvs<'a>(
        revision: i64,
        kvs: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Self, String> {
        let mut c = ClusterConfig {
            revision,
            ..Default::default()
        };
        for (key, value) in kvs {
            let rest = key
                .strip_prefix(CONFIG_PREFIX)
                .ok_or_else(|| format!("{key}: outside {CONFIG_PREFIX}"))?;
            let parse_err = |e: serde_json::Error| format!("{key}: {e}");
            match rest.split_once('/') {
                Some(("tenants", name)) => {
                    let d: TenantDoc = serde_json::from_slice(value).map_err(parse_err)?;
                    if d.name != name {
                        return Err(format!("{key}: name {:?} does not match the key", d.name));
                    }
                    c.tenants.insert(name.to_string(), d);
                }
                Some(("client_keys", id)) => {
                    let d: ClientKeyDoc = serde_json::from_slice(value).map_err(parse_err)?;
                    if d.id != id {
                        return Err(format!("{key}: id {:?} does not match the key", d.id));
                    }
                    c.client_keys.insert(id.to_string(), d);
                }
                Some(("upstream_pools", name)) => {
                    let d: UpstreamPoolDoc = serde_json::from_slice(value).map_err(parse_err)?;
                    if d.name != name {
                        return Err(format!("{key}: name {:?} does not match the key", d.name));
                    }
                    c.pools.insert(name.to_string(), d);
                }
                Some(("regions", region)) => {
                    c.regions.insert(
                        region.to_string(),
                        serde_json::from_slice(value).map_err(parse_err)?,
                    );
                }
                Some(("drain", rest)) => {
                    let (region, node) = rest
                        .split_once('/')
                        .ok_or_else(|| format!("{key}: expected drain/<region>/<node-id>"))?;
                    c.drains.insert(
                        (region.to_string(), node.to_string()),
                        serde_json::from_slice(value).map_err(parse_err)?,
                    );
                }
                _ => return Err(format!("{key}: unknown config key")),
            }
        }
        c.validate()?;
        Ok(c)
    }

    /// Cross-document checks: references resolve, hashes are well-formed.
    pub fn validate(&self) -> Result<(), String> {
        for (id, k) in &self.client_keys {
            if hex::decode(&k.sha256).map(|b| b.len()) != Ok(32) {
                return Err(format!("client key {id}: sha256 must be 64 hex characters"));
            }
            if let Some(t) = &k.tenant {
                if !self.tenants.contains_key(t) {
                    return Err(format!("client key {id}: unknown tenant {t:?}"));
                }
            }
            if let Some(p) = &k.pool {
                if !self.pools.contains_key(p) {
                    return Err(format!("client key {id}: unknown upstream pool {p:?}"));
                }
            }
        }
        for (name, p) in &self.pools {
            let mut ids = std::collections::HashSet::new();
            for k in &p.keys {
                if !ids.insert(&k.id) {
                    return Err(format!("upstream pool {name}: duplicate key id {}", k.id));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool written by a coordinator of the previous version (no `org`) still
    /// loads, and so does one written by a newer coordinator with a field this node
    /// does not know: nodes and the coordinator are upgraded one at a time.
    #[test]
    fn pool_documents_load_across_a_rolling_upgrade() {
        let old = br#"{"name":"default","keys":[{"id":"uk_1","label":"prod-1","nonce":"bm9uY2U=","ciphertext":"Y3Q="}]}"#;
        let newer = br#"{"name":"other","keys":[{"id":"uk_1","label":"prod-1","org":"acme","tier":4,"nonce":"bm9uY2U=","ciphertext":"Y3Q="}],"note":"x"}"#;
        let c = ClusterConfig::from_kvs(
            7,
            [
                ("/strait/config/upstream_pools/default", &old[..]),
                ("/strait/config/upstream_pools/other", &newer[..]),
            ],
        )
        .unwrap();
        assert_eq!(c.pools["default"].keys[0].org, None);
        assert_eq!(c.pools["other"].keys[0].org.as_deref(), Some("acme"));
        // Written back without `org` when there is none, as the previous version did.
        let back = serde_json::to_string(&c.pools["default"]).unwrap();
        assert!(!back.contains("org"), "{back}");
    }

    /// A record written before `ready` and the path's circuit existed still parses,
    /// as `pass` and `closed`; the new fields are written under their documented names.
    #[test]
    fn node_records_parse_across_versions() {
        let old = br#"{"id":"n1","region":"east","public_addr":"10.0.0.1:8080","admin_addr":"10.0.0.1:9090","version":"0.1.0","started_at":"2026-11-27T10:00:00Z","state":"serving","path":{"ttfb_ms":null,"error_rate":0.0,"consecutive_failures":0,"status":"pass"}}"#;
        let mut r: NodeRecord = serde_json::from_slice(old).unwrap();
        assert_eq!(r.ready, Ready::Pass);
        assert_eq!(r.path.state, PathState::Closed);
        r.ready = Ready::Fail;
        r.path.state = PathState::HalfOpen;
        r.path.ttfb_p99_ms = Some(812.0);
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["ready"], "fail");
        assert_eq!(v["path"]["state"], "half_open");
        assert_eq!(v["path"]["ttfb_p99_ms"], 812.0);
    }
}
