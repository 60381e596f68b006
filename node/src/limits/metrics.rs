//! The limiter's Prometheus metrics, registered in the node's registry.

use prometheus::core::Collector;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Registers a metric and hands it back.
fn register<C: Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

/// Metrics of the limiter, registered in the node's registry.
#[derive(Clone)]
pub struct LimiterMetrics {
    /// `strait_limiter_decisions_total{result, dimension, scope}`.
    pub decisions: IntCounterVec,
    /// `strait_limiter_degraded`: 1 while Redis is unreachable and safe shares apply.
    pub degraded: IntGauge,
    /// `strait_limiter_redis_ops_total{op}`: Redis round trips by kind.
    pub redis_ops: IntCounterVec,
    /// `strait_limiter_redis_errors_total{op}`.
    pub redis_errors: IntCounterVec,
    /// `strait_limiter_lease_refills_total`: leased-mode refills (slow path).
    pub lease_refills: IntCounter,
    /// `strait_limiter_nodes`: nodes each shared limit is divided among (safe share).
    pub nodes: IntGauge,
    /// The `result="admitted"` series, resolved once: it is bumped on every request.
    pub(super) admitted: IntCounter,
}

impl LimiterMetrics {
    pub fn new(registry: &Registry) -> LimiterMetrics {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str| {
            register(registry, IntGauge::new(name, help).expect("valid metric"))
        };
        let degraded = gauge(
            "limiter_degraded",
            "1 while Redis is unreachable and each limit falls back to this node's safe share",
        );
        let lease_refills = register(
            registry,
            IntCounter::new(
                "limiter_lease_refills_total",
                "Leased mode: quota chunks taken from Redis",
            )
            .expect("valid metric"),
        );
        let nodes = gauge(
            "limiter_nodes",
            "Nodes sharing each limit, for safe shares and lease sizes (live count with etcd)",
        );
        let decisions = counter(
            "limiter_decisions_total",
            "Limiter decisions by result, limiting dimension and scope",
            &["result", "dimension", "scope"],
        );
        LimiterMetrics {
            admitted: decisions.with_label_values(&["admitted", "", ""]),
            decisions,
            degraded,
            nodes,
            redis_ops: counter(
                "limiter_redis_ops_total",
                "Limiter round trips to Redis, by operation",
                &["op"],
            ),
            redis_errors: counter(
                "limiter_redis_errors_total",
                "Limiter Redis operations that failed or timed out",
                &["op"],
            ),
            lease_refills,
        }
    }
}
