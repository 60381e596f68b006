//! Health for DNS failover: `/livez`, and `/readyz` as `application/health+json`
//! (pass | warn | fail) built from the node's own view of its state and upstream path.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use serde_json::json;
use tokio::sync::Notify;

/// Consecutive upstream transport failures after which the path counts as down.
pub const UPSTREAM_FAIL_THRESHOLD: u32 = 5;

/// What the node has seen of its upstream path recently, updated on every attempt
/// with relaxed atomics (no locks on the hot path).
#[derive(Default)]
pub struct UpstreamHealth {
    consecutive_failures: AtomicU32,
    last_success_unix_ms: AtomicU64,
    last_failure_unix_ms: AtomicU64,
    responses: AtomicU64,
    failures: AtomicU64,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl UpstreamHealth {
    /// Any HTTP response proves the path works (even a 4xx): reset the failure run.
    pub fn record_response(&self, status: StatusCode) {
        self.responses.fetch_add(1, Ordering::Relaxed);
        if status.is_server_error() {
            return;
        }
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        self.last_success_unix_ms
            .store(unix_ms(), Ordering::Relaxed);
    }

    /// A connect error, reset or timeout.
    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
        self.last_failure_unix_ms
            .store(unix_ms(), Ordering::Relaxed);
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// Responses and transport failures seen since start (for the node record's
    /// error rate, computed over the interval between two records).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.responses.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
        )
    }
}

/// The node-wide health state read by `/readyz`.
pub struct Health {
    pub started: Instant,
    pub draining: AtomicBool,
    pub upstream: UpstreamHealth,
    pub version: &'static str,
    /// etcd connection, config revision and cluster-driven drain (see `cluster`).
    pub cluster: ClusterStatus,
}

/// Inputs to readiness that live elsewhere (the key pool, the config mode).
#[derive(Default)]
pub struct ReadyInputs {
    pub keys_total: usize,
    /// Keys usable for every scope now.
    pub keys_ready: usize,
    /// Keys that can serve at least some scope (ready, or cooling for some scopes).
    pub keys_usable: usize,
    /// Keys the upstream refused (401/403), unused until the pool's keys change.
    pub keys_retired: usize,
    /// Keys whose organisation rests after a billing or spend-limit error.
    pub keys_resting: usize,
    /// Messages scopes (`messages/sonnet`) that every usable key is cooling for.
    pub cooled_messages_scopes: Vec<String>,
    pub passthrough: bool,
    /// `None` without Redis; `Some(true)` while the limiter cannot reach Redis.
    pub limiter_redis: Option<bool>,
    /// Deferred delivery's queue and store: kind and whether each answers (`None`:
    /// not set up on this node).
    pub deferred: Option<[(&'static str, bool); 2]>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

impl Health {
    pub fn new() -> Self {
        Health {
            started: Instant::now(),
            draining: AtomicBool::new(false),
            upstream: UpstreamHealth::default(),
            version: env!("CARGO_PKG_VERSION"),
            cluster: Default::default(),
        }
    }

    /// Draining for any reason: SIGTERM, or a region or node drain in the cluster config.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed) || self.cluster.draining.load(Ordering::Relaxed)
    }

    /// The `/readyz` answer: status code and a health+json body (well under 5 KB).
    pub fn readiness(&self, inputs: &ReadyInputs) -> (StatusCode, String) {
        let now = SystemTime::now();
        let time = humantime::format_rfc3339_seconds(now).to_string();
        let draining = self.is_draining();
        let drain_status = if draining { Status::Fail } else { Status::Pass };

        let fails = self.upstream.consecutive_failures();
        let path_status = if fails >= UPSTREAM_FAIL_THRESHOLD {
            Status::Fail
        } else if fails > 0 {
            Status::Warn
        } else {
            Status::Pass
        };

        let keys_status = if inputs.passthrough {
            Status::Pass
        } else if inputs.keys_total > 0 && inputs.keys_usable == 0 {
            // No key can serve anything: every key retired or its organisation
            // resting. Only then is there no usable path; a scope cooling on every
            // key is a warning, not a reason to move every client away.
            Status::Fail
        } else if inputs.keys_ready < inputs.keys_total || !inputs.cooled_messages_scopes.is_empty()
        {
            Status::Warn
        } else {
            Status::Pass
        };
        let keys_output = if inputs.passthrough {
            String::new()
        } else {
            let mut parts = Vec::new();
            if !inputs.cooled_messages_scopes.is_empty() {
                parts.push(format!(
                    "every key cooling for {}",
                    inputs.cooled_messages_scopes.join(", ")
                ));
            }
            if inputs.keys_retired > 0 {
                parts.push(format!(
                    "{} refused by the upstream (retired; replace them)",
                    inputs.keys_retired
                ));
            }
            if inputs.keys_resting > 0 {
                parts.push(format!(
                    "{} resting after a billing or spend-limit error",
                    inputs.keys_resting
                ));
            }
            parts.join("; ")
        };

        let cluster = &self.cluster;
        let cluster_check = cluster.enabled.load(Ordering::Relaxed).then(|| {
            let connected = cluster.connected.load(Ordering::Relaxed);
            let revision = cluster.revision.load(Ordering::Relaxed);
            let from_disk = cluster.from_disk.load(Ordering::Relaxed);
            let rejected = cluster.rejected_revision.load(Ordering::Relaxed);
            // etcd down or a rejected change is a warning, not a failure: the node
            // serves its last good config, and moving clients away would not help them.
            let status = if connected && rejected == 0 { Status::Pass } else { Status::Warn };
            let output = match (connected, revision, from_disk) {
                (true, r, _) if rejected != 0 => {
                    format!("cluster config at revision {rejected} rejected (see logs); serving revision {r}")
                }
                (true, _, _) => String::new(),
                (false, 0, _) => "etcd unreachable; no cluster config yet, serving the file config".to_string(),
                (false, r, true) => format!("etcd unreachable; serving the config snapshot from disk (revision {r})"),
                (false, r, false) => format!("etcd unreachable; serving the last config from etcd (revision {r})"),
            };
            (status, revision, output)
        });
        let cluster_status = cluster_check.as_ref().map_or(Status::Pass, |c| c.0);

        // Redis down is a warning: every node keeps serving under its safe share.
        let redis_status = match inputs.limiter_redis {
            Some(true) => Status::Warn,
            _ => Status::Pass,
        };
        // A deferred backend down is a warning: the node serves; deferral answers 503.
        let deferred_status = match inputs.deferred {
            Some(parts) if parts.iter().any(|(_, up)| !up) => Status::Warn,
            _ => Status::Pass,
        };
        let overall = drain_status
            .max(path_status)
            .max(keys_status)
            .max(cluster_status)
            .max(redis_status)
            .max(deferred_status);
        let last_ok = self.upstream.last_success_unix_ms.load(Ordering::Relaxed);
        let mut body = json!({
            "status": overall.as_str(),
            "version": self.version,
            "serviceId": "strait-node",
            "description": "Strait gateway node readiness",
            "checks": {
                "node:draining": [{
                    "status": drain_status.as_str(),
                    "observedValue": draining,
                    "time": time,
                }],
                "upstream:path": [{
                    "status": path_status.as_str(),
                    "componentType": "system",
                    "observedValue": fails,
                    "observedUnit": "consecutive failures",
                    "output": if path_status == Status::Pass { String::new() } else { format!("last success {}", fmt_ms(last_ok)) },
                    "time": time,
                }],
                "upstream:keys": [{
                    "status": keys_status.as_str(),
                    "observedValue": if inputs.passthrough { -1 } else { inputs.keys_ready as i64 },
                    "observedUnit": "keys ready",
                    "output": keys_output,
                    "time": time,
                }],
                "redis:limiter": [{
                    "status": redis_status.as_str(),
                    "componentType": "datastore",
                    "observedValue": match inputs.limiter_redis { None => "not configured", Some(true) => "unreachable: safe share", Some(false) => "connected" },
                    "time": time,
                }],
                "uptime": [{
                    "status": "pass",
                    "componentType": "system",
                    "observedValue": self.started.elapsed().as_secs(),
                    "observedUnit": "s",
                    "time": time,
                }],
            },
        });
        if let Some([queue, store]) = inputs.deferred {
            let state = |(kind, up): (&str, bool)| {
                format!("{kind} {}", if up { "reachable" } else { "unreachable" })
            };
            body["checks"]["deferred:queue"] = json!([{
                "status": deferred_status.as_str(),
                "componentType": "datastore",
                "observedValue": format!("{}; {}", state(queue), state(store)),
                "output": if deferred_status == Status::Pass { "" } else { "deferral answers 503 (not queued); deliveries pause" },
                "time": time,
            }]);
        }
        if let Some((status, revision, output)) = cluster_check {
            body["checks"]["etcd:cluster"] = json!([{
                "status": status.as_str(),
                "componentType": "datastore",
                "observedValue": revision,
                "observedUnit": "config revision",
                "output": output,
                "time": time,
            }]);
        }
        let code = if overall == Status::Fail {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        (code, body.to_string())
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

fn fmt_ms(ms: u64) -> String {
    if ms == 0 {
        return "never".into();
    }
    let t = UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The node's cluster state, read by `/readyz`, metrics and the limiter. Lives in
/// [`Health`]; written by [`crate::cluster`]; all fields are atomics so readers never wait.
#[derive(Default)]
pub struct ClusterStatus {
    /// The node runs with etcd (false: embedded default, file config only).
    pub enabled: AtomicBool,
    /// The etcd session is up: lease held, record written, watch open.
    pub connected: AtomicBool,
    /// etcd revision of the cluster config being served (0: none yet).
    pub revision: AtomicI64,
    /// The config being served came from the on-disk snapshot, not from etcd.
    pub from_disk: AtomicBool,
    /// Revision of the latest config that was rejected as invalid, 0 once a later
    /// one was applied: `/readyz` warns while the cluster's config is not in force.
    pub rejected_revision: AtomicI64,
    /// A region or node drain in the cluster config (SIGTERM drain is separate).
    pub draining: AtomicBool,
    /// Node records seen under `/strait/nodes/` (all regions), this node included.
    pub live_nodes: AtomicUsize,
    /// Wakes the supervisor to rewrite the node record (state changed).
    pub record_changed: Notify,
}

impl ClusterStatus {
    /// Nodes in the cluster as last seen in etcd, at least 1 (this node). The limiter
    /// divides a global limit by this for its safe local share.
    pub fn live_nodes(&self) -> usize {
        self.live_nodes.load(Ordering::Relaxed).max(1)
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> ReadyInputs {
        ReadyInputs {
            keys_ready: 2,
            keys_usable: 2,
            keys_total: 2,
            ..ReadyInputs::default()
        }
    }

    #[test]
    fn pass_warn_fail() {
        let h = Health::new();
        let (code, body) = h.readiness(&inputs());
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains("\"status\":\"pass\""));
        assert!(body.len() < 5 * 1024);

        h.upstream.record_failure();
        let (code, body) = h.readiness(&inputs());
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains("\"status\":\"warn\""));

        for _ in 0..UPSTREAM_FAIL_THRESHOLD {
            h.upstream.record_failure();
        }
        assert_eq!(h.readiness(&inputs()).0, StatusCode::SERVICE_UNAVAILABLE);
        h.upstream.record_response(StatusCode::OK);
        assert_eq!(h.readiness(&inputs()).0, StatusCode::OK);

        h.draining.store(true, Ordering::Relaxed);
        assert_eq!(h.readiness(&inputs()).0, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn no_usable_key_fails_but_cooling_scopes_warn() {
        let h = Health::new();
        let (code, body) = h.readiness(&ReadyInputs {
            keys_total: 2,
            keys_retired: 1,
            keys_resting: 1,
            ..ReadyInputs::default()
        });
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("1 refused by the upstream"), "{body}");
        let (code, body) = h.readiness(&ReadyInputs {
            keys_total: 2,
            keys_usable: 2,
            cooled_messages_scopes: vec!["messages/sonnet".into()],
            ..ReadyInputs::default()
        });
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains("\"status\":\"warn\""));
        assert!(
            body.contains("every key cooling for messages/sonnet"),
            "{body}"
        );
    }
}
