//! Membership: this node's id and record, and the count of live nodes seen under
//! `/strait/nodes/` (the limiter's safe share divides by it).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;

use prometheus::core::Collector;

use crate::error::{Error, Result};
use crate::schema::{valid_name, NodeRecord, NodeState, PathHealth, PathState, Ready};
use crate::state::Shared;

/// File inside the state directory that keeps a generated node id across restarts.
pub const NODE_ID_FILE: &str = "node-id";

/// Creates the state directory and returns the node id: the configured one, else the
/// one kept in the state directory, else a new one from the host name (kept there).
pub fn resolve_node_id(configured: Option<&str>, state_dir: &Path) -> Result<String> {
    std::fs::create_dir_all(state_dir).map_err(|e| {
        Error::config(format!(
            "cluster.state_dir: cannot create {}: {e}",
            state_dir.display()
        ))
    })?;
    if let Some(id) = configured {
        return Ok(id.to_string());
    }
    let file = state_dir.join(NODE_ID_FILE);
    if let Ok(text) = std::fs::read_to_string(&file) {
        let id = text.trim();
        if valid_name(id) {
            return Ok(id.to_string());
        }
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let mut host: String = host
        .trim()
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    if host.is_empty() {
        host = "node".into();
    }
    // The suffix keeps two nodes on one host (or cloned images) apart.
    let id = format!("{host}-{:04x}", rand::random::<u16>());
    std::fs::write(&file, format!("{id}\n"))
        .map_err(|e| Error::config(format!("cannot write {}: {e}", file.display())))?;
    Ok(id)
}

/// Builds this node's record from its live state. Keeps the previous counters so
/// TTFB and error rate describe the interval since the last record, not all time.
pub struct RecordBuilder {
    pub id: String,
    pub region: String,
    pub public_addr: String,
    pub admin_addr: String,
    pub started_at: String,
    last_counts: (u64, u64),
    last_ttfb: (f64, u64),
    last_ttfb_ms: Option<f64>,
}

impl RecordBuilder {
    pub fn new(id: String, region: String, public_addr: String, admin_addr: String) -> Self {
        RecordBuilder {
            id,
            region,
            public_addr,
            admin_addr,
            started_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            last_counts: (0, 0),
            last_ttfb: (0.0, 0),
            last_ttfb_ms: None,
        }
    }

    pub fn key(&self) -> String {
        crate::schema::node_key(&self.region, &self.id)
    }

    pub fn build(&mut self, shared: &Shared) -> NodeRecord {
        let health = &shared.health;
        let (responses, failures) = health.upstream.counts();
        let (dr, df) = (
            responses - self.last_counts.0,
            failures - self.last_counts.1,
        );
        self.last_counts = (responses, failures);
        let error_rate = if dr + df == 0 {
            0.0
        } else {
            df as f64 / (dr + df) as f64
        };

        let (mut sum, mut count) = (0.0, 0u64);
        for mf in shared.metrics.upstream_ttfb.collect() {
            for m in mf.get_metric() {
                sum += m.get_histogram().get_sample_sum();
                count += m.get_histogram().get_sample_count();
            }
        }
        let (ds, dc) = (sum - self.last_ttfb.0, count - self.last_ttfb.1);
        self.last_ttfb = (sum, count);
        if dc > 0 {
            self.last_ttfb_ms = Some((ds / dc as f64 * 1000.0 * 100.0).round() / 100.0);
        }

        let up = &health.upstream;
        let fails = up.consecutive_failures();
        let pct = up.ttfb.percentiles();
        let round = |ms: f64| (ms * 100.0).round() / 100.0;
        NodeRecord {
            id: self.id.clone(),
            region: self.region.clone(),
            public_addr: self.public_addr.clone(),
            admin_addr: self.admin_addr.clone(),
            version: health.version.to_string(),
            started_at: self.started_at.clone(),
            state: if health.is_draining() {
                NodeState::Draining
            } else {
                NodeState::Serving
            },
            path: PathHealth {
                ttfb_ms: self.last_ttfb_ms,
                error_rate: (error_rate * 1000.0).round() / 1000.0,
                consecutive_failures: fails,
                status: up.status().as_str().to_string(),
                state: up.circuit.state(),
                ttfb_ewma_ms: up.ttfb.ewma.ms().map(round),
                ttfb_p50_ms: pct.map(|p| round(p.p50_ms)),
                ttfb_p99_ms: pct.map(|p| round(p.p99_ms)),
                probe_rtt_ms: up.probe_rtt.ms().map(round),
            },
            ready: shared.ready(),
            tls: shared.config.tls.is_some(),
        }
    }
}

/// The node records seen in etcd (key → raw document), kept in step with the watch.
#[derive(Default)]
pub struct Members {
    nodes: BTreeMap<String, Vec<u8>>,
}

impl Members {
    pub fn clear(&mut self) {
        self.nodes.clear();
    }

    pub fn put(&mut self, key: &str, value: &[u8]) {
        self.nodes.insert(key.to_string(), value.to_vec());
    }

    pub fn delete(&mut self, key: &str) {
        self.nodes.remove(key);
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Nodes of other regions that can carry a relayed request now, best first: the
    /// lowest published time to first byte (median, else average, else probe round
    /// trip; a node with none yet comes last) plus our measured round trip to it
    /// (`relay::PeerRtts`). None when this node cannot relay: no
    /// cluster secret to sign with, or clients' own keys passing through (they never
    /// travel between nodes).
    fn relay_peers(&self, shared: &Shared) -> Vec<NodeRecord> {
        let Some(cluster) = &shared.config.cluster else {
            return Vec::new();
        };
        if shared.config.cluster_secret.is_none()
            || shared.snapshot.load().auth.mode() == crate::config::KeyMode::Passthrough
        {
            return Vec::new();
        }
        let mut peers: Vec<NodeRecord> = self
            .nodes
            .values()
            .filter_map(|raw| serde_json::from_slice::<NodeRecord>(raw).ok())
            .filter(|r| {
                r.region != cluster.region
                    && r.state == NodeState::Serving
                    && r.ready != Ready::Fail
                    && r.path.state == PathState::Closed
            })
            .collect();
        if let Some(relay) = &shared.relay {
            relay.rank(&mut peers);
        }
        peers
    }

    /// Publishes the count to the node's status and metrics.
    pub fn publish(&self, shared: &Shared, metrics: &super::ClusterMetrics) {
        let n = self.nodes.len();
        if shared.health.cluster.live_nodes.swap(n, Ordering::Relaxed) != n {
            tracing::info!(live_nodes = n, "cluster membership changed");
        }
        metrics.live_nodes.set(n as i64);
        let peers = self.relay_peers(shared);
        let status = &shared.health.cluster;
        if peers.len() != status.relay_peers.load().len() {
            tracing::info!(
                relay_peers = peers.len(),
                "peer regions to relay through changed"
            );
        }
        status.relay_peers.store(std::sync::Arc::new(peers));
        // The limiter's safe share and lease size follow the live count, not a guess.
        if n > 0 {
            shared.limiter.set_node_count(n);
        }
    }
}
