//! Deferred delivery's metrics, registered in the node's registry.

use crate::metrics::registered;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Publish-to-confirm buckets: a broker on the same LAN confirms in milliseconds; the
/// top buckets show fsync stalls and a broker near its limits.
const PUBLISH_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

pub struct DeferMetrics {
    /// Requests made durable (answered 202), by how they were deferred.
    pub queued: IntCounterVec,
    /// Requests that asked to be deferred and were not (503), by the part that failed.
    pub not_queued: IntCounterVec,
    /// An idempotency key used again: the first request's id was returned.
    pub idempotent_hits: IntCounter,
    pub publish_seconds: Histogram,
    /// Open ids of this region (pending, queued, delivering, sent).
    pub depth: IntGauge,
    pub oldest_age_seconds: IntGauge,
    /// Deliveries that ended, by outcome: done, outcome_unknown, gone (unknown id).
    pub delivered: IntCounterVec,
    /// Deliveries not run: skipped (already final) or requeued (another holder's live
    /// claim, or a failure before anything was sent).
    pub redeliveries: IntCounterVec,
    pub dead_lettered: IntCounter,
    /// Deliveries waiting for the upstream path or the requester's limits.
    pub paused: IntGauge,
}

impl DeferMetrics {
    pub fn register(registry: &Registry) -> DeferMetrics {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registered(registry, c)
        };
        let single = |name: &str, help: &str| {
            registered(registry, IntCounter::new(name, help).expect("valid metric"))
        };
        let gauge = |name: &str, help: &str| {
            registered(registry, IntGauge::new(name, help).expect("valid metric"))
        };
        let publish_seconds = registered(
            registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "deferred_publish_seconds",
                    "Time from publish to the queue's confirm (broker ack or spool fsync)",
                )
                .buckets(PUBLISH_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
        );
        DeferMetrics {
            queued: counter(
                "deferred_queued_total",
                "Deferred requests made durable and answered 202, by how (on_outage, always)",
                &["how"],
            ),
            not_queued: counter(
                "deferred_not_queued_total",
                "Deferral refused with a 503 because the queue or the store failed",
                &["part"],
            ),
            idempotent_hits: single(
                "deferred_idempotent_hits_total",
                "Idempotency keys used again: the first request's id returned, nothing queued",
            ),
            publish_seconds,
            depth: gauge(
                "deferred_depth",
                "Deferred requests of this region not yet finished",
            ),
            oldest_age_seconds: gauge(
                "deferred_oldest_age_seconds",
                "Age of the oldest unfinished deferred request of this region",
            ),
            delivered: counter(
                "deferred_delivered_total",
                "Deferred deliveries that ended, by outcome (done, outcome_unknown, gone)",
                &["outcome"],
            ),
            redeliveries: counter(
                "deferred_redeliveries_total",
                "Deliveries not run: skipped (already finished) or requeued (held elsewhere, \
                 or failed before anything was sent)",
                &["action"],
            ),
            dead_lettered: single(
                "deferred_dead_lettered_total",
                "Deferred requests dead-lettered after the delivery limit",
            ),
            paused: gauge(
                "deferred_paused",
                "Deliveries waiting for the upstream path or the requester's limits",
            ),
        }
    }
}
