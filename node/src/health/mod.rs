//! Health for DNS failover: `/livez`, and `/readyz` as `application/health+json`
//! (pass | warn | fail) built from the node's own view of its state and upstream path.

//! Layout: this file holds the node-wide state and the `/readyz` answers (DNS-facing
//! and `/readyz/local`); `circuit` is the direct path's breaker, `latency` the TTFB
//! average and percentiles. The probes that feed them run in `forward::probe`.

mod circuit;
mod latency;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use serde_json::json;
use tokio::sync::Notify;

pub use self::circuit::Circuit;
pub use self::latency::{Ewma, Latency, Percentiles, EWMA_WEIGHT};
pub use crate::schema::{NodeRecord, PathState, Ready};

/// What the node has seen of its upstream path recently, updated on every attempt
/// and probe with relaxed atomics (no locks on the hot path), and the circuit
/// breaker those outcomes move.
pub struct UpstreamHealth {
    consecutive_failures: AtomicU32,
    /// When the path last answered, in milliseconds after `epoch` plus one (0: never).
    /// Kept on the monotonic clock so a request's answer stores the time its attempt
    /// read already: the wall clock is read only to show it.
    last_success_ms: AtomicU64,
    epoch: Instant,
    last_failure_unix_ms: AtomicU64,
    responses: AtomicU64,
    failures: AtomicU64,
    pub circuit: Circuit,
    /// Time to first byte of requests (not probes).
    pub ttfb: Latency,
    /// Round trip of the active probes.
    pub probe_rtt: Ewma,
    /// Wakes the cluster supervisor to rewrite the node record when the circuit moves.
    changed: Arc<Notify>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Default for UpstreamHealth {
    fn default() -> Self {
        Self::new(Arc::default())
    }
}

impl UpstreamHealth {
    /// `changed` is notified whenever the circuit changes state.
    pub fn new(changed: Arc<Notify>) -> Self {
        UpstreamHealth {
            consecutive_failures: AtomicU32::new(0),
            last_success_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            last_failure_unix_ms: AtomicU64::new(0),
            responses: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            circuit: Circuit::new(crate::config::DEFAULT_FAILURE_THRESHOLD),
            ttfb: Latency::default(),
            probe_rtt: Ewma::default(),
            changed,
        }
    }

    /// A request's answer, its head received `at`. Any HTTP response proves the path
    /// works (even a 4xx): it resets the failure run. A 5xx (529 included) neither
    /// proves nor breaks the path: every region reaches the same API, so moving
    /// clients would not help.
    pub fn record_response(&self, status: StatusCode, at: Instant) {
        self.responses.fetch_add(1, Ordering::Relaxed);
        if status.is_server_error() {
            return;
        }
        self.success(at);
    }

    /// A request's time to first byte (response head received).
    pub fn record_ttfb(&self, ttfb: Duration) {
        self.ttfb.add(ttfb);
    }

    /// A connect error, reset or timeout of a request.
    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        self.last_failure_unix_ms
            .store(unix_ms(), Ordering::Relaxed);
        self.moved(self.circuit.on_failure(n));
    }

    /// An active probe got an HTTP answer, whatever its status (a 401 included:
    /// probes carry no key), after `rtt`.
    pub fn probe_answered(&self, rtt: Duration) {
        self.responses.fetch_add(1, Ordering::Relaxed);
        self.probe_rtt.add(rtt);
        self.success(Instant::now());
    }

    /// An active probe failed at the transport or timed out.
    pub fn probe_failed(&self) {
        self.record_failure();
    }

    fn success(&self, at: Instant) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        let ms = at.saturating_duration_since(self.epoch).as_millis() as u64;
        self.last_success_ms.store(ms + 1, Ordering::Relaxed);
        if self.circuit.state() != PathState::Closed {
            self.moved(self.circuit.on_success());
        }
    }

    fn moved(&self, to: Option<PathState>) {
        let Some(to) = to else { return };
        let fails = self.consecutive_failures();
        match to {
            PathState::Open => tracing::warn!(
                consecutive_failures = fails,
                "upstream path circuit open: /readyz fails until a probe succeeds"
            ),
            PathState::HalfOpen => {
                tracing::info!("upstream path circuit half-open: a probe succeeded")
            }
            PathState::Closed => tracing::info!("upstream path circuit closed: path healthy"),
        }
        self.changed.notify_one();
    }

    /// When the path last answered, in Unix milliseconds (0: never).
    pub fn last_success_unix_ms(&self) -> u64 {
        match self.last_success_ms.load(Ordering::Relaxed) {
            0 => 0,
            ms => {
                let ago = self.epoch + Duration::from_millis(ms - 1);
                unix_ms().saturating_sub(ago.elapsed().as_millis() as u64)
            }
        }
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// Answers (requests and probes) and transport failures seen since start (for
    /// the node record's error rate, computed over the interval between two records).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.responses.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
        )
    }

    /// The `upstream:path` check: pass while the circuit is closed, warn while
    /// half-open, fail while open.
    pub fn status(&self) -> Ready {
        match self.circuit.state() {
            PathState::Closed => Ready::Pass,
            PathState::HalfOpen => Ready::Warn,
            // The path itself: `Health::evaluate` makes it `warn` when a relay
            // through a peer region can serve instead.
            PathState::Open => Ready::Fail,
        }
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

/// Inputs to `/readyz/local`: whether this node can take more work.
#[derive(Default)]
pub struct LocalInputs {
    /// Client connections open now, and the cap (`limits.max_connections`).
    pub connections: usize,
    pub max_connections: usize,
    /// Request body bytes held now, and the budget (`limits.max_inflight_body_bytes`).
    pub body_bytes: u64,
    pub body_budget: u64,
}

/// Above this share of a capacity, `/readyz/local` warns.
const NEARLY_FULL: f64 = 0.9;

/// Every check's status, computed without building the answer's JSON (the
/// cluster supervisor reads the overall status once a second).
struct Evaluation {
    draining: bool,
    drain: Ready,
    path: Ready,
    keys: Ready,
    cluster: Option<(Ready, i64, String)>,
    redis: Ready,
    deferred: Ready,
    overall: Ready,
}

impl Health {
    pub fn new() -> Self {
        let changed = Arc::new(Notify::new());
        Health {
            started: Instant::now(),
            draining: AtomicBool::new(false),
            upstream: UpstreamHealth::new(changed.clone()),
            version: env!("CARGO_PKG_VERSION"),
            cluster: ClusterStatus {
                record_changed: changed,
                ..Default::default()
            },
        }
    }

    /// Draining for any reason: SIGTERM, or a region or node drain in the cluster config.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed) || self.cluster.draining.load(Ordering::Relaxed)
    }

    /// The overall `/readyz` status alone (for the node record).
    pub fn ready(&self, inputs: &ReadyInputs) -> Ready {
        self.evaluate(inputs).overall
    }

    fn evaluate(&self, inputs: &ReadyInputs) -> Evaluation {
        let draining = self.is_draining();
        let drain = if draining { Ready::Fail } else { Ready::Pass };
        // An open circuit with a peer region to relay through still serves (keys
        // pinned to this region excepted: docs/failover.md).
        let path = match self.upstream.status() {
            Ready::Fail if self.cluster.can_relay() => Ready::Warn,
            s => s,
        };

        let keys = if inputs.passthrough {
            Ready::Pass
        } else if inputs.keys_total > 0 && inputs.keys_usable == 0 {
            // No key can serve anything: every key retired or its organisation
            // resting. Only then is there no usable path; a scope cooling on every
            // key is a warning, not a reason to move every client away.
            Ready::Fail
        } else if inputs.keys_ready < inputs.keys_total || !inputs.cooled_messages_scopes.is_empty()
        {
            Ready::Warn
        } else {
            Ready::Pass
        };

        let c = &self.cluster;
        let cluster = c.enabled.load(Ordering::Relaxed).then(|| {
            let connected = c.connected.load(Ordering::Relaxed);
            let revision = c.revision.load(Ordering::Relaxed);
            let from_disk = c.from_disk.load(Ordering::Relaxed);
            let rejected = c.rejected_revision.load(Ordering::Relaxed);
            // etcd down or a rejected change is a warning, not a failure: the node
            // serves its last good config, and moving clients away would not help them.
            let status = if connected && rejected == 0 { Ready::Pass } else { Ready::Warn };
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

        // Redis down is a warning: every node keeps serving under its safe share.
        let redis = match inputs.limiter_redis {
            Some(true) => Ready::Warn,
            _ => Ready::Pass,
        };
        // A deferred backend down is a warning: the node serves; deferral answers 503.
        let deferred = match inputs.deferred {
            Some(parts) if parts.iter().any(|(_, up)| !up) => Ready::Warn,
            _ => Ready::Pass,
        };
        let overall = drain
            .max(path)
            .max(keys)
            .max(cluster.as_ref().map_or(Ready::Pass, |c| c.0))
            .max(redis)
            .max(deferred);
        Evaluation {
            draining,
            drain,
            path,
            keys,
            cluster,
            redis,
            deferred,
            overall,
        }
    }

    /// The `/readyz` answer (DNS-facing): status code and a health+json body (well
    /// under 5 KB).
    pub fn readiness(&self, inputs: &ReadyInputs) -> (StatusCode, String) {
        let now = SystemTime::now();
        let time = humantime::format_rfc3339_seconds(now).to_string();
        let e = self.evaluate(inputs);

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

        let up = &self.upstream;
        let fails = up.consecutive_failures();
        let last_ok = up.last_success_unix_ms();
        let state = up.circuit.state();
        let path_output = match state {
            PathState::Closed if fails == 0 => String::new(),
            PathState::Closed => format!("{fails} transport failure(s) in a row"),
            PathState::HalfOpen => {
                "recovering: a probe succeeded after the circuit opened".to_string()
            }
            PathState::Open => {
                let relay = match self.cluster.relay_peers.load().first() {
                    Some(p) => format!("; serving by relay through region {}", p.region),
                    None => String::new(),
                };
                format!(
                    "circuit open after {fails} transport failures in a row; last success {}{relay}",
                    fmt_ms(last_ok)
                )
            }
        };
        let mut body = json!({
            "status": e.overall.as_str(),
            "version": self.version,
            "serviceId": "strait-node",
            "description": "Strait gateway node readiness",
            "checks": {
                "node:draining": [{
                    "status": e.drain.as_str(),
                    "observedValue": e.draining,
                    "time": time,
                }],
                "upstream:path": [{
                    "status": e.path.as_str(),
                    "componentType": "system",
                    "observedValue": state.as_str(),
                    "observedUnit": "circuit",
                    "output": path_output,
                    "time": time,
                }],
                "upstream:keys": [{
                    "status": e.keys.as_str(),
                    "observedValue": if inputs.passthrough { -1 } else { inputs.keys_ready as i64 },
                    "observedUnit": "keys ready",
                    "output": keys_output,
                    "time": time,
                }],
                "redis:limiter": [{
                    "status": e.redis.as_str(),
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
        if let Some(p) = up.ttfb.percentiles() {
            body["checks"]["upstream:ttfb"] = json!([{
                "status": "pass",
                "componentType": "system",
                "observedValue": p.p99_ms,
                "observedUnit": "ms p99 (last 64 responses)",
                "time": time,
            }]);
        }
        if let Some([queue, store]) = inputs.deferred {
            let state = |(kind, up): (&str, bool)| {
                format!("{kind} {}", if up { "reachable" } else { "unreachable" })
            };
            body["checks"]["deferred:queue"] = json!([{
                "status": e.deferred.as_str(),
                "componentType": "datastore",
                "observedValue": format!("{}; {}", state(queue), state(store)),
                "output": if e.deferred == Ready::Pass { "" } else { "deferral answers 503 (not queued); deliveries pause" },
                "time": time,
            }]);
        }
        if let Some((status, revision, output)) = e.cluster {
            body["checks"]["etcd:cluster"] = json!([{
                "status": status.as_str(),
                "componentType": "datastore",
                "observedValue": revision,
                "observedUnit": "config revision",
                "output": output,
                "time": time,
            }]);
        }
        (status_code(e.overall), body.to_string())
    }

    /// The `/readyz/local` answer, for a load balancer or Kubernetes Service inside
    /// the region: fails only when this node cannot take work (draining, or every
    /// connection slot or the whole body budget in use), never because the upstream
    /// path is down, so a region that relays keeps receiving requests from peers.
    pub fn local_readiness(&self, inputs: &LocalInputs) -> (StatusCode, String) {
        let time = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let draining = self.is_draining();
        let drain = if draining { Ready::Fail } else { Ready::Pass };
        let load = |used: f64, cap: f64| {
            if cap > 0.0 && used >= cap {
                Ready::Fail
            } else if cap > 0.0 && used >= cap * NEARLY_FULL {
                Ready::Warn
            } else {
                Ready::Pass
            }
        };
        let conns = load(inputs.connections as f64, inputs.max_connections as f64);
        let bodies = load(inputs.body_bytes as f64, inputs.body_budget as f64);
        let overall = drain.max(conns).max(bodies);
        let body = json!({
            "status": overall.as_str(),
            "version": self.version,
            "serviceId": "strait-node",
            "description": "Strait gateway node: can this node take work (upstream path not considered)",
            "checks": {
                "node:draining": [{
                    "status": drain.as_str(),
                    "observedValue": draining,
                    "time": time,
                }],
                "node:connections": [{
                    "status": conns.as_str(),
                    "observedValue": inputs.connections,
                    "observedUnit": format!("connections of {}", inputs.max_connections),
                    "time": time,
                }],
                "node:body_budget": [{
                    "status": bodies.as_str(),
                    "observedValue": inputs.body_bytes,
                    "observedUnit": format!("bytes of {}", inputs.body_budget),
                    "time": time,
                }],
            },
        });
        (status_code(overall), body.to_string())
    }
}

fn status_code(r: Ready) -> StatusCode {
    if r == Ready::Fail {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
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
    /// Wakes the supervisor to rewrite the node record (drain, or the upstream
    /// path's circuit moved: shared with [`UpstreamHealth`]).
    pub record_changed: Arc<Notify>,
    /// Nodes of other regions that can carry a relayed request now (serving, ready
    /// `pass` or `warn`, direct path closed), best first. Written by the cluster's
    /// membership watch; always empty on a node that cannot relay (no cluster
    /// secret, or passing the client's key through).
    pub relay_peers: arc_swap::ArcSwap<Vec<NodeRecord>>,
}

impl ClusterStatus {
    /// Whether some peer region can carry requests now.
    pub fn can_relay(&self) -> bool {
        !self.relay_peers.load().is_empty()
    }

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

        // One failure is below the threshold (2): the circuit stays closed.
        h.upstream.record_failure();
        let (code, body) = h.readiness(&inputs());
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains("\"status\":\"pass\""), "{body}");
        assert!(body.contains("1 transport failure(s) in a row"), "{body}");

        h.upstream.record_failure();
        assert_eq!(h.upstream.circuit.state(), PathState::Open);
        assert_eq!(h.readiness(&inputs()).0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(h.ready(&inputs()), Ready::Fail);
        // A 529 proves nothing about the path.
        h.upstream
            .record_response(StatusCode::from_u16(529).unwrap(), Instant::now());
        assert_eq!(h.upstream.circuit.state(), PathState::Open);
        h.upstream.probe_answered(Duration::from_millis(40));
        let (code, body) = h.readiness(&inputs());
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains("\"status\":\"warn\""), "{body}");
        h.upstream.record_response(StatusCode::OK, Instant::now());
        assert_eq!(h.ready(&inputs()), Ready::Pass);

        h.draining.store(true, Ordering::Relaxed);
        assert_eq!(h.readiness(&inputs()).0, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn the_last_success_is_shown_in_wall_clock_time() {
        let up = UpstreamHealth::default();
        assert_eq!(up.last_success_unix_ms(), 0, "never answered");
        up.record_response(StatusCode::from_u16(529).unwrap(), Instant::now());
        assert_eq!(up.last_success_unix_ms(), 0, "a 529 is no success");
        std::thread::sleep(Duration::from_millis(30));
        let before = unix_ms();
        up.record_response(StatusCode::OK, Instant::now());
        let after = unix_ms();
        std::thread::sleep(Duration::from_millis(300));
        // Read 300 ms later, it still names the moment of the answer (within the
        // millisecond rounding of the two clocks).
        let shown = up.last_success_unix_ms();
        assert!(
            before.saturating_sub(2) <= shown && shown <= after + 2,
            "{before} <= {shown} <= {after}"
        );
    }

    #[test]
    fn an_open_circuit_with_a_relay_warns() {
        let h = Health::new();
        h.upstream.record_failure();
        h.upstream.record_failure();
        assert_eq!(h.ready(&inputs()), Ready::Fail);
        let peer: NodeRecord = serde_json::from_value(json!({
            "id": "w1", "region": "west", "public_addr": "127.0.0.1:1", "admin_addr": "127.0.0.1:2",
            "version": "0", "started_at": "", "state": "serving",
            "path": {"ttfb_ms": null, "error_rate": 0.0, "consecutive_failures": 0, "status": "pass"},
        }))
        .unwrap();
        h.cluster.relay_peers.store(Arc::new(vec![peer]));
        let (code, body) = h.readiness(&inputs());
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains("\"status\":\"warn\""), "{body}");
        assert!(
            body.contains("serving by relay through region west"),
            "{body}"
        );
        h.draining.store(true, Ordering::Relaxed);
        assert_eq!(h.ready(&inputs()), Ready::Fail);
    }

    #[test]
    fn circuit_moves_wake_the_record_writer() {
        let h = Health::new();
        h.upstream.record_failure();
        h.upstream.record_failure();
        // The permit stored by `notify_one` is taken at once by the next waiter.
        let woke = h.cluster.record_changed.notified();
        assert_ready(woke);
    }

    /// Polls a future once and asserts it is ready (no runtime needed for `Notified`).
    fn assert_ready<F: std::future::Future>(f: F) {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        assert!(f.as_mut().poll(&mut cx).is_ready(), "notified");
    }

    #[test]
    fn local_readiness_ignores_the_path() {
        let h = Health::new();
        h.upstream.record_failure();
        h.upstream.record_failure();
        let mut li = LocalInputs {
            connections: 10,
            max_connections: 100,
            body_bytes: 0,
            body_budget: 1000,
        };
        let (code, body) = h.local_readiness(&li);
        assert_eq!(code, StatusCode::OK, "{body}");
        assert!(body.len() < 5 * 1024);
        li.body_bytes = 950;
        assert!(h.local_readiness(&li).1.contains("\"status\":\"warn\""));
        li.connections = 100;
        assert_eq!(h.local_readiness(&li).0, StatusCode::SERVICE_UNAVAILABLE);
        li.connections = 1;
        li.body_bytes = 0;
        h.draining.store(true, Ordering::Relaxed);
        assert_eq!(h.local_readiness(&li).0, StatusCode::SERVICE_UNAVAILABLE);
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
