//! Phase 7, account: what one request did, settled with the limiter, counted in the
//! metrics and written as the one access-log line when it is finished (after its
//! last byte, or when the client left).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::meta::{RouteKind, Usage};
use crate::metrics::Metrics;
use crate::telemetry::access::{self, key};

/// What the access log and metrics need to know about one finished request.
/// Built up along the pipeline; never holds bodies or keys.
pub struct RequestRecord {
    pub metrics: Arc<Metrics>,
    pub access_log: bool,
    pub request_id: String,
    pub started: Instant,
    pub method: http::Method,
    /// The request target; its path goes in the access log.
    pub uri: http::Uri,
    pub route: RouteKind,
    pub client: Option<Arc<str>>,
    pub model: Option<String>,
    pub stream: bool,
    pub status: u16,
    pub upstream_key: Option<String>,
    pub attempts: u32,
    pub upstream_ttfb: Option<Duration>,
    pub ttft: Option<Duration>,
    pub usage: Usage,
    pub error: Option<&'static str>,
    pub outcome: &'static str,
    pub bytes_out: u64,
    /// The limiter's reservation, settled with `usage` in [`RequestRecord::finish`].
    pub permit: Option<crate::limits::Permit>,
}

impl RequestRecord {
    /// A record for a request that has only just arrived: nothing learnt yet.
    pub fn new(
        metrics: Arc<Metrics>,
        access_log: bool,
        request_id: String,
        started: Instant,
        method: http::Method,
        uri: http::Uri,
        route: RouteKind,
    ) -> Self {
        RequestRecord {
            metrics,
            access_log,
            request_id,
            started,
            method,
            uri,
            route,
            client: None,
            model: None,
            stream: false,
            status: 0,
            upstream_key: None,
            attempts: 0,
            upstream_ttfb: None,
            ttft: None,
            usage: Default::default(),
            error: None,
            outcome: "error",
            bytes_out: 0,
            permit: None,
        }
    }

    /// Writes the metrics and the access line. Called exactly once, when the response
    /// is done or abandoned.
    pub fn finish(&mut self) {
        if let Some(permit) = self.permit.take() {
            // Refunds the unused reservation and frees the concurrency slot.
            permit.settle(&self.usage, self.outcome);
        }
        let m = &self.metrics;
        let route = self.route.label();
        // Only models the upstream accepted become label values: a client cannot
        // blow up metric cardinality by inventing model names.
        let model = match (&self.model, self.status) {
            (Some(model), 200..=299) if model.len() <= 64 => model.as_str(),
            (Some(_), _) => "other",
            (None, _) => "",
        };
        m.count(self.route, self.status, model, &self.usage);
        let elapsed = self.started.elapsed();
        m.observe_times(self.route, elapsed, self.upstream_ttfb);
        if let Some(ttft) = self.ttft {
            m.ttft
                .with_label_values(&[model])
                .observe(ttft.as_secs_f64());
        }
        if !self.access_log {
            return;
        }
        let written = access::write(|l| {
            l.str(key!("request_id"), &self.request_id);
            l.str(key!("method"), self.method.as_str());
            l.str(key!("path"), self.uri.path());
            l.str(key!("route"), route);
            l.uint(key!("status"), u64::from(self.status));
            l.str(key!("client"), self.client.as_deref().unwrap_or("-"));
            let model = self.model.as_deref();
            l.str(
                key!("model"),
                model.map_or("-", |m| if m.len() > 64 { "other" } else { m }),
            );
            l.bool(key!("stream"), self.stream);
            l.str(
                key!("upstream_key"),
                self.upstream_key.as_deref().unwrap_or("-"),
            );
            l.uint(key!("attempts"), u64::from(self.attempts));
            l.millis(key!("duration_ms"), elapsed);
            if let Some(t) = self.upstream_ttfb {
                l.millis(key!("ttfb_ms"), t);
            }
            if let Some(t) = self.ttft {
                l.millis(key!("ttft_ms"), t);
            }
            l.uint(key!("input_tokens"), self.usage.input_tokens);
            l.uint(key!("output_tokens"), self.usage.output_tokens);
            l.uint(key!("bytes_out"), self.bytes_out);
            l.str(key!("outcome"), self.outcome);
            if let Some(e) = self.error {
                l.str(key!("error"), e);
            }
        });
        if !written {
            m.access_log_dropped.inc();
        }
    }
}
