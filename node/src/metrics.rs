//! The node's Prometheus metrics, in a registry of their own (so several nodes can
//! live in one test process). Every phase counts here; [`crate::account`] counts a
//! finished request.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::meta::{RouteKind, Usage};

/// Latency buckets from 0.5 ms to 5 min: gateway overhead and long generations both fit.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0,
];

/// Registers `metric` in `registry` and hands it back: every metric of the node is
/// registered once, at start, so a failure here is a bug (a clash of names).
pub fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

/// Every metric the node exports, in its own registry (so several nodes can live in
/// one test process).
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub upstream_ttfb: HistogramVec,
    /// `duration` and `upstream_ttfb` per route, resolved once: a label lookup hashes
    /// the label values on every call, and these two are hit on every request.
    duration_by_route: Vec<Histogram>,
    ttfb_by_route: Vec<Histogram>,
    /// Names this instance in each thread's cache of resolved label sets ([`RECENT`]).
    id: u64,
    pub ttft: HistogramVec,
    pub tokens: IntCounterVec,
    pub upstream_errors: IntCounterVec,
    pub gateway_errors: IntCounterVec,
    /// Request bodies given up for slowness (each also a 408 in `gateway_errors`).
    pub body_timeouts: IntCounterVec,
    pub retries: IntCounterVec,
    pub active_streams: IntGauge,
    pub stream_failures: IntCounterVec,
    pub upstream_connections: IntGauge,
    pub downstream_connections: IntGauge,
    /// Client connections each of the public listener's event loops accepted.
    pub loop_connections: IntCounterVec,
    pub key_cooldowns: IntCounterVec,
    pub keys_retired: IntCounterVec,
    pub keys: IntGaugeVec,
    pub draining: IntGauge,
    /// Request body bytes held under `limits.max_inflight_body_bytes`.
    pub body_bytes_in_flight: IntGauge,
    /// Requests refused because their body did not fit the in-flight body budget.
    pub body_budget_refusals: IntCounter,
    /// Access lines dropped because the log's destination fell behind.
    pub access_log_dropped: IntCounter,
    /// The direct path's circuit: 0 closed, 1 half-open, 2 open (set at scrape time).
    pub path_state: IntGauge,
    /// Active probes of the upstream path by result: `answered` (any HTTP status),
    /// `error` (connect or protocol failure), `timeout`.
    pub probes: IntCounterVec,
    /// Moving average of requests' time to first byte (set at scrape time).
    pub ttfb_ewma: Gauge,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let registry = Registry::new_custom(Some("strait".into()), None).expect("valid prefix");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(SECONDS_BUCKETS.to_vec()),
                labels,
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let keys = IntGaugeVec::new(
            Opts::new(
                "upstream_keys",
                "Upstream keys by state: ready, cooling (for some scope), resting (its \
                 organisation, after a billing or spend-limit error), retired",
            ),
            &["state"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(keys.clone()))
            .expect("unique metric");
        let duration = histogram(
            "request_duration_seconds",
            "Time from request received to last byte sent",
            &["route"],
        );
        let upstream_ttfb = histogram(
            "upstream_ttfb_seconds",
            "Time from upstream request sent to response headers",
            &["route"],
        );
        let by_route = |h: &HistogramVec| {
            RouteKind::ALL
                .iter()
                .map(|r| h.with_label_values(&[r.label()]))
                .collect()
        };
        Arc::new(Metrics {
            requests: counter(
                "requests_total",
                "Requests finished, by route, status and model",
                &["route", "status", "model"],
            ),
            duration_by_route: by_route(&duration),
            ttfb_by_route: by_route(&upstream_ttfb),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            duration,
            upstream_ttfb,
            ttft: histogram(
                "time_to_first_token_seconds",
                "Time from request received to the first content delta of a stream",
                &["model"],
            ),
            tokens: counter(
                "tokens_total",
                "Tokens reported by the upstream, by direction and model",
                &["direction", "model"],
            ),
            upstream_errors: counter(
                "upstream_errors_total",
                "Upstream failures by kind",
                &["kind"],
            ),
            gateway_errors: counter(
                "gateway_errors_total",
                "Errors the gateway itself answered, by type",
                &["type"],
            ),
            body_timeouts: counter(
                "request_body_timeouts_total",
                "Request bodies given up: nothing arrived for limits.body_read_timeout (silent) or less than limits.min_upload_rate (slow)",
                &["reason"],
            ),
            retries: counter(
                "upstream_retries_total",
                "Upstream attempts repeated on another key or connection, by cause",
                &["cause"],
            ),
            active_streams: gauge("active_streams", "Streaming responses in flight"),
            stream_failures: counter(
                "stream_failures_total",
                "Streams that failed after they started, by cause",
                &["cause"],
            ),
            upstream_connections: gauge(
                "upstream_connections",
                "Open upstream connections (pooled or in use)",
            ),
            downstream_connections: gauge("downstream_connections", "Open client connections"),
            loop_connections: counter(
                "event_loop_connections_total",
                "Client connections accepted on the public listener, by the event loop \
                 (worker thread) that serves them",
                &["event_loop"],
            ),
            key_cooldowns: counter(
                "upstream_key_cooldowns_total",
                "Upstream limit scopes cooled (rate_limited; scope as messages/sonnet) or \
                 whole organisations rested (billing, spend_limit; scope all), by the key \
                 whose answer caused it",
                &["key", "org", "scope", "reason"],
            ),
            keys_retired: counter(
                "upstream_keys_retired_total",
                "Upstream keys retired because the upstream refused them (revoked: 401, \
                 forbidden: 403); unused until the pool's keys change",
                &["key", "org", "reason"],
            ),
            keys,
            draining: gauge("draining", "1 while the node drains"),
            body_bytes_in_flight: gauge(
                "request_body_bytes_in_flight",
                "Request body bytes held in memory (limits.max_inflight_body_bytes)",
            ),
            body_budget_refusals: {
                let c = IntCounter::new(
                    "request_body_budget_refusals_total",
                    "Requests refused (503) because the in-flight body budget was full",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(c.clone()))
                    .expect("unique metric");
                c
            },
            access_log_dropped: {
                let c = IntCounter::new(
                    "access_log_dropped_total",
                    "Access lines dropped because their destination could not keep up",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(c.clone()))
                    .expect("unique metric");
                c
            },
            path_state: gauge(
                "upstream_path_state",
                "The direct upstream path's circuit breaker: 0 closed, 1 half-open, 2 open",
            ),
            probes: counter(
                "upstream_probes_total",
                "Active probes of the upstream path (GET /v1/models) by result: answered \
                 (any HTTP status), error, timeout",
                &["result"],
            ),
            ttfb_ewma: {
                let g = Gauge::new(
                    "upstream_ttfb_ewma_seconds",
                    "Requests' upstream time to first byte, exponentially weighted moving \
                     average (weight 0.2 per response)",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            registry,
        })
    }

    /// Counts a finished request and its tokens.
    pub fn count(&self, route: RouteKind, status: u16, model: &str, usage: &Usage) {
        RECENT.with_borrow_mut(|(owner, recent)| {
            if *owner != self.id {
                *owner = self.id;
                *recent = Recent::default();
            }
            self.count_in(recent, route, status, model, usage);
        });
    }

    fn count_in(
        &self,
        recent: &mut Recent,
        route: RouteKind,
        status: u16,
        model: &str,
        usage: &Usage,
    ) {
        let at = recent
            .sets
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.matches(route, status, model)));
        let at = at.unwrap_or_else(|| {
            let mut status_text = itoa::Buffer::new();
            let set = Resolved {
                route,
                status,
                model: model.into(),
                requests: self.requests.with_label_values(&[
                    route.label(),
                    status_text.format(status),
                    model,
                ]),
                input: self.tokens.with_label_values(&["input", model]),
                output: self.tokens.with_label_values(&["output", model]),
            };
            let at = recent.next;
            recent.next = (at + 1) % RECENT_SETS;
            recent.sets[at] = Some(set);
            at
        });
        let set = recent.sets[at].as_ref().expect("just found or filled");
        set.requests.inc();
        if usage.input_tokens > 0 {
            set.input.inc_by(usage.input_tokens);
        }
        if usage.output_tokens > 0 {
            set.output.inc_by(usage.output_tokens);
        }
    }

    /// Observes a finished request's duration and its upstream time to first byte.
    pub fn observe_times(&self, route: RouteKind, elapsed: Duration, ttfb: Option<Duration>) {
        self.duration_by_route[route.index()].observe(elapsed.as_secs_f64());
        if let Some(ttfb) = ttfb {
            self.ttfb_by_route[route.index()].observe(ttfb.as_secs_f64());
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

const RECENT_SETS: usize = 8;

/// Ids of [`Metrics`] instances (a process runs one; tests run many).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The request and token counters of the last few label sets, resolved once: a
    /// finished request looked up three (about 600 instructions). One cache per
    /// thread, so each event loop counts without taking a lock; it belongs to the
    /// `Metrics` whose id it holds, and starts over when another instance counts here.
    static RECENT: RefCell<(u64, Recent)> = RefCell::new((0, Recent::default()));
}

#[derive(Default)]
struct Recent {
    sets: [Option<Resolved>; RECENT_SETS],
    next: usize,
}

/// One label set's counters, looked up once.
struct Resolved {
    route: RouteKind,
    status: u16,
    model: Box<str>,
    requests: IntCounter,
    input: IntCounter,
    output: IntCounter,
}

impl Resolved {
    fn matches(&self, route: RouteKind, status: u16, model: &str) -> bool {
        self.route == route && self.status == status && &*self.model == model
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_instance_counts_its_own_on_every_thread() {
        let (a, b) = (Arc::new(Metrics::new()), Arc::new(Metrics::new()));
        let usage = Usage {
            input_tokens: 5,
            ..Usage::default()
        };
        // Alternating on one thread: the thread's cache moves from one to the other.
        for _ in 0..3 {
            a.count(RouteKind::Messages, 200, "m", &usage);
            b.count(RouteKind::Messages, 200, "m", &usage);
            b.count(RouteKind::Messages, 200, "m", &usage);
        }
        // And from another thread, as a second event loop would.
        let other = {
            let a = a.clone();
            std::thread::spawn(move || a.count(RouteKind::Messages, 200, "m", &usage))
        };
        other.join().unwrap();
        let requests = |m: &Metrics| {
            m.requests
                .with_label_values(&["messages", "200", "m"])
                .get()
        };
        assert_eq!(requests(&a), 4);
        assert_eq!(requests(&b), 6);
        assert_eq!(a.tokens.with_label_values(&["input", "m"]).get(), 20);
        assert_eq!(b.tokens.with_label_values(&["input", "m"]).get(), 30);
    }

    #[test]
    fn remembered_label_sets_count_like_fresh_lookups() {
        let m = Metrics::new();
        let usage = Usage {
            input_tokens: 3,
            output_tokens: 2,
            ..Usage::default()
        };
        // More label sets than are remembered, interleaved, so sets are evicted and
        // looked up again.
        let models: Vec<String> = (0..11).map(|i| format!("model-{i}")).collect();
        for round in 0..3 {
            for (i, model) in models.iter().enumerate() {
                let status = if i % 2 == 0 { 200 } else { 429 };
                for _ in 0..=round {
                    m.count(RouteKind::Messages, status, model, &usage);
                }
            }
        }
        for (i, model) in models.iter().enumerate() {
            let status = if i % 2 == 0 { "200" } else { "429" };
            let requests = m.requests.with_label_values(&["messages", status, model]);
            assert_eq!(requests.get(), 6, "{model}");
            assert_eq!(m.tokens.with_label_values(&["input", model]).get(), 18);
            assert_eq!(m.tokens.with_label_values(&["output", model]).get(), 12);
        }
        m.count(RouteKind::Models, 200, "", &Usage::default());
        assert_eq!(
            m.requests.with_label_values(&["models", "200", ""]).get(),
            1
        );
        assert_eq!(m.tokens.with_label_values(&["input", ""]).get(), 0);
    }
}
